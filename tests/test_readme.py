"""README.md: every code block runs as written, or says why it is not run.

The README is a user's first contact, so its examples are tests.  The
convention, stated in the README's "Use" section:

- a ```` ```python ```` block runs with this interpreter (the package's
  ``.venv``), a ```` ```sh ```` block with ``bash -e -o pipefail``;
- each runs on its own, in a fresh folder laid out as a checkout is after
  ``make run``: the sample files under ``tests/data`` (copied), an empty
  ``build/``, and the virtual environment's ``bin`` first on ``PATH`` (as
  after ``. .venv/bin/activate``);
- a block right after a line ``*Not run by the README test: REASON*`` is not
  run, and REASON must say why;
- a ```` ```text ```` block is output or a synopsis, never run;
- any other kind of block (no language, ``bash``, ...) fails here, so that
  every block says what it is.

A block that mounts (``mount(`` / ``mount_layers(`` in Python,
``composefs-py mount`` in shell) needs root and a kernel with erofs and
overlayfs data-only lower layers; elsewhere it is skipped with the reason
(``require_mounts``).  The autouse leak check of conftest.py fails a block
that leaves a mount or a loop device behind, so the examples must unmount.

The README also names no file outside the repository (``../``): a user has
only the checkout, and each repository path it names in backquotes exists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_mount import require_mounts

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

#: What a block's info string may be, and what happens to it.
RUN_KINDS = ("python", "sh")
SHOWN_KINDS = ("text",)
_FENCE = re.compile(r"^```(\S*)\s*$")
_NOT_RUN = re.compile(r"^\*Not run by the README test: (?P<why>.*\S.*)\*$")
_MOUNTS = re.compile(r"\bmount(_layers)?\(|\bcomposefs-py mount\b")
#: A block's wall-clock budget: the README's examples are small.
_TIMEOUT = 60


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block of the README."""

    line: int  # 1-based line of the opening fence
    kind: str  # the info string: python, sh, text, ...
    code: str
    not_run: str | None  # the reason given on the marker line, if any

    @property
    def name(self) -> str:
        return f"line{self.line}-{self.kind or 'none'}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text``, with the not-run marker that precedes each."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if i == len(lines):
            raise ValueError(f"README.md line {start + 1}: code block never closed")
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = _NOT_RUN.match(lines[before].strip()) if before >= 0 else None
        blocks.append(
            Block(
                line=start + 1,
                kind=opening.group(1),
                code="\n".join(lines[start + 1 : i]) + "\n",
                not_run=marker.group("why").strip() if marker else None,
            )
        )
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
RUN = [b for b in BLOCKS if b.kind in RUN_KINDS and b.not_run is None]


def test_every_block_says_what_it_is() -> None:
    """Each block is python or sh (run unless marked) or text (never run)."""
    wrong = [f"line {b.line}: ```{b.kind}" for b in BLOCKS if b.kind not in RUN_KINDS + SHOWN_KINDS]
    assert not wrong, f"blocks of no known kind (use {RUN_KINDS + SHOWN_KINDS}): {wrong}"
    marked_text = [f"line {b.line}" for b in BLOCKS if b.kind in SHOWN_KINDS and b.not_run]
    assert not marked_text, f"text blocks are never run; drop the marker: {marked_text}"
    assert RUN, "the README has no example that runs"


def test_setup_commands_come_first() -> None:
    """The two set-up commands are the README's first block (not run here: see it)."""
    first = BLOCKS[0]
    commands = [line.split("#")[0].strip() for line in first.code.splitlines()]
    assert commands == ["make run", "make test"], first.code
    assert first.not_run, "the set-up block must say why the README test does not run it"


def test_no_path_outside_the_checkout() -> None:
    """The README names no file a user of the checkout does not have."""
    text = README.read_text(encoding="utf-8")
    outside = sorted(set(re.findall(r"\.\./[\w./-]+", text)))
    assert not outside, f"README.md names files outside the repository: {outside}"


def test_named_repository_paths_exist() -> None:
    """Every path under a top-level folder of the repository, in backquotes, exists."""
    text = README.read_text(encoding="utf-8")
    tops = {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")} | {".ci"}
    missing = []
    for quoted in re.findall(r"`([^`\s]+)`", text):
        path = quoted.rstrip(".,:;")
        first = path.split("/")[0]
        if "/" not in path or first not in tops or first in ("build",):
            continue
        if any(c in path for c in "*<>$"):
            continue
        if not (REPO / path).exists():
            missing.append(path)
    assert not missing, f"README.md names paths the repository does not have: {missing}"


def test_one_requirements_section() -> None:
    headings = [
        line
        for line in README.read_text(encoding="utf-8").splitlines()
        if re.match(r"^#+\s+Requirements\s*$", line)
    ]
    assert len(headings) == 1, headings


def _checkout_like(folder: Path) -> Path:
    """A folder laid out as the checkout is after ``make run``, for one example."""
    shutil.copytree(REPO / "tests" / "data", folder / "tests" / "data")
    (folder / "build").mkdir()
    return folder


def _files(root: Path, under: str = "") -> dict[str, bytes]:
    """Relative path -> content of every file below ``root`` (prefixed by ``under``)."""
    return {
        str(Path(under) / p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _environment() -> dict[str, str]:
    scripts = sysconfig.get_path("scripts")
    env = dict(os.environ)
    env["PATH"] = scripts + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(Path(scripts).parent)
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.parametrize("block", RUN, ids=[b.name for b in RUN])
def test_example_runs_as_written(block: Block, tmp_path: Path) -> None:
    if _MOUNTS.search(block.code):
        require_mounts()
    folder = _checkout_like(tmp_path / "checkout")
    if block.kind == "python":
        argv = [sys.executable, "-"]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-s"]
    result = subprocess.run(
        argv,
        input=block.code,
        cwd=folder,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"README.md line {block.line} ({block.kind}) exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )
    # The README promises that the examples write under build/ only.
    assert sorted(p.name for p in folder.iterdir()) == ["build", "tests"]
    assert _files(folder / "tests") == _files(REPO / "tests" / "data", under="data")
