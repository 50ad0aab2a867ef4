"""Write a :class:`~composefs_py.model.Tree` as a composefs image; read one back.

:func:`write_image` picks a backend and publishes the image atomically:

``native``
    libcomposefs linked in-process (:mod:`composefs_py._native`).
``sandbox``
    the same library in a locked-down child process
    (:mod:`composefs_py.sandbox`).
``mkcomposefs``
    the upstream tool, fed ``dump(tree)`` on stdin; for differential
    testing and for machines where no extension can be built.
``auto``
    ``native`` when the compiled module imports, else ``sandbox``; the
    environment variable ``COMPOSEFS_PY_BACKEND`` overrides the choice.

Every backend writes the same bytes for the same Tree and format versions.
Each is a function of one protocol (:class:`composefs_py._backend.Backend`:
``(tree, fd, *, min_version, max_version) -> digest``), picked here and
only here (:func:`resolve_backend`, then ``_backend``): the compiled module
and the sandbox are imported once, on first use; the format versions are
checked once, before any backend loads.  No backend imports this module.

Publishing a path destination (DESIGN rule 5): the destination is
classified with ``lstat`` (never followed):

* a regular file or a new name: the backend writes the image into a
  temporary sibling (``.NAME.<random>.tmp``, ``O_CREAT|O_EXCL|O_NOFOLLOW``),
  which is fsynced and renamed over it, and the folder fsynced: atomic, and
  nothing left on failure;
* a symbolic link: followed one link at a time (at most 40), and the same
  rules apply to what it leads to.  A link to a regular file keeps the link
  and replaces its target atomically in the target's folder; a dangling
  link gets its target created the same way (as mkcomposefs and a shell's
  ``>`` create it through the link);
* a character or block device, a FIFO or a socket: the backend writes the
  whole image to an unnamed scratch file (``tempfile.TemporaryFile``) first,
  so that a rejected or failed build writes no byte there; then it is opened
  ``O_WRONLY`` (no ``O_TRUNC``) and written through, never replaced (a FIFO
  blocks until it has a reader, as it does for mkcomposefs);
* a /proc "magic" link (``/dev/stdout`` leads to ``/proc/self/fd/1``):
  written through; this process's own descriptor open for writing is
  written at its offset, like ``-`` in mkcomposefs;
* a directory: an error.

Every OSError of the publishing step is a :class:`LibraryError` (that is
also the builtin subclass of its errno: FileNotFoundError,
PermissionError, ...) whose ``filename`` is the destination as the caller
gave it, never the temporary file (``x.cfs: Read-only file system``,
``x.cfs: No space left on device``).  An open file descriptor is written
from its current position and left open.

Cost of publishing: linear in the image's size.  A replaced file is written
once; for what is written through, the scratch file holds one image (in
``$TMPDIR``, unnamed) and is copied once, in 1 MiB chunks; resolving a
destination reads at most 40 links.  A full file system under a replaced
file is reported as ENOSPC naming it, whichever backend noticed first.
The image's own size is bounded by the Tree it is built from (see
:class:`~composefs_py.limits.Limits`), which was checked before.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ._backend import (
    MKCOMPOSEFS_ENV,
    VERSION_MAX,
    Backend,
    check_versions,
    find_mkcomposefs,
    write_all,
    write_with_mkcomposefs,
)
from ._progress import ProgressArg, resolve_progress
from .errors import BackendUnavailableError, LibraryError, SandboxError, ValidationError
from .limits import Limits
from .model import Tree

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "MKCOMPOSEFS_ENV",
    "VERSION_MAX",
    "available_backends",
    "find_mkcomposefs",
    "is_image",
    "read_image",
    "resolve_backend",
    "write_image",
]

#: The writer backends :func:`write_image` accepts.
BACKENDS = ("auto", "native", "sandbox", "mkcomposefs")
#: Environment variable that overrides ``backend="auto"``.
BACKEND_ENV = "COMPOSEFS_PY_BACKEND"

# The composefs header at offset 0 and the EROFS superblock at offset 1024,
# both little-endian (lcfs-erofs.h, erofs_fs.h).
LCFS_EROFS_MAGIC = 0xD078629A
EROFS_SUPER_MAGIC_V1 = 0xE0F5E1E2
EROFS_SUPER_OFFSET = 1024
_U32 = struct.Struct("<I")
_CHUNK = 1 << 20
#: libcomposefs 1.0.8 reads an image recursively, about 8.5 KiB of C stack per
#: directory level: a thread's usual 8 MiB overflows (SIGSEGV) near 950
#: levels, well within the depth a valid Tree may have (``Limits.max_depth``,
#: 2048; a 4095-byte path can be 2047 levels deep).  The native reader runs
#: on a thread with this much stack (virtual memory, committed as used).
_READER_STACK = 64 << 20
_STACK_LOCK = threading.Lock()


# ---------------------------------------------------------------------------
# backend choice: the one place a backend is picked and loaded
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A backend module that loaded: how it writes an image and reads one."""

    write: Backend
    read: Callable[[bytes, Limits], Tree]


