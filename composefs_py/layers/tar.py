"""Plain tar layers: ``.tar``, ``.tar.gz`` and ``.tar.zst``.

The tar is read as a stream (gzip members and zstd frames decompressed on
the fly, never more than a buffer in memory), by a reader of its own: ustar
and GNU headers, pax extended and global headers, GNU long names and long
link names, base-256 number fields, and sparse files (GNU's old ``S``
members and pax sparse formats 0.0, 0.1 and 1.0).  Each member's header
becomes the TOC entry a zstd:chunked conversion would write for it
(containers/storage makes its TOCs from the very same headers): name, type,
mode, uid/gid, ``modtime`` with the pax sub-second mtime, size, ``linkName``
(a hardlink's is the earlier member's path), device numbers,
``SCHILY.xattr.*`` pax records as base64 xattrs, and the sha256 ``digest``
of the content, computed while reading it.  Those entries then go through
:func:`~composefs_py.toc.parse_toc`, so a tar and a TOC follow exactly the
same rules (names, whiteouts, opaque directories, limits) and give the same
Tree.

Differences from a TOC: a path given twice means the last member wins (tar
extraction semantics), where a TOC rejects a differing repeat (a file and its
own ``.wh.`` whiteout in one tar are still rejected: they are different
paths until the whiteout is converted).  Member types other than files,
directories, links, devices and fifos are rejected; names that are not UTF-8
are rejected (a TOC cannot carry them either); mtimes must lie in years
0001..9999 (RFC 3339, as in a TOC).  A damaged header block (bad checksum,
a number field that is not a number) is rejected, as are pax records that
do not parse, an extended header with no member after it, and members
whose data the archive does not hold.  Hardlink members never carry data
(their size is ignored, as GNU tar and Go write them).

How a tar must end: every member complete (header, data, padding to a
512-byte block), then either the end of the stream right there or a zero
block followed by nothing but zero blocks to the end of the stream (the
usual two, and any record padding).  A stream that ends inside a block, or
has anything but zeros after the first zero block, is refused.  That is
what GNU tar and Go's ``archive/tar`` both accept (each takes a stream that
ends after a complete member; Go refuses a zero block followed by a
non-zero one), made strict where they differ: GNU tar only warns of a lone
zero block and stops reading there, Go stops after two; this reader reads
to the end, so that a compressed tar's last gzip member or zstd frame is
checked whole.  A gzip tar holding ``stargz.index.json`` is a damaged
eStargz blob (its footer is gone), and is refused.

Cost model (every bound checked *before* the memory or the write it bounds):

* Input: one pass over the decompressed stream, ``_READ_SIZE`` (1 MiB) at a
  time; nothing is read twice.  After the end-of-archive block the rest of
  the stream is read (to check it is zeros and the compression is whole),
  at most ``Limits.max_hole_ratio`` times the blob's size, counted as it is
  read.  A ``tar.zst``'s frame structure is followed by
  :class:`~composefs_py.layers.ZstdFrameCheck` as the bytes go by (a few
  header bytes per block, no second read).
* Members: ``Limits.max_entries`` members, counted as each header is read.
* Names: a GNU long name or long link name longer than
  ``Limits.max_path_bytes`` (``max_symlink_bytes`` for a link) is refused
  from its header's size, before its payload is read; a pax ``path`` or
  ``linkpath`` record likewise, as it is parsed.  The names' running total
  is checked against ``Limits.max_total_path_bytes`` at each member.
* Extended headers: one pax or long-name header is at most
  :func:`extended_header_cap` bytes (about 1 MiB with the default limits;
  never more than ``MAX_EXTENDED_HEADER_BYTES``), refused from its size
  before it is read; at most ``_MAX_EXTENDED_RUN`` of them before one
  member; their running total is checked against ``Limits.max_input_bytes``.
  Only the records this reader uses are kept (a global header's unknown
  records are not copied into each member); a member's xattrs are refused
  past ``Limits.max_xattr_space`` bytes as their records are parsed.  The
  pax parser is linear (no regular expression, no backtracking).
* The TOC the reader builds: each entry's JSON is made once, as its member
  is read, and the running total is checked against
  ``Limits.max_input_bytes``; the document is those pieces joined.
* Content: a regular member's size (a sparse member's real size) is checked
  against ``Limits.max_file_size`` from its header before a byte is read or
  written.  A sparse map must be ordered, without overlap, inside the real
  size, and its data sizes must add up to what the archive stores: it is
  checked entry by entry as it is read (linear in the map), before any
  content is written.  A sparse file's holes stay holes in its object
  (``ObjectWriter.hole``: no disk block written) but are hashed as zeros, so
  a sparse member costs hashing its real size, at most
  ``Limits.max_file_size``, and writing the data the archive holds.  The
  holes of all members add up to at most ``Limits.max_hole_ratio`` times
  the blob's size, checked from each sparse map before its member's
  content is read: the hashing stays linear in the input.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import IO, Any, BinaryIO, cast

import zstandard

from .._progress import Progress, ProgressArg, resolve_progress
from ..errors import ValidationError
from ..limits import Limits
from ..model import Tree
from ..objects import ObjectStore, update_with_zeros
from . import (
    GZIP_MAGIC,
    GzipMembers,
    Layer,
    ZstdFrameCheck,
    is_zstd_start,
    with_store_names,
)

__all__ = ["MAX_EXTENDED_HEADER_BYTES", "TarLayer", "extended_header_cap"]

_BLOCK = 512
_TYPES = {
    b"0": "reg",
    b"\0": "reg",
    b"7": "reg",
    b"S": "reg",
    b"5": "dir",
    b"2": "symlink",
    b"1": "hardlink",
    b"3": "char",
    b"4": "block",
    b"6": "fifo",
}
_PAX_LOCAL = (b"x", b"X")
_PAX_GLOBAL = b"g"
_LONG_NAME = b"L"
_LONG_LINK = b"K"
_XATTR_PREFIX = b"SCHILY.xattr."
_PAX_TIME = re.compile(r"(-?)([0-9]{1,20})(?:\.([0-9]*))?")
_DECIMAL = re.compile(rb"[0-9]{1,20}")
_EPOCH = datetime.datetime(1970, 1, 1)
_READ_SIZE = 1 << 20
_ZERO_BLOCK = bytes(_BLOCK)
_ESTARGZ_TOC = re.compile(r"(\./)?/*stargz\.index\.json")
#: Largest pax or GNU long-name header ever read into memory.
MAX_EXTENDED_HEADER_BYTES = 16 << 20
#: Extended headers (pax, long name, long link) allowed before one member.
_MAX_EXTENDED_RUN = 8
#: Room for a pax header's other records (times, owner names, ACLs, sparse maps).
_EXTENDED_SLACK = 1 << 20
#: Bytes a name may have beyond the path limit before cleaning (``./``, ``/``).
_NAME_SLACK = 16
_READ_ERRORS: tuple[type[BaseException], ...] = (zlib.error, zstandard.ZstdError, EOFError)


def extended_header_cap(limits: Limits) -> int:
    """Largest pax or long-name header read: a path, a link target, the
    xattrs of one inode, and ``_EXTENDED_SLACK`` for the other records."""
    wanted = (
        limits.max_path_bytes
        + limits.max_symlink_bytes
        + limits.max_xattr_space
        + limits.max_xattr_value_bytes
        + _EXTENDED_SLACK
    )
    return min(MAX_EXTENDED_HEADER_BYTES, wanted)


class TarLayer(Layer):
    """A tar, tar.gz or tar.zst layer; ``compression`` is ``"none"``, ``"gzip"`` or ``"zstd"``."""

    format = "tar"

    def __init__(self, path: str | os.PathLike[str], *, limits: Limits | None = None) -> None:
        super().__init__(path, limits=limits)
        with open(self.path, "rb") as blob:
            head = blob.read(4)
        if head.startswith(GZIP_MAGIC):
            self.compression = "gzip"
        elif is_zstd_start(head):
            self.compression = "zstd"
        else:
            self.compression = "none"

    def toc_bytes(self) -> None:
        """A plain tar has no TOC: always ``None`` (:meth:`tree` reads the headers)."""
        return None

    def tree(self, *, limits: Limits | None = None, compat: str | None = None) -> Tree:
        """Read every header and hash every file (one pass over the tar)."""
        return self._read(None, limits or self.limits, compat, None)[0]

    def import_objects(
        self,
        store: ObjectStore,
        *,
        limits: Limits | None = None,
        compat: str | None = None,
        progress: ProgressArg = None,
    ) -> Tree:
        """Store every file's content while reading the tar; return the Tree.

        A tar claims no digests, so nothing can mismatch: each object is
        named by the digest of what was read.  All or nothing: a tar rejected
        for its data or its metadata adds no object to the store.  Contents
        of members that a later member of the same path replaces are stored
        too.
        """
        label = f"importing {self.path.name}"
        limits = limits or self.limits
        with store.batch():
            tree, names = self._read(store, limits, compat, resolve_progress(progress, label))
        return with_store_names(tree, store, names, limits)

    def _open(self, raw: BinaryIO) -> IO[bytes]:
        if self.compression == "gzip":
            return cast(IO[bytes], GzipMembers(raw))
        if self.compression == "zstd":
            return cast(
                IO[bytes],
                zstandard.ZstdDecompressor().stream_reader(
                    cast(BinaryIO, ZstdFrameCheck(raw)), read_across_frames=True, closefd=False
                ),
            )
        return raw

    def _read(
        self,
        store: ObjectStore | None,
        limits: Limits,
        compat: str | None,
        progress: Progress | None,
    ) -> tuple[Tree, dict[bytes, bytes]]:
        """Read the tar once; return its Tree and the store's names of its payloads."""
        from ..toc import parse_toc

        toc = _TocBuilder(limits)
        names: dict[bytes, bytes] = {}
        if progress is not None:
            progress.start(f"importing {self.path.name}")
        reader: _MemberReader | None = None
        try:
            with open(self.path, "rb") as raw:
                blob_size = os.fstat(raw.fileno()).st_size
                reader = _MemberReader(_Stream(self._open(raw)), limits, blob_size)
                for member in reader:
                    entry = _entry(member)
                    if self.compression == "gzip" and _ESTARGZ_TOC.fullmatch(member.name):
                        raise ValidationError(
                            "a gzip tar holding stargz.index.json but no valid eStargz "
                            "footer at its end: a damaged eStargz blob, refused rather "
                            "than read as a plain tar.gz",
                            entry=member.index,
                            path=member.name,
                            field="footer",
                        )
                    if entry["type"] == "reg" and member.real_size:
                        digest, payload = _content(reader, member, store, progress)
                        entry["digest"] = "sha256:" + digest
                        if payload is not None:
                            names[f"{digest[:2]}/{digest[2:]}".encode()] = payload
                    toc.add(entry, member.index)
        except _READ_ERRORS as exc:
            where = reader.index if reader is not None else 0
            raise ValidationError(
                f"not a valid tar ({self.compression} compression): {exc}", entry=where
            ) from None
        finally:
            if progress is not None:
                progress.close()
        try:
            return parse_toc(toc.document(), limits=limits, compat=compat), names
        except ValidationError as exc:
            raise toc.to_member(exc) from None


