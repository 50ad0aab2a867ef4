"""The containers/storage TOC (zstd:chunked and eStargz) -> :class:`Tree`.

:func:`parse_toc` is the only way a TOC becomes a Tree.  It follows the
semantics table of DESIGN.md section 4, field by field, and builds through
:class:`~composefs_py.model.TreeBuilder` (which owns the tree invariants).

The input is untrusted: every rejection is a :class:`ValidationError` that
names the entry index, the entry's ``name`` as given and the JSON field, e.g.
``entry 17 ("usr/bin/x"): uid: must be an integer in 0..4294967294, got -1``.

Decisions worth knowing:

* ``data`` is the JSON document as ``bytes`` (or another bytes-like
  object) or ``str`` (the JSON text itself, not a file name), or a path
  (``os.PathLike``) of a file holding it.  It must be UTF-8 (no BOM).
* Device numbers: ``devMajor`` <= 4095 and ``devMinor`` <= 1048575, the
  kernel's 12/20 bits, because the image keeps a device number in 32 bits
  and larger numbers would silently come back different.
* Duplicates are compared as tree nodes: two entries that differ only in
  what the image does not keep (accesstime, offsets, ...) are identical.
* JSON: duplicate keys, ``NaN``/``Infinity``, trailing data and nesting deeper
  than ``limits.max_json_depth`` are rejected; a bool is never an integer;
  ``null`` is not accepted for any known field (Go's encoder omits empty
  fields instead).  Unknown keys are ignored, whatever they hold.
* Whiteouts (default): ``.wh.NAME`` becomes an overlay whiteout, a character
  device 0/0 named ``NAME``.  Its permission bits are 0 and its owner the
  entry's, as containers/storage's overlay whiteout conversion makes it
  (``mknod(path, S_IFCHR, 0)`` then ``chown``); its mtime is the entry's, so
  the image stays deterministic.  ``.wh..wh..opq`` sets
  ``trusted.overlay.opaque=y`` on its directory (before or after the
  directory's own entry); other ``.wh..wh.*`` names (aufs metadata) are
  skipped, as containers/storage skips them.  A whiteout inside an opaque
  directory is dropped: the directory already hides everything below it, and
  libcomposefs would otherwise overwrite the opaque marker with its
  "has whiteouts" marker.
* ``compat="containers-storage"``: ``.wh.*`` entries stay plain files,
  exactly as containers/storage's ``GenerateDump`` keeps them; then the
  image is byte-identical to what podman makes from the same TOC.
* eStargz's ``.no.prefetch.landmark``/``.prefetch.landmark`` (a regular
  file of size 1 at the top) and ``stargz.index.json`` are skipped.
* ``chunk`` entries are checked (they must continue the regular file just
  before them, cover it contiguously, and carry sane offsets and digests)
  and then dropped: they are not tree nodes.
* Empty regular files have no payload, also when a digest is given (eStargz
  gives the sha256 of nothing, and only that digest is accepted for them).

Cost: every path (bulk, typed, streamed, whole-document walker) is linear
in the document.  ``max_input_bytes`` is checked before a file is read
whole, ``max_json_depth`` by a C-speed pre-scan before the json module
decodes (the typed decoders have a fixed depth), ``max_entries`` on the
decoded entry count before any entry is checked; names, link names and
xattrs are checked against their limits as each entry is read, and every
tree limit is the TreeBuilder's (or ``tree_from_columns``', by the same
rules).  A path that gives up on a document lets go of what it built
before the next one starts (``_drop_frames``): peak memory is one path's.
"""

from __future__ import annotations

import binascii
import gc
import json
import os
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, compress, repeat
from operator import is_not, lt, not_
from typing import Annotated, Any, Protocol, cast

import msgspec
from msgspec import UNSET, UnsetType

from ._acl import ACL_XATTR_NAMES, posix_acl_problem
from ._columns import EMPTY_FILE, NodeColumns, moved, tree_from_columns
from .errors import ValidationError
from .limits import Limits
from .model import ROOT, Hardlink, Inode, Node, Tree, TreeBuilder, new_inode

__all__ = ["COMPAT_MODES", "TocSource", "parse_toc"]

#: What :func:`parse_toc` reads: the JSON text (bytes-like or ``str``) or a path.
TocSource = bytes | bytearray | memoryview | str | os.PathLike[str] | os.PathLike[bytes]
#: Values accepted for ``compat``.
COMPAT_MODES = (None, "containers-storage")

_S_IFMT = 0o170000
_S_IFREG = 0o100000
_S_IFDIR = 0o040000
_S_IFLNK = 0o120000
_S_IFCHR = 0o020000
_S_IFBLK = 0o060000
_S_IFIFO = 0o010000

#: The file type bits each entry type stands for.
_TYPE_BITS: dict[str, int] = {
    "reg": _S_IFREG,
    "dir": _S_IFDIR,
    "symlink": _S_IFLNK,
    "hardlink": _S_IFREG,
    "char": _S_IFCHR,
    "block": _S_IFBLK,
    "fifo": _S_IFIFO,
    "chunk": 0,
}
_TYPES_TEXT = ", ".join(_TYPE_BITS)

_ID_MAX = (1 << 32) - 2  # (uid_t)-1 means "no id"
# The image keeps a device number in 32 bits (EROFS i_u.rdev; libcomposefs
# stores glibc's dev_t truncated), which holds the kernel's 12-bit major and
# 20-bit minor numbers exactly; larger ones would silently change.
_MAJOR_MAX = (1 << 12) - 1
_MINOR_MAX = (1 << 20) - 1
_I63_MAX = (1 << 63) - 1

_EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_HEX = "0123456789abcdef"
#: A digest, its first two hex digits (the payload's folder) and the rest.
_DIGEST_PARTS = re.compile(r"sha256:([0-9a-f]{2})([0-9a-f]{62})")
_DIGEST = _DIGEST_PARTS.fullmatch
_XATTR_PREFIXES = ("user.", "trusted.", "security.")
_XATTR_BARE_PREFIXES = frozenset(_XATTR_PREFIXES)
_XATTR_EXACT = frozenset(("system.posix_acl_access", "system.posix_acl_default"))
_OPAQUE_XATTR = (b"trusted.overlay.opaque", b"y")
_WH = b".wh."
_WH_META = b".wh..wh."
_WH_OPAQUE = b".wh..wh..opq"
_LANDMARKS = frozenset((b"/.no.prefetch.landmark", b"/.prefetch.landmark"))
_STARGZ_INDEX = b"/stargz.index.json"
_OTHER_TIMES = ("accesstime", "changetime")
#: Fields most entries lack (absent means None: a null fails earlier).
_RARE_FIELDS = frozenset(
    ("devMajor", "devMinor", "xattrs", "innerOffset", "chunkSize", "chunkOffset",
     "chunkDigest", "chunkType", "linkName")
)  # fmt: skip
_CHUNK_TYPES = frozenset(("", "zeros"))
_MAX_LISTED_PROBLEMS = 100
_CACHE_MAX = 1 << 16
_FRACTION_SCALE = tuple(10 ** (9 - digits) for digits in range(10))
#: The entry fields this module knows (unknown ones are ignored).
_FIELDS = (
    "type", "name", "linkName", "mode", "size", "uid", "gid", "modtime",
    "accesstime", "changetime", "devMajor", "devMinor", "xattrs", "digest",
    "offset", "endOffset", "innerOffset", "chunkSize", "chunkOffset",
    "chunkDigest", "chunkType",
)  # fmt: skip

# Every byte but the JSON structure characters, for the nesting pre-scan.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')

_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?"
    r"(?:[Zz]|([+-])(\d\d):(\d\d))",
    re.ASCII,
)
#: ``HH:MM:SS`` as RFC 3339 allows it (no leap second, as _parse_time).
_CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d):([0-5]\d)", re.ASCII).fullmatch
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


# -- small helpers ------------------------------------------------------------


def _show(value: object) -> str:
    """``value`` as JSON-ish text for a message, cut to a sane length."""
    if value is True:
        text = "true"
    elif value is False:
        text = "false"
    elif value is None:
        text = "null"
    elif isinstance(value, str):
        text = json.dumps(value if len(value) <= 80 else value[:80] + "...")
    elif isinstance(value, int):
        text = str(value) if value.bit_length() <= 256 else "a huge integer"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, dict):
        text = "an object"
    elif isinstance(value, list):
        text = "an array"
    else:  # pragma: no cover - json.loads makes nothing else
        text = type(value).__name__
    return text


def _int_problem(value: object, low: int, high: int) -> str:
    return f"must be an integer in {low}..{high}, got {_show(value)}"


def _parse_time(text: object) -> tuple[int, int] | None:
    """Parse an RFC 3339 timestamp into (seconds since the epoch, nanoseconds).

    Returns None if ``text`` is not a valid RFC 3339 date-time (4-digit year,
    real calendar date, hours < 24, seconds < 60, up to 9 fraction digits,
    ``Z`` or a ``+hh:mm`` offset).
    """
    if text.__class__ is not str:
        return None
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year_s, month_s, day_s, hour_s, minute_s, second_s, frac, sign, oh, om = match.groups()
    year = int(year_s)
    month = int(month_s)
    day = int(day_s)
    hour = int(hour_s)
    minute = int(minute_s)
    second = int(second_s)
    if not 1 <= month <= 12 or hour > 23 or minute > 59 or second > 59:
        return None
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= day <= (29 if month == 2 and leap else _DAYS_IN_MONTH[month]):
        return None
    # days from the civil date (proleptic Gregorian), H. Hinnant's algorithm
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    seconds = days * 86400 + hour * 3600 + minute * 60 + second
    if sign is not None:
        off_h = int(oh)
        off_m = int(om)
        if off_h > 23 or off_m > 59:
            return None
        offset = off_h * 3600 + off_m * 60
        seconds = seconds - offset if sign == "+" else seconds + offset
    nsec = int(frac.ljust(9, "0")) if frac else 0
    return seconds, nsec


