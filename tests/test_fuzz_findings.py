"""The upstream-ready reports in fuzz/findings/ stay true to the reproducers.

Each report embeds its reproducer(s) as gzip+base64 and names the file in
fuzz/crashes/ it comes from: the two must be the same bytes, and every
libcomposefs reproducer in fuzz/crashes/ has a report.  With the sanitized
build (``make fuzz-deps``), each image-loader reproducer is run through
fuzz/findings/load_image.c (libcomposefs alone, no Python) and must still
give the SUMMARY line its report quotes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FINDINGS = REPO / "fuzz" / "findings"
CRASHES = REPO / "fuzz" / "crashes"
PREFIX = REPO / ".deps" / "asan" / "prefix"
SNAPSHOT = "6fc335cb8e650078f88f7dbfecfd0947cab8f825"

_EMBEDDED = re.compile(
    r"^`(fuzz/crashes/\S+)` in composefs-py \((\d+) bytes, sha256 `([0-9a-f]{64})`\).*?"
    r"base64 -d <<'EOF' \| gunzip > (\S+)\n(.*?)\nEOF\n",
    re.MULTILINE | re.DOTALL,
)


def reports() -> list[Path]:
    return sorted(p for p in FINDINGS.glob("*.md") if p.name != "README.md")


def _embedded(report: Path) -> list[tuple[str, int, str, bytes]]:
    return [
        (path, int(size), sha, gzip.decompress(base64.b64decode(b64)))
        for path, size, sha, _, b64 in _EMBEDDED.findall(report.read_text())
    ]


@pytest.mark.parametrize("report", reports(), ids=lambda p: p.stem)
def test_report_embeds_its_reproducer_bytes(report: Path) -> None:
    embedded = _embedded(report)
    assert embedded, "no embedded reproducer"
    for path, size, sha, data in embedded:
        on_disk = (REPO / path).read_bytes()
        assert data == on_disk, f"{report.name}: the base64 is not {path}"
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha


@pytest.mark.parametrize("report", reports(), ids=lambda p: p.stem)
def test_report_has_the_upstream_sections(report: Path) -> None:
    text = report.read_text()
    for heading in (
        "## Affected",
        "## What happens",
        "## Source lines",
        "## Reproducer",
        "## Sanitizer report",
        "## Suggested fix",
        "## Status in composefs-py",
    ):
        assert heading in text, f"{report.name}: no {heading!r}"
    assert "libcomposefs **1.0.8**" in text
    assert SNAPSHOT in text, "the upstream main snapshot it was checked against"


def test_every_libcomposefs_reproducer_has_a_report() -> None:
    covered = {path for report in reports() for path, *_ in _embedded(report)}
    files = {
        str(p.relative_to(REPO))
        for folder in ("reader", "writer", "dumpfile_diff")
        for p in (CRASHES / folder).iterdir()
        # row-LABEL: the input that found a row of fuzz/differential.py's tables
        if p.is_file() and not p.name.startswith("row-")
    }
    assert files == covered
    index = (FINDINGS / "README.md").read_text()
    for report in reports():
        assert f"]({report.name})" in index, f"{report.name} is not in findings/README.md"


def _image_reports() -> list[tuple[str, str]]:
    cases = []
    for report in reports():
        text = report.read_text()
        for path, *_ in _embedded(report):
            if path.endswith(".cfs"):
                name = Path(path).name
                block = text.split(f"`./load_image {name}`", 1)[1]
                summary = re.search(r"^SUMMARY: (.*)$", block, re.MULTILINE)
                assert summary, f"{report.name}: no SUMMARY for {name}"
                cases.append((path, summary.group(1)))
    return cases


@pytest.fixture(scope="module")
def load_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clang = shutil.which("clang-14") or shutil.which("clang")
    if clang is None or not (PREFIX / "lib").is_dir():
        pytest.skip("no sanitized libcomposefs or clang: run `make fuzz-deps`")
    exe = tmp_path_factory.mktemp("load_image") / "load_image"
    subprocess.run(
        [
            clang,
            "-fsanitize=address,undefined",
            "-g",
            str(FINDINGS / "load_image.c"),
            f"-I{PREFIX / 'include'}",
            f"-L{PREFIX / 'lib'}",
            f"-Wl,-rpath,{PREFIX / 'lib'}",
            "-lcomposefs",
            "-o",
            str(exe),
        ],
        check=True,
        timeout=300,
    )
    return exe


@pytest.mark.slow
@pytest.mark.parametrize(("path", "summary"), _image_reports(), ids=lambda v: Path(v).name)
def test_image_reproducer_still_gives_the_reported_error(
    load_image: Path, path: str, summary: str
) -> None:
    proc = subprocess.run(
        [str(load_image), str(REPO / path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0"},
        check=False,
    )
    assert proc.returncode != 0, f"{path} loads clean now: libcomposefs fixed it, update the report"
    # The kind of error and the function it is in (paths and addresses differ).
    kind = summary.split(" ")[1]
    where = summary.rsplit(" in ", 1)[1]
    assert kind in proc.stderr and f"in {where}" in proc.stderr, proc.stderr[-3000:]