# -- the stream and its members --------------------------------------------------


class _Stream:
    """The decompressed tar: exact reads and skips, ``_READ_SIZE`` at a time."""

    __slots__ = ("_raw", "offset")

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.offset = 0

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (``size`` at most ``_READ_SIZE``); fewer only at the end."""
        parts: list[bytes] = []
        got = 0
        while got < size:
            data = self._raw.read(size - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        self.offset += got
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_exact(self, size: int, what: str) -> bytes:
        data = self.read(size)
        if len(data) != size:
            raise ValidationError(
                f"the tar ends inside {what} (at byte {self.offset} of its data)", field="size"
            )
        return data

    def skip(self, size: int, what: str) -> None:
        while size:
            size -= len(self.read_exact(min(size, _READ_SIZE), what))


@dataclass(slots=True)
class _Member:
    """A file, directory, link, device or fifo of the archive, its headers applied."""

    index: int
    kind: str
    name: str
    mode: int
    uid: int
    gid: int
    mtime: int
    pax_mtime: str | None
    linkname: str
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes]
    #: Bytes of data stored in the archive after the header (after a pax 1.0 map).
    size: int
    #: The file's size (a sparse file's real size).
    real_size: int
    #: Sparse files: (offset, length) of each data piece, in order.
    sparse: list[tuple[int, int]] | None = None


@dataclass(slots=True)
class _Pending:
    """What extended headers said about the next member."""

    records: dict[str, bytes] = field(default_factory=dict)
    xattrs: dict[str, bytes] = field(default_factory=dict)
    xattr_bytes: int = 0
    sparse_pairs: list[int] = field(default_factory=list)
    long_name: bytes | None = None
    long_link: bytes | None = None
    count: int = 0


class _MemberReader:
    """Yields the members of a tar stream; the caller reads each member's data
    (``member.size`` bytes) with :meth:`data` before asking for the next."""

    def __init__(self, stream: _Stream, limits: Limits, blob_size: int) -> None:
        self.stream = stream
        self.limits = limits
        #: What the members' holes may add up to (Limits.max_hole_ratio).
        self._hole_budget = limits.max_hole_ratio * blob_size
        self._holes = 0
        self.index = 0
        self._cap = extended_header_cap(limits)
        self._extended_bytes = 0
        self._path_bytes = 0
        self._global = _Pending()
        self._left = 0  # data bytes of the current member not read yet

    def data(self, size: int) -> bytes:
        """Up to ``size`` bytes of the current member's data."""
        size = min(size, self._left)
        data = self.stream.read_exact(size, "a member's data")
        self._left -= size
        return data

    def __iter__(self) -> Iterator[_Member]:
        stream = self.stream
        pending = _Pending()
        while True:
            if self._left:
                self.stream.skip(self._left, "a member's data")
                self._left = 0
            self.stream.skip(-stream.offset % _BLOCK, "padding")
            block = stream.read(_BLOCK)
            if len(block) < _BLOCK or block == _ZERO_BLOCK:
                if block and len(block) < _BLOCK:
                    raise self.fail("the tar ends inside a header block", "type")
                if not block and stream.offset == 0:
                    raise self.fail("empty: not a tar", "type")
                if pending.count:
                    raise self.fail("an extended header with no member after it", "type")
                if block:
                    self._trailer()
                return
            header = _Header.parse(block, self)
            kind = header.kind
            if kind in _PAX_LOCAL or kind == _PAX_GLOBAL or kind in (_LONG_NAME, _LONG_LINK):
                self._extended(header, pending)
                continue
            if self.index >= self.limits.max_entries:
                raise self.fail(f"more than {self.limits.max_entries} members", "entries")
            member = self._member(header, pending)
            pending = _Pending()
            self._left = member.size
            yield member
            self.index += 1

    def _trailer(self) -> None:
        """After the first zero block: only zero blocks, to the end of the stream.

        Reading to the end makes the decompressor check that the last gzip
        member or zstd frame is whole (trailer, checksum).  The zeros are at
        most ``Limits.max_hole_ratio`` times the blob's size (what zstd can
        expand zeros to), counted as they are read.
        """
        stream = self.stream
        budget = self._hole_budget
        start = stream.offset
        while True:
            data = stream.read(_READ_SIZE)
            if not data:
                break
            if data.count(0) != len(data):
                raise self.fail(
                    "data after the end-of-archive zero block (a tar ends in zero blocks only)",
                    "type",
                )
            if stream.offset - start > budget:
                raise self.fail(
                    f"more than {budget} zero bytes after the end of the archive "
                    "(limits.max_hole_ratio times the blob's size)",
                    "type",
                )
        if stream.offset % _BLOCK:
            raise self.fail(
                f"the tar ends {stream.offset % _BLOCK} bytes into a block after its end "
                "(cut short, or not a tar)",
                "type",
            )

    def fail(self, reason: str, field: str, path: str | None = None) -> ValidationError:
        return ValidationError(reason, entry=self.index, path=path, field=field)

    def _extended(self, header: _Header, pending: _Pending) -> None:
        kind, size = header.kind, header.size
        if kind == _PAX_GLOBAL:
            target = self._global
        else:
            target = pending
            pending.count += 1
            if pending.count > _MAX_EXTENDED_RUN:
                raise self.fail(
                    f"more than {_MAX_EXTENDED_RUN} extended headers before one member",
                    "type",
                )
        if kind in (_LONG_NAME, _LONG_LINK):
            limit = self.limits.max_path_bytes if kind == _LONG_NAME else self._link_limit()
            what = "name" if kind == _LONG_NAME else "linkName"
            if size > limit + _NAME_SLACK + 1:
                raise self.fail(
                    f"a GNU long {'name' if kind == _LONG_NAME else 'link name'} of "
                    f"{size} bytes is longer than the path limit ({limit} bytes)",
                    what,
                )
        elif size > self._cap:
            raise self.fail(
                f"extended header of {size} bytes (more than {self._cap}, "
                "what a path, a link target and one inode's xattrs need)",
                "pax",
            )
        self._extended_bytes += size
        if self._extended_bytes > self.limits.max_input_bytes:
            raise self.fail(
                f"extended headers add up to more than {self.limits.max_input_bytes} bytes "
                "(limits.max_input_bytes)",
                "pax",
            )
        payload = self.stream.read_exact(size, "an extended header")
        if kind == _LONG_NAME:
            pending.long_name = payload.split(b"\0", 1)[0]
        elif kind == _LONG_LINK:
            pending.long_link = payload.split(b"\0", 1)[0]
        else:
            self._pax(payload, target, is_global=kind == _PAX_GLOBAL)

    def _link_limit(self) -> int:
        return max(self.limits.max_symlink_bytes, self.limits.max_path_bytes)

    def _pax(self, buf: bytes, target: _Pending, *, is_global: bool) -> None:
        """Parse ``"%d %s=%s\\n"`` records, keeping only those this reader uses."""
        limits = self.limits
        pos, end = 0, len(buf)
        while pos < end:
            space = buf.find(b" ", pos, min(end, pos + 21))
            length_text = buf[pos:space] if space > pos else b""
            if not _DECIMAL.fullmatch(length_text):
                if not buf[pos:].strip(b"\0"):
                    break  # NUL padding after the last record
                raise self.fail(f"damaged pax record at byte {pos}", "pax")
            stop = pos + int(length_text)
            equals = buf.find(b"=", space + 1, stop)
            if stop > end or equals < 0 or buf[stop - 1 : stop] != b"\n":
                raise self.fail(f"damaged pax record at byte {pos}", "pax")
            key, value = buf[space + 1 : equals], buf[equals + 1 : stop - 1]
            pos = stop
            if key.startswith(_XATTR_PREFIX):
                name = _utf8(key[len(_XATTR_PREFIX) :], self, "xattrs")
                previous = target.xattrs.get(name)
                target.xattr_bytes += len(name) + len(value)
                if previous is not None:
                    target.xattr_bytes -= len(name) + len(previous)
                if target.xattr_bytes > limits.max_xattr_space:
                    raise self.fail(
                        f"xattrs of more than {limits.max_xattr_space} bytes "
                        "(limits.max_xattr_space)",
                        "xattrs",
                    )
                target.xattrs[name] = value
            elif key in (b"path", b"linkpath", b"GNU.sparse.name"):
                if is_global:
                    raise self.fail(f"a global pax header sets {key.decode('latin-1')}", "pax")
                limit = limits.max_path_bytes if key != b"linkpath" else self._link_limit()
                if len(value) > limit + _NAME_SLACK:
                    raise self.fail(
                        f"pax {key.decode('latin-1')} of {len(value)} bytes is longer than the "
                        f"path limit ({limit} bytes)",
                        "linkName" if key == b"linkpath" else "name",
                    )
                target.records[key.decode("latin-1")] = value
            elif key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
                if is_global:
                    raise self.fail("a global pax header holds a sparse map", "pax")
                pairs = target.sparse_pairs
                if (key == b"GNU.sparse.offset") != (len(pairs) % 2 == 0):
                    raise self.fail("pax sparse 0.0 offsets and sizes do not pair", "sparse")
                pairs.append(_decimal(value, self, "sparse"))
            elif key in (b"size", b"uid", b"gid", b"mtime") or key.startswith(b"GNU.sparse."):
                if is_global and key not in (b"uid", b"gid", b"mtime"):
                    raise self.fail(f"a global pax header sets {key.decode('latin-1')}", "pax")
                target.records[key.decode("latin-1")] = value

    def _member(self, header: _Header, pending: _Pending) -> _Member:
        records = {**self._global.records, **pending.records}
        xattrs = {**self._global.xattrs, **pending.xattrs}
        if self._global.xattrs and pending.xattrs:
            space = sum(len(name) + len(value) for name, value in xattrs.items())
            if space > self.limits.max_xattr_space:
                raise self.fail("xattrs of more than limits.max_xattr_space bytes", "xattrs")
        raw_name = records.get("GNU.sparse.name") or records.get("path") or pending.long_name
        if raw_name is None:
            raw_name = header.name
        name = _utf8(raw_name, self, "name")
        kind = _TYPES.get(header.kind)
        if header.kind == b"\0" and name.endswith("/"):
            kind = "dir"
        if kind is None:
            raise self.fail(f"unsupported tar member type {header.kind!r}", "type", _short(name))
        raw_link = records.get("linkpath") or pending.long_link
        linkname = _utf8(header.linkname if raw_link is None else raw_link, self, "linkName")
        self._path_bytes += len(name.strip("/").removeprefix("./")) + 1
        if self._path_bytes > self.limits.max_total_path_bytes:
            raise self.fail(
                f"paths add up to more than {self.limits.max_total_path_bytes} bytes "
                "(limits.max_total_path_bytes)",
                "name",
                _short(name),
            )
        size = header.size
        if "size" in records:
            size = _decimal(records["size"], self, "size")
        uid = _decimal(records["uid"], self, "uid") if "uid" in records else header.uid
        gid = _decimal(records["gid"], self, "gid") if "gid" in records else header.gid
        pax_mtime = records.get("mtime")
        member = _Member(
            index=self.index,
            kind=kind,
            name=name,
            mode=header.mode,
            uid=uid,
            gid=gid,
            mtime=header.mtime,
            pax_mtime=pax_mtime.decode("ascii", "replace") if pax_mtime is not None else None,
            linkname=linkname,
            devmajor=header.devmajor,
            devminor=header.devminor,
            xattrs=xattrs,
            size=size if kind == "reg" else 0,
            real_size=size if kind == "reg" else 0,
        )
        if kind == "reg":
            self._sparse(member, header, records, pending)
            if member.real_size > self.limits.max_file_size:
                raise self.fail(
                    f"a file of {member.real_size} bytes is larger than "
                    f"limits.max_file_size ({self.limits.max_file_size})",
                    "size",
                    _short(name),
                )
        return member

    def _sparse(
        self, member: _Member, header: _Header, records: dict[str, bytes], pending: _Pending
    ) -> None:
        """Read and check the sparse map, if any (old GNU, pax 0.0, 0.1, 1.0)."""
        pairs: list[int] | None = None
        real: bytes | None = records.get("GNU.sparse.realsize") or records.get("GNU.sparse.size")
        if header.kind == b"S":
            pairs = None  # read from the extension blocks below
            real_size = header.real_size
        elif records.get("GNU.sparse.major") == b"1" and records.get("GNU.sparse.minor") == b"0":
            pairs = None  # read from the data below
            real_size = _decimal(real or b"", self, "size")
        elif "GNU.sparse.map" in records:
            text = records["GNU.sparse.map"]
            pairs = [_decimal(part, self, "sparse") for part in text.split(b",")] if text else []
            real_size = _decimal(real or b"", self, "size")
        elif pending.sparse_pairs or real is not None:
            pairs = pending.sparse_pairs
            real_size = _decimal(real or b"", self, "size")
        else:
            return
        if real_size > self.limits.max_file_size:
            raise self.fail(
                f"a sparse file of {real_size} bytes is larger than "
                f"limits.max_file_size ({self.limits.max_file_size})",
                "size",
                _short(member.name),
            )
        if pairs is None:
            if header.kind == b"S":
                pairs = self._gnu_sparse_map(header)
            else:
                pairs = self._pax_sparse_1_0_map(member)
        if len(pairs) % 2:
            raise self.fail("the sparse map has an offset without a size", "sparse")
        member.sparse = _checked_map(pairs, real_size, member.size, self)
        member.real_size = real_size
        self._holes += real_size - member.size
        if self._holes > self._hole_budget:
            raise self.fail(
                f"the archive's sparse holes add up to more than {self._hole_budget} bytes, "
                "limits.max_hole_ratio times the blob's size",
                "sparse",
                _short(member.name),
            )

    def _gnu_sparse_map(self, header: _Header) -> list[int]:
        """The old GNU map: 4 entries in the header, 21 in each extension block."""
        pairs = _gnu_entries(header.block, 386, 4, self)
        extended = header.block[482]
        while extended:
            block = self.stream.read_exact(_BLOCK, "a sparse header")
            pairs += _gnu_entries(block, 0, 21, self)
            extended = block[504]
        return pairs

    def _pax_sparse_1_0_map(self, member: _Member) -> list[int]:
        """Pax sparse 1.0: decimal lines at the start of the data, padded to a block."""
        pairs: list[int] = []
        text = b""
        count: int | None = None
        used = 0
        while count is None or len(pairs) < 2 * count:
            if b"\n" not in text:
                if len(text) > 20 or used >= member.size:
                    raise self.fail("the pax sparse 1.0 map is cut short or damaged", "sparse")
                text += self.stream.read_exact(_BLOCK, "a sparse map")
                used += _BLOCK
                continue
            line, text = text.split(b"\n", 1)
            number = _decimal(line, self, "sparse")
            if count is None:
                count = number
            else:
                pairs.append(number)
        if used > member.size:
            raise self.fail("the pax sparse 1.0 map is longer than the member", "sparse")
        member.size -= used
        return pairs