def _quick_time(
    text: object, dates: dict[str, int], clocks: dict[str, int]
) -> tuple[int, int] | None:
    """Go's RFC 3339 (``Z``, whole or nanosecond) built from parts parsed before; else None.

    ``dates`` maps ``YYYY-MM-DD`` texts already validated to the epoch
    seconds of their midnight, ``clocks`` maps ``HH:MM:SS`` texts already
    validated to seconds into the day; anything else is left to the full
    parser (which fills both).
    """
    if text.__class__ is not str:
        return None
    size = len(text)
    if size == 30:
        if text[19] != "." or text[29] != "Z" or text[10] != "T":
            return None
        fraction = text[20:29]
        if not (fraction.isdigit() and fraction.isascii()):
            return None
        nsec = int(fraction)
    elif size == 20:
        if text[19] != "Z" or text[10] != "T":
            return None
        nsec = 0
    else:
        return None
    date = dates.get(text[:10])
    if date is None:
        return None
    hms = text[11:19]
    clock = clocks.get(hms)
    if clock is None:
        clock = _clock_seconds(hms)
        if clock is None:
            return None
        clocks[hms] = clock  # at most 86400 of them
    return date + clock, nsec


def _clock_seconds(hms: str) -> int | None:
    """Seconds into the day of an ``HH:MM:SS`` text (None: not a valid clock)."""
    match = _CLOCK(hms)
    if match is None:
        return None
    hour, minute, second = match.groups()
    return int(hour) * 3600 + int(minute) * 60 + int(second)


def _is_digest(value: object) -> bool:
    """``sha256:`` followed by 64 lowercase hex digits."""
    return (
        value.__class__ is str
        and len(value) == 71
        and value.startswith("sha256:")
        and not value[7:].strip(_HEX)
    )


def _digest_problem(value: object) -> str:
    return f"must be sha256: and 64 lowercase hex digits, got {_show(value)}"


def _makedev(major: int, minor: int) -> int:
    """glibc's ``makedev`` (the encoding libcomposefs stores)."""
    return (
        ((major & 0xFFFFF000) << 32)
        | ((major & 0xFFF) << 8)
        | ((minor & 0xFFFFFF00) << 12)
        | (minor & 0xFF)
    )


def _clean_name(name: str, limits: Limits) -> bytes:
    """Clean a tar-style relative name into an absolute path (``b"/"`` is the root).

    Leading ``./`` and ``/``, a trailing ``/``, ``.`` parts and repeated
    ``/`` are dropped.  ``..``, NUL, a component longer than
    ``limits.max_name_bytes`` and a path longer than ``limits.max_path_bytes``
    are rejected (raises ValueError with the reason; the caller locates it).
    """
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogate escapes)") from None
    if raw.find(b"\0") >= 0:
        raise ValueError("must not contain NUL")
    if raw.endswith(b"/"):
        raw = raw.rstrip(b"/")
    # Fast path: already clean (the common case in real TOCs).
    if raw and raw.find(b"//") < 0 and not raw.startswith((b".", b"/")) and raw.find(b"/.") < 0:
        path = b"/" + raw
        if len(raw) <= limits.max_name_bytes and len(path) <= limits.max_path_bytes:
            return path
        parts = raw.split(b"/")
    else:
        parts = [part for part in raw.split(b"/") if part and part != b"."]
        if b".." in parts:
            raise ValueError("must not contain a '..' component")
        if not parts:
            return ROOT
        path = b"/" + b"/".join(parts)
    if len(path) > limits.max_path_bytes:
        raise ValueError(f"path longer than {limits.max_path_bytes} bytes")
    max_name = limits.max_name_bytes
    for part in parts:
        if len(part) > max_name:
            raise ValueError(f"has a component longer than {max_name} bytes")
    return path


def _parent(path: bytes) -> bytes:
    cut = path.rfind(b"/")
    return path[:cut] if cut > 0 else ROOT


# -- reading and decoding -----------------------------------------------------


def _read_input(data: TocSource, limits: Limits) -> bytes:
    cap = limits.max_input_bytes
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
    elif isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("the TOC text is not valid Unicode") from None
    elif isinstance(data, os.PathLike):
        try:
            with open(data, "rb") as file:
                raw = file.read(cap + 1)
        except OSError as err:
            raise ValidationError(f"cannot read the TOC: {err}") from None
    else:
        raise TypeError(f"expected bytes, str or a path, got {type(data).__name__}")
    if len(raw) > cap:
        raise ValidationError(f"the TOC is larger than {cap} bytes")
    return raw


def _nesting_depth(raw: bytes, limit: int) -> int:
    """Return the JSON nesting depth of ``raw``, or ``limit + 1`` if deeper.

    Runs at C speed over the bytes: escaped backslashes and quotes go, every
    byte but ``"[]{}`` goes, then empty strings (``""``) go; what remains is
    the bracket structure (plus the rare string that holds brackets, whose
    content is dropped next).  Each round then removes every innermost empty
    pair.  Malformed input may give any number; json.loads reports it.
    """
    if raw.find(b"\\") >= 0:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    shape = raw.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if shape.find(b'"') >= 0:
        shape = b"".join(shape.split(b'"')[::2])
    depth = 0
    while shape:
        # One round removes exactly one level: a regex alternation scans once,
        # so pairs made empty by this round's removals stay for the next.
        smaller = _EMPTY_PAIR.sub(b"", shape)
        if len(smaller) == len(shape):
            break  # unbalanced: json.loads will say where
        depth += 1
        if depth > limit:
            break
        shape = smaller
    return depth


_EMPTY_PAIR = re.compile(rb"\{\}|\[\]")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in a TOC")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {json.dumps(key)} in an object")
            seen.add(key)
    return result


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)


