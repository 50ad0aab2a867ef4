"""Shared pytest fixtures and Hypothesis profiles.

Fixtures (session scoped):

``mkcomposefs``, ``composefs_info``
    Path of the upstream tools, the test oracles: ``$COMPOSEFS_PREFIX/bin``,
    then ``.deps/prefix/bin`` (built by scripts/bootstrap.sh), then ``PATH``.
``composefs_src``
    Path of the extracted upstream composefs source (Debian's source
    package, fetched by the bootstrap); its ``tests/assets`` holds the
    upstream dumpfiles and checksums.  ``$COMPOSEFS_SRC`` overrides.
``fsck_erofs``
    Path of ``fsck.erofs`` (Debian's erofs-utils), or the test is skipped.
``run_mkcomposefs``
    ``run_mkcomposefs(dump_text: bytes, *args) -> bytes``: the image
    ``mkcomposefs --from-file`` writes for that dumpfile.

Hypothesis profiles: ``ci`` (default) and ``long``; pick one with
``HYPOTHESIS_PROFILE=long``.  The cost properties (tests/test_cost.py) run
three measuring children per example, so they take their own example count
and scale from the profile's name: ``ci`` runs each property's explicit
examples and one drawn shape without shrinking, ``long`` twelve drawn shapes
at twice the scale, shrunk.

Leak check (autouse, every test): a test that leaves a new erofs, overlay or
composefs mount (``/proc/self/mountinfo``) or a new file-backed loop device
(``/sys/block/loop*/loop/backing_file``) behind fails at teardown, and what
it left is detached.  So that mounts made by other processes (another
engineer's test run on the same machine) are not mistaken for this run's, the
session runs, when it can (root), in a private mount namespace of its own
(``unshare(CLONE_NEWNS)`` at configure time; children inherit it; whatever it
holds is torn down when the run ends).  Loop devices are global: only those
whose backing file lies under this run's ``basetemp`` are counted (a loop
that holds a leaked mount is caught through the mount anyway).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parent.parent
DEPS = REPO / ".deps"

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "long",
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _find_tool(name: str, *, sbin: bool = False) -> Path | None:
    dirs = []
    prefix = os.environ.get("COMPOSEFS_PREFIX")
    if prefix:
        dirs.append(Path(prefix) / ("sbin" if sbin else "bin"))
    dirs.append(DEPS / "prefix" / ("sbin" if sbin else "bin"))
    for directory in dirs:
        candidate = directory / name
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def _require_tool(name: str) -> Path:
    path = _find_tool(name)
    if path is None:
        pytest.skip(f"{name} not found: run scripts/bootstrap.sh (make deps)")
    return path


@pytest.fixture(scope="session")
def mkcomposefs() -> Path:
    return _require_tool("mkcomposefs")


@pytest.fixture(scope="session")
def composefs_info() -> Path:
    return _require_tool("composefs-info")


@pytest.fixture(scope="session")
def fsck_erofs() -> Path:
    path = _find_tool("fsck.erofs", sbin=True) or (
        Path("/usr/sbin/fsck.erofs") if os.access("/usr/sbin/fsck.erofs", os.X_OK) else None
    )
    if path is None:
        pytest.skip("fsck.erofs not found (Debian package erofs-utils)")
    return path


@pytest.fixture(scope="session")
def composefs_src() -> Path:
    candidates = []
    if os.environ.get("COMPOSEFS_SRC"):
        candidates.append(Path(os.environ["COMPOSEFS_SRC"]))
    recorded = DEPS / "composefs-src-path"
    if recorded.is_file():
        candidates.append(Path(recorded.read_text().strip()))
    candidates.append(DEPS / "src" / "composefs")
    for candidate in candidates:
        if (candidate / "tests" / "assets").is_dir():
            return candidate.resolve()
    pytest.skip("upstream composefs source not found: run scripts/bootstrap.sh (make deps)")


@pytest.fixture(scope="session")
def run_mkcomposefs(mkcomposefs: Path) -> Callable[..., bytes]:
    def run(dump_text: bytes, *args: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="cfspy-mkcomposefs-") as tmp:
            out = Path(tmp) / "image.cfs"
            subprocess.run(
                [str(mkcomposefs), *args, "--from-file", "-", str(out)],
                input=dump_text,
                check=True,
                capture_output=True,
            )
            return out.read_bytes()

    return run


# ---------------------------------------------------------------------------
# leak check: no composefs/erofs/overlay mount, no file-backed loop device left
# ---------------------------------------------------------------------------

_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2
_LOOP_CLR_FD = 0x4C01
_LEAK_FSTYPES = frozenset({"erofs", "overlay"})
_private_mount_namespace = False


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def pytest_configure(config: pytest.Config) -> None:
    """Enter a private mount namespace (root only): see the module docstring."""
    global _private_mount_namespace
    if os.geteuid() != 0 or not Path("/proc/self/mountinfo").exists():
        return
    libc = _libc()
    if libc.unshare(_CLONE_NEWNS) != 0:
        return  # e.g. threads already running (EINVAL): check the shared view instead
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "cannot make / private in the test mount namespace")
    _private_mount_namespace = True


def _unescape_mountinfo(field: str) -> str:
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def composefs_mounts() -> set[tuple[int, str, str, str]]:
    """(mount id, mount point, fstype, source) of every erofs, overlay or composefs mount."""
    found = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            tail = fields[fields.index("-") + 1 :]
            fstype, source = tail[0], tail[1] if len(tail) > 1 else ""
            if fstype in _LEAK_FSTYPES or source.startswith("composefs"):
                found.add((int(fields[0]), _unescape_mountinfo(fields[4]), fstype, source))
    return found


def file_loop_devices() -> dict[str, str]:
    """``/dev/loopN`` -> backing file, for every loop device bound to a file."""
    found = {}
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            found["/dev/" + backing.parent.parent.name] = backing.read_text().rstrip("\n")
        except OSError:  # unbound between the glob and the read
            continue
    return found


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


@pytest.fixture(autouse=True)
def no_leaked_mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the test if it leaves a mount or a loop device behind (see module docstring)."""
    base = str(tmp_path_factory.getbasetemp().resolve())
    mounts_before = composefs_mounts()
    loops_before = file_loop_devices()
    yield
    new_mounts = composefs_mounts() - mounts_before
    if not _private_mount_namespace:
        # Shared with other processes: count only mounts this run can own.
        # libcomposefs and mount_layers stage image mounts in /tmp/.composefs*.
        new_mounts = {m for m in new_mounts if _under(m[1], base) or "/.composefs" in m[1]}
    new_loops = {
        dev: backing
        for dev, backing in file_loop_devices().items()
        if loops_before.get(dev) != backing and _under(backing, base)
    }
    if not new_mounts and not new_loops:
        return
    libc = _libc()
    for _, point, _, _ in sorted(new_mounts, key=lambda m: -len(m[1])):
        libc.umount2(os.fsencode(point), _MNT_DETACH)
    for dev in new_loops:
        try:
            fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            with contextlib.suppress(OSError):  # ENXIO: unbound meanwhile
                fcntl.ioctl(fd, _LOOP_CLR_FD)
        finally:
            os.close(fd)
    shown = [f"{fstype} {source} on {point}" for _, point, fstype, source in sorted(new_mounts)]
    shown += [f"loop device {dev} backed by {backing}" for dev, backing in new_loops.items()]
    pytest.fail("the test left behind (now detached): " + "; ".join(shown), pytrace=False)