def _load_native() -> _Loaded | None:
    try:
        from . import _native
    except ImportError:
        return None
    return _Loaded(_native.write_tree, _native.read_image)


def _load_sandbox() -> _Loaded | None:
    try:
        from . import sandbox
    except ModuleNotFoundError as exc:
        if exc.name == f"{__package__}.sandbox":
            return None
        raise

    def read(data: bytes, limits: Limits) -> Tree:
        return sandbox.read_image_sandboxed(data, tree_limits=limits)

    return _Loaded(sandbox.write_image_sandboxed, read)


_UNAVAILABLE = {
    "native": "the native backend needs the compiled module composefs_py._lcfs, "
    "which is not built or cannot load (run `make deps` or `pip install .`)",
    "sandbox": "the sandbox backend is not available in this build",
    "mkcomposefs": f"mkcomposefs not found (set ${MKCOMPOSEFS_ENV}, run `make deps`, "
    "or install composefs)",
}


@functools.cache
def _loaded(name: str) -> _Loaded | None:
    """The backend module ``name`` ("native" or "sandbox"), imported once
    (None: it cannot load here)."""
    return _load_native() if name == "native" else _load_sandbox()


def _backend(name: str) -> Backend | None:
    """The concrete backend ``name``, or None when it cannot run here (the
    compiled module and the sandbox are loaded once; mkcomposefs is looked
    up each time, as ``$COMPOSEFS_PY_MKCOMPOSEFS`` may change)."""
    if name == "mkcomposefs":
        return write_with_mkcomposefs if find_mkcomposefs() is not None else None
    loaded = _loaded(name)
    return None if loaded is None else loaded.write


def resolve_backend(backend: str = "auto") -> str:
    """Return the concrete backend ``backend`` stands for.

    ``"auto"`` becomes ``$COMPOSEFS_PY_BACKEND`` when set, else ``"native"``
    when the compiled module imports, else ``"sandbox"``.  An unknown name
    raises ValueError.  Whether the backend can run is not checked here.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    override = os.environ.get(BACKEND_ENV, "")
    if override:
        if override not in BACKENDS:
            raise ValueError(
                f"${BACKEND_ENV}={override!r} is not a backend; choose one of {', '.join(BACKENDS)}"
            )
        if override != "auto":
            return override
    return "native" if _backend("native") is not None else "sandbox"


def available_backends() -> tuple[str, ...]:
    """The concrete backends that can run here (checked without writing)."""
    return tuple(name for name in BACKENDS[1:] if _backend(name) is not None)


def _writer_for(name: str) -> Backend:
    backend = _backend(name)
    if backend is None:
        raise BackendUnavailableError(_UNAVAILABLE[name])
    return backend


# ---------------------------------------------------------------------------
# publishing
# ---------------------------------------------------------------------------

#: Links followed from a destination before giving up (the kernel's own limit).
_MAX_LINKS = 40
#: Bytes of the destination's name kept in its temporary sibling's name
#: (``.NAME.<16 hex>.tmp`` stays within a 255-byte file name).
_TEMP_STEM = 200


class _OutputPermissionError(LibraryError, PermissionError):
    """The destination may not be written (EACCES, EPERM)."""


class _OutputFileNotFoundError(LibraryError, FileNotFoundError):
    """The destination's folder does not exist (ENOENT)."""


