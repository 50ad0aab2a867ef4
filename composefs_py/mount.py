"""Mount composefs images, stack layer images, flatten layer trees.

:func:`mount` goes through libcomposefs' ``lcfs_mount_image``: the EROFS
image is mounted read-only (from the file, or through a read-only direct-io
loop device when the kernel cannot mount a file), then an overlayfs is
mounted on ``mountpoint`` with the image as its only lower layer and the
object store(s) as data-only lower layers (Linux >= 6.5), plus optional
upper/work dirs.  libcomposefs detaches the EROFS mount at once: the overlay
holds the only reference, so :func:`unmount` of the overlay frees both.

The EROFS mount (tests/test_mount.py observes each point): read-only, with
``noacl`` unless the image's header says it holds ACL xattrs.  erofs mounts
the image file itself where it can (Linux >= 6.12 with
CONFIG_EROFS_FS_BACKED_BY_FILE, the file on ext4, xfs, btrfs...); where it
cannot (ENOTBLK: older kernels, a file on tmpfs) libcomposefs binds a loop
device read-only, with direct I/O (where the file can do O_DIRECT) and
auto-clear, so it goes away with the last mount.
The image mount is staged on a folder this module makes and removes.

Several layer images (first is top, as in an OCI manifest read backwards)
are stacked by :func:`mount_layers`: each image is mounted as above under a
private staging folder, one more overlay is mounted with
``lowerdir=top:...:bottom`` and the staging mounts are detached, so again
one :func:`unmount` frees everything.  Whiteouts are honoured: libcomposefs
stores a whiteout (char 0/0) escaped, so the single-layer mount shows it as
an empty regular file carrying ``trusted.overlay.whiteout`` (an overlayfs
"xwhiteout", Linux >= 6.7) in a directory marked
``trusted.overlay.opaque=x``; the stacking overlay reads those and hides
the lower entry.  An opaque directory (``trusted.overlay.opaque=y``) hides
everything below it in lower layers.

:func:`flatten_layers` does the same in userspace: several layer Trees ->
one Tree with OCI whiteout semantics, to be written as one image.

What a mount shows, compared with the source:

* Whiteouts in a single-layer mount are empty regular files with
  ``trusted.overlay.whiteout`` and ``user.overlay.whiteout`` (both empty);
  their directory gains ``trusted.overlay.opaque=x``,
  ``trusted.overlay.whiteouts``, ``user.overlay.opaque=x`` and
  ``user.overlay.whiteouts`` (libcomposefs, format version 1).  Stacked,
  they disappear together with what they hide, but a directory whose
  topmost layer held whiteouts still shows ``user.overlay.opaque=x`` and
  ``user.overlay.whiteouts`` (the stacking overlay consumes only the
  ``trusted.overlay.*`` ones).
* Stacked, link counts are each layer's own: a file whose hardlink partner
  a later layer replaced still counts both links.  :func:`flatten` recounts.
* A directory with both ``.wh..wh..opq`` and ``.wh.NAME`` entries loses its
  opaqueness: libcomposefs replaces ``opaque=y`` by ``opaque=x`` when it
  escapes the whiteouts (a ``.wh.NAME`` in an opaque directory is redundant,
  so a reader may drop it to keep the directory opaque).

Verity: ``require_verity`` makes the overlay demand an fs-verity digest on
every file with external content, checked against the object's own
fs-verity.  The kernel only checks when a file is opened (an unreadable
file, EIO), so :func:`mount` checks first, in userspace: every such file has
a digest in the image, and every object has fs-verity enabled with that
digest; otherwise it raises :class:`~composefs_py.errors.LibraryError` with
errno ``ENOVERITY`` (ENOTTY) or ``EWRONGVERITY`` (EILSEQ) and a message
naming the file.  ``try_verity`` asks for the same only when those checks
pass and otherwise mounts without verity (libcomposefs' own TRY_VERITY turns
it on whenever the kernel supports it, which makes files without digests
unreadable).

Checks before mounting (:func:`mount`, and every layer's before the first
mount of :func:`mount_layers`): the image file is opened once and read
through that fd, at most ``Limits.max_input_bytes`` (checked before the
bytes are joined); ``expected_digest`` (mount.composefs's ``digest=``) is
compared with the fs-verity digest of those bytes, computed in userspace,
so no kernel fs-verity is needed (where the file has it, libcomposefs is
given the digest too and the kernel checks it); the bytes are read into a
Tree; every object the Tree needs must be in a store (else LibraryError
ENOENT naming how many and the first five, or with ``allow_missing`` a
:class:`MissingObjectsWarning`); then the verity checks.  The mount then
reads the same file, through ``/proc/self/fd`` of the fd the checks read
(a name swapped meanwhile changes nothing; a file rewritten in place by
whoever may write it is caught only by kernel fs-verity).

Untrusted images, paths and cost: the image is read (for the checks
above) by :func:`~composefs_py.writer.read_image`, the one safe reader: the
structural check bounds what the loader may build by ``Limits`` (entries,
depth, sizes) before it runs, and the loader runs on a thread with a large
stack.  No string from an image becomes a host path: a payload is looked up
only if it is an object name (``ab/`` + 62 lowercase hex), relative to each
object folder's fd, without following links, and only a regular file is
opened (``O_NOFOLLOW | O_NONBLOCK``; see
:class:`~composefs_py.objects.ObjectDir`); anything else is refused with a
LibraryError naming the file.  Each distinct payload is looked up and
measured once, so the checks cost one pass over the image's bytes (the
digest), one over the Tree, a sort of the distinct payloads, and a constant
number of system calls per distinct object and store (at most one
``fstatat`` each; one ``openat`` per fan-out folder).  The kernel resolves the image's
redirects itself, beneath the data-only layers.  The paths used are the
caller's (image, mountpoint, object folders, upper/work dirs) and staging
folders this module makes with ``mkdtemp`` and removes folder by folder
(never recursively, so nothing is deleted through a mount left there).
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import warnings
from typing import TYPE_CHECKING

from .errors import LibraryError, ValidationError

if TYPE_CHECKING:
    import ctypes
    from collections.abc import Iterable, Iterator, Sequence
    from pathlib import Path

    from .model import Inode, Node, Tree
    from .objects import ObjectDir

    #: What :func:`_mount_arguments` gives: the image, the mount point, the
    #: object folders (absolute), the expected digest (raw).
    _MountArguments = tuple[Path, Path, list[Path], bytes | None]

# The package imports this module eagerly (``composefs_py.mount`` is the
# function of that name), so ``import composefs_py`` pays for what is
# imported here: the modules a call needs (ctypes, pathlib, tempfile, the
# model, the object store) are imported by the functions that use them.

__all__ = [
    "ENOSIGNATURE",
    "ENOVERITY",
    "EWRONGVERITY",
    "MissingObjectsWarning",
    "flatten",
    "flatten_layers",
    "is_mountpoint",
    "mount",
    "mount_layers",
    "unmount",
]

StrPath = str | os.PathLike[str]

#: libcomposefs' names for the errnos it uses (lcfs-mount.h).
ENOVERITY = errno.ENOTTY
EWRONGVERITY = errno.EILSEQ
ENOSIGNATURE = errno.EBADMSG

_MNT_DETACH = 2
_OPAQUE_XATTR = b"trusted.overlay.opaque"
#: What libcomposefs adds to a directory holding whiteouts (read_image keeps
#: the opaque ones): bookkeeping that means nothing once whiteouts are gone.
WHITEOUT_MARKERS = frozenset(
    (
        (_OPAQUE_XATTR, b"x"),
        (b"user.overlay.opaque", b"x"),
        (b"user.overlay.whiteouts", b""),
        (b"trusted.overlay.whiteouts", b""),
    )
)
_EROFS_SUPER_OFFSET = 1024
_EROFS_MAGIC = (0xE0F5E1E2).to_bytes(4, "little")
_COMPOSEFS_MAGIC = (0xD078629A).to_bytes(4, "little")

_REASONS = {
    ENOVERITY: "the image has no fs-verity (not enabled, or its file system lacks it)",
    EWRONGVERITY: "the image's fs-verity digest is not the expected one",
    ENOSIGNATURE: "the image is not signed",
    errno.EPERM: "not permitted (mounting needs root, CAP_SYS_ADMIN)",
    errno.ENODEV: "the kernel lacks erofs or overlayfs",
    errno.ENOENT: "a path does not exist",
    errno.ENOTDIR: "a path is not a directory",
    errno.EINVAL: (
        "invalid argument (not a composefs image, or the kernel's overlayfs lacks "
        "data-only lower layers: Linux >= 6.5 is needed)"
    ),
}


@functools.cache
def _libc() -> ctypes.CDLL:
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _fs(path: StrPath | bytes) -> bytes:
    return os.fsencode(path)


def _show(path: StrPath | bytes) -> str:
    return os.fsdecode(path)


def _library_error(err: OSError, what: str) -> LibraryError:
    code = err.errno or errno.EIO
    return LibraryError(code, f"{what}: {_REASONS.get(code, os.strerror(code))}")


# ---------------------------------------------------------------------------
# checks done before mounting
# ---------------------------------------------------------------------------


# The image: read-only, never blocking on a FIFO, never a controlling tty.
_IMAGE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def _open_image(image: Path) -> int:
    """Open ``image`` (a regular file or a block device, else LibraryError
    EINVAL) without blocking; the caller closes the fd."""
    try:
        fd = os.open(image, _IMAGE_FLAGS)
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise LibraryError(code, f"cannot read image {image}: {os.strerror(code)}") from exc
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        raise LibraryError(
            errno.EINVAL, f"image {image} is not a regular file (nor a block device)"
        )
    return fd


def _check_image(image: Path) -> None:
    fd = _open_image(image)
    try:
        head = os.pread(fd, _EROFS_SUPER_OFFSET + 4, 0)
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise LibraryError(code, f"cannot read image {image}: {os.strerror(code)}") from exc
    finally:
        os.close(fd)
    if head[:4] != _COMPOSEFS_MAGIC or head[_EROFS_SUPER_OFFSET:] != _EROFS_MAGIC:
        raise LibraryError(errno.EINVAL, f"{image} is not a composefs image")


def _kernel_release() -> tuple[int, int]:
    parts = os.uname().release.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def _overlay_dir(path: StrPath) -> str:
    """``path`` as overlayfs' upperdir/workdir option: absolute, ``\\`` escaped.

    overlayfs unescapes backslashes in upperdir and workdir even when they come
    through fsconfig (not in ``lowerdir+``/``datadir+``); libcomposefs does
    not escape them, so this is done here for both.
    """
    return os.path.abspath(path).replace("\\", "\\\\")


def _check_dir(path: Path, role: str) -> None:
    if not path.is_dir():
        raise LibraryError(
            errno.ENOTDIR if path.exists() else errno.ENOENT,
            f"{role} {path} is not a directory",
        )


def _verity_problem(
    tree: Iterable[tuple[bytes, Node]], stores: Sequence[ObjectDir]
) -> LibraryError | None:
    """Return why ``tree`` (an image's) cannot be mounted with verity required, or None.

    Every file with external content needs an fs-verity digest in the image
    and an object, in the first object dir that has it, whose measured
    fs-verity digest equals it.  The image is untrusted: only a payload that
    is an object name (``ab/`` + 62 lowercase hex) is looked up, relative to
    each object dir's fd, never through a link, and only a regular file is
    opened (:meth:`~composefs_py.objects.ObjectDir.open_object`).  Each
    distinct payload is looked up and measured once.
    """
    from .model import Inode

    measured: dict[bytes, bytes | LibraryError] = {}
    for path, node in tree:
        if not isinstance(node, Inode) or node.payload is None:
            continue
        shown = _show(path)
        if node.fsverity_digest is None:
            return LibraryError(
                ENOVERITY,
                f"{shown}: the image records no fs-verity digest for its content "
                f"({_show(node.payload)}); build the image with digests to "
                "require verity",
            )
        result = measured.get(node.payload)
        if result is None:
            result = measured[node.payload] = _measure_object(node.payload, stores)
        if isinstance(result, LibraryError):
            return LibraryError(result.errno, f"{shown}: {result.strerror}")
        if result != node.fsverity_digest:
            return LibraryError(
                EWRONGVERITY,
                f"{shown}: object {_show(node.payload)} has fs-verity digest "
                f"{result.hex()}, the image expects {node.fsverity_digest.hex()}",
            )
    return None


def _measure_object(payload: bytes, stores: Sequence[ObjectDir]) -> bytes | LibraryError:
    """The kernel's fs-verity digest of object ``payload`` in the first store
    holding it, or the error that says why there is none."""
    name = payload.decode("utf-8", "backslashreplace")
    fd = None
    for store in stores:
        try:
            fd = store.open_object(payload)
        except ValidationError as exc:
            return LibraryError(
                errno.EINVAL,
                f"payload {name!r} is not an object name ({exc.reason}): verity checks "
                "open only objects named by their digest",
            )
        except LibraryError as exc:
            return exc
        except OSError as exc:
            return _library_error(exc, f"cannot open object {name} in {store.path}")
        if fd is not None:
            found = f"{store.path}/{name}"
            break
    else:
        return LibraryError(errno.ENOENT, f"object {name} is in no object dir")
    from . import fsverity

    try:
        return fsverity.measure_fsverity(fd)
    except OSError as exc:
        code = exc.errno or errno.EIO
        if code in (errno.ENOTTY, errno.ENODATA, errno.EOPNOTSUPP):
            return LibraryError(
                ENOVERITY,
                f"object {found} has no fs-verity (not enabled, or its "
                f"file system or kernel lacks fs-verity): {os.strerror(code)}",
            )
        return LibraryError(code, f"cannot measure object {found}: {exc}")
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# mount / unmount
# ---------------------------------------------------------------------------


class MissingObjectsWarning(UserWarning):
    """An image mounted with ``allow_missing=True`` needs objects its stores lack."""


#: How many missing objects a refusal or warning names.
_SHOWN_MISSING = 5


def _digest_bytes(digest: bytes | str | None) -> bytes | None:
    """``expected_digest`` as 32 raw bytes: given raw, or as 64 hex digits."""
    if digest is None or (isinstance(digest, bytes) and len(digest) == 32):
        return digest
    if isinstance(digest, str) and len(digest) == 64:
        try:
            return bytes.fromhex(digest)
        except ValueError:
            pass
    shown = f"{len(digest)} bytes" if isinstance(digest, bytes) else repr(digest[:80])
    raise ValueError(
        f"expected_digest must be the 32-byte fs-verity digest (or its 64 hex digits), got {shown}"
    )


class _Checked:
    """An image opened and checked for mounting: the fd the checks read (the
    mount reads the same file through ``/proc/self/fd``), the verity flags
    the checks allow, and the digest for the kernel to check as well.

    A plain slotted class: a NamedTuple or dataclass would cost this module,
    which ``import composefs_py`` loads, a millisecond at import."""

    __slots__ = ("fd", "flags", "kernel_digest")

    def __init__(self, fd: int, flags: int, kernel_digest: bytes | None) -> None:
        self.fd = fd
        self.flags = flags
        self.kernel_digest = kernel_digest

    @property
    def source(self) -> str:
        return f"/proc/self/fd/{self.fd}"


def _read_image_fd(image: Path, fd: int, limit: int) -> bytes:
    """The image's bytes from ``fd``, at most ``limit`` (LibraryError EFBIG
    beyond, checked on a regular file's size before anything is read).

    A regular file is read in one ``pread`` of its size (one allocation);
    only what it grew by since, or a block device, is read in pieces."""
    st = os.fstat(fd)
    size = st.st_size if stat.S_ISREG(st.st_mode) else 0
    too_large = LibraryError(
        errno.EFBIG,
        f"image {image}: larger than the limit max_input_bytes={limit} of the checks "
        "made before mounting",
    )
    if size > limit:
        raise too_large
    pieces = [os.pread(fd, size, 0)] if size else []
    done = len(pieces[0]) if pieces else 0
    while done <= limit:
        piece = os.pread(fd, min(1 << 20, limit + 1 - done), done)
        if not piece:
            break
        pieces.append(piece)
        done += len(piece)
    if done > limit:
        raise too_large
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _missing_text(image: Path, missing: Sequence[bytes], total: int, stores: str) -> str:
    shown = ", ".join(_show(p) for p in missing[:_SHOWN_MISSING])
    more = ", ..." if len(missing) > _SHOWN_MISSING else ""
    return (
        f"{image}: {len(missing)} of its {total} objects are missing from {stores} "
        f"({shown}{more}); their files could not be read"
    )


def _check_for_mount(
    image: Path,
    objdirs: Sequence[Path],
    *,
    expected_digest: bytes | None,
    allow_missing: bool,
    require_verity: bool,
    try_verity: bool,
) -> _Checked:
    """Open ``image`` and check it before it is mounted; raise LibraryError if refused.

    In this order, each before anything is mounted: the image's fs-verity
    digest (computed here from its bytes, as no kernel fs-verity is needed)
    is ``expected_digest``; the image reads as a valid Tree (the one safe
    reader, bounded by ``Limits``); every object it needs is in a store
    (else refused, or a :class:`MissingObjectsWarning` with
    ``allow_missing``); the verity checks.  The caller closes the returned fd.
    """
    from . import fsverity
    from .errors import ValidationError
    from .limits import Limits
    from .objects import ObjectDir, absent_payloads, tree_payloads
    from .writer import read_image

    limits = Limits()
    fd = _open_image(image)
    try:
        data = _read_image_fd(image, fd, limits.max_input_bytes)
        kernel_digest = None
        if expected_digest is not None:
            actual = fsverity.fsverity_digest(data)
            if actual != expected_digest:
                raise LibraryError(
                    EWRONGVERITY,
                    f"{image} has fs-verity digest {actual.hex()}, not the expected "
                    f"{expected_digest.hex()}: refusing to mount it",
                )
            try:  # where the file has fs-verity, the kernel checks it too
                fsverity.measure_fsverity(fd)
                kernel_digest = expected_digest
            except OSError:
                pass
        try:
            tree = read_image(data, limits=limits)
        except ValidationError as exc:  # named by the image's path, not "input"
            raise ValidationError(f"image {image}: {exc}") from None
        del data
        stores: list[ObjectDir] = []
        flags = 0
        try:
            for objdir in objdirs:
                try:
                    stores.append(ObjectDir(objdir))
                except OSError as exc:
                    raise _library_error(exc, f"cannot open object store {objdir}") from exc
            needed = sorted(tree_payloads(tree))
            missing = absent_payloads(needed, stores)
            if missing:
                where = ":".join(str(d) for d in objdirs)
                text = _missing_text(image, missing, len(needed), where)
                if not allow_missing:
                    raise LibraryError(
                        errno.ENOENT,
                        f"{text}; allow_missing=True (--allow-missing) mounts it anyway",
                    )
                warnings.warn(MissingObjectsWarning(text), stacklevel=3)
            from ._native import MountFlags

            if require_verity:
                problem = _verity_problem(tree, stores)
                if problem is not None:
                    raise LibraryError(
                        problem.errno,
                        f"cannot mount {image} with verity required: {problem.strerror}",
                    )
                flags = MountFlags.REQUIRE_VERITY
            elif try_verity and _verity_problem(tree, stores) is None:
                flags = MountFlags.TRY_VERITY
        finally:
            for store in stores:
                store.close()
        return _Checked(fd, int(flags), kernel_digest)
    except BaseException:
        os.close(fd)
        raise


def _check_images(
    arguments: Sequence[_MountArguments],
    *,
    allow_missing: bool,
    require_verity: bool,
    try_verity: bool,
) -> list[_Checked]:
    """:func:`_check_for_mount` each image, in order; all checked, or none
    left open (the first refusal closes those checked before it)."""
    checked: list[_Checked] = []
    try:
        for image_path, _target, objdirs, digest in arguments:
            checked.append(
                _check_for_mount(
                    image_path,
                    objdirs,
                    expected_digest=digest,
                    allow_missing=allow_missing,
                    require_verity=require_verity,
                    try_verity=try_verity,
                )
            )
    except BaseException:
        for each in checked:
            os.close(each.fd)
        raise
    return checked


def mount(
    image: StrPath,
    mountpoint: StrPath,
    *,
    objects: StrPath | Sequence[StrPath],
    upperdir: StrPath | None = None,
    workdir: StrPath | None = None,
    require_verity: bool = False,
    try_verity: bool = False,
    idmap_userns_fd: int | None = None,
    expected_digest: bytes | str | None = None,
    readonly: bool | None = None,
    allow_missing: bool = False,
) -> None:
    """Mount the composefs ``image`` on ``mountpoint``.

    ``objects`` is the object store folder (or several, searched in order)
    holding the files' content.  ``upperdir`` and ``workdir`` (both or
    neither) make the mount writable; without them it is read-only
    (``readonly`` overrides).  ``idmap_userns_fd`` is an open user namespace
    fd whose ID mapping the image mount uses.  See the module docstring for
    ``require_verity``/``try_verity``.

    Before anything is mounted the image is read and checked (see the module
    docstring): ``expected_digest`` (mount.composefs's ``digest=``: the
    image's fs-verity digest, 32 raw bytes or 64 hex digits) must be the
    digest of the image's bytes, computed here, so no kernel fs-verity is
    needed (where the image file has it, the kernel checks the digest as
    well); every object the image needs must be in a store, else the mount
    is refused naming how many are missing and the first few, or, with
    ``allow_missing=True``, a :class:`MissingObjectsWarning` says so and the
    image is mounted (its files without content then fail to read).

    Raises ValueError for inconsistent arguments, ValidationError for an
    image that is no valid composefs image (or beyond ``Limits``), and
    LibraryError (an OSError, with errno) when the mount fails or is
    refused, saying why.
    """
    if idmap_userns_fd is not None and idmap_userns_fd < 0:
        raise ValueError(f"idmap_userns_fd must be an open fd, got {idmap_userns_fd}")
    arguments = _mount_arguments(
        image, mountpoint, objects, upperdir, workdir, require_verity, try_verity, expected_digest
    )
    image_path, target, objdirs, _digest = arguments
    [checked] = _check_images(
        [arguments],
        allow_missing=allow_missing,
        require_verity=require_verity,
        try_verity=try_verity,
    )
    try:
        _mount_checked(
            image_path, checked, target, objdirs, upperdir, workdir, idmap_userns_fd, readonly
        )
    finally:
        os.close(checked.fd)


def _mount_arguments(
    image: StrPath,
    mountpoint: StrPath,
    objects: StrPath | Sequence[StrPath],
    upperdir: StrPath | None,
    workdir: StrPath | None,
    require_verity: bool,
    try_verity: bool,
    expected_digest: bytes | str | None,
) -> _MountArguments:
    """Check :func:`mount`'s arguments and paths; return the image, the mount
    point, the object folders (absolute) and the expected digest (raw)."""
    from pathlib import Path

    image_path = Path(image)
    target = Path(mountpoint)
    # Absolute: the overlay's options are resolved against the mounting process's cwd.
    objdirs = [
        Path(os.path.abspath(o))
        for o in ([objects] if isinstance(objects, (str, os.PathLike)) else objects)
    ]
    if not objdirs:
        raise ValueError("objects: at least one object store folder is needed")
    if (upperdir is None) != (workdir is None):
        raise ValueError("upperdir and workdir go together: give both or neither")
    if require_verity and try_verity:
        raise ValueError("require_verity and try_verity exclude each other")
    digest = _digest_bytes(expected_digest)
    _check_image(image_path)
    _check_dir(target, "mountpoint")
    for objdir in objdirs:
        _check_dir(objdir, "object store")
    if upperdir is not None and workdir is not None:
        _check_dir(Path(upperdir), "upperdir")
        _check_dir(Path(workdir), "workdir")
    return image_path, target, objdirs, digest


def _mount_checked(
    image_path: Path,
    checked: _Checked,
    target: Path,
    objdirs: Sequence[Path],
    upperdir: StrPath | None,
    workdir: StrPath | None,
    idmap_userns_fd: int | None,
    readonly: bool | None,
) -> None:
    """Mount the image :func:`_check_for_mount` checked (through its fd) on ``target``."""
    import tempfile
    from pathlib import Path

    from ._native import MountFlags, mount_image

    flags = MountFlags(checked.flags)
    if readonly is None:
        readonly = upperdir is None
    if readonly:
        flags |= MountFlags.READONLY
    if idmap_userns_fd is not None:
        flags |= MountFlags.IDMAP
    # Our own folder for the image mount (libcomposefs would make one in /tmp and
    # leave it behind when setting up a loop device fails).
    staging = Path(tempfile.mkdtemp(prefix=".composefs-py-image."))
    try:
        mount_image(
            checked.source,
            target,
            objdirs=objdirs,
            upperdir=None if upperdir is None else _overlay_dir(upperdir),
            workdir=None if workdir is None else _overlay_dir(workdir),
            flags=flags,
            expected_digest=checked.kernel_digest,
            idmap_fd=-1 if idmap_userns_fd is None else idmap_userns_fd,
            image_mountdir=staging,
        )
    except OSError as exc:
        raise _library_error(exc, f"cannot mount {image_path} on {target}") from exc
    finally:
        _remove_staging_dir(staging)


def _remove_staging_dir(path: Path) -> None:
    """Remove an empty staging folder; detach first whatever is still mounted on it.

    libcomposefs detaches the image mount itself, success or failure; the
    detach here is a second line of defence.  When the kernel refuses the
    image, libcomposefs removes the folder itself, although it did not make
    it (lcfs_mount_erofs_ovl, 1.0.8): a folder already gone is fine.
    """
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        _libc().umount2(_fs(path), _MNT_DETACH)
        os.rmdir(path)


def is_mountpoint(path: StrPath) -> bool:
    """True if ``path`` is the mount point of a mount in this mount namespace."""
    wanted = os.path.realpath(path)
    return any(mount_point == wanted for mount_point in _mount_points())


def _mount_points() -> Iterator[str]:
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            field = line.split(b" ")[4]
            # mountinfo escapes space, tab, newline and backslash as \ooo.
            yield os.fsdecode(
                field.replace(b"\\040", b" ")
                .replace(b"\\011", b"\t")
                .replace(b"\\012", b"\n")
                .replace(b"\\134", b"\\")
            )


def unmount(mountpoint: StrPath, *, lazy: bool = False) -> None:
    """Unmount what :func:`mount` or :func:`mount_layers` mounted on ``mountpoint``.

    The image (and staging) mounts were detached when the overlay was
    mounted, so this one ``umount2`` frees them all.  ``lazy`` detaches at
    once even while files are open (``MNT_DETACH``).  Raises LibraryError:
    EINVAL when nothing is mounted there, EBUSY when it is in use.
    """
    import ctypes

    path = _fs(mountpoint)
    libc = _libc()
    if libc.umount2(path, _MNT_DETACH if lazy else 0) != 0:
        code = ctypes.get_errno()
        reason = {
            errno.EINVAL: "not a mount point",
            errno.EBUSY: ("busy (files open, or a mount below it); lazy=True detaches it anyway"),
            errno.EPERM: "not permitted (unmounting needs root, CAP_SYS_ADMIN)",
        }.get(code, os.strerror(code))
        raise LibraryError(code, f"cannot unmount {_show(mountpoint)}: {reason}")


# ---------------------------------------------------------------------------
# several layers
# ---------------------------------------------------------------------------


# The new mount API (Linux >= 5.2); these syscall numbers are the same on
# every architecture but alpha.
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_FSOPEN_CLOEXEC = 1
_FSMOUNT_CLOEXEC = 1
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_MOUNT_ATTR_RDONLY = 1
_MOVE_MOUNT_F_EMPTY_PATH = 4
_AT_FDCWD = -100


def _fs_context_log(fd: int) -> str:
    """The messages the kernel logged on the fs context ``fd`` ("e overlay: ...")."""
    lines = []
    while True:
        try:
            line = os.read(fd, 4096)
        except OSError:
            break
        if not line:
            break
        lines.append(line.decode("utf-8", "replace").strip())
    return "; ".join(lines)


def _mount_overlay(
    target: Path,
    lowers: Sequence[Path],
    upperdir: StrPath | None,
    workdir: StrPath | None,
    readonly: bool,
) -> None:
    """Mount an overlay of ``lowers`` (first is top) on ``target``.

    Uses fsopen/fsconfig (``lowerdir+`` needs Linux >= 6.7): no option
    escaping, no limit on the option string's length.
    """
    import ctypes

    libc = _libc()
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    what = f"cannot mount the stacking overlay on {target}"

    def fail(step: str, fd: int = -1) -> LibraryError:
        code = ctypes.get_errno()
        log = _fs_context_log(fd) if fd >= 0 else ""
        reason = _REASONS[code] if code == errno.EPERM else os.strerror(code)
        return LibraryError(code, f"{what}: {step}: {reason}" + (f" ({log})" if log else ""))

    fs_fd = syscall(_SYS_FSOPEN, b"overlay", ctypes.c_uint(_FSOPEN_CLOEXEC))
    if fs_fd < 0:
        raise fail("fsopen")
    try:
        options: list[tuple[bytes, bytes]] = [(b"source", b"composefs-layers")]
        options += [(b"lowerdir+", _fs(p)) for p in lowers]
        if upperdir is not None and workdir is not None:
            options += [
                (b"upperdir", _fs(_overlay_dir(upperdir))),
                (b"workdir", _fs(_overlay_dir(workdir))),
            ]
        for key, value in options:
            rc = syscall(
                _SYS_FSCONFIG,
                ctypes.c_int(fs_fd),
                ctypes.c_uint(_FSCONFIG_SET_STRING),
                key,
                value,
                ctypes.c_int(0),
            )
            if rc < 0:
                raise fail(f"{key.decode()}={_show(value)}", fs_fd)
        rc = syscall(
            _SYS_FSCONFIG,
            ctypes.c_int(fs_fd),
            ctypes.c_uint(_FSCONFIG_CMD_CREATE),
            None,
            None,
            ctypes.c_int(0),
        )
        if rc < 0:
            # overlayfs mostly explains a refusal in the kernel log, not the fs context.
            raise fail("create (the kernel log, dmesg, says what overlayfs refused)", fs_fd)
        mnt_fd = syscall(
            _SYS_FSMOUNT,
            ctypes.c_int(fs_fd),
            ctypes.c_uint(_FSMOUNT_CLOEXEC),
            ctypes.c_uint(_MOUNT_ATTR_RDONLY if readonly else 0),
        )
        if mnt_fd < 0:
            raise fail("fsmount", fs_fd)
        try:
            rc = syscall(
                _SYS_MOVE_MOUNT,
                ctypes.c_int(mnt_fd),
                b"",
                ctypes.c_int(_AT_FDCWD),
                _fs(target),
                ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
            )
            if rc < 0:
                raise fail("move_mount")
        finally:
            os.close(mnt_fd)
    finally:
        os.close(fs_fd)


def mount_layers(
    images: Sequence[StrPath],
    mountpoint: StrPath,
    *,
    objects: StrPath | Sequence[StrPath],
    upperdir: StrPath | None = None,
    workdir: StrPath | None = None,
    require_verity: bool = False,
    try_verity: bool = False,
    idmap_userns_fd: int | None = None,
    readonly: bool | None = None,
    expected_digests: Sequence[bytes | str | None] | None = None,
    allow_missing: bool = False,
) -> None:
    """Mount the layer ``images`` (first is top) stacked on ``mountpoint``.

    Each image is mounted as :func:`mount` mounts one, under a private
    staging folder; an overlay ``lowerdir=top:...:bottom`` (plus
    ``upperdir``/``workdir``) is mounted on ``mountpoint``; the staging
    mounts are then detached and their folders removed, so :func:`unmount`
    of ``mountpoint`` frees everything.  Whiteouts and opaque directories of
    upper images hide what they cover in lower ones.

    ``objects`` is one object store folder or a list of them; every layer
    gets the whole list as its data-only lower layers (searched in order),
    so one store per layer (``[store_top, ..., store_base]``) and one store
    shared by all layers both work.  ``upperdir``/``workdir`` (both or
    neither) make the stack writable: changes land in ``upperdir``.
    ``expected_digests``: one per image (None: that image's is not checked),
    as :func:`mount`'s ``expected_digest``; ``allow_missing`` as there.

    The images (digests, objects, verity), object stores and upper/work
    dirs are all checked before anything is mounted.  When a mount fails
    halfway (a layer the kernel refuses, the stacking overlay refused) the
    layers already mounted are detached, which frees their loop devices
    (libcomposefs makes them auto-clearing), and the staging folders are
    removed: nothing stays mounted or bound.
    """
    if not images:
        raise ValueError("images: at least one layer image is needed")
    if (upperdir is None) != (workdir is None):
        raise ValueError("upperdir and workdir go together: give both or neither")
    digests = list(expected_digests) if expected_digests is not None else [None] * len(images)
    if len(digests) != len(images):
        raise ValueError(
            f"expected_digests: one digest per image (or None), got {len(digests)} "
            f"for {len(images)} images"
        )
    if len(images) == 1:
        mount(
            images[0],
            mountpoint,
            objects=objects,
            upperdir=upperdir,
            workdir=workdir,
            require_verity=require_verity,
            try_verity=try_verity,
            idmap_userns_fd=idmap_userns_fd,
            readonly=readonly,
            expected_digest=digests[0],
            allow_missing=allow_missing,
        )
        return
    if _kernel_release() < (6, 7):
        raise LibraryError(
            errno.ENOTSUP,
            "stacking composefs layers needs overlayfs xwhiteouts (Linux >= 6.7) to honour "
            f"their whiteouts; this kernel is {os.uname().release}: write one image with "
            "flatten() instead",
        )
    # Everything that can be checked without mounting is checked before the
    # first mount, so a bad later layer does not cost mounting the earlier ones.
    import contextlib
    import tempfile
    from pathlib import Path

    arguments = [
        _mount_arguments(image, mountpoint, objects, None, None, require_verity, try_verity, digest)
        for image, digest in zip(images, digests, strict=True)
    ]
    target = arguments[0][1]
    if upperdir is not None and workdir is not None:
        _check_dir(Path(upperdir), "upperdir")
        _check_dir(Path(workdir), "workdir")
    checked = _check_images(
        arguments,
        allow_missing=allow_missing,
        require_verity=require_verity,
        try_verity=try_verity,
    )
    staging: Path | None = None
    made: list[Path] = []
    mounted: list[Path] = []
    try:
        staging = Path(tempfile.mkdtemp(prefix=".composefs-py-layers."))
        for index, ((image_path, _target, objdirs, _digest), layer) in enumerate(
            zip(arguments, checked, strict=True)
        ):
            layer_dir = staging / str(index)
            layer_dir.mkdir()
            made.append(layer_dir)
            _mount_checked(image_path, layer, layer_dir, objdirs, None, None, idmap_userns_fd, None)
            mounted.append(layer_dir)
        writable = upperdir is not None
        _mount_overlay(
            target,
            mounted,
            upperdir,
            workdir,
            readonly if readonly is not None else not writable,
        )
    finally:
        for layer in checked:
            os.close(layer.fd)
        # The stacking overlay (if mounted) keeps its lower layers alive.
        for layer_dir in mounted:
            _libc().umount2(_fs(layer_dir), _MNT_DETACH)
        # Folder by folder, never recursively: nothing is deleted through a
        # mount that is still there (an image's tree), whatever it holds.
        # A failure here must not hide the one that brought us here.
        for folder in [*made, *([staging] if staging is not None else [])]:
            with contextlib.suppress(OSError):
                _remove_staging_dir(folder)


def _is_whiteout(inode: Inode) -> bool:
    return stat.S_ISCHR(inode.mode) and inode.rdev == 0


def _is_opaque(inode: Inode) -> bool:
    return (_OPAQUE_XATTR, b"y") in inode.xattrs


def flatten_layers(trees: Sequence[Tree]) -> Tree:
    """Merge layer Trees (first is top) into one Tree with OCI whiteout semantics.

    Applied from the bottom layer up: an entry replaces what a lower layer
    had at its path (a non-directory replacing a directory removes
    everything below it; a directory over a directory keeps the lower
    children and takes the upper attributes); a whiteout (char 0/0) removes
    the path and everything below it and is not kept; an opaque directory
    (``trusted.overlay.opaque=y``) removes every lower entry below it and
    loses the marker; so do the markers libcomposefs puts on directories
    holding whiteouts (``trusted.overlay.opaque=x``, ``user.overlay.opaque=x``,
    ``*.overlay.whiteouts``), which :func:`read_image` of a layer image
    keeps.  Hardlinks keep sharing one inode: when the path that held the
    inode is replaced or removed, a remaining link takes it over; link
    counts are recounted.
    """
    from dataclasses import replace

    from .model import ROOT, Hardlink, TreeBuilder, parent_of

    if not trees:
        raise ValueError("trees: at least one layer Tree is needed")
    # path -> (inode key, node as last written); the key names one inode:
    # (layer index, path of the Inode in that layer).
    entries: dict[bytes, tuple[tuple[int, bytes], Inode]] = {}
    children: dict[bytes, set[bytes]] = {}

    def remove_below(path: bytes) -> None:
        stack = list(children.pop(path, ()))
        while stack:
            child = stack.pop()
            del entries[child]
            stack.extend(children.pop(child, ()))

    def remove(path: bytes) -> None:
        if path in entries:
            remove_below(path)
            del entries[path]
            children[parent_of(path)].discard(path)

    for layer_index in range(len(trees) - 1, -1, -1):
        tree = trees[layer_index]
        for path, node in tree:
            inode = tree.inode(path)
            if _is_whiteout(inode):
                remove(path)
                continue
            key = (layer_index, node.target if isinstance(node, Hardlink) else path)
            old = entries.get(path)
            if inode.is_dir:
                if old is not None and not old[1].is_dir:
                    remove(path)
                if _is_opaque(inode):
                    remove_below(path)
                kept = tuple(
                    x
                    for x in inode.xattrs
                    if x != (_OPAQUE_XATTR, b"y") and x not in WHITEOUT_MARKERS
                )
                if kept != inode.xattrs:
                    inode = replace(inode, xattrs=kept)
                children.setdefault(path, set())
            elif old is not None:
                remove(path)
            entries[path] = (key, inode)
            if path != ROOT:
                children[parent_of(path)].add(path)

    holders: dict[tuple[int, bytes], bytes] = {}
    link_count: dict[tuple[int, bytes], int] = {}
    for key, inode in entries.values():
        if not inode.is_dir:
            link_count[key] = link_count.get(key, 0) + 1
    builder = TreeBuilder(count_hardlinks=True)
    for path in sorted(entries, key=lambda p: p.split(b"/")):
        key, inode = entries[path]
        if inode.is_dir:
            builder.add(path, inode)
        elif key in holders:
            builder.add(path, Hardlink(holders[key]))
        else:
            holders[key] = path
            builder.add(path, inode if link_count[key] > 1 else replace(inode, nlink=1))
    return builder.build()


def flatten(trees: Sequence[Tree]) -> Tree:
    """Merge layer Trees given **base first** (the order layers are applied).

    The same as :func:`flatten_layers` with the list reversed: OCI whiteouts
    delete, opaque directories reset what lies below, later layers replace
    earlier entries, hardlinks stay consistent.
    """
    return flatten_layers(list(reversed(trees)))
