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

Cost (DESIGN rule 7): writing reads the Tree's one storage form, its
:class:`~composefs_py._columns.Table`, never a node: the int columns are
gathered into Tree order by C (``cfspy_gather_rows``), the path and data
buffers too unless the rows are in Tree order already (a per-node build),
and only the rows with inline content, fs-verity digests or xattrs take a
Python loop (linear in their bytes, which the Tree's limits bounded when it
was built).  ``read_image`` checks the image's structure (``check_image``,
under ``Limits.for_images``) before libcomposefs's loader sees a byte, then
adds each node through a TreeBuilder, whose limits apply before each node
is kept.
"""

from __future__ import annotations

import dataclasses
import enum
import errno as _errno
import os
import stat
from array import array
from collections.abc import Iterable, Sequence
from itertools import islice
from operator import gt
from typing import TYPE_CHECKING, Any

from ._backend import check_versions
from ._columns import INT_FIELDS, Extra, Table
from ._erofs import check_image
from .errors import LibraryError, ValidationError
from .limits import Limits
from .model import Hardlink, Inode, Tree, TreeBuilder

if TYPE_CHECKING:
    import mmap

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
    "digest_files",
    "image_version",
    "measure_fsverity",
    "mount_image",
    "read_image",
    "check_framing",
    "write_records",
    "write_tree",
]

#: Must equal what ``cfspy_build_stamp()`` in csrc/shim.c returns; bump both
#: when the C side of the binding changes incompatibly.
BUILD_STAMP = "composefs-py-ffi-7"

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


# ---------------------------------------------------------------------------
# Tree -> C tree -> image
# ---------------------------------------------------------------------------


class _Columns:
    """What ``cfspy_build_tree`` reads (see shim.h), as Python buffers.

    Gathered in C from the Tree's rows (:class:`~composefs_py._columns.Table`)
    into Tree order, without a Python object per node; only the rows that
    carry inline content, fs-verity digests or xattrs take a loop of their own.
    """

    __slots__ = ("data", "data_lens", "extra", "extra_lens", "ints", "links", "path_lens",
                 "paths", "xattr_lens")  # fmt: skip
    paths: bytes | bytearray
    data: bytes | bytearray

    def __init__(self, tree: Tree) -> None:
        table = tree._table
        rows = table.order
        n = len(rows)
        c_rows = ffi.from_buffer("int64_t[]", rows)
        self.ints = array("q", bytes(8 * len(INT_FIELDS) * n))
        columns = [table.ints[name] for name in INT_FIELDS]
        lib.cfspy_gather_rows(
            n,
            c_rows,
            len(columns),
            ffi.new("int64_t *[]", [ffi.from_buffer("int64_t[]", column) for column in columns]),
            ffi.from_buffer("int64_t[]", self.ints),
        )
        in_order = rows == array("q", range(n))
        if in_order:  # already in Tree order (a per-node build)
            self.paths, self.path_lens = table.path_buf, table.path_lens
            self.data, self.data_lens = table.data_buf, table.data_lens
        else:
            self.paths, self.path_lens = _gathered(c_rows, table.path_buf, table.path_lens)
            self.data, self.data_lens = _gathered(c_rows, table.data_buf, table.data_lens)
        links = table.links
        # Read for this build only: a Table keeps its extras marshal'd, and the
        # dict of them (a tuple and a digest object per file) is not cached on it.
        extras = table.extras_once()
        self.extra = b""
        self.extra_lens: array[int] | None = None
        self.xattr_lens = array("q")
        if in_order:  # a row is its position
            pairs = sorted(links.items())
            self.links = array("q", [value for pair in pairs for value in pair])
            if extras:
                self._extras(n, sorted(extras.items()) if _unsorted(extras) else extras.items())
            return
        wanted = {*links, *links.values(), *extras}
        position = {row: at for at, row in enumerate(rows) if row in wanted} if wanted else {}
        pairs = sorted((position[row], position[target]) for row, target in links.items())
        self.links = array("q", [value for pair in pairs for value in pair])
        if extras:
            self._extras(n, sorted((position[row], extra) for row, extra in extras.items()))

    def _extras(self, n: int, found: Iterable[tuple[int, Extra]]) -> None:
        """The extra buffers of ``n`` nodes: ``found`` holds, by increasing
        position, the (content, fs-verity digest, xattrs) of those that have any."""
        lens = array("q", (-1, 0, 0)) * n
        pieces: list[bytes] = []
        xattr_lens = self.xattr_lens
        for i, (content, digest, xattrs) in found:
            # set item by item: an array per row cost half of this loop
            if content is not None:
                lens[3 * i] = len(content)
                pieces.append(content)
            if digest is not None:
                lens[3 * i + 1] = 1
                pieces.append(digest)
            if xattrs:
                lens[3 * i + 2] = len(xattrs)
                for name, value in xattrs:
                    pieces += (name, value)
                    xattr_lens.append(len(name))
                    xattr_lens.append(len(value))
        self.extra = b"".join(pieces)
        self.extra_lens = lens


def _unsorted(extras: dict[int, Extra]) -> bool:
    """Whether the rows of ``extras`` are not in increasing order."""
    return any(map(gt, extras, islice(extras, 1, None)))


def _gathered(rows: Any, buf: bytes, lens: array[int]) -> tuple[bytearray, array[int]]:
    """The pieces of ``buf`` (lengths ``lens``, -1: none) in the order of ``rows``."""
    out = bytearray(len(buf))
    out_lens = array("q", bytes(8 * len(lens)))
    lib.cfspy_gather_bytes(
        len(lens),
        rows,
        ffi.from_buffer("uint8_t[]", buf),
        ffi.from_buffer("int64_t[]", Table.starts(lens)),
        ffi.from_buffer("int64_t[]", lens),
        ffi.from_buffer("uint8_t[]", out),
        ffi.from_buffer("int64_t[]", out_lens),
    )
    return out, out_lens


def _build(tree: Tree) -> Any:
    """The C tree of ``tree`` (its root); the caller unrefs it."""
    columns = _Columns(tree)
    return _build_columns(
        len(tree),
        len(columns.links) // 2,
        len(columns.xattr_lens),
        columns.ints,
        columns.paths,
        columns.path_lens,
        columns.data,
        columns.data_lens,
        columns.links,
        columns.extra,
        columns.extra_lens,
        columns.xattr_lens,
        LibraryError,
    )


def _build_columns(
    n: int,
    n_links: int,
    n_xattr_lens: int,
    ints: Any,
    paths: Any,
    path_lens: Any,
    data: Any,
    data_lens: Any,
    links: Any,
    extra: Any,
    extra_lens: Any,
    xattr_lens: Any,
    rejected: type[LibraryError] | type[ValidationError],
) -> Any:
    """The C tree of the buffers ``cfspy_build_tree`` reads (see shim.h;
    ``n`` entries, ``n_links`` link pairs, ``n_xattr_lens`` xattr lengths):
    its root, which the caller unrefs.  A failure other than ENOMEM raises
    ``rejected`` (LibraryError for a Tree, ValidationError for records)."""
    failed_index = ffi.new("int64_t *")
    failed_call = ffi.new("const char **")
    root = lib.cfspy_build_tree(
        n,
        ffi.from_buffer("int64_t[]", ints),
        ffi.from_buffer("uint8_t[]", paths),
        len(paths),
        ffi.from_buffer("int64_t[]", path_lens),
        ffi.from_buffer("uint8_t[]", data),
        len(data),
        ffi.from_buffer("int64_t[]", data_lens),
        ffi.from_buffer("int64_t[]", links),
        n_links,
        ffi.from_buffer("uint8_t[]", extra),
        len(extra),
        ffi.NULL if extra_lens is None else ffi.from_buffer("int64_t[]", extra_lens),
        ffi.from_buffer("int64_t[]", xattr_lens),
        n_xattr_lens,
        failed_index,
        failed_call,
    )
    if root != ffi.NULL:
        return root
    err = ffi.errno or _errno.EIO
    what = ffi.string(failed_call[0]).decode() if failed_call[0] != ffi.NULL else "?"
    index = int(failed_index[0])
    path = None
    if index >= 0:
        lens = memoryview(path_lens).cast("B").cast("q")
        start = sum(lens[:index])
        path = bytes(paths[start : start + lens[index]])
        what = f"{what}({path.decode('utf-8', 'backslashreplace')})"
    if rejected is LibraryError or err == _errno.ENOMEM:
        raise LibraryError(err, f"{what}: {os.strerror(err)}")
    raise ValidationError(
        f"libcomposefs refuses the records: {what}: {os.strerror(err)}",
        entry=None if index < 0 else index,
    )


def check_framing(records: Sequence[bytes | bytearray | memoryview]) -> tuple[int, int]:
    """The framing of untrusted records (see :func:`write_records`), in C,
    one pass over each length buffer: ``(0, -1)``, or the rule broken first
    (``CFSPY_FRAMING_*`` in csrc/shim.h: 1 paths, 2 data, 3 extra, 4 links'
    order, 5 a link's target) and the hardlink entry it concerns (-1 for
    the others).

    The caller checked the buffers' sizes against the entry count
    (``_worker.check_sizes``): C reads ``n`` entries of each per-entry
    buffer and every pair of the pair buffers.
    """
    paths, path_lens, _, data, data_lens, links, extra, extra_lens, xattr_lens = records
    failed = ffi.new("int64_t *")
    rule = lib.cfspy_check_framing(
        len(path_lens) // 8,
        len(paths), ffi.from_buffer("int64_t[]", path_lens),
        len(data), ffi.from_buffer("int64_t[]", data_lens),
        len(extra), ffi.from_buffer("int64_t[]", extra_lens),
        ffi.from_buffer("int64_t[]", xattr_lens), len(xattr_lens) // 8,
        ffi.from_buffer("int64_t[]", links), len(links) // 16,
        failed,
    )  # fmt: skip
    return int(rule), int(failed[0])


def write_records(
    records: Sequence[bytes | bytearray | memoryview],
    fd: int,
    *,
    min_version: int = 0,
    max_version: int = 1,
) -> bytes:
    """Write the image of untrusted records to ``fd``; return its fs-verity digest.

    ``records`` are the buffers ``cfspy_build_tree`` reads, in its order:
    ``(paths, path_lens, ints, data, data_lens, links, extra, extra_lens,
    xattr_lens)``, the int buffers int64 in this machine's byte order.  Only
    their sizes are checked here (C reads ``n`` entries of each per-entry
    buffer, and ``cfspy_build_tree`` takes every piece of a byte buffer
    within its bounds); what libcomposefs refuses in them raises
    ValidationError.  The sandboxed child writes with this: the parent
    proved the Tree they come from.
    """
    check_versions(min_version, max_version)
    if len(records) != 9:
        raise ValueError("records must be 9 buffers")
    paths, path_lens, ints, data, data_lens, links, extra, extra_lens, xattr_lens = records
    n = len(path_lens) // 8
    if not (
        n > 0
        and len(path_lens) == len(data_lens) == 8 * n
        and len(ints) == 8 * len(INT_FIELDS) * n
        and len(extra_lens) == 24 * n
        and len(links) % 16 == 0
        and len(xattr_lens) % 16 == 0
    ):
        raise ValueError("the records' buffers do not hold the same number of entries")
    root = _build_columns(
        n, len(links) // 16, len(xattr_lens) // 8,
        ints, paths, path_lens, data, data_lens, links, extra, extra_lens, xattr_lens,
        ValidationError,
    )  # fmt: skip
    return _write_root(root, fd, min_version, max_version)


def _write_root(root: Any, fd: int, min_version: int, max_version: int) -> bytes:
    """Write the C tree ``root`` to ``fd`` and unref it; its fs-verity digest."""
    try:
        digest = ffi.new("uint8_t[]", DIGEST_SIZE)
        _check(lib.cfspy_write_to_fd(root, fd, min_version, max_version, digest), "lcfs_write_to")
    finally:
        lib.lcfs_node_unref(root)
    return bytes(ffi.buffer(digest))


def write_tree(tree: Tree, fd: int, *, min_version: int = 0, max_version: int = 1) -> bytes:
    """Write the EROFS composefs image of ``tree`` to ``fd``; return its fs-verity digest.

    The image is byte-identical to ``mkcomposefs --from-file`` on ``dump(tree)``
    with the same ``--min-version``/``--max-version``.  ``fd`` is written
    sequentially from its current position (a pipe works); it is not closed.
    The C tree is built in one C call (``cfspy_build_tree``), then written and
    freed; the Python buffers it was built from go before the writing, so
    they and the image writer's memory never add up.
    """
    check_versions(min_version, max_version)
    root = _build(tree)
    # Where the caller handed over its last reference (writer._write_held),
    # the Tree goes now, before libcomposefs writes the image: the writer's
    # memory then reuses the Tree's instead of adding to it.
    del tree
    return _write_root(root, fd, min_version, max_version)


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


#: What an image may hold (xattrs libcomposefs added itself included).
_IMAGE_LIMITS = Limits().for_images()


def _address(cnode: Any) -> int:
    return int(ffi.cast("uintptr_t", cnode))


def read_image(data: bytes | bytearray | memoryview, limits: Limits | None = None) -> Tree:
    """Parse a composefs image into a validated :class:`Tree`.

    ``limits`` (default ``Limits()``) bound the Tree, as
    :meth:`Limits.for_images` applies them to images libcomposefs wrote.

    The image is untrusted: :func:`~composefs_py._erofs.check_image` checks
    its structure before libcomposefs's loader (which trusts offsets, sizes
    and indexes) sees a byte; what it, libcomposefs or the
    :class:`TreeBuilder` rejects raises ValidationError.  What EROFS does not
    keep cannot come back (see the dumpfile round-trip notes).
    """
    # A bytes object: the loader reads up to 2 bytes past an overlay
    # redirect value at the very end, and CPython ends bytes with a NUL.
    data = data if isinstance(data, bytes) else bytes(data)
    # The check also finds what libcomposefs 1.0.8's loader misreads: a
    # payload with the 2 bytes after its redirect value appended, a last
    # inline xattr of 4 bytes dropped.  Those come from the check instead.
    image_limits = _IMAGE_LIMITS if limits is None else limits.for_images()
    summary = check_image(data, limits=image_limits)
    misread, dropped = summary.payloads, summary.dropped_xattrs
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
        builder = TreeBuilder(image_limits)
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
                inode = _read_inode(cnode)
                if misread and path in misread:
                    inode = dataclasses.replace(inode, payload=misread[path])
                if dropped and path in dropped and dropped[path] not in dict(inode.xattrs):
                    xattrs = tuple(sorted((*inode.xattrs, (dropped[path], b""))))
                    inode = dataclasses.replace(inode, xattrs=xattrs)
                builder.add(path, inode, entry=index)
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


def digest_files(
    fds: Sequence[int], sizes: Sequence[int], buffer: bytearray | mmap.mmap, readahead: int
) -> tuple[bytes, array[int], array[int]]:
    """fs-verity digests of the open regular files ``fds`` (``cfspy_digest_files``,
    one call for all, the GIL released): the digests joined (32 bytes each),
    per file (bytes read, ``st_size``, ``st_mtime`` ns after the read) joined,
    and the errno of each (0: read).  Every fd is closed.  ``buffer``: the
    read buffer, writable, used by this call alone."""
    n = len(fds)
    digests = bytearray(32 * n)
    stats = array("q", bytes(24 * n))
    errors = array("i", bytes(4 * n))
    cbuffer = ffi.from_buffer("uint8_t[]", buffer, require_writable=True)
    rc = lib.cfspy_digest_files(
        n,
        ffi.new("int[]", fds),
        ffi.new("int64_t[]", sizes),
        cbuffer,
        len(cbuffer),
        readahead,
        ffi.from_buffer("uint8_t[]", digests),
        ffi.from_buffer("int64_t[]", stats),
        ffi.from_buffer("int[]", errors),
    )
    if rc < 0:
        raise MemoryError("no buffer to read the files")
    return bytes(digests), stats, errors


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
