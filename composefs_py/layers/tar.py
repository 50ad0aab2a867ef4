"""Plain tar layers: ``.tar``, ``.tar.gz`` and ``.tar.zst``.

The tar is read as a stream (Python's ``tarfile``; gzip members and zstd
frames decompressed on the fly, never more than a buffer in memory).  Each
member's header becomes the TOC entry a zstd:chunked conversion would write
for it (containers/storage makes its TOCs from the very same headers): name,
type, mode, uid/gid, ``modtime`` with the PAX sub-second mtime, size,
``linkName`` (a hardlink's is the earlier member's path), device numbers,
``SCHILY.xattr.*`` PAX records as base64 xattrs, and the sha256 ``digest`` of
the content, computed while reading it.  Those entries then go through
:func:`~composefs_py.toc.parse_toc`, so a tar and a TOC follow exactly the
same rules (names, whiteouts, opaque directories, limits) and give the same
Tree.

Differences from a TOC: a path given twice means the last member wins (tar
extraction semantics), where a TOC rejects a differing repeat (a file and its
own ``.wh.`` whiteout in one tar are still rejected: they are different
paths until the whiteout is converted).  Member types other than files,
directories, links, devices and fifos are rejected; names that are not UTF-8
are rejected (a TOC cannot carry them either); mtimes must lie in years
0001..9999 (RFC 3339, as in a TOC).

Bounds: a PAX or GNU long-name header over ``MAX_EXTENDED_HEADER_BYTES`` is
rejected before it is read; a damaged header block (bad checksum) is
rejected, where ``tarfile`` alone would silently end the archive there; the
member count is bounded by ``limits.max_entries``, and the synthesized TOC by
``limits.max_input_bytes``.  Not supported: hardlink members that carry data
(``tarfile`` does not skip it; GNU tar and Go never write them).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import tarfile
import zlib
from typing import IO, Any, BinaryIO, Self, cast

import zstandard

from .._progress import Progress, ProgressArg, resolve_progress
from ..errors import ValidationError
from ..limits import Limits
from ..model import Tree
from ..objects import ObjectStore
from . import GZIP_MAGIC, ZSTD_MAGIC, GzipMembers, Layer, with_store_names

__all__ = ["TarLayer"]

_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.CONTTYPE: "reg",
    tarfile.GNUTYPE_SPARSE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}
_XATTR_PREFIX = "SCHILY.xattr."
_PAX_TIME = re.compile(r"(-?)([0-9]{1,20})(?:\.([0-9]*))?")
_EPOCH = datetime.datetime(1970, 1, 1)
_READ_SIZE = 1 << 20
#: Largest PAX or GNU long-name header read into memory.
MAX_EXTENDED_HEADER_BYTES = 16 << 20
_EXTENDED_TYPES = frozenset(
    (
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    )
)
_READ_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    EOFError,
    zlib.error,
    zstandard.ZstdError,
    UnicodeError,
)


#: Raised for a bad checksum or number field; not in typeshed's stubs.
_INVALID_HEADER: type[tarfile.HeaderError] = tarfile.InvalidHeaderError  # type: ignore[attr-defined]


class _DamagedHeader(tarfile.TarError):
    """A header block with a bad checksum or number field."""


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses extended headers too large to hold in memory,
    and damaged headers (``tarfile`` would silently end the archive there).
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        try:
            return super().frombuf(buf, encoding, errors)
        except _INVALID_HEADER as exc:
            raise _DamagedHeader(f"damaged tar header: {exc}") from None

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_TYPES and self.size > MAX_EXTENDED_HEADER_BYTES:
            raise tarfile.HeaderError(
                f"extended header of {self.size} bytes (more than "
                f"{MAX_EXTENDED_HEADER_BYTES})"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc, no-any-return]


class TarLayer(Layer):
    """A tar, tar.gz or tar.zst layer; ``compression`` is ``"none"``, ``"gzip"`` or ``"zstd"``."""

    format = "tar"

    def __init__(self, path: str | os.PathLike[str], *, limits: Limits | None = None) -> None:
        super().__init__(path, limits=limits)
        with open(self.path, "rb") as blob:
            head = blob.read(4)
        if head.startswith(GZIP_MAGIC):
            self.compression = "gzip"
        elif head.startswith(ZSTD_MAGIC):
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
            tree, names = self._read(
                store, limits, compat, resolve_progress(progress, label)
            )
        return with_store_names(tree, store, names, limits)

    def _open(self, raw: BinaryIO) -> IO[bytes]:
        if self.compression == "gzip":
            return cast(IO[bytes], GzipMembers(raw))
        if self.compression == "zstd":
            return cast(
                IO[bytes],
                zstandard.ZstdDecompressor().stream_reader(
                    raw, read_across_frames=True, closefd=False
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

        entries: list[dict[str, Any]] = []
        members: list[int] = []
        names: dict[bytes, bytes] = {}
        if progress is not None:
            progress.start(f"importing {self.path.name}")
        index = -1
        member_name: str | None = None
        try:
            with open(self.path, "rb") as raw:
                stream = self._open(raw)
                with tarfile.open(
                    fileobj=stream,
                    mode="r|",
                    tarinfo=_BoundedTarInfo,
                    encoding="utf-8",
                    errors="surrogateescape",
                ) as archive:
                    for index, member in enumerate(archive):
                        member_name = member.name
                        if index >= limits.max_entries:
                            raise ValidationError(
                                f"more than {limits.max_entries} members", entry=index
                            )
                        entry = _entry(member, index)
                        if entry["type"] == "reg" and member.size:
                            digest, payload = _content(archive, member, store, progress)
                            entry["digest"] = "sha256:" + digest
                            if payload is not None:
                                names[f"{digest[:2]}/{digest[2:]}".encode()] = payload
                        entries.append(entry)
                        members.append(index)
                        member_name = None
        except _READ_ERRORS as exc:
            where = index + 1 if member_name is None else index
            raise ValidationError(
                f"not a valid tar ({self.compression} compression): {exc}",
                entry=where,
                path=member_name,
            ) from None
        finally:
            if progress is not None:
                progress.close()
        entries, members = _last_wins(entries, members)
        document = json.dumps({"version": 1, "entries": entries}).encode("ascii")
        try:
            return parse_toc(document, limits=limits, compat=compat), names
        except ValidationError as exc:
            raise _to_member(exc, members) from None


def _content(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    store: ObjectStore | None,
    progress: Progress | None,
) -> tuple[str, bytes | None]:
    """Hash (and store) the member's content; return its sha256 hex and store name."""
    source = archive.extractfile(member)
    if source is None:  # pragma: no cover - only for non-files
        raise ValidationError("has no content", field="size")
    if store is None:
        hasher = hashlib.sha256()
        while data := source.read(_READ_SIZE):
            hasher.update(data)
        return hasher.hexdigest(), None
    with store.writer() as out:
        while data := source.read(_READ_SIZE):
            out.write(data)
            if progress is not None:
                progress.advance(nbytes=len(data))
        payload = out.commit()
    if progress is not None:
        progress.advance(files=1)
    return out.sha256_hex, payload


