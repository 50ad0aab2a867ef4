"""Confinement (DESIGN rule 8): nothing outside the object store or the output folder is reached.

A name that comes from an input (an object's payload in an image or a
dumpfile) or from the file system the package works in (a symlink planted in
the object store or the output folder by whoever else can write there) must
never lead outside: nothing outside is opened, read, written, created,
renamed into or changed.

How it is observed: **canaries**.  Each test has a "site" folder holding the
object store (``site/store``) and, next to it, ``site/outside``, plus a far
canary ``/tmp/cfspy-canary-*``; both hold a file whose content is a valid
object (``decoy/<name>``, so a followed link would even verify), other
files, a FIFO and directories.  While an operation runs, every directory of
the canaries (and the site itself) is watched with **inotify** (open,
access, create, modify, attrib, moved-to, delete); a before/after snapshot
(names and ``lstat``) catches what inotify could miss.  Any event or change
fails the test, naming it.  The operation runs in a **forked child**: code
that follows a name into a FIFO blocks in ``open`` for ever, so a child
asleep opening a FIFO (``wait_for_partner``) for a second is killed and the
test fails naming the path it was opening (``/proc/PID/syscall`` and
``/proc/PID/mem``); any other child has a generous timeout.

What is checked:

* the object store: planted symlinks (to a canary directory, a canary file,
  a FIFO, a dangling target) at the fan-out directory ``ab``, at the object
  name ``ab/cdef...``, at the names the store picks for temporary files
  (made predictable in the child), and non-regular objects (a FIFO, a
  directory) for ``add``, ``writer().commit()``, ``batch()``, a real layer's
  ``import_objects``, ``has``, ``verify``, ``payloads``, ``path_for``,
  ``fsverity_digest``, ``enable_verity``, ``remove_stale_temporary_files``
  and ``mount`` with verity: nothing outside changes, a symlinked object is
  never reported present or valid, and the operation either works inside the
  store or raises a clear error (OSError or ComposefsError);
* the output folder: ``write_image`` and ``composefs-py build -o`` with
  symlinks planted at the temporary names (made predictable in the child),
  a destination that is a symlink (written through, nothing else touched),
  and ``mount_layers``' staging folders;
* payload strings of every shape (:func:`composefs_py.strategies.hostile_payloads`)
  through ``parse_dumpfile``, ``read_image`` (images written by the upstream
  ``mkcomposefs``, which takes any payload) and ``mount`` with
  ``try_verity``/``require_verity``: every non-digest payload is refused and
  nothing outside the store is opened;
* an input's own ``trusted.overlay.*`` xattrs cannot steer a stacked mount.

Mount tests need root and a kernel with erofs and overlayfs; elsewhere they
are skipped with the reason.  A mount left behind fails the test (the
autouse leak check of conftest.py, and the checks here).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import pickle
import platform
import select
import signal
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, reject, settings
from hypothesis import strategies as st
from test_mount import require_mounts

from composefs_py import strategies as cst
from composefs_py.dumpfile import parse_dumpfile
from composefs_py.errors import ComposefsError, ValidationError
from composefs_py.fsverity import fsverity_digest
from composefs_py.objects import ObjectStore
from composefs_py.toc import parse_toc

REPO = Path(__file__).resolve().parent.parent
LAYERS = Path(__file__).resolve().parent / "data" / "layers"
MKCOMPOSEFS = REPO / ".deps" / "prefix" / "bin" / "mkcomposefs"

#: The content every test stores; its sha256 names it.
DATA = b"confined object content\n" * 8
OTHER = b"another object\n" * 8


def object_name(data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    return f"{digest[:2]}/{digest[2:]}".encode()


NAME = object_name(DATA)
OTHER_NAME = object_name(OTHER)
FAN, LEAF = NAME[:2].decode(), NAME[3:].decode()

# ---------------------------------------------------------------------------
# inotify (ctypes)
# ---------------------------------------------------------------------------

IN_ACCESS = 0x001
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_OPEN = 0x020
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
WATCH_MASK = (
    IN_OPEN
    | IN_ACCESS
    | IN_CREATE
    | IN_MODIFY
    | IN_ATTRIB
    | IN_MOVED_TO
    | IN_MOVED_FROM
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_EVENT_NAMES = {
    IN_ACCESS: "ACCESS",
    IN_MODIFY: "MODIFY",
    IN_ATTRIB: "ATTRIB",
    IN_OPEN: "OPEN",
    IN_MOVED_FROM: "MOVED_FROM",
    IN_MOVED_TO: "MOVED_TO",
    IN_CREATE: "CREATE",
    IN_DELETE: "DELETE",
    IN_DELETE_SELF: "DELETE_SELF",
    IN_MOVE_SELF: "MOVE_SELF",
    IN_Q_OVERFLOW: "Q_OVERFLOW",
}
_EVENT = struct.Struct("iIII")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class Inotify:
    """An inotify instance (non-blocking) watching directories."""

    def __init__(self) -> None:
        libc = _libc()
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        self.fd: int = fd
        self.watches: dict[int, Path] = {}

    def watch(self, path: Path) -> None:
        wd = self._add(self.fd, os.fsencode(path), WATCH_MASK | IN_DONT_FOLLOW | IN_ONLYDIR)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_add_watch {path}: {os.strerror(code)}")
        self.watches[wd] = path

    def events(self) -> list[tuple[Path, str, str]]:
        """(watched dir, event names, entry name) of everything queued so far."""
        found = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return found
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
                offset += _EVENT.size + length
                if mask & IN_IGNORED:
                    continue
                names = "|".join(n for bit, n in _EVENT_NAMES.items() if mask & bit)
                if mask & IN_ISDIR:
                    names += "(dir)"
                name = os.fsdecode(raw.rstrip(b"\0"))
                found.append((self.watches.get(wd, Path("?")), names, name))

    def close(self) -> None:
        os.close(self.fd)


# ---------------------------------------------------------------------------
# canaries
# ---------------------------------------------------------------------------


def make_canary(root: Path) -> None:
    """Files, a FIFO and directories that nothing may reach.

    ``decoy/`` holds files named like the objects the tests use, with the
    content that name stands for: a store that follows a planted link would
    find them present and valid.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "secret").write_bytes(b"outside the store\n")
    os.mkfifo(root / "fifo")
    (root / "decoy").mkdir()
    (root / "decoy" / LEAF).write_bytes(DATA)
    (root / "decoy" / NAME.decode().replace("/", "")).write_bytes(DATA)
    (root / "empty").mkdir()
    (root / "sub").mkdir()
    (root / "sub" / "inner").write_bytes(b"deeper\n")


