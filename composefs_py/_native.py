"""Low-level binding to libcomposefs.  Hazardous: handle with care.

This is the only module that imports the compiled ``composefs_py._lcfs`` or
touches ``ffi``/``lib`` (a test enforces it).  Everything it exposes takes and
returns plain Python values; no cdata leaves it.  C node trees live for one
call: built from a :class:`~composefs_py.model.Tree`, used, and freed in a
``finally``.

The rules that keep libcomposefs from ``abort()``-ing (no ``..`` names, no
self hardlinks, symlinks with targets, no cycles, never unref a node that has
a parent) are guaranteed by :class:`~composefs_py.model.TreeBuilder`; this
module trusts the Tree it is given and does not check it again.

mypy strict is relaxed for this module only (pyproject.toml): cffi's ``ffi``
and ``lib`` are untyped.  The public functions are fully annotated.

Every C return code goes through :func:`_check`, which reads ``errno`` once
and raises :class:`~composefs_py.errors.LibraryError` naming the call.
"""

from __future__ import annotations

import enum
import errno as _errno
import os
import stat
from collections.abc import Sequence
from typing import Any

from .errors import LibraryError, ValidationError
from .model import Hardlink, Inode, Tree, TreeBuilder, parent_of

try:
    from ._lcfs import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "composefs_py._lcfs (the compiled libcomposefs binding) is not built or "
        f"cannot load: {exc}. Run scripts/bootstrap.sh (or `make deps`), or "
        "`pip install .` with libcomposefs >= 1.0.6 available."
    ) from exc

__all__ = [
    "BUILD_STAMP",
    "DIGEST_SIZE",
    "LIBCOMPOSEFS_VERSION",
    "MountFlags",
    "enable_fsverity",
    "fsverity_digest_bytes",
    "fsverity_digest_fd",
    "image_version",
    "measure_fsverity",
    "mount_image",
    "read_image",
    "write_tree",
]

#: Must equal what ``cfspy_build_stamp()`` in csrc/shim.c returns; bump both
#: when the C side of the binding changes incompatibly.
BUILD_STAMP = "composefs-py-ffi-1"

_built_stamp = ffi.string(lib.cfspy_build_stamp()).decode("ascii")
if _built_stamp != BUILD_STAMP:  # pragma: no cover - a stale build
    raise ImportError(
        f"composefs_py._lcfs is stale: it was built as {_built_stamp!r} but this "
        f"composefs_py expects {BUILD_STAMP!r}; rebuild it (`make deps` or "
        "`pip install -e .`)"
    )

#: The libcomposefs version the extension was compiled against ("unknown" if
#: pkg-config did not say).
LIBCOMPOSEFS_VERSION: str = ffi.string(lib.cfspy_lcfs_version()).decode("ascii")
DIGEST_SIZE: int = lib.LCFS_DIGEST_SIZE
VERSION_MAX: int = lib.LCFS_VERSION_MAX
INLINE_CONTENT_MAX: int = lib.LCFS_INLINE_CONTENT_MAX
INODE_EXTERNAL_XATTR_MAX: int = lib.LCFS_INODE_EXTERNAL_XATTR_MAX


class MountFlags(enum.IntFlag):
    """``enum lcfs_mount_flags_t``."""

    NONE = lib.LCFS_MOUNT_FLAGS_NONE
    REQUIRE_VERITY = lib.LCFS_MOUNT_FLAGS_REQUIRE_VERITY
    READONLY = lib.LCFS_MOUNT_FLAGS_READONLY
    IDMAP = lib.LCFS_MOUNT_FLAGS_IDMAP
    TRY_VERITY = lib.LCFS_MOUNT_FLAGS_TRY_VERITY


def _check(rc: int, what: str) -> None:
    """Raise LibraryError for a negative ``rc`` from the libcomposefs call ``what``.

    libcomposefs reports failure either as -1 with ``errno`` set or as
    ``-errno``; ``errno`` is read once, right here.
    """
    if rc >= 0:
        return
    err = ffi.errno
    if rc < -1:
        err = -rc
    elif err == 0:
        err = _errno.EIO
    raise LibraryError(err, f"{what}: {os.strerror(err)}")


def _check_ptr(ptr: Any, what: str) -> Any:
    """Return ``ptr``, or raise LibraryError if it is NULL."""
    if ptr == ffi.NULL:
        err = ffi.errno or _errno.ENOMEM
        raise LibraryError(err, f"{what}: {os.strerror(err)}")
    return ptr


