"""Structural check of a composefs image before libcomposefs reads it.

libcomposefs 1.0.8's image loader (``lcfs_load_node_from_image`` in
lcfs-writer-erofs.c) trusts the bytes it is given: block addresses, directory
entries, shared xattr indexes and xattr sizes are used without bounds checks,
and a whiteout referenced twice is used after it was freed.  :func:`check_image`
walks the image the way the loader does and rejects, with a
:class:`~composefs_py.errors.ValidationError` naming the inode (its nid and
byte offset) and the field, everything the loader would read out of bounds or
misuse, and everything libcomposefs never writes:

* the composefs header (magic, format version 1, flags, composefs version
  0..1) and the EROFS superblock (magic, 4 KiB blocks, only the feature bits
  libcomposefs writes, metadata and shared xattr areas inside the image, the
  root a directory);
* every inode reachable from the root, once: its slot inside the image,
  compact or extended layout, known i_format bits and file type, the data
  layouts libcomposefs writes (flat plain or flat inline for directories and
  symlinks, and for regular files also chunk-based), sizes (an inline tail of
  1..4095 bytes that does not cross a block boundary; inline file content at
  most ``LCFS_INLINE_CONTENT_MAX``; symlink targets of 1..4095 bytes without
  NUL), data blocks inside the image;
* directory blocks: the dirent table and every name inside the block, names
  of 1..255 bytes without NUL or ``/``, sorted and unique across the whole
  directory, ``.`` naming the directory itself and ``..`` its parent,
  entry nids inside the image, file types that match the inode, every
  directory and every whiteout referenced exactly once (no cycle, no
  hardlinked directory, no second reference to a whiteout the loader frees),
  nesting at most ``max_depth`` directories below the root;
* xattrs, inline and shared: the ibody header and shared index array inside
  the inode's xattr area, every entry (header, name, value) inside its area,
  shared entries inside the image at an index the loader's 32-bit arithmetic
  does not wrap, known name prefix indexes, names without NUL, of 1..255
  bytes once unescaped (``trusted.overlay.overlay.X`` is stored as
  ``trusted.overlay.X``), no name twice on one inode, the space libcomposefs accounts
  for them within its 65535-byte limit.

The loader also reads up to 2 bytes past an overlay redirect's value (it
copies it with ``strndup(value + 1, size + 1)``); that is safe only for a
buffer followed by a NUL byte, which is why ``_native.read_image`` hands it a
``bytes`` object (CPython keeps a NUL after the last byte).

Cost model (DESIGN rule 7).  An image is a compact form of a tree: a block
listed by two directories, or an inode read inside another, would make the
loader build more than the image holds (40 directories sharing 1600
hardlinks, 49 KB, became 64k nodes; twice that, 254k).  So the check, and
through it the loader, does work linear in the image's size:

* Each byte is read once.  A bitmap of the image (one mark per 4 bytes,
  ``len(data) / 4`` bytes of memory) is marked for the header and
  superblock, for each inode with its xattr area and inline tail *before*
  they are parsed, for each data block range of a directory, symlink or
  inline file *before* its dirents are read, and for each shared xattr
  entry the first time an index names it.  A second mark is refused
  (``nid``, ``i_u.raw_blkaddr``, ``xattr``): no dirent block, inode or
  xattr is parsed twice, so entries, inodes and xattrs are each at most
  ``len(data) / 12``; a directory is entered once (no cycle, no hardlinked
  directory), a whiteout once.  A hardlink (an entry naming a known
  non-directory inode) costs its dirent only, but is counted as an entry.
* Totals are checked as the walk meets them, all before
  ``lcfs_load_node_from_image`` runs, against the ``Limits`` ``read_image``
  passes (``Limits().for_images()``): entries, the root included, against
  ``max_entries`` (field ``entries``); each path's length against
  ``max_path_bytes`` (``path``), their sum against ``max_total_path_bytes``
  (``path_bytes``: ``read_image`` makes every path a Tree key); nesting
  against ``max_depth`` (``depth``: the loader recurses once per level,
  on ``writer.read_image``'s 64 MiB thread or the sandbox child's raised
  stack); per inode, the xattr space as libcomposefs accounts it against
  ``max_xattr_space`` (``xattr``) and a redirect payload against
  ``max_path_bytes`` (``xattr``); and the bytes the loaded tree holds -- path
  bytes plus, per inode, its stored xattrs (a shared xattr counted for every
  inode that holds it: one entry may be named by all), payload, symlink
  target and content -- against ``max_input_bytes`` (``tree_bytes``), the
  bound of an input document describing the same tree.
* The loader's inode table (gnulib hash, ``nid % buckets``, grows only when
  80% of its buckets are in use) is replayed in the loader's order (the
  walk's: depth first, a directory's entries in order, a new directory
  entered where it is met): nids that crowd a few buckets would make every
  lookup walk all of them (quadratic); more than 16 chain entries per lookup
  is refused (``nid``).  A small image is spared the replay when a bound
  proves it within that budget (no chain holds more than the inodes, nor
  more nids of one residue than their span allows at the first table
  size); the replay is exact otherwise.
* What stays in the loader is then linear: children arrive sorted (checked
  here), so lcfs_node_add_child appends after a binary search; the xattrs
  of one inode are matched by name against those before them (quadratic in
  their number, which ``max_xattr_space`` bounds: at most about 2,500,
  since each takes at least 13 bytes).
* The check itself: each inode, dirent, xattr entry and block once (an
  inode of one 32-byte slot marked as one word of the bitmap); a
  directory block's dirent table in one unpack, its names' bounds, bytes
  and order compared in bulk (C loops over the block, not a Python step
  per check); an inode's xattr area of shared indexes and at most one
  inline entry remembered by its bytes up to that entry's value (a
  dictionary no larger than the areas read); a path built only for a
  directory (the stack) or a reported error; the replay's array of nids
  (8 bytes an entry) and bucket counts; no recursion.

Chunk indexes (which the loader never reads) and the xattr name filter are
not checked.
"""

from __future__ import annotations

import stat
import struct
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from itertools import islice
from operator import lt, sub

from .errors import ValidationError
from .limits import Limits

__all__ = ["ImageSummary", "check_image"]