def _gnu_entries(block: bytes, start: int, count: int, reader: _MemberReader) -> list[int]:
    pairs: list[int] = []
    for position in range(start, start + 24 * count, 24):
        field = block[position : position + 24]
        if not field.strip(b"\0"):
            continue
        pairs.append(_number(field[:12], reader, "sparse"))
        pairs.append(_number(field[12:], reader, "sparse"))
    return pairs


def _checked_map(
    pairs: list[int], real_size: int, stored: int, reader: _MemberReader
) -> list[tuple[int, int]]:
    """The map as (offset, length) pieces: ordered, apart, inside ``real_size``,
    their lengths adding up to the ``stored`` bytes of data."""
    pieces: list[tuple[int, int]] = []
    position = total = 0
    for at in range(0, len(pairs), 2):
        offset, length = pairs[at], pairs[at + 1]
        if offset < position or offset + length > real_size:
            raise reader.fail(
                f"sparse map entry ({offset}, {length}) overlaps the previous one, comes "
                f"before it or ends beyond the real size {real_size}",
                "sparse",
            )
        position = offset + length
        total += length
        if length:
            pieces.append((offset, length))
    if total != stored:
        raise reader.fail(
            f"the sparse map holds {total} bytes of data, the archive {stored}", "sparse"
        )
    return pieces


