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

Confinement: the store's folder is opened once (``O_DIRECTORY``) and every
step below it goes through that fd (:class:`ObjectDir`): a fan-out folder
``ab`` is opened with ``openat(O_DIRECTORY | O_NOFOLLOW)`` (or made with
``mkdirat``) and its fd kept, temporary files are made with
``openat(O_CREAT | O_EXCL | O_NOFOLLOW)`` in the root, objects are published
with ``renameat2(RENAME_NOREPLACE)`` between those fds (the kernel refuses
to replace any name there, a link included; where it has no such rename, a
lookup then ``renameat``), looked up with ``fstatat(...,
AT_SYMLINK_NOFOLLOW)`` and read with ``openat(O_NOFOLLOW | O_NONBLOCK)``.
Only digest-shaped names (``ab/`` + 62 lowercase hex) are ever looked up.
A fan-out folder or an object name that is a symbolic link, or anything but
a folder or a regular file, raises :class:`~composefs_py.errors.LibraryError`
naming it: nothing planted in the store can make it open, write or create a
file outside.

Cost: the store reads no untrusted structure (its inputs are contents and
digests), so no ``Limits`` field applies here: the caller checks sizes
against its limits before it writes (a layer's ``Limits.max_file_size``).
An object costs one pass of hashing over its bytes (what the caller streams
in; a hole, :meth:`ObjectWriter.hole`, is hashed as zeros from one shared
buffer and takes no disk block), a temporary file, and a constant number of
system calls.  In a batch, a new object costs five: ``openat`` (create),
``write`` (one per MiB), ``fchmod``, ``close``, ``renameat2``; plus one
``fstatat`` where its fan-out folder exists (is it there already?), and one
``lseek`` per hole (and an ``ftruncate`` for a hole at the end); an object
the store holds, given with its digest, costs one ``fstatat`` and is only
hashed.  No call is made to name a temporary file (pid and random bits are
drawn once per store).  Fan-out folder fds are opened once per store (at
most 256) and kept until :meth:`ObjectStore.close`;
a fan-out folder found missing is not looked for again before the batch
publishes.  A batch's bookkeeping is one entry per staged object.

What images need (:func:`image_objects`, :func:`missing_objects`:
``composefs-py objects`` / ``missing-objects``, and mount's check): an
image file is read by :func:`~composefs_py.writer.read_image`, bounded by
``Limits`` (``max_input_bytes`` before its bytes are read, the Tree's
limits before it is built); then one pass over the Tree, a set of distinct
payloads and one sort; a lookup is at most one ``fstatat`` per distinct
payload and store, confined as above (a link at an object's name makes the
object missing, never followed).

Maintenance (:meth:`ObjectStore.check`, ``composefs-py store check``): one
listing per folder, consumed as it is read, one ``fstatat`` per entry, one
pass of hashing per object, a constant number of system calls per object;
memory is one read buffer and the problems found.  ``Limits.max_file_size``
bounds what is hashed: a larger object is corrupt on its size (``fstat``),
checked before a byte of it is read.  Corrupt objects go to
``.corrupt/`` in the store with ``repair``; links and odd files planted at
store names are removed, never followed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Literal, cast

from .errors import LibraryError, ValidationError
from .fsverity import FsverityHasher, enable_fsverity, fsverity_digest, measure_fsverity
from .model import is_object_name

if TYPE_CHECKING:
    from .limits import Limits
    from .model import Tree

__all__ = [
    "Naming",
    "fsverity_of_bytes",
    "fsverity_of_fd",
    "sha256_of_fd",
    "ObjectDir",
    "ObjectStore",
    "ObjectWriter",
    "StoreProblem",
    "StoreReport",
    "absent_payloads",
    "image_objects",
    "missing_objects",
    "payload_for_hex",
    "tree_payloads",
    "update_with_zeros",
]

Naming = Literal["sha256", "fsverity"]
ProblemKind = Literal["corrupt", "stale-temporary", "not-a-file"]


@dataclass(frozen=True, slots=True)
class StoreProblem:
    """One thing :meth:`ObjectStore.check` found wrong in the store.

    ``name`` is relative to the store's root (``ab/cdef...``, ``ab``,
    ``.tmp-...``); ``kind`` is ``"corrupt"`` (an object whose content is not
    what its name says, or whose kernel fs-verity digest is not its
    content's), ``"stale-temporary"`` (a temporary file older than the grace
    period: a writer was killed) or ``"not-a-file"`` (a link, FIFO, device,
    socket or folder where an object or a fan-out folder belongs);
    ``repaired`` says what ``repair=True`` did (``"removed"``,
    ``"moved to .corrupt/..."``), None if nothing.
    """

    name: str
    kind: ProblemKind
    reason: str
    repaired: str | None = None


@dataclass(frozen=True, slots=True)
class StoreReport:
    """What :meth:`ObjectStore.check` found: ``objects`` regular objects
    hashed (``bytes`` in all), ``in_progress`` temporary files younger than
    the grace period (left alone), and the ``problems``."""

    objects: int
    bytes: int
    in_progress: int
    problems: tuple[StoreProblem, ...]

    @property
    def clean(self) -> bool:
        """Whether every problem found (if any) was repaired."""
        return all(problem.repaired is not None for problem in self.problems)


_LOWER_HEX = b"0123456789abcdef"
_TMP_PREFIX = ".tmp-"
# Where ObjectStore.check(repair=True) sets corrupt objects aside (in the root).
_CORRUPT_DIR = ".corrupt"
_DEFAULT_GRACE = 24 * 3600
_COPY_SIZE = 1 << 20
_OBJECT_MODE = 0o644
# A fan-out folder: never through a link, never anything but a folder.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# An object read: never through a link, never blocking on a FIFO or device.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# A temporary file: a new name of ours (O_EXCL), never through a link.
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
# renameat2(2): fail with EEXIST instead of replacing the destination.
_RENAME_NOREPLACE = 1
# ioctl FICLONE (<linux/fs.h> _IOW(0x94, 9, int)): share the source's extents.
_FICLONE = 0x40049409
# errnos that mean "no reflink here" (other file system, no support) or "no
# copy_file_range here": fall back to the next way of copying.
_NO_REFLINK = frozenset(
    (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS, errno.EPERM)
)
_NO_COPY_RANGE = frozenset(
    (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM, errno.EBADF)
)
_COPY_RANGE_SIZE = 1 << 30
# Zeros fed to the hashers for a hole, a slice at a time (never copied).
_ZEROS = memoryview(bytes(_COPY_SIZE))


def update_with_zeros(update: Callable[[memoryview], object], size: int) -> None:
    """Call ``update`` with ``size`` zero bytes, from one shared zero buffer
    (``_COPY_SIZE`` at a time; nothing is allocated but the views)."""
    step = len(_ZEROS)
    while size >= step:
        update(_ZEROS)
        size -= step
    if size:
        update(_ZEROS[:size])


def _is_hex64(raw: bytes) -> bool:
    """Whether ``raw`` is 64 lowercase hex digits (no regex to compile at import)."""
    return len(raw) == 64 and not raw.translate(None, _LOWER_HEX)


def _is_hex(name: str) -> bool:
    """Whether ``name`` is lowercase hex digits only."""
    return not name.encode("ascii", "replace").translate(None, _LOWER_HEX)


def payload_for_hex(hexdigest: str | bytes) -> bytes:
    """Return the payload path ``b"ab/cdef..."`` for a 64-digit lowercase hex digest."""
    raw = hexdigest.encode("ascii") if isinstance(hexdigest, str) else hexdigest
    if not _is_hex64(raw):
        raise ValidationError(f"must be 64 lowercase hex digits, got {raw[:80]!r}", field="digest")
    return raw[:2] + b"/" + raw[2:]


def _hex_of(payload: bytes | str) -> str:
    raw = payload.encode("ascii", "replace") if isinstance(payload, str) else payload
    if not is_object_name(raw):
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
    if not _is_hex64(text.encode("ascii", "replace")):
        raise ValidationError(
            f"must be sha256: and 64 lowercase hex digits, got {expected[:80]!r}",
            field="digest",
        )
    return text


class ObjectDir:
    """An object store's folder opened once; everything below it is reached
    relative to that fd and never through a symbolic link.

    :class:`ObjectStore` keeps one to read and write; :func:`~composefs_py.mount.mount`
    opens one per object folder for its verity checks (reading only).  The
    folder itself is the caller's (it may be a link); a fan-out folder is
    opened ``O_DIRECTORY | O_NOFOLLOW`` and its fd kept until :meth:`close`;
    an object is looked up with ``fstatat(AT_SYMLINK_NOFOLLOW)`` and opened
    ``O_NOFOLLOW | O_NONBLOCK``.  A fan-out folder that is not a folder or an
    object that is not a regular file raises LibraryError naming it.
    """

    __slots__ = ("_absent", "_fan_out", "_lock", "_retired", "fd", "path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fan_out: dict[str, int] = {}
        # Fan-out folders found missing since :meth:`forget_absent` (see
        # :meth:`has`, ``trust_absent``).
        self._absent: set[str] = set()
        self._retired: list[int] = []
        self._lock = threading.Lock()
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        """Close the folder's fd and every fan-out folder fd (idempotent)."""
        fds = [*self._fan_out.values(), *self._retired]
        self._fan_out.clear()
        self._retired.clear()
        fd, self.fd = getattr(self, "fd", -1), -1
        if fd >= 0:
            fds.append(fd)
        for each in fds:
            with contextlib.suppress(OSError):
                os.close(each)

    def __del__(self) -> None:
        with contextlib.suppress(AttributeError):
            self.close()

    def __enter__(self) -> ObjectDir:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def refusal(self, name: str, st_mode: int | None, code: int) -> LibraryError:
        """The error for ``name`` (relative to the folder) that is not what it should be."""
        if st_mode is None or stat.S_ISLNK(st_mode):
            what = "a symbolic link (or not a folder)" if st_mode is None else "a symbolic link"
        elif stat.S_ISDIR(st_mode):
            what = "a folder"
        elif stat.S_ISFIFO(st_mode):
            what = "a FIFO"
        elif stat.S_ISCHR(st_mode) or stat.S_ISBLK(st_mode):
            what = "a device"
        elif stat.S_ISSOCK(st_mode):
            what = "a socket"
        else:
            what = "not a regular file"
        return LibraryError(
            code,
            f"object store {self.path}: {name} is {what}: only folders and regular files "
            "belong there, and the store follows no link",
        )

    def fan_out(self, prefix: str) -> int | None:
        """The fd of fan-out folder ``prefix``; None if there is none."""
        fd = self._fan_out.get(prefix)
        if fd is None:
            fd, _created = self._open_fan_out(prefix, create=False)
        return fd

    def make_fan_out(self, prefix: str) -> tuple[int, bool]:
        """The fd of fan-out folder ``prefix``, made if missing; and whether this made it."""
        fd = self._fan_out.get(prefix)
        if fd is not None:
            return fd, False
        made, created = self._open_fan_out(prefix, create=True)
        assert made is not None  # create=True: made or raised
        return made, created

    def forget_absent(self) -> None:
        """Look again for every fan-out folder found missing so far."""
        self._absent.clear()

    def forget_fan_out(self, prefix: str, fd: int) -> None:
        """Drop a fan-out folder fd (its folder was removed behind the store's back).

        The fd stays open until :meth:`close`: another thread may be using it."""
        with self._lock:
            if self._fan_out.get(prefix) == fd:
                del self._fan_out[prefix]
                self._retired.append(fd)

    def _open_fan_out(self, prefix: str, *, create: bool) -> tuple[int | None, bool]:
        with self._lock:
            fd = self._fan_out.get(prefix)
            if fd is not None:
                return fd, False
            created = False
            try:
                try:
                    fd = os.open(prefix, _DIR_FLAGS, dir_fd=self.fd)
                except FileNotFoundError:
                    if not create:
                        self._absent.add(prefix)
                        return None, False
                    try:
                        os.mkdir(prefix, 0o755, dir_fd=self.fd)
                        created = True
                    except FileExistsError:
                        pass
                    fd = os.open(prefix, _DIR_FLAGS, dir_fd=self.fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise self.refusal(prefix, self._lstat_mode(prefix), exc.errno) from None
                raise
            self._fan_out[prefix] = fd
            self._absent.discard(prefix)
            return fd, created

    def _lstat_mode(self, name: str, dir_fd: int | None = None) -> int | None:
        try:
            return os.stat(
                name, dir_fd=self.fd if dir_fd is None else dir_fd, follow_symlinks=False
            ).st_mode
        except OSError:
            return None

    def has(self, hexdigest: str, *, trust_absent: bool = False) -> bool:
        """Whether object ``hexdigest`` (checked hex) exists: a regular file, else an error.

        ``trust_absent``: a fan-out folder found missing before (since
        :meth:`forget_absent`) is taken as still missing, without a system
        call.  Only for a guess that may be wrong towards "absent": a batch's
        staging, whose publication looks again (the rename refuses to replace).
        """
        prefix = hexdigest[:2]
        fan = self._fan_out.get(prefix)
        if fan is None:
            if trust_absent and prefix in self._absent:
                return False
            fan, _created = self._open_fan_out(prefix, create=False)
            if fan is None:
                return False
        try:
            mode = os.stat(hexdigest[2:], dir_fd=fan, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(mode):
            raise self.refusal(f"{hexdigest[:2]}/{hexdigest[2:]}", mode, errno.EINVAL)
        return True

    def open_object(self, payload: bytes | str) -> int | None:
        """Open object ``payload`` (``ab/`` + 62 hex, else ValidationError) read-only.

        Returns None if it is not there; raises LibraryError if it (or its
        fan-out folder) is a link or not a regular file: it is looked up with
        ``fstatat(AT_SYMLINK_NOFOLLOW)`` first (a FIFO or device is never
        opened), opened ``O_NOFOLLOW | O_NONBLOCK`` and checked again.
        """
        hexdigest = _hex_of(payload)
        name = f"{hexdigest[:2]}/{hexdigest[2:]}"
        if not self.has(hexdigest):
            return None
        fan = self.fan_out(hexdigest[:2])
        if fan is None:  # removed since
            return None
        try:
            fd = os.open(hexdigest[2:], _READ_FLAGS, dir_fd=fan)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self.refusal(name, stat.S_IFLNK, exc.errno) from None
            raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise self.refusal(name, mode, errno.EINVAL)
        return fd


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
    which :meth:`verify` finds.  The root is created if missing, then opened
    once: the store keeps that fd (and one per fan-out folder) until
    :meth:`close` (or until it is garbage collected); it is a context manager.
    """

    __slots__ = (
        "_dir",
        "_enable_verity",
        "_fsverity",
        "_lock",
        "_naming",
        "_noreplace",
        "_root",
        "_staged",
        "_tmp_count",
        "_tmp_prefix",
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
        self._dir = ObjectDir(self._root)
        self._naming: Naming = naming
        self._fsverity = fsverity or enable_verity or naming == "fsverity"
        self._enable_verity = enable_verity
        self._verity_digests: dict[bytes, bytes] = {}
        # In a batch: objects to enable fs-verity on once published, and
        # the digest each must measure.
        self._verity_pending: dict[bytes, bytes] = {}
        # In a batch: payload -> temporary file name (in the root).
        self._staged: dict[bytes, str] | None = None
        self._lock = threading.Lock()
        self._tmp_count = 0
        self._tmp_prefix = _temporary_prefix()
        # Whether renameat2(RENAME_NOREPLACE) works here (until it says not).
        self._noreplace = True
        self.durable = durable
        if enable_verity:
            self._probe_verity()

    def __repr__(self) -> str:
        return f"ObjectStore({str(self._root)!r}, naming={self._naming!r})"

    def close(self) -> None:
        """Close the store's folder fds (idempotent); the store is unusable after."""
        self._dir.close()

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        """Return the file of the object named ``payload`` (``ab/cdef...``).

        Anything but ``ab/`` and 62 lowercase hex digits raises
        ValidationError.  The path is for showing and for tools that take a
        path: the store itself never opens an object by it.
        """
        hexdigest = _hex_of(payload)
        return self._root / hexdigest[:2] / hexdigest[2:]

    def has(self, payload: bytes | str) -> bool:
        """Whether the object named ``payload`` is in the store.

        A name that is a link or not a regular file raises LibraryError."""
        return self._dir.has(_hex_of(payload))

    def payloads(self) -> Iterator[bytes]:
        """Every object name in the store (unordered); links are not followed."""
        for top in self._list(None):
            if len(top.name) != 2 or not top.is_dir(follow_symlinks=False):
                continue
            fan = self._dir.fan_out(top.name)
            if fan is None:
                continue
            for obj in self._list(fan):
                payload = f"{top.name}/{obj.name}".encode()
                if is_object_name(payload) and obj.is_file(follow_symlinks=False):
                    yield payload

    def _list(self, fd: int | None) -> list[os.DirEntry[str]]:
        """The entries of the root (``fd`` None) or of an open fan-out folder.

        Listed through a fresh fd: a directory fd's position is shared, and
        another thread may be listing the same folder."""
        own = os.open(".", _DIR_FLAGS, dir_fd=self._dir.fd if fd is None else fd)
        try:
            with os.scandir(own) as entries:
                return list(entries)
        finally:
            os.close(own)

    def temporary_files(self) -> list[Path]:
        """Temporary files: objects being written, or left by a killed process."""
        return sorted(
            self._root / entry.name
            for entry in self._list(None)
            if entry.name.startswith(_TMP_PREFIX)
        )

    def remove_stale_temporary_files(self, older_than: float = _DEFAULT_GRACE) -> int:
        """Remove temporary files not modified for ``older_than`` seconds.

        A process killed mid-import leaves its temporary files (never an
        object: those appear only complete and verified).  The age keeps
        files of imports still running.  Returns how many were removed.
        """
        cutoff = time.time() - older_than
        removed = 0
        root = self._dir.fd
        for path in self.temporary_files():
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path.name, dir_fd=root, follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(path.name, dir_fd=root)
                    removed += 1
        return removed

    # -- maintenance ---------------------------------------------------

    def check(
        self, *, repair: bool = False, grace: float = _DEFAULT_GRACE, limits: Limits | None = None
    ) -> StoreReport:
        """Check the whole store; with ``repair``, clean up what is found.

        Finds temporary files (``.tmp-*`` in the root) not modified for
        ``grace`` seconds (a writer was killed: removed by ``repair``; younger
        ones belong to writers still running and are only counted); objects
        whose content does not give their name (sha256, or fs-verity with
        ``naming="fsverity"``), or, where the object has kernel fs-verity
        enabled, whose measured digest is not its content's (``repair``
        moves them to ``.corrupt/`` in the store, named by their 64 hex
        digits: kept for a look, out of every mount's way); and anything but
        a folder at a fan-out name (``ab``) or anything but a regular file at
        an object name (``repair`` removes a link, FIFO, device or socket,
        which removes no file it points at; a folder is reported only).
        Other names are not the store's and are left alone.

        Confinement: every entry is reached from the store's fds and looked
        at with ``fstatat(AT_SYMLINK_NOFOLLOW)`` (a listing's file type); an
        object is read through :meth:`ObjectDir.open_object` (``O_NOFOLLOW |
        O_NONBLOCK``, a regular file or nothing), so nothing is followed and
        no FIFO or device is opened; the inode set aside is the one that was
        hashed (its device and inode number are compared first); a
        ``.corrupt`` that is not a folder raises LibraryError.  Cost: one
        listing of each folder, read as it goes (no list of a folder is
        kept), one ``fstatat`` per entry, one pass of hashing over each
        object's bytes, a constant number of system calls per object; memory
        is one read buffer plus the problems found.  An object larger than
        ``limits.max_file_size`` (default ``Limits()``), which no image within
        those limits can use, is corrupt on its size alone and is not read
        (a huge sparse file planted in the store costs nothing to find).
        """
        from .limits import Limits

        max_size = (limits or Limits()).max_file_size
        problems: list[StoreProblem] = []
        counts = [0, 0, 0]  # objects, bytes, in progress
        cutoff = time.time() - grace
        corrupt_fd: list[int] = []  # opened on first use
        root = self._dir.fd
        try:
            for name, kind in self._entries(root):
                if name.startswith(_TMP_PREFIX):
                    stale = self._check_temporary(name, kind, cutoff, repair, counts)
                    problems += [stale] if stale is not None else []
                elif len(name) == 2 and _is_hex(name):
                    problems += self._check_fan_out(
                        name, kind, repair, counts, corrupt_fd, max_size
                    )
        finally:
            for fd in corrupt_fd:
                os.close(fd)
        return StoreReport(counts[0], counts[1], counts[2], tuple(problems))

    @staticmethod
    def _entries(fd: int) -> Iterator[tuple[str, int]]:
        """(name, file type) of each entry of folder ``fd`` (not following links),
        read as it goes through a fresh fd (a folder fd's position is shared)."""
        own = os.open(".", _DIR_FLAGS, dir_fd=fd)
        try:
            with os.scandir(own) as entries:
                for entry in entries:
                    try:
                        mode = entry.stat(follow_symlinks=False).st_mode
                    except FileNotFoundError:  # gone since the listing
                        continue
                    yield entry.name, stat.S_IFMT(mode)
        finally:
            os.close(own)

    def _check_temporary(
        self, name: str, kind: int, cutoff: float, repair: bool, counts: list[int]
    ) -> StoreProblem | None:
        root = self._dir.fd
        if kind == stat.S_IFDIR:
            return self._not_a_file(root, name, name, kind, repair)
        try:
            mtime = os.stat(name, dir_fd=root, follow_symlinks=False).st_mtime
        except FileNotFoundError:  # its writer published or removed it
            return None
        if mtime >= cutoff:
            counts[2] += 1
            return None
        age = (time.time() - mtime) / 3600
        repaired = None
        if repair:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=root)
            repaired = "removed"
        return StoreProblem(
            name,
            "stale-temporary",
            f"a temporary file last written {age:.1f} hours ago (a writer killed mid-object)",
            repaired,
        )

    def _not_a_file(self, fd: int, name: str, shown: str, kind: int, repair: bool) -> StoreProblem:
        what = self._dir.refusal(shown, kind, errno.EINVAL).strerror
        repaired = None
        if repair and kind != stat.S_IFDIR:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)  # unlink follows no link
            repaired = "removed"
        return StoreProblem(shown, "not-a-file", str(what), repaired)

    def _check_fan_out(
        self,
        prefix: str,
        kind: int,
        repair: bool,
        counts: list[int],
        corrupt_fd: list[int],
        max_size: int,
    ) -> list[StoreProblem]:
        """The problems of fan-out folder ``prefix`` (of file type ``kind``) and its objects."""
        if kind != stat.S_IFDIR:
            return [self._not_a_file(self._dir.fd, prefix, prefix, kind, repair)]
        try:
            fan = self._dir.fan_out(prefix)
        except LibraryError as exc:  # replaced since the listing
            return [StoreProblem(prefix, "not-a-file", str(exc.strerror))]
        if fan is None:  # removed since the listing
            return []
        problems = []
        for name, kind in self._entries(fan):
            if len(name) != 62 or not _is_hex(name):
                continue
            shown = f"{prefix}/{name}"
            if kind != stat.S_IFREG:
                problems.append(self._not_a_file(fan, name, shown, kind, repair))
                continue
            try:
                fd = self._dir.open_object(shown)
            except LibraryError as exc:  # replaced by something else since the listing
                problems.append(StoreProblem(shown, "not-a-file", str(exc.strerror)))
                continue
            if fd is None:
                continue
            try:
                identity = os.fstat(fd)
                if identity.st_size > max_size:
                    reason: str | None = (
                        f"{identity.st_size} bytes, more than max_file_size={max_size}: not read"
                    )
                    size = 0
                else:
                    reason, size = self._content_problem(fd, prefix + name)
            finally:
                os.close(fd)
            counts[0] += 1
            counts[1] += size
            if reason is None:
                continue
            repaired = None
            if repair:
                repaired = self._set_aside(fan, name, prefix + name, identity, corrupt_fd)
            problems.append(StoreProblem(shown, "corrupt", reason, repaired))
        return problems

    def _content_problem(self, fd: int, hexdigest: str) -> tuple[str | None, int]:
        """Why the object open at ``fd`` is not object ``hexdigest`` (None if it
        is), and its size; one pass over its bytes."""
        try:
            measured: bytes | None = measure_fsverity(fd)
        except OSError:  # no kernel fs-verity on it: nothing recorded
            measured = None
        sha = hashlib.sha256() if self._naming == "sha256" else None
        verity = FsverityHasher() if measured is not None or sha is None else None
        size = 0
        while chunk := os.read(fd, _COPY_SIZE):
            size += len(chunk)
            if sha is not None:
                sha.update(chunk)
            if verity is not None:
                verity.update(chunk)
        named = "sha256" if sha is not None else "fs-verity"
        actual = (
            sha.hexdigest() if sha is not None else cast("FsverityHasher", verity).digest().hex()
        )
        if actual != hexdigest:
            return f"its content ({size} bytes) has {named} {actual}, not its name", size
        if measured is not None and verity is not None and measured != verity.digest():
            return (
                f"its kernel fs-verity digest is {measured.hex()}, its content's "
                f"{verity.digest().hex()}",
                size,
            )
        return None, size

    def _set_aside(
        self, fan: int, name: str, hexdigest: str, hashed: os.stat_result, corrupt_fd: list[int]
    ) -> str | None:
        """Move object ``name`` (in fan-out folder ``fan``) to ``.corrupt/HEX`` if
        it is still the inode that was hashed; return what was done."""
        try:
            now = os.stat(name, dir_fd=fan, follow_symlinks=False)
        except FileNotFoundError:
            return "already gone"
        if (now.st_dev, now.st_ino) != (hashed.st_dev, hashed.st_ino):
            return None  # replaced since: looked at again by the next check
        if not corrupt_fd:
            corrupt_fd.append(self._open_corrupt_dir())
        os.rename(name, hexdigest, src_dir_fd=fan, dst_dir_fd=corrupt_fd[0])
        return f"moved to {_CORRUPT_DIR}/{hexdigest}"

    def _open_corrupt_dir(self) -> int:
        root = self._dir.fd
        with contextlib.suppress(FileExistsError):
            os.mkdir(_CORRUPT_DIR, 0o700, dir_fd=root)
        try:
            return os.open(_CORRUPT_DIR, _DIR_FLAGS, dir_fd=root)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self._dir.refusal(
                    _CORRUPT_DIR, self._dir._lstat_mode(_CORRUPT_DIR), exc.errno
                ) from None
            raise

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

    def add_file(
        self,
        fd: int,
        *,
        sha256: str | bytes | None = None,
        fsverity: bytes | None = None,
    ) -> bytes:
        """Store the content of the open regular file ``fd`` (offset 0 to its end).

        Return its payload name.  The content is put in a temporary file of
        the store by a reflink (``FICLONE``) where the file systems allow it,
        else copied (``copy_file_range``, else reads and writes); then that
        temporary file, the very bytes to be published, is hashed and checked
        against ``sha256`` and ``fsverity`` where given (a source that
        changed since the caller hashed it raises ValidationError and leaves
        nothing behind), and published as :meth:`add` publishes (in a
        :meth:`batch`: staged).  Where the digest that names the object is
        given and the object is already there (or staged), nothing is read:
        the caller has just hashed this very file.  ``fd``'s offset is not
        used or moved.
        """
        sha_hex = _expected_hex(sha256)
        if fsverity is not None and len(fsverity) != 32:
            raise ValidationError("a raw fs-verity digest is 32 bytes", field="digest")
        name_hex = sha_hex if self._naming == "sha256" else (fsverity.hex() if fsverity else None)
        if name_hex is not None and self._staged_or_present(name_hex):
            payload = payload_for_hex(name_hex)
            if fsverity is not None:
                self._remember_verity(payload, fsverity)
                if self._enable_verity:
                    self._verity_after_commit(payload, fsverity)
            return payload
        out, tmp = self._create_temporary()
        try:
            try:
                _clone_or_copy(fd, out)
                os.fchmod(out, _OBJECT_MODE)
                if self.durable and not self.batching:
                    os.fsync(out)
            finally:
                os.close(out)
            copy = os.open(tmp, _READ_FLAGS, dir_fd=self._dir.fd)
            try:
                want_sha = self._naming == "sha256" or sha_hex is not None
                want_verity = self._fsverity or fsverity is not None
                actual_sha = sha256_of_fd(copy) if want_sha else None
                actual_verity = fsverity_of_fd(copy) if want_verity else None
            finally:
                os.close(copy)
            for what, expected, actual in (
                ("sha256", sha_hex, actual_sha),
                (
                    "fs-verity",
                    fsverity.hex() if fsverity else None,
                    actual_verity.hex() if actual_verity else None,
                ),
            ):
                if expected is not None and actual != expected:
                    raise ValidationError(
                        f"content does not match: expected {what} {expected}, the copy has "
                        f"{actual}: the file changed while it was stored",
                        field="digest",
                    )
            if self._naming == "sha256":
                assert actual_sha is not None
                payload = payload_for_hex(actual_sha)
            else:
                assert actual_verity is not None
                payload = payload_for_hex(actual_verity.hex())
            if actual_verity is not None:
                self._remember_verity(payload, actual_verity)
            self._publish(tmp, payload, checked=False)
        except BaseException:
            self._unlink_temporary(tmp)
            raise
        if actual_verity is not None and self._enable_verity:
            self._verity_after_commit(payload, actual_verity)
        return payload

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
        them, so a rejected layer adds nothing to the store.  If publishing
        fails halfway (a rename refused), the objects this batch already
        published are removed again and so is every temporary file: objects
        the store held before stay, nothing else appears.  Nested blocks
        join the outer one.
        """
        if self._staged is not None:
            yield
            return
        staged: dict[bytes, str] = {}
        self._staged = staged
        self._dir.forget_absent()
        try:
            yield
            self._staged = None
            self._publish_batch(staged)
            pending, self._verity_pending = self._verity_pending, {}
            for payload, digest in pending.items():
                self._enable_object_verity(payload, digest)
        finally:
            self._verity_pending = {}
            self._staged = None
            for tmp in staged.values():
                self._unlink_temporary(tmp)

    def _publish_batch(self, staged: dict[bytes, str]) -> None:
        """Rename every staged object into place, or (on failure) none.

        An entry leaves ``staged`` only once its temporary file is gone
        (renamed, or removed as a duplicate), so the caller's cleanup removes
        whatever is left; what this batch renamed is unlinked on failure."""
        if not staged:
            return
        durable = self.durable
        if durable:
            self._sync_filesystem()  # the contents, before any rename
        for payload in staged:
            self._dir.make_fan_out(payload[:2].decode("ascii"))
        published: list[str] = []
        try:
            for payload, tmp in list(staged.items()):
                hexdigest = (payload[:2] + payload[3:]).decode("ascii")
                if self._rename(tmp, hexdigest):
                    published.append(hexdigest)
                del staged[payload]
            if durable:
                self._sync_filesystem()  # the renames
        except BaseException:
            for hexdigest in published:
                fan = self._dir.fan_out(hexdigest[:2])
                if fan is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(hexdigest[2:], dir_fd=fan)
            raise

    def _sync_filesystem(self) -> None:
        """Flush the store's filesystem: ``syncfs(2)`` (from the binding or
        libc), else ``sync(2)`` (all filesystems; Python has no ``os.syncfs``)."""
        syncfs = _syncfs_function()
        if syncfs is None:
            os.sync()
            return
        syncfs(self._dir.fd)

    def _create_temporary(self) -> tuple[int, str]:
        """Create a new, empty temporary file in the store; return its fd and name.

        The name is relative to the store's root fd.  ``O_EXCL`` makes the
        name ours (and refuses a link planted there); the pid and random bits
        (drawn once per store, again after a name was taken) and a counter
        keep names of concurrent writers (threads, processes) apart, with no
        system call of their own.
        """
        for _ in range(100):
            with self._lock:
                self._tmp_count += 1
                name = f"{self._tmp_prefix}{self._tmp_count}"
            try:
                return os.open(name, _CREATE_FLAGS, 0o600, dir_fd=self._dir.fd), name
            except FileExistsError:  # another writer's (a forked copy of this store?)
                self._tmp_prefix = _temporary_prefix()
        raise FileExistsError(errno.EEXIST, "no free temporary file name", str(self._root))

    def _unlink_temporary(self, tmp: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=self._dir.fd)

    def _publish(self, tmp: str, payload: bytes, *, checked: bool = False) -> bool:
        """Publish (or stage) ``tmp`` as ``payload``; return False if it already existed.

        ``checked``: the writer found no such object when it began (in a
        batch that is enough: the rename at the end checks again)."""
        hexdigest = (payload[:2] + payload[3:]).decode("ascii")
        staged = self._staged
        if staged is not None:
            with self._lock:
                if payload in staged or (
                    not checked and self._dir.has(hexdigest, trust_absent=True)
                ):
                    duplicate = True
                else:
                    staged[payload] = tmp
                    duplicate = False
            if duplicate:
                self._unlink_temporary(tmp)
                return False
            return True
        return self._rename(tmp, hexdigest, sync_dirs=self.durable)

    def _rename(self, tmp: str, hexdigest: str, *, sync_dirs: bool = False) -> bool:
        """Rename temporary file ``tmp`` to object ``hexdigest`` unless it exists
        (then remove ``tmp``); return whether it was renamed."""
        prefix = hexdigest[:2]
        root = self._dir.fd
        fan, created_dir = self._dir.make_fan_out(prefix)
        try:
            renamed = self._rename_new(tmp, fan, hexdigest)
        except FileNotFoundError:  # the directory was removed behind our back
            try:
                os.stat(tmp, dir_fd=root, follow_symlinks=False)
            except FileNotFoundError:
                raise FileNotFoundError(
                    errno.ENOENT, "temporary file vanished", f"{self._root}/{tmp}"
                ) from None
            self._dir.forget_fan_out(prefix, fan)
            fan, created_dir = self._dir.make_fan_out(prefix)
            renamed = self._rename_new(tmp, fan, hexdigest)
        if not renamed:
            self._unlink_temporary(tmp)
            return False
        if sync_dirs:
            os.fsync(fan)
            if created_dir:
                os.fsync(root)
        return True

    def _rename_new(self, tmp: str, fan: int, hexdigest: str) -> bool:
        """Rename ``tmp`` (in the root) to object ``hexdigest`` (in fan-out folder
        ``fan``) if no such name exists; return whether it was renamed.

        One ``renameat2(RENAME_NOREPLACE)``: the kernel checks and renames at
        once (a name there, even a link, is never replaced).  Where the kernel,
        libc or file system has no such rename, a lookup then ``renameat``.
        A name there that is a link or not a regular file raises LibraryError.
        """
        name = hexdigest[2:]
        for _ in range(3):
            renamed = _rename_noreplace(self._dir.fd, tmp, fan, name) if self._noreplace else None
            if renamed is None:
                self._noreplace = False
                break
            if renamed or self._dir.has(hexdigest):
                return renamed
            # The name was there and is gone again: try again.
        if self._dir.has(hexdigest):
            return False
        os.rename(tmp, name, src_dir_fd=self._dir.fd, dst_dir_fd=fan)
        return True

    def _staged_or_present(self, hexdigest: str) -> bool:
        """Whether an object with this sha256 is in the store or staged in the batch.

        In a batch a fan-out folder found missing is not looked for again
        (the publication looks): a wrong "absent" only writes a duplicate."""
        staged = self._staged
        if staged is not None and (hexdigest[:2] + "/" + hexdigest[2:]).encode() in staged:
            return True
        return self._dir.has(hexdigest, trust_absent=staged is not None)

    # -- checking ------------------------------------------------------

    def _open(self, payload: bytes | str) -> int:
        """Open the object read-only (see :meth:`ObjectDir.open_object`);
        FileNotFoundError if it is not there."""
        fd = self._dir.open_object(payload)
        if fd is None:
            raise FileNotFoundError(
                errno.ENOENT, "no such object in the store", os.fspath(self.path_for(payload))
            )
        return fd

    def verify(self, payload: bytes | str) -> bool:
        """Rehash the object; True if it exists and its content matches its name."""
        fd = self._dir.open_object(payload)
        if fd is None:
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
                fd = self._open(key)
                try:
                    digest = fsverity_digest(fd)
                finally:
                    os.close(fd)
            self._verity_digests[key] = digest
        return digest

    def enable_verity(self, payload: bytes | str) -> bytes:
        """Enable kernel fs-verity on the object; return the kernel's digest.

        Raises LibraryError where the file system or the kernel has no
        fs-verity (the message says which).  An object that already has it
        is measured only.
        """
        fd = self._open(payload)
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
            # No writer may remain open.
            fd = os.open(tmp, _READ_FLAGS, dir_fd=self._dir.fd)
            try:
                enable_fsverity(fd, name=f"the object store {self._root}")
            finally:
                os.close(fd)
        finally:
            self._unlink_temporary(tmp)


class ObjectWriter:
    """One object being written; made by :meth:`ObjectStore.writer`.

    With an expected digest for an object the store already holds, the
    content is only hashed (nothing is written) and still checked.
    :meth:`hole` appends zeros that take no disk blocks (a sparse file's
    holes, zstd:chunked ``zeros`` chunks).
    """

    __slots__ = (
        "_done",
        "_expected",
        "_fd",
        "_sha256",
        "_size",
        "_store",
        "_tail_hole",
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
        # Whether the file ends in a hole not yet given its size (ftruncate).
        self._tail_hole = False
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
            self._tail_hole = False
            written = os.write(fd, data)
            if written < len(data):
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(fd, view) :]

    def hole(self, size: int) -> None:
        """Append ``size`` zero bytes without writing them.

        The file's offset moves past them (a hole: no disk block, the file
        system reads zeros there); the hashers are fed zeros from one shared
        buffer.  Costs what hashing ``size`` bytes costs, and one ``lseek``.
        """
        if self._done:
            raise ValueError("object already committed or aborted")
        if size < 0:
            raise ValueError(f"a hole of {size} bytes")
        if not size:
            return
        update_with_zeros(self._sha256.update, size)
        if self._verity is not None:
            update_with_zeros(self._verity.update, size)
        self._size += size
        if self._fd is not None:
            os.lseek(self._fd, size, os.SEEK_CUR)
            self._tail_hole = True

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
            if self._tail_hole:  # the hole at the end: the file's size
                os.ftruncate(fd, self._size)
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
            store._unlink_temporary(tmp)
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
            self._store._unlink_temporary(self._tmp)
            self._tmp = None


def _clone_or_copy(src: int, dst: int) -> None:
    """Give empty file ``dst`` the content of ``src`` (offset 0 to its end):
    a reflink (``FICLONE``) where the file systems share extents, else a copy
    in the kernel (``copy_file_range``), else reads and writes."""
    try:
        fcntl.ioctl(dst, _FICLONE, src)
        return
    except OSError as exc:
        if exc.errno not in _NO_REFLINK:
            raise
    offset = 0
    copy_range = getattr(os, "copy_file_range", None)
    while copy_range is not None:
        try:
            done = copy_range(src, dst, _COPY_RANGE_SIZE, offset)
        except OSError as exc:
            if exc.errno not in _NO_COPY_RANGE:
                raise
            break
        if not done:
            return
        offset += done
    while chunk := os.pread(src, _COPY_SIZE, offset):
        offset += len(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]


def sha256_of_fd(fd: int) -> str:
    """The sha256 (hex) of ``fd``'s content, read from offset 0 (hashlib
    releases the GIL on each MiB)."""
    hasher = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _COPY_SIZE, offset):
        offset += len(chunk)
        hasher.update(chunk)
    return hasher.hexdigest()


def fsverity_of_fd(fd: int) -> bytes:
    """The fs-verity digest of ``fd``'s content from offset 0: libcomposefs'
    (the GIL released while it reads and hashes) when the binding is there,
    else :class:`~composefs_py.fsverity.FsverityHasher`.  Moves the offset."""
    os.lseek(fd, 0, os.SEEK_SET)
    native = _native_function("fsverity_digest_fd")
    if native is not None:
        return native(fd)
    return fsverity_digest(fd)


def fsverity_of_bytes(data: bytes) -> bytes:
    """The fs-verity digest of ``data``: libcomposefs' (the GIL released) when
    the binding is there, else :class:`~composefs_py.fsverity.FsverityHasher`."""
    native = _native_function("fsverity_digest_bytes")
    if native is not None:
        return native(data)
    return fsverity_digest(data)


@functools.cache
def _native_function(name: str) -> Callable[..., bytes] | None:
    """The binding's function ``name`` (``composefs_py._native``), or None
    where there is no usable extension (then the pure Python digest)."""
    try:
        from . import _native

        return cast("Callable[..., bytes]", getattr(_native, name))
    except Exception:
        return None


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


def _temporary_prefix() -> str:
    """``.tmp-PID-RANDOM-``: the start of a store's temporary names (a counter follows)."""
    return f"{_TMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}-"