BLOCK_SIZE = 4096
_BLOCK_BITS = 12
_SLOT_BITS = 5
SUPER_OFFSET = 1024
LCFS_EROFS_MAGIC = 0xD078629A
LCFS_EROFS_VERSION = 1
LCFS_VERSION_MAX = 1
_LCFS_FLAGS_ALL = 0x1  # LCFS_EROFS_FLAGS_HAS_ACL
EROFS_MAGIC = 0xE0F5E1E2
#: EROFS_FEATURE_COMPAT_SB_CHKSUM | _MTIME | _XATTR_FILTER.
_COMPAT_KNOWN = 0x1 | 0x2 | 0x4
#: EROFS_FEATURE_INCOMPAT_CHUNKED_FILE (libcomposefs writes none).
_INCOMPAT_KNOWN = 0x4
#: libcomposefs's LCFS_INLINE_CONTENT_MAX and its loader's PATH_MAX.
INLINE_CONTENT_MAX = 5000
_PATH_MAX = 4096
_NAME_MAX = 255
_XATTR_NAME_MAX = 255
#: What lcfs_node_set_xattr_internal allows a node read from an image.
_XATTR_SPACE_MAX = 0xFFFF
#: The loader computes ``raw_blkaddr * 4096`` and ``index * 4`` in 32 bits.
_U32_LIMIT = 1 << 32

_FLAT_PLAIN = 0
_FLAT_INLINE = 2
_CHUNK_BASED = 4
_CHUNK_FORMAT_BLKBITS_MASK = 0x1F
_CHUNK_FORMAT_UNKNOWN = 0xFFFF & ~_CHUNK_FORMAT_BLKBITS_MASK
_I_ALL = 0xF
_I_UNKNOWN = 0xFFFF & ~_I_ALL
#: A 32-byte slot's 8 marks (one per 4 bytes) as one native word.
_SLOT_MARKS = int.from_bytes(b"\1" * 8, "little")

_HEADER = struct.Struct("<IIII")
# magic checksum feature_compat blkszbits sb_extslots root_nid inos build_time
# build_time_nsec blocks meta_blkaddr xattr_blkaddr uuid volume_name
# feature_incompat u1 extra_devices devt_slotoff dirblkbits xattr_prefix_count
# xattr_prefix_start packed_nid xattr_filter_reserved reserved2
_SUPER = struct.Struct("<IIIBBHQQIIII16s16sIHHHBBIQB23x")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
# i_format i_xattr_icount i_mode i_nlink i_size i_reserved i_u ...
_COMPACT = struct.Struct("<HHHHIII")
_COMPACT_SIZE = 32
# i_format i_xattr_icount i_mode i_reserved i_size i_u ...
_EXTENDED = struct.Struct("<HHHHQI")
_EXTENDED_SIZE = 64
_DIRENT = struct.Struct("<QHBB")
#: A dirent table of n entries, by n (at most 341 in a block).
_DIRENT_TABLES: dict[int, struct.Struct] = {}
_XATTR_ENTRY = struct.Struct("<BBH")
_XATTR_HEADER_SIZE = 12

_S_IFREG, _S_IFDIR, _S_IFLNK, _S_IFCHR = stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR
#: EROFS dirent file types (EROFS_FT_*) by file type.
_FILE_TYPES = {
    _S_IFREG: 1,
    _S_IFDIR: 2,
    _S_IFCHR: 3,
    stat.S_IFBLK: 4,
    stat.S_IFIFO: 5,
    stat.S_IFSOCK: 6,
    _S_IFLNK: 7,
}
#: The dirent file type of each kind of inode the walk records (-1: a whiteout).
_DIRENT_TYPES = {**_FILE_TYPES, -1: _FILE_TYPES[_S_IFCHR]}
_DIRENT_DIR = _FILE_TYPES[_S_IFDIR]

#: erofs_xattr_prefixes[] in lcfs-erofs-internal.h, by e_name_index.
_XATTR_PREFIXES = (
    b"",
    b"user.",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
    b"trusted.",
    b"lustre.",
    b"security.",
)
_OVERLAY = b"trusted.overlay."
_OVERLAY_ESCAPE = b"trusted.overlay.overlay."
#: Names the loader consumes or skips without storing them on the node.
_NOT_STORED = frozenset(
    {
        b"trusted.overlay.redirect",
        b"trusted.overlay.metacopy",
        b"trusted.overlay.overlay.whiteouts",
        b"user.overlay.whiteout",
        b"user.overlay.whiteouts",
    }
)
_ESCAPED_WHITEOUT = b"trusted.overlay.overlay.whiteout"
_REDIRECT = b"trusted.overlay.redirect"


@dataclass(frozen=True, slots=True)
class ImageSummary:
    """What :func:`check_image` walked: the image's format and its counts."""

    #: The composefs format version in the header (0 or 1).
    version: int
    #: Distinct inodes reachable from the root (the root included).
    inodes: int
    #: Directories among them.
    directories: int
    #: Directory entries other than ``.`` and ``..``.
    entries: int
    #: Deepest directory below the root (the root is 0).
    depth: int
    #: Path -> payload, for every path of a regular file whose payload the
    #: loader misreads (the redirect over-read: up to 2 bytes that follow
    #: the value end up in the payload); the image's payload is this one.
    payloads: dict[bytes, bytes] = field(default_factory=dict)
    #: Path -> xattr name, for every path of an inode whose last inline xattr
    #: the loader drops (it reads entries while ``entry + 4 < end``: a last
    #: entry of 4 bytes, a name stored as a prefix alone with an empty value,
    #: is never read); the image holds that name with an empty value.
    dropped_xattrs: dict[bytes, bytes] = field(default_factory=dict)
    #: Sum of the lengths of all paths but the root's.
    path_bytes: int = 0
    #: What the loaded tree holds: path bytes, and per inode its stored
    #: xattr space, payload, symlink target and inline content.
    tree_bytes: int = 0


def _f32(value: float) -> float:
    """``value`` rounded to a C ``float`` (IEEE single precision)."""
    return float(_F32.unpack(_F32.pack(value))[0])


_F32 = struct.Struct("<f")
#: gnulib hash.c's default tuning, as the C floats it computes with.
_GROWTH_THRESHOLD = _f32(0.8)
_GROWTH_FACTOR = _f32(1.414)
#: What the loader's inode table may cost: bucket entries walked per lookup,
#: on average, and a constant for small images.  libcomposefs's own images
#: walk about two per lookup (their nids are dense: the 100k-entry upstream
#: assets 2.0 to 2.3, a lookup and an insert per inode).
_CHAIN_STEPS_PER_LOOKUP = 16
_CHAIN_STEPS_SLACK = 1 << 16


def _next_prime(candidate: int) -> int:
    """gnulib hash.c's next_prime (primes below 10 skipped)."""
    candidate = max(candidate, 10) | 1
    while True:
        divisor, square = 3, 9
        while square < candidate and candidate % divisor:
            divisor += 1
            square += 4 * divisor
            divisor += 1
        if candidate % divisor:
            return candidate
        candidate += 2


def _bucket_size(candidate: int) -> int:
    """gnulib hash.c's compute_bucket_size with the default tuning."""
    return _next_prime(int(_f32(_f32(candidate) / _GROWTH_THRESHOLD)))


