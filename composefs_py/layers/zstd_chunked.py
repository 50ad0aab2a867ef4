"""zstd:chunked layers (containers/storage).

Layout (``pkg/chunked/internal/minimal/compression.go``)::

    [zstd frames: tar headers and file data; each file (and chunk) starts a frame]
    [skippable frame 50 2A 4D 18 | u32le len | zstd-compressed TOC JSON]
    [skippable frame 50 2A 4D 18 | u32le len | zstd-compressed tar-split]
    [skippable frame 50 2A 4D 18 | 40 00 00 00 | 64-byte footer]

The footer is eight little-endian u64: TOC offset (of the payload, after the
8-byte frame header), compressed length, uncompressed length, manifest type
(1), tar-split offset, compressed and uncompressed lengths, and the magic
``GNUlInUx``.  The ``manifest-position`` annotation gives the first four
fields as ``"offset:compressedLen:uncompressedLen:type"``; containers/storage
locates the TOC only through it.  Every field is checked against the blob
before it is used, and the TOC's decompression stops at its declared size.
The footer is read and checked even when the annotation is given (every
writer ends the blob with it; the annotation must agree with it): the TOC's
frame, the tar-split's frame and the footer must end the blob in that order,
so a blob cut short, even by one byte, is refused and never read as a
plain ``tar.zst``.

Cost: the footer and the two frame headers are fixed-size reads; the compressed TOC
is read once (its length is checked against the blob first), and inflated
1 MiB at a time up to its declared uncompressed length, itself at most
``Limits.max_input_bytes`` (checked before inflating; a frame that gives
more or less is refused).  The tar-split is not read.  File data: see
:mod:`composefs_py.layers` (ranges bounded by the next entry's offset,
``chunkType: "zeros"`` chunks read as holes, which add up to at most
``Limits.max_hole_ratio`` times the blob's size).
"""

from __future__ import annotations

import io
import os
import re
import struct
import threading
from dataclasses import dataclass
from typing import BinaryIO, cast

import zstandard

from ..errors import ValidationError
from ..limits import Limits
from . import (
    ZSTD_CHUNKED_FOOTER_MAGIC,
    ZSTD_CHUNKED_FOOTER_SIZE,
    ZSTD_MAGIC,
    Decoder,
    FileSource,
    RangeReader,
    TocLayer,
    check_toc_digest,
    is_skippable_frame_magic,
    read_exact,
)

__all__ = ["MANIFEST_TYPE_CRFS", "TocPosition", "ZstdChunkedLayer", "parse_manifest_position"]

#: ``ManifestTypeCRFS``: the only manifest type containers/storage writes.
MANIFEST_TYPE_CRFS = 1
_FOOTER = struct.Struct("<8Q")
_SKIPPABLE_HEADER = struct.Struct("<II")
_NUMBER = r"(0|[1-9][0-9]{0,19})"
_POSITION = re.compile(rf"{_NUMBER}:{_NUMBER}:{_NUMBER}:([0-9]{{1,3}})")
#: Files up to this size may be decompressed in one call (``whole_content``).
_WHOLE_MAX = 8 << 20
_READ_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class TocPosition:
    """Where the compressed TOC is: payload offset, compressed and uncompressed length."""

    offset: int
    compressed_length: int
    uncompressed_length: int


def parse_manifest_position(text: str) -> tuple[TocPosition, int]:
    """Parse ``"offset:compressedLen:uncompressedLen:type"``; return position and type."""
    match = _POSITION.fullmatch(text)
    if match is None:
        raise ValidationError(
            f"must be offset:compressedLen:uncompressedLen:type (decimal), got {text[:80]!r}",
            field="manifest_position",
        )
    offset, compressed, uncompressed, kind = (int(group) for group in match.groups())
    return TocPosition(offset, compressed, uncompressed), kind