@functools.cache
def _renameat2_function() -> Callable[[int, bytes, int, bytes, int], int] | None:
    """libc's ``renameat2`` through ctypes; ``None`` where libc has none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return cast("Callable[[int, bytes, int, bytes, int], int]", function)


def _rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> bool | None:
    """``renameat2(src_dir, src, dst_dir, dst, RENAME_NOREPLACE)``: True if
    renamed, False if ``dst`` exists, None where this rename is not to be had
    (no such call in libc or the kernel, a file system without the flag)."""
    function = _renameat2_function()
    if function is None:
        return None
    if function(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        return False
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return None
    raise OSError(code, os.strerror(code), src)


# ---------------------------------------------------------------------------
# what images need, what stores lack
# ---------------------------------------------------------------------------


def _image_tree(image: Tree | str | os.PathLike[str]) -> Tree:
    from .model import Tree

    if isinstance(image, Tree):
        return image
    from .writer import read_image

    return read_image(image)


def tree_payloads(tree: Tree) -> set[bytes]:
    """The distinct payloads of ``tree``'s regular files (hardlinks share theirs)."""
    from .model import Inode

    return {
        node.payload for _path, node in tree if isinstance(node, Inode) and node.payload is not None
    }


def image_objects(*images: Tree | str | os.PathLike[str]) -> list[bytes]:
    """The objects the ``images`` (Trees, or image files) need, sorted and distinct.

    What ``composefs-info objects`` prints: the payload of every regular file
    with external content, each once, across all images, in byte order.  An
    image file is read by :func:`~composefs_py.writer.read_image` (bounded by
    the default ``Limits``).  Cost: one pass over each Tree, a set of the
    distinct payloads, one sort.
    """
    needed: set[bytes] = set()
    for image in images:
        needed |= tree_payloads(_image_tree(image))
    return sorted(needed)