@cache
def _table_size(buckets: int) -> tuple[int, int]:
    """The table hash_insert grows one of ``buckets`` buckets into, and its limit.

    (The sizes are the same for every image: each is computed once.)  The
    limit is the most buckets in use before the next growth.
    """
    size = _bucket_size(int(_f32(_f32(buckets * _GROWTH_FACTOR) * _GROWTH_THRESHOLD)))
    return size, int(_f32(_GROWTH_THRESHOLD * size))


class _NidTable:
    """The loader's table of the inodes it met, and what looking them up costs.

    lcfs_load_node_from_image keeps every inode it meets in a gnulib hash
    table keyed by ``nid % buckets``, which grows only when more than 80% of
    its *buckets* are in use: inodes whose nids fall in a few buckets never
    make it grow, and every lookup walks a chain as long as their number (80k
    inodes in 7.5 MB: 6 s instead of 1 s, quadratic).  This replays the
    table (same sizes, same growth, same float rounding) and counts the
    chain entries the loader would walk.
    """

    __slots__ = ("buckets", "counts", "used", "limit")

    def __init__(self, root_nid: int) -> None:
        # hash_initialize's table (its size as a growth from 0 buckets),
        # and the most buckets in use before hash_insert grows it.
        self.buckets, self.limit = _table_size(0)
        # Entries in each bucket's chain, and the buckets in use.
        self.counts = [0] * self.buckets
        self.counts[root_nid % self.buckets] = self.used = 1

    def grow(self, nids: Iterable[int]) -> None:
        """hash_insert's rehash of ``nids``, once more than 80% of the buckets are in use."""
        size, limit = _table_size(self.buckets)
        if size != self.buckets:
            counts = [0] * size
            for nid in nids:
                counts[nid % size] += 1
            self.buckets, self.counts, self.limit = size, counts, limit
            self.used = size - counts.count(0)


class _Bad(Exception):
    """A problem inside one inode: (reason after its name, field)."""


_S_IFMT = 0o170000
_FLAT = (_FLAT_PLAIN, _FLAT_INLINE)
_FLAT_OR_CHUNKS = (_FLAT_PLAIN, _FLAT_INLINE, _CHUNK_BASED)
_PLAIN = (_FLAT_PLAIN,)


def _layout(layout: int, allowed: tuple[int, ...]) -> None:
    if layout not in allowed:
        raise _Bad(f": data layout {layout} is not one libcomposefs reads", "i_format")


def _join(directory: bytes, name: bytes) -> bytes:
    return directory + b"/" + name if directory != b"/" else b"/" + name


def _fail(reason: str, field: str, path: bytes | None = None) -> ValidationError:
    return ValidationError(f"not a valid composefs image: {reason}", path=path, field=field)