class ZstdChunkedLayer(TocLayer):
    """A zstd:chunked blob; the TOC is found and bounds-checked on construction."""

    format = "zstd:chunked"
    use_end_offset = True
    zero_chunks = True
    decode_errors = (zstandard.ZstdError,)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        manifest_position: str | None = None,
        toc_digest: str | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._manifest_position = manifest_position
        self._local = threading.local()  # one decompression context per thread
        super().__init__(path, toc_digest=toc_digest, limits=limits)

    def _locate_toc(self, fd: int) -> None:
        footer, footer_kind, split = _read_footer(fd, self.blob_size)
        if self._manifest_position is not None:
            position, kind = parse_manifest_position(self._manifest_position)
            field = "manifest_position"
        else:
            position, kind = footer, footer_kind
            field = "footer"
        self.position = _check_position(fd, self.blob_size, position, kind, field, self.limits)
        if (footer, footer_kind) != (position, kind):
            raise ValidationError(
                f"the annotation gives the TOC at {position}, the blob's footer at {footer}",
                field=field,
            )
        _check_layout(fd, self.blob_size, position, split)

    @property
    def data_end(self) -> int:
        """End of the file data: the start of the TOC's skippable frame header."""
        return self.position.offset - _SKIPPABLE_HEADER.size

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        """This thread's decompressor (making one costs ~25 us: once per thread, not per file)."""
        dctx: zstandard.ZstdDecompressor | None = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = self._local.dctx = zstandard.ZstdDecompressor()
        return dctx

    def open_decoder(self, raw: RangeReader) -> Decoder:
        reader: Decoder = self._decompressor().stream_reader(
            cast(BinaryIO, raw), read_across_frames=True, closefd=False
        )
        return reader

    def whole_content(self, fd: int, source: FileSource) -> bytes | None:
        """The file in one call when its first frame holds exactly its ``size`` bytes.

        The output buffer is ``size`` bytes (a frame that would give more is
        an error here, then read by the streaming path); a frame header
        declaring another size is never decompressed here.
        """
        size = source.size
        if size > _WHOLE_MAX or len(source.segments) != 1:
            return None
        segment = source.segments[0]
        if segment.skip or segment.zeros:
            return None
        # One frame of ``size`` bytes is at most ZSTD_compressBound(size) long:
        # read no more, whatever the range (the streaming path reads the rest).
        bound = size + (size >> 8) + (((128 << 10) - size) >> 11 if size < 128 << 10 else 0)
        raw = os.pread(fd, min(segment.end - segment.start, bound + 64), segment.start)
        try:
            declared = zstandard.frame_content_size(raw)
            if declared not in (-1, size):
                return None
            data = self._decompressor().decompress(raw, max_output_size=size)
        except zstandard.ZstdError:
            return None
        return data if len(data) == size else None

    def compressed_toc(self) -> bytes:
        """The zstd-compressed TOC (what ``manifest-checksum`` digests)."""
        with open(self.path, "rb") as blob:
            return self._compressed_toc(blob.fileno())

    def _compressed_toc(self, fd: int) -> bytes:
        position = self.position
        return read_exact(fd, position.offset, position.compressed_length, "the TOC")

    def _load_toc(self, fd: int) -> bytes:
        compressed = self._compressed_toc(fd)
        check_toc_digest(compressed, self._toc_digest, "compressed TOC")
        return _decompress_toc(compressed, self.position.uncompressed_length)


def _read_footer(fd: int, size: int) -> tuple[TocPosition, int, TocPosition]:
    """The footer's TOC position, manifest type and tar-split position.

    Read even when the annotation locates the TOC: every zstd:chunked writer
    ends the blob with it, and a blob without it is damaged (cut short).
    """
    if size < ZSTD_CHUNKED_FOOTER_SIZE + len(ZSTD_MAGIC):
        raise ValidationError(
            f"a zstd:chunked blob is more than {ZSTD_CHUNKED_FOOTER_SIZE} bytes, this one {size}",
            field="footer",
        )
    tail = read_exact(fd, size - ZSTD_CHUNKED_FOOTER_SIZE, ZSTD_CHUNKED_FOOTER_SIZE, "footer")
    magic, frame_size = _SKIPPABLE_HEADER.unpack_from(tail)
    if not is_skippable_frame_magic(magic) or frame_size != _FOOTER.size:
        raise ValidationError(
            f"the last {ZSTD_CHUNKED_FOOTER_SIZE} bytes must be a skippable frame of "
            f"{_FOOTER.size} bytes; got magic 0x{magic:08x}, size {frame_size}",
            field="footer",
        )
    fields = _FOOTER.unpack_from(tail, _SKIPPABLE_HEADER.size)
    if tail[-8:] != ZSTD_CHUNKED_FOOTER_MAGIC:
        raise ValidationError("footer magic is not GNUlInUx", field="footer")
    offset, compressed, uncompressed, kind = fields[:4]
    return TocPosition(offset, compressed, uncompressed), kind, TocPosition(*fields[4:7])