Snapshot = dict[str, tuple[int, ...] | str]


def snapshot(root: Path) -> Snapshot:
    """Every entry below ``root`` (and root itself): lstat fields, link targets."""
    seen: Snapshot = {}
    stack = [root]
    while stack:
        path = stack.pop()
        st_ = os.lstat(path)
        seen[str(path)] = (
            st_.st_mode,
            st_.st_ino,
            st_.st_nlink,
            st_.st_uid,
            st_.st_gid,
            st_.st_size,
            st_.st_mtime_ns,
            st_.st_ctime_ns,
        )
        if stat.S_ISLNK(st_.st_mode):
            seen[str(path) + " ->"] = os.readlink(path)
        elif stat.S_ISDIR(st_.st_mode):
            stack.extend(path / name for name in os.listdir(path))
    return seen


def diff_snapshots(before: Snapshot, after: Snapshot) -> list[str]:
    problems = [f"{p} appeared" for p in sorted(after.keys() - before.keys())]
    problems += [f"{p} disappeared" for p in sorted(before.keys() - after.keys())]
    problems += [
        f"{p} changed: {before[p]} -> {after[p]}"
        for p in sorted(before.keys() & after.keys())
        if before[p] != after[p]
    ]
    return problems


@dataclass
class Site:
    """``root/store`` (the object store), ``root/outside`` and ``far`` (canaries)."""

    root: Path
    far: Path

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    def canaries(self) -> list[Path]:
        return [self.outside, self.far]


@contextlib.contextmanager
def untouched(site: Site, *, site_names: Sequence[str] = ("store", "mnt", "out")) -> Iterator[None]:
    """Fail if anything in the canaries (or a new name in the site) is touched meanwhile.

    In the site folder itself only entries other than ``site_names`` count
    (the store, mount point and output folder live there and are used).
    """
    before = {root: snapshot(root) for root in site.canaries()}
    site_before = sorted(set(os.listdir(site.root)) - set(site_names))
    notify = Inotify()
    try:
        for root in site.canaries():  # every directory: events of its entries and itself
            for path, fields in before[root].items():
                if isinstance(fields, tuple) and stat.S_ISDIR(fields[0]):
                    notify.watch(Path(path))
        notify.watch(site.root)
        yield
        events = [e for e in notify.events() if not (e[0] == site.root and e[2] in site_names)]
    finally:
        notify.close()
    problems = [
        f"inotify {what} on {directory / name if name else directory}"
        for directory, what, name in events
    ]
    for root in site.canaries():
        problems += diff_snapshots(before[root], snapshot(root))
    site_after = sorted(set(os.listdir(site.root)) - set(site_names))
    if site_after != site_before:
        problems.append(f"the site folder changed: {site_before} -> {site_after}")
    if problems:
        raise AssertionError("reached outside the store: " + "; ".join(dict.fromkeys(problems)))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    far = Path(tempfile.mkdtemp(prefix="cfspy-canary-", dir="/tmp"))
    made = Site(tmp_path / "site", far)
    made.root.mkdir()
    made.store.mkdir()
    make_canary(made.outside)
    make_canary(far)
    try:
        yield made
    finally:
        _remove_tree(far)


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
        if child.is_dir() and not child.is_symlink():
            child.rmdir()
        else:
            child.unlink()
    path.rmdir()


