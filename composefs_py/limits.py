"""Bounds applied to untrusted input.

The defaults come from libcomposefs' own constants (``lcfs-writer.h``) and
from the kernel's, with headroom where libcomposefs adds data of its own.
They are generous enough for real images: a one-million-entry TOC passes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["Limits", "LCFS_INODE_EXTERNAL_XATTR_MAX", "LCFS_INLINE_CONTENT_MAX"]

#: ``LCFS_INODE_EXTERNAL_XATTR_MAX`` (UINT16_MAX / 2): xattr space per inode
#: that libcomposefs grants to external input.
LCFS_INODE_EXTERNAL_XATTR_MAX = 65535 // 2
#: ``LCFS_INLINE_CONTENT_MAX``: the largest file content kept in the image.
LCFS_INLINE_CONTENT_MAX = 5000
#: ``LCFS_XATTR_HEADER_SIZE`` and the per-xattr cost libcomposefs charges
#: (``2 * LCFS_INODE_XATTRMETA_SIZE - 1`` plus name and value).
XATTR_HEADER_SIZE = 12
XATTR_ENTRY_OVERHEAD = 7
#: Room kept free in each inode's xattr space for what libcomposefs adds
#: itself (escaped overlay xattrs, redirects, metacopy).
XATTR_HEADROOM = 256


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds checked by every validator; pass a modified copy to change them.

    >>> import dataclasses
    >>> small = dataclasses.replace(Limits(), max_entries=1000)
    """

    #: Input document size in bytes (TOC JSON after decompression, dumpfile).
    max_input_bytes: int = 1 << 30
    #: Entries (TOC entries, dumpfile lines, tar members).
    max_entries: int = 5_000_000
    #: Sum of the byte lengths of all paths.
    max_total_path_bytes: int = 1 << 30
    #: Directory depth below the root.
    max_depth: int = 2048
    #: JSON nesting depth (a TOC needs 4).
    max_json_depth: int = 32
    #: One path component (``NAME_MAX``).
    max_name_bytes: int = 255
    #: A whole path (``PATH_MAX - 1``).
    max_path_bytes: int = 4095
    #: A symlink target.
    max_symlink_bytes: int = 4095
    #: An xattr name (``XATTR_NAME_MAX``).
    max_xattr_name_bytes: int = 255
    #: An xattr value (``XATTR_SIZE_MAX``).
    max_xattr_value_bytes: int = 65535
    #: xattr space per inode, counted as libcomposefs counts it.
    max_xattr_space: int = LCFS_INODE_EXTERNAL_XATTR_MAX - XATTR_HEADROOM
    #: Inline file content.
    max_inline_bytes: int = LCFS_INLINE_CONTENT_MAX
    #: Size of one regular file: libcomposefs describes an external file in
    #: at most 1024 chunks (``LCFS_MAX_NONINLINE_CHUNKS``) of at most 2**43
    #: bytes (EROFS chunk bits 31 + block bits 12) and fails with EFBIG
    #: beyond 2**53 bytes.
    max_file_size: int = 1 << 53
    #: Take an input's own ``trusted.overlay.*`` xattrs (redirect, metacopy,
    #: origin, whiteout, opaque on a non-directory...).  Off: they are refused
    #: (but ``trusted.overlay.opaque=y``/``x`` on a directory, which this
    #: package and libcomposefs make themselves), because a composefs mount
    #: shows them to an overlay stacked on it (``mount_layers``) as that
    #: overlay's own metadata: a top layer could make it show a lower layer's
    #: hidden file anywhere.  Turn on only for input trusted that far.
    allow_overlay_xattrs: bool = False
    #: Bytes of holes a layer may declare per byte of its blob: the sparse
    #: regions of tar members and zstd:chunked ``chunkType: "zeros"``
    #: chunks, which cost no input but are hashed as zeros.  The default is
    #: what a zstd stream can expand zeros to at most (a 128 KiB block in 4
    #: bytes), so holes cost no more than the same zeros compressed would: a
    #: 1.5 KB tar may declare 48 MiB of holes, not 2**53 bytes.  Checked from
    #: the sparse map or the TOC, before a byte is hashed or written.
    max_hole_ratio: int = 1 << 15
    #: Take any payload of 1..``max_path_bytes`` bytes without NUL, such as
    #: ostree's ``ab/<62 hex>.file`` object names.  Off, a payload must be an
    #: object name of this package's store, ``ab/`` + 62 lowercase hex digits
    #: (DESIGN rule 8), so that no name from an input can point anywhere else.
    #: Such a Tree can be written, but its payloads are not confined: the
    #: image reader (``read_image``) and the object store still refuse them.
    allow_foreign_payloads: bool = False

    def for_images(self) -> Limits:
        """These bounds as a reader of images libcomposefs wrote applies them.

        The writer adds xattrs of its own (in format 1 the whiteout marks of
        a directory that holds whiteouts) inside the ``XATTR_HEADROOM`` that
        ``max_xattr_space`` keeps free for input: an image may use all of
        ``LCFS_INODE_EXTERNAL_XATTR_MAX``.
        """
        if self.max_xattr_space >= LCFS_INODE_EXTERNAL_XATTR_MAX:
            return self
        return replace(self, max_xattr_space=LCFS_INODE_EXTERNAL_XATTR_MAX)

    @staticmethod
    def xattr_space(xattrs: tuple[tuple[bytes, bytes], ...]) -> int:
        """Bytes of inode xattr space ``xattrs`` take, as libcomposefs counts."""
        if not xattrs:
            return 0
        return XATTR_HEADER_SIZE + sum(
            XATTR_ENTRY_OVERHEAD + len(name) + len(value) for name, value in xattrs
        )
