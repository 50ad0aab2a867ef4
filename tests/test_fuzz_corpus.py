"""Corpora at scale: ``python -m fuzz merge`` and ``minimize`` (libFuzzer ``-merge=1``).

Corpora grown on many machines (ClusterFuzzLite, OSS-Fuzz, several
``python -m fuzz run`` sessions) are combined with ``merge``: the inputs of
the given folders that add coverage join the target's corpus.  ``minimize``
re-merges a corpus into a fresh folder and swaps it in.  Both run the
libFuzzer harness of fuzz/harness.py, here on the ``dumpfile`` target (pure
Python, fast) with a handful of tiny inputs, without the sanitized build.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the fuzz package lives at the top of the checkout
    sys.path.insert(0, str(REPO))

from fuzz.__main__ import libfuzzer_options  # noqa: E402

pytest.importorskip("atheris", reason="atheris not installed: run `make fuzz-deps`")

SEEDS = REPO / "fuzz" / "corpus" / "dumpfile"
OTHER = b"/ 4096 40755 2 0 0 0 0.0 - - -\n/f 3 100644 1 0 0 0 0.0 - abc -\n"


def _fuzz(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fuzz", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _contents(folder: Path) -> list[bytes]:
    return sorted(p.read_bytes() for p in folder.iterdir())


def _inputs(folder: Path, *blobs: bytes) -> Path:
    folder.mkdir()
    for i, blob in enumerate(blobs):
        (folder / f"input-{i}").write_bytes(blob)
    return folder


def test_merge_adds_what_adds_coverage(tmp_path: Path) -> None:
    seeds = [p.read_bytes() for p in sorted(SEEDS.iterdir())]
    one = _inputs(tmp_path / "machine-1", *seeds, seeds[0], b"")
    two = _inputs(tmp_path / "machine-2", OTHER, OTHER)
    corpus = tmp_path / "corpus"
    merge = ("merge", "--target", "dumpfile", "--corpus", str(corpus), "--no-sanitize")
    proc = _fuzz(*merge, str(one), str(two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = _contents(corpus)
    offered = {*seeds, OTHER, b""}
    # libFuzzer keeps one file per distinct input that adds features, never a copy.
    assert set(merged) <= offered
    assert len(merged) == len(set(merged))
    assert OTHER in merged and seeds[1] in merged
    assert "merge dumpfile: 0 -> " in proc.stdout
    # Merging the same folders again adds nothing.
    again = _fuzz(*merge, str(one), str(two))
    assert again.returncode == 0, again.stderr[-3000:]
    assert _contents(corpus) == merged
    assert f"{len(merged)} -> {len(merged)} files (+0," in again.stdout


def test_minimize_swaps_in_a_smaller_corpus(tmp_path: Path) -> None:
    seeds = [p.read_bytes() for p in sorted(SEEDS.iterdir())]
    corpus = _inputs(tmp_path / "corpus", *seeds, *seeds, OTHER, OTHER + b"\n", b"", b"")
    before = _contents(corpus)
    proc = _fuzz("minimize", "--target", "dumpfile", "--corpus", str(corpus), "--no-sanitize")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _contents(corpus)
    assert set(after) <= set(before)
    assert 0 < len(after) < len(set(before)) < len(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"], "a leftover folder"
    assert f"minimize dumpfile: {len(before)} -> {len(after)} files" in proc.stdout


def test_merge_takes_folders_relative_to_the_current_one(tmp_path: Path) -> None:
    _inputs(tmp_path / "found", OTHER)
    proc = _fuzz(
        "merge",
        "--target",
        "dumpfile",
        "--corpus",
        "corpus",
        "--no-sanitize",
        "found",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _contents(tmp_path / "corpus") == [OTHER]


def test_minimize_of_a_missing_corpus_is_an_error(tmp_path: Path) -> None:
    proc = _fuzz(
        "minimize", "--target", "dumpfile", "--corpus", str(tmp_path / "none"), "--no-sanitize"
    )
    assert proc.returncode == 2
    assert "no corpus" in proc.stderr


@pytest.mark.parametrize("jobs", [1, 3])
def test_fork_mode_runs_jobs_children(jobs: int) -> None:
    options = libfuzzer_options("toc", seconds=10, jobs=jobs, fork=True, artifacts=Path("/a"))
    assert f"-fork={jobs}" in options and "-ignore_crashes=1" in options
    assert not any(
        o.startswith("-fork")
        for o in libfuzzer_options("toc", seconds=10, jobs=jobs, fork=False, artifacts=Path("/a"))
    )


def test_campaigns_use_the_target_dictionary() -> None:
    options = libfuzzer_options("writer", seconds=1, jobs=1, fork=True, artifacts=Path("/a"))
    assert f"-dict={(REPO / 'fuzz' / 'dicts' / 'dumpfile.dict').resolve()}" in options
    options = libfuzzer_options("layer", seconds=1, jobs=1, fork=True, artifacts=Path("/a"))
    assert not any(o.startswith("-dict=") for o in options)
