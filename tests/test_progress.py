"""The progress protocol: a callable an embedding program drives its own UI with,
and whole lines (no carriage returns) when stderr is no terminal."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from composefs_py import ObjectStore, ProgressUpdate, open_layer, parse_dumpfile, write_image
from composefs_py._progress import Progress, resolve_progress

DATA = Path(__file__).parent / "data"


def test_a_callable_receives_counts_totals_and_one_finished_update(tmp_path: Path) -> None:
    updates: list[ProgressUpdate] = []
    layer = open_layer(DATA / "layers" / "small.zstd-chunked.blob")
    tree = layer.import_objects(ObjectStore(tmp_path / "objects"), progress=updates.append)
    assert updates, "no update"
    last = updates[-1]
    assert last.finished and not any(update.finished for update in updates[:-1])
    assert last.total_files is not None and last.files_done == last.total_files
    assert last.total_bytes is not None and last.bytes_done == last.total_bytes
    # one per object stored (files of the same content share one)
    assert last.files_done == len({getattr(node, "payload", None) for _, node in tree} - {None})
    done = [update.files_done for update in updates]
    assert done == sorted(done)  # counts only grow
    assert "small.zstd-chunked.blob" in last.label or last.label.startswith("import")


def test_write_image_reports_its_nodes(tmp_path: Path) -> None:
    tree = parse_dumpfile(DATA / "sample.dump")
    updates: list[ProgressUpdate] = []
    write_image(tree, tmp_path / "x.cfs", progress=updates.append)
    assert updates[-1].finished
    assert updates[-1].files_done == updates[-1].total_files == len(tree)


def test_a_callable_that_raises_stops_the_work(tmp_path: Path) -> None:
    tree = parse_dumpfile(DATA / "sample.dump")

    def cancel(update: ProgressUpdate) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_image(tree, tmp_path / "x.cfs", progress=cancel)
    assert not (tmp_path / "x.cfs").exists()


def test_without_a_terminal_progress_is_whole_lines() -> None:
    text = io.StringIO()  # no isatty: a log file, a CI console
    progress = Progress(stream=text, interval=0)
    progress.start("importing l", total_files=3, total_bytes=3 << 20)
    for _ in range(3):
        progress.advance(nbytes=1 << 20, files=1)
    progress.close()
    out = text.getvalue()
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    assert lines[-1] == "importing l: 3/3 files, 3.0/3.0 MiB"
    assert all(line.startswith("importing l: ") for line in lines)


def test_on_a_terminal_progress_redraws_one_line() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    text = Tty()
    progress = Progress(stream=text, interval=0)
    progress.start("x", total_files=2)
    progress.advance(files=1)
    progress.advance(files=1)
    progress.close()
    out = text.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n") and out.count("\r") >= 2


def test_resolve_progress_takes_a_callable() -> None:
    seen: list[ProgressUpdate] = []
    progress = resolve_progress(seen.append, "label")
    assert isinstance(progress, Progress)
    progress.start("label", total_files=1)
    progress.advance(files=1)
    progress.close()
    assert seen[-1] == ProgressUpdate("label", 1, 0, 1, None, True)
    with pytest.raises(TypeError):
        resolve_progress("yes", "label")  # type: ignore[arg-type]


def test_parse_toc_counts_the_entries_a_batch_at_a_time() -> None:
    from composefs_py import parse_toc

    updates: list[ProgressUpdate] = []
    entries = [{"type": "dir", "name": "d/"}] + [
        {"type": "reg", "name": f"d/{i}"} for i in range(20000)
    ]
    import json

    parse_toc(json.dumps({"version": 1, "entries": entries}).encode(), progress=updates.append)
    assert updates[-1].finished and updates[-1].label == "validating TOC"
    assert updates[-1].files_done == updates[-1].total_files == 20001


def test_cli_build_of_a_toc_shows_progress_with_the_flag(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "composefs_py", "build", "--progress",
         str(DATA / "small.zstd-chunked.toc.json"), "-o", str(tmp_path / "x.cfs")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = done.stderr.splitlines()
    assert any(line.startswith("validating TOC: ") for line in lines), done.stderr
    assert any(line.startswith("writing image: ") for line in lines), done.stderr
    assert "\r" not in done.stderr  # no terminal: whole lines