# ---------------------------------------------------------------------------
# running an operation in a child
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What an operation did in the child: ``returned``, ``raised``, ``hung`` or ``died``."""

    kind: str
    value: Any = None
    error: str = ""  # "ClassName: message"
    clear: bool = False  # an OSError or ComposefsError
    validation: bool = False  # a ValidationError
    error_field: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        if self.kind == "returned":
            return f"returned {self.value!r}"
        if self.kind == "raised":
            return f"raised {self.error}"
        return f"{self.kind}: {self.detail}"


def describe(exc: BaseException) -> Outcome:
    return Outcome(
        "raised",
        error=f"{type(exc).__name__}: {exc}",
        clear=isinstance(exc, OSError | ComposefsError),
        validation=isinstance(exc, ValidationError),
        error_field=getattr(exc, "field", None),
    )


#: The kernel function a task sleeps in while opening a FIFO no one has opened
#: from the other side: an open that can hang for ever.
FIFO_OPEN_WAIT = "wait_for_partner"


def _tasks_waiting_on_a_fifo(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/task/{task}/wchan").read_text() == FIFO_OPEN_WAIT:
                    found.append(int(task))
    return found


def _blocked_in(pid: int, task: int | None = None) -> str:
    """Where a hung child (or one of its threads) is blocked: the kernel function,
    the syscall and, for an open, the path (read from the child's memory)."""
    base = f"/proc/{pid}" if task is None else f"/proc/{pid}/task/{task}"
    parts = []
    with contextlib.suppress(OSError):
        parts.append("wchan " + Path(f"{base}/wchan").read_text())
    try:
        fields = Path(f"{base}/syscall").read_text().split()
    except OSError:
        return ", ".join(parts)
    if fields and fields[0].isdigit():
        number = int(fields[0])
        # x86_64: 2 open(path), 257 openat(dirfd, path); aarch64: 56 openat.
        opens = {"x86_64": {2: 1, 257: 2}, "aarch64": {56: 2}}.get(platform.machine(), {})
        parts.append(f"syscall {number}")
        if number in opens:
            address = int(fields[opens[number]], 16)
            try:
                with open(f"/proc/{pid}/mem", "rb") as mem:
                    mem.seek(address)
                    path = mem.read(4096).split(b"\0")[0]
                parts.append(f"blocked opening {os.fsdecode(path)!r}")
            except (OSError, ValueError, OverflowError):
                pass
    return ", ".join(parts)


def run_in_child(fn: Callable[[], Any], timeout: float = 30.0) -> Outcome:
    """Run ``fn`` in a forked child; report what it returned or raised.

    A child blocked opening a FIFO for a second is a hang (reported at once,
    with the path); any other child gets ``timeout`` seconds (generous: the
    machine may be loaded).  A hung child is killed.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 0
        try:
            os.close(read_end)
            try:
                value = fn()
                outcome = Outcome("returned", value)
            except BaseException as exc:
                outcome = describe(exc)
            try:
                data = pickle.dumps(outcome)
            except Exception:
                data = pickle.dumps(Outcome(outcome.kind, repr(outcome.value), outcome.error))
            view = memoryview(data)
            while view:
                view = view[os.write(write_end, view) :]
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + timeout
    waiting_since: float | None = None
    try:
        while True:
            now = time.monotonic()
            ready = select.select([read_end], [], [], min(0.2, max(deadline - now, 0)))[0]
            if not ready:
                waiting = _tasks_waiting_on_a_fifo(pid)
                waiting_since = (waiting_since or now) if waiting else None
                if now >= deadline or (waiting_since is not None and now - waiting_since > 1):
                    detail = _blocked_in(pid, waiting[0] if waiting else None)
                    why = (
                        "blocked opening a FIFO" if waiting else f"no answer after {timeout:.0f} s"
                    )
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    return Outcome("hung", detail=f"{why}; {detail}")
                continue
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return Outcome("died", detail=f"wait status {status:#x}")
    result: Outcome = pickle.loads(b"".join(chunks))
    return result


def assert_clear_or(outcome: Outcome, *allowed: object) -> None:
    """The operation returned one of ``allowed`` or raised a clear error."""
    if outcome.kind == "raised":
        assert outcome.clear, f"not a clear error: {outcome}"
        return
    assert outcome.kind == "returned", str(outcome)
    assert outcome.value in allowed, f"{outcome} (expected one of {allowed} or a clear error)"


# ---------------------------------------------------------------------------
# planting
# ---------------------------------------------------------------------------

#: Where a planted link of each kind points (relative to the site), or what
#: is put there instead of a link ("fifo-here", "dir-here").
LINK_KINDS = {
    "decoy-dir": "outside/decoy",
    "empty-dir": "outside/empty",
    "far-dir": "FAR/empty",
    "decoy-file": f"outside/decoy/{LEAF}",
    "far-file": "FAR/secret",
    "fifo": "outside/fifo",
    "far-fifo": "FAR/fifo",
    "dangling": "outside/empty/missing",
}
FANOUT_KINDS = ["decoy-dir", "empty-dir", "far-dir", "decoy-file", "fifo", "dangling"]
OBJECT_KINDS = ["decoy-file", "far-file", "fifo", "far-fifo", "dangling", "decoy-dir"]
OBJECT_KINDS += ["fifo-here", "dir-here"]
TEMP_KINDS = ["far-file", "fifo", "dangling", "empty-dir"]
#: (level, kind): a fan-out directory ``ab`` or an object ``ab/cdef...`` planted.
STORE_PLANTS = [("fanout", k) for k in FANOUT_KINDS] + [("object", k) for k in OBJECT_KINDS]


def link_target(site: Site, kind: str) -> Path:
    where = LINK_KINDS[kind]
    if where.startswith("FAR/"):
        return site.far / where[4:]
    return site.root / where


def plant(site: Site, at: Path, kind: str) -> None:
    """Put a ``kind`` thing at ``at`` (a path in the store)."""
    if kind == "fifo-here":
        os.mkfifo(at)
    elif kind == "dir-here":
        at.mkdir()
        (at / "x").write_bytes(DATA)
    else:
        at.symlink_to(link_target(site, kind))


def plant_in_store(site: Site, level: str, kind: str, name: bytes = NAME) -> None:
    """Plant at the fan-out dir (``fanout``) or the object name (``object``) of ``name``."""
    fan = site.store / name[:2].decode()
    if level == "fanout":
        plant(site, fan, kind)
    else:
        fan.mkdir(exist_ok=True)
        plant(site, fan / name[3:].decode(), kind)


def predictable_store_temporaries(store_root: Path, site: Site, kind: str) -> list[Path]:
    """In the child: make the store's temporary names predictable and plant there.

    The store names temporary files ``.tmp-PID-COUNT-RANDOM``; with
    ``os.urandom`` giving zeros the first few names are known.  (Should the
    naming change, these plants simply sit at unused names.)
    """
    os.urandom = lambda n: b"\0" * n
    planted = []
    for count in range(1, 6):
        at = store_root / f".tmp-{os.getpid()}-{count}-00000000"
        plant(site, at, kind)
        planted.append(at)
    return planted


def confined_object(store_root: Path, name: bytes, data: bytes | None) -> str | None:
    """None if ``name`` is a regular file reached without links (holding ``data``
    unless None); else what is wrong."""
    fan = store_root / name[:2].decode()
    leaf = fan / name[3:].decode()
    try:
        fan_mode = os.lstat(fan).st_mode
        if not stat.S_ISDIR(fan_mode):
            return f"{fan} is not a directory (mode {fan_mode:o})"
        leaf_mode = os.lstat(leaf).st_mode
        if not stat.S_ISREG(leaf_mode):
            return f"{leaf} is not a regular file (mode {leaf_mode:o})"
        fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return f"{exc}"
    try:
        content = b""
        while chunk := os.read(fd, 1 << 16):
            content += chunk
    finally:
        os.close(fd)
    return None if data is None or content == data else f"{leaf} holds other content"


def store_temporaries(store_root: Path, planted: Sequence[Path] = ()) -> list[str]:
    keep = {p.name for p in planted}
    return sorted(n for n in os.listdir(store_root) if n.startswith(".tmp") and n not in keep)


# ---------------------------------------------------------------------------
# the object store: operations that create objects
# ---------------------------------------------------------------------------


def _op_add(store: ObjectStore) -> object:
    return store.add(DATA)


def _op_add_expected(store: ObjectStore) -> object:
    return store.add(DATA, "sha256:" + hashlib.sha256(DATA).hexdigest())


def _op_writer(store: ObjectStore) -> object:
    with store.writer() as out:
        out.write(DATA[:10])
        out.write(DATA[10:])
        return out.commit()


def _op_batch(store: ObjectStore) -> object:
    with store.batch():
        first = store.add(OTHER)
        second = store.add(DATA, hashlib.sha256(DATA).digest())
    return first, second


CREATE_OPS: dict[str, Callable[[ObjectStore], object]] = {
    "add": _op_add,
    "add-expected": _op_add_expected,
    "writer-commit": _op_writer,
    "batch": _op_batch,
}


def _create_and_look(store_root: Path, op: Callable[[ObjectStore], object]) -> dict[str, Any]:
    """In the child: run ``op`` on a fresh store (durable: the fsyncs of the fan-out
    directory and the root are paths too), then ask ``has`` and ``verify``."""
    store = ObjectStore(store_root)
    result: dict[str, Any] = {}
    try:
        result["op"] = Outcome("returned", op(store))
    except BaseException as exc:
        result["op"] = describe(exc)
    for question in ("has", "verify"):
        try:
            result[question] = Outcome("returned", getattr(ObjectStore(store_root), question)(NAME))
        except BaseException as exc:
            result[question] = describe(exc)
    return result


def check_created(site: Site, outcome: Outcome, planted: Sequence[Path] = ()) -> None:
    """After a creating operation: it worked inside the store or failed clearly;
    ``has``/``verify`` never vouch for an object that is not a confined regular file."""
    assert outcome.kind == "returned", str(outcome)
    result: dict[str, Outcome] = outcome.value
    op = result["op"]
    problem = confined_object(site.store, NAME, DATA)
    if op.kind == "raised":
        assert op.clear, f"not a clear error: {op}"
    else:
        assert problem is None, f"the operation {op} but the object is not in the store: {problem}"
    for question in ("has", "verify"):
        answer = result[question]
        if answer.kind == "raised":
            assert answer.clear, f"{question}: not a clear error: {answer}"
        elif answer.value:
            assert problem is None, f"{question} says True, but {problem}"
    assert store_temporaries(site.store, planted) == [], "temporary files left in the store"


@pytest.mark.parametrize("level,kind", STORE_PLANTS)
@pytest.mark.parametrize("op", sorted(CREATE_OPS))
def test_create_with_planted_store(site: Site, op: str, level: str, kind: str) -> None:
    plant_in_store(site, level, kind)
    with untouched(site):
        outcome = run_in_child(lambda: _create_and_look(site.store, CREATE_OPS[op]))
    check_created(site, outcome)


@pytest.mark.parametrize("kind", TEMP_KINDS)
@pytest.mark.parametrize("op", sorted(CREATE_OPS))
def test_create_with_planted_temporary_names(site: Site, op: str, kind: str) -> None:
    def run() -> tuple[dict[str, Any], list[Path]]:
        planted = predictable_store_temporaries(site.store, site, kind)
        return _create_and_look(site.store, CREATE_OPS[op]), planted

    with untouched(site):
        outcome = run_in_child(run)
    assert outcome.kind == "returned", str(outcome)
    result, planted = outcome.value
    check_created(site, Outcome("returned", result), planted)
    for at in planted:  # the plants are still what they were (nothing wrote through them)
        assert at.is_symlink() or kind not in LINK_KINDS, f"{at} was replaced"


# -- a real layer ------------------------------------------------------------


def _layer_names() -> list[bytes]:
    return sorted(n for n, data in _layer_contents().items() if data)


@pytest.mark.parametrize("layer", ["small.tar", "small.zstd-chunked.blob", "small.estargz.blob"])
@pytest.mark.parametrize(
    "level,kind",
    [("fanout", k) for k in ("empty-dir", "decoy-file")]
    + [("object", k) for k in ("far-file", "fifo", "dangling", "dir-here")],
)
def test_import_objects_with_planted_links(site: Site, layer: str, level: str, kind: str) -> None:
    from composefs_py import open_layer

    if not (LAYERS / layer).exists():
        pytest.skip(f"{LAYERS / layer} is missing")
    names = _layer_names()
    victim = names[len(names) // 2]
    plant_in_store(site, level, kind, victim)

    def run() -> Outcome:
        store = ObjectStore(site.store, durable=False)
        try:
            tree = open_layer(LAYERS / layer).import_objects(store)
        except BaseException as exc:
            return describe(exc)
        return Outcome(
            "returned", sorted({p for _, n in tree if (p := getattr(n, "payload", None))})
        )

    with untouched(site):
        outcome = run_in_child(run)
    assert outcome.kind == "returned", str(outcome)
    imported = outcome.value
    if imported.kind == "raised":
        assert imported.clear, f"not a clear error: {imported}"
    else:
        for name in imported.value:
            problem = confined_object(site.store, name, _content_of(name))
            assert problem is None, f"import_objects returned, but {name!r}: {problem}"
    assert store_temporaries(site.store) == []


def _content_of(name: bytes) -> bytes:
    """The content of one of the layer's objects, from the tar (an independent reader)."""
    return _layer_contents()[name]


@functools.cache
def _layer_contents() -> dict[bytes, bytes]:
    import tarfile

    contents = {}
    with tarfile.open(LAYERS / "small.tar") as tar:
        for member in tar:
            if member.isfile():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                contents[object_name(data)] = data
    return contents


# ---------------------------------------------------------------------------
# the object store: operations that look
# ---------------------------------------------------------------------------


def _look(op: str, store_root: Path) -> Any:
    store = ObjectStore(store_root)
    if op == "has":
        return store.has(NAME)
    if op == "verify":
        return store.verify(NAME)
    if op == "payloads":
        return sorted(store.payloads())
    if op == "path_for":
        return store.path_for(NAME)
    if op == "fsverity_digest":
        return store.fsverity_digest(NAME)
    if op == "enable_verity":
        return store.enable_verity(NAME)
    raise AssertionError(op)


LOOK_OPS = ["has", "verify", "payloads", "path_for", "fsverity_digest", "enable_verity"]


def check_look(site: Site, op: str, outcome: Outcome) -> None:
    problem = confined_object(site.store, NAME, DATA)
    assert problem is not None  # the tests below never store NAME itself
    if op in ("has", "verify"):
        assert_clear_or(outcome, False)
    elif op == "payloads":
        if outcome.kind == "returned":
            for name in outcome.value:
                trouble = confined_object(site.store, name, None)
                assert trouble is None, f"payloads() lists {name!r}: {trouble}"
        else:
            assert_clear_or(outcome)
    elif op == "path_for":
        assert outcome.kind == "returned", str(outcome)
        assert outcome.value == site.store / FAN / LEAF
    else:  # a digest of an object that is not a confined regular file: no
        assert outcome.kind == "raised" and outcome.clear, f"{op} of a planted {NAME!r}: {outcome}"


@pytest.mark.parametrize("level,kind", STORE_PLANTS)
@pytest.mark.parametrize("op", LOOK_OPS)
def test_look_at_planted_store(site: Site, op: str, level: str, kind: str) -> None:
    plant_in_store(site, level, kind)
    with untouched(site):
        outcome = run_in_child(lambda: _look(op, site.store))
    check_look(site, op, outcome)


@given(data=st.data())
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_add_through_a_fanout_link_spelled_any_way(site: Site, data: st.DataObject) -> None:
    """A fan-out dir planted as a link to an outside dir, its target spelled every way."""
    reach = [os.fsencode(site.outside / "empty"), os.fsencode(site.far / "empty")]
    target = data.draw(cst.link_targets(reach=reach), label="link target")
    _remove_tree(site.store)
    site.store.mkdir()
    os.symlink(target, site.store / FAN)
    with untouched(site):
        outcome = run_in_child(lambda: _create_and_look(site.store, _op_add))
    check_created(site, outcome)


@pytest.mark.parametrize("kind", [*TEMP_KINDS, "decoy-dir", "far-dir"])
def test_remove_stale_temporary_files_with_planted_links(site: Site, kind: str) -> None:
    planted = []
    for index in range(3):
        at = site.store / f".tmp-stale-{index}"
        plant(site, at, kind)
        os.utime(at, (0, 0), follow_symlinks=False)  # old: a candidate for removal
        planted.append(at)

    def run() -> int:
        return ObjectStore(site.store).remove_stale_temporary_files(older_than=60)

    with untouched(site):
        outcome = run_in_child(run)
    assert outcome.kind == "returned" or outcome.clear, str(outcome)


@pytest.mark.parametrize(
    "payload",
    [b"../outside/secret", b"/etc/shadow", NAME + b"/..", NAME.upper(), NAME[:-1], NAME + b"0"],
)
def test_path_for_refuses_non_object_names(site: Site, payload: bytes) -> None:
    with untouched(site), pytest.raises(ValidationError):
        ObjectStore(site.store).path_for(payload)


# ---------------------------------------------------------------------------
# mount with verity, the store holding planted links
# ---------------------------------------------------------------------------


def mkcomposefs_image(dumpfile: bytes, dest: Path) -> bytes | None:
    """``mkcomposefs --from-file`` (the upstream tool takes any payload); None if it refuses."""
    if not MKCOMPOSEFS.exists():
        pytest.skip(f"{MKCOMPOSEFS} not built (make deps)")
    proc = subprocess.run(
        [str(MKCOMPOSEFS), "--from-file", "-", str(dest)],
        input=dumpfile,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    return dest.read_bytes()


def one_file_dumpfile(payload_field: str, *, size: int = len(DATA)) -> bytes:
    digest = fsverity_digest(DATA).hex()
    return (
        f"/ 0 40755 2 0 0 0 0.0 - - -\n/f {size} 100644 1 0 0 0 0.0 {payload_field} - {digest}\n"
    ).encode()


def _mount_and_read(image: Path, mnt: Path, store: Path, verity: str) -> str:
    """In the child: mount, read every file (the kernel follows the payload then),
    unmount.  Returns what happened."""
    from composefs_py.mount import mount, unmount

    mount(
        image,
        mnt,
        objects=store,
        try_verity=verity == "try",
        require_verity=verity == "require",
    )
    seen = []
    try:
        for name in sorted(os.listdir(mnt)):
            try:
                fd = os.open(mnt / name, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    seen.append(f"{name}: read {len(os.read(fd, 1 << 16))} bytes")
                finally:
                    os.close(fd)
            except OSError as exc:
                seen.append(f"{name}: {exc.strerror}")
    finally:
        unmount(mnt, lazy=True)
    return "mounted (" + ", ".join(seen) + ")"


def mount_in_child(site: Site, image: Path, verity: str) -> Outcome:
    mnt = site.root / "mnt"
    mnt.mkdir(exist_ok=True)
    outcome = run_in_child(lambda: _mount_and_read(image, mnt, site.store, verity))
    if outcome.kind in ("hung", "died"):
        from composefs_py.mount import is_mountpoint, unmount

        if is_mountpoint(mnt):
            unmount(mnt, lazy=True)
            pytest.fail(f"{outcome}; and it left {mnt} mounted (now detached)")
    return outcome


@pytest.mark.root
@pytest.mark.parametrize("verity", ["try", "require"])
@pytest.mark.parametrize(
    "level,kind",
    [("fanout", k) for k in ("decoy-dir", "fifo")]
    + [("object", k) for k in ("decoy-file", "fifo", "far-fifo", "fifo-here", "dir-here")],
)
def test_mount_with_verity_and_planted_store(
    site: Site, verity: str, level: str, kind: str
) -> None:
    require_mounts()
    (site.root / "out").mkdir()
    image = site.root / "out" / "image.cfs"
    assert mkcomposefs_image(one_file_dumpfile(NAME.decode()), image) is not None
    plant_in_store(site, level, kind)
    with untouched(site):
        outcome = mount_in_child(site, image, verity)
    assert outcome.kind in ("returned", "raised"), str(outcome)
    if outcome.kind == "raised":
        assert outcome.clear, f"not a clear error: {outcome}"


# ---------------------------------------------------------------------------
# payload shapes: dumpfiles, images, mount with verity
# ---------------------------------------------------------------------------

REACH = (b"../outside/secret", b"../outside/fifo", b"../outside/decoy/" + LEAF.encode())


@given(case=cst.hostile_payload_fields(reach=REACH))
@example(case=("../outside/secret", b"../outside/secret"))
@example(case=("/etc/shadow", b"/etc/shadow"))
@example(case=(NAME.decode()[:-1], NAME[:-1]))
@example(case=(NAME.decode() + "0", NAME + b"0"))
@example(case=(NAME.decode().upper(), NAME.upper()))
@example(case=(NAME.decode().replace("/", "\\x2f\\x2e\\x2e/"), NAME.replace(b"/", b"/../")))
def test_parse_dumpfile_refuses_hostile_payloads(case: tuple[str, bytes]) -> None:
    field_text, payload = case
    text = f"/ 0 40755 2 0 0 0 0.0 - - -\n/f 4096 100644 1 0 0 0 0.0 {field_text} - -\n"
    try:
        tree = parse_dumpfile(text)
    except ValidationError as exc:
        assert exc.field == "payload" or "payload" in str(exc), str(exc)
        return
    pytest.fail(f"parse_dumpfile accepted payload {payload[:100]!r}: {tree.inode(b'/f')}")


@given(payload=cst.hostile_payloads(reach=REACH, max_size=4095))
@example(payload=b"../../etc/shadow")
@example(payload=b"/etc/shadow")
@example(payload=NAME[:-1])
@example(payload=NAME + b"0")
@example(payload=NAME.upper())
@example(payload=b"a\nb")
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
def test_read_image_never_gives_a_non_object_name(tmp_path: Path, payload: bytes) -> None:
    from composefs_py import read_image

    field_text = cst._escape(payload, None)
    image = mkcomposefs_image(one_file_dumpfile(field_text, size=4096), tmp_path / "x.cfs")
    if image is None:
        reject()  # mkcomposefs refuses it too (too long, NUL first, ...)
    try:
        tree = read_image(image)
    except ValidationError:
        return
    given_back = [n.payload for _, n in tree if getattr(n, "payload", None)]
    bad = [p for p in given_back if not cst.is_object_name(p)]
    assert not bad, f"read_image gave back payload {bad[0][:100]!r} (written as {payload[:100]!r})"


def _reach_payloads(site: Site) -> list[bytes]:
    return [
        b"../outside/secret",
        b"../outside/fifo",
        b"../outside/decoy/" + LEAF.encode(),
        os.fsencode(site.far / "secret"),
        os.fsencode(site.far / "fifo"),
        b"../" * 12 + os.fsencode(site.far / "fifo").lstrip(b"/"),
        b"./" + NAME + b"/../../outside/secret",
    ]


MOUNT_REACH = [
    "relative-file",
    "relative-fifo",
    "relative-decoy",
    "absolute-file",
    "absolute-fifo",
    "dotdot-past-root-fifo",
    "dotted-detour",
]


@pytest.mark.root
@pytest.mark.parametrize("verity", ["try", "require"])
@pytest.mark.parametrize("shape", MOUNT_REACH)
def test_mount_with_verity_refuses_payload_reaching_out(
    site: Site, verity: str, shape: str
) -> None:
    require_mounts()
    payload = _reach_payloads(site)[MOUNT_REACH.index(shape)]
    _check_mount_refuses(site, payload, verity)


def _check_mount_refuses(site: Site, payload: bytes, verity: str) -> None:
    out = site.root / "out"
    out.mkdir(exist_ok=True)
    image = out / "image.cfs"
    stored = payload.split(b"\0")[0]  # mkcomposefs keeps a C string
    if not stored or cst.is_object_name(stored):
        reject()  # the image would hold no payload, or a valid one
    if mkcomposefs_image(one_file_dumpfile(cst._escape(payload, None)), image) is None:
        reject()  # mkcomposefs refuses it too: no such image can exist
    with untouched(site):
        outcome = mount_in_child(site, image, verity)
    assert outcome.kind == "raised" and outcome.clear, (
        f"mount(try_verity={verity == 'try'}, require_verity={verity == 'require'}) "
        f"of an image with payload {payload[:100]!r}: {outcome}"
    )


@pytest.mark.root
@pytest.mark.parametrize("verity", ["try", "require"])
@given(data=st.data())
@settings(
    max_examples=30,
    # No shrinking: each example is a mount (or, where the code follows the
    # payload into a FIFO, a child killed after its timeout).
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
def test_mount_with_verity_refuses_hostile_payloads(
    site: Site, verity: str, data: st.DataObject
) -> None:
    require_mounts()
    reach = [*REACH, os.fsencode(site.far / "secret"), os.fsencode(site.far / "fifo")]
    payload = data.draw(cst.hostile_payloads(reach=reach, max_size=4095), label="payload")
    _check_mount_refuses(site, payload, verity)


# -- the strategies themselves ------------------------------------------------


@given(payload=cst.hostile_payloads(reach=REACH))
def test_hostile_payloads_are_never_object_names(payload: bytes) -> None:
    assert not cst.is_object_name(payload)


def test_hostile_payloads_cover_every_shape() -> None:
    found: set[str] = set()
    lengths: set[int] = set()

    @given(payload=cst.hostile_payloads(reach=REACH))
    @settings(max_examples=600, database=None)
    def collect(payload: bytes) -> None:
        if all(b in b"0123456789abcdef/" for b in payload):
            lengths.add(len(payload.replace(b"/", b"")))
        for shape, seen in {
            "upper": any(b in b"ABCDEF" for b in payload),
            "leading-slash": payload.startswith(b"/"),
            "dotdot": b".." in payload,
            "dot-slash": b"./" in payload,
            "nul": b"\0" in payload,
            "newline": b"\n" in payload,
            "backslash": b"\\" in payload,
            "long": len(payload) > 4095,
            "reach": any(r in payload for r in REACH),
            "no-slash": b"/" not in payload,
            "double-slash": b"//" in payload,
        }.items():
            if seen:
                found.add(shape)

    collect()
    assert found >= {
        "upper",
        "leading-slash",
        "dotdot",
        "dot-slash",
        "nul",
        "newline",
        "backslash",
        "long",
        "reach",
        "no-slash",
        "double-slash",
    }, found
    assert {61, 63, 65} <= lengths and len(lengths) >= 20, sorted(lengths)


def unescape(spelled: str) -> bytes:
    """composefs-dump(5) unescaping, written here from the manual page."""
    raw, out, i = spelled.encode("latin-1"), bytearray(), 0
    while i < len(raw):
        if raw[i] == 0x5C and raw[i + 1 : i + 2] == b"x":
            out.append(int(raw[i + 2 : i + 4], 16))
            i += 4
        elif raw[i] == 0x5C:
            out += {b"\\": b"\\", b"n": b"\n", b"r": b"\r", b"t": b"\t"}[raw[i + 1 : i + 2]]
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


@given(field_and_payload=cst.hostile_payload_fields())
def test_hostile_payload_fields_spell_their_payload(field_and_payload: tuple[str, bytes]) -> None:
    spelled, payload = field_and_payload
    assert all(c > " " and c != "\x7f" for c in spelled), spelled
    assert unescape(spelled) == payload


@given(target=cst.link_targets(reach=[b"/tmp/x/secret"]))
def test_link_targets_reach_their_path(target: bytes) -> None:
    resolved = os.path.normpath(os.path.join(b"/a/b/c", target.removeprefix(b"/proc/self/root")))
    assert b"/" + resolved.lstrip(b"/") == b"/tmp/x/secret"


# ---------------------------------------------------------------------------
# the output folder
# ---------------------------------------------------------------------------


def _tree() -> Any:
    return parse_dumpfile((Path(__file__).parent / "data" / "sample.dump").read_bytes())


def predictable_writer_temporaries(
    folder: Path, site: Site, dest_name: str, kind: str
) -> list[Path]:
    """In the child: make write_image's temporary names predictable and plant there.

    The writer names them ``.DEST.<16 hex>.tmp`` from ``secrets.token_hex``:
    the first names it draws are planted, later ones are free.
    """
    import secrets

    tokens = [f"{i:016x}" for i in range(4)]
    real = secrets.token_hex
    secrets.token_hex = lambda n=None: tokens.pop(0) if tokens else real(n)
    planted = []
    for token in tokens:
        at = folder / f".{dest_name}.{token}.tmp"
        plant(site, at, kind)
        planted.append(at)
    return planted


WRITE_KINDS = ["far-file", "fifo", "dangling", "empty-dir", "decoy-file"]


@pytest.mark.parametrize("kind", WRITE_KINDS)
@pytest.mark.parametrize("backend", ["native", "mkcomposefs"])
def test_write_image_with_planted_temporary_names(site: Site, backend: str, kind: str) -> None:
    from composefs_py.writer import write_image

    out = site.root / "out"
    out.mkdir()
    tree = _tree()
    expected_file = site.root.parent / "expected.cfs"
    write_image(tree, expected_file, backend=backend)
    expected = expected_file.read_bytes()

    def run() -> list[Path]:
        planted = predictable_writer_temporaries(out, site, "image.cfs", kind)
        write_image(tree, out / "image.cfs", backend=backend)
        return planted

    with untouched(site):
        outcome = run_in_child(run)
    assert outcome.kind == "returned", str(outcome)
    planted = outcome.value
    dest = out / "image.cfs"
    assert stat.S_ISREG(os.lstat(dest).st_mode) and dest.read_bytes() == expected
    assert sorted(os.listdir(out)) == sorted(["image.cfs", *(p.name for p in planted)])
    for at in planted:
        assert at.is_symlink() or not at.exists() or kind not in LINK_KINDS


def test_write_image_through_a_symlink_dest(site: Site) -> None:
    """A destination that is a symlink is written through (DESIGN rule 5), not replaced."""
    from composefs_py.writer import write_image

    out = site.root / "out"
    out.mkdir()
    elsewhere = site.root.parent / "elsewhere"
    elsewhere.mkdir()
    real = elsewhere / "real.cfs"
    real.write_bytes(b"old image\n")
    (elsewhere / "neighbour").write_bytes(b"stays\n")
    dest = out / "image.cfs"
    dest.symlink_to(real)
    tree = _tree()
    with untouched(site):
        outcome = run_in_child(lambda: write_image(tree, dest, backend="native"))
    assert outcome.kind == "returned", str(outcome)
    assert dest.is_symlink() and os.readlink(dest) == str(real), (
        f"the destination link was replaced by a {stat.filemode(os.lstat(dest).st_mode)} file"
    )
    assert real.read_bytes()[:4] == (0xD078629A).to_bytes(4, "little"), "the target was not written"
    assert sorted(os.listdir(out)) == ["image.cfs"]
    assert sorted(os.listdir(elsewhere)) == ["neighbour", "real.cfs"]
    assert (elsewhere / "neighbour").read_bytes() == b"stays\n"


@pytest.mark.parametrize("kind", ["far-file", "fifo", "dangling"])
def test_cli_build_with_planted_temporary_names(site: Site, kind: str) -> None:
    from composefs_py.cli import main

    out = site.root / "out"
    out.mkdir()
    source = Path(__file__).parent / "data" / "sample.dump"

    def run() -> tuple[int, list[Path]]:
        planted = predictable_writer_temporaries(out, site, "image.cfs", kind)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            status = main(["build", str(source), "-o", str(out / "image.cfs")])
        return status, planted

    with untouched(site):
        outcome = run_in_child(run)
    assert outcome.kind == "returned", str(outcome)
    status, planted = outcome.value
    assert status == 0
    assert stat.S_ISREG(os.lstat(out / "image.cfs").st_mode)
    assert sorted(os.listdir(out)) == sorted(["image.cfs", *(p.name for p in planted)])


@pytest.mark.parametrize("kind", ["empty-dir", "decoy-dir", "decoy-file", "dangling"])
def test_cli_build_with_objects_into_planted_store(site: Site, kind: str) -> None:
    from composefs_py.cli import main

    out = site.root / "out"
    out.mkdir()
    names = _layer_names()
    plant_in_store(site, "fanout", kind, names[0])
    plant_in_store(site, "object", "far-file", names[-1])

    def run() -> int:
        with (
            open(os.devnull, "w") as devnull,
            contextlib.redirect_stdout(devnull),
            contextlib.redirect_stderr(devnull),
        ):
            return main(
                [
                    "build",
                    str(LAYERS / "small.tar"),
                    "--objects",
                    str(site.store),
                    "-o",
                    str(out / "image.cfs"),
                ]
            )

    with untouched(site):
        outcome = run_in_child(run)
    assert outcome.kind == "returned" and outcome.value in (0, 1), str(outcome)
    if outcome.value == 0:
        for name in (names[0], names[-1]):
            assert confined_object(site.store, name, _content_of(name)) is None
    assert store_temporaries(site.store) == []


@pytest.mark.root
@pytest.mark.parametrize("kind", ["far-dir", "dangling", "decoy-file"])
def test_mount_layers_staging_with_planted_names(site: Site, kind: str) -> None:
    """mount_layers stages image mounts in folders it makes (mkdtemp: O_EXCL, random);
    with the random part made predictable, planted links there are skipped."""
    require_mounts(xwhiteouts=True)
    from composefs_py.mount import mount_layers, unmount
    from composefs_py.writer import write_image

    out = site.root / "out"
    out.mkdir()
    tmp = site.root.parent / "tmpdir"
    tmp.mkdir()
    images = []
    for index, text in enumerate(
        [
            "/ 0 40755 2 0 0 0 0.0 - - -\n/top 0 100644 1 0 0 0 0.0 - - -\n",
            "/ 0 40755 2 0 0 0 0.0 - - -\n/base 0 100644 1 0 0 0 0.0 - - -\n",
        ]
    ):
        images.append(out / f"{index}.cfs")
        write_image(parse_dumpfile(text), images[-1])
    mnt = site.root / "mnt"
    mnt.mkdir()

    def run() -> list[str]:
        names = [f"plant{i}" for i in range(3)]
        tempfile.tempdir = str(tmp)
        tempfile._get_candidate_names = lambda: iter([*names, *(f"free{i}" for i in range(99))])  # type: ignore[attr-defined]
        for prefix in (".composefs-py-layers.", ".composefs-py-image."):
            for name in names:
                plant(site, tmp / (prefix + name), kind)
        mount_layers(images, mnt, objects=site.store)
        try:
            return sorted(os.listdir(mnt))
        finally:
            unmount(mnt)

    with untouched(site):
        outcome = run_in_child(run)
    assert outcome.kind == "returned", str(outcome)
    assert outcome.value == ["base", "top"]
    left = sorted(p.name for p in tmp.iterdir() if not p.is_symlink())
    assert left == [], f"staging folders left: {left}"


# ---------------------------------------------------------------------------
# an input's own trusted.overlay.* xattrs
# ---------------------------------------------------------------------------

OVERLAY_CASES = [
    ("redirect", "dir", b"trusted.overlay.redirect", b"/secret"),
    ("metacopy", "file", b"trusted.overlay.metacopy", b""),
    ("origin", "file", b"trusted.overlay.origin", b"\x00\xfb\x21\x00"),
    ("opaque", "file", b"trusted.overlay.opaque", b"y"),
    ("redirect-on-file", "file", b"trusted.overlay.redirect", b"/secret/token"),
]


def _dump_xattr(name: bytes, value: bytes) -> str:
    return f"{cst._escape(name, None, equals=True)}={cst._escape(value, None)}"


@pytest.mark.parametrize("case", OVERLAY_CASES, ids=[c[0] for c in OVERLAY_CASES])
def test_overlay_xattrs_refused_in_dumpfiles(case: tuple[str, str, bytes, bytes]) -> None:
    _, what, name, value = case
    line = (
        f"/x 0 40755 2 0 0 0 0.0 - - - {_dump_xattr(name, value)}"
        if what == "dir"
        else f"/x 0 100644 1 0 0 0 0.0 - - - {_dump_xattr(name, value)}"
    )
    with pytest.raises(ValidationError) as info:
        parse_dumpfile("/ 0 40755 2 0 0 0 0.0 - - -\n" + line + "\n")
    assert name.decode() in str(info.value)


@pytest.mark.parametrize("case", OVERLAY_CASES, ids=[c[0] for c in OVERLAY_CASES])
def test_overlay_xattrs_refused_in_tocs(case: tuple[str, str, bytes, bytes]) -> None:
    _, what, name, value = case
    entry: dict[str, Any] = {"type": "dir", "name": "x", "mode": 0o755}
    if what == "file":
        entry.update(type="reg", mode=0o644, size=0)
    entry["xattrs"] = {name.decode(): base64.b64encode(value).decode()}
    with pytest.raises(ValidationError) as info:
        parse_toc(json.dumps({"version": 1, "entries": [entry]}))
    assert name.decode() in str(info.value)


BASE_LAYER = (
    "/ 0 40755 4 0 0 0 0.0 - - -\n"
    "/secret 0 40700 2 0 0 0 0.0 - - -\n"
    "/secret/token 7 100600 1 0 0 0 0.0 - s3cret! -\n"
    "/empty 0 40755 2 0 0 0 0.0 - - -\n"
)
TOP_LAYER = (
    "/ 0 40755 3 0 0 0 0.0 - - -\n"
    "/empty 0 40755 2 0 0 0 0.0 - - - trusted.overlay.redirect=/secret\n"
)


@pytest.mark.root
def test_overlay_redirect_from_input_cannot_steer_mount_layers(tmp_path: Path) -> None:
    """A top layer's empty dir with ``trusted.overlay.redirect=/secret`` must be refused
    when built; were it built, the stacked mount would list the lower ``/secret`` there."""
    require_mounts(xwhiteouts=True)
    from composefs_py.mount import mount_layers, unmount
    from composefs_py.writer import write_image

    try:
        top = parse_dumpfile(TOP_LAYER)
    except ValidationError as exc:
        assert "trusted.overlay.redirect" in str(exc)
        return
    write_image(top, tmp_path / "top.cfs")
    write_image(parse_dumpfile(BASE_LAYER), tmp_path / "base.cfs")
    (tmp_path / "objects").mkdir()
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def run() -> list[str]:
        mount_layers(
            [tmp_path / "top.cfs", tmp_path / "base.cfs"], mnt, objects=tmp_path / "objects"
        )
        try:
            return sorted(os.listdir(mnt / "empty"))
        finally:
            unmount(mnt)

    outcome = run_in_child(run)
    pytest.fail(
        "a top layer with trusted.overlay.redirect=/secret on /empty was accepted; "
        f"mount_layers then lists /empty as: {outcome}"
    )


# ---------------------------------------------------------------------------
# the harness itself
# ---------------------------------------------------------------------------


def test_canary_sees_a_read_through_a_link(site: Site) -> None:
    """The canary is not blind: reading a canary file through a link in the store fails."""
    link = site.store / "link"
    link.symlink_to(site.outside / "secret")
    with pytest.raises(AssertionError, match="OPEN"), untouched(site):
        assert run_in_child(lambda: link.read_bytes()).kind == "returned"


def test_canary_sees_a_write_in_the_far_canary(site: Site) -> None:
    with pytest.raises(AssertionError, match="CREATE"), untouched(site):
        run_in_child(lambda: (site.far / "empty" / "new").write_bytes(b"x"))


def test_child_hang_on_a_fifo_is_reported_with_its_path(site: Site) -> None:
    started = time.monotonic()
    outcome = run_in_child(lambda: (site.outside / "fifo").read_bytes())
    assert outcome.kind == "hung"
    assert time.monotonic() - started < 10, "a FIFO open is reported at once, not at the timeout"
    if platform.machine() in ("x86_64", "aarch64"):
        assert str(site.outside / "fifo") in outcome.detail, outcome.detail


def test_errno_of_a_clear_error_survives_the_child() -> None:
    outcome = run_in_child(lambda: os.open("/nonexistent/x", os.O_RDONLY))
    assert outcome.kind == "raised" and outcome.clear
    assert os.strerror(errno.ENOENT) in outcome.error
