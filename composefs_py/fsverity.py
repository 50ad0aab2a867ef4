"""fs-verity digests computed in userspace, and the enable/measure ioctls.

:func:`fsverity_digest` is the digest the kernel reports for a file with
fs-verity enabled with libcomposefs' parameters (SHA-256, 4096-byte blocks,
no salt): the SHA-256 of a ``struct fsverity_descriptor`` holding the root of
a Merkle tree over the content.  It is pure Python (hashlib), so it works
without the compiled extension; the tests check it against libcomposefs.

:func:`enable_fsverity` and :func:`measure_fsverity` issue the ioctls
directly.  Both raise :class:`~composefs_py.errors.LibraryError` (an
``OSError``) with the kernel's errno and a message naming the file, its file
system and what is missing; like libcomposefs, measuring a file or file
system without fs-verity gives ``errno.ENOTTY``.  :func:`enable_fsverity`
accepts a file that already has fs-verity.  Kernels without
``CONFIG_FS_VERITY`` (and tmpfs everywhere) refuse both: the digests are
then still computed here, but nothing enforces them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct

from .errors import LibraryError

__all__ = [
    "BLOCK_SIZE",
    "DIGEST_SIZE",
    "FsverityHasher",
    "enable_fsverity",
    "filesystem_type",
    "fsverity_digest",
    "measure_fsverity",
]

BLOCK_SIZE = 4096
DIGEST_SIZE = 32
_HASHES_PER_BLOCK = BLOCK_SIZE // DIGEST_SIZE
_ALG_SHA256 = 1
_LOG_BLOCK_SIZE = 12
_READ_SIZE = 1 << 20

# <linux/fsverity.h>: struct fsverity_descriptor (256 bytes).
_DESCRIPTOR = struct.Struct("<BBBBIQ64s32s144s")
# struct fsverity_enable_arg (128 bytes) and struct fsverity_digest header.
_ENABLE_ARG = struct.Struct("<IIIIQII Q88s")
_DIGEST_HEADER = struct.Struct("<HH")


def _ioc(direction: int, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("f") << 8) | number


FS_IOC_ENABLE_VERITY = _ioc(1, 133, _ENABLE_ARG.size)  # _IOW
FS_IOC_MEASURE_VERITY = _ioc(3, 134, _DIGEST_HEADER.size)  # _IOWR


class FsverityHasher:
    """Incremental fs-verity digest: ``update()`` with content, then ``digest()``.

    Memory stays small whatever the size: one partial block per tree level.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        # _levels[i] holds the not yet hashed bytes of level i (0 = content).
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next piece of the content."""
        view = memoryview(data).cast("B")
        self._size += len(view)
        pending = self._levels[0]
        start = 0
        if pending:
            take = min(BLOCK_SIZE - len(pending), len(view))
            pending += view[:take]
            start = take
            if len(pending) < BLOCK_SIZE:
                return
            self._push(1, hashlib.sha256(pending).digest())
            pending.clear()
        end = len(view)
        full_end = start + (end - start) // BLOCK_SIZE * BLOCK_SIZE
        for offset in range(start, full_end, BLOCK_SIZE):
            self._push(1, hashlib.sha256(view[offset : offset + BLOCK_SIZE]).digest())
        pending += view[full_end:end]

    def _push(self, level: int, block_hash: bytes) -> None:
        while True:
            if level == len(self._levels):
                self._levels.append(bytearray())
            pending = self._levels[level]
            pending += block_hash
            if len(pending) < BLOCK_SIZE:
                return
            block_hash = hashlib.sha256(pending).digest()
            pending.clear()
            level += 1

    def _root_hash(self) -> bytes:
        if self._size == 0:
            return bytes(DIGEST_SIZE)
        # Hash what is left of each level, zero padded, into the level above,
        # until a level holds a single hash that never filled a block: the root.
        levels = [bytearray(level) for level in self._levels]
        level = 0
        while True:
            pending = levels[level]
            above_empty = level + 1 >= len(levels) or not levels[level + 1]
            if (
                level > 0
                and len(pending) == DIGEST_SIZE
                and above_empty
                and not self._flushed(level)
            ):
                return bytes(pending)
            if pending:
                block_hash = hashlib.sha256(pending.ljust(BLOCK_SIZE, b"\0")).digest()
                if level + 1 == len(levels):
                    levels.append(bytearray())
                levels[level + 1] += block_hash
                pending.clear()
            level += 1

    def _flushed(self, level: int) -> bool:
        """Whether ``level`` ever hashed a full block into the level above."""
        return len(self._levels) > level + 1

    def digest(self) -> bytes:
        """The 32-byte fs-verity digest of everything fed so far."""
        descriptor = _DESCRIPTOR.pack(
            1,  # version
            _ALG_SHA256,
            _LOG_BLOCK_SIZE,
            0,  # salt size
            0,  # signature size (reserved)
            self._size,
            self._root_hash(),
            b"",
            b"",
        )
        return hashlib.sha256(descriptor).digest()


def fsverity_digest(src: bytes | bytearray | memoryview | str | os.PathLike[str] | int) -> bytes:
    """Return the fs-verity digest of ``src``'s content.

    ``src`` is the content itself (``bytes``-like), a path (``str`` or
    ``os.PathLike``), or an open file descriptor, read from its current
    position to EOF (it is not closed; pipes work).
    """
    hasher = FsverityHasher()
    if isinstance(src, bytes | bytearray | memoryview):
        hasher.update(src)
    elif isinstance(src, int):
        _feed_fd(hasher, src)
    else:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _feed_fd(hasher, fd)
        finally:
            os.close(fd)
    return hasher.digest()


def _feed_fd(hasher: FsverityHasher, fd: int) -> None:
    while chunk := os.read(fd, _READ_SIZE):
        hasher.update(chunk)


def filesystem_type(fd: int) -> str | None:
    """The type of the file system holding the open file ``fd`` (``"ext4"``,
    ``"tmpfs"``...), from ``/proc/self/mountinfo``; None when not found."""
    try:
        device = os.fstat(fd).st_dev
        with open("/proc/self/mountinfo", "rb") as mountinfo:
            lines = mountinfo.read().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(device)}:{os.minor(device)}".encode()
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 3 and fields[2] == wanted and b" - " in line:
            return line.split(b" - ", 1)[1].split(b" ", 1)[0].decode("utf-8", "replace")
    return None


def _file_name(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


def _fs_phrase(fd: int) -> str:
    """``"the ext4 file system"``, or ``"its file system"`` when the type is unknown."""
    name = filesystem_type(fd)
    return f"the {name} file system" if name else "its file system"


def _kernel_lacks_fsverity() -> bool:
    """True when the kernel's own config says it is built without fs-verity."""
    import gzip

    try:
        with gzip.open("/proc/config.gz", "rb") as config:
            return b"# CONFIG_FS_VERITY is not set" in config.read()
    except OSError:
        return False