def absent_payloads(payloads: Iterable[bytes], stores: Iterable[ObjectDir]) -> list[bytes]:
    """Those of ``payloads`` (in their order) no store of ``stores`` holds as an object.

    Only an object name (``ab/`` + 62 lowercase hex) is looked up, relative
    to each store's fd and never through a link (:meth:`ObjectDir.has`), in
    the stores' order (a mount's); a link, a FIFO, a folder or anything but
    a regular file at that name, or a fan-out folder that is not a folder,
    holds no object and hides what later stores hold (the overlay would
    meet it first): the payload is absent.  A payload that is no object name (a Tree read with
    ``Limits.allow_foreign_payloads``) is never looked up and is absent.
    Cost: at most one ``fstatat`` per payload and store (and one ``openat``
    per fan-out folder and store).
    """
    held = list(stores)
    absent = []
    for payload in payloads:
        if not is_object_name(payload):
            absent.append(payload)
            continue
        hexdigest = (payload[:2] + payload[3:]).decode("ascii")
        for store in held:
            try:
                if store.has(hexdigest):
                    break
            except LibraryError:  # a link or an odd file there: no object, and in the way
                absent.append(payload)
                break
        else:
            absent.append(payload)
    return absent


def missing_objects(
    *images: Tree | str | os.PathLike[str],
    objects: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[bytes]:
    """The objects the ``images`` need that no store in ``objects`` holds, sorted.

    What ``composefs-info --basedir=DIR missing-objects`` prints, with
    several stores searched as a mount searches them (an object is there if
    any store has it), and confined as the store is (see
    :func:`absent_payloads`: where composefs-info's ``fstatat`` follows a
    link planted at an object's name, this reports the object missing).
    """
    roots = [objects] if isinstance(objects, str | os.PathLike) else list(objects)
    stores = [ObjectDir(root) for root in roots]
    try:
        return absent_payloads(image_objects(*images), stores)
    finally:
        for store in stores:
            store.close()
