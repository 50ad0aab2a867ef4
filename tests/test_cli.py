"""Tests of the ``composefs-py`` command (composefs_py.cli).

Most run :func:`composefs_py.cli.main` in-process; the entry points
(``python -m composefs_py`` and the installed console script) and the
no-traceback promise are checked in real subprocesses.  Inputs are real:
the shipped sample dumpfile, the shared layers and their TOCs, upstream's
assets.  Exit status: 0 ok, 1 rejected input or failed operation (one line
on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from test_upstream_assets import fsck
from test_writer import tmpfs

from composefs_py.cli import build_parser, main
from composefs_py.dumpfile import dump, parse_dumpfile
from composefs_py.fsverity import fsverity_digest
from composefs_py.model import Inode
from composefs_py.toc import parse_toc
from composefs_py.writer import read_image

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
SHARED = REPO / "tests" / "data" / "layers"
SAMPLE = DATA / "sample.dump"
TOC = DATA / "small.zstd-chunked.toc.json"
#: What containers/storage 1.64 + mkcomposefs 1.0.8 make of TOC (issue 3).
CONTAINERS_STORAGE_SHA256 = "ac092afb0e8d40d7f9adc9ece83679eb6ac7a1be4e5b2bd7ef8640d0f132e00a"

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``main(args)``; return (status, stdout, stderr)."""

    def invoke(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
        try:
            status = main([os.fspath(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            status = int(exc.code or 0)
        out, err = capsys.readouterr()
        return status, out, err

    return invoke


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("composefs-py: error: "), err
    assert "Traceback" not in err
    return lines[0]


def mkcomposefs_image(mkcomposefs: Path, text: bytes, tmp_path: Path) -> bytes:
    out = tmp_path / "oracle.cfs"
    subprocess.run(
        [str(mkcomposefs), "--from-file", "-", str(out)],
        input=text,
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


# ---------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------


def test_build_dumpfile_prints_digest_and_writes_the_mkcomposefs_image(
    run: Run, tmp_path: Path, mkcomposefs: Path, fsck_erofs: Path
) -> None:
    out = tmp_path / "sample.cfs"
    status, stdout, stderr = run("build", SAMPLE, "-o", out)
    assert (status, stderr) == (0, "")
    image = out.read_bytes()
    assert stdout == fsverity_digest(image).hex() + "\n"
    assert image == mkcomposefs_image(mkcomposefs, SAMPLE.read_bytes(), tmp_path)
    fsck(fsck_erofs, out)


@pytest.mark.parametrize("backend", ["auto", "native", "sandbox", "mkcomposefs"])
def test_build_backends_give_the_same_digest(backend: str, run: Run, tmp_path: Path) -> None:
    status, stdout, _ = run("build", SAMPLE, "-o", tmp_path / "x.cfs", "--backend", backend)
    assert status == 0
    assert stdout.strip() == fsverity_digest((tmp_path / "x.cfs").read_bytes()).hex()
    reference = tmp_path / "ref.cfs"
    run("build", SAMPLE, "-o", reference, "--backend", "native")
    assert (tmp_path / "x.cfs").read_bytes() == reference.read_bytes()


@pytest.mark.parametrize("versions", [("0", "0"), ("1", "1")])
def test_build_format_versions(
    versions: tuple[str, str],
    run: Run,
    tmp_path: Path,
    mkcomposefs: Path,
    fsck_erofs: Path,
) -> None:
    low, high = versions
    out = tmp_path / "v.cfs"
    status, _, _ = run("build", SAMPLE, "-o", out, "--min-version", low, "--max-version", high)
    assert status == 0
    oracle = tmp_path / "oracle.cfs"
    subprocess.run(
        [
            str(mkcomposefs),
            f"--min-version={low}",
            f"--max-version={high}",
            "--from-file",
            str(SAMPLE),
            str(oracle),
        ],
        check=True,
    )
    assert out.read_bytes() == oracle.read_bytes()
    fsck(fsck_erofs, out)


def test_build_gzipped_upstream_asset_matches_its_checksum(
    run: Run, tmp_path: Path, composefs_src: Path
) -> None:
    asset = composefs_src / "tests" / "assets" / "config-with-hard-link.dump.gz"
    out = tmp_path / "config.cfs"
    assert run("build", asset, "-o", out)[0] == 0
    expected = asset.with_name(asset.name + ".sha256").read_text().split()[0]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == expected


def test_build_from_stdin(tmp_path: Path, fsck_erofs: Path) -> None:
    out = tmp_path / "stdin.cfs"
    proc = subprocess.run(
        [sys.executable, "-m", "composefs_py", "build", "-", "-o", str(out)],
        input=SAMPLE.read_bytes(),
        capture_output=True,
        cwd=REPO,
        check=True,
    )
    assert proc.stdout.decode().strip() == fsverity_digest(out.read_bytes()).hex()
    fsck(fsck_erofs, out)


def test_build_to_stdout_with_a_dash(tmp_path: Path, mkcomposefs: Path) -> None:
    """``-o -`` is standard output, as in mkcomposefs; the digest goes to stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "composefs_py", "build", str(SAMPLE), "-o", "-"],
        capture_output=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    image = mkcomposefs_image(mkcomposefs, SAMPLE.read_bytes(), tmp_path)
    assert proc.stdout == image
    assert proc.stderr.decode() == fsverity_digest(image).hex() + "\n"
    assert sorted(os.listdir(tmp_path)) == ["oracle.cfs"], "a file named '-' was made"


def test_build_to_stdout_refuses_a_terminal(tmp_path: Path) -> None:
    main_end, terminal = os.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "composefs_py", "build", str(SAMPLE), "-o", "-"],
            stdout=terminal,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
        )
    finally:
        os.close(terminal)
        os.close(main_end)
    assert proc.returncode == 2
    assert b"terminal" in proc.stderr
    assert os.listdir(tmp_path) == []


#: Runs its arguments with /dev a tmpfs of its own holding only
#: ``stdout -> /proc/self/fd/1`` (so that a writer that replaced
#: /dev/stdout replaces nothing of the machine's), then says whether
#: /dev/stdout is still that link.
_PRIVATE_DEV = """
mount -t tmpfs -o size=1m tmpfs /dev || exit 97
ln -s /proc/self/fd/1 /dev/stdout
"$@"
status=$?
[ -L /dev/stdout ] || { echo "/dev/stdout was replaced" >&2; exit 98; }
exit $status
"""


@pytest.mark.parametrize("stdout_kind", ["pipe", "file"])
def test_build_to_dev_stdout_writes_through_it(
    stdout_kind: str, tmp_path: Path, mkcomposefs: Path
) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private /dev")
    argv = ["unshare", "--mount", "sh", "-c", _PRIVATE_DEV, "sh"]
    argv += [sys.executable, "-m", "composefs_py", "build", str(SAMPLE), "-o", "/dev/stdout"]
    captured = tmp_path / "captured"
    with open(captured, "wb") as file:
        proc = subprocess.run(
            argv,
            stdout=subprocess.PIPE if stdout_kind == "pipe" else file,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
    if proc.returncode == 97:
        pytest.skip(f"cannot mount a private /dev: {proc.stderr.decode(errors='replace')}")
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout if stdout_kind == "pipe" else captured.read_bytes()
    image = mkcomposefs_image(mkcomposefs, SAMPLE.read_bytes(), tmp_path)
    # the image, then the digest line: both written through the same stdout
    assert output == image + fsverity_digest(image).hex().encode() + b"\n"


def test_build_into_a_read_only_folder_names_the_output(run: Run, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=64k") as folder:
        out = folder / "x.cfs"
        status, _, stderr = run("build", SAMPLE, "-o", out)
        assert status == 1
        assert one_error_line(stderr) == f"composefs-py: error: {out}: Read-only file system"


def test_build_toc_in_containers_storage_mode_gives_podmans_image(
    run: Run, tmp_path: Path, fsck_erofs: Path
) -> None:
    out = tmp_path / "podman.cfs"
    status, _, stderr = run("build", TOC, "-o", out, "--compat", "containers-storage")
    assert (status, stderr) == (0, "")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == CONTAINERS_STORAGE_SHA256
    fsck(fsck_erofs, out)


def test_build_toc_sniffed_and_explicit_agree(run: Run, tmp_path: Path) -> None:
    sniffed, named = tmp_path / "a.cfs", tmp_path / "b.cfs"
    assert run("build", TOC, "-o", sniffed)[0] == 0
    assert run("build", TOC, "-o", named, "--from", "toc")[0] == 0
    assert sniffed.read_bytes() == named.read_bytes()


LAYERS = [
    "small.zstd-chunked.blob",
    "small.estargz.blob",
    "small.estargz-chunk256k.blob",
    "small.tar",
]


@pytest.mark.parametrize("layer", LAYERS)
def test_build_layer_with_objects_imports_every_payload(
    layer: str, run: Run, tmp_path: Path, fsck_erofs: Path
) -> None:
    blob = SHARED / layer
    if not blob.is_file():
        pytest.skip(f"shared test layer {blob} not present")
    out, objects = tmp_path / "layer.cfs", tmp_path / "objects"
    objects.mkdir()
    status, _, stderr = run("build", blob, "-o", out, "--objects", objects)
    assert status == 0, stderr
    fsck(fsck_erofs, out)
    tree = read_image(out)
    payloads = {
        node.payload
        for _, node in tree
        if isinstance(node, Inode) and node.payload is not None and node.size > 0
    }
    assert payloads
    for payload in payloads:
        assert payload is not None
        stored = objects / payload.decode()
        assert stored.is_file(), payload
        # objects are named by the sha256 of their content
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == payload.decode().replace("/", "")


def test_build_layer_progress_goes_to_stderr(run: Run, tmp_path: Path) -> None:
    blob = SHARED / "small.tar"
    if not blob.is_file():
        pytest.skip(f"shared test layer {blob} not present")
    (tmp_path / "objects").mkdir()
    status, stdout, stderr = run(
        "build", blob, "-o", tmp_path / "x.cfs", "--objects", tmp_path / "objects", "--progress"
    )
    assert status == 0
    assert stdout == fsverity_digest((tmp_path / "x.cfs").read_bytes()).hex() + "\n"
    assert stderr.strip(), "--progress shows progress on stderr"


def test_build_rejected_dumpfile_is_one_line_and_leaves_nothing(run: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.dump"
    bad.write_bytes(SAMPLE.read_bytes() + b"/zz 0 100644 1 -1 0 0 0.0 - - -\n")
    status, stdout, stderr = run("build", bad, "-o", tmp_path / "out.cfs")
    assert (status, stdout) == (1, "")
    line = one_error_line(stderr)
    assert "/zz" in line and "uid" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.dump"]


def test_build_missing_source_is_one_line(run: Run, tmp_path: Path) -> None:
    status, _, stderr = run("build", tmp_path / "absent", "-o", tmp_path / "x")
    assert status == 1
    assert "absent" in one_error_line(stderr)


def test_build_into_missing_directory_is_one_line(run: Run, tmp_path: Path) -> None:
    status, _, stderr = run("build", SAMPLE, "-o", tmp_path / "no" / "x.cfs")
    assert status == 1
    one_error_line(stderr)


def test_library_error_is_one_line_without_errno_noise(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPOSEFS_PY_MKCOMPOSEFS", "/bin/false")
    status, _, stderr = run("build", SAMPLE, "-o", tmp_path / "x.cfs", "--backend", "mkcomposefs")
    assert status == 1
    line = one_error_line(stderr)
    assert line == "composefs-py: error: mkcomposefs failed (exit status 1): no message"
    assert list(tmp_path.iterdir()) == []


def test_build_random_bytes_are_rejected(run: Run, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(bytes(range(256)) * 8)
    status, _, stderr = run("build", junk, "-o", tmp_path / "x.cfs")
    assert status == 1
    one_error_line(stderr)
    assert not (tmp_path / "x.cfs").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["build"],
        ["build", "x"],
        ["build", "x", "-o", "y", "--backend", "fast"],
        ["build", "x", "-o", "y", "--from", "squashfs"],
        ["build", "x", "-o", "y", "--min-version", "-1"],
        ["build", "x", "-o", "y", "--min-version", "2"],
        ["build", "x", "-o", "y", "--max-version", "2"],
        ["build", "x", "y", "--skip-xattrs", "--user-xattrs"],
        ["build", "x", "-o", "y", "--print-digest-only"],
        ["build", "x", "-o", "y", "--from", "toc", "--from-file"],
        ["build", "x", "-o", "y", "--min-version", "one"],
        ["build", "x", "-o", "y", "--compat", "podman"],
        [],
        ["frobnicate"],
        ["digest"],
        ["mount", "img", "mnt"],
        ["mount", "img", "mnt", "--objects", "o", "--upper", "u"],
        ["mount", "i", "m", "--objects", "o", "--require-verity", "--try-verity"],
    ],
)
def test_usage_errors_exit_2(args: list[str], run: Run, tmp_path: Path) -> None:
    status, stdout, stderr = run(*args)
    assert status == 2, (stdout, stderr)
    assert "usage:" in stderr
    assert "Traceback" not in stderr


def test_help_exits_0(run: Run) -> None:
    status, stdout, _ = run("--help")
    assert status == 0
    for command in ("build", "validate", "dump", "digest", "mount", "unmount"):
        assert command in stdout


def _commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_a_run_builds_only_its_own_command_parser() -> None:
    assert list(_commands_of(build_parser("build"))) == ["build"]
    # the command list (--help, an unknown word): every command, no options
    listed = _commands_of(build_parser("--help"))
    assert {"build", "validate", "dump", "digest", "mount", "unmount"} <= set(listed)
    assert all(len(p._actions) == 1 for p in listed.values())  # -h only
    complete = _commands_of(build_parser())
    assert set(complete) == set(listed)
    assert len(complete["build"]._actions) > 10


#: What the ``composefs-py`` entry point may load beyond argparse and what a
#: ``from __future__``/``typing`` module costs anyway: the command module, the
#: exception tree, and ``mount`` (the package imports it eagerly, as its
#: function shares the submodule's name; the module itself imports nothing
#: heavy until called).
_CLI_IMPORT_BASELINE = "argparse, typing, contextlib, errno, collections.abc, __future__"
_CLI_IMPORT_ALLOWED = {
    "composefs_py",
    "composefs_py.cli",
    "composefs_py.errors",
    "composefs_py.mount",
}


def test_importing_the_cli_loads_only_what_help_needs() -> None:
    # A fresh interpreter without site (no editable-install finder loading
    # pathlib, fnmatch, urllib on its own), the package found where it is.
    import composefs_py

    code = (
        "import sys\n"
        f"import {_CLI_IMPORT_BASELINE}\n"
        "before = set(sys.modules)\n"
        "import composefs_py.cli\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(composefs_py.__file__).parent.parent)}
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, check=True
    )
    extra = set(out.stdout.split()) - _CLI_IMPORT_ALLOWED
    assert not extra, f"{len(extra)} modules more than --help needs: {sorted(extra)}"
    # and the help itself still works from there
    help_code = "from composefs_py.cli import main; main(['build', '--help'])"
    shown = subprocess.run(
        [sys.executable, "-S", "-c", help_code], capture_output=True, text=True, env=env
    )
    assert shown.returncode == 0, shown.stderr
    assert "--min-version" in shown.stdout


# ---------------------------------------------------------------------------
# mkcomposefs's command line: same option names, same image bytes
# ---------------------------------------------------------------------------


def mkcomposefs_run(
    mkcomposefs: Path, *args: str | os.PathLike[str], cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run the real mkcomposefs (lenient, as it is without CFS_PARSE_STRICT)."""
    env = {k: v for k, v in os.environ.items() if k != "CFS_PARSE_STRICT"}
    return subprocess.run(
        [str(mkcomposefs), *map(os.fspath, args)], capture_output=True, env=env, cwd=cwd
    )


def test_version_is_the_package_metadata(run: Run) -> None:
    import importlib.metadata

    import composefs_py

    expected = importlib.metadata.version("composefs-py")
    assert composefs_py.__version__ == expected
    assert run("--version") == (0, f"composefs-py {expected}\n", "")


def test_build_source_image_positional_as_mkcomposefs(
    run: Run, tmp_path: Path, mkcomposefs: Path
) -> None:
    oracle = tmp_path / "oracle.cfs"
    assert mkcomposefs_run(mkcomposefs, "--from-file", SAMPLE, oracle).returncode == 0
    for args in ((SAMPLE,), ("--from-file", SAMPLE)):
        out = tmp_path / "out.cfs"
        status, stdout, stderr = run("build", *args, out)
        assert (status, stderr) == (0, "")
        assert out.read_bytes() == oracle.read_bytes()
        assert stdout == fsverity_digest(oracle.read_bytes()).hex() + "\n"
        out.unlink()


def test_build_positional_dash_is_stdout(tmp_path: Path, mkcomposefs: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "composefs_py", "build", str(SAMPLE), "-"],
        capture_output=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    oracle = mkcomposefs_run(mkcomposefs, "--from-file", SAMPLE, "-").stdout
    assert proc.stdout == oracle
    assert proc.stderr.decode() == fsverity_digest(oracle).hex() + "\n"
    assert os.listdir(tmp_path) == []


def test_build_positional_image_replaces_no_other_file(run: Run, tmp_path: Path) -> None:
    layer = tmp_path / "top.dump"
    layer.write_bytes(SAMPLE.read_bytes())
    # "build base top" with -o forgotten: top is not replaced by an image
    status, _, stderr = run("build", SAMPLE, layer)
    assert status == 2 and "is not a composefs image; name it with -o" in stderr
    assert layer.read_bytes() == SAMPLE.read_bytes()
    # an image (or a new name, or an empty file) is replaced, as mkcomposefs does
    image = tmp_path / "x.cfs"
    for before in (None, b"", "image"):
        if before == "image":
            assert run("build", SAMPLE, "-o", image)[0] == 0
        elif before is not None:
            image.write_bytes(before)
        assert run("build", "--use-epoch", SAMPLE, image)[0] == 0
        assert image.read_bytes()[:4] == b"\x9a\x62\x78\xd0"
    # -o names the file to replace, whatever it holds
    assert run("build", SAMPLE, "-o", layer)[0] == 0
    assert layer.read_bytes()[:4] == b"\x9a\x62\x78\xd0"


def test_build_positional_fifo_is_written_through_unchecked(
    run: Run, tmp_path: Path, mkcomposefs: Path
) -> None:
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()  # the check of IMAGE must not open the FIFO (it would block)
    status, _, stderr = run("build", SAMPLE, fifo)
    reader.join(timeout=30)
    assert (status, stderr) == (0, "")
    assert received == [mkcomposefs_image(mkcomposefs, SAMPLE.read_bytes(), tmp_path)]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


_BASE = (
    b"/ 0 40755 3 0 0 0 0.0 - - -\n/a 0 40755 2 0 0 0 0.0 - - -\n/a/f 1 100644 1 0 0 0 0.0 - x -\n"
)
_TOP = (
    b"/ 0 40755 3 0 0 0 0.0 - - -\n/a 0 40755 2 0 0 0 0.0 - - -\n/a/f 0 20000 1 0 0 0 0.0 - - -\n"
)


def test_build_several_sources_then_the_image(run: Run, tmp_path: Path) -> None:
    base, top = tmp_path / "base.dump", tmp_path / "top.dump"
    base.write_bytes(_BASE)
    top.write_bytes(_TOP)
    assert run("build", base, top, tmp_path / "positional.cfs")[0] == 0
    assert run("build", base, top, "-o", tmp_path / "named.cfs")[0] == 0
    positional = (tmp_path / "positional.cfs").read_bytes()
    assert positional == (tmp_path / "named.cfs").read_bytes()
    assert [p for p, _ in read_image(tmp_path / "named.cfs")] == [b"/", b"/a"]  # whited out


def test_build_print_digest_and_print_digest_only_as_mkcomposefs(
    run: Run, tmp_path: Path, mkcomposefs: Path
) -> None:
    theirs = mkcomposefs_run(
        mkcomposefs, "--from-file", "--print-digest", SAMPLE, "m.cfs", cwd=tmp_path
    )
    assert theirs.returncode == 0, theirs.stderr
    status, stdout, _ = run("build", "--print-digest", SAMPLE, tmp_path / "o.cfs")
    assert (status, stdout) == (0, theirs.stdout.decode())
    assert (tmp_path / "o.cfs").read_bytes() == (tmp_path / "m.cfs").read_bytes()

    only = mkcomposefs_run(mkcomposefs, "--from-file", "--print-digest-only", SAMPLE, cwd=tmp_path)
    assert only.stdout == theirs.stdout
    before = sorted(os.listdir(tmp_path))
    for backend in ("native", "sandbox", "mkcomposefs"):
        status, stdout, _ = run("build", "--print-digest-only", SAMPLE, "--backend", backend)
        assert (status, stdout) == (0, theirs.stdout.decode())
    assert sorted(os.listdir(tmp_path)) == before, "--print-digest-only wrote a file"
    status, _, stderr = run("build", "--print-digest-only", SAMPLE, "-o", tmp_path / "x")
    assert status == 2 and "writes no image" in stderr


_VERSIONS_DUMP = (
    b"/ 0 40755 3 0 0 0 0.0 - - -\n"
    b"/d 0 40755 2 0 0 0 5.0 - - - user.a=1\n"
    b"/d/wh 0 20000 1 0 0 0 0.0 - - -\n"  # a whiteout: format 1 where allowed
)


@pytest.mark.parametrize(
    "versions",
    [
        (),
        ("--min-version=0",),  # mkcomposefs: the maximum then defaults to 0
        ("--min-version=1",),
        ("--max-version=0",),
        ("--max-version=1",),
        ("--min-version=1", "--max-version=0"),  # the maximum is raised to 1
        ("--min-version=0", "--max-version=1"),
    ],
)
def test_build_format_version_options_as_mkcomposefs(
    versions: tuple[str, ...], run: Run, tmp_path: Path, mkcomposefs: Path
) -> None:
    source = tmp_path / "wh.dump"
    source.write_bytes(_VERSIONS_DUMP)
    oracle = tmp_path / "oracle.cfs"
    assert mkcomposefs_run(mkcomposefs, "--from-file", *versions, source, oracle).returncode == 0
    out = tmp_path / "out.cfs"
    assert run("build", *versions, source, out)[0] == 0
    assert out.read_bytes() == oracle.read_bytes()


def test_build_help_explains_every_mkcomposefs_option(run: Run) -> None:
    status, stdout, _ = run("build", "--help")
    assert status == 0
    for option in (
        "--digest-store",
        "--use-epoch",
        "--skip-devices",
        "--skip-xattrs",
        "--user-xattrs",
        "--print-digest ",
        "--print-digest-only",
        "--from-file",
        "--min-version N",
        "--max-version N",
    ):
        assert option in stdout, option
    assert "the lowest composefs format version" in stdout
    assert "the highest format version allowed" in stdout


def _mkcomposefs_source_dir(root: Path) -> Path:
    """A directory holding what the build flags change: times, user and
    trusted xattrs, devices, a whiteout, an opaque directory."""
    root.mkdir()
    (root / "sub").mkdir()
    (root / "opaque").mkdir()
    (root / "small").write_bytes(b"inline\n")
    (root / "big").write_bytes(bytes(range(256)) * 40)
    (root / "link").symlink_to("small")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "loop0", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.mknod(root / "sub" / "gone", 0o600 | stat.S_IFCHR, 0)  # a whiteout
    os.setxattr(root / "small", "user.mime", b"text/plain")
    os.setxattr(root / "small", "trusted.note", b"t")
    os.setxattr(root / "sub", "user.dir", b"d")
    os.setxattr(root / "opaque", "trusted.overlay.opaque", b"y")
    for number, path in enumerate(sorted(root.rglob("*"), reverse=True)):
        os.utime(path, ns=(0, 1_600_000_000_123_456_789 + number), follow_symlinks=False)
    os.utime(root, ns=(0, 1_700_000_000_000_000_001))
    return root


@pytest.mark.parametrize(
    "flags",
    [
        ("--use-epoch",),
        ("--skip-xattrs",),
        ("--user-xattrs",),
        ("--skip-devices",),
        ("--use-epoch", "--user-xattrs", "--skip-devices"),
    ],
)
def test_build_flags_as_mkcomposefs_builds_a_directory(
    flags: tuple[str, ...],
    run: Run,
    tmp_path: Path,
    mkcomposefs: Path,
    composefs_info: Path,
    fsck_erofs: Path,
) -> None:
    """mkcomposefs applies its build flags to a directory (and ignores them
    with --from-file); the dump of its flagless image, built here with the
    flag, gives the bytes mkcomposefs makes of the directory with it."""
    if os.geteuid() != 0:
        pytest.skip("making devices and trusted.* xattrs needs root")
    source = _mkcomposefs_source_dir(tmp_path / "dir")
    plain, oracle = tmp_path / "plain.cfs", tmp_path / "oracle.cfs"
    assert mkcomposefs_run(mkcomposefs, source, plain).returncode == 0
    assert mkcomposefs_run(mkcomposefs, *flags, source, oracle).returncode == 0
    dumped = subprocess.run(
        [str(composefs_info), "dump", str(plain)], capture_output=True, check=True
    ).stdout
    assert b"trusted.overlay.opaque=y" in dumped and b" 20600 " in dumped
    (tmp_path / "plain.dump").write_bytes(dumped)
    out = tmp_path / "out.cfs"
    status, _, stderr = run("build", *flags, tmp_path / "plain.dump", out)
    assert (status, stderr) == (0, "")
    assert out.read_bytes() == oracle.read_bytes()
    assert out.read_bytes() != plain.read_bytes()
    fsck(fsck_erofs, out)


def test_build_flags_apply_to_a_toc(run: Run, tmp_path: Path) -> None:
    toc = {
        "version": 1,
        "entries": [
            {
                "type": "dir",
                "name": "d/",
                "mode": 493,
                "modtime": "2020-01-01T00:00:00Z",
                "xattrs": {"user.a": "MQ==", "trusted.b": "Mg=="},
            },
            {"type": "char", "name": "d/null", "mode": 438, "devMajor": 1, "devMinor": 3},
            {"type": "hardlink", "name": "d/null2", "linkName": "d/null"},
            {"type": "reg", "name": "d/.wh.gone", "mode": 420},
            {"type": "reg", "name": "d/f", "mode": 420, "modtime": "2021-01-01T00:00:00Z"},
        ],
    }
    source = tmp_path / "toc.json"
    source.write_text(json.dumps(toc))
    out = tmp_path / "out.cfs"
    status, _, stderr = run("build", "--skip-devices", "--use-epoch", "--user-xattrs", source, out)
    assert (status, stderr) == (0, "")
    tree = read_image(out)
    assert [p for p, _ in tree] == [b"/", b"/d", b"/d/f"]
    assert all(tree.inode(p).mtime == 0 for p in tree.paths)
    assert tree.inode(b"/d").xattrs == ((b"user.a", b"1"),)
    assert run("build", "--skip-xattrs", "--skip-devices", source, out)[0] == 0
    assert all(not inode.xattrs for inode in map(read_image(out).inode, (b"/d", b"/d/f")))
    # the whiteout kept, libcomposefs marks its directory again, as mkcomposefs's does
    assert run("build", "--skip-xattrs", source, out)[0] == 0
    assert (b"trusted.overlay.opaque", b"x") in read_image(out).inode(b"/d").xattrs


def test_build_lenient_reads_upstream_non_strict_dumpfiles_as_mkcomposefs(
    run: Run, tmp_path: Path, mkcomposefs: Path, composefs_src: Path
) -> None:
    assets = composefs_src / "tests" / "assets"
    for name in ("no-newline.dump", "longlink.dump", "honggfuzz-longlink-unterminated.dump"):
        oracle = tmp_path / f"{name}.oracle"
        assert mkcomposefs_run(mkcomposefs, "--from-file", assets / name, oracle).returncode == 0
        out = tmp_path / f"{name}.cfs"
        status, _, stderr = run("build", assets / name, out)
        assert status == 1 and "Traceback" not in stderr, name  # strict by default
        assert not out.exists()
        status, _, stderr = run("build", "--lenient", assets / name, out)
        assert (status, stderr) == (0, ""), name
        assert out.read_bytes() == oracle.read_bytes(), name
    status, _, stderr = run("build", "--lenient", TOC, tmp_path / "toc.cfs")
    assert status == 1
    assert "--lenient applies to dumpfile sources" in one_error_line(stderr)


def test_validate_and_dump_take_lenient(run: Run, composefs_src: Path) -> None:
    asset = composefs_src / "tests" / "assets" / "no-newline.dump"
    assert run("validate", asset)[0] == 1
    status, stdout, _ = run("validate", "--lenient", asset)
    assert status == 0 and "ok" in stdout
    status, dumped, _ = run("dump", "--lenient", asset)
    assert status == 0
    assert dump(parse_dumpfile(dumped.encode())) == dumped  # canonical, strict again


@pytest.mark.parametrize("option", ["--digest-store", "--objects"])
def test_build_digest_store_with_a_dumpfile_stores_nothing_as_mkcomposefs(
    option: str, run: Run, tmp_path: Path, mkcomposefs: Path
) -> None:
    store = tmp_path / "store"
    oracle = tmp_path / "oracle.cfs"
    theirs = mkcomposefs_run(mkcomposefs, "--from-file", f"--digest-store={store}", SAMPLE, oracle)
    assert theirs.returncode == 0 and not store.exists()
    out = tmp_path / "out.cfs"
    status, _, stderr = run("build", option, store, SAMPLE, out)
    assert status == 0
    assert stderr == (
        f"composefs-py: warning: --digest-store: {SAMPLE} is a dumpfile, which carries "
        "no file contents: nothing is stored\n"
    )
    assert out.read_bytes() == oracle.read_bytes()
    assert not store.exists()


# ---------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------


def test_validate_good_sources(run: Run) -> None:
    for source, kind in ((SAMPLE, "dumpfile"), (TOC, "toc")):
        status, stdout, _ = run("validate", source)
        assert status == 0
        assert stdout.startswith(f"{source}: ok, ") and kind in stdout


def test_validate_hostile_toc_prints_every_problem(run: Run, tmp_path: Path) -> None:
    toc = {
        "version": 1,
        "entries": [
            {"type": "reg", "name": "a", "uid": -1},
            {"type": "bogus", "name": "b"},
            {"type": "symlink", "name": "c"},
            {"type": "dir", "name": "../d"},
        ],
    }
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(toc))
    status, stdout, _ = run("validate", path)
    assert status == 1
    lines = stdout.splitlines()
    assert len(lines) == 4, stdout
    for index, (line, field) in enumerate(zip(lines, ["uid", "type", "linkName", ""], strict=True)):
        assert line.startswith(f"{path}: entry {index} ")
        assert field in line


def test_validate_bad_dumpfile_prints_the_problem(run: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.dump"
    bad.write_bytes(b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 0 100644 1 0 0 0 2.1000000000 - - -\n")
    status, stdout, _ = run("validate", bad)
    assert status == 1
    assert stdout.count("\n") == 1 and "entry 2" in stdout and "mtime" in stdout


def test_validate_layer(run: Run) -> None:
    blob = SHARED / "small.estargz.blob"
    if not blob.is_file():
        pytest.skip(f"shared test layer {blob} not present")
    status, stdout, _ = run("validate", blob)
    assert status == 0
    assert "layer" in stdout


# ---------------------------------------------------------------------------
# dump
# ---------------------------------------------------------------------------


def test_dump_image_equals_the_library_dump(run: Run, tmp_path: Path) -> None:
    image = tmp_path / "s.cfs"
    run("build", SAMPLE, "-o", image)
    status, stdout, _ = run("dump", image)
    assert status == 0
    assert stdout == dump(read_image(image))
    assert stdout == dump(parse_dumpfile(SAMPLE.read_bytes()))


def test_dump_sandboxed_equals_in_process(run: Run, tmp_path: Path) -> None:
    image = tmp_path / "s.cfs"
    run("build", SAMPLE, "-o", image)
    assert run("dump", image, "--sandbox") == run("dump", image)


def test_dump_matches_composefs_info(run: Run, tmp_path: Path, composefs_info: Path) -> None:
    image = tmp_path / "s.cfs"
    run("build", SAMPLE, "-o", image)
    expected = subprocess.run(
        [str(composefs_info), "dump", str(image)], capture_output=True, check=True
    ).stdout.decode()
    assert run("dump", image)[1] == expected


def test_dump_source_is_canonical(run: Run, tmp_path: Path) -> None:
    status, stdout, _ = run("dump", SAMPLE)
    assert status == 0
    assert stdout == dump(parse_dumpfile(SAMPLE.read_bytes()))
    status, toc_text, _ = run("dump", TOC)
    assert status == 0
    assert toc_text == dump(parse_toc(TOC.read_bytes()))
    # dumping the dump again changes nothing
    again = tmp_path / "again.dump"
    again.write_text(toc_text)
    assert run("dump", again) == (0, toc_text, "")


def test_dump_from_stdin_image_and_text(tmp_path: Path) -> None:
    image = tmp_path / "s.cfs"
    assert main(["build", str(SAMPLE), "-o", str(image)]) == 0
    for data in (image.read_bytes(), SAMPLE.read_bytes(), gzip.compress(SAMPLE.read_bytes())):
        proc = subprocess.run(
            [sys.executable, "-m", "composefs_py", "dump", "-"],
            input=data,
            capture_output=True,
            cwd=REPO,
            check=True,
        )
        assert proc.stdout.decode() == dump(read_image(image))


def test_dump_not_an_image_nor_source(run: Run, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01" * 3000)
    status, _, stderr = run("dump", junk)
    assert status == 1
    one_error_line(stderr)


def test_dump_into_a_closed_pipe_is_quiet(tmp_path: Path, composefs_src: Path) -> None:
    asset = composefs_src / "tests" / "assets" / "config.dump.gz"
    image = tmp_path / "big.cfs"
    assert main(["build", str(asset), "-o", str(image)]) == 0
    proc = subprocess.run(
        f"{sys.executable} -m composefs_py dump {image} | head -n 1",
        shell=True,
        capture_output=True,
        cwd=REPO,
        check=True,
    )
    assert proc.stdout.startswith(b"/ ")
    assert b"Traceback" not in proc.stderr and b"Error" not in proc.stderr


# ---------------------------------------------------------------------------
# digest
# ---------------------------------------------------------------------------


def test_digest_prints_one_line_per_file(run: Run, tmp_path: Path) -> None:
    files = []
    for size in (0, 1, 4096, 4097, 1 << 20):
        path = tmp_path / f"f{size}"
        path.write_bytes(os.urandom(size))
        files.append(path)
    status, stdout, _ = run("digest", *files)
    assert status == 0
    assert stdout.splitlines() == [f"{fsverity_digest(p).hex()} {p}" for p in files]
    # one file: the digest alone (as mkcomposefs --print-digest); -H names it
    assert run("digest", files[2]) == (0, f"{fsverity_digest(files[2]).hex()}\n", "")
    assert run("digest", "-H", files[2])[1] == f"{fsverity_digest(files[2]).hex()} {files[2]}\n"


def print_digest(mkcomposefs: Path, *args: str | os.PathLike[str]) -> str:
    """What ``mkcomposefs --print-digest ARGS`` prints (it writes the image too)."""
    return subprocess.run(
        [str(mkcomposefs), "--print-digest", *map(str, args)], check=True, capture_output=True
    ).stdout.decode()


#: File sizes around the Merkle tree's boundaries (in a directory image the
#: tool hashes the files larger than 64 bytes and inlines the others).
DIR_SIZES = (0, 1, 64, 65, 4095, 4096, 4097, 128 * 4096, 128 * 4096 + 1, (1 << 20) + 7)


def test_digest_prints_what_mkcomposefs_print_digest_prints(
    run: Run, tmp_path: Path, mkcomposefs: Path, composefs_src: Path
) -> None:
    """Differential: for every image mkcomposefs writes (one per upstream
    asset and per version, one from a directory of files of many sizes),
    ``composefs-py digest IMAGE`` prints exactly the tool's line."""
    sources: list[tuple[list[str | os.PathLike[str]], str]] = []
    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    for size in DIR_SIZES:
        (source / ("sub" if size % 2 else ".") / f"f{size}").write_bytes(os.urandom(size))
    sources.append(([source], "dir"))
    for asset in sorted((composefs_src / "tests" / "assets").glob("*.dump*")):
        if asset.name.startswith("should-fail") or not asset.name.endswith((".dump", ".gz")):
            continue
        text = asset.read_bytes()
        if asset.name.endswith(".gz"):
            text = gzip.decompress(text)
        plain = tmp_path / f"{asset.name}.txt"
        plain.write_bytes(text)
        for version in ("0", "1"):
            sources.append(
                (
                    ["--from-file", f"--min-version={version}", "--max-version=1", plain],
                    f"{asset.name}-v{version}",
                )
            )
    images = 0
    for args, name in sources:
        image = tmp_path / f"{name}.cfs"
        expected = print_digest(mkcomposefs, *args, image)
        assert run("digest", image) == (0, expected, ""), name
        images += 1
    assert images >= 30  # every usable upstream asset, twice, and the directory


def test_digest_of_empty_file_is_the_kernel_value(run: Run, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    expected = "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"
    assert run("digest", tmp_path / "empty")[1].split()[0] == expected


def test_digest_missing_file_is_one_line(run: Run, tmp_path: Path) -> None:
    (tmp_path / "here").write_bytes(b"x")
    status, stdout, stderr = run("digest", tmp_path / "here", tmp_path / "gone")
    assert status == 1
    assert stdout.startswith(fsverity_digest(b"x").hex())
    assert "gone" in one_error_line(stderr)


# ---------------------------------------------------------------------------
# entry points and the no-traceback promise
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["module", "script"])
def test_entry_points_run(entry: str, tmp_path: Path) -> None:
    if entry == "module":
        argv = [sys.executable, "-m", "composefs_py"]
    else:
        script = shutil.which("composefs-py", path=str(Path(sys.executable).parent))
        if script is None:
            pytest.skip("the console script is not installed in this environment")
        argv = [script]
    ok = subprocess.run([*argv, "digest", str(SAMPLE)], capture_output=True, cwd=REPO)
    assert ok.returncode == 0
    assert ok.stdout.decode() == f"{fsverity_digest(SAMPLE).hex()}\n"
    bad = tmp_path / "bad.dump"
    bad.write_bytes(b"/ 0 40755 2 0 0 0 0.0 - - -\n/.. 0 100644 1 0 0 0 0.0 - - -\n")
    failed = subprocess.run(
        [*argv, "build", str(bad), "-o", str(tmp_path / "x.cfs")], capture_output=True
    )
    assert failed.returncode == 1
    one_error_line(failed.stderr.decode())
    usage = subprocess.run([*argv, "build"], capture_output=True)
    assert usage.returncode == 2


# ---------------------------------------------------------------------------
# mount / unmount / sandbox-info
# ---------------------------------------------------------------------------


def test_mount_missing_image_is_one_line(run: Run, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "objects").mkdir()
    status, _, stderr = run(
        "mount", tmp_path / "none.cfs", tmp_path / "mnt", "--objects", tmp_path / "objects"
    )
    assert status == 1
    assert "none.cfs" in one_error_line(stderr)


def test_unmount_of_a_plain_directory_is_one_line(run: Run, tmp_path: Path) -> None:
    status, _, stderr = run("unmount", tmp_path)
    assert status == 1
    one_error_line(stderr)


def test_build_mount_list_unmount(run: Run, tmp_path: Path) -> None:
    from test_mount import require_mounts

    require_mounts()
    blob = SHARED / "small.zstd-chunked.blob"
    if not blob.is_file():
        pytest.skip(f"shared test layer {blob} not present")
    image, objects, mnt = tmp_path / "l.cfs", tmp_path / "objects", tmp_path / "mnt"
    objects.mkdir()
    mnt.mkdir()
    assert run("build", blob, "-o", image, "--objects", objects)[0] == 0
    status, _, stderr = run("mount", image, mnt, "--objects", objects)
    assert status == 0, stderr
    try:
        tree = read_image(image)
        regular = [
            path
            for path, node in tree
            if isinstance(node, Inode) and node.size > 0 and node.payload
        ]
        assert regular
        for path in regular[:20]:
            node = tree.inode(path)
            content = (mnt / path.decode().lstrip("/")).read_bytes()
            assert len(content) == node.size
            assert hashlib.sha256(content).hexdigest() == (node.payload or b"").decode().replace(
                "/", ""
            )
    finally:
        status, _, stderr = run("unmount", mnt)
    assert status == 0, stderr
    assert list(mnt.iterdir()) == []


def test_sandbox_info_reports_each_protection(run: Run) -> None:
    status, stdout, _ = run("sandbox-info")
    assert status == 0
    report = dict(line.split(": ", 1) for line in stdout.splitlines())
    for key in ("rlimits", "no_new_privs", "seccomp", "landlock"):
        assert report[key] in ("yes", "no")