@dataclass(frozen=True, slots=True)
class _Header:
    """One 512-byte header block, its number fields decoded."""

    block: bytes
    name: bytes
    kind: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    linkname: bytes
    devmajor: int
    devminor: int
    real_size: int

    @classmethod
    def parse(cls, block: bytes, reader: _MemberReader) -> _Header:
        stored = _number(block[148:156], reader, "checksum", damaged=True)
        unsigned = sum(block[:148]) + 256 + sum(block[156:])
        signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
        if stored not in (unsigned, signed):
            raise reader.fail("damaged tar header: bad checksum", "checksum")
        kind = block[156:157]
        name = _cstring(block[0:100])
        if block[257:263] == b"ustar\0" and kind not in (b"S", _LONG_NAME, _LONG_LINK):
            prefix = _cstring(block[345:500])
            if prefix:
                name = prefix + b"/" + name
        size = _number(block[124:136], reader, "size", damaged=True)
        if size < 0:
            raise reader.fail(f"negative size {size}", "size")
        return cls(
            block=block,
            name=name,
            kind=kind,
            mode=_number(block[100:108], reader, "mode", damaged=True),
            uid=_number(block[108:116], reader, "uid", damaged=True),
            gid=_number(block[116:124], reader, "gid", damaged=True),
            size=size,
            mtime=_number(block[136:148], reader, "mtime", damaged=True),
            linkname=_cstring(block[157:257]),
            devmajor=_number(block[329:337], reader, "devMajor", damaged=True),
            devminor=_number(block[337:345], reader, "devMinor", damaged=True),
            real_size=_number(block[483:495], reader, "size") if kind == b"S" else 0,
        )