def _check_versions(min_version: int, max_version: int) -> None:
    if not (0 <= min_version <= max_version <= VERSION_MAX):
        raise ValueError(
            f"format versions must satisfy 0 <= min_version <= max_version <= "
            f"{VERSION_MAX}, got {min_version}, {max_version}"
        )


# ---------------------------------------------------------------------------
# Tree -> C tree -> image
# ---------------------------------------------------------------------------


def _fill_node(cnode: Any, inode: Inode, path: bytes) -> None:
    """Set every attribute of ``inode`` on the fresh C node, as mkcomposefs does."""
    what = path.decode("utf-8", "backslashreplace")
    _check(lib.lcfs_node_try_set_mode(cnode, inode.mode), f"lcfs_node_try_set_mode({what})")
    ftype = stat.S_IFMT(inode.mode)
    if ftype != stat.S_IFLNK:
        lib.lcfs_node_set_size(cnode, inode.size)
    lib.lcfs_node_set_nlink(cnode, inode.nlink)
    lib.lcfs_node_set_uid(cnode, inode.uid)
    lib.lcfs_node_set_gid(cnode, inode.gid)
    if ftype in (stat.S_IFCHR, stat.S_IFBLK):
        lib.lcfs_node_set_rdev64(cnode, inode.rdev)
    lib.cfspy_node_set_mtime(cnode, inode.mtime, inode.mtime_nsec)
    if ftype == stat.S_IFLNK:
        _check(
            lib.lcfs_node_set_symlink_payload(cnode, inode.symlink_target),
            f"lcfs_node_set_symlink_payload({what})",
        )
    else:
        if inode.payload is not None:
            _check(
                lib.lcfs_node_set_payload(cnode, inode.payload), f"lcfs_node_set_payload({what})"
            )
        if inode.content is not None:
            _check(
                lib.lcfs_node_set_content(cnode, inode.content, len(inode.content)),
                f"lcfs_node_set_content({what})",
            )
    if inode.fsverity_digest is not None:
        lib.lcfs_node_set_fsverity_digest(cnode, inode.fsverity_digest)
    for name, value in inode.xattrs:
        _check(
            lib.lcfs_node_set_xattr(cnode, name, value, len(value)), f"lcfs_node_set_xattr({what})"
        )


def write_tree(tree: Tree, fd: int, *, min_version: int = 0, max_version: int = 1) -> bytes:
    """Write the EROFS composefs image of ``tree`` to ``fd``; return its fs-verity digest.

    The image is byte-identical to ``mkcomposefs --from-file`` on ``dump(tree)``
    with the same ``--min-version``/``--max-version``.  ``fd`` is written
    sequentially from its current position (a pipe works); it is not closed.
    """
    _check_versions(min_version, max_version)
    cnodes: dict[bytes, Any] = {}
    hardlinks: list[tuple[Any, bytes]] = []
    root = ffi.NULL
    unparented = ffi.NULL  # a node not yet owned by its parent (freed on failure)
    try:
        for path, node in tree:
            cnode = _check_ptr(lib.lcfs_node_new(), "lcfs_node_new")
            if root == ffi.NULL:
                root = cnode
            else:
                unparented = cnode
            if isinstance(node, Hardlink):
                # Only the mode matters (it must be valid); the writer follows the link.
                target_mode = tree.inode(node.target).mode
                _check(lib.lcfs_node_try_set_mode(cnode, target_mode), "lcfs_node_try_set_mode")
                hardlinks.append((cnode, node.target))
            else:
                _fill_node(cnode, node, path)
            if cnode != root:
                name = path[path.rindex(b"/") + 1 :]
                _check(
                    lib.lcfs_node_add_child(cnodes[parent_of(path)], cnode, name),
                    f"lcfs_node_add_child({path.decode('utf-8', 'backslashreplace')})",
                )
                unparented = ffi.NULL  # now owned by its parent
            cnodes[path] = cnode
        # mkcomposefs resolves hardlinks last, newest first, and keeps the
        # target's nlink as the input gave it.
        for cnode, target_path in reversed(hardlinks):
            target = cnodes[target_path]
            nlink = lib.lcfs_node_get_nlink(target)
            lib.lcfs_node_make_hardlink(cnode, target)
            lib.lcfs_node_set_nlink(target, nlink)
        digest = ffi.new("uint8_t[]", DIGEST_SIZE)
        _check(lib.cfspy_write_to_fd(root, fd, min_version, max_version, digest), "lcfs_write_to")
        return bytes(ffi.buffer(digest))
    finally:
        if unparented != ffi.NULL:
            lib.lcfs_node_unref(unparented)
        if root != ffi.NULL:
            lib.lcfs_node_unref(root)


