"""The object store: regular file contents named by digest.

An :class:`ObjectStore` is a directory holding one file per distinct content,
at ``ab/cdef...`` (two hex digits, ``/``, the other 62): the ``payload`` an
image's regular files point at, the layout of a composefs basedir.  The
default name is the content's SHA-256 (what containers/storage uses, and
what a TOC's ``digest`` gives); ``naming="fsverity"`` names objects by their
fs-verity digest instead (what composefs-rs uses).

Every object is published atomically: the content goes to a temporary file
in the store (``.tmp-*``), its digest is checked against the expected one,
it is made durable, and only then renamed into place.  A digest mismatch
raises :class:`~composefs_py.errors.ValidationError` and removes the
temporary file, so nothing unverified ever appears in the store.  An object
that already exists is not written again (its content is named by its
digest), but content given with an expected digest is still hashed and
checked.

:meth:`ObjectStore.batch` groups many objects (a layer import): they are
staged as temporary files and published together when the block ends, or
not at all if it raises, and one ``syncfs(2)`` replaces an fsync per object.

Durability, compared: ``mkcomposefs --digest-store`` fsyncs each object
before its rename (and never the directories); outside a batch this store
does the same and also fsyncs the directory.  A batch flushes the store's
filesystem once before the renames (no object can appear with content that
is not on disk) and once after them (the import is durable when it returns).
``durable=False`` skips all of it, as ``tar -x`` does.

fs-verity: ``fsverity=True`` computes each object's fs-verity digest while
writing it, so a layer import records the digests in its Tree (and the
image then asks the kernel to check them: ``mount(require_verity=True)``).
``enable_verity=True`` also enables kernel fs-verity on every object the
store takes in (new ones when they are published, ones it already held when
they are added again), measures it and checks it against the computed
digest.  The store's file system must support fs-verity (ext4 or f2fs made
with the verity feature, btrfs; a kernel with ``CONFIG_FS_VERITY``): the
constructor tries it on a scratch file and raises
:class:`~composefs_py.errors.LibraryError` saying what is missing, before
any object is written.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, cast

from .errors import LibraryError, ValidationError
from .fsverity import FsverityHasher, enable_fsverity, fsverity_digest, measure_fsverity

__all__ = ["Naming", "ObjectStore", "ObjectWriter", "payload_for_hex"]

Naming = Literal["sha256", "fsverity"]

_HEX64 = re.compile(rb"[0-9a-f]{64}")
_PAYLOAD = re.compile(rb"[0-9a-f]{2}/[0-9a-f]{62}")
_TMP_PREFIX = ".tmp-"
_COPY_SIZE = 1 << 20
_OBJECT_MODE = 0o644


def payload_for_hex(hexdigest: str | bytes) -> bytes:
    """Return the payload path ``b"ab/cdef..."`` for a 64-digit lowercase hex digest."""
    raw = hexdigest.encode("ascii") if isinstance(hexdigest, str) else hexdigest
    if not _HEX64.fullmatch(raw):
        raise ValidationError(
            f"must be 64 lowercase hex digits, got {raw[:80]!r}", field="digest"
        )
    return raw[:2] + b"/" + raw[2:]


def _hex_of(payload: bytes | str) -> str:
    raw = payload.encode("ascii", "replace") if isinstance(payload, str) else payload
    if not _PAYLOAD.fullmatch(raw):
        raise ValidationError(
            f"an object name is 2 hex digits, '/', 62 hex digits; got {raw[:80]!r}",
            field="payload",
        )
    return (raw[:2] + raw[3:]).decode("ascii")


def _expected_hex(expected: str | bytes | None) -> str | None:
    """Accept ``"sha256:<hex>"``, ``"<hex>"`` or 32 raw bytes; return lowercase hex."""
    if expected is None:
        return None
    if isinstance(expected, bytes):
        if len(expected) != 32:
            raise ValidationError("a raw digest is 32 bytes", field="digest")
        return expected.hex()
    text = expected.removeprefix("sha256:")
    if not _HEX64.fullmatch(text.encode("ascii", "replace")):
        raise ValidationError(
            f"must be sha256: and 64 lowercase hex digits, got {expected[:80]!r}",
            field="digest",
        )
    return text


class ObjectStore:
    """A directory of content-addressed objects, ``root/ab/cdef...``.

    ``naming``: ``"sha256"`` (default; containers/storage) or ``"fsverity"``
    (composefs-rs) picks the digest that names an object.  ``fsverity``: also
    compute each object's fs-verity digest while writing it (always done for
    ``naming="fsverity"``), so layer imports can put it in the Tree.
    ``enable_verity``: enable kernel fs-verity on every object added (see
    the module docstring; implies ``fsverity``); raises LibraryError here when
    the store's file system or the kernel cannot.  ``durable=False`` skips
    every fsync and sync; a crash may then leave damaged objects behind,
    which :meth:`verify` finds.  The root is created if missing.
    """

    __slots__ = (
        "_dirs",
        "_enable_verity",
        "_fsverity",
        "_lock",
        "_naming",
        "_root",
        "_root_str",
        "_staged",
        "_tmp_count",
        "_verity_digests",
        "_verity_pending",
        "durable",
    )

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        naming: Naming = "sha256",
        fsverity: bool = False,
        enable_verity: bool = False,
        durable: bool = True,
    ) -> None:
        if naming not in ("sha256", "fsverity"):
            raise ValueError(f"naming must be 'sha256' or 'fsverity', got {naming!r}")
        self._root = Path(root)
        self._root.mkdir(parents=True, exist_ok=True)
        self._naming: Naming = naming
        self._fsverity = fsverity or enable_verity or naming == "fsverity"
        self._enable_verity = enable_verity
        self._verity_digests: dict[bytes, bytes] = {}
        # In a batch: objects to enable fs-verity on once published, and
        # the digest each must measure.
        self._verity_pending: dict[bytes, bytes] = {}
        self._root_str = os.fspath(self._root)
        self._staged: dict[bytes, str] | None = None
        self._dirs: set[str] = set()  # fan-out directories known to exist
        self._lock = threading.Lock()
        self._tmp_count = 0
        self.durable = durable
        if enable_verity:
            self._probe_verity()

    def __repr__(self) -> str:
        return f"ObjectStore({str(self._root)!r}, naming={self._naming!r})"

    @property
    def root(self) -> Path:
        return self._root

    @property
    def naming(self) -> Naming:
        return self._naming

    @property
    def computes_fsverity(self) -> bool:
        """Whether :meth:`add` computes fs-verity digests as it writes."""
        return self._fsverity

    @property
    def enables_verity(self) -> bool:
        """Whether every object added gets kernel fs-verity enabled."""
        return self._enable_verity

    # -- names ---------------------------------------------------------

    def path_for(self, payload: bytes | str) -> Path:
        """Return the file of the object named ``payload`` (``ab/cdef...``)."""
        hexdigest = _hex_of(payload)
        return self._root / hexdigest[:2] / hexdigest[2:]

    def _path_str(self, hexdigest: str) -> str:
        """``path_for`` as a string, for a hex digest already checked."""
        return f"{self._root_str}/{hexdigest[:2]}/{hexdigest[2:]}"

    def has(self, payload: bytes | str) -> bool:
        """Whether the object named ``payload`` is in the store."""
        return os.path.isfile(self._path_str(_hex_of(payload)))

    def payloads(self) -> Iterator[bytes]:
        """Every object name in the store (unordered)."""
        for top in self._root.iterdir():
            if len(top.name) != 2 or not top.is_dir():
                continue
            for obj in top.iterdir():
                payload = f"{top.name}/{obj.name}".encode()
                if _PAYLOAD.fullmatch(payload):
                    yield payload

    def temporary_files(self) -> list[Path]:
        """Temporary files: objects being written, or left by a killed process."""
        return sorted(self._root.glob(_TMP_PREFIX + "*"))

    def remove_stale_temporary_files(self, older_than: float = 24 * 3600) -> int:
        """Remove temporary files not modified for ``older_than`` seconds.

        A process killed mid-import leaves its temporary files (never an
        object: those appear only complete and verified).  The age keeps
        files of imports still running.  Returns how many were removed.
        """
        cutoff = time.time() - older_than
        removed = 0
        for path in self.temporary_files():
            with contextlib.suppress(FileNotFoundError):
                if path.lstat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    # -- writing -------------------------------------------------------

    def writer(self, expected_sha256: str | bytes | None = None) -> ObjectWriter:
        """Return an :class:`ObjectWriter`: ``write()`` the content, then ``commit()``.

        Use it as a context manager; leaving the block without ``commit()``
        (or with an exception) removes the temporary file.
        """
        return ObjectWriter(self, _expected_hex(expected_sha256))

    def add(
        self,
        data: bytes | bytearray | memoryview | BinaryIO | Iterable[bytes],
        expected_sha256: str | bytes | None = None,
    ) -> bytes:
        """Store ``data`` (bytes, a binary file object or an iterable of chunks).

        Return its payload name ``b"ab/cdef..."``.  With ``expected_sha256``
        (``"sha256:<hex>"``, ``"<hex>"`` or 32 raw bytes) a different content
        raises ValidationError (``field="digest"``) and leaves no trace.
        """
        with self.writer(expected_sha256) as out:
            if isinstance(data, bytes | bytearray | memoryview):
                out.write(data)
            elif hasattr(data, "read"):
                read = data.read
                while chunk := read(_COPY_SIZE):
                    out.write(chunk)
            else:
                for chunk in data:
                    out.write(chunk)
            return out.commit()

    @property
    def batching(self) -> bool:
        """Whether a :meth:`batch` is open (objects are staged, not yet published)."""
        return self._staged is not None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Stage the objects committed in the block; publish all of them, or none.

        Inside the block each verified object waits in its temporary file.
        Leaving the block normally makes them all durable with one
        ``syncfs(2)`` or ``sync(2)`` (not an fsync per object), renames them
        into place and syncs again; leaving it with an exception removes
        them, so a rejected layer adds nothing to the store.  Nested blocks
        join the outer one.
        """
        if self._staged is not None:
            yield
            return
        staged: dict[bytes, str] = {}
        self._staged = staged
        try:
            yield
            self._staged = None
            durable = bool(staged) and self.durable
            if durable:
                self._sync_filesystem()  # the contents, before any rename
            for payload in staged:
                self._fan_out_dir(payload[:2].decode("ascii"))
            while staged:
                payload, tmp = staged.popitem()
                self._rename(tmp, payload)
            if durable:
                self._sync_filesystem()  # the renames
            pending, self._verity_pending = self._verity_pending, {}
            for payload, digest in pending.items():
                self._enable_object_verity(payload, digest)
        finally:
            self._verity_pending = {}
            self._staged = None
            for tmp in staged.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def _sync_filesystem(self) -> None:
        """Flush the store's filesystem: ``syncfs(2)`` (from the binding or
        libc), else ``sync(2)`` (all filesystems; Python has no ``os.syncfs``)."""
        syncfs = _syncfs_function()
        if syncfs is None:
            os.sync()
            return
        fd = os.open(self._root_str, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            syncfs(fd)
        finally:
            os.close(fd)

    def _create_temporary(self) -> tuple[int, str]:
        """Create a new, empty temporary file in the store; return its fd and path.

        ``O_EXCL`` makes the name ours; the pid, a counter and random bits
        keep names of concurrent writers (threads, processes) apart.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        for _ in range(100):
            with self._lock:
                self._tmp_count += 1
                count = self._tmp_count
            name = f"{self._root_str}/{_TMP_PREFIX}{os.getpid()}-{count}-{os.urandom(4).hex()}"
            try:
                return os.open(name, flags, 0o600), name
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temporary file name", self._root_str)

    def _fan_out_dir(self, prefix: str) -> bool:
        """Make sure ``root/prefix`` exists; return True if this call created it."""
        if prefix in self._dirs:
            return False
        path = f"{self._root_str}/{prefix}"
        try:
            os.mkdir(path, 0o755)
            created = True
        except FileExistsError:
            if not os.path.isdir(path):
                raise
            created = False
        self._dirs.add(prefix)
        return created

    def _publish(self, tmp: str, payload: bytes, *, checked: bool = False) -> bool:
        """Publish (or stage) ``tmp`` as ``payload``; return False if it already existed.

        ``checked``: the writer found no such object when it began (in a
        batch that is enough: the rename at the end checks again)."""
        staged = self._staged
        if staged is not None:
            hexdigest = (payload[:2] + payload[3:]).decode("ascii")
            with self._lock:
                if payload in staged or (
                    not checked and os.path.isfile(self._path_str(hexdigest))
                ):
                    duplicate = True
                else:
                    staged[payload] = tmp
                    duplicate = False
            if duplicate:
                os.unlink(tmp)
                return False
            return True
        return self._rename(tmp, payload, sync_dirs=self.durable)

    def _rename(self, tmp: str, payload: bytes, *, sync_dirs: bool = False) -> bool:
        prefix = payload[:2].decode("ascii")
        target = self._path_str(prefix + payload[3:].decode("ascii"))
        if os.path.isfile(target):
            os.unlink(tmp)
            return False
        created_dir = self._fan_out_dir(prefix)
        try:
            os.rename(tmp, target)
        except FileNotFoundError:  # the directory was removed behind our back
            if not os.path.exists(tmp):
                raise
            self._dirs.discard(prefix)
            created_dir = self._fan_out_dir(prefix)
            os.rename(tmp, target)
        if sync_dirs:
            _fsync_dir(f"{self._root_str}/{prefix}")
            if created_dir:
                _fsync_dir(self._root_str)
        return True

    def _staged_or_present(self, hexdigest: str) -> bool:
        """Whether an object with this sha256 is in the store or staged in the batch."""
        staged = self._staged
        if staged is not None and (hexdigest[:2] + "/" + hexdigest[2:]).encode() in staged:
            return True
        return os.path.isfile(self._path_str(hexdigest))

    # -- checking ------------------------------------------------------

    def verify(self, payload: bytes | str) -> bool:
        """Rehash the object; True if it exists and its content matches its name."""
        path = self.path_for(payload)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        try:
            if self._naming == "sha256":
                hasher = hashlib.sha256()
                while chunk := os.read(fd, _COPY_SIZE):
                    hasher.update(chunk)
                actual = hasher.hexdigest()
            else:
                actual = fsverity_digest(fd).hex()
        finally:
            os.close(fd)
        return actual == _hex_of(payload)

    def fsverity_digest(self, payload: bytes | str) -> bytes:
        """The 32-byte fs-verity digest of the object (computed once, then cached)."""
        key = payload.encode("ascii") if isinstance(payload, str) else payload
        digest = self._verity_digests.get(key)
        if digest is None:
            if self._naming == "fsverity":
                digest = bytes.fromhex(_hex_of(key))
            else:
                digest = fsverity_digest(self.path_for(key))
            self._verity_digests[key] = digest
        return digest

    def enable_verity(self, payload: bytes | str) -> bytes:
        """Enable kernel fs-verity on the object; return the kernel's digest.

        Raises LibraryError where the file system or the kernel has no
        fs-verity (the message says which).  An object that already has it
        is measured only.
        """
        fd = os.open(self.path_for(payload), os.O_RDONLY | os.O_CLOEXEC)
        try:
            enable_fsverity(fd)
            return measure_fsverity(fd)
        finally:
            os.close(fd)

    def _remember_verity(self, payload: bytes, digest: bytes) -> None:
        self._verity_digests[payload] = digest

    def _verity_after_commit(self, payload: bytes, digest: bytes) -> None:
        """With ``enable_verity``: enable it on ``payload`` now, or at the batch's end."""
        if self._staged is not None:
            with self._lock:
                self._verity_pending[payload] = digest
        else:
            self._enable_object_verity(payload, digest)

    def _enable_object_verity(self, payload: bytes, digest: bytes) -> None:
        measured = self.enable_verity(payload)
        if measured != digest:
            raise LibraryError(
                errno.EILSEQ,
                f"object {self.path_for(payload)} has fs-verity digest {measured.hex()}, "
                f"its content gives {digest.hex()}: the stored object is damaged",
            )

    def _probe_verity(self) -> None:
        """Enable fs-verity on a scratch file in the store, or raise LibraryError."""
        fd, tmp = self._create_temporary()
        try:
            try:
                os.write(fd, b"\0")
            finally:
                os.close(fd)
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)  # no writer may remain
            try:
                enable_fsverity(fd, name=f"the object store {self._root_str}")
            finally:
                os.close(fd)
        finally:
            os.unlink(tmp)


