"""Layer readers: zstd:chunked, eStargz and plain tar (optionally gzip or zstd).

:func:`open_layer` sniffs a blob's format and returns a :class:`Layer`:

* ``"zstd:chunked"``: zstd frames ending in the 72-byte skippable footer
  frame whose last 8 bytes are ``GNUlInUx``; the TOC is found through that
  footer or through the ``manifest-position`` annotation.
* ``"estargz"``: gzip members ending in the 51-byte ``STARGZ`` footer; the
  TOC is ``stargz.index.json``.
* ``"tar"``: anything else that is a tar, a gzip-compressed tar or a
  zstd-compressed tar.  A damaged zstd:chunked or eStargz blob is never
  downgraded to one: a blob whose footer is gone or damaged but that still
  holds zstd:chunked skippable frames (TOC, tar-split, footer) or an eStargz
  ``stargz.index.json`` is refused as it is read (:class:`ZstdFrameCheck`,
  :mod:`.tar`), and a zstd:chunked blob, even one located through the
  ``manifest-position`` annotation, must end in its footer, after its TOC
  and tar-split frames (:mod:`.zstd_chunked`).

Integrity of the whole blob: every gzip member and zstd frame read must be
complete, with its checksum verified (CRC-32 and size for gzip, the content
checksum of a zstd frame that has one); a stream that ends inside a member
or frame is refused (:class:`GzipMembers`, :class:`ZstdFrameCheck`).  How a
tar must end is in :mod:`.tar`.

Every layer gives its :class:`~composefs_py.model.Tree` (:meth:`Layer.tree`)
and imports its regular files' contents into an
:class:`~composefs_py.objects.ObjectStore` (:meth:`Layer.import_objects`),
checking each against the digest the TOC claims before publishing it.  Every
rejection is a :class:`~composefs_py.errors.ValidationError` naming the
TOC entry (or tar member) and its path.

Cost model of the TOC-based import (zstd:chunked, eStargz; the tar reader
has its own, in :mod:`.tar`):

* The TOC: at most ``Limits.max_input_bytes`` after decompression, checked
  before it is inflated past that (:mod:`.zstd_chunked`, :mod:`.estargz`);
  then ``parse_toc`` applies every other limit.  :func:`plan_sources` is one
  pass over the entries plus a sort of their offsets.
* File data: each chunk is read from its ``offset`` up to the next larger
  offset of any TOC entry, or the TOC's start; never to the end of the blob.
  eStargz reads each range to its end (the rest of its last gzip member and
  the tar headers up to the next offset), so that every member's CRC-32 and
  size are checked. :func:`schedule` orders the files by where their data is
  and refuses files whose data overlap or interleave, so each compressed
  byte of the data region is decoded at most once (files that share a gzip
  member through ``innerOffset`` are served from one pass), and the bytes
  read are at most the data region. A whole-file read (``whole_content``)
  reads at most ``ZSTD_compressBound(size)`` bytes.
* Memory: decompression and copies go ``_READ_SIZE`` (1 MiB) at a time
  (a zstd frame's window is bounded by libzstd's default limit, 128 MiB);
  up to 4 threads, each with one decoder.
* Writes: each distinct content once, its declared ``size`` (a file's size
  is bounded by ``Limits.max_file_size`` in ``parse_toc``, before anything
  is read); ``chunkType: "zeros"`` chunks are holes in the object
  (``ObjectWriter.hole``: hashed as zeros, nothing read or written).
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
import hashlib
import json
import os
import re
import threading
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .._progress import Progress, ProgressArg, resolve_progress
from ..errors import ValidationError
from ..limits import Limits
from ..model import Inode, Node, Tree, TreeBuilder

if TYPE_CHECKING:
    from ..objects import ObjectStore, ObjectWriter

__all__ = ["FORMATS", "Layer", "open_layer", "sniff_format"]

FORMATS = ("zstd:chunked", "estargz", "tar")

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
_SKIPPABLE_MIN = 0x184D2A50
_SKIPPABLE_MAX = 0x184D2A5F
ZSTD_CHUNKED_FOOTER_MAGIC = b"GNUlInUx"
ZSTD_CHUNKED_FOOTER_SIZE = 72  # 8-byte skippable header + 64-byte footer
ESTARGZ_FOOTER_SIZE = 51
_READ_SIZE = 1 << 20
_FEED_SIZE = 1 << 16
_SHA256_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class Layer(abc.ABC):
    """A layer blob: its format, TOC, tree, and its files' contents.

    A ``Layer`` holds the blob's path and what the format sniffing found; each
    method opens the blob again, so a ``Layer`` needs no closing.
    """

    #: ``"zstd:chunked"``, ``"estargz"`` or ``"tar"``.
    format: ClassVar[str]

    def __init__(self, path: str | os.PathLike[str], *, limits: Limits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or Limits()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.format} {str(self.path)!r}>"

    @abc.abstractmethod
    def toc_bytes(self) -> bytes | None:
        """The TOC JSON as embedded in the blob; ``None`` for a plain tar (it has none)."""

    @abc.abstractmethod
    def tree(self, *, limits: Limits | None = None, compat: str | None = None) -> Tree:
        """Validate the layer's metadata and return its Tree.

        ``compat="containers-storage"`` keeps ``.wh.*`` entries as plain
        files, as containers/storage does (see ``parse_toc``).  For a plain
        tar this reads and hashes every file.
        """

    @abc.abstractmethod
    def import_objects(
        self,
        store: ObjectStore,
        *,
        limits: Limits | None = None,
        compat: str | None = None,
        progress: ProgressArg = None,
    ) -> Tree:
        """Store every regular file's content in ``store``; return the Tree.

        Each content is checked against the digest the TOC claims before it
        is published; a mismatch raises ValidationError naming the file
        (``field="digest"``).  The import is all or nothing
        (:meth:`ObjectStore.batch`): a rejected layer adds no object to the
        store and leaves no temporary file.  The returned Tree's payloads are the store's names
        (which differ from the TOC's with ``naming="fsverity"``) and carry
        fs-verity digests when the store computes them.  ``progress``: see
        :mod:`composefs_py._progress`.
        """


class TocLayer(Layer):
    """A layer described by an embedded TOC (zstd:chunked, eStargz).

    Subclasses give the TOC (:meth:`toc_bytes`), where the file data ends
    (:attr:`data_end`) and how to decompress a file's bytes.
    """

    #: zstd:chunked: a file's ``endOffset`` is checked and bounds its last chunk.
    use_end_offset: ClassVar[bool] = False
    #: eStargz: a chunk starts ``innerOffset`` bytes into its gzip member's data.
    inner_offsets: ClassVar[bool] = False
    #: zstd:chunked: ``chunkType: "zeros"`` chunks are holes, not read from the blob.
    zero_chunks: ClassVar[bool] = False
    #: eStargz: each range read is read to its end, so every gzip member's CRC-32 is checked.
    check_whole_units: ClassVar[bool] = False
    #: Exceptions the decompressor raises on damaged data.
    decode_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        toc_digest: str | None = None,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(path, limits=limits)
        self._toc_digest = toc_digest
        self._toc: bytes | None = None
        with open(self.path, "rb") as blob:
            fd = blob.fileno()
            self.blob_size = os.fstat(fd).st_size
            self._locate_toc(fd)

    @abc.abstractmethod
    def _locate_toc(self, fd: int) -> None:
        """Find and check the footer (or annotation) locating the TOC."""

    @abc.abstractmethod
    def _load_toc(self, fd: int) -> bytes:
        """Read the TOC JSON, checking it against ``self._toc_digest``."""

    @property
    @abc.abstractmethod
    def data_end(self) -> int:
        """Where the file data region ends (the TOC's start)."""

    @abc.abstractmethod
    def open_decoder(self, raw: RangeReader) -> Decoder:
        """A decompressor reading from ``raw`` (frames or members in sequence)."""

    def whole_content(self, fd: int, source: FileSource) -> bytes | None:
        """``source``'s content in one piece, or ``None`` to read it with :meth:`open_decoder`.

        A fast path a format may offer for a small file stored in one unit
        (a zstd frame): it returns the content only when that unit gives
        exactly ``source.size`` bytes, and ``None`` in every other case
        (damaged, several units, more or less data), so that the streaming
        path decides, with its errors.  The content is still checked against
        its digest by the store.
        """
        return None

    def toc_bytes(self) -> bytes:
        """The TOC JSON as embedded in the blob (digest-checked if a digest was given)."""
        if self._toc is None:
            with open(self.path, "rb") as blob:
                self._toc = self._load_toc(blob.fileno())
        return self._toc

    def tree(self, *, limits: Limits | None = None, compat: str | None = None) -> Tree:
        from ..toc import parse_toc

        return parse_toc(self.toc_bytes(), limits=limits or self.limits, compat=compat)

    def import_objects(
        self,
        store: ObjectStore,
        *,
        limits: Limits | None = None,
        compat: str | None = None,
        progress: ProgressArg = None,
    ) -> Tree:
        limits = limits or self.limits
        tree = self.tree(limits=limits, compat=compat)
        sources = plan_sources(
            toc_entries(self.toc_bytes()),
            self.data_end,
            use_end_offset=self.use_end_offset,
            inner_offsets=self.inner_offsets,
            zero_chunks=self.zero_chunks,
            hole_budget=limits.max_hole_ratio * self.blob_size,
        )
        label = f"importing {self.path.name}"
        with open(self.path, "rb") as blob:
            return import_sources(
                blob.fileno(),
                tree,
                sources,
                store,
                self,
                resolve_progress(progress, label),
                label,
                limits,
            )


def open_layer(
    path: str | os.PathLike[str],
    *,
    manifest_position: str | None = None,
    toc_digest: str | None = None,
    limits: Limits | None = None,
    format: str | None = None,
) -> Layer:
    """Open the layer blob at ``path``; sniff its format unless ``format`` names it.

    ``manifest_position``: the ``io.github.containers.zstd-chunked.manifest-position``
    annotation (``"offset:compressedLen:uncompressedLen:type"``); when given,
    the TOC is located through it, not through the footer (containers/storage
    never reads the footer).  ``toc_digest``: ``"sha256:<hex>"``, checked
    against the TOC before it is used: for zstd:chunked the
    ``manifest-checksum`` annotation (sha256 of the *compressed* TOC), for
    eStargz the ``containerd.io/snapshot/stargz/toc.digest`` annotation (sha256
    of the JSON).  Raises ValidationError if the blob is none of the formats or
    its footer is damaged.
    """
    path = Path(path)
    if toc_digest is not None and not _SHA256_DIGEST.fullmatch(toc_digest):
        raise ValidationError(
            f"must be sha256: and 64 lowercase hex digits, got {toc_digest[:80]!r}",
            field="toc_digest",
        )
    if format is None:
        format = sniff_format(path, manifest_position=manifest_position)
    if format == "zstd:chunked":
        from .zstd_chunked import ZstdChunkedLayer

        return ZstdChunkedLayer(
            path, manifest_position=manifest_position, toc_digest=toc_digest, limits=limits
        )
    if manifest_position is not None:
        raise ValidationError(
            f"manifest_position applies to zstd:chunked layers; this one is {format}",
            field="manifest_position",
        )
    if format == "estargz":
        from .estargz import EstargzLayer

        return EstargzLayer(path, toc_digest=toc_digest, limits=limits)
    if format == "tar":
        if toc_digest is not None:
            raise ValidationError("a plain tar layer has no TOC to check", field="toc_digest")
        from .tar import TarLayer

        return TarLayer(path, limits=limits)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")


def sniff_format(path: str | os.PathLike[str], *, manifest_position: str | None = None) -> str:
    """Return ``"zstd:chunked"``, ``"estargz"`` or ``"tar"`` for the blob at ``path``."""
    with open(path, "rb") as blob:
        size = os.fstat(blob.fileno()).st_size
        head = blob.read(512)
        tail_size = min(size, ZSTD_CHUNKED_FOOTER_SIZE)
        tail = os.pread(blob.fileno(), tail_size, size - tail_size)
    if is_zstd_start(head):
        if manifest_position is not None or has_zstd_chunked_footer(tail):
            return "zstd:chunked"
        return "tar"
    if head.startswith(GZIP_MAGIC):
        if is_estargz_footer(tail[-ESTARGZ_FOOTER_SIZE:]):
            return "estargz"
        return "tar"
    if len(head) == 512 and head[257:262] == b"ustar":
        return "tar"
    if size >= 1024 and head == bytes(512):
        return "tar"  # an empty tar: only the end-of-archive blocks
    raise ValidationError(
        "not a layer: neither zstd (zstd:chunked or tar.zst), gzip (eStargz or tar.gz) "
        "nor a tar (no ustar magic)",
        field="format",
    )


def has_zstd_chunked_footer(tail: bytes) -> bool:
    """Whether the blob's last 72 bytes end in the zstd:chunked footer magic."""
    return len(tail) == ZSTD_CHUNKED_FOOTER_SIZE and tail.endswith(ZSTD_CHUNKED_FOOTER_MAGIC)


def is_skippable_frame_magic(value: int) -> bool:
    return _SKIPPABLE_MIN <= value <= _SKIPPABLE_MAX


def is_zstd_start(head: bytes) -> bool:
    """Whether a blob starting with ``head`` is zstd: a frame or a skippable frame (pzstd)."""
    return head.startswith(ZSTD_MAGIC) or (
        len(head) >= 4 and is_skippable_frame_magic(int.from_bytes(head[:4], "little"))
    )


def is_estargz_footer(tail: bytes) -> bool:
    """Whether ``tail`` (the last 51 bytes) is an eStargz footer gzip member."""
    return (
        len(tail) == ESTARGZ_FOOTER_SIZE
        and tail.startswith(b"\x1f\x8b\x08\x04")
        and tail[12:14] == b"SG"
        and tail[32:38] == b"STARGZ"
    )


# -- helpers shared by the TOC-based readers ------------------------------


def check_toc_digest(data: bytes, expected: str | None, what: str) -> None:
    """Raise ValidationError if ``expected`` (``sha256:<hex>``) is not ``data``'s sha256."""
    if expected is None:
        return
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ValidationError(
            f"the {what} has digest {actual}, expected {expected}", field="toc_digest"
        )


def read_exact(fd: int, offset: int, length: int, what: str) -> bytes:
    """``pread`` exactly ``length`` bytes or raise ValidationError (blob truncated)."""
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise ValidationError(
            f"{what}: the blob ends before byte {offset + length}", field="offset"
        )
    return data


class RangeReader:
    """A read-only file-like view of bytes ``[start, end)`` of a file descriptor."""

    __slots__ = ("_end", "_fd", "_pos")

    def __init__(self, fd: int, start: int, end: int) -> None:
        self._fd = fd
        self._pos = start
        self._end = end

    def read(self, size: int = -1) -> bytes:
        left = self._end - self._pos
        if size < 0 or size > left:
            size = left
        if size <= 0:
            return b""
        data = os.pread(self._fd, size, self._pos)
        self._pos += len(data)
        return data

    def readable(self) -> bool:
        return True


class Decoder(Protocol):
    """Reads up to ``n`` decompressed bytes; ``b""`` at the end of the data."""

    def read(self, n: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Segment:
    """``length`` bytes of a file: the decompression of the compressed bytes
    ``[start, end)`` after its first ``skip`` bytes; or, with ``zeros``, a
    hole of ``length`` zero bytes that reads nothing from the blob."""

    start: int
    end: int
    length: int
    skip: int = 0
    zeros: bool = False


@dataclass(frozen=True, slots=True)
class FileSource:
    """Where a regular file's content lives in a TOC-based blob."""

    entry: int
    name: str
    sha256: str  # lowercase hex
    size: int
    segments: tuple[Segment, ...]


def _int_field(entry: dict[str, Any], key: str, index: int, name: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if value.__class__ is not int or value < 0:
        raise ValidationError(
            f"must be a non-negative integer, got {value!r}", entry=index, path=name, field=key
        )
    return int(value)


def plan_sources(
    entries: list[dict[str, Any]],
    data_end: int,
    *,
    use_end_offset: bool,
    inner_offsets: bool = False,
    zero_chunks: bool = False,
    hole_budget: int | None = None,
) -> dict[str, FileSource]:
    """Map each content digest (hex) to where the first file with it is stored.

    ``data_end``: where the file data region ends (the TOC's start).  A file
    is read chunk by chunk, each chunk from its ``offset`` (each chunk starts
    a new frame or gzip member), and each read is bounded by the next larger
    offset any entry of the TOC has (or ``data_end``): never by the end of the
    blob.  ``use_end_offset`` (zstd:chunked): a file's ``endOffset`` must lie
    in the data and bounds its last chunk too.  ``inner_offsets`` (eStargz):
    a chunk starts ``innerOffset`` bytes into what its member decompresses
    to.  ``zero_chunks`` (zstd:chunked): a chunk with ``chunkType: "zeros"``
    is a hole, read from nowhere (containers/storage writes holes for it);
    the holes of the files planned may add up to ``hole_budget`` bytes
    (``Limits.max_hole_ratio`` times the blob's size), checked here, before
    anything is read or hashed.  The TOC has been validated by ``parse_toc``
    already; offsets are checked here against the blob.
    """
    offsets = sorted(
        {
            value
            for index, entry in enumerate(entries)
            if entry.get("type") in ("reg", "chunk")
            and (value := _int_field(entry, "offset", index, str(entry.get("name")))) is not None
            and value < data_end
        }
    )

    def bound(start: int) -> int:
        after = bisect.bisect_right(offsets, start)
        return offsets[after] if after < len(offsets) else data_end

    sources: dict[str, FileSource] = {}
    holes = 0
    index = 0
    count = len(entries)
    while index < count:
        entry = entries[index]
        if entry.get("type") != "reg":
            index += 1
            continue
        first = index
        name = str(entry.get("name"))
        chunks: list[tuple[int, dict[str, Any]]] = [(index, entry)]
        index += 1
        while index < count and entries[index].get("type") == "chunk":
            chunks.append((index, entries[index]))
            index += 1
        size = _int_field(entry, "size", first, name) or 0
        digest = entry.get("digest")
        if size == 0 or not isinstance(digest, str):
            continue
        hexdigest = digest.removeprefix("sha256:")
        if hexdigest in sources:
            continue
        segments = _segments(
            chunks,
            size,
            data_end,
            name,
            bound,
            inner_offsets=inner_offsets,
            zero_chunks=zero_chunks,
        )
        if hole_budget is not None:
            holes += sum(segment.length for segment in segments if segment.zeros)
            if holes > hole_budget:
                raise ValidationError(
                    f"the layer's holes (chunkType zeros) add up to more than {hole_budget} "
                    "bytes, limits.max_hole_ratio times the blob's size",
                    entry=first,
                    path=name,
                    field="chunkType",
                )
        end_offset = _int_field(entry, "endOffset", first, name) if use_end_offset else None
        if end_offset is not None:
            offset = _int_field(entry, "offset", first, name) or 0
            if not offset < end_offset <= data_end:
                raise ValidationError(
                    f"[{offset}, {end_offset}) is not a range inside the file data [0, {data_end})",
                    entry=first,
                    path=name,
                    field="endOffset",
                )
            last = segments[-1]
            if not last.zeros and last.start < end_offset < last.end:
                segments = (*segments[:-1], dataclasses.replace(last, end=end_offset))
        sources[hexdigest] = FileSource(
            entry=first, name=name, sha256=hexdigest, size=size, segments=segments
        )
    return sources


def _segments(
    chunks: list[tuple[int, dict[str, Any]]],
    size: int,
    data_end: int,
    name: str,
    bound: Callable[[int], int],
    *,
    inner_offsets: bool,
    zero_chunks: bool,
) -> tuple[Segment, ...]:
    segments: list[Segment] = []
    expected_offset = 0
    for position, (index, chunk) in enumerate(chunks):
        chunk_offset = _int_field(chunk, "chunkOffset", index, name) or 0
        if chunk_offset != expected_offset:
            raise ValidationError(
                f"chunks must be contiguous: expected {expected_offset}, got {chunk_offset}",
                entry=index,
                path=name,
                field="chunkOffset",
            )
        chunk_size = _int_field(chunk, "chunkSize", index, name)
        last = position == len(chunks) - 1
        if chunk_size is None or (last and chunk_size == 0):
            if not last:
                raise ValidationError(
                    "only the last chunk may omit chunkSize",
                    entry=index,
                    path=name,
                    field="chunkSize",
                )
            chunk_size = size - chunk_offset
        if chunk_size <= 0 or chunk_offset + chunk_size > size:
            raise ValidationError(
                f"chunk [{chunk_offset}, {chunk_offset + chunk_size}) is empty or beyond "
                f"the file size {size}",
                entry=index,
                path=name,
                field="chunkSize",
            )
        expected_offset = chunk_offset + chunk_size
        if zero_chunks and chunk.get("chunkType") == "zeros":
            segments.append(Segment(0, 0, chunk_size, zeros=True))
            continue
        start = _int_field(chunk, "offset", index, name)
        if start is None and position == 0:
            raise ValidationError(
                "a file with content needs an offset", entry=index, path=name, field="offset"
            )
        if start is None or start >= data_end:
            raise ValidationError(
                f"must be inside the file data [0, {data_end}), got {start!r}",
                entry=index,
                path=name,
                field="offset",
            )
        # eStargz >= 0.13 may pack several small files into one gzip member;
        # innerOffset is where this piece starts in its decompressed bytes.
        inner = (_int_field(chunk, "innerOffset", index, name) or 0) if inner_offsets else 0
        segments.append(Segment(start, bound(start), chunk_size, inner))
    if expected_offset != size:
        raise ValidationError(
            f"chunks cover {expected_offset} of {size} bytes",
            entry=chunks[-1][0],
            path=name,
            field="chunkSize",
        )
    return tuple(segments)


def schedule(sources: Iterable[FileSource]) -> list[tuple[FileSource, ...]]:
    """Group files into jobs that read the blob forward, each byte once.

    Files are ordered by where their data starts; the data segments of the
    whole sequence must then go forward: by ``start``, and within one
    ``start`` (a gzip member several files share through ``innerOffset``) by
    decompressed position, without overlap.  So every compressed range is
    decoded once, in one pass, and its files served from that pass.  A job
    is a run of files that share a range; jobs are independent (they may run
    on several threads).  A file only of holes is a job of its own.  A TOC
    whose files interleave or overlap is refused: no writer stores them so,
    and reading them would mean decoding some bytes again for each file.
    """
    with_data: list[tuple[tuple[int, int], FileSource]] = []
    jobs: list[tuple[FileSource, ...]] = []
    for source in sources:
        first = next(
            ((segment.start, segment.skip) for segment in source.segments if not segment.zeros),
            None,
        )
        if first is None:
            jobs.append((source,))
        else:
            with_data.append((first, source))
    with_data.sort(key=lambda item: (item[0], item[1].entry))
    current: list[FileSource] = []
    start, position = -1, 0
    for (first_start, _), source in with_data:
        if current and first_start != start:
            jobs.append(tuple(current))
            current = []
        for segment in source.segments:
            if segment.zeros:
                continue
            if segment.start < start or (segment.start == start and segment.skip < position):
                raise ValidationError(
                    f"its data at offset {segment.start} (innerOffset {segment.skip}) "
                    "overlaps or comes before data of another file or chunk read "
                    "before it: files must be stored apart, chunks in order",
                    entry=source.entry,
                    path=source.name,
                    field="offset",
                )
            if segment.start != start:
                start = segment.start
            position = segment.skip + segment.length
        current.append(source)
    if current:
        jobs.append(tuple(current))
    return jobs


def sha256_payload(hexdigest: str) -> bytes:
    return f"{hexdigest[:2]}/{hexdigest[2:]}".encode("ascii")


def import_sources(
    fd: int,
    tree: Tree,
    sources: dict[str, FileSource],
    store: ObjectStore,
    layer: TocLayer,
    progress: Progress | None,
    label: str,
    limits: Limits,
) -> Tree:
    """Extract, verify and store every payload ``tree`` uses; return the final Tree."""
    wanted: dict[bytes, FileSource] = {}
    for _path, node in tree:
        if isinstance(node, Inode) and node.payload is not None and node.payload not in wanted:
            hexdigest = (node.payload[:2] + node.payload[3:]).decode("ascii")
            source = sources.get(hexdigest)
            if source is None:
                raise ValidationError(
                    f"no entry stores the content sha256:{hexdigest}", field="digest"
                )
            wanted[node.payload] = source
    jobs = schedule(wanted.values())
    if progress is not None:
        progress.start(
            label,
            total_files=len(wanted),
            total_bytes=sum(source.size for source in wanted.values()),
        )
    stored: dict[str, bytes] = {}
    try:
        with store.batch():
            workers = _import_workers(len(jobs))
            if workers == 1:
                for job in jobs:
                    _import_job(fd, job, store, layer, progress, stored)
            else:
                _import_parallel(fd, jobs, stored, store, layer, progress, workers)
    finally:
        if progress is not None:
            progress.close()
    names = {toc_payload: stored[source.sha256] for toc_payload, source in wanted.items()}
    return with_store_names(tree, store, names, limits)


#: Jobs below which an import stays on one thread (threads cost more than they give).
_PARALLEL_MIN_FILES = 64


def _import_workers(jobs: int) -> int:
    """Threads for an import: decompression, hashing and writes release the GIL."""
    if jobs < _PARALLEL_MIN_FILES:
        return 1
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _import_parallel(
    fd: int,
    jobs: list[tuple[FileSource, ...]],
    stored: dict[str, bytes],
    store: ObjectStore,
    layer: TocLayer,
    progress: Progress | None,
    workers: int,
) -> None:
    """``_import_job`` for every job on ``workers`` threads; the first failure
    (in blob order) is raised after every thread has stopped, so the batch's
    cleanup sees every temporary file."""
    lock = threading.Lock()
    position = 0
    failed = threading.Event()

    def work() -> None:
        nonlocal position
        while not failed.is_set():
            with lock:
                index = position
                position += 1
            if index >= len(jobs):
                return
            try:
                _import_job(fd, jobs[index], store, layer, progress, stored)
            except BaseException as exc:
                failures.append((index, exc))
                failed.set()
                return

    failures: list[tuple[int, BaseException]] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="import") as pool:
        futures = [pool.submit(work) for _ in range(workers)]
        try:
            for future in futures:
                future.result()
        except BaseException:  # e.g. KeyboardInterrupt here: stop the workers too
            failed.set()
            raise
    if failures:
        raise min(failures, key=lambda failure: failure[0])[1]


class _Reading:
    """The one decoder of a job: the range it reads and how far it has gone."""

    __slots__ = ("decoder", "position", "start")

    def __init__(self) -> None:
        self.decoder: Decoder | None = None
        self.start = -1
        self.position = 0


def _import_job(
    fd: int,
    job: tuple[FileSource, ...],
    store: ObjectStore,
    layer: TocLayer,
    progress: Progress | None,
    stored: dict[str, bytes],
) -> None:
    """Store the files of ``job`` in order, decoding each range once (see :func:`schedule`)."""
    reading = _Reading()
    for source in job:
        try:
            with store.writer("sha256:" + source.sha256) as out:
                whole = layer.whole_content(fd, source) if len(job) == 1 else None
                if whole is not None:
                    out.write(whole)
                    if progress is not None:
                        progress.advance(nbytes=len(whole))
                else:
                    for segment in source.segments:
                        _copy_segment(fd, segment, reading, out, layer, progress)
                stored[source.sha256] = out.commit()
            if source is job[-1]:
                _finish_range(reading, layer)
        except layer.decode_errors as exc:
            raise ValidationError(
                f"file data cannot be decompressed: {exc}",
                entry=source.entry,
                path=source.name,
                field="offset",
            ) from None
        except ValidationError as exc:
            raise exc.located(entry=source.entry, path=source.name) from None
        if progress is not None:
            progress.advance(files=1)


def _copy_segment(
    fd: int,
    segment: Segment,
    reading: _Reading,
    out: ObjectWriter,
    layer: TocLayer,
    progress: Progress | None,
) -> None:
    """Write ``segment``'s bytes to ``out``, at most ``_READ_SIZE`` at a time."""
    left = segment.length
    if segment.zeros:
        out.hole(left)
        if progress is not None:
            progress.advance(nbytes=segment.length)
        return
    if reading.decoder is None or reading.start != segment.start:
        _finish_range(reading, layer)
        reading.decoder = layer.open_decoder(RangeReader(fd, segment.start, segment.end))
        reading.start, reading.position = segment.start, 0
    decoder = reading.decoder
    skip = segment.skip - reading.position
    while skip:
        data = decoder.read(min(skip, _READ_SIZE))
        if not data:
            raise ValidationError(
                f"the data at offset {segment.start} ends before innerOffset {segment.skip}",
                field="innerOffset",
            )
        skip -= len(data)
    while left:
        data = decoder.read(min(left, _READ_SIZE))
        if not data:
            raise ValidationError(
                f"the data at offset {segment.start} decompresses to "
                f"{segment.length - left} bytes, expected {segment.length}",
                field="size",
            )
        left -= len(data)
        out.write(data)
        if progress is not None:
            progress.advance(nbytes=len(data))
    reading.position = segment.skip + segment.length


def _finish_range(reading: _Reading, layer: TocLayer) -> None:
    """Read the rest of the range being decoded, if the format checks its units whole.

    eStargz: a range is whole gzip members (its files' data, then the tar
    headers of the entries up to the next offset); reading it to its end has
    zlib check each member's CRC-32 and size, and refuses one cut short.
    Each byte is still decoded once (the decoder goes on from where the
    files' data ended).
    """
    decoder = reading.decoder
    if decoder is None or not layer.check_whole_units:
        return
    reading.decoder = None
    while decoder.read(_READ_SIZE):
        pass


def with_store_names(
    tree: Tree, store: ObjectStore, names: dict[bytes, bytes], limits: Limits
) -> Tree:
    """Return ``tree`` with payloads renamed to the store's names and fs-verity digests set.

    ``names`` maps the sha256 payload of each file to the store's name (the
    same unless the store names objects by fs-verity digest).
    """
    if not store.computes_fsverity and all(key == value for key, value in names.items()):
        return tree
    builder = TreeBuilder(limits)
    for path, node in tree:
        new: Node = node
        if isinstance(node, Inode) and node.payload is not None:
            payload = names.get(node.payload, node.payload)
            digest = store.fsverity_digest(payload) if store.computes_fsverity else None
            new = dataclasses.replace(
                node, payload=payload, fsverity_digest=digest or node.fsverity_digest
            )
        builder.add(path, new)
    return builder.build()


def toc_entries(toc: bytes) -> list[dict[str, Any]]:
    """The TOC's entries as plain dicts (``parse_toc`` has validated the document).

    A second ``json.loads`` of the TOC: simple, and costs about as much as
    the validation itself (noted for the performance work).
    """
    document = json.loads(toc)
    entries = document.get("entries") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValidationError("the TOC has no list of entry objects", field="entries")
    return entries


class GzipMembers:
    """Decompresses consecutive gzip members from ``raw`` (a :class:`Decoder`).

    Each ``read(n)`` returns at most ``n`` bytes (zlib's ``max_length``), so a
    decompression bomb never holds more than ``n`` bytes in memory.  Damaged
    data raises ``zlib.error``, and so does data that ends inside a member
    (its trailer, CRC-32 and size, is then missing): every member that is
    read to its end has its CRC-32 and size checked by zlib.
    """

    __slots__ = ("_inflate", "_pending", "_raw", "_started")

    def __init__(self, raw: Decoder) -> None:
        self._raw = raw
        self._inflate = zlib.decompressobj(31)
        self._pending = b""
        self._started = False

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            raise ValueError("GzipMembers.read needs a size")
        parts: list[bytes] = []
        got = 0
        while got < n:
            feed = self._pending or self._raw.read(_FEED_SIZE)
            self._pending = b""
            if not feed:
                if self._started:
                    raise zlib.error("the data ends inside a gzip member (its trailer is missing)")
                break
            self._started = True
            inflate = self._inflate
            data = inflate.decompress(feed, n - got)
            if data:
                parts.append(data)
                got += len(data)
            if inflate.eof:
                self._pending = inflate.unused_data
                self._inflate = zlib.decompressobj(31)
                self._started = False
            else:
                self._pending = inflate.unconsumed_tail
        return b"".join(parts)

    def readable(self) -> bool:
        return True


class ZstdFrameCheck:
    """Passes ``raw``'s bytes through, following their zstd frame structure.

    libzstd checks what it decodes (block contents, a frame's content
    checksum), but a stream that simply stops inside a frame decodes to a
    shorter output without an error.  This reader walks the frames' headers
    and block headers (RFC 8878 section 3.1) as the bytes go by, at no extra
    read, and raises ``zstandard.ZstdError`` when the input ends anywhere but
    between two frames.  A skippable frame that holds a zstd frame or the
    zstd:chunked footer (a TOC, a tar-split, the footer: what only a
    zstd:chunked blob stores) raises ValidationError: such a blob is never
    read as a plain ``tar.zst``.  Other skippable frames (pzstd's) are fine.
    """

    __slots__ = ("_after", "_checksum", "_head", "_need", "_raw", "_skip", "_skippable", "_state")

    def __init__(self, raw: Decoder) -> None:
        self._raw = raw
        self._state = "magic"
        self._need = 4
        self._head = b""
        self._skip = 0
        self._after = "magic"
        self._checksum = False
        self._skippable = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n if n >= 0 else _FEED_SIZE)
        if data:
            self._scan(data)
        elif self._state != "magic" or self._head or self._skip:
            raise zstandard_error("the data ends inside a zstd frame (the blob is cut short)")
        return data

    def readable(self) -> bool:
        return True

    def _scan(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                pos += step
                self._skip -= step
                if not self._skip:
                    self._enter(self._after)
                continue
            take = min(self._need - len(self._head), end - pos)
            self._head += data[pos : pos + take]
            pos += take
            if len(self._head) == self._need:
                head, self._head = self._head, b""
                self._header(head)

    def _enter(self, state: str) -> None:
        if state == "checksum":  # a frame's last 4 bytes: its content checksum
            self._state, self._skip, self._after = state, 4, "magic"
            return
        self._state = state
        self._need = {"magic": 4, "fhd": 1, "block": 3, "skipsize": 4}.get(state, self._need)

    def _skip_then(self, count: int, state: str) -> None:
        if count:
            self._skip, self._after = count, state
        else:
            self._enter(state)

    def _header(self, head: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(head, "little")
            if head == ZSTD_MAGIC:
                self._enter("fhd")
            elif is_skippable_frame_magic(magic):
                self._enter("skipsize")
            else:
                raise zstandard_error(f"not a zstd frame (magic 0x{magic:08x})")
        elif state == "fhd":
            fhd = head[0]
            single = (fhd >> 5) & 1
            self._checksum = bool(fhd & 4)
            size = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]
            self._skip_then(size, "block")
        elif state == "block":
            value = int.from_bytes(head, "little")
            kind, size = (value >> 1) & 3, value >> 3
            if kind == 3:
                raise zstandard_error("reserved zstd block type")
            nxt = "block" if not value & 1 else ("checksum" if self._checksum else "magic")
            self._skip_then(1 if kind == 1 else size, nxt)
        elif state == "skipsize":
            size = int.from_bytes(head, "little")
            self._skippable = size
            look = size if size == ZSTD_CHUNKED_FOOTER_SIZE - 8 else min(size, 4)
            self._state, self._need = "skippayload", look
            if not look:
                self._enter("magic")
        elif state == "skippayload":
            if head.startswith(ZSTD_MAGIC) or head.endswith(ZSTD_CHUNKED_FOOTER_MAGIC):
                raise ValidationError(
                    "a zstd blob holding zstd:chunked skippable frames (TOC, tar-split "
                    "or footer) but no valid zstd:chunked footer at its end: a damaged "
                    "zstd:chunked blob, refused rather than read as a plain tar.zst",
                    field="footer",
                )
            self._skip_then(self._skippable - len(head), "magic")


def zstandard_error(message: str) -> Exception:
    import zstandard

    return zstandard.ZstdError(message)
