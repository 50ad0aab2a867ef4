"""ObjectStore: names by digest, atomic verified publish, dedup, verify."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import os
import signal
import stat
import struct
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import test_fsverity
from hypothesis import given
from hypothesis import strategies as st
from test_fsverity import findmnt_type

from composefs_py import objects
from composefs_py.errors import LibraryError, ValidationError
from composefs_py.fsverity import fsverity_digest, measure_fsverity
from composefs_py.objects import ObjectStore, payload_for_hex

tmpfs_dir = test_fsverity.tmpfs_dir  # the fixture: a folder on tmpfs


def sha256_payload(data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    return f"{digest[:2]}/{digest[2:]}".encode()


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def libcomposefs_fsverity(data: bytes) -> bytes:
    native = pytest.importorskip("composefs_py._native")
    return bytes(native.fsverity_digest_bytes(data))


def test_add_names_object_by_sha256_and_stores_content(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    data = b"hello composefs\n" * 1000
    payload = store.add(data)
    assert payload == sha256_payload(data)
    path = store.path_for(payload)
    assert path == tmp_path / "objects" / payload.decode()
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert store.has(payload) and store.verify(payload)
    assert list(store.payloads()) == [payload]
    assert store.temporary_files() == []


def test_add_accepts_streams_and_iterables(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    data = os.urandom(3 << 20)  # several read sizes long
    assert store.add(io.BytesIO(data)) == sha256_payload(data)
    pieces = [b"a" * 10, b"", b"b" * 5000]
    assert store.add(iter(pieces)) == sha256_payload(b"".join(pieces))
    assert store.add(b"") == sha256_payload(b"")
    assert store.path_for(sha256_payload(b"")).read_bytes() == b""


@pytest.mark.parametrize("form", ["sha256:{}", "{}", "raw"])
def test_expected_digest_forms_accepted(tmp_path: Path, form: str) -> None:
    store = ObjectStore(tmp_path)
    data = b"content"
    digest = hashlib.sha256(data)
    expected: str | bytes = digest.digest() if form == "raw" else form.format(digest.hexdigest())
    assert store.add(data, expected) == sha256_payload(data)


def test_mismatch_rejected_and_leaves_no_trace(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = ObjectStore(root)
    claimed = hashlib.sha256(b"what the TOC says").hexdigest()
    with pytest.raises(ValidationError) as info:
        store.add(b"what the blob holds", "sha256:" + claimed)
    assert info.value.field == "digest"
    assert claimed in str(info.value)
    assert all_files(root) == []
    assert not store.has(payload_for_hex(claimed))


def test_mismatch_without_context_manager_still_leaves_no_trace(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    writer = store.writer(hashlib.sha256(b"expected").hexdigest())
    writer.write(b"actual")
    assert len(store.temporary_files()) == 1
    with pytest.raises(ValidationError):
        writer.commit()
    assert all_files(tmp_path) == []


def test_mismatch_checked_even_when_object_exists(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    good = b"genuine"
    payload = store.add(good)
    before = store.path_for(payload).stat()
    with pytest.raises(ValidationError):
        store.add(b"forged", hashlib.sha256(good).hexdigest())
    after = store.path_for(payload).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert store.path_for(payload).read_bytes() == good
    assert store.temporary_files() == []


def test_existing_object_is_not_rewritten(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    data = b"same content twice"
    first = store.add(data)
    inode = store.path_for(first).stat().st_ino
    with store.writer() as out:
        out.write(data)
        second = out.commit()
    assert second == first and not out.created
    assert store.path_for(first).stat().st_ino == inode
    assert len(all_files(tmp_path)) == 1


def test_writer_aborted_by_exception_removes_temporary_file(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    with pytest.raises(RuntimeError), store.writer() as out:
        out.write(b"partial")
        assert len(store.temporary_files()) == 1
        raise RuntimeError("reader failed")
    assert all_files(tmp_path) == []


def test_verify_detects_corruption_and_absence(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    payload = store.add(b"original")
    path = store.path_for(payload)
    path.chmod(0o644)
    path.write_bytes(b"tampered")
    assert not store.verify(payload)
    assert not store.verify(sha256_payload(b"never stored"))


@pytest.mark.parametrize(
    "bad",
    [b"../etc/passwd", b"AB/" + b"0" * 62, b"ab" + b"0" * 62, b"ab/" + b"0" * 61, "ab/x"],
)
def test_path_for_rejects_names_that_are_not_digests(tmp_path: Path, bad: bytes | str) -> None:
    store = ObjectStore(tmp_path)
    with pytest.raises(ValidationError):
        store.path_for(bad)


def _not_object_names() -> list[bytes]:
    """Every length of either half around an object name's, and every odd shape."""
    name = b"0123456789abcdef" * 4
    names = [
        name[:fan_out] + b"/" + name[:rest]
        for fan_out in range(5)
        for rest in range(66)
        if (fan_out, rest) != (2, 62)
    ]
    good = b"ab/" + name[:62]
    names += [
        good.upper(),
        good[:3] + b"G" + good[4:],
        b"/" + good,
        b"./" + good,
        good + b"/",
        good.replace(b"/", b"//"),
        good.replace(b"/", b""),
        good[:2] + b"/../" + good[3:],
        b"ab/../../../etc/shadow",
        good[:-1] + b"\0",
        good[:-1] + b"\n",
        good[:-1] + b" ",
        good[:-1] + "\u00e9".encode(),
        b"",
    ]
    return names


