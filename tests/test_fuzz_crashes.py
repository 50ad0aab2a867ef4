"""Replay every input in fuzz/crashes/ through its fuzz target (fuzz/targets.py).

Each file lives in ``fuzz/crashes/<target>/``.  In this process (the regular
libcomposefs build) every file must run clean: no exception but
ValidationError, no failed check, unless :data:`KNOWN` lists it as a bug
reported and not yet fixed, in which case it must still fail exactly as
recorded (when it stops failing, the entry goes: the test says so).

With the ASan+UBSan build (``make fuzz-deps``) and atheris installed, each
file also runs through the libFuzzer harness in a child process, where it
must run clean.  :data:`KNOWN_SANITIZER` lists the libcomposefs image-loader
bugs that read_image's structural check (composefs_py/_erofs.py) keeps
away from libcomposefs: each of those files also runs with the check
bypassed (``CFSPY_FUZZ_UNCHECKED=1``), where the sanitizers must still report
the upstream bug (with the report's summary line).  See
fuzz/crashes/README.md for what each file is.
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

from composefs_py._erofs import check_image  # noqa: E402
from composefs_py.errors import ValidationError  # noqa: E402
from fuzz.targets import TARGETS, replay  # noqa: E402

CRASHES = REPO / "fuzz" / "crashes"

#: Findings in code outside fuzz/ that are reported and not fixed yet:
#: file (relative to fuzz/crashes) -> (exception type, text its message holds).
KNOWN: dict[str, tuple[type[BaseException], str]] = {
    # (writer/payload-read-overrun.dump: libcomposefs 1.0.8's loader strips the
    # redirect's leading "/" with `value_size++` instead of `value_size--` and
    # appends the 2 bytes after the value; read_image repairs the payload from
    # what its structural check reads, so the replay passes.)
}

#: Files the sanitized libcomposefs reports when they reach it unchecked:
#: file -> texts of the report.  These are memory errors in libcomposefs
#: 1.0.8's image loader (lcfs_load_node_from_image), reachable from untrusted
#: image bytes (in the regular build their outcome is undefined: often
#: nothing, sometimes a SIGSEGV or a glibc heap-corruption abort).
#: read_image's structural check rejects each of them first.
KNOWN_SANITIZER: dict[str, tuple[str, ...]] = {
    # erofs_readdir_block() reads dirents[0].nameoff of a directory block
    # before checking that the block lies inside the image (ASan calls it a
    # heap-buffer-overflow, a heap-use-after-free or a SEGV depending on where
    # the block address points).
    "reader/asan-erofs-readdir-block-overflow.cfs": (
        "ERROR: AddressSanitizer",
        "lcfs-writer-erofs.c:1546",
    ),
    "reader/segv-erofs-readdir-block.cfs": ("ERROR: AddressSanitizer", "lcfs-writer-erofs.c:1546"),
    # The same read from a directory with the inline layout and i_size 0: the
    # count of out-of-line blocks (n_blocks - 1) wraps to 2**64 - 1.
    "reader/asan-erofs-readdir-inline-size0.cfs": (
        "ERROR: AddressSanitizer: heap-buffer-overflow",
        "lcfs-writer-erofs.c:1546",
    ),
    # erofs_readdir_block() copies a child name (memcpy) whose offset and
    # length come from the dirents without a bounds check.
    "reader/asan-erofs-readdir-name-overflow.cfs": (
        "ERROR: AddressSanitizer",
        "lcfs-writer-erofs.c:1580",
    ),
    # lcfs_build_node_from_image() (lcfs-writer-erofs.c:1706) takes a reference
    # on a node that was already freed: heap use after free; the regular build
    # aborts with "malloc(): smallbin double linked list corrupted".
    "reader/asan-use-after-free-lcfs-node-ref.cfs": (
        "ERROR: AddressSanitizer: heap-use-after-free",
        "in lcfs_node_ref",
    ),
    # Shared xattrs (lcfs-writer-erofs.c:1920) are read at an index taken
    # from the inode without checking it against the xattr area.
    "reader/segv-build-node-xattr.cfs": ("ERROR: AddressSanitizer", "lcfs-writer-erofs.c:1920"),
}


def _skip_without_peer(target: str) -> None:
    """The differential targets replay only where their peer is (fuzz/peers)."""
    from fuzz import peers

    if target == "dumpfile_diff" and peers.find_mkcomposefs() is None:
        pytest.skip("mkcomposefs not found: run scripts/bootstrap.sh (make deps)")
    if target == "toc_diff" and not peers.TocPeer.available():
        pytest.skip("the containers/storage peer is not built (.deps/cstorage)")


def crash_files() -> list[Path]:
    if not CRASHES.is_dir():
        return []
    return sorted(
        p
        for p in CRASHES.glob("*/*")
        if p.is_file() and p.parent.name in TARGETS and not p.name.startswith(".")
    )


def _id(path: Path) -> str:
    return str(path.relative_to(CRASHES))


def test_every_crash_file_belongs_to_a_target() -> None:
    for path in CRASHES.rglob("*"):
        if path.is_file() and path.parent != CRASHES:
            assert path.parent.name in TARGETS, f"{_id(path)}: no target {path.parent.name!r}"
    for name in [*KNOWN, *KNOWN_SANITIZER]:
        assert (CRASHES / name).is_file(), f"{name} is listed but missing"


@pytest.mark.parametrize("path", crash_files(), ids=_id)
def test_crash_replays_clean_or_as_reported(path: Path) -> None:
    name = _id(path)
    _skip_without_peer(path.parent.name)
    known = KNOWN.get(name)
    if known is None:
        replay(path.parent.name, path.read_bytes())
        return
    kind, text = known
    try:
        replay(path.parent.name, path.read_bytes())
    except kind as err:
        assert text in str(err), f"{name} fails differently now: {err}"
    else:
        pytest.fail(f"{name} no longer fails: the bug is fixed, drop it from KNOWN")


def _sanitized_env() -> dict[str, str] | None:
    pylib = REPO / ".deps" / "asan" / "pylib" / "composefs_py"
    if not any(pylib.glob("_lcfs*.so")):
        return None
    proc = subprocess.run(
        [sys.executable, "-c", "import atheris; print(atheris.path())"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=str(Path(proc.stdout.strip()) / "asan_with_fuzzer.so"),
        CFSPY_ASAN_PYLIB=str(pylib),
        PYTHONPATH=str(REPO),
        ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1",
        UBSAN_OPTIONS=f"halt_on_error=1:suppressions={REPO / 'fuzz' / 'ubsan.supp'}",
    )
    return env


def _harness(path: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz.harness", path.parent.name, str(path)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(n for n in KNOWN_SANITIZER if n.startswith("reader/")))
def test_structural_check_rejects_every_loader_bug_reproducer(name: str) -> None:
    with pytest.raises(ValidationError, match="not a valid composefs image"):
        check_image((CRASHES / name).read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", [p for p in crash_files() if TARGETS[p.parent.name].native], ids=_id
)
def test_crash_replays_under_asan_and_ubsan(path: Path) -> None:
    env = _sanitized_env()
    if env is None:
        pytest.skip("no sanitized build or no atheris: run `make fuzz-deps`")
    _skip_without_peer(path.parent.name)
    returncode, report = _harness(path, env)
    python_finding = "Uncaught Python exception" in report and _id(path) in KNOWN
    assert returncode == 0 or python_finding, report[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KNOWN_SANITIZER))
def test_unchecked_loader_bug_still_reported_under_asan(name: str) -> None:
    # Documents the upstream bug the structural check keeps away: with the
    # check bypassed the bytes reach libcomposefs, and the sanitizers report.
    env = _sanitized_env()
    if env is None:
        pytest.skip("no sanitized build or no atheris: run `make fuzz-deps`")
    returncode, report = _harness(CRASHES / name, {**env, "CFSPY_FUZZ_UNCHECKED": "1"})
    if returncode == 0:
        pytest.fail(f"{name} runs clean under ASan now: libcomposefs fixed it, drop it")
    assert all(text in report for text in KNOWN_SANITIZER[name]), report[-3000:]