# ---------------------------------------------------------------------------
# image -> C tree -> Tree
# ---------------------------------------------------------------------------


def _bytes_or_none(ptr: Any) -> bytes | None:
    return None if ptr == ffi.NULL else ffi.string(ptr)


def _read_inode(cnode: Any) -> Inode:
    mode = lib.lcfs_node_get_mode(cnode)
    ftype = stat.S_IFMT(mode)
    sec = ffi.new("int64_t *")
    nsec = ffi.new("uint32_t *")
    lib.cfspy_node_get_mtime(cnode, sec, nsec)
    size = lib.lcfs_node_get_size(cnode) if ftype == stat.S_IFREG else 0
    payload = _bytes_or_none(lib.lcfs_node_get_payload(cnode))
    content: bytes | None = None
    digest: bytes | None = None
    if ftype == stat.S_IFREG:
        cptr = lib.lcfs_node_get_content(cnode)
        if cptr != ffi.NULL and size > 0:
            content = bytes(ffi.buffer(cptr, size))
        dptr = lib.lcfs_node_get_fsverity_digest(cnode)
        if dptr != ffi.NULL:
            digest = bytes(ffi.buffer(dptr, DIGEST_SIZE))
    xattrs = []
    length = ffi.new("size_t *")
    for i in range(lib.lcfs_node_get_n_xattr(cnode)):
        cname = _check_ptr(lib.lcfs_node_get_xattr_name(cnode, i), "lcfs_node_get_xattr_name")
        value = _check_ptr(lib.lcfs_node_get_xattr(cnode, cname, length), "lcfs_node_get_xattr")
        xattrs.append((ffi.string(cname), bytes(ffi.buffer(value, length[0]))))
    xattrs.sort()
    return Inode(
        mode=mode,
        nlink=lib.lcfs_node_get_nlink(cnode),
        uid=lib.lcfs_node_get_uid(cnode),
        gid=lib.lcfs_node_get_gid(cnode),
        mtime=sec[0],
        mtime_nsec=nsec[0],
        size=size,
        rdev=lib.lcfs_node_get_rdev64(cnode) if ftype in (stat.S_IFCHR, stat.S_IFBLK) else 0,
        payload=payload if ftype == stat.S_IFREG else None,
        symlink_target=payload if ftype == stat.S_IFLNK else None,
        content=content,
        fsverity_digest=digest,
        xattrs=tuple(xattrs),
    )


def _address(cnode: Any) -> int:
    return int(ffi.cast("uintptr_t", cnode))


def read_image(data: bytes | bytearray | memoryview) -> Tree:
    """Parse a composefs image into a validated :class:`Tree`.

    The image is untrusted: what libcomposefs rejects and what the
    :class:`TreeBuilder` rejects both raise ValidationError.  What EROFS does
    not keep cannot come back (see the dumpfile round-trip notes).
    """
    buf = ffi.from_buffer("uint8_t[]", data)
    root = lib.lcfs_load_node_from_image(buf, len(buf))
    if root == ffi.NULL:
        err = ffi.errno
        if err == _errno.ENOMEM:
            raise LibraryError(err, f"lcfs_load_node_from_image: {os.strerror(err)}")
        reason = os.strerror(err) if err else "unknown error"
        raise ValidationError(f"not a valid composefs image: {reason}")
    try:
        # Walk depth first; record every node's path so a hardlink can name
        # its target wherever in the tree that is.
        walked: list[tuple[bytes, Any]] = []
        paths: dict[int, bytes] = {}
        stack: list[tuple[bytes, Any]] = [(b"/", root)]
        while stack:
            path, cnode = stack.pop()
            walked.append((path, cnode))
            if lib.lcfs_node_get_hardlink_target(cnode) == ffi.NULL:
                paths[_address(cnode)] = path
            prefix = path if path != b"/" else b""
            n = lib.lcfs_node_get_n_children(cnode)
            for i in range(n - 1, -1, -1):
                child = _check_ptr(lib.lcfs_node_get_child(cnode, i), "lcfs_node_get_child")
                name = _check_ptr(lib.lcfs_node_get_name(child), "lcfs_node_get_name")
                stack.append((prefix + b"/" + ffi.string(name), child))
        builder = TreeBuilder()
        for index, (path, cnode) in enumerate(walked):
            target = lib.lcfs_node_get_hardlink_target(cnode)
            if target != ffi.NULL:
                target_path = paths.get(_address(target))
                if target_path is None:
                    raise ValidationError(
                        "hardlink to an inode outside the tree", entry=index, path=path
                    )
                builder.add(path, Hardlink(target_path), entry=index)
            else:
                builder.add(path, _read_inode(cnode), entry=index)
        return builder.build()
    finally:
        lib.lcfs_node_unref(root)