def _enable_reason(code: int, fs: str) -> str:
    if code == errno.ENOTTY:
        return f"{fs} does not support fs-verity"
    if code == errno.EOPNOTSUPP:
        if _kernel_lacks_fsverity():
            return (
                f"this kernel ({os.uname().release}) is built without fs-verity "
                f"(CONFIG_FS_VERITY is not set), so {fs} cannot use it"
            )
        return (
            f"fs-verity is not available on {fs}: the kernel lacks it "
            "(CONFIG_FS_VERITY) or the file system was made without the verity "
            "feature (ext4: tune2fs -O verity; f2fs: mkfs.f2fs -O verity)"
        )
    reasons = {
        errno.EINVAL: (
            f"the kernel refuses SHA-256 fs-verity with {BLOCK_SIZE}-byte blocks on "
            f"{fs} (other block or page sizes need Linux >= 6.3)"
        ),
        errno.ETXTBSY: "the file is open for writing",
        errno.EROFS: f"{fs} is read-only",
        errno.EPERM: (
            "not permitted (the file is append-only or immutable, or the kernel "
            "requires signed fs-verity files)"
        ),
        errno.EACCES: "permission denied (enabling fs-verity needs write access to the file)",
        errno.ENOPKG: "the kernel lacks SHA-256 for fs-verity",
        errno.EFBIG: f"the file is too large for fs-verity on {fs}",
        errno.EISDIR: "it is a directory (fs-verity applies to regular files)",
    }
    return reasons.get(code, os.strerror(code))


def enable_fsverity(fd: int, *, name: str | None = None) -> bool:
    """Enable fs-verity (SHA-256, 4096-byte blocks, no salt) on the file at ``fd``.

    The file must be open read-only and not open for writing anywhere.
    Returns True when this call enabled it, False when the file already had
    it (``EEXIST``).  Any other failure raises
    :class:`~composefs_py.errors.LibraryError` with the kernel's errno and a
    message naming the file, its file system and the reason: ``ENOTTY``
    when the file system has no fs-verity (tmpfs), ``EOPNOTSUPP`` when the
    kernel or this file system lacks it (ext4 without the verity feature or
    on a kernel without ``CONFIG_FS_VERITY``).  ``name`` is what the
    message calls the file (default: its path, from ``/proc/self/fd``).
    """
    arg = bytearray(_ENABLE_ARG.pack(1, _ALG_SHA256, BLOCK_SIZE, 0, 0, 0, 0, 0, b""))
    try:
        fcntl.ioctl(fd, FS_IOC_ENABLE_VERITY, arg, True)
    except OSError as exc:
        code = exc.errno or errno.EIO
        if code == errno.EEXIST:
            return False
        raise LibraryError(
            code,
            f"cannot enable fs-verity on {name or _file_name(fd)}: "
            f"{_enable_reason(code, _fs_phrase(fd))}",
        ) from None
    return True


def measure_fsverity(fd: int) -> bytes:
    """Return the kernel's fs-verity digest of the file at ``fd``.

    A file without fs-verity (not enabled, or a file system or kernel
    without support) raises LibraryError with ``errno.ENOTTY``, as
    libcomposefs reports it, and a message saying which.
    """
    buf = bytearray(_DIGEST_HEADER.pack(0, 64)) + bytearray(64)
    try:
        fcntl.ioctl(fd, FS_IOC_MEASURE_VERITY, buf, True)
    except OSError as exc:
        code = exc.errno or errno.EIO
        if code == errno.ENODATA:
            reason = "fs-verity is not enabled on it"
        elif code in (errno.EOPNOTSUPP, errno.ENOTTY):
            reason = f"{_fs_phrase(fd)} or the kernel has no fs-verity"
        else:
            reason = os.strerror(code)
        if code in (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTTY):
            code = errno.ENOTTY
        raise LibraryError(
            code, f"cannot measure the fs-verity of {_file_name(fd)}: {reason}"
        ) from None
    algorithm, size = _DIGEST_HEADER.unpack_from(buf)
    if algorithm != _ALG_SHA256 or size != DIGEST_SIZE:
        raise LibraryError(
            errno.EILSEQ,
            f"cannot measure the fs-verity of {_file_name(fd)}: not a SHA-256 digest "
            f"({algorithm=}, {size=})",
        )
    return bytes(buf[_DIGEST_HEADER.size : _DIGEST_HEADER.size + DIGEST_SIZE])