def _cstring(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _number(field: bytes, reader: _MemberReader, what: str, *, damaged: bool = False) -> int:
    """An octal number field, or GNU's base-256 (first byte 0x80, or 0xff: negative)."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    if field[:1] == b"\xff":
        return int.from_bytes(field, "big", signed=True)
    text = _cstring(field).strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        prefix = "damaged tar header: " if damaged else ""
        raise reader.fail(f"{prefix}{what} field {field!r} is not a number", what) from None


def _decimal(text: bytes, reader: _MemberReader, what: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise reader.fail(f"pax {what} {text[:40]!r} is not a decimal number", what)
    return int(text)


def _utf8(raw: bytes, reader: _MemberReader, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise reader.fail(
            f"{what} is not UTF-8: {raw[:80]!r}", what, raw[:200].decode("utf-8", "replace")
        ) from None


def _short(name: str) -> str:
    return name if len(name) <= 200 else name[:200] + "..."


# -- content ---------------------------------------------------------------------


def _content(
    reader: _MemberReader,
    member: _Member,
    store: ObjectStore | None,
    progress: Progress | None,
) -> tuple[str, bytes | None]:
    """Hash (and store) the member's content; return its sha256 hex and store name."""
    if store is None:
        hasher = hashlib.sha256()
        _copy(reader, member, hasher.update, partial(update_with_zeros, hasher.update), None)
        return hasher.hexdigest(), None
    with store.writer() as out:
        _copy(reader, member, out.write, out.hole, progress)
        payload = out.commit()
    if progress is not None:
        progress.advance(files=1)
    return out.sha256_hex, payload


def _copy(
    reader: _MemberReader,
    member: _Member,
    write: Callable[[bytes | memoryview], object],
    hole: Callable[[int], object],
    progress: Progress | None,
) -> None:
    """Write the member's content: its data, and a sparse file's holes as holes."""
    pieces = member.sparse if member.sparse is not None else [(0, member.size)]
    position = 0
    for offset, length in [*pieces, (member.real_size, 0)]:
        if offset > position:
            hole(offset - position)
        left = length
        while left:
            data = reader.data(min(left, _READ_SIZE))
            write(data)
            left -= len(data)
            if progress is not None:
                progress.advance(nbytes=len(data))
        position = offset + length


def _entry(member: _Member) -> dict[str, Any]:
    """The TOC entry containers/storage would write for ``member`` (without digest)."""
    kind = member.kind
    entry: dict[str, Any] = {"type": kind, "name": member.name, "mode": member.mode}
    if member.uid:
        entry["uid"] = member.uid
    if member.gid:
        entry["gid"] = member.gid
    entry["modtime"] = _modtime(member)
    if kind == "reg" and member.real_size:
        entry["size"] = member.real_size
    elif kind in ("symlink", "hardlink"):
        entry["linkName"] = member.linkname
    elif kind in ("char", "block"):
        if member.devmajor:
            entry["devMajor"] = member.devmajor
        if member.devminor:
            entry["devMinor"] = member.devminor
    if member.xattrs:
        entry["xattrs"] = {
            name: base64.b64encode(value).decode("ascii") for name, value in member.xattrs.items()
        }
    return entry


def _modtime(member: _Member) -> str:
    """RFC 3339 UTC time of the member's mtime, nanoseconds from a pax record."""
    text = member.pax_mtime
    nsec = 0
    if text is not None and (match := _PAX_TIME.fullmatch(text)) is not None:
        sign, whole, fraction = match.groups()
        seconds = int(whole)
        if fraction:
            nsec = int(fraction[:9].ljust(9, "0"))
        if sign:
            seconds = -seconds
            if nsec:
                seconds -= 1
                nsec = 1_000_000_000 - nsec
    else:
        seconds = member.mtime
    try:
        when = _EPOCH + datetime.timedelta(seconds=seconds)
    except OverflowError:
        when = None
    if when is None or when.year > 9999:
        raise ValidationError(
            f"mtime {seconds} is outside years 0001..9999",
            entry=member.index,
            path=_short(member.name),
            field="mtime",
        )
    stamp = (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T"
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    )
    if nsec:
        stamp += f".{nsec:09d}"
    return stamp + "Z"


# -- the TOC built from the members ---------------------------------------------------


class _TocBuilder:
    """The TOC JSON of the members, each entry serialized once as it comes,
    its running size checked against ``limits.max_input_bytes``; a path given
    again replaces its earlier entry (the last member wins)."""

    _HEAD = b'{"version": 1, "entries": ['

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._texts: list[bytes] = []
        self._members: list[int] = []
        self._where: dict[str, int] = {}
        self._size = len(self._HEAD) + 2

    def add(self, entry: dict[str, Any], member: int) -> None:
        text = json.dumps(entry).encode("ascii")
        self._size += len(text) + 2
        if self._size > self._limits.max_input_bytes:
            raise ValidationError(
                f"the TOC of the members would be more than {self._limits.max_input_bytes} "
                "bytes (limits.max_input_bytes)",
                entry=member,
                path=_short(entry["name"]),
                field="entries",
            )
        key = "/".join(part for part in entry["name"].split("/") if part not in ("", "."))
        self._where[key] = len(self._texts)
        self._texts.append(text)
        self._members.append(member)

    def document(self) -> bytes:
        keep = sorted(self._where.values())
        if len(keep) != len(self._texts):
            self._texts = [self._texts[i] for i in keep]
            self._members = [self._members[i] for i in keep]
        return self._HEAD + b", ".join(self._texts) + b"]}"

    def to_member(self, error: ValidationError) -> ValidationError:
        """Renumber a parse_toc error from TOC entry index to tar member index."""
        entry = error.entry
        if entry is not None and 0 <= entry < len(self._members):
            entry = self._members[entry]
        return ValidationError(error.reason, entry=entry, path=error.path, field=error.field)