def image_version(fd: int) -> int:
    """Return the composefs format version of the image open at ``fd``."""
    rc = lib.lcfs_version_from_fd(fd)
    _check(rc, "lcfs_version_from_fd")
    return int(rc)


# ---------------------------------------------------------------------------
# fs-verity
# ---------------------------------------------------------------------------


def fsverity_digest_bytes(data: bytes | bytearray | memoryview) -> bytes:
    """fs-verity digest (sha256, 4096-byte blocks, no salt) of ``data``."""
    digest = ffi.new("uint8_t[]", DIGEST_SIZE)
    buf = ffi.from_buffer("uint8_t[]", data)
    _check(
        lib.lcfs_compute_fsverity_from_data(digest, buf, len(buf)),
        "lcfs_compute_fsverity_from_data",
    )
    return bytes(ffi.buffer(digest))


def fsverity_digest_fd(fd: int) -> bytes:
    """fs-verity digest of what ``fd`` reads from its current position to EOF."""
    digest = ffi.new("uint8_t[]", DIGEST_SIZE)
    _check(lib.lcfs_compute_fsverity_from_fd(digest, fd), "lcfs_compute_fsverity_from_fd")
    return bytes(ffi.buffer(digest))


def measure_fsverity(fd: int) -> bytes:
    """The kernel's fs-verity digest of the file at ``fd``.

    Raises LibraryError (errno ENOTTY, libcomposefs' ENOVERITY) when the file
    has no fs-verity or the filesystem does not support it.
    """
    digest = ffi.new("uint8_t[]", DIGEST_SIZE)
    _check(lib.lcfs_fd_measure_fsverity(digest, fd), "lcfs_fd_measure_fsverity")
    return bytes(ffi.buffer(digest))


def enable_fsverity(fd: int) -> None:
    """Enable fs-verity (sha256, 4096-byte blocks) on the file open at ``fd``."""
    _check(lib.lcfs_fd_enable_fsverity(fd), "lcfs_fd_enable_fsverity")


# ---------------------------------------------------------------------------
# mounting
# ---------------------------------------------------------------------------


def _c_path(value: str | os.PathLike[str] | bytes | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount_image(
    path: str | os.PathLike[str] | bytes,
    mountpoint: str | os.PathLike[str] | bytes,
    *,
    objdirs: Sequence[str | os.PathLike[str] | bytes] = (),
    upperdir: str | os.PathLike[str] | bytes | None = None,
    workdir: str | os.PathLike[str] | bytes | None = None,
    flags: MountFlags = MountFlags.NONE,
    expected_digest: bytes | None = None,
    idmap_fd: int = -1,
    image_mountdir: str | os.PathLike[str] | bytes | None = None,
) -> None:
    """Mount the composefs image at ``path`` on ``mountpoint`` (lcfs_mount_image).

    ``objdirs`` are the object stores (data-only lower layers);
    ``expected_digest`` is the image's raw 32-byte fs-verity digest.
    """
    keep: list[Any] = []  # C strings must outlive the call

    def cstr(value: str | os.PathLike[str] | bytes | None) -> Any:
        raw = _c_path(value)
        if raw is None:
            return ffi.NULL
        cdata = ffi.new("char[]", raw)
        keep.append(cdata)
        return cdata

    options = ffi.new("struct lcfs_mount_options_s *")
    dirs = [cstr(d) for d in objdirs]
    objdir_array = ffi.new("const char *[]", [*dirs, ffi.NULL])
    options.objdirs = objdir_array
    options.n_objdirs = len(dirs)
    options.upperdir = cstr(upperdir)
    options.workdir = cstr(workdir)
    options.expected_fsverity_digest = cstr(
        None if expected_digest is None else expected_digest.hex()
    )
    options.flags = int(flags)
    options.idmap_fd = idmap_fd
    options.image_mountdir = cstr(image_mountdir)
    rc = lib.lcfs_mount_image(cstr(path), cstr(mountpoint), options)
    _check(rc, "lcfs_mount_image")