class _OutputFileExistsError(LibraryError, FileExistsError):
    """No free temporary name next to the destination (EEXIST)."""


class _OutputIsADirectoryError(LibraryError, IsADirectoryError):
    """The destination is a directory (EISDIR)."""


class _OutputNotADirectoryError(LibraryError, NotADirectoryError):
    """A folder on the destination's path is not a directory (ENOTDIR)."""


class _OutputBrokenPipeError(LibraryError, BrokenPipeError):
    """The reader of the FIFO or pipe written through went away (EPIPE)."""


_OUTPUT_ERRORS: dict[type[OSError], type[LibraryError]] = {
    PermissionError: _OutputPermissionError,
    FileNotFoundError: _OutputFileNotFoundError,
    FileExistsError: _OutputFileExistsError,
    IsADirectoryError: _OutputIsADirectoryError,
    NotADirectoryError: _OutputNotADirectoryError,
    BrokenPipeError: _OutputBrokenPipeError,
}


def _output_error(exc: OSError, dest: str, target: str) -> LibraryError:
    """``exc`` raised while writing the destination, as the caller named it.

    A LibraryError that is also the builtin OSError subclass its errno maps
    to (``except PermissionError`` keeps working).  ``filename`` is
    ``dest``; ``filename2`` the file a link led to, when that is another
    path.  The temporary file's name never shows.
    """
    code = exc.errno if exc.errno is not None else errno.EIO
    kind = _OUTPUT_ERRORS.get(type(OSError(code, "")), LibraryError)
    if target == dest:
        return kind(code, os.strerror(code), dest)
    return kind(code, os.strerror(code), dest, None, target)


@dataclass(frozen=True, slots=True)
class _Destination:
    """What writing a destination path means.

    ``replace``: ``path`` is a regular file or a new name, replaced by
    rename; ``through``: ``path`` (a device, FIFO or socket, or a /proc link
    to one) is opened and written; ``fd``: ``path`` is a /proc link to this
    process's own descriptor ``fd`` (``/dev/stdout``), written at its offset.
    """

    kind: str
    path: str
    fd: int = -1


def _resolve(dest: str) -> _Destination:
    """Classify ``dest`` without following it, then each link it leads to."""
    path = dest
    proc = _proc_device()
    for _ in range(_MAX_LINKS + 1):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            # A new name; at the end of a dangling link, the link's target
            # (created as mkcomposefs and a shell's ``>`` create it).
            return _Destination("replace", path)
        if stat.S_ISREG(st.st_mode):
            return _Destination("replace", path)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISLNK(st.st_mode):
            return _Destination("through", path)
        if st.st_dev == proc:
            return _proc_link(path)
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), dest)


def _proc_device() -> int | None:
    try:
        return os.stat("/proc/self").st_dev
    except OSError:
        return None


def _proc_link(path: str) -> _Destination:
    """A /proc "magic" link (``/dev/stdout`` leads to ``/proc/self/fd/1``).

    What it names has no path of its own to rename over (a pipe, a socket,
    another process's open file): it is written through.  When it is one of
    this process's descriptors open for writing, that descriptor is written,
    from its offset, as ``-`` would be.
    """
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    folder, name = os.path.split(path)
    own = os.path.realpath(folder)
    pid = os.getpid()
    if name.isdigit() and (own == f"/proc/{pid}/fd" or own.startswith(f"/proc/{pid}/task/")):
        fd = int(name)
        try:
            writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
            same = os.fstat(fd)
        except OSError:
            return _Destination("through", path)
        if writable and (same.st_dev, same.st_ino) == (st.st_dev, st.st_ino):
            return _Destination("fd", path, fd)
    return _Destination("through", path)