def _entry(member: tarfile.TarInfo, index: int) -> dict[str, Any]:
    """The TOC entry containers/storage would write for ``member`` (without digest)."""
    kind = _TYPES.get(member.type)
    if kind is None:
        raise ValidationError(
            f"unsupported tar member type {member.type!r}",
            entry=index,
            path=member.name,
            field="type",
        )
    entry: dict[str, Any] = {"type": kind, "name": member.name, "mode": member.mode}
    if member.uid:
        entry["uid"] = member.uid
    if member.gid:
        entry["gid"] = member.gid
    entry["modtime"] = _modtime(member, index)
    if kind == "reg" and member.size:
        entry["size"] = member.size
    elif kind in ("symlink", "hardlink"):
        entry["linkName"] = member.linkname
    elif kind in ("char", "block"):
        if member.devmajor:
            entry["devMajor"] = member.devmajor
        if member.devminor:
            entry["devMinor"] = member.devminor
    xattrs = {}
    for key, value in member.pax_headers.items():
        if key.startswith(_XATTR_PREFIX):
            raw = value.encode("utf-8", "surrogateescape")
            xattrs[key[len(_XATTR_PREFIX) :]] = base64.b64encode(raw).decode("ascii")
    if xattrs:
        entry["xattrs"] = xattrs
    return entry


def _modtime(member: tarfile.TarInfo, index: int) -> str:
    """RFC 3339 UTC time of the member's mtime, nanoseconds from a PAX record."""
    text = member.pax_headers.get("mtime")
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
        seconds = int(member.mtime)
    try:
        when = _EPOCH + datetime.timedelta(seconds=seconds)
    except OverflowError:
        when = None
    if when is None or when.year > 9999:
        raise ValidationError(
            f"mtime {seconds} is outside years 0001..9999",
            entry=index,
            path=member.name,
            field="mtime",
        )
    stamp = (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T"
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    )
    if nsec:
        stamp += f".{nsec:09d}"
    return stamp + "Z"


def _last_wins(
    entries: list[dict[str, Any]], members: list[int]
) -> tuple[list[dict[str, Any]], list[int]]:
    """Drop every entry that a later entry for the same path replaces."""
    last: dict[str, int] = {}
    for position, entry in enumerate(entries):
        key = "/".join(part for part in entry["name"].split("/") if part not in ("", "."))
        last[key] = position
    if len(last) == len(entries):
        return entries, members
    keep = sorted(last.values())
    return [entries[i] for i in keep], [members[i] for i in keep]


def _to_member(error: ValidationError, members: list[int]) -> ValidationError:
    """Renumber a parse_toc error from synthesized entry index to tar member index."""
    entry = error.entry
    if entry is not None and 0 <= entry < len(members):
        entry = members[entry]
    return ValidationError(error.reason, entry=entry, path=error.path, field=error.field)