def test_no_method_takes_a_name_that_is_not_an_object_name(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    for bad in _not_object_names():
        for method in (
            store.path_for,
            store.has,
            store.verify,
            store.fsverity_digest,
            store.enable_verity,
        ):
            with pytest.raises(ValidationError) as info:
                method(bad)
            assert info.value.field == "payload", (method, bad)
        with pytest.raises(ValidationError):
            store.path_for(bad.decode("utf-8", "replace"))
    assert list((tmp_path / "objects").iterdir()) == []


def test_fsverity_naming_uses_libcomposefs_digest(tmp_path: Path) -> None:
    data = os.urandom(5 * 4096 + 17)
    expected = libcomposefs_fsverity(data)
    store = ObjectStore(tmp_path, naming="fsverity")
    payload = store.add(data, hashlib.sha256(data).hexdigest())
    assert payload == payload_for_hex(expected.hex())
    assert store.fsverity_digest(payload) == expected
    assert store.verify(payload)
    store.path_for(payload).write_bytes(b"x")
    assert not store.verify(payload)


def test_fsverity_digest_of_sha256_named_object(tmp_path: Path) -> None:
    data = os.urandom(70000)
    store = ObjectStore(tmp_path, fsverity=True)
    payload = store.add(data)
    assert store.fsverity_digest(payload) == libcomposefs_fsverity(data)
    # A fresh store (nothing cached) computes it from the file.
    assert ObjectStore(tmp_path).fsverity_digest(payload) == libcomposefs_fsverity(data)


@given(st.lists(st.binary(max_size=9000), max_size=6))
def test_store_holds_exactly_what_was_added(contents: list[bytes]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        store = ObjectStore(root, durable=False)  # many examples: skip the fsyncs
        names = {store.add(data, hashlib.sha256(data).hexdigest()) for data in contents}
        assert set(store.payloads()) == names
        for name in names:
            content = store.path_for(name).read_bytes()
            assert sha256_payload(content) == name
        assert store.temporary_files() == []


def test_non_durable_store_still_publishes_only_verified_objects(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, durable=False)
    payload = store.add(b"fast path", hashlib.sha256(b"fast path").hexdigest())
    assert store.verify(payload)
    with pytest.raises(ValidationError):
        store.add(b"forged", hashlib.sha256(b"fast path!").hexdigest())
    assert all_files(tmp_path) == [store.path_for(payload)]


def test_batch_publishes_all_at_the_end(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    with store.batch():
        first = store.add(b"one")
        second = store.add(b"two")
        assert store.add(b"one") == first  # a repeat inside the batch is dropped
        assert not store.has(first) and not store.has(second)
        assert len(store.temporary_files()) == 2
    assert store.has(first) and store.has(second)
    assert store.verify(first) and store.verify(second)
    assert store.temporary_files() == []


def test_failed_batch_publishes_nothing(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    kept = store.add(b"there before")
    with pytest.raises(ValidationError), store.batch():
        store.add(b"verified but doomed")
        store.add(b"there before")
        store.add(b"bad", hashlib.sha256(b"good").hexdigest())
    assert all_files(tmp_path) == [store.path_for(kept)]


def test_enable_verity_gives_the_kernel_digest_we_compute(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    payload = store.add(os.urandom(100_000))
    try:
        measured = store.enable_verity(payload)
    except LibraryError as exc:
        if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP):
            pytest.skip(f"{tmp_path} has no fs-verity support ({exc})")
        raise
    assert measured == store.fsverity_digest(payload)
    assert store.enable_verity(payload) == measured  # enabling twice only measures


def test_enable_verity_store_on_tmpfs_is_refused_before_any_object(tmpfs_dir: Path) -> None:
    root = tmpfs_dir / "objects"
    with pytest.raises(LibraryError) as refused:
        ObjectStore(root, enable_verity=True)
    assert refused.value.errno == errno.ENOTTY
    assert refused.value.strerror == (
        f"cannot enable fs-verity on the object store {root}: "
        "the tmpfs file system does not support fs-verity"
    )
    assert list(root.iterdir()) == []  # the scratch file is gone


def test_enable_verity_store_enables_every_object_or_says_what_is_missing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "objects"
    fs = findmnt_type(tmp_path)
    try:
        store = ObjectStore(root, enable_verity=True)
    except LibraryError as exc:
        assert exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY), exc
        assert str(exc.strerror).startswith(f"cannot enable fs-verity on the object store {root}: ")
        assert f"the {fs} file system" in str(exc.strerror)
        assert list(root.iterdir()) == []
        return
    # The live path (a kernel and file system with fs-verity).
    assert store.computes_fsverity and store.enables_verity
    plain = ObjectStore(root).add(b"there before, without verity" * 100)
    first = store.add(os.urandom(70_000))
    with store.batch():
        second = store.add(os.urandom(5000))
        again = store.add(b"there before, without verity" * 100)
    assert again == plain
    for payload in (first, second, again):
        fd = os.open(store.path_for(payload), os.O_RDONLY)
        try:
            assert measure_fsverity(fd) == fsverity_digest(store.path_for(payload))
        finally:
            os.close(fd)


def test_stale_temporary_files_removed_fresh_ones_kept(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    payload = store.add(b"an object")
    writer = store.writer()
    writer.write(b"an import still running")
    (stale,) = store.temporary_files()
    os.utime(stale, (1, 1))  # as if a process died long ago
    writer2 = store.writer()
    writer2.write(b"another one still running")
    assert store.remove_stale_temporary_files(older_than=3600) == 1
    assert not stale.exists() and len(store.temporary_files()) == 1
    writer2.abort()
    writer.abort()
    assert all_files(tmp_path) == [store.path_for(payload)]


# ---------------------------------------------------------------------------
# confinement: links planted in the store lead nowhere
# ---------------------------------------------------------------------------

_IN_ALL_EVENTS = 0xFFF  # access, modify, attrib, close, open, moves, create, delete
_INOTIFY_EVENT = struct.Struct("iIII")


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every entry below ``root``: mode, size, mtime and (regular files) content."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            found[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return found


class Canary:
    """A folder outside the store (a file, a FIFO, a folder with a file) that
    must stay untouched: inotify records any open, read, write, create,
    attribute change or removal of anything in it, and its entries are
    compared before and after."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        (path / "victim").write_bytes(b"a host file\n")
        os.mkfifo(path / "fifo")
        (path / "sub").mkdir()
        (path / "sub" / "file").write_bytes(b"another host file\n")
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self._fd >= 0, os.strerror(ctypes.get_errno())
        for folder in (path, path / "sub"):
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(folder), _IN_ALL_EVENTS)
            assert wd >= 0, os.strerror(ctypes.get_errno())
        self.settle()

    def settle(self) -> None:
        """Take what is there now (and what the test did so far) as the reference."""
        self._before = _snapshot(self.path)
        self.events()  # the snapshot's own reads

    def events(self) -> list[tuple[int, str]]:
        """(mask, name) of every event since the last call."""
        found: list[tuple[int, str]] = []
        while True:
            try:
                raw = os.read(self._fd, 65536)
            except BlockingIOError:
                return found
            offset = 0
            while offset < len(raw):
                _wd, mask, _cookie, size = _INOTIFY_EVENT.unpack_from(raw, offset)
                offset += _INOTIFY_EVENT.size
                name = raw[offset : offset + size].rstrip(b"\0").decode()
                offset += size
                found.append((mask, name))

    def assert_untouched(self) -> None:
        events = self.events()
        assert events == [], f"something outside the store was touched: {events}"
        assert _snapshot(self.path) == self._before
        self.events()

    def close(self) -> None:
        os.close(self._fd)


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Canary]:
    bird = Canary(tmp_path / "canary")
    yield bird
    bird.close()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the block after ``seconds`` (an open of a FIFO blocks)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


CONFINED = b"content that must land in the store\n" * 10
CONFINED_HEX = hashlib.sha256(CONFINED).hexdigest()
CONFINED_PAYLOAD = f"{CONFINED_HEX[:2]}/{CONFINED_HEX[2:]}".encode()


def plant(root: Path, canary: Path, where: str) -> None:
    """Put something hostile in the store at the fan-out folder or object name
    of :data:`CONFINED_PAYLOAD`."""
    fan_out = root / CONFINED_HEX[:2]
    obj = fan_out / CONFINED_HEX[2:]
    if where == "fan-out link to a folder outside":
        fan_out.symlink_to(canary)
    elif where == "fan-out link to a folder outside holding the object":
        (canary / "sub" / CONFINED_HEX[2:]).write_bytes(CONFINED)
        fan_out.symlink_to(canary / "sub")
    elif where == "fan-out dangling link":
        fan_out.symlink_to(canary / "made-by-the-store")
    elif where == "fan-out is a file":
        fan_out.write_bytes(b"")
    else:
        fan_out.mkdir()
        if where == "object link to a file outside":
            obj.symlink_to(canary / "victim")
        elif where == "object link to a FIFO outside":
            obj.symlink_to(canary / "fifo")
        elif where == "object dangling link":
            obj.symlink_to(canary / "made-by-the-store")
        elif where == "object is a FIFO":
            os.mkfifo(obj)
        elif where == "object is a folder":
            obj.mkdir()
        else:
            raise AssertionError(where)


PLANTS = [
    "fan-out link to a folder outside",
    "fan-out link to a folder outside holding the object",
    "fan-out dangling link",
    "fan-out is a file",
    "object link to a file outside",
    "object link to a FIFO outside",
    "object dangling link",
    "object is a FIFO",
    "object is a folder",
]


def _import_tar(store: ObjectStore, tmp_path: Path) -> None:
    from composefs_py.layers import open_layer

    blob = tmp_path / "layer.tar"
    with tarfile.open(blob, "w") as tar:
        info = tarfile.TarInfo("usr/file")
        info.size = len(CONFINED)
        tar.addfile(info, io.BytesIO(CONFINED))
    open_layer(blob).import_objects(store)


_OPERATIONS: dict[str, Callable[[ObjectStore, Path], object]] = {
    "add": lambda store, tmp: store.add(CONFINED),
    "add with digest": lambda store, tmp: store.add(CONFINED, CONFINED_HEX),
    "add in a batch": lambda store, tmp: _add_in_batch(store),
    "import a layer": _import_tar,
    "has": lambda store, tmp: store.has(CONFINED_PAYLOAD),
    "verify": lambda store, tmp: store.verify(CONFINED_PAYLOAD),
    "fsverity_digest": lambda store, tmp: store.fsverity_digest(CONFINED_PAYLOAD),
    "enable_verity": lambda store, tmp: store.enable_verity(CONFINED_PAYLOAD),
}


def _add_in_batch(store: ObjectStore) -> None:
    with store.batch():
        store.add(b"another object")
        store.add(CONFINED, CONFINED_HEX)


@pytest.mark.parametrize("operation", list(_OPERATIONS))
@pytest.mark.parametrize("where", PLANTS)
def test_a_planted_link_or_odd_file_in_the_store_is_refused_and_nothing_outside_is_touched(
    tmp_path: Path, canary: Canary, where: str, operation: str
) -> None:
    root = tmp_path / "objects"
    store = ObjectStore(root)
    plant(root, canary.path, where)
    canary.settle()
    with deadline(5), pytest.raises(LibraryError) as info:
        _OPERATIONS[operation](store, tmp_path)
    canary.assert_untouched()
    shown = f"{CONFINED_HEX[:2]}/{CONFINED_HEX[2:]}" if where.startswith("object") else ""
    assert f"object store {root}: {shown or CONFINED_HEX[:2]}" in str(info.value)
    assert store.temporary_files() == []
    # Nothing the batch or the import wrote stays either (only what was planted).
    planted = (CONFINED_HEX[:2], CONFINED_HEX[2:])
    assert [p for p in all_files(root) if p.name not in planted] == []
    assert list(store.payloads()) == []
    # path_for only names the file, inside the store.
    assert store.path_for(CONFINED_PAYLOAD) == root / CONFINED_PAYLOAD.decode()


def test_planted_temporary_names_are_never_followed(
    tmp_path: Path, canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "objects"
    monkeypatch.setattr(os, "urandom", lambda n: b"\0" * n)
    store = ObjectStore(root)  # its temporary names: .tmp-PID-00000000-COUNT
    for count in range(1, 6):
        link = root / f".tmp-{os.getpid()}-00000000-{count}"
        link.symlink_to(canary.path / ("victim" if count % 2 else "made-by-the-store"))
    canary.events()
    assert store.add(CONFINED) == CONFINED_PAYLOAD
    with store.batch():
        store.add(b"second")
    canary.assert_untouched()
    assert store.path_for(CONFINED_PAYLOAD).read_bytes() == CONFINED
    assert store.verify(CONFINED_PAYLOAD)


def test_a_store_root_that_is_a_link_is_the_callers_choice(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    store = ObjectStore(tmp_path / "link")
    payload = store.add(CONFINED)
    assert (real / payload.decode()).read_bytes() == CONFINED
    assert store.has(payload) and store.verify(payload)
    assert list(store.payloads()) == [payload]


def test_payloads_lists_no_link_and_no_odd_file(tmp_path: Path, canary: Canary) -> None:
    root = tmp_path / "objects"
    store = ObjectStore(root)
    kept = store.add(b"a real object")
    (root / "ee").symlink_to(canary.path / "sub")
    (canary.path / "sub" / ("0" * 62)).write_bytes(b"")
    fan_out = root / kept.decode()[:2]
    (fan_out / ("1" * 62)).symlink_to(canary.path / "victim")
    os.mkfifo(fan_out / ("2" * 62))
    canary.settle()
    assert list(store.payloads()) == [kept]
    canary.assert_untouched()


# ---------------------------------------------------------------------------
# a batch publishes all of its objects or none
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("failing", [1, 3, 5])
@pytest.mark.parametrize("how", ["renameat2", "renameat"])
def test_a_rename_failing_mid_batch_publishes_nothing_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int, how: str
) -> None:
    store = ObjectStore(tmp_path)
    before = store.add(b"there before")
    calls = 0

    def counted(real: Callable[..., object]) -> Callable[..., object]:
        def rename(*args: object, **kwargs: object) -> object:
            nonlocal calls
            calls += 1
            if calls == failing:
                raise OSError(errno.EIO, "the disk said no")
            return real(*args, **kwargs)

        return rename

    if how == "renameat2":
        monkeypatch.setattr(objects, "_rename_noreplace", counted(objects._rename_noreplace))
    else:  # no renameat2 here (libc, kernel or file system): a lookup, then renameat
        monkeypatch.setattr(objects, "_renameat2_function", lambda: None)
        monkeypatch.setattr(os, "rename", counted(os.rename))
    with pytest.raises(OSError, match="the disk said no"), store.batch():
        for index in range(5):
            store.add(b"new object %d" % index)
        store.add(b"there before")
    assert calls == failing
    assert all_files(tmp_path) == [store.path_for(before)]
    assert store.temporary_files() == []
    assert list(store.payloads()) == [before]


def test_a_read_only_fan_out_folder_mid_batch_publishes_nothing(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder; the rename hook above covers it")
    store = ObjectStore(tmp_path)
    data = [b"object %d" % index for index in range(40)]
    payloads = [sha256_payload(d) for d in data]
    blocked = sorted({p[:2].decode() for p in payloads})[-1]
    (tmp_path / blocked).mkdir()
    (tmp_path / blocked).chmod(0o555)
    try:
        with pytest.raises(PermissionError), store.batch():
            for d in data:
                store.add(d)
    finally:
        (tmp_path / blocked).chmod(0o755)
    assert all_files(tmp_path) == []
    assert store.temporary_files() == []


# ---------------------------------------------------------------------------
# cost: system calls per object of a batch (what a layer import pays)
# ---------------------------------------------------------------------------

# The objects all have names in fan-out folder 00: the folder's own cost
# (made once) does not blur the count, whatever the number of objects.
_SYSCALL_CHILD = r"""
import hashlib, itertools, sys
from composefs_py.objects import ObjectStore
root, count, expected, again = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"
contents, digests = [], []
for index in itertools.count():
    content = b"object %d\n" % index * 50
    digest = hashlib.sha256(content)
    if digest.digest()[0] == 0:
        contents.append(content)
        digests.append("sha256:" + digest.hexdigest() if expected else None)
        if len(contents) == count:
            break
store = ObjectStore(root)
for round in range(2 if again else 1):
    with store.batch():
        for content, digest in zip(contents, digests):
            with store.writer(digest) as out:
                out.write(content)
                out.commit()
"""


def _syscalls(tmp_path: Path, count: int, *, expected: bool, again: bool) -> int:
    """System calls made by a child that stores ``count`` objects in a batch
    (``again``: then the same ones once more, all already there)."""
    import shutil
    import subprocess
    import sys

    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is needed to count system calls")
    root = tmp_path / f"store-{count}-{expected}-{again}"
    out = tmp_path / f"strace-{count}-{expected}-{again}"
    subprocess.run(
        [strace, "-f", "-c", "-o", str(out), sys.executable, "-c", _SYSCALL_CHILD,
         str(root), str(count), "1" if expected else "0", "1" if again else "0"],
        check=True,
        timeout=120,
    )  # fmt: skip
    for line in out.read_text().splitlines():
        fields = line.split()
        if fields and fields[-1] == "total":
            return int(fields[3])
    raise AssertionError(out.read_text())


@pytest.mark.parametrize(
    ("expected", "again", "most"),
    [
        (False, False, 5),  # a tar: openat(O_CREAT), write, fchmod, close, renameat2
        (True, False, 5),  # zstd:chunked: the same (the digest is known, the object is not there)
        (False, True, 6),  # a tar again: written and hashed, found there (fstatat), unlinked
        (True, True, 1),  # zstd:chunked again: found there (fstatat), only hashed
    ],
    ids=["tar", "digest", "tar-again", "digest-again"],
)
def test_a_batch_costs_a_few_system_calls_per_object(
    tmp_path: Path, expected: bool, again: bool, most: int
) -> None:
    # Twice as many objects: the difference is what 400 objects cost, whatever
    # the interpreter's start costs.  "again": only the second round counts.
    per_object = (
        _syscalls(tmp_path, 600, expected=expected, again=again)
        - _syscalls(tmp_path, 200, expected=expected, again=again)
    ) / 400
    if again:
        per_object -= (
            _syscalls(tmp_path, 600, expected=expected, again=False)
            - _syscalls(tmp_path, 200, expected=expected, again=False)
        ) / 400
    assert per_object <= most + 0.1, f"{per_object:.2f} system calls per object"


# ---------------------------------------------------------------------------
# holes: zeros that take no disk blocks
# ---------------------------------------------------------------------------

_MIB = 1 << 20


def _disk_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("naming", ["sha256", "fsverity"])
@pytest.mark.parametrize("batch", [False, True], ids=["alone", "batch"])
def test_a_hole_is_hashed_as_zeros_and_takes_no_disk_blocks(
    tmp_path: Path, naming: str, batch: bool
) -> None:
    store = ObjectStore(tmp_path / "objects", naming=naming, fsverity=True)  # type: ignore[arg-type]
    content = bytes(3 * _MIB) + b"x" + bytes(5 * _MIB + 17) + b"y" * 5000 + bytes(2 * _MIB)
    with contextlib.ExitStack() as stack:
        if batch:
            stack.enter_context(store.batch())
        with store.writer() as out:
            out.hole(3 * _MIB)
            out.write(b"x")
            out.hole(0)
            out.hole(5 * _MIB + 17)
            out.write(b"y" * 5000)
            out.hole(2 * _MIB)  # a hole at the end: the file still has its size
            assert out.size == len(content)
            payload = out.commit()
    verity = fsverity_digest(content)
    assert payload == (
        sha256_payload(content) if naming == "sha256" else payload_for_hex(verity.hex())
    )
    assert store.fsverity_digest(payload) == verity
    path = store.path_for(payload)
    assert path.read_bytes() == content
    assert store.verify(payload)
    assert _disk_bytes(path) <= 64 << 10, f"{_disk_bytes(path)} bytes on disk"
    assert os.stat(path).st_mode & 0o7777 == 0o644


def test_a_hole_in_content_the_store_holds_is_hashed_only(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    content = b"head" + bytes(_MIB) + b"tail"
    payload = store.add(content)
    with store.writer(hashlib.sha256(content).digest()) as out:
        out.write(b"head")
        out.hole(_MIB)
        out.write(b"tail")
        assert out.commit() == payload and not out.created
    with pytest.raises(ValidationError), store.writer(hashlib.sha256(content).digest()) as out:
        out.write(b"head")
        out.hole(_MIB - 1)  # one zero short
        out.write(b"tail")
        out.commit()
    assert all_files(tmp_path) == [store.path_for(payload)]
    with pytest.raises(ValueError), store.writer() as out:
        out.hole(-1)


@pytest.mark.parametrize("fmt", ["gnu", "pax-0.0", "pax-0.1", "pax-1.0"])
def test_an_imported_sparse_tar_member_keeps_its_holes(tmp_path: Path, fmt: str) -> None:
    from test_layers import sparse_content, sparse_tar

    from composefs_py.layers import open_layer

    real_size = 24 * _MIB
    pieces = [(_MIB, b"one"), (10 * _MIB, b"two" * 2000), (20 * _MIB, b"three")]
    blob = tmp_path / "sparse.tar"
    blob.write_bytes(sparse_tar(fmt, real_size, pieces))
    store = ObjectStore(tmp_path / "objects")
    tree = open_layer(blob).import_objects(store, progress=False)
    content = sparse_content(real_size, pieces)
    payload = tree.inode(b"/s").payload
    assert payload == sha256_payload(content)
    assert store.path_for(payload).read_bytes() == content
    assert _disk_bytes(store.path_for(payload)) <= 64 << 10
    # Hashed alone (no store): the same digest.
    assert open_layer(blob).tree().inode(b"/s").payload == payload


def test_an_imported_zstd_chunked_zeros_chunk_is_a_hole(tmp_path: Path) -> None:
    from test_layers import zero_chunk_blob

    from composefs_py.layers import open_layer

    data, content = zero_chunk_blob(end_offset=True, hole_size=16 * _MIB)
    blob = tmp_path / "layer.zstd"
    blob.write_bytes(data)
    store = ObjectStore(tmp_path / "objects")
    tree = open_layer(blob).import_objects(store, progress=False)
    payload = tree.inode(b"/sparse").payload
    assert payload == sha256_payload(content)
    assert store.path_for(payload).read_bytes() == content
    assert _disk_bytes(store.path_for(payload)) <= 64 << 10