def _temp_path(dest: str) -> tuple[str, int]:
    """Create and open ``dest``'s temporary sibling (O_EXCL, 0644 less umask)."""
    folder, name = os.path.split(dest)
    stem = os.fsdecode(os.fsencode(name)[:_TEMP_STEM])
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        # os.urandom, as secrets.token_hex: importing secrets (random, hmac,
        # base64) once the Tree is built would spread its objects over the
        # build's freed memory, which then stays the process's (about 2 MiB
        # at 20k files), and cost more than the rest of the set-up.
        temp = os.path.join(folder, f".{stem}.{os.urandom(8).hex()}.tmp")
        try:
            return temp, os.open(temp, flags, 0o644)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "cannot create a unique temporary file", dest)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(src: int, size: int, dst: int) -> None:
    """Write the first ``size`` bytes of the file ``src`` to ``dst``."""
    offset = 0
    while offset < size:
        chunk = os.pread(src, min(_CHUNK, size - offset), offset)
        if not chunk:
            raise OSError(errno.EIO, "the image's scratch file was cut short")
        write_all(dst, chunk)
        offset += len(chunk)


def _replace(path: str, write: Callable[[int], bytes]) -> bytes:
    """Build the image with ``write(fd)`` into a temporary sibling of
    ``path``, fsync it and rename it over ``path``; return the digest.

    On any failure the sibling is removed; a failure of the build itself
    that the full or read-only file system under ``path`` caused is an
    OSError naming that (the caller names ``path``).
    """
    folder, name = os.path.split(path)
    if name in ("", ".", ".."):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    temp, fd = _temp_path(path)
    published = False
    try:
        try:
            try:
                digest = write(fd)
            except (OSError, SandboxError) as exc:
                storage = _storage_error(fd, exc)
                if storage is not None:
                    raise storage from exc
                if isinstance(exc, OSError) and not isinstance(exc, LibraryError):
                    raise  # an I/O error of the output: the caller names path
                raise _BuildFailed(exc) from None
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        published = True
    finally:
        if not published:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
    _fsync_dir(folder or ".")
    return digest