class ObjectWriter:
    """One object being written; made by :meth:`ObjectStore.writer`.

    With an expected digest for an object the store already holds, the
    content is only hashed (nothing is written) and still checked.
    """

    __slots__ = (
        "_done",
        "_expected",
        "_fd",
        "_sha256",
        "_size",
        "_store",
        "_tmp",
        "_verity",
        "created",
    )

    def __init__(self, store: ObjectStore, expected_hex: str | None) -> None:
        self._store = store
        self._expected = expected_hex
        self._sha256 = hashlib.sha256()
        self._verity = FsverityHasher() if store.computes_fsverity else None
        self._size = 0
        self._done = False
        #: After :meth:`commit`: whether this call added a new object (in a
        #: batch: staged it).
        self.created = False
        self._fd: int | None = None
        self._tmp: str | None = None
        if (
            expected_hex is not None
            and store.naming == "sha256"
            and store._staged_or_present(expected_hex)
        ):
            return  # hash only
        self._fd, self._tmp = store._create_temporary()

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    @property
    def sha256_hex(self) -> str:
        """The sha256 (hex) of what was written so far."""
        return self._sha256.hexdigest()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._done:
            raise ValueError("object already committed or aborted")
        self._sha256.update(data)
        if self._verity is not None:
            self._verity.update(data)
        self._size += len(data)
        fd = self._fd
        if fd is not None:
            written = os.write(fd, data)
            if written < len(data):
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(fd, view) :]

    def commit(self) -> bytes:
        """Check the digest, publish the object; return its payload name."""
        if self._done:
            raise ValueError("object already committed or aborted")
        actual = self._sha256.hexdigest()
        if self._expected is not None and actual != self._expected:
            self.abort()
            raise ValidationError(
                f"content does not match: expected sha256:{self._expected}, "
                f"got sha256:{actual} ({self._size} bytes)",
                field="digest",
            )
        store = self._store
        verity = self._verity.digest() if self._verity is not None else None
        if store.naming == "sha256":
            payload = payload_for_hex(actual)
        else:
            assert verity is not None  # naming="fsverity" always computes it
            payload = payload_for_hex(verity.hex())
        if verity is not None:
            store._remember_verity(payload, verity)
        if self._fd is None:  # the object exists; content only hashed
            self._done = True
            if verity is not None and store.enables_verity:
                store._verity_after_commit(payload, verity)
            return payload
        fd, tmp = self._fd, self._tmp
        assert tmp is not None
        try:
            os.fchmod(fd, _OBJECT_MODE)
            if store.durable and not store.batching:
                os.fsync(fd)
        except BaseException:
            self.abort()
            raise
        os.close(fd)
        self._fd = None
        self._tmp = None
        self._done = True
        try:
            self.created = store._publish(
                tmp, payload, checked=store.naming == "sha256" and self._expected is not None
            )
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if verity is not None and store.enables_verity:
            store._verity_after_commit(payload, verity)
        return payload

    def abort(self) -> None:
        """Drop the content: close and remove the temporary file (idempotent)."""
        self._done = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            self._tmp = None


@functools.cache
def _syncfs_function() -> Callable[[int], None] | None:
    """``syncfs(fd)``: the binding's if it has one, else libc's through ctypes;
    ``None`` where neither exists (then ``sync(2)`` is used)."""
    try:
        from . import _native

        native = getattr(_native, "syncfs", None)
        if native is not None:
            return cast("Callable[[int], None]", native)
    except Exception:  # no usable extension: try libc
        pass
    try:
        libc_syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    libc_syncfs.argtypes = [ctypes.c_int]
    libc_syncfs.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if libc_syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs: {os.strerror(code)}")

    return syncfs


def _fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