def _check_layout(fd: int, size: int, toc: TocPosition, split: TocPosition) -> None:
    """The TOC's frame, the tar-split's frame (if any) and the footer end the blob, in order.

    One fixed-size read (the tar-split's frame header): a blob cut short or
    with bytes between or after these frames is refused.
    """
    header = _SKIPPABLE_HEADER.size
    footer_start = size - ZSTD_CHUNKED_FOOTER_SIZE
    toc_end = toc.offset + toc.compressed_length
    if split.offset == 0 and split.compressed_length == 0:
        if toc_end != footer_start:
            raise ValidationError(
                f"the TOC ends at {toc_end}, not where the footer starts ({footer_start})",
                field="footer",
            )
        return
    if split.offset != toc_end + header or split.offset + split.compressed_length != footer_start:
        raise ValidationError(
            f"the tar-split at offset {split.offset}, {split.compressed_length} bytes, must "
            f"follow the TOC (ending at {toc_end}) and end where the footer starts "
            f"({footer_start})",
            field="footer",
        )
    magic, frame_size = _SKIPPABLE_HEADER.unpack(
        read_exact(fd, split.offset - header, header, "tar-split frame header")
    )
    if not is_skippable_frame_magic(magic) or frame_size != split.compressed_length:
        raise ValidationError(
            f"the tar-split at offset {split.offset} is not the payload of a "
            f"{split.compressed_length}-byte skippable frame (header magic 0x{magic:08x}, "
            f"size {frame_size})",
            field="footer",
        )


def _check_position(
    fd: int, size: int, position: TocPosition, kind: int, field: str, limits: Limits
) -> TocPosition:
    if kind != MANIFEST_TYPE_CRFS:
        raise ValidationError(
            f"manifest type must be {MANIFEST_TYPE_CRFS} (CRFS), got {kind}", field=field
        )
    offset, compressed = position.offset, position.compressed_length
    header = _SKIPPABLE_HEADER.size
    if not (len(ZSTD_MAGIC) + header <= offset and 0 < compressed <= size - offset):
        raise ValidationError(
            f"TOC at offset {offset}, {compressed} bytes, does not fit in the {size}-byte blob",
            field=field,
        )
    if not 0 < position.uncompressed_length <= limits.max_input_bytes:
        raise ValidationError(
            f"TOC uncompressed length must be in 1..{limits.max_input_bytes} "
            f"(limits.max_input_bytes), got {position.uncompressed_length}",
            field=field,
        )
    magic, frame_size = _SKIPPABLE_HEADER.unpack(
        read_exact(fd, offset - header, header, "TOC frame header")
    )
    if not is_skippable_frame_magic(magic) or frame_size != compressed:
        raise ValidationError(
            f"the TOC at offset {offset} is not the payload of a {compressed}-byte "
            f"skippable frame (header magic 0x{magic:08x}, size {frame_size})",
            field=field,
        )
    return position


def _decompress_toc(compressed: bytes, expected: int) -> bytes:
    """Decompress one zstd frame, reading at most ``expected + 1`` bytes of output.

    The output comes 1 MiB at a time, whatever ``expected`` or the frame
    header declare: memory follows what the frame really gives.
    """
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(compressed), read_across_frames=False
        )
        parts: list[bytes] = []
        got = 0
        while got <= expected:
            data = reader.read(min(expected + 1 - got, _READ_SIZE))
            if not data:
                break
            parts.append(data)
            got += len(data)
    except zstandard.ZstdError as exc:
        raise ValidationError(f"the TOC cannot be decompressed: {exc}", field="toc") from None
    if got != expected:
        amount = f"more than {expected}" if got > expected else f"only {got}"
        raise ValidationError(
            f"the TOC decompresses to {amount} bytes; its uncompressed length is {expected}",
            field="toc",
        )
    return b"".join(parts)
