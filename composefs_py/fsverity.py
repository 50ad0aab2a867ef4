"""fs-verity digests computed in userspace, and the enable/measure ioctls.

:func:`fsverity_digest` is the digest the kernel reports for a file with
fs-verity enabled with libcomposefs' parameters (SHA-256, 4096-byte blocks,
no salt): the SHA-256 of a ``struct fsverity_descriptor`` holding the root of
a Merkle tree over the content.  It is pure Python (hashlib), so it works
without the compiled extension; the tests check it against libcomposefs.

:func:`enable_fsverity` and :func:`measure_fsverity` issue the ioctls
directly.  Both raise :class:`~composefs_py.errors.LibraryError` (an
``OSError``) with the kernel's errno; like libcomposefs, a file or filesystem
without fs-verity gives ``errno.ENOTTY``.
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


def enable_fsverity(fd: int) -> None:
    """Enable fs-verity (SHA-256, 4096-byte blocks, no salt) on the file at ``fd``.

    The file must be open read-only and not open for writing anywhere.
    """
    arg = bytearray(_ENABLE_ARG.pack(1, _ALG_SHA256, BLOCK_SIZE, 0, 0, 0, 0, 0, b""))
    try:
        fcntl.ioctl(fd, FS_IOC_ENABLE_VERITY, arg, True)
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise LibraryError(code, f"FS_IOC_ENABLE_VERITY: {os.strerror(code)}") from None


def measure_fsverity(fd: int) -> bytes:
    """Return the kernel's fs-verity digest of the file at ``fd``.

    A file without fs-verity (or a filesystem without support) raises
    LibraryError with ``errno.ENOTTY``, as libcomposefs reports it.
    """
    buf = bytearray(_DIGEST_HEADER.pack(0, 64)) + bytearray(64)
    try:
        fcntl.ioctl(fd, FS_IOC_MEASURE_VERITY, buf, True)
    except OSError as exc:
        code = exc.errno or errno.EIO
        if code in (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTTY):
            code = errno.ENOTTY
        raise LibraryError(code, f"FS_IOC_MEASURE_VERITY: {os.strerror(code)}") from None
    algorithm, size = _DIGEST_HEADER.unpack_from(buf)
    if algorithm != _ALG_SHA256 or size != DIGEST_SIZE:
        raise LibraryError(
            errno.EILSEQ, f"FS_IOC_MEASURE_VERITY: not a SHA-256 digest ({algorithm=}, {size=})"
        )
    return bytes(buf[_DIGEST_HEADER.size : _DIGEST_HEADER.size + DIGEST_SIZE])