class _BuildFailed(Exception):
    """A backend's own failure while writing a temporary sibling, carried
    past the handler that names the destination in publishing errors."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


#: What the file system under a replaced file says when it cannot hold it.
_STORAGE_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT))


def _storage_error(fd: int, exc: BaseException) -> OSError | None:
    """The file system's own reason why the backend failed to write the
    file ``fd``, if it is one: no space or quota left (a backend reports it
    as its own failure, the sandbox's child as a SandboxError with the
    child's errno)."""
    code = getattr(exc, "errno", None)
    if code not in _STORAGE_ERRNOS:
        try:
            fs = os.fstatvfs(fd)
        except OSError:
            return None
        if fs.f_bavail != 0 and fs.f_favail != 0:
            return None
        code = errno.ENOSPC
    return OSError(code, os.strerror(code))


def _write_through(path: str, src: int, size: int) -> None:
    """Open ``path`` (a device, FIFO, or a /proc link) and write the image to it.

    No O_TRUNC (a device has no length); what opens as a regular file (a
    /proc link to another process's file) is cut first, as mkcomposefs's
    ``fopen(path, "w")`` cuts it.
    """
    fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.ftruncate(fd, 0)
        _copy(src, size, fd)
    finally:
        os.close(fd)


def _publish(dest: str, write: Callable[[int], bytes]) -> bytes:
    """Build the image with ``write(fd)`` and put it at ``dest``.

    A regular file or a new name: built into a temporary sibling, renamed
    over it.  Anything written through: built into a scratch file first, so
    nothing reaches it before the image is whole.  Every OSError of the
    publishing names ``dest``.
    """
    try:
        where = _resolve(dest)
    except OSError as exc:
        raise _output_error(exc, dest, exc.filename or dest) from None
    if where.kind == "replace":
        try:
            return _replace(where.path, write)
        except _BuildFailed as failed:
            raise failed.error from None
        except OSError as exc:
            raise _output_error(exc, dest, where.path) from None
    import tempfile

    with tempfile.TemporaryFile(prefix="composefs-py-image-") as scratch:
        digest = write(scratch.fileno())
        size = os.fstat(scratch.fileno()).st_size
        try:
            if where.kind == "fd":
                _copy(scratch.fileno(), size, where.fd)
            else:
                _write_through(where.path, scratch.fileno(), size)
        except OSError as exc:
            raise _output_error(exc, dest, where.path) from None
    return digest


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def write_image(
    tree: Tree,
    dest: os.PathLike[str] | str | int,
    *,
    backend: str = "auto",
    min_version: int = 0,
    max_version: int = 1,
    progress: ProgressArg = False,
) -> bytes:
    """Write ``tree`` as a composefs image to ``dest``; return its fs-verity digest.

    ``dest`` is a path or an open file descriptor (written from its current
    position, not closed).  A path that is a regular file or a new name is
    replaced atomically (nothing is left there, nor any temporary file, if
    writing fails); a symlink is followed and the same rule applies to its
    target; a device, FIFO or socket is written through, never replaced; a
    directory is an error.  The image is whole before the destination is
    touched.  A failure to write the destination raises
    :class:`~composefs_py.errors.LibraryError` naming ``dest``.  ``min_version``/``max_version`` are
    mkcomposefs's ``--min-version``/``--max-version`` with the same defaults, so
    the same Tree gives the same bytes.  ``backend`` is ``"auto"``,
    ``"native"``, ``"sandbox"`` or ``"mkcomposefs"``: an unknown name raises
    ValueError, one that cannot run here BackendUnavailableError.  ``progress``
    (default: none) counts the nodes written, see :mod:`composefs_py._progress`.
    """
    if not isinstance(tree, Tree):
        raise TypeError(f"tree must be a composefs_py.Tree, got {type(tree).__name__}")
    return _write_held(
        [tree], dest, backend=backend, min_version=min_version, max_version=max_version,
        progress=progress,
    )  # fmt: skip


def _write_held(
    held: list[Tree],
    dest: os.PathLike[str] | str | int,
    *,
    backend: str = "auto",
    min_version: int = 0,
    max_version: int = 1,
    progress: ProgressArg = False,
) -> bytes:
    """:func:`write_image` of the one Tree in ``held``, which is emptied as the
    Tree goes to the backend: a caller that keeps no other reference (the
    CLI's directory build) lets the native backend free the Tree once
    libcomposefs has its C tree, before the image is written."""
    check_versions(min_version, max_version)
    writer = _writer_for(resolve_backend(backend))
    reporter = resolve_progress(progress, "writing image")
    entries = len(held[0])

    def write(fd: int) -> bytes:
        if reporter is None:
            return writer(held.pop(), fd, min_version=min_version, max_version=max_version)
        reporter.start("writing image", total_files=entries)
        digest = writer(held.pop(), fd, min_version=min_version, max_version=max_version)
        reporter.advance(files=entries)
        reporter.close()  # before publishing: a callback that raises leaves nothing
        return digest

    if isinstance(dest, bool):
        raise TypeError("dest must be a path or a file descriptor, got a bool")
    if isinstance(dest, int):
        return write(dest)
    if isinstance(dest, str | os.PathLike):
        if not os.fspath(dest):
            raise ValueError("dest is an empty path")
        return _publish(os.fsdecode(dest), write)
    raise TypeError(f"dest must be a path or a file descriptor, got {type(dest).__name__}")


def is_image(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` starts like a composefs image (both magic numbers)."""
    if len(data) < EROFS_SUPER_OFFSET + _U32.size:
        return False
    (lcfs_magic,) = _U32.unpack_from(data, 0)
    (erofs_magic,) = _U32.unpack_from(data, EROFS_SUPER_OFFSET)
    return bool(lcfs_magic == LCFS_EROFS_MAGIC and erofs_magic == EROFS_SUPER_MAGIC_V1)


def read_image(
    src: bytes | bytearray | memoryview | os.PathLike[str] | str,
    *,
    sandbox: bool = False,
    limits: Limits | None = None,
) -> Tree:
    """Read a composefs image (its bytes, or a path) back into a validated Tree.

    ``limits`` (default ``Limits()``) bound the image (``max_input_bytes``,
    checked before a path's content is read) and the Tree it gives.

    Anything that is not a composefs image (no composefs or EROFS magic
    number) raises ValidationError, and so does anything libcomposefs or the
    :class:`~composefs_py.model.TreeBuilder` rejects.  What EROFS does not
    store cannot come back; see tests/test_upstream_assets.py for the list.

    Before libcomposefs sees a byte, :func:`composefs_py._erofs.check_image`
    checks the image's structure (in this process and in the sandboxed child
    alike): libcomposefs 1.0.8's loader does not bounds-check block
    addresses, directory entries, xattr indexes and sizes, reuses a freed
    whiteout and recurses once per directory level, and the check rejects
    every image that would make it read out of bounds, use freed memory or
    nest deeper than ``Limits.max_depth`` directories.  In-process reading
    runs on a thread with a large stack, so every image of a valid Tree
    reads back.

    ``sandbox=True`` parses the image in the sandboxed child: defence in
    depth for images from untrusted sources (a libcomposefs bug the check
    does not know of becomes a SandboxError, and time and memory are
    bounded).
    """
    limits = Limits() if limits is None else limits
    if isinstance(src, bytes | bytearray | memoryview):
        data = bytes(src)
        where = "input"
    elif isinstance(src, str | os.PathLike):
        where = os.fspath(src)
        data = _read_bounded(where, limits.max_input_bytes)
    else:
        raise TypeError(f"src must be bytes or a path, got {type(src).__name__}")
    if len(data) > limits.max_input_bytes:
        raise ValidationError(
            f"{where}: image of {len(data)} bytes is larger than the limit "
            f"max_input_bytes={limits.max_input_bytes}"
        )
    if not is_image(data):
        raise ValidationError(f"{where}: not a composefs image (no composefs/EROFS magic number)")
    loaded = _loaded("sandbox" if sandbox else "native")
    if loaded is None:
        raise BackendUnavailableError(
            "the sandbox backend is not available in this build"
            if sandbox
            else "reading an image needs the compiled module composefs_py._lcfs; "
            "build it (`make deps`) or pass sandbox=True"
        )
    if sandbox:
        return loaded.read(data, limits)

    def reader(image: bytes) -> Tree:
        return loaded.read(image, limits)

    return _with_reader_stack(reader, data)


def _read_bounded(path: str, limit: int) -> bytes:
    """The content of the file ``path``, refused before reading when it is
    larger than ``limit`` bytes (a file that grows meanwhile is cut at
    ``limit + 1`` bytes, and refused by the caller's check)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ValidationError(
                f"{path}: image of {size} bytes is larger than the limit max_input_bytes={limit}"
            )
        return f.read(limit + 1)


def _with_reader_stack(reader: Callable[[bytes], Tree], data: bytes) -> Tree:
    """Run ``reader(data)`` on a thread with :data:`_READER_STACK` of stack."""
    outcome: list[Tree] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(reader(data))
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    with _STACK_LOCK:  # threading.stack_size() is process-wide
        previous = threading.stack_size(_READER_STACK)
        try:
            thread = threading.Thread(target=run, name="composefs-py-read-image")
            thread.start()
        finally:
            threading.stack_size(previous)
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