class _Checker:
    __slots__ = (
        "data",
        "size",
        "meta_start",
        "xattr_start",
        "limits",
        "xattr_space",
        "max_depth",
        "used",
        "slots",
        "path_bytes",
        "tree_bytes",
        "inodes",
        "shared",
        "inline",
        "groups",
        "regular_areas",
        "other_areas",
        "max_payload",
        "directories",
        "entries",
        "depth",
        "order",
        "misread",
        "payloads",
        "dropped",
        "dropped_xattrs",
    )

    def __init__(self, data: bytes, limits: Limits, max_depth: int) -> None:
        self.data = data
        self.size = len(data)
        self.limits = limits
        self.xattr_space = min(_XATTR_SPACE_MAX, limits.max_xattr_space)
        self.max_depth = max_depth
        self.meta_start = 0
        self.xattr_start = 0
        # One mark per 4 bytes of the image: set where something was read
        # (the header and superblock, an inode with its xattrs and inline
        # tail, a data block range, a shared xattr entry).  Nothing is read
        # twice, so the walk and what the loader builds from it stay
        # linear in the image's size.
        header = (SUPER_OFFSET + _SUPER.size) >> 2
        self.used = bytearray(max(-(-self.size // 32) * 8, header))
        self.used[:header] = b"\1" * header
        # The same marks 8 at a time: one word per 32-byte inode slot.
        self.slots = memoryview(self.used).cast("Q")
        # Sum of the lengths of every path (Limits.max_total_path_bytes) and
        # of every byte the tree holds: paths, and per inode its stored
        # xattrs, payload, symlink target and content (Limits.max_input_bytes).
        self.path_bytes = 0
        self.tree_bytes = 0
        # The nid of every entry, in the loader's order (the walk's).
        self.order = array("Q")
        # nid -> file type, or -1 for a whiteout the loader frees.
        self.inodes: dict[int, int] = {}
        # shared xattr index -> what _entry() found there; an inline entry's
        # header and name -> (its name, value size, costs); an array of
        # shared indexes -> what _shared() found.
        self.shared: dict[int, tuple[bytes, int, int, int]] = {}
        self.inline: dict[bytes, tuple[bytes, int, int, int]] = {}
        self.groups: dict[bytes, tuple[tuple[bytes, ...], int, int, int, int]] = {}
        # An xattr area's bytes up to its one inline entry's value, on a
        # regular file and on anything else -> (that value's size, what the
        # inode holds but the redirect's payload, where a shared redirect's
        # value starts, its size).
        self.regular_areas: dict[bytes, tuple[int, int, int, int]] = {}
        self.other_areas: dict[bytes, tuple[int, int, int, int]] = {}
        # A redirect's value is '/' and a payload of at most max_path_bytes.
        self.max_payload = limits.max_path_bytes + 1
        self.directories = 0
        self.entries = 0
        self.depth = 0
        # nid -> the payload of a regular file whose redirect the loader
        # over-reads; path -> that payload, for each path of such a file.
        self.misread: dict[int, bytes] = {}
        self.payloads: dict[bytes, bytes] = {}
        # nid -> the xattr name the loader drops from that inode; path ->
        # that name, for each path of such an inode.
        self.dropped: dict[int, bytes] = {}
        self.dropped_xattrs: dict[bytes, bytes] = {}

    # -- superblock --------------------------------------------------------

    def superblock(self) -> tuple[int, int]:
        data = self.data
        if self.size < BLOCK_SIZE:
            raise _fail(f"{self.size} bytes, an image has at least one 4096-byte block", "size")
        magic, version, flags, cfs_version = _HEADER.unpack_from(data, 0)
        if magic != LCFS_EROFS_MAGIC:
            raise _fail(f"0x{magic:08x} is not the composefs magic number", "header.magic")
        if version != LCFS_EROFS_VERSION:
            raise _fail(f"header version {version} (only 1 is known)", "header.version")
        if flags & ~_LCFS_FLAGS_ALL:
            raise _fail(f"unknown header flags 0x{flags:x}", "header.flags")
        if cfs_version > LCFS_VERSION_MAX:
            raise _fail(
                f"composefs format version {cfs_version} (0..{LCFS_VERSION_MAX} are known)",
                "header.composefs_version",
            )
        fields = _SUPER.unpack_from(data, SUPER_OFFSET)
        (magic, _csum, compat, blkszbits, _ext, root_nid, _inos, _bt, _btn, _blocks) = fields[:10]
        meta_blkaddr, xattr_blkaddr = fields[10], fields[11]
        incompat, extra_devices, dirblkbits, prefix_count = (
            fields[14],
            fields[16],
            fields[18],
            fields[19],
        )
        if magic != EROFS_MAGIC:
            raise _fail(f"0x{magic:08x} is not the EROFS magic number", "superblock.magic")
        if blkszbits != _BLOCK_BITS:
            raise _fail(
                f"block size 2^{blkszbits}: libcomposefs reads 4096-byte blocks only",
                "superblock.blkszbits",
            )
        if compat & ~_COMPAT_KNOWN:
            raise _fail(f"unknown compatible features 0x{compat:x}", "superblock.feature_compat")
        if incompat & ~_INCOMPAT_KNOWN:
            raise _fail(
                f"features libcomposefs does not read: 0x{incompat & ~_INCOMPAT_KNOWN:x}",
                "superblock.feature_incompat",
            )
        if extra_devices:
            raise _fail(f"{extra_devices} extra devices", "superblock.extra_devices")
        if dirblkbits:
            raise _fail(f"directory block bits {dirblkbits} (must be 0)", "superblock.dirblkbits")
        if prefix_count:
            raise _fail(f"{prefix_count} long xattr name prefixes", "superblock.xattr_prefix_count")
        self.meta_start = self._area(meta_blkaddr, "superblock.meta_blkaddr")
        self.xattr_start = self._area(xattr_blkaddr, "superblock.xattr_blkaddr")
        return int(cfs_version), int(root_nid)

    def _area(self, blkaddr: int, field: str) -> int:
        start = blkaddr * BLOCK_SIZE
        if start >= _U32_LIMIT or start >= self.size:
            raise _fail(f"block {blkaddr} is outside the image ({self.size} bytes)", field)
        return start

    # -- inodes ------------------------------------------------------------

    def inode(self, nid: int, parent: bytes, name: bytes) -> tuple[int, int, int, int, int]:
        """Check inode ``nid``; return (file type, size, layout, tail offset, block address).

        It is entry ``name`` of directory ``parent`` (the root: ``/`` and no
        name).  The tail offset is where inline data starts (after the
        xattrs).
        """
        try:
            return self._inode(nid)
        except _Bad as bad:
            raise self._inode_error(nid, bad, _join(parent, name) if name else parent) from None

    def _inode_error(self, nid: int, bad: _Bad, path: bytes) -> ValidationError:
        off = self.meta_start + (nid << _SLOT_BITS)
        return _fail(f"inode {nid} at byte {off}{bad.args[0]}", bad.args[1], path)

    def _inode(self, nid: int) -> tuple[int, int, int, int, int]:
        data = self.data
        image_size = self.size
        off = self.meta_start + (nid << _SLOT_BITS)
        if off + _COMPACT_SIZE > image_size:
            raise _Bad(f" is outside the image ({image_size} bytes)", "nid")
        i_format, icount, mode, _n, size, _r, i_u = _COMPACT.unpack_from(data, off)
        if i_format & _I_UNKNOWN:
            raise _Bad(f": unknown bits 0x{i_format:x}", "i_format")
        if i_format & 1:
            body = off + _EXTENDED_SIZE
            if body > image_size:
                raise _Bad(": extended inode runs past the image end", "nid")
            _f, icount, mode, _r, size, i_u = _EXTENDED.unpack_from(data, off)
        else:
            body = off + _COMPACT_SIZE
        ftype = mode & _S_IFMT
        if ftype not in _FILE_TYPES:
            raise _Bad(f": unknown file type in mode 0o{mode:o}", "i_mode")
        if icount:
            tail_start = body + _XATTR_HEADER_SIZE + (icount - 1) * 4
            if tail_start > image_size:
                raise _Bad(": xattr area runs past the image end", "i_xattr_icount")
        else:
            tail_start = body
        layout = i_format >> 1
        tail = 0
        if layout == _FLAT_INLINE:
            tail = size % BLOCK_SIZE
            if tail == 0:
                raise _Bad(": inline layout without inline data", "i_size")
            if tail_start + tail > image_size:
                raise _Bad(": inline data runs past the image end", "i_size")
            if tail_start // BLOCK_SIZE != (tail_start + tail - 1) // BLOCK_SIZE:
                raise _Bad(": inline data crosses a block boundary", "i_size")
        # The inode, its xattr area and its inline tail, claimed before a
        # byte of them is parsed: no other inode may read them again.
        stop = tail_start + tail
        if stop - off == _COMPACT_SIZE:  # one slot: its word of marks
            slot = off >> _SLOT_BITS
            if self.slots[slot]:
                raise _Bad(": its 32 bytes overlap another inode or data already read", "nid")
            self.slots[slot] = _SLOT_MARKS
        else:
            used = self.used
            first, last = off >> 2, (stop + 3) >> 2
            if used.find(1, first, last) >= 0:
                raise _Bad(
                    f": its {stop - off} bytes overlap another inode or data already read", "nid"
                )
            used[first:last] = b"\1" * (last - first)
        held = 0
        if icount:
            # An xattr area like one already checked (see xattrs()).
            pos = body + _XATTR_HEADER_SIZE + 4 * data[body + 4]
            value_start = pos + 4 + data[pos] if pos + 4 <= tail_start else pos
            area = (self.regular_areas if ftype == _S_IFREG else self.other_areas).get(
                data[body:value_start]
            )
            if area is not None and (value_start + area[0] + 3) & ~3 == tail_start:
                _value_size, held, redirect_start, redirect_size = area
                if redirect_size:
                    # Its size was checked; what follows it, if not a NUL,
                    # makes the loader misread the payload.
                    redirect_start = redirect_start or value_start
                    redirect_end = redirect_start + redirect_size
                    if redirect_end < image_size and data[redirect_end]:
                        self.redirect(redirect_start, redirect_size, nid)
                    held += redirect_size
            else:
                held = self.xattrs(body, tail_start, ftype, nid)
        if ftype == _S_IFREG:
            if layout == _CHUNK_BASED:
                if i_u & _CHUNK_FORMAT_UNKNOWN:
                    raise _Bad(f": chunk format 0x{i_u & 0xFFFF:x}", "i_u.c.format")
            elif layout not in _FLAT:
                raise _Bad(f": data layout {layout} is not one libcomposefs reads", "i_format")
            elif size:
                if size > min(INLINE_CONTENT_MAX, image_size):
                    raise _Bad(
                        f": {size} bytes of content stored in the image "
                        f"(at most {INLINE_CONTENT_MAX})",
                        "i_size",
                    )
                self._blocks(i_u, size - tail)
                held += size
        elif ftype == _S_IFDIR:
            if layout not in _FLAT:
                _layout(layout, _FLAT)
            if size - tail:
                self._blocks(i_u, size - tail)
        elif ftype == _S_IFLNK:
            if layout not in _FLAT:
                _layout(layout, _FLAT)
            if not 0 < size < _PATH_MAX:
                raise _Bad(f": symlink target of {size} bytes", "i_size")
            start = tail_start if tail else self._blocks(i_u, size)
            if data.find(b"\0", start, start + size) >= 0:
                raise _Bad(": symlink target holds a NUL byte", "symlink")
            held += size
        else:
            if layout:
                _layout(layout, _PLAIN)
            if size:
                raise _Bad(f": a device, fifo or socket of {size} bytes", "i_size")
            if ftype == _S_IFCHR and i_u == 0:
                if held:
                    self.hold(held)
                return -1, 0, layout, 0, 0
        if held:
            self.tree_bytes += held
            if self.tree_bytes > self.limits.max_input_bytes:
                self.hold(0)
        return ftype, size, layout, tail_start, i_u

    def _blocks(self, blkaddr: int, length: int) -> int:
        """Check and claim ``length`` bytes from block ``blkaddr``; return their offset."""
        start = blkaddr * BLOCK_SIZE
        if length and (start >= _U32_LIMIT or start + length > self.size):
            raise _Bad(
                f": {length} data bytes from block {blkaddr} run past the image end",
                "i_u.raw_blkaddr",
            )
        if not self.claim(start, start + length):
            raise _Bad(
                f": {length} data bytes from block {blkaddr} overlap bytes "
                "already read: another inode's data, an inode or the superblock "
                "(each block is read once)",
                "i_u.raw_blkaddr",
            )
        return start

    def claim(self, start: int, end: int) -> bool:
        """Mark bytes ``start..end`` read; False (and nothing marked) if one already was."""
        if end <= start:
            return True
        first, last = start >> 2, (end + 3) >> 2
        used = self.used
        if used.find(1, first, last) >= 0:
            return False
        used[first:last] = b"\1" * (last - first)
        return True

    def hold(self, count: int) -> None:
        """Count ``count`` more bytes the loaded tree holds (Limits.max_input_bytes)."""
        self.tree_bytes += count
        if self.tree_bytes > self.limits.max_input_bytes:
            raise _Bad(
                f": the tree it stands for holds more than {self.limits.max_input_bytes} "
                "bytes (paths, xattrs, payloads, targets, contents)",
                "tree_bytes",
            )

    # -- xattrs ------------------------------------------------------------

    def xattrs(self, start: int, end: int, ftype: int, nid: int) -> int:
        """Check inode ``nid``'s xattr area; note what the loader will misread.

        Returns the bytes the loaded inode holds for them: its xattr space
        as libcomposefs accounts it, and the payload of a redirect.  An area
        of shared indexes and at most one inline entry is remembered by its
        bytes up to that entry's value (the header, the indexes, the
        entry's header and name): :meth:`_inode` only compares the size of
        the next such area, on an inode of the same kind, and checks its
        redirect.
        """
        data = self.data
        regular = ftype == _S_IFREG
        pos = start + _XATTR_HEADER_SIZE + 4 * data[start + 4]
        if pos == end:
            value_start = end
        elif pos + 4 <= end:
            value_start = pos + 4 + data[pos]
        else:
            return self._xattrs(start, end, regular, nid)
        key = data[start:value_start]
        areas = self.regular_areas if regular else self.other_areas
        held = self._xattrs(start, end, regular, nid)
        if nid in self.dropped:
            return held
        value_size = redirect_start = redirect_size = 0
        if pos != end:
            name, value_size = self.inline[data[pos:value_start]][:2]
            if (value_start + value_size + 3) & ~3 != end:
                return held  # more than one inline entry
            if regular and name == _REDIRECT:
                redirect_size = value_size
        if regular and pos != start + _XATTR_HEADER_SIZE and not redirect_size:
            redirect_start, redirect_size = self.groups[data[start + _XATTR_HEADER_SIZE : pos]][3:]
        areas[key] = (value_size, held - redirect_size, redirect_start, redirect_size)
        return held

    def _xattrs(self, start: int, end: int, regular: bool, nid: int) -> int:
        """Check inode ``nid``'s xattr area entry by entry (see :meth:`xattrs`)."""
        data = self.data
        shared = data[start + 4]
        first = start + _XATTR_HEADER_SIZE
        pos = first + 4 * shared
        if pos > end:
            raise _Bad(f": {shared} shared xattrs do not fit its xattr area", "h_shared_count")
        names: list[bytes] = []
        space = _XATTR_HEADER_SIZE
        payload = 0
        inline = self.inline
        while pos < end:
            if pos + 4 > end:
                raise _Bad(f": xattr entry at byte {pos} is cut short", "xattr")
            value_start = pos + 4 + data[pos]
            key = data[pos:value_start]
            known = inline.get(key)
            if known is None:
                name, value_end, cost_regular, cost_other = self._entry(pos, end)
                known = inline[key] = (name, value_end - value_start, cost_regular, cost_other)
            name, value_size, cost_regular, cost_other = known
            value_end = value_start + value_size
            if value_end > end:
                raise _Bad(f": xattr entry at byte {pos} runs past its area", "xattr")
            names.append(name)
            if regular and name == _REDIRECT:
                payload = self.redirect(value_start, value_size, nid)
            elif value_end == pos + 4 == end and cost_other:
                # the last entry taking exactly 4 bytes (empty name suffix
                # and value) is what libcomposefs 1.0.8's loader drops
                self.dropped[nid] = name
            space += cost_regular if regular else cost_other
            pos = (value_end + 3) & ~3
        if pos != end:
            raise _Bad(": the last xattr entry overruns the xattr area", "xattr")
        if shared:
            indexes = data[first : first + 4 * shared]
            group = self.groups.get(indexes)
            if group is None:
                group = self.groups[indexes] = self._shared(indexes)
            shared_names, cost_regular, cost_other, value_start, value_size = group
            names.extend(shared_names)
            if regular and value_start:
                payload = self.redirect(value_start, value_size, nid)
            space += cost_regular if regular else cost_other
        if len(names) > 1 and len(set(names)) < len(names):
            twice = next(name for i, name in enumerate(names) if name in names[:i])
            raise _Bad(f": xattr {twice!r} appears twice", "xattr")
        # lcfs_node_set_xattr_internal's accounting of what it stores, bounded
        # by what the loader accepts and by what the Tree may hold.
        limit = self.xattr_space
        if space > limit:
            raise _Bad(f": xattrs take more than {limit} bytes", "xattr")
        return (space if space > _XATTR_HEADER_SIZE else 0) + payload

    def _shared(self, indexes: bytes) -> tuple[tuple[bytes, ...], int, int, int, int]:
        """Check the shared entries an inode's index array names.

        Returns their names, what libcomposefs accounts for them on a
        regular file and on anything else, and where a redirect's value
        starts (0 for none) and its size.  Each entry is read once, however
        many inodes name it; two indexes may not read overlapping bytes.
        """
        names: list[bytes] = []
        space_regular = space_other = value_start = value_size = 0
        for (idx,) in _U32.iter_unpack(indexes):
            known = self.shared.get(idx)
            entry = self.xattr_start + idx * 4
            if known is None:
                if idx * 4 >= _U32_LIMIT or entry + 4 > self.size:
                    raise _Bad(f": shared xattr index {idx} is outside the image", "xattr")
                known = self._entry(entry, self.size)
                if not self.claim(entry, known[1]):
                    raise _Bad(
                        f": shared xattr index {idx} overlaps other data already read",
                        "xattr",
                    )
                self.shared[idx] = known
            name, value_end, cost_regular, cost_other = known
            names.append(name)
            if name == _REDIRECT:
                value_start = entry + 4 + self.data[entry]
                value_size = value_end - value_start
            space_regular += cost_regular
            space_other += cost_other
        return tuple(names), space_regular, space_other, value_start, value_size

    def _entry(self, pos: int, end: int) -> tuple[bytes, int, int, int]:
        """Check the xattr entry at ``pos`` (inside ``end``).

        Returns its full name, where its value ends, and what
        lcfs_node_set_xattr_internal accounts for it (7 + name + value
        bytes, 0 when the loader does not store it) on a regular file and on
        anything else.
        """
        data = self.data
        name_len, index, value_size = _XATTR_ENTRY.unpack_from(data, pos)
        value_end = pos + 4 + name_len + value_size
        if value_end > end:
            raise _Bad(f": xattr entry at byte {pos} runs past its area", "xattr")
        if index >= len(_XATTR_PREFIXES):
            raise _Bad(f": xattr name index {index} at byte {pos}", "xattr")
        suffix = data[pos + 4 : pos + 4 + name_len]
        if b"\0" in suffix:
            raise _Bad(f": xattr name at byte {pos} holds a NUL byte", "xattr")
        name = _XATTR_PREFIXES[index] + suffix
        if not name:
            raise _Bad(f": empty xattr name at byte {pos}", "xattr")
        # The loader copies an overlay redirect with strndup(value + 1,
        # value_size + 1): up to 2 bytes past the value, stopped by a NUL.
        # That stays inside the buffer because read_image hands libcomposefs
        # a bytes object, which always has a NUL after its last byte.
        if name in _NOT_STORED:
            return name, value_end, 0, 0
        stored = name
        if name.startswith(_OVERLAY):
            if not name.startswith(_OVERLAY_ESCAPE):
                return name, value_end, 0, 0
            stored = _OVERLAY + name[len(_OVERLAY_ESCAPE) :]
        # lcfs_node_set_xattr_internal stores a name of at most 255 bytes (an
        # escaped name is longer in the image).
        if len(stored) > _XATTR_NAME_MAX:
            raise _Bad(f": xattr name of {len(stored)} bytes at byte {pos}", "xattr")
        cost = 7 + len(stored) + value_size
        # An escaped whiteout turns a regular file into a whiteout instead.
        return name, value_end, 0 if name == _ESCAPED_WHITEOUT else cost, cost

    def redirect(self, start: int, size: int, nid: int) -> int:
        """Check the redirect value at ``start`` (``size`` bytes) of regular file ``nid``.

        Returns its payload's length.  lcfs_build_node_erofs_xattr copies a
        value ``/PAYLOAD`` of n bytes with ``strndup(value + 1, n + 1)``:
        the 2 bytes after the value come along unless a NUL stops the copy
        first; that payload is noted.  A payload is a path: longer than
        ``Limits.max_path_bytes`` is refused here, before the loader copies
        it for every inode that names it.
        """
        if size > self.max_payload:
            raise _Bad(
                f": a payload (overlay redirect) of {size} bytes, more than "
                f"{self.limits.max_path_bytes}",
                "xattr",
            )
        data = self.data
        end = start + size
        if size > 1 and data[start] == 0x2F and data[end : end + 1] not in (b"", b"\0"):
            self.misread[nid] = data[start + 1 : end]
        return size

    # -- directories -------------------------------------------------------

    def walk(self, root_nid: int) -> None:
        """Check every directory and inode reachable from the root, in the loader's order.

        lcfs_load_node_from_image meets inodes depth first: each entry in
        its directory's order, a new directory's entries before its next
        sibling.  The walk does the same (a directory's blocks are checked
        when it is entered), so ``order`` lists every lookup the loader
        makes, in its order, for :meth:`replay`.
        """
        root = self.inode(root_nid, b"/", b"")
        if root[0] != _S_IFDIR:
            raise _fail(f"root inode {root_nid} is not a directory", "superblock.root_nid")
        inodes = self.inodes
        inodes[root_nid] = _S_IFDIR
        if root_nid in self.dropped:
            self.dropped_xattrs[b"/"] = self.dropped[root_nid]
        known_kind = inodes.get
        check = self._inode
        lookup = self.order.append
        misread, dropped = self.misread, self.dropped
        max_depth = self.max_depth
        want_types = _DIRENT_TYPES
        nid, depth, path = root_nid, 0, b"/"
        entries: Iterator[tuple[int, bytes, int]]
        entries = zip(*self.directory(nid, root_nid, path, root), strict=True)
        stack: list[tuple[Iterator[tuple[int, bytes, int]], int, int, bytes]] = []
        while True:
            for child, name, ftype in entries:
                lookup(child)
                kind = known_kind(child)
                if kind is None:
                    try:
                        info = check(child)
                    except _Bad as bad:
                        raise self._inode_error(child, bad, _join(path, name)) from None
                    kind = inodes[child] = info[0]
                    if kind == _S_IFDIR and ftype == _DIRENT_DIR:
                        if depth >= max_depth:
                            raise _fail(
                                f"directories nest deeper than {max_depth}",
                                "depth",
                                _join(path, name),
                            )
                        child_path = _join(path, name)
                        if child in dropped:
                            self.note(child, child_path)
                        columns = self.directory(child, nid, child_path, info)
                        self.depth = max(self.depth, depth + 1)
                        if columns[0]:  # not empty: entered now
                            stack.append((entries, nid, depth, path))
                            entries = zip(*columns, strict=True)
                            nid, depth, path = child, depth + 1, child_path
                            break
                elif kind == _S_IFDIR or kind == -1:
                    raise _fail(
                        f"inode {child} is a directory entered a second time "
                        "(a cycle or a hardlinked directory)"
                        if kind == _S_IFDIR
                        else f"whiteout inode {child} is entered a second time",
                        "dirent.nid",
                        _join(path, name),
                    )
                if ftype != want_types[kind]:
                    raise _fail(
                        f"file type {ftype} in the entry, {want_types[kind]} in inode {child}",
                        "dirent.file_type",
                        _join(path, name),
                    )
                if (misread or dropped) and (child in misread or child in dropped):
                    self.note(child, _join(path, name))
            else:
                if not stack:
                    break
                entries, nid, depth, path = stack.pop()

    def directory(
        self,
        nid: int,
        parent: int,
        path: bytes,
        info: tuple[int, int, int, int, int],
    ) -> tuple[list[int], list[bytes], list[int]]:
        """Check directory ``nid``'s blocks; return its entries' nids, names and file types.

        Its blocks are checked a block at a time (one unpack of the dirent
        table, the names' bounds, bytes and order compared in bulk), and its
        entries and their path bytes counted against the limits; each entry
        then costs the walk a lookup of its inode, checked the first time.
        """
        self.directories += 1
        _ftype, size, layout, tail_start, blkaddr = info
        tail = size % BLOCK_SIZE if layout == _FLAT_INLINE else 0
        oob = size - tail
        start = blkaddr * BLOCK_SIZE
        if tail and not oob:  # the inline tail alone
            found = self.block(tail_start, tail)
            if found is None:
                self.dirents(tail_start, tail, nid, path)  # names the fault
                raise _fail(f"directory inode {nid}: block at byte {tail_start}", "dirent", path)
            nids, names, types = found
        else:
            nids, names, types = [], [], []
            blocks = [
                (start + block, min(BLOCK_SIZE, oob - block)) for block in range(0, oob, BLOCK_SIZE)
            ]
            if tail:
                blocks.append((tail_start, tail))
            for block_start, block_size in blocks:
                found = self.block(block_start, block_size)
                if found is None:
                    self.dirents(block_start, block_size, nid, path)  # names the fault
                    raise _fail(
                        f"directory inode {nid}: block at byte {block_start}", "dirent", path
                    )
                nids += found[0]
                names += found[1]
                types += found[2]
        # '.' and '..' (not always neighbours: '.!' sorts between them).
        if len(names) > 1 and names[0] == b"." and names[1] == b"..":
            dot, dotdot = 0, 1
        else:
            dot = bisect_left(names, b".")
            dotdot = bisect_left(names, b"..", dot)
        if len(names) > 2 and not all(map(lt, names, islice(names, 1, None))):
            i = next(i for i in range(1, len(names)) if names[i] <= names[i - 1])
            raise _fail(
                f"directory inode {nid}: entry {names[i]!r} is not sorted after {names[i - 1]!r}",
                "dirent.name",
                path,
            )
        if dotdot >= len(names) or names[dot] != b"." or names[dotdot] != b"..":
            raise _fail(f"directory inode {nid} lacks '.' or '..'", "dirent.name", path)
        if nids[dot] != nid or nids[dotdot] != parent:
            name, at, want = (b".", dot, nid) if nids[dot] != nid else (b"..", dotdot, parent)
            raise _fail(
                f"directory inode {nid}: {name!r} names inode {nids[at]}, not {want}",
                "dirent.nid",
                path,
            )
        entries = len(names) - 2
        if not entries:
            return [], [], []
        if dotdot == 1:  # names before '.' are rare
            del nids[:2], names[:2], types[:2]
        else:
            for column in (nids, names, types):
                del column[dotdot], column[dot]
        # Each entry's path is this directory's, a slash and its name.
        base = (len(path) if path != b"/" else 0) + 1
        limits = self.limits
        longest = limits.max_path_bytes - base
        # (block() kept every name within _NAME_MAX bytes.)
        if longest < _NAME_MAX and max(map(len, names)) > longest:
            name = next(name for name in names if len(name) > longest)
            raise _fail(
                f"a path of {base + len(name)} bytes, longer than {limits.max_path_bytes}",
                "path",
                _join(path, name),
            )
        path_bytes = entries * base + sum(map(len, names))
        self.entries += entries
        self.path_bytes += path_bytes
        self.tree_bytes += path_bytes
        if (
            self.entries >= limits.max_entries  # the root is one more
            or self.path_bytes > limits.max_total_path_bytes
            or self.tree_bytes > limits.max_input_bytes
        ):
            raise self.totals_error(path)
        return nids, names, types

    def note(self, nid: int, path: bytes) -> None:
        """Note the payload or the dropped xattr of ``path``, a path of misread inode ``nid``."""
        if nid in self.misread and self.inodes[nid] == _S_IFREG:
            self.payloads[path] = self.misread[nid]
        if nid in self.dropped:
            self.dropped_xattrs[path] = self.dropped[nid]

    def block(self, start: int, size: int) -> tuple[list[int], list[bytes], list[int]] | None:
        """The entries of the directory block at ``start``: their nids, names and file types.

        None if its table or a name is not one
        :meth:`dirents` takes (which then names the fault): the table inside
        the block, names one after the other from its end, each of 1..255
        bytes, the last ended by a NUL or the block's end, no NUL or ``/``.
        """
        data = self.data
        if size < _DIRENT.size:
            return None
        (table,) = _U16.unpack_from(data, start + 8)
        if table == 0 or table % _DIRENT.size or table >= size:
            return None
        count = table // _DIRENT.size
        layout = _DIRENT_TABLES.get(count)
        if layout is None:
            layout = _DIRENT_TABLES[count] = struct.Struct("<" + "QHBB" * count)
        fields = layout.unpack_from(data, start)
        offsets = fields[1::4]
        first = offsets[0]
        if first < table:
            return None
        # The names are back to back from the first: the first NUL ends the
        # last name (or the block does); one before it is inside a name.
        nul = data.find(b"\0", start + first, start + size)
        end = size if nul < 0 else nul - start
        if end <= offsets[-1]:
            return None
        ends = (*offsets[1:], end)
        if not all(map(lt, offsets, ends)):
            return None
        if end - first > _NAME_MAX and max(map(sub, ends, offsets)) > _NAME_MAX:
            return None
        if data.find(b"/", start + first, start + end) >= 0:
            return None
        return (
            list(fields[0::4]),
            [data[start + name : start + end] for name, end in zip(offsets, ends, strict=True)],
            list(fields[2::4]),
        )

    def replay(self, root_nid: int) -> None:
        """Replay the loader's inode table over the walk's lookups; refuse a quadratic one."""
        met = self.order
        lookups = len(met) + 1
        budget = _CHAIN_STEPS_PER_LOOKUP * lookups + _CHAIN_STEPS_SLACK
        # A cheaper proof first: the table never has fewer buckets than its
        # first size, and distinct nids within a span of n hold at most
        # n // buckets + 1 of one bucket; nor can a chain hold more inodes
        # than there are.  Within the budget (small images), no replay.
        if met:
            span = max(root_nid, max(met)) - min(root_nid, min(met))
            longest = min(len(self.inodes), span // _table_size(0)[0] + 1)
            if 2 * len(met) * longest <= budget:
                return
        if lookups == len(self.inodes):
            steps = _replay_inserts(root_nid, met, budget)
        else:
            steps = _replay_links(root_nid, met, budget)
        if steps > budget:
            raise _fail(
                f"its inode numbers collide in libcomposefs's inode table: its "
                f"{lookups} lookups walk more than {budget} chain entries",
                "nid",
            )

    def totals_error(self, path: bytes) -> ValidationError:
        """The error for directory ``path``, whose entries took the totals past a limit.

        Every entry becomes a node of the loaded tree (a hardlink too), and
        its path a key of the Tree; each path's length was checked as it was
        met, the totals are added and checked once per directory.
        """
        limits = self.limits
        if self.entries >= limits.max_entries:  # the root is one more
            return _fail(f"more than {limits.max_entries} entries", "entries", path)
        if self.path_bytes > limits.max_total_path_bytes:
            return _fail(
                f"paths add up to more than {limits.max_total_path_bytes} bytes",
                "path_bytes",
                path,
            )
        return _fail(
            f"the tree it stands for holds more than {limits.max_input_bytes} bytes "
            "(paths, xattrs, payloads, targets, contents)",
            "tree_bytes",
            path,
        )

    def dirents(self, start: int, size: int, nid: int, path: bytes) -> list[tuple[int, bytes, int]]:
        data = self.data
        if size < _DIRENT.size:
            raise _fail(
                f"directory inode {nid}, block at byte {start}: {size} bytes cannot hold an entry",
                "i_size",
                path,
            )
        (table,) = _U16.unpack_from(data, start + 8)
        if table == 0 or table % _DIRENT.size or table >= size:
            raise _fail(
                f"directory inode {nid}, block at byte {start}: entry table of {table} bytes",
                "dirent.nameoff",
                path,
            )
        raw = list(_DIRENT.iter_unpack(data[start : start + table]))
        out: list[tuple[int, bytes, int]] = []
        last = len(raw) - 1
        for i, (child, nameoff, ftype, _reserved) in enumerate(raw):
            if i < last:
                name_end = raw[i + 1][1]
            else:
                nul = data.find(b"\0", start + nameoff, start + size)
                name_end = size if nul < 0 else nul - start
            if not table <= nameoff < name_end <= size or name_end - nameoff > _NAME_MAX:
                raise _fail(
                    f"directory inode {nid}, block at byte {start}: entry {i}: name at "
                    f"{nameoff}..{name_end} (table {table}, block {size} bytes)",
                    "dirent.nameoff",
                    path,
                )
            name = data[start + nameoff : start + name_end]
            if b"\0" in name or b"/" in name:
                raise _fail(
                    f"directory inode {nid}, block at byte {start}: entry {i}: name {name!r}",
                    "dirent.name",
                    path,
                )
            out.append((child, name, ftype))
        return out


def _replay_inserts(root_nid: int, met: array[int], budget: int) -> int:
    """Chain entries the loader walks to meet each of ``met`` once, after the root.

    Each is a lookup and an insert, both walking the chain of its bucket
    (the lookup before the table grows).  Stops once past ``budget``.
    """
    table = _NidTable(root_nid)
    counts, buckets, used, limit = table.counts, table.buckets, table.used, table.limit
    walked = 0
    for i, nid in enumerate(met):
        bucket = nid % buckets
        chain_length = counts[bucket]
        walked += chain_length
        if used > limit:
            if 2 * walked > budget:
                break
            table.grow(array("Q", (root_nid,)) + met[:i])
            counts, buckets, used, limit = table.counts, table.buckets, table.used, table.limit
            bucket = nid % buckets
            chain_length = counts[bucket]
        counts[bucket] = chain_length + 1
        if not chain_length:
            used += 1
    return 2 * walked


def _replay_links(root_nid: int, met: array[int], budget: int) -> int:
    """:func:`_replay_inserts` when some inodes are met more than once (hardlinks).

    hash_lookup walks the chain; a new inode's hash_insert walks it again
    (and may grow the table first).
    """
    table = _NidTable(root_nid)
    counts, buckets = table.counts, table.buckets
    inserted = array("Q", [root_nid])
    seen = {root_nid}
    steps = 0
    for nid in met:
        chain_length = counts[nid % buckets]
        if nid in seen:
            steps += chain_length
            continue
        steps += 2 * chain_length
        seen.add(nid)
        if table.used > table.limit:
            if steps > budget:
                break
            table.grow(inserted)
            counts, buckets = table.counts, table.buckets
        bucket = nid % buckets
        if not counts[bucket]:
            table.used += 1
        counts[bucket] += 1
        inserted.append(nid)
    return steps


def check_image(
    data: bytes | bytearray | memoryview,
    *,
    max_depth: int | None = None,
    limits: Limits | None = None,
) -> ImageSummary:
    """Check a composefs image's structure before libcomposefs loads it.

    Raises :class:`~composefs_py.errors.ValidationError` naming the inode and
    field at fault; returns what was walked.  ``limits`` (default
    ``Limits().for_images()``) bound what the loader would build: entries,
    path lengths and their sum, depth, xattr space per inode, and the bytes
    the tree holds; ``max_depth`` overrides ``limits.max_depth`` (the loader
    recurses once per level).
    """
    raw = data if isinstance(data, bytes) else bytes(data)
    bounds = Limits().for_images() if limits is None else limits
    checker = _Checker(raw, bounds, bounds.max_depth if max_depth is None else max_depth)
    version, root_nid = checker.superblock()
    checker.walk(root_nid)
    checker.replay(root_nid)
    return ImageSummary(
        version=version,
        inodes=len(checker.inodes),
        directories=checker.directories,
        entries=checker.entries,
        depth=checker.depth,
        payloads=checker.payloads,
        dropped_xattrs=checker.dropped_xattrs,
        path_bytes=checker.path_bytes,
        tree_bytes=checker.tree_bytes,
    )