def _json_text(raw: bytes, limits: Limits) -> str:
    """``raw`` as text, once its encoding and nesting depth are checked."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValidationError(f"the TOC is not valid UTF-8 (byte {err.start})") from None
    depth = _nesting_depth(raw, limits.max_json_depth)
    if depth > limits.max_json_depth:
        raise ValidationError(f"JSON nesting is deeper than {limits.max_json_depth} levels")
    return text


def _decode_json(text: str) -> object:
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as err:
        raise ValidationError(f"not valid JSON: {err}") from None
    except RecursionError:  # defence in depth: the pre-scan should prevent it
        raise ValidationError("JSON nesting is too deep") from None
    except ValueError as err:  # duplicate keys, NaN/Infinity, huge integers
        raise ValidationError(f"not valid JSON: {err}") from None


def _load_json(raw: bytes, limits: Limits) -> object:
    return _decode_json(_json_text(raw, limits))


_JSON_SPACE = " \t\n\r"
#: JSON white space from a position (always matches, maybe empty).
_SKIP_SPACE = cast(Callable[[str, int], "re.Match[str]"], re.compile(r"[ \t\n\r]*").match)
#: The decoder's C scanner: (value, end) of the JSON value at a position, or
#: StopIteration; the same hooks as _DECODER.decode (duplicate keys, NaN).
_SCAN_VALUE: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
#: (string, end) of a JSON string whose opening quote ends just before a position.
_scan_string: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _drop_frames(error: BaseException) -> None:
    """Let go of the frames of ``error`` and of the errors it was raised from.

    A ValidationError is in a reference cycle (its ``problems`` holds it),
    so it lives until the cyclic collector runs, which parse_toc keeps off:
    its traceback would keep the frames of a path that failed (their
    builder, up to the limits' worth of nodes) alive while the next path
    builds its own.  Called where a path swallows the error.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__


class _SlowPath(Exception):
    """The streaming parse met something it leaves to the whole-document path."""


def _streamed(text: str, walker: _Walker) -> Tree:
    """Validate a TOC entry by entry, never holding the decoded document whole.

    The common, valid case only: a top-level object whose ``entries`` array
    is decoded one entry at a time (each through the same C scanner and
    duplicate-key hook as the whole-document path) and handed to the walker
    at once, so peak memory is the Tree, not the Tree plus every entry's
    dict.  Anything else (invalid JSON, a duplicate top-level key, any
    validation error, trailing data) raises :class:`_SlowPath`, and
    :func:`parse_toc` starts over on the whole document, which then reports
    exactly what it always reports.
    """
    top: dict[str, object] = {}
    entry = walker.entry
    streamed = False
    try:
        at = _SKIP_SPACE(text, 0).end()
        if text[at] != "{":
            raise _SlowPath
        at = _SKIP_SPACE(text, at + 1).end()
        while True:
            if text[at] != '"':
                raise _SlowPath
            key, at = _scan_string(text, at + 1)
            if key in top:
                raise _SlowPath
            at = _SKIP_SPACE(text, at).end()
            if text[at] != ":":
                raise _SlowPath
            at = _SKIP_SPACE(text, at + 1).end()
            if key == "entries" and text[at] == "[":
                top[key] = None
                streamed = True
                at = _SKIP_SPACE(text, at + 1).end()
                index = 0
                if text[at] == "]":
                    at += 1
                else:
                    while True:
                        value, at = _SCAN_VALUE(text, at)
                        entry(index, value)
                        del value  # the entry's dict goes now, not with the document
                        index += 1
                        # Go's encoder writes no white space: skip the regex then
                        if text[at] in _JSON_SPACE:
                            at = _SKIP_SPACE(text, at).end()
                        if text[at] == ",":
                            at += 1
                            if text[at] in _JSON_SPACE:
                                at = _SKIP_SPACE(text, at).end()
                        elif text[at] == "]":
                            at += 1
                            break
                        else:
                            raise _SlowPath
                    walker.close_chain()
            else:
                top[key], at = _SCAN_VALUE(text, at)
            at = _SKIP_SPACE(text, at).end()
            if text[at] == ",":
                at = _SKIP_SPACE(text, at + 1).end()
            elif text[at] == "}":
                break
            else:
                raise _SlowPath
        if _SKIP_SPACE(text, at + 1).end() != len(text) or not streamed:
            raise _SlowPath
        version = top.get("version")
        if version.__class__ is not int or version != 1:
            raise _SlowPath
        if "tarSplitDigest" in top and not _is_digest(top["tarSplitDigest"]):
            raise _SlowPath
        return walker.builder.build()
    except (StopIteration, IndexError, ValueError, RecursionError) as error:
        _drop_frames(error)
        raise _SlowPath from None  # JSON or validation errors (ValidationError is one)


# -- the typed fast path ------------------------------------------------------------
#
# msgspec decodes the document straight into the structs below, checking JSON
# syntax, every field's JSON type (a bool is not an integer, null is no
# value) and the plain ranges in C.  Whatever it refuses goes to the
# json-module paths above, which then report exactly what they always report;
# so do a document with keys the structs do not know (they would be ignored
# unchecked) and one with a duplicate key (the structs keep the last), both
# found by counting keys (see _key_count).


_I32 = Annotated[int, msgspec.Meta(ge=0, le=_ID_MAX)]
_I63 = Annotated[int, msgspec.Meta(ge=0, le=_I63_MAX)]


class _Entry(msgspec.Struct, gc=False):
    """One TOC entry as msgspec decodes it: UNSET marks an absent field."""

    type: str
    name: str
    mode: Annotated[int, msgspec.Meta(ge=0, le=0o177777)] | UnsetType = UNSET
    size: _I63 | UnsetType = UNSET
    uid: _I32 | UnsetType = UNSET
    gid: _I32 | UnsetType = UNSET
    modtime: str | UnsetType = UNSET
    accesstime: str | UnsetType = UNSET
    changetime: str | UnsetType = UNSET
    linkName: str | UnsetType = UNSET
    digest: str | UnsetType = UNSET
    offset: _I63 | UnsetType = UNSET
    endOffset: _I63 | UnsetType = UNSET
    # the rare fields: an entry with any of them goes through _Walker.entry
    devMajor: int | UnsetType = UNSET
    devMinor: int | UnsetType = UNSET
    xattrs: dict[str, str] | UnsetType = UNSET
    innerOffset: int | UnsetType = UNSET
    chunkSize: int | UnsetType = UNSET
    chunkOffset: int | UnsetType = UNSET
    chunkDigest: str | UnsetType = UNSET
    chunkType: str | UnsetType = UNSET


class _Document(msgspec.Struct, gc=False):
    """The top level; each entry stays raw JSON (a view of the input) until its turn."""

    version: int
    entries: list[msgspec.Raw]
    tarSplitDigest: str | UnsetType = UNSET


_TYPED_DECODER = msgspec.json.Decoder(_Document)
_ENTRY_DECODER = msgspec.json.Decoder(_Entry)
#: The depth of the deepest document the structs take (top, entries, entry, xattrs).
_TYPED_DEPTH = 4
_ENTRY_FIELDS = _Entry.__struct_fields__
_KEY_BEFORE_SPACE = re.compile(rb'"[ \t\n\r]+:').search


def _key_count(raw: bytes) -> int | None:
    """The number of object keys in the valid JSON document ``raw`` (None: unsure).

    Escaped backslashes go first; then every ``":`` outside a string ends a
    key (inside one the quote would be escaped).  A key with white space
    before its colon is not counted here: None then.
    """
    if raw.find(b"\\") >= 0:
        raw = raw.replace(b"\\\\", b"")
        escaped = raw.count(b'\\":')
    else:
        escaped = 0
    for space in _JSON_SPACE:
        if raw.find(space.encode()) >= 0:
            if _KEY_BEFORE_SPACE(raw) is not None:
                return None
            break
    return raw.count(b'":') - escaped


def _raise(error: ValidationError) -> None:
    raise error


def _as_dict(entry: _Entry) -> dict[str, Any]:
    """``entry`` as the JSON object it came from (its known keys)."""
    return {
        field: value for field in _ENTRY_FIELDS if (value := getattr(entry, field)) is not UNSET
    }


def _typed_document(raw: bytes, limits: Limits) -> tuple[_Document, int] | None:
    """A typed document (version 1, a sane split digest, not too many entries)
    and the number of keys other than its own three, once; None: not here.

    A document's keys count once each: the decoder ignores unknown keys and
    keeps the last of duplicates, so the caller counts the keys its structs
    took and steps aside unless they are all of them.
    """
    if limits.max_json_depth < _TYPED_DEPTH:
        return None
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        document = _TYPED_DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None  # includes msgspec.ValidationError
    if document.version != 1:
        return None
    split = document.tarSplitDigest
    if split is not UNSET and not _is_digest(split):
        return None
    if len(document.entries) > limits.max_entries:
        return None
    keys = _key_count(raw)
    if keys is None:
        return None
    return document, keys - 2 - (split is not UNSET)


def _opaque_dirs_of(raw: bytes, entries: list[msgspec.Raw], limits: Limits) -> set[bytes]:
    """:func:`_opaque_dirs` of typed entries (raises msgspec.DecodeError for a bad one)."""
    if raw.find(_WH_OPAQUE) < 0:
        return set()
    decode = _ENTRY_DECODER.decode
    return _opaque_dirs_named(
        (decode(piece).name for piece in entries if bytes(piece).find(_WH_OPAQUE) >= 0), limits
    )


def _typed(
    raw: bytes, limits: Limits, compat: str | None, head: tuple[_Document, int] | None = None
) -> Tree | None:
    """The fast path of :func:`parse_toc`; None leaves the document to the others.

    Only a valid document gives a Tree here: any problem (JSON, duplicate or
    unknown keys, a value the entry checks refuse) gives None, and the
    json-module paths report it as they always do.  ``head``: what
    :func:`_typed_document` made of ``raw`` already.
    """
    if head is None:
        head = _typed_document(raw, limits)
    if head is None:
        return None
    document, keys = head
    entries = document.entries
    walker = _Walker(limits, compat, False, nulls=False, has_opaque=False)
    try:
        if walker.whiteouts:
            walker.opaque = _opaque_dirs_of(raw, entries, limits)
        if walker.typed_entries(entries) != keys:
            return None
        del document, entries
        walker.close_chain()
        walker.add_opaque_dirs(_raise)
        return walker.builder.build()
    except (ValidationError, msgspec.DecodeError) as error:
        _drop_frames(error)
        return None


# -- the bulk path -----------------------------------------------------------------
#
# The document decoded in batches, its common entries checked column by
# column with C-level operations (counts, joins, translations, set algebra),
# and the tree built by tree_from_columns.  The columns take reg, dir,
# symlink and hardlink entries with the common fields (a regular file's
# chunkDigest, and a chunkSize that is the whole file), clean names and Go's
# RFC 3339 times.  The few other rows of a real layer (chunk entries and the
# file they continue, devices and fifos, the root, whiteouts, eStargz's
# bookkeeping, names to clean) go through the walker's own checks
# (_Walker.entry), in document order, and the nodes it makes join the
# columns.  Anything wrong gives None, and the paths above decide with their
# own messages.
#
# An absent field reads as a value the checks never take ("" for the
# strings, -1 for the integers, whose ranges exclude it): a field given that
# value counts as absent, so the key count differs and the document is left
# to the others.

_NO_INT = -1
_BulkI32 = Annotated[int, msgspec.Meta(ge=0, le=_ID_MAX)]
_BulkI63 = Annotated[int, msgspec.Meta(ge=0, le=_I63_MAX)]


class _BulkEntry(msgspec.Struct, gc=False, omit_defaults=True):
    """The fields the bulk path knows; any other key makes the key count differ.

    ``msgspec.to_builtins`` makes one the JSON object it came from (its
    fields not at their absent mark), for the walker.
    """

    type: str
    name: str
    mode: Annotated[int, msgspec.Meta(ge=0, le=0o177777)] = _NO_INT
    size: _BulkI63 = _NO_INT
    uid: _BulkI32 = _NO_INT
    gid: _BulkI32 = _NO_INT
    offset: _BulkI63 = _NO_INT
    endOffset: _BulkI63 = _NO_INT
    # device numbers and chunks are the walker's to check (see _Bulk.walker_rows),
    # but for a regular file's chunkDigest and whole-file chunkSize
    devMajor: int = _NO_INT
    devMinor: int = _NO_INT
    chunkSize: int = _NO_INT
    chunkOffset: int = _NO_INT
    modtime: str = ""
    accesstime: str = ""
    changetime: str = ""
    linkName: str = ""
    digest: str = ""
    chunkDigest: str = ""
    chunkType: str = ""
    xattrs: dict[str, str] | None = None


_BULK_DECODER = msgspec.json.Decoder(list[_BulkEntry])
_BULK_FIELDS = len(_BulkEntry.__struct_fields__)
#: Entries decoded at a time: their columns stay small (in cache), and the
#: decoded entries never pile up in memory.
_BULK_BATCH = 8192
_BULK_TYPES = frozenset(("reg", "dir", "symlink", "hardlink"))
#: The epoch in RFC 3339, which an absent modtime stands for.
_EPOCH_TEXT = "1970-01-01T00:00:00Z"
# Every digit as 0: what is left of a time or a digest is its shape.
_DIGITS_AS_0 = bytes.maketrans(b"123456789", b"0" * 9)
_HEX_AS_0 = bytes.maketrans(b"123456789abcdef", b"0" * 15)
#: Go's RFC 3339 times (``Z``, 0..9 fraction digits), as shapes.
_TIME_SHAPES = frozenset(
    b"0000-00-00T00:00:00" + (b"." + b"0" * digits if digits else b"") + b"Z"
    for digits in range(10)
)
_NANO_SHAPE = b"0000-00-00T00:00:00.000000000Z\n"
_DIGEST_SHAPE = _EMPTY_SHA256.encode().translate(_HEX_AS_0)
# What makes a name the walker's, in "\0"-framed names (each found from a
# literal, which a regex finds fast): a "." or ".." part (the root is "./"),
# but a leading "./" before a clean name (dropped, as _clean_name drops it),
# a whiteout's part (see _Walker.node), eStargz's landmarks...
assert all(path.startswith(b"/.") for path in _LANDMARKS)
_DOT_NAME = re.compile(
    r"\.(?<=[\x00/]\.)(?!(?<=\x00\.)/[^/.\x00])(?:\.?(?=[/\x00])|(?P<wh>wh\.)|(?<=\x00\.)(?:"
    + "|".join(re.escape(path[2:].decode()) for path in _LANDMARKS)
    + r")/?(?=\x00))"
).finditer
# ... and what is rare (hence looked for only where a literal shows): an empty
# part or name, an absolute name, eStargz's index (see _Walker.node).
_ODD_NAME = re.compile(
    r"//|\x00/|\x00\x00|\x00(?:\./)?" + re.escape(_STARGZ_INDEX[1:].decode()) + r"/?(?=\x00)"
).finditer
_ODD_NAME_HINTS = ("//", "\0/", "\0\0", _STARGZ_INDEX[1:].decode())


def _bulk(
    raw: bytes, limits: Limits, compat: str | None, head: tuple[_Document, int] | None = None
) -> Tree | None:
    """The Tree of a TOC checked column by column; None: leave it to the others.

    The rules are the walker's (:meth:`_Walker.entry`): the same values
    accepted, the same nodes made, for every document this takes.
    ``head``: what :func:`_typed_document` made of ``raw`` already.
    """
    if head is None:
        head = _typed_document(raw, limits)
    if head is None or not head[0].entries:
        return None
    pieces = head[0].entries
    keys = head[1]
    del head
    try:
        opaque = _opaque_dirs_of(raw, pieces, limits) if compat is None else set()
    except msgspec.DecodeError:
        return None
    bulk = _Bulk(limits, compat, opaque)
    try:
        for first in range(0, len(pieces), _BULK_BATCH):
            batch = pieces[first : first + _BULK_BATCH]
            text = b"[" + b",".join(batch) + b"]"
            found = bulk.rows(_BULK_DECODER.decode(text), first)
            if found is None:
                return None
            # A key the fields do not hold (innerOffset, say) shows in the
            # first batch: end there, not after the document.
            if not first and found != _key_count(text):
                return None
            keys -= found
    except msgspec.DecodeError:
        return None
    if keys:
        return None  # a duplicate or an unknown key at the top
    del pieces
    columns = bulk.finish()
    if columns is None:
        return None
    return tree_from_columns(columns, limits, synthesize_parents=True, count_hardlinks=True)


def _bulk_paths(names: Sequence[str]) -> list[bytes] | None:
    """The paths of names :meth:`_Bulk.walker_rows` left to the columns (None: not UTF-8).

    Such a name is its path without the leading ``/``, but for a trailing
    ``/`` and a leading ``./`` (see :func:`_clean_name`); lengths and depths
    are ``tree_from_columns``' to check.
    """
    framed = ("\0" + "\0".join(names) + "\0").replace("/\0", "\0").replace("\0./", "\0")
    try:
        joined = framed.encode()
    except UnicodeEncodeError:
        return None
    return joined.replace(b"\0", b"\0/")[1:-2].split(b"\0")


def _all_digests(texts: list[str]) -> bool:
    """Each of ``texts`` but the empty ones (absent) is sha256: and 64 lowercase hex digits.

    Each one's length is checked too: in the joined text a digest a digit
    short and the next one a digit long (or ``sha256:...sh`` then
    ``a256:...``) would have the very shape of two good ones.
    """
    given = [text for text in texts if text] if "" in texts else texts
    if not given:
        return True
    joined = "".join(given)
    count = len(given)
    return (
        set(map(len, given)) == {71}
        and joined.count("sha256:") == count
        and joined.isascii()
        and joined.encode().translate(_HEX_AS_0) == _DIGEST_SHAPE * count
    )


class _TimeParts(dict[str, int]):
    """A part of a time (a date, ``HH:MM``, ``SS``) -> its seconds, parsed on first sight."""

    def __init__(self, parse: Callable[[str], int | None]) -> None:
        super().__init__()
        self.parse = parse

    def __missing__(self, part: str) -> int:
        seconds = self.parse(part)
        if seconds is None:
            raise ValueError(part)
        self[part] = seconds
        return seconds


def _day_start(day: str) -> int | None:
    parsed = _parse_time(day + "T00:00:00Z")
    return None if parsed is None else parsed[0]


class _NodeSink(Protocol):
    """Where :class:`_Walker` puts its nodes (a TreeBuilder's ``add``)."""

    def add(self, path: bytes, node: Node, *, entry: int | None = None) -> None: ...


class _WalkedNodes:
    """The nodes the walker made for the bulk path: each path once, in order.

    An identical repeat of a path adds nothing, as in the walker's own
    builder (``duplicates="identical"``); any other repeat is left to that
    builder to judge.
    """

    def __init__(self) -> None:
        self.made: dict[bytes, Node] = {}
        self.fresh: list[tuple[bytes, Node]] = []  # not in the columns yet

    def add(self, path: bytes, node: Node, *, entry: int | None = None) -> None:
        first = self.made.get(path)
        if first is None:
            self.made[path] = node
            self.fresh.append((path, node))
        elif first != node:
            raise ValidationError("a repeat with other attributes", entry=entry, path=path)


class _Bulk:
    """The columns of a TOC, added batch by batch (see :func:`_bulk`)."""

    def __init__(self, limits: Limits, compat: str | None, opaque: set[bytes]) -> None:
        self.limits = limits
        self.columns = NodeColumns(
            paths=[], mode=[], uid=[], gid=[], mtime=[], mtime_nsec=[], size=[], data=[]
        )
        # the parts of the times seen so far, each checked once
        self.days = _TimeParts(_day_start)
        self.minutes = _TimeParts(lambda hm: _clock_seconds(hm + ":00"))
        self.seconds = _TimeParts(lambda ss: _clock_seconds("00:00:" + ss))
        # the rows left to the walker: the nodes it made, and the entry after its last row
        self.walked = _WalkedNodes()
        self.walker = _Walker(
            limits, compat, False, nulls=False, has_opaque=False, nodes=self.walked
        )
        self.walker.opaque = opaque
        # the directories that hold an opaque marker, by name (they are the walker's)
        self.opaque_names = {path[1:].decode() for path in opaque}
        self.after_walked = 0
        self.rdev: dict[int, int] = {}

    def rows(self, entries: list[_BulkEntry], first: int) -> int | None:
        """Check ``entries`` (rows from ``first`` on) and add them; return their keys.

        None: not all valid, or not all this path's.
        """
        types = [entry.type for entry in entries]
        names = [entry.name for entry in entries]
        modes = [entry.mode for entry in entries]
        sizes = [entry.size for entry in entries]
        uids = [entry.uid for entry in entries]
        gids = [entry.gid for entry in entries]
        offsets = [entry.offset for entry in entries]
        ends = [entry.endOffset for entry in entries]
        modtimes = [entry.modtime for entry in entries]
        accesstimes = [entry.accesstime for entry in entries]
        changetimes = [entry.changetime for entry in entries]
        link_names = [entry.linkName for entry in entries]
        digests = [entry.digest for entry in entries]
        xattrs = [entry.xattrs for entry in entries]
        majors = [entry.devMajor for entry in entries]
        minors = [entry.devMinor for entry in entries]
        chunk_sizes = [entry.chunkSize for entry in entries]
        chunk_offsets = [entry.chunkOffset for entry in entries]
        chunk_digests = [entry.chunkDigest for entry in entries]
        chunk_types = [entry.chunkType for entry in entries]
        n = len(types)
        # the keys these fields hold (the caller matches them with the document's)
        ints = (modes, sizes, uids, gids, offsets, ends, majors, minors, chunk_sizes, chunk_offsets)
        texts = (
            modtimes,
            accesstimes,
            changetimes,
            link_names,
            digests,
            chunk_digests,
            chunk_types,
        )
        absent: int = sum(map(list.count, ints, repeat(_NO_INT)))
        absent += sum(map(list.count, texts, repeat("")))
        absent += xattrs.count(None)
        keys = _BULK_FIELDS * n - absent + sum([len(value) for value in xattrs if value])

        walked = self.walker_rows(
            types, names, sizes, majors, minors, chunk_sizes, chunk_offsets, chunk_types
        )
        if walked is None:
            return None
        to_walk = [entries[row] for row in walked]
        del entries
        columns: tuple[list[Any], ...] = (
            types,
            names,
            modes,
            sizes,
            uids,
            gids,
            offsets,
            ends,
            modtimes,
            accesstimes,
            changetimes,
            link_names,
            digests,
            xattrs,
            chunk_digests,
        )
        if walked:
            kept = [True] * n
            for row in walked:
                kept[row] = False
            columns = tuple(list(compress(column, kept)) for column in columns)
        if columns[0] and not self.plain_rows(*columns):
            return None
        if walked and not self.walk(walked, to_walk, first):
            return None
        return keys

    def walker_rows(
        self,
        types: list[str],
        names: list[str],
        sizes: list[int],
        majors: list[int],
        minors: list[int],
        chunk_sizes: list[int],
        chunk_offsets: list[int],
        chunk_types: list[str],
    ) -> list[int] | None:
        """The rows the walker checks, in order (None: a name holds a NUL, which none may).

        Those of the types and fields the columns do not take, a regular
        file whose chunkSize is not the whole file, and the names of
        :data:`_DOT_NAME` (but whiteouts with ``compat``), :data:`_ODD_NAME`
        and directories an opaque marker names.
        """
        n = len(types)
        rows: set[int] = set()
        if not _BULK_TYPES.issuperset(types):
            rows.update(row for row, kind in enumerate(types) if kind not in _BULK_TYPES)
        for column in (majors, minors, chunk_offsets):
            if column.count(_NO_INT) != n:
                rows.update(compress(range(n), map(_NO_INT.__ne__, column)))
        if chunk_types.count("") != n:
            rows.update(compress(range(n), chunk_types))
        if chunk_sizes.count(_NO_INT) != n:
            # A file whose one chunk is the whole file is the columns': the
            # walker would end its chain at the next entry, and refuse a chunk
            # after it as it refuses one after a file with no chunkSize.
            rows.update(
                row
                for row in compress(range(n), map(_NO_INT.__ne__, chunk_sizes))
                if not (types[row] == "reg" and chunk_sizes[row] == sizes[row] > 0)
            )

        framed = "\0" + "\0".join(names) + "\0"
        if framed.count("\0") != n + 1:
            return None
        whiteouts = self.walker.whiteouts
        found = [
            match.start() for match in _DOT_NAME(framed) if whiteouts or match.group("wh") is None
        ]
        if any(map(framed.__contains__, _ODD_NAME_HINTS)):
            found += [match.start() for match in _ODD_NAME(framed)]
        if found:
            starts = list(accumulate([len(name) + 1 for name in names], initial=0))
            rows.update(bisect_right(starts, at) - 1 for at in found)
        if self.opaque_names:
            opaque = self.opaque_names
            rows.update(
                row
                for row, name in enumerate(names)
                if name.removeprefix("./").rstrip("/") in opaque
            )
        return sorted(rows)

    def plain_rows(
        self,
        types: list[str],
        names: list[str],
        modes: list[int],
        sizes: list[int],
        uids: list[int],
        gids: list[int],
        offsets: list[int],
        ends: list[int],
        modtimes: list[str],
        accesstimes: list[str],
        changetimes: list[str],
        link_names: list[str],
        digests: list[str],
        xattrs: list[dict[str, str] | None],
        chunk_digests: list[str],
    ) -> bool:
        """Check the rows the columns take and add them; False: not all valid."""
        limits = self.limits
        out = self.columns
        base = len(out.paths)
        n = len(types)
        paths = _bulk_paths(names)
        if paths is None:
            return False

        # the file type and permission bits of each distinct (type, mode)
        kind_modes: dict[tuple[str, int], int] = {}
        for kind, mode in set(zip(types, modes, strict=True)):
            bits = max(mode, 0)
            if bits > 0o7777:
                if bits & _S_IFMT != _TYPE_BITS[kind]:
                    return False
                bits &= 0o7777
            kind_modes[kind, mode] = _S_IFREG if kind == "hardlink" else _TYPE_BITS[kind] | bits

        # only regular files have data (a size), a digest or a chunkDigest; data needs one
        sizes = [size if size > 0 else 0 for size in sizes]
        not_reg = [kind != "reg" for kind in types]
        if (
            any(compress(sizes, not_reg))
            or any(compress(digests, not_reg))
            or not _all_digests(digests)
            or "" in compress(digests, sizes)
            or not {"", _EMPTY_SHA256}.issuperset(compress(digests, map(not_, sizes)))
            or any(compress(chunk_digests, not_reg))
            or not _all_digests(chunk_digests)
        ):
            return False
        # the payload is the digest's path (see _Walker.payload); an empty file has none
        data: list[bytes | None] = [
            f"{digest[7:9]}/{digest[9:]}".encode() if size else None
            for digest, size in zip(digests, sizes, strict=True)
        ]

        # symlink targets and hardlinks: theirs is the only linkName (an empty one is none)
        linked = list(compress(range(n), link_names))
        if len(linked) != types.count("symlink") + types.count("hardlink"):
            return False
        links: dict[int, bytes] = {}
        try:
            for row in linked:
                kind = types[row]
                if kind == "symlink":
                    data[row] = link_names[row].encode()
                elif kind == "hardlink":
                    links[row] = _clean_name(link_names[row], limits)
                    if links[row] == paths[row]:
                        return False
                else:
                    return False
        except (UnicodeEncodeError, ValueError):
            return False

        # times: modtime is kept (absent: 0), every time given must be valid
        times = self.times(
            [text or _EPOCH_TEXT for text in modtimes] if "" in modtimes else modtimes
        )
        if times is None:
            return False
        for other in (accesstimes, changetimes):
            if other != modtimes:
                extra = set(other).difference(modtimes)
                extra.discard("")
                if extra and self.times(list(extra)) is None:
                    return False

        # where the data is: an end not before its offset
        if any(compress(map(lt, ends, offsets), map(_NO_INT.__ne__, ends))):
            return False

        extras: dict[int, tuple[bytes | None, bytes | None, tuple[tuple[bytes, bytes], ...]]] = {}
        xattr_rows = list(compress(range(n), map(is_not, xattrs, repeat(None))))
        try:
            for row in xattr_rows:
                # the index only locates an error, which leaves the document to the walker
                pairs = self.walker.xattrs(row, names[row], xattrs[row])
                if pairs and row not in links:  # a hardlink's xattrs are checked, then dropped
                    extras[row] = (None, None, pairs)
        except ValidationError as error:
            _drop_frames(error)
            return False

        uids = [uid if uid > 0 else 0 for uid in uids]
        gids = [gid if gid > 0 else 0 for gid in gids]
        seconds, nanoseconds = times
        for row in links:  # a hardlink's row reads as an empty regular file
            uids[row] = gids[row] = seconds[row] = nanoseconds[row] = 0
        out.paths += paths
        out.mode += [kind_modes[kind, mode] for kind, mode in zip(types, modes, strict=True)]
        out.uid += uids
        out.gid += gids
        out.mtime += seconds
        out.mtime_nsec += nanoseconds
        out.size += sizes
        out.data += data
        out.links.update((base + row, target) for row, target in links.items())
        out.extras.update((base + row, extra) for row, extra in extras.items())
        return True

    def walk(self, rows: list[int], entries: list[_BulkEntry], first: int) -> bool:
        """The walker's checks for the ``entries`` at ``rows`` of the batch, in order.

        False: one failed.  Each goes in as the JSON object it came from
        (see :class:`_BulkEntry`).  A row the columns took between two of them
        would have ended a chunk chain in the walker (:meth:`_Walker.entry`):
        it ends here too.
        """
        walker = self.walker
        try:
            for row, entry in zip(rows, entries, strict=True):
                index = first + row
                if index != self.after_walked:
                    walker.close_chain()
                walker.entry(index, msgspec.to_builtins(entry))
                self.after_walked = index + 1
        except ValidationError as error:
            _drop_frames(error)
            return False
        self.add_walked()
        return True

    def add_walked(self) -> None:
        """Add the nodes the walker made since the last call as rows."""
        out = self.columns
        for path, node in self.walked.fresh:
            row = len(out.paths)
            out.paths.append(path)
            if isinstance(node, Hardlink):
                out.links[row] = node.target
                node = EMPTY_FILE  # a hardlink's row reads as an empty regular file
            out.mode.append(node.mode)
            out.uid.append(node.uid)
            out.gid.append(node.gid)
            out.mtime.append(node.mtime)
            out.mtime_nsec.append(node.mtime_nsec)
            out.size.append(node.size)
            link = node.mode & _S_IFMT == _S_IFLNK
            out.data.append(node.symlink_target if link else node.payload)
            if node.rdev:
                self.rdev[row] = node.rdev
            if node.xattrs or node.content is not None or node.fsverity_digest is not None:
                out.extras[row] = (node.content, node.fsverity_digest, node.xattrs)
        self.walked.fresh.clear()

    def finish(self) -> NodeColumns | None:
        """The columns, once the walker ended its chunk chain and made the
        opaque directories no entry made (None: it refused)."""
        try:
            self.walker.close_chain()
            self.walker.add_opaque_dirs(_raise)
        except ValidationError as error:
            _drop_frames(error)
            return None
        self.add_walked()
        out = self.columns
        if self.rdev:
            out.rdev = [0] * len(out.paths)
            for row, rdev in self.rdev.items():
                out.rdev[row] = rdev
        return out

    def times(self, texts: list[str]) -> tuple[list[int], list[int]] | None:
        """Seconds and nanoseconds of Go's RFC 3339 times (None: another form, or invalid).

        What :meth:`_Walker.time` makes of them: each distinct date, ``HH:MM``
        and ``SS`` is checked once, by the walker's own parsers.
        """
        joined = "\n".join(texts) + "\n"
        if not joined.isascii():
            return None
        shape = joined.encode().translate(_DIGITS_AS_0)
        if shape != _NANO_SHAPE * len(texts) and (
            shape.count(b"\n") != len(texts) or not _TIME_SHAPES.issuperset(shape[:-1].split(b"\n"))
        ):
            return None
        days, minutes, seconds = self.days, self.minutes, self.seconds
        try:
            whole = [
                days[text[:10]] + minutes[text[11:16]] + seconds[text[17:19]] for text in texts
            ]
        except ValueError:
            return None
        scale = _FRACTION_SCALE
        return whole, [int(text[20:-1] or "0") * scale[len(text) - 21] for text in texts]


# -- the entry walker -------------------------------------------------------------


class _Problems:
    """Collects problems (``collect=True``) or raises the first one."""

    __slots__ = ("collect", "found")

    def __init__(self, collect: bool) -> None:
        self.collect = collect
        self.found: list[ValidationError] = []

    def add(self, error: ValidationError) -> None:
        if not self.collect:
            raise error
        self.found.append(error)

    def raise_if_any(self) -> None:
        found = self.found
        if not found:
            return
        if len(found) == 1:
            raise found[0]
        lines = [str(problem) for problem in found[:_MAX_LISTED_PROBLEMS]]
        if len(found) > _MAX_LISTED_PROBLEMS:
            lines.append(f"... and {len(found) - _MAX_LISTED_PROBLEMS} more")
        raise ValidationError(
            f"{len(found)} problems:\n  " + "\n  ".join(lines), problems=tuple(found)
        )


def _located(error: ValidationError, index: int | None, name: object) -> ValidationError:
    """``error`` (from the builder) located by the entry's name as given."""
    field = error.field
    if field == "path":
        field = "name"
    return ValidationError(
        error.reason,
        entry=error.entry if error.entry is not None else index,
        path=name if isinstance(name, str) else error.path,
        field=field,
    )


def _opaque_dirs(entries: list[Any], limits: Limits) -> set[bytes]:
    """Directories that hold a ``.wh..wh..opq`` marker (pre-pass; errors wait)."""
    return _opaque_dirs_named(
        (entry.get("name") for entry in entries if entry.__class__ is dict), limits
    )


def _opaque_dirs_named(names: Iterable[object], limits: Limits) -> set[bytes]:
    """:func:`_opaque_dirs` from the entries' names."""
    found: set[bytes] = set()
    for name in names:
        if name.__class__ is not str or ".wh..wh..opq" not in name:
            continue
        try:
            path = _clean_name(name, limits)
        except ValueError:
            continue
        if path.endswith(b"/" + _WH_OPAQUE):
            found.add(_parent(path))
    return found


def parse_toc(
    data: TocSource,
    *,
    limits: Limits | None = None,
    compat: str | None = None,
    collect: bool = False,
) -> Tree:
    """Validate a containers/storage TOC (zstd:chunked or eStargz) and return its Tree.

    ``data`` is the JSON document (``bytes`` or ``str``) or the path of a file
    holding it.  ``compat="containers-storage"`` keeps ``.wh.*`` entries as
    plain files, as containers/storage does, so the image matches podman's
    byte for byte.  ``collect=True`` reports every problem: one
    :class:`ValidationError` whose ``problems`` holds them all.  Raises
    :class:`ValidationError` for any invalid input.
    """
    if compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat mode {compat!r}; choose containers-storage or None")
    limits = limits or Limits()
    raw = _read_input(data, limits)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # the parse allocates millions of acyclic objects
    try:
        head = None if collect else _typed_document(raw, limits)
        if head is not None:
            tree = _bulk(raw, limits, compat, head)
            if tree is not None:
                del head, raw
                # The parse's small objects are gone (a full collection
                # frees its few cycles; ~6 ms): the Tree's own few are made
                # anew where they keep no freed allocator arena alive.
                gc.collect()
                return moved(tree)
            tree = _typed(raw, limits, compat, head)
            if tree is not None:
                return tree
            del head
        text = _json_text(raw, limits)
        # Only a document that spells null somewhere needs the null checks.
        nulls = raw.find(b"null") >= 0
        # Only one that names an opaque marker needs the pre-pass for them.
        has_opaque = raw.find(_WH_OPAQUE) >= 0
        del raw
        if not collect and not has_opaque:
            try:
                return _streamed(text, _Walker(limits, compat, collect, nulls=nulls))
            except _SlowPath:
                pass  # start over on the whole document: it says what is wrong
        document = _decode_json(text)
        del text
        walker = _Walker(limits, compat, collect, nulls=nulls, has_opaque=has_opaque)
        return walker.run(document)
    finally:
        if gc_was_enabled:
            gc.enable()


class _Walker:
    """One pass over the entries: validate each, add it to the TreeBuilder."""

    def __init__(
        self,
        limits: Limits,
        compat: str | None,
        collect: bool,
        *,
        nulls: bool = True,
        has_opaque: bool = True,
        nodes: _NodeSink | None = None,
    ) -> None:
        self.limits = limits
        self.whiteouts = compat is None
        self.problems = _Problems(collect)
        self.builder = TreeBuilder(
            limits,
            synthesize_parents=True,
            duplicates="identical",
            count_hardlinks=True,
        )
        #: where the nodes go: the builder, or the bulk path's rows (see _WalkedNodes)
        self.nodes: _NodeSink = self.builder if nodes is None else nodes
        self.opaque: set[bytes] = set()
        self.opaque_done: set[bytes] = set()
        self.bookkeeping: dict[bytes, tuple[int, object]] = {}
        self.times: dict[str, tuple[int, int]] = {}
        self.seconds: dict[str, int] = {}
        self.dates: dict[str, int] = {}
        self.clocks: dict[str, int] = {}
        # a clean name this long or shorter needs no component or length check
        self.max_name = min(limits.max_name_bytes, limits.max_path_bytes - 1)
        self.max_size = limits.max_file_size
        self.nulls = nulls
        self.has_opaque = has_opaque
        # The chunk chain of the last regular file: [entry, path, size, covered]
        # where covered is None once a piece ran to the end of the file.
        self.chain: list[Any] | None = None

    # -- document level ----------------------------------------------------

    def run(self, document: object) -> Tree:
        problems = self.problems
        if document.__class__ is not dict:
            raise ValidationError(f"the TOC must be a JSON object, got {_show(document)}")
        assert isinstance(document, dict)
        version = document.get("version")
        if version.__class__ is not int or version != 1:
            problems.add(ValidationError(f"must be 1, got {_show(version)}", field="version"))
        split = document.get("tarSplitDigest")
        if "tarSplitDigest" in document and not _is_digest(split):
            problems.add(
                ValidationError(
                    f"must be sha256: and 64 lowercase hex digits, got {_show(split)}",
                    field="tarSplitDigest",
                )
            )
        entries = document.get("entries")
        if entries.__class__ is not list:
            problems.add(
                ValidationError(f"must be an array, got {_show(entries)}", field="entries")
            )
            problems.raise_if_any()
            raise AssertionError("unreachable")  # pragma: no cover
        assert isinstance(entries, list)
        if len(entries) > self.limits.max_entries:
            raise ValidationError(f"more than {self.limits.max_entries} entries", field="entries")
        if self.whiteouts and self.has_opaque:
            self.opaque = _opaque_dirs(entries, self.limits)

        entry_fn = self.entry
        add_problem = problems.add
        for index, entry in enumerate(entries):
            try:
                entry_fn(index, entry)
            except ValidationError as error:
                add_problem(error)
        try:
            self.close_chain()
        except ValidationError as error:
            add_problem(error)
        builder = self.builder
        self.add_opaque_dirs(add_problem)
        problems.raise_if_any()
        try:
            return builder.build()
        except ValidationError as error:
            name = None
            if error.entry is not None and 0 <= error.entry < len(entries):
                candidate = entries[error.entry]
                if candidate.__class__ is dict:
                    name = candidate.get("name")
            add_problem(_located(error, None, name))
            problems.raise_if_any()
            raise  # pragma: no cover - raise_if_any raised

    def add_opaque_dirs(self, add_problem: Callable[[ValidationError], None]) -> None:
        """Make the directories that hold an opaque marker but have no entry of their own."""
        for directory in sorted(self.opaque - self.opaque_done):
            # No directory entry of its own: the marker makes (or marks) it.
            try:
                self.nodes.add(directory, Inode(mode=_S_IFDIR | 0o755, xattrs=(_OPAQUE_XATTR,)))
            except ValidationError as error:
                add_problem(
                    ValidationError(
                        "holds a .wh..wh..opq marker but cannot be made opaque: " + error.reason,
                        path=directory,
                        field="name",
                    )
                )

    # -- one entry -------------------------------------------------------------

    def entry(self, index: int, entry: object) -> None:
        """Validate one TOC entry and add what it stands for to the builder.

        Written for speed: one pass of plain ``dict.get`` calls, combined
        range checks on the fast path, and precise error messages worked out
        only once something is wrong.
        """
        if entry.__class__ is not dict:
            raise ValidationError(f"must be a JSON object, got {_show(entry)}", entry=index)
        get = cast(dict[str, Any], entry).get
        name = get("name")
        typ = get("type")
        if name.__class__ is not str or typ.__class__ is not str or typ not in _TYPE_BITS:
            raise self.bad_head(index, name, typ)
        if self.nulls and None in cast(dict[str, Any], entry).values():
            self.check_nulls(index, name, cast(dict[str, Any], entry))
        # most entries have none of the rare fields: one C-speed test skips their lookups
        rare = not _RARE_FIELDS.isdisjoint(cast(dict[str, Any], entry))

        path = self.path(index, name)
        if typ == "chunk":
            self.chunk(index, name, path, get)
            return
        if self.chain is not None:
            self.close_chain()

        # the integer fields
        mode = get("mode", 0)
        uid = get("uid", 0)
        gid = get("gid", 0)
        size = get("size", 0)
        if not (
            mode.__class__ is int
            and uid.__class__ is int
            and gid.__class__ is int
            and size.__class__ is int
            and 0 <= mode <= 0o7777
            and 0 <= uid <= _ID_MAX
            and 0 <= gid <= _ID_MAX
            and 0 <= size <= self.max_size
        ):
            mode = self.check_ints(index, name, typ, mode, uid, gid, size)
        if size and typ != "reg":
            raise self.fail(index, name, "size", f"only regular files have a size, not a {typ}")

        # times: modtime is kept, accesstime and changetime only checked
        times = self.times
        dates = self.dates
        clocks = self.clocks
        mtime = 0
        mtime_nsec = 0
        modtime = get("modtime")
        if modtime is not None:
            parsed = times.get(modtime) if modtime.__class__ is str else None
            if parsed is not None or (parsed := _quick_time(modtime, dates, clocks)) is not None:
                mtime, mtime_nsec = parsed
            else:
                mtime, mtime_nsec = self.time(index, name, "modtime", modtime)
        # accesstime and changetime usually repeat modtime (checked just above)
        for field in _OTHER_TIMES:
            text = get(field)
            if (
                text is not None
                and text != modtime
                and (
                    text.__class__ is not str
                    or (text not in times and _quick_time(text, dates, clocks) is None)
                )
            ):
                self.time(index, name, field, text)

        # device numbers
        rdev = 0
        if rare:
            major = get("devMajor")
            minor = get("devMinor")
            if major is not None or minor is not None:
                rdev = self.device(index, name, typ, major, minor)

        # xattrs
        xattrs: tuple[tuple[bytes, bytes], ...] = ()
        value = get("xattrs") if rare else None
        if value is not None:
            xattrs = self.xattrs(index, name, value)

        payload = self.payload(index, name, typ, size, get("digest"))

        # where the data is, and its chunks
        offset = get("offset")
        end = get("endOffset")
        if (
            (offset is not None or end is not None)
            and not (
                offset.__class__ is int
                and 0 <= offset <= _I63_MAX
                and (end is None or (end.__class__ is int and offset <= end <= _I63_MAX))
            )
        ) or (rare and get("innerOffset") is not None):
            self.offsets(index, name, get)
        chunk_size = None
        if rare and (
            get("chunkSize") is not None
            or get("chunkOffset") is not None
            or get("chunkDigest") is not None
            or get("chunkType") is not None
        ):
            if typ != "reg":
                raise self.fail(
                    index,
                    name,
                    "chunkSize",
                    f"only regular files and chunks have chunk fields, not a {typ}",
                )
            chunk_size = self.chunk_fields(index, name, get, first=True)

        link = get("linkName") if rare else None
        if link is not None and link.__class__ is not str:
            raise self.fail(index, name, "linkName", f"must be a string, got {_show(link)}")

        self.node(
            index, name, path, typ, mode, uid, gid, mtime, mtime_nsec, size, rdev, payload,
            link, xattrs, chunk_size,
        )  # fmt: skip

    # -- the typed fast path ---------------------------------------------------

    def typed_entries(self, entries: list[msgspec.Raw]) -> int:
        """Validate and add msgspec-decoded entries; return how many keys they held.

        What :meth:`entry` does, for entries whose JSON types and plain
        ranges the decoder checked already: an entry with a rare field
        (device numbers, xattrs, chunk fields, innerOffset) or of type
        ``chunk``, and every entry whose checks fail, goes through
        :meth:`entry` itself, which then does or says exactly what it always
        does.
        """
        unset = UNSET
        keys = 0
        max_size = self.max_size
        times = self.times
        dates = self.dates
        clocks = self.clocks
        type_bits = _TYPE_BITS
        decode = _ENTRY_DECODER.decode
        for index, piece in enumerate(entries):
            # one entry at a time: the decoded entries never pile up in memory
            e = decode(piece)
            typ = e.type
            name = e.name
            if (
                typ == "chunk"
                or typ not in type_bits
                or e.xattrs is not unset
                or e.devMajor is not unset
                or e.devMinor is not unset
                or e.chunkSize is not unset
                or e.chunkOffset is not unset
                or e.chunkDigest is not unset
                or e.chunkType is not unset
                or e.innerOffset is not unset
            ):
                fields = _as_dict(e)
                keys += len(fields)
                if fields.get("xattrs").__class__ is dict:
                    keys += len(fields["xattrs"])
                self.entry(index, fields)
                continue
            if self.chain is not None:
                self.close_chain()
            keys += 2

            path = self.path(index, name)

            # the integer fields (types and ranges checked by the decoder)
            mode = e.mode
            if mode is unset:
                mode = 0
            else:
                keys += 1
                if mode > 0o7777:
                    mode = self.check_ints(index, name, typ, mode, 0, 0, 0)
            uid = e.uid
            if uid is unset:
                uid = 0
            else:
                keys += 1
            gid = e.gid
            if gid is unset:
                gid = 0
            else:
                keys += 1
            size = e.size
            if size is unset:
                size = 0
            else:
                keys += 1
                if size:
                    if size > max_size:
                        self.check_ints(index, name, typ, mode, uid, gid, size)
                    if typ != "reg":
                        raise self.fail(
                            index, name, "size", f"only regular files have a size, not a {typ}"
                        )

            # times: modtime is kept, accesstime and changetime only checked
            mtime = 0
            mtime_nsec = 0
            modtime = e.modtime
            if modtime is not unset:
                keys += 1
                parsed = times.get(modtime)
                if (
                    parsed is not None
                    or (parsed := _quick_time(modtime, dates, clocks)) is not None
                ):
                    mtime, mtime_nsec = parsed
                else:
                    mtime, mtime_nsec = self.time(index, name, "modtime", modtime)
            for field, text in (("accesstime", e.accesstime), ("changetime", e.changetime)):
                if text is not unset:
                    keys += 1
                    if (
                        text != modtime
                        and text not in times
                        and _quick_time(text, dates, clocks) is None
                    ):
                        self.time(index, name, field, text)

            digest = e.digest
            if digest is not unset:
                keys += 1
                payload = self.payload(index, name, typ, size, digest)
            elif size:
                self.payload(index, name, typ, size, None)  # raises: a file with data needs one
            else:
                payload = None

            # where the data is (ranges checked by the decoder)
            offset = e.offset
            end = e.endOffset
            if offset is not unset:
                keys += 1
                if end is not unset:
                    keys += 1
                    if end < offset:
                        raise self.fail(
                            index, name, "endOffset", f"{end} is before offset {offset}"
                        )
            elif end is not unset:
                keys += 1

            link: str | None = None
            if e.linkName is not unset:
                keys += 1
                link = e.linkName

            self.node(
                index, name, path, typ, mode, uid, gid, mtime, mtime_nsec, size, 0, payload,
                link, (), None,
            )  # fmt: skip
        return keys

    def payload(self, index: int, name: str, typ: str, size: int, digest: object) -> bytes | None:
        """The payload path ``digest`` (None: absent) names; raise if it does not fit the entry."""
        if digest is None:
            if size:
                raise self.fail(index, name, "digest", "required for a regular file with data")
            return None
        if digest.__class__ is not str or _DIGEST(digest) is None:
            raise self.fail(index, name, "digest", _digest_problem(digest))
        if typ != "reg":
            raise self.fail(index, name, "digest", f"only regular files have one, not a {typ}")
        if size:
            return f"{digest[7:9]}/{digest[9:]}".encode()
        if digest != _EMPTY_SHA256:
            raise self.fail(
                index, name, "digest", "an empty file's digest must be the sha256 of nothing"
            )
        return None

    def node(
        self,
        index: int,
        name: str,
        path: bytes,
        typ: str,
        mode: int,
        uid: int,
        gid: int,
        mtime: int,
        mtime_nsec: int,
        size: int,
        rdev: int,
        payload: bytes | None,
        link: str | None,
        xattrs: tuple[tuple[bytes, bytes], ...],
        chunk_size: int | None,
    ) -> None:
        """Make the node of a checked entry and add it (or what it stands for) to the tree."""
        if link and typ != "symlink" and typ != "hardlink":
            raise self.fail(
                index, name, "linkName", f"only symlinks and hardlinks have one, not a {typ}"
            )
        node: Node
        if typ == "reg":
            if (size == 1 and path in _LANDMARKS) or path == _STARGZ_INDEX:
                # eStargz bookkeeping, no part of the tree; a repeat must agree
                self.same_as_before(
                    index, name, path, (mode, uid, gid, mtime, mtime_nsec, size, payload, xattrs)
                )
                return
            node = new_inode(
                _S_IFREG | mode,
                1,
                uid,
                gid,
                mtime,
                mtime_nsec,
                size,
                0,
                payload,
                None,
                None,
                None,
                xattrs,
            )
            if chunk_size is not None:
                if chunk_size > size:
                    raise self.fail(
                        index,
                        name,
                        "chunkSize",
                        f"{chunk_size} is larger than the file ({size} bytes)",
                    )
                self.chain = [index, name, path, size, chunk_size]
        elif typ == "dir":
            if path in self.opaque:
                merged = dict(xattrs)
                merged[_OPAQUE_XATTR[0]] = _OPAQUE_XATTR[1]
                xattrs = tuple(sorted(merged.items()))
                self.opaque_done.add(path)
            node = new_inode(
                _S_IFDIR | mode, 1, uid, gid, mtime, mtime_nsec, 0, 0, None, None,
                None, None, xattrs,
            )  # fmt: skip
        elif typ == "symlink":
            node = new_inode(
                _S_IFLNK | mode, 1, uid, gid, mtime, mtime_nsec, 0, 0, None,
                self.symlink_target(index, name, link), None, None, xattrs,
            )  # fmt: skip
        elif typ == "hardlink":
            if not link:
                raise self.fail(index, name, "linkName", "a hardlink needs the name of its target")
            try:
                target = _clean_name(link, self.limits)
            except ValueError as err:
                raise self.fail(index, name, "linkName", str(err)) from None
            if target == path:
                raise self.fail(index, name, "linkName", "a hardlink cannot link to itself")
            node = Hardlink(target)
        else:  # char, block, fifo
            if typ == "fifo" and rdev:
                raise self.fail(index, name, "devMajor", "a fifo has no device numbers")
            node = new_inode(
                _TYPE_BITS[typ] | mode, 1, uid, gid, mtime, mtime_nsec, 0, rdev,
                None, None, None, None, xattrs,
            )  # fmt: skip

        if self.whiteouts and path.find(b"/.wh.") >= 0:
            self.whiteout(
                index, name, path, path.rfind(b"/"), typ, node, uid, gid, mtime, mtime_nsec
            )
            return
        try:
            self.nodes.add(path, node, entry=index)
        except ValidationError as error:
            raise _located(error, index, name) from None

    def path(self, index: int, name: str) -> bytes:
        """The clean absolute path of an entry's ``name``; raise if it is not a valid one."""
        # the fast path takes names that are clean already
        if (
            name
            and "\0" not in name
            and "//" not in name
            and "/." not in name
            and name[0] != "."
            and name[0] != "/"
            and name.isascii()
        ):
            raw = (name[:-1] if name[-1] == "/" else name).encode()
            if len(raw) <= self.max_name:
                return b"/" + raw
        try:
            return _clean_name(name, self.limits)
        except ValueError as err:
            raise self.fail(index, name, "name", str(err)) from None

    def same_as_before(self, index: int, name: str, path: bytes, seen: object) -> None:
        """An entry that makes no node at its own path: a repeat of it must agree."""
        first = self.bookkeeping.setdefault(path, (index, seen))
        if first[1] != seen:
            raise self.fail(
                index, name, "name", f"path repeats entry {first[0]} with different attributes"
            )

    def add(self, index: int, name: str, path: bytes, node: Node) -> None:
        try:
            self.nodes.add(path, node, entry=index)
        except ValidationError as error:
            raise _located(error, index, name) from None

    # -- errors and rare cases, kept off the fast path ---------------------------

    @staticmethod
    def fail(index: int, name: str, field: str, reason: str) -> ValidationError:
        return ValidationError(reason, entry=index, path=name, field=field)

    @staticmethod
    def bad_head(index: int, name: object, typ: object) -> ValidationError:
        if name.__class__ is not str:
            return ValidationError(
                f"must be a string, got {_show(name)}", entry=index, field="name"
            )
        return ValidationError(
            f"must be one of {_TYPES_TEXT}, got {_show(typ)}",
            entry=index,
            path=name,
            field="type",
        )

    def check_nulls(self, index: int, name: str, entry: dict[str, Any]) -> None:
        for field in _FIELDS:
            if field in entry and entry[field] is None:
                raise self.fail(index, name, field, "must not be null")

    def check_ints(
        self, index: int, name: str, typ: str, mode: Any, uid: Any, gid: Any, size: Any
    ) -> int:
        """Raise the precise error for the integer fields; return the permission bits."""
        if mode.__class__ is not int or not 0 <= mode <= 0o177777:
            raise self.fail(index, name, "mode", _int_problem(mode, 0, 0o177777))
        if mode > 0o7777:
            if mode & _S_IFMT != _TYPE_BITS[typ]:
                raise self.fail(
                    index,
                    name,
                    "mode",
                    f"file type bits 0o{mode & _S_IFMT:o} do not match type {typ}",
                )
            mode &= 0o7777
        if uid.__class__ is not int or not 0 <= uid <= _ID_MAX:
            raise self.fail(index, name, "uid", _int_problem(uid, 0, _ID_MAX))
        if gid.__class__ is not int or not 0 <= gid <= _ID_MAX:
            raise self.fail(index, name, "gid", _int_problem(gid, 0, _ID_MAX))
        if size.__class__ is not int or not 0 <= size <= self.max_size:
            raise self.fail(index, name, "size", _int_problem(size, 0, self.max_size))
        return cast(int, mode)

    def time(self, index: int, name: str, field: str, text: object) -> tuple[int, int]:
        """Parse an RFC 3339 time (with caches); raise if it is not one."""
        parsed = None
        if isinstance(text, str) and len(text) >= 20:
            base = text[:19]
            seconds = self.seconds.get(base)
            if seconds is None:
                whole = _parse_time(base + "Z")
                if whole is not None:
                    seconds = whole[0]
                    if len(self.seconds) < _CACHE_MAX:
                        self.seconds[base] = seconds
                    if base[10] == "T" and len(self.dates) < _CACHE_MAX:
                        # the parts, for _quick_time (base matched the RFC 3339 form)
                        clock = int(base[11:13]) * 3600 + int(base[14:16]) * 60 + int(base[17:19])
                        self.dates[base[:10]] = seconds - clock
                        self.clocks[base[11:19]] = clock
            rest = text[19:]
            if seconds is None:
                pass
            elif rest == "Z":
                parsed = (seconds, 0)
            elif (
                rest[0] == "."
                and rest[-1] == "Z"
                and 3 <= len(rest) <= 11
                and rest[1:-1].isdigit()
                and rest.isascii()
            ):
                parsed = (seconds, int(rest[1:-1]) * _FRACTION_SCALE[len(rest) - 2])
            else:
                parsed = _parse_time(text)
        if parsed is None:
            raise self.fail(
                index,
                name,
                field,
                f"must be an RFC 3339 date-time string, got {_show(text)}",
            )
        if len(self.times) < _CACHE_MAX:
            self.times[cast(str, text)] = parsed
        return parsed

    def device(self, index: int, name: str, typ: str, major: Any, minor: Any) -> int:
        if major is None:
            major = 0
        if minor is None:
            minor = 0
        if major.__class__ is not int or not 0 <= major <= _MAJOR_MAX:
            raise self.fail(index, name, "devMajor", _int_problem(major, 0, _MAJOR_MAX))
        if minor.__class__ is not int or not 0 <= minor <= _MINOR_MAX:
            raise self.fail(index, name, "devMinor", _int_problem(minor, 0, _MINOR_MAX))
        if (major or minor) and typ != "char" and typ != "block":
            raise self.fail(
                index,
                name,
                "devMajor" if major else "devMinor",
                f"only char and block devices have device numbers, not a {typ}",
            )
        return _makedev(major, minor)

    def symlink_target(self, index: int, name: str, link: object) -> bytes:
        if not link:
            raise self.fail(index, name, "linkName", "a symlink needs a target")
        try:
            target = cast(str, link).encode()
        except UnicodeEncodeError:
            raise self.fail(index, name, "linkName", "must be valid Unicode") from None
        limit = self.limits.max_symlink_bytes
        if len(target) > limit or target.find(b"\0") >= 0:
            raise self.fail(index, name, "linkName", f"must be 1..{limit} bytes without NUL")
        return target

    def whiteout(
        self,
        index: int,
        name: str,
        path: bytes,
        cut: int,
        typ: str,
        node: Node,
        uid: int,
        gid: int,
        mtime: int,
        mtime_nsec: int,
    ) -> None:
        """Turn the ``.wh.*`` entry at ``path`` into what overlayfs understands."""
        base = path[cut + 1 :]
        parent = path[:cut] or ROOT
        if base.startswith(_WH):
            # the entry leaves no node of its own name: a repeat must agree
            self.same_as_before(index, name, path, (typ, node))
        if base.startswith(_WH_META) and base != _WH_OPAQUE:
            return  # aufs metadata, which containers/storage skips too
        for part in parent.split(b"/"):
            if part.startswith(_WH_META):
                return  # inside aufs metadata
            if part.startswith(_WH):
                raise self.fail(index, name, "name", "a whiteout cannot hold entries")
        if not base.startswith(_WH):
            return self.add(index, name, path, node)
        if typ == "dir":
            raise self.fail(index, name, "type", "a whiteout must not be a directory")
        if base == _WH_OPAQUE:
            return None  # applied to the directory itself (see _opaque_dirs)
        hidden = base[len(_WH) :]
        if hidden in (b"", b".", b".."):
            raise self.fail(index, name, "name", "a whiteout must name a file after .wh.")
        if parent in self.opaque:
            return  # the opaque directory already hides everything below it
        target = (parent if parent != ROOT else b"") + b"/" + hidden
        self.add(index, name, target, Inode(_S_IFCHR, 1, uid, gid, mtime, mtime_nsec))
        return None

    def xattrs(self, index: int, name: str, value: object) -> tuple[tuple[bytes, bytes], ...]:
        if value.__class__ is not dict:
            raise self.fail(
                index,
                name,
                "xattrs",
                f"must be an object of name -> base64 value, got {_show(value)}",
            )
        limits = self.limits
        pairs = []
        for key, encoded in cast(dict[str, Any], value).items():
            if not (key.startswith(_XATTR_PREFIXES) or key in _XATTR_EXACT):
                raise self.fail(
                    index,
                    name,
                    "xattrs",
                    f"name {_show(key)} has no known prefix (user., trusted., "
                    "security., system.posix_acl_access/default)",
                )
            try:
                key_bytes = key.encode()
            except UnicodeEncodeError:
                raise self.fail(
                    index, name, "xattrs", f"name {_show(key)} is not valid Unicode"
                ) from None
            if (
                len(key_bytes) > limits.max_xattr_name_bytes
                or key_bytes.find(b"\0") >= 0
                or key in _XATTR_BARE_PREFIXES
            ):
                raise self.fail(
                    index,
                    name,
                    "xattrs",
                    f"name {_show(key)} must be 1..{limits.max_xattr_name_bytes} "
                    "bytes without NUL, with a name after the prefix",
                )
            if encoded.__class__ is not str:
                raise self.fail(
                    index,
                    name,
                    "xattrs",
                    f"value of {_show(key)} must be a base64 string, got {_show(encoded)}",
                )
            try:
                raw = binascii.a2b_base64(encoded, strict_mode=True)
            except ValueError:
                raise self.fail(
                    index,
                    name,
                    "xattrs",
                    f"value of {_show(key)} is not strict base64: {_show(encoded)}",
                ) from None
            if len(raw) > limits.max_xattr_value_bytes:
                raise self.fail(
                    index,
                    name,
                    "xattrs",
                    f"value of {_show(key)} is longer than {limits.max_xattr_value_bytes} bytes",
                )
            if key_bytes in ACL_XATTR_NAMES:
                problem = posix_acl_problem(raw)
                if problem is not None:
                    # the kernel would refuse to show it: the file's ACL unreadable
                    raise self.fail(index, name, "xattrs", f"value of {_show(key)}: {problem}")
            pairs.append((key_bytes, raw))
        pairs.sort()
        result = tuple(pairs)
        space = Limits.xattr_space(result)
        if space > limits.max_xattr_space:
            raise self.fail(
                index,
                name,
                "xattrs",
                f"take {space} bytes of inode xattr space, more than {limits.max_xattr_space}",
            )
        return result

    def offsets(self, index: int, name: str, get: Callable[..., Any]) -> None:
        """Check ``offset``, ``endOffset`` and ``innerOffset`` (where data lives)."""
        offset = get("offset")
        end = get("endOffset")
        for field, value in (
            ("offset", offset),
            ("endOffset", end),
            ("innerOffset", get("innerOffset")),
        ):
            if value is not None and (value.__class__ is not int or not 0 <= value <= _I63_MAX):
                raise self.fail(index, name, field, _int_problem(value, 0, _I63_MAX))
        if offset is not None and end is not None and end < offset:
            raise self.fail(index, name, "endOffset", f"{end} is before offset {offset}")

    def chunk_fields(
        self, index: int, name: str, get: Callable[..., Any], *, first: bool
    ) -> int | None:
        """Check the chunk fields of an entry; return its chunkSize (None: absent)."""
        size = get("chunkSize")
        offset = get("chunkOffset")
        digest = get("chunkDigest")
        kind = get("chunkType")
        if size is not None and (size.__class__ is not int or not 1 <= size <= _I63_MAX):
            raise self.fail(index, name, "chunkSize", _int_problem(size, 1, _I63_MAX))
        if offset is not None:
            if offset.__class__ is not int or not 0 <= offset <= _I63_MAX:
                raise self.fail(index, name, "chunkOffset", _int_problem(offset, 0, _I63_MAX))
            if first and offset != 0:
                raise self.fail(
                    index,
                    name,
                    "chunkOffset",
                    f"a regular file holds its first chunk, at 0, got {offset}",
                )
        if digest is not None and not _is_digest(digest):
            raise self.fail(index, name, "chunkDigest", _digest_problem(digest))
        if kind is not None and (kind.__class__ is not str or kind not in _CHUNK_TYPES):
            raise self.fail(index, name, "chunkType", f'must be "" or "zeros", got {_show(kind)}')
        return size

    # -- chunks ----------------------------------------------------------------

    def chunk(self, index: int, name: str, path: bytes, get: Callable[..., Any]) -> None:
        """Check a ``chunk`` entry against the regular file it continues."""
        chain = self.chain
        if chain is None or chain[2] != path:
            raise self.fail(
                index,
                name,
                "name",
                "a chunk must follow the regular file it belongs to, "
                "whose chunkSize says that more chunks come",
            )
        self.offsets(index, name, get)
        chunk_size = self.chunk_fields(index, name, get, first=False)
        self.chunk_extras(index, name, get)
        offset = get("chunkOffset", 0)
        file_size = chain[3]
        covered = chain[4]
        if covered is None:
            raise self.fail(
                index,
                name,
                "chunkOffset",
                "the previous piece of this file already ran to its end",
            )
        if offset != covered:
            raise self.fail(
                index,
                name,
                "chunkOffset",
                f"must be {covered} (where the previous piece ends), got {_show(offset)}",
            )
        if offset >= file_size:
            raise self.fail(
                index,
                name,
                "chunkOffset",
                f"{offset} is not inside the file ({file_size} bytes)",
            )
        if chunk_size is None:
            chain[4] = None
        elif offset + chunk_size > file_size:
            raise self.fail(
                index,
                name,
                "chunkSize",
                f"chunk {offset}..{offset + chunk_size} overruns the file ({file_size} bytes)",
            )
        else:
            chain[4] = offset + chunk_size

    def chunk_extras(self, index: int, name: str, get: Callable[..., Any]) -> None:
        """The file fields a chunk may repeat: same types and ranges as anywhere."""
        self.check_ints(
            index, name, "chunk", get("mode", 0), get("uid", 0), get("gid", 0), get("size", 0)
        )
        for field in ("modtime", "accesstime", "changetime"):
            text = get(field)
            if text is not None:
                self.time(index, name, field, text)
        major = get("devMajor")
        minor = get("devMinor")
        if major is not None or minor is not None:
            self.device(index, name, "chunk", major, minor)
        value = get("xattrs")
        if value is not None:
            self.xattrs(index, name, value)
        digest = get("digest")
        if digest is not None and (digest.__class__ is not str or _DIGEST(digest) is None):
            raise self.fail(index, name, "digest", _digest_problem(digest))
        link = get("linkName")
        if link is not None and link.__class__ is not str:
            raise self.fail(index, name, "linkName", f"must be a string, got {_show(link)}")

    def close_chain(self) -> None:
        """The chunks of the last regular file ended: they must cover it."""
        chain = self.chain
        self.chain = None
        if chain is None:
            return
        index, name, _path, size, covered = chain
        if covered is not None and covered != size:
            raise self.fail(
                index,
                name,
                "chunkSize",
                f"chunks cover {covered} of the file's {size} bytes",
            )
