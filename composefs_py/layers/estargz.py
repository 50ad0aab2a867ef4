"""eStargz layers (containerd stargz-snapshotter).

An eStargz blob is a gzip-compressed tar made of many gzip members: each
file's data (and each chunk of a large file) starts a new member at the
offset its TOC entry gives.  The TOC, ``stargz.index.json``, is a tar entry of
its own in a gzip member whose offset the 51-byte footer gives::

    1F 8B 08 04 | mtime xfl os | XLEN=26 | 'S' 'G' LEN=22 | %016x offset | "STARGZ"
    | empty deflate block | CRC32=0 ISIZE=0

The footer's structure is checked byte by byte and it must decompress to
nothing; the TOC's tar header and size are checked, and its decompression
stops at ``limits.max_input_bytes``.  The TOC's gzip member is read to its
end (only zero blocks, at most 1 MiB, may follow the JSON), so its CRC-32
and size are checked and a blob cut inside it is refused.  A blob whose
footer is gone is sniffed as a ``tar.gz``; the tar reader refuses it when
it meets ``stargz.index.json`` (a damaged eStargz blob is never downgraded).

Cost: the footer is a fixed 51-byte read; the TOC's tar header is one block
and its declared size is checked against ``Limits.max_input_bytes`` before
the JSON is inflated, 1 MiB at a time, never past that size.  File data: see
:mod:`composefs_py.layers`: a gzip member that several files share through
``innerOffset`` is inflated once, in order, and the files are served from
that one pass.
"""

from __future__ import annotations

import re
import struct
import tarfile
import zlib

from ..errors import ValidationError
from ..limits import Limits
from . import (
    ESTARGZ_FOOTER_SIZE,
    Decoder,
    GzipMembers,
    RangeReader,
    TocLayer,
    check_toc_digest,
    read_exact,
)

__all__ = ["TOC_NAME", "EstargzLayer"]

#: The tar name of the TOC.
TOC_NAME = "stargz.index.json"
_FOOTER_HEAD = struct.Struct("<4s4sBBH2sH16s6s")
_OFFSET = re.compile(rb"[0-9a-f]{16}")
_TAR_BLOCK = 512
#: Bytes allowed between the TOC and the footer (tar padding, end-of-archive blocks).
_TAIL_MAX = 1 << 20


class EstargzLayer(TocLayer):
    """An eStargz blob; the footer is checked on construction."""

    format = "estargz"
    decode_errors = (zlib.error,)
    inner_offsets = True
    check_whole_units = True

    def _locate_toc(self, fd: int) -> None:
        self.toc_offset = _read_footer(fd, self.blob_size)

    @property
    def data_end(self) -> int:
        return self.toc_offset

    def open_decoder(self, raw: RangeReader) -> Decoder:
        return GzipMembers(raw)

    def _load_toc(self, fd: int) -> bytes:
        toc = _read_toc(fd, self.toc_offset, self.blob_size - ESTARGZ_FOOTER_SIZE, self.limits)
        check_toc_digest(toc, self._toc_digest, "TOC (stargz.index.json)")
        return toc


def _read_footer(fd: int, size: int) -> int:
    """Check the 51-byte footer; return the TOC offset."""
    if size < ESTARGZ_FOOTER_SIZE + 20:
        raise ValidationError(
            f"an eStargz blob is more than {ESTARGZ_FOOTER_SIZE} bytes, this one {size}",
            field="footer",
        )
    footer = read_exact(fd, size - ESTARGZ_FOOTER_SIZE, ESTARGZ_FOOTER_SIZE, "footer")
    magic, _mtime, _xfl, _os, xlen, subfield, sublen, hex_offset, tag = _FOOTER_HEAD.unpack_from(
        footer
    )
    if (
        magic != b"\x1f\x8b\x08\x04"
        or xlen != 26
        or subfield != b"SG"
        or sublen != 22
        or tag != b"STARGZ"
    ):
        raise ValidationError(
            "not an eStargz footer (gzip member with FEXTRA 'SG' holding "
            "the TOC offset and 'STARGZ')",
            field="footer",
        )
    inflate = zlib.decompressobj(31)
    try:
        rest = inflate.decompress(footer, 1)
    except zlib.error as exc:
        raise ValidationError(
            f"the footer is not a valid gzip member: {exc}", field="footer"
        ) from None
    if rest or not inflate.eof or inflate.unused_data:
        raise ValidationError("the footer gzip member must be empty", field="footer")
    if not _OFFSET.fullmatch(hex_offset):
        raise ValidationError(
            f"the TOC offset must be 16 lowercase hex digits, got {hex_offset!r}",
            field="footer",
        )
    offset = int(hex_offset, 16)
    if not 0 < offset < size - ESTARGZ_FOOTER_SIZE:
        raise ValidationError(
            f"the TOC offset {offset} is outside the blob (size {size})", field="footer"
        )
    return offset


def _read_toc(fd: int, start: int, end: int, limits: Limits) -> bytes:
    """Gunzip the tar at ``[start, end)`` and return its ``stargz.index.json``."""
    reader = GzipMembers(RangeReader(fd, start, end))
    try:
        header = _read_full(reader, _TAR_BLOCK)
        if len(header) != _TAR_BLOCK:
            raise ValidationError("the TOC's tar header is cut short", field="toc")
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.TarError as exc:
            raise ValidationError(f"the TOC's tar header is invalid: {exc}", field="toc") from None
        if info.name != TOC_NAME or not info.isreg():
            raise ValidationError(
                f"the tar at the TOC offset must hold a regular file {TOC_NAME}, "
                f"found {info.name!r}",
                field="toc",
            )
        if info.size > limits.max_input_bytes:
            raise ValidationError(
                f"the TOC is {info.size} bytes, more than limits.max_input_bytes "
                f"({limits.max_input_bytes})",
                field="toc",
            )
        toc = _read_full(reader, info.size)
        if len(toc) == info.size:
            _check_tail(reader)
    except zlib.error as exc:
        raise ValidationError(f"the TOC cannot be decompressed: {exc}", field="toc") from None
    if len(toc) != info.size:
        raise ValidationError(f"the TOC is cut short: {len(toc)} of {info.size} bytes", field="toc")
    return toc


def _check_tail(reader: GzipMembers) -> None:
    """What follows the TOC up to the footer: the tar's padding and zero
    blocks, at most ``_TAIL_MAX`` bytes, read to the end so that zlib checks
    the TOC member's CRC-32 and size (and that it is not cut short)."""
    tail = 0
    while data := reader.read(_TAR_BLOCK * 16):
        tail += len(data)
        if tail > _TAIL_MAX or data.count(0) != len(data):
            raise ValidationError(
                f"after the TOC only zero blocks (at most {_TAIL_MAX} bytes) may come "
                "before the footer",
                field="toc",
            )


def _read_full(reader: GzipMembers, size: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < size:
        data = reader.read(min(size - got, 1 << 20))
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)
