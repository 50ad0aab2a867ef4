"""The rules that tie fields of one entry, and entries of one chunk chain, run over columns.

Each rule runs over a batch's column with C-level operations (``map`` with
operator functions, ``compress``, joins, counts); only a column that holds
something wrong, or a truly rare row (devices, xattrs, whiteouts, eStargz
landmarks), is looked at row by row.  Problems are kept per entry by
:data:`RANK`: the first entry's first problem is told, as a walk would find it.
"""

from __future__ import annotations

import binascii
import os
import re
from bisect import bisect_right
from collections.abc import Iterator
from itertools import accumulate, compress, repeat
from operator import and_, is_, is_not, itemgetter, lt, ne, not_, or_
from typing import Any

from msgspec import UNSET

from .._acl import ACL_XATTR_NAMES, posix_acl_problem
from .._columns import Extra
from ..errors import ValidationError
from ..limits import Limits
from ..model import ROOT
from ._schema import FIELDS, MARK, NO_INT, show, wrong

S_IFMT, S_IFREG, S_IFDIR, S_IFLNK = 0o170000, 0o100000, 0o040000, 0o120000
S_IFCHR, S_IFBLK, S_IFIFO = 0o020000, 0o060000, 0o010000
TYPE_BITS = {
    "reg": S_IFREG, "dir": S_IFDIR, "symlink": S_IFLNK, "hardlink": S_IFREG,
    "char": S_IFCHR, "block": S_IFBLK, "fifo": S_IFIFO, "chunk": 0,
}  # fmt: skip
EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
OPAQUE_XATTR = (b"trusted.overlay.opaque", b"y")
WH, WH_META, WH_OPAQUE = b".wh.", b".wh..wh.", b".wh..wh..opq"
LANDMARKS = frozenset((b"/.no.prefetch.landmark", b"/.prefetch.landmark"))
STARGZ_INDEX = b"/stargz.index.json"
# the paths rare_row looks at: whiteouts (".wh." after a "/"), and the eStargz landmarks
# and index, found in the \0-joined paths by literal searches (a regex with a
# lookbehind branch has no literal to skip ahead by, and crawls)
_WHITEOUT_PART = re.compile(re.escape(b"/" + WH))
_RARE_PATHS = tuple(b"\0" + path + b"\0" for path in sorted((*LANDMARKS, STARGZ_INDEX)))
_XATTR_PREFIXES = ("user.", "trusted.", "security.")
_XATTR_EXACT = frozenset(("system.posix_acl_access", "system.posix_acl_default"))

_NOT_FOLLOWING = (
    "a chunk must follow the regular file it belongs to, whose chunkSize says that more chunks come"
)
# The order in which one entry's problems are told: a field's name stands for
# the schema's refusal of it, an upper-case name for a column or row rule (a
# chain's end is found once the next entry's name is checked).
RANK = {name: rank for rank, name in enumerate((
    "ENTRY", "name", "CLOSE", "FOLLOW", "CHUNK_OF_CHUNK", "mode", "MODE", "uid", "gid", "size",
    "SIZE", "modtime", "accesstime", "changetime", "TIME", "devMajor", "devMinor", "DEVICE",
    "xattrs", "XATTRS", "digest", "DIGEST", "offset", "endOffset", "innerOffset", "OFFSETS",
    "CHUNK_FIELDS", "chunkSize", "chunkOffset", "chunkDigest", "chunkType", "linkName", "LINK",
    "CHUNK_SIZE", "CHAIN", "WHITEOUT",
))}  # fmt: skip


def field_rank(field: str, typ: str) -> str:
    """Where the schema's refusal of ``field`` is told (a chunk checks its chunk fields early)."""
    if typ == "chunk" and field.startswith("chunk"):
        return "CHUNK_OF_CHUNK"
    return field if field in RANK else "ENTRY"


_HEX_AS_0 = bytes.maketrans(b"123456789abcdef", b"0" * 15)
_DIGITS_AS_0 = bytes.maketrans(b"123456789", b"0" * 9)
_DIGEST_SHAPE = EMPTY_SHA256.encode().translate(_HEX_AS_0)
_TIME_SHAPES = frozenset(
    b"0000-00-00T00:00:00" + (b"." + b"0" * digits if digits else b"") + b"Z"
    for digits in range(10)
)
_NANO_SHAPE = b"0000-00-00T00:00:00.000000000Z\n"
_NANOSECONDS = itemgetter(slice(20, 29))
_FRACTION_SCALE = tuple(10 ** (9 - digits) for digits in range(10))
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_RFC3339: list[re.Pattern[str]] = []


def all_digests(texts: list[Any]) -> bool:
    """Each of ``texts`` but UNSET is ``sha256:`` and 64 lowercase hex digits (each
    one's length too: two wrong lengths could join into two right shapes)."""
    given = list(compress(texts, map(is_not, texts, repeat(UNSET))))
    if not given:
        return True
    joined = "".join(given)
    return (
        set(map(len, given)) == {71}
        and joined.count("sha256:") == len(given)
        and joined.isascii()
        and joined.encode().translate(_HEX_AS_0) == _DIGEST_SHAPE * len(given)
    )


def is_digest(value: object) -> bool:
    """One value by :func:`all_digests`."""
    return value.__class__ is str and all_digests([value])


def parse_time(text: str, go: bool = False) -> tuple[int, int] | None:
    """An RFC 3339 date-time as (seconds since the epoch, nanoseconds); None: not one.
    ``go``: as Go's ``time.Parse(time.RFC3339, ...)`` (``T``, ``Z``, any fraction length)."""
    if not _RFC3339:
        for t, z, fraction in (("[Tt]", "[Zz]", r"(\d{1,9})"), ("T", "Z", r"(\d{1,9})\d*")):
            _RFC3339.append(
                re.compile(
                    rf"(\d{{4}})-(\d\d)-(\d\d){t}(\d\d):(\d\d):(\d\d)(?:\.{fraction})?"
                    rf"(?:{z}|([+-])(\d\d):(\d\d))",
                    re.ASCII,
                )
            )
    match = _RFC3339[go].fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = map(int, match.groups()[:6])
    frac, sign, off_h, off_m = match.groups()[6:]
    if not 1 <= month <= 12 or hour > 23 or minute > 59 or second > 59:
        return None
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= day <= (29 if month == 2 and leap else _DAYS_IN_MONTH[month]):
        return None
    # days from the civil date (proleptic Gregorian), H. Hinnant's algorithm
    y = year - (month <= 2)
    era, yoe = y // 400, y % 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    seconds = days * 86400 + hour * 3600 + minute * 60 + second
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            return None
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds = seconds - offset if sign == "+" else seconds + offset
    return seconds, int(frac.ljust(9, "0")) if frac else 0


class _Days(dict[str, int]):
    """A date (``YYYY-MM-DD``) -> the seconds from the epoch to its start, parsed on first sight."""

    def __missing__(self, day: str) -> int:
        parsed = parse_time(day + "T00:00:00Z")
        if parsed is None:
            raise KeyError(day)
        self[day] = parsed[0]
        return parsed[0]


# The parts of Go's RFC 3339 times: each date parsed once per process (bounded
# in Batches), every clock's minutes and seconds known beforehand.
_DAYS = _Days()
_MINUTES = {f"{h:02}:{m:02}": h * 3600 + m * 60 for h in range(24) for m in range(60)}
_SECONDS = {f"{s:02}": s for s in range(60)}


def go_times(texts: list[str]) -> tuple[list[int], list[int]] | None:
    """Go's RFC 3339 times (``Z``, 0..9 fraction digits); None: another form, or invalid.
    Each distinct date is parsed once, ``HH:MM`` and ``SS`` are known beforehand."""
    joined = "\n".join(texts) + "\n"
    if not joined.isascii():
        return None
    shape = joined.encode().translate(_DIGITS_AS_0)
    if shape != _NANO_SHAPE * len(texts) and (
        shape.count(b"\n") != len(texts) or not _TIME_SHAPES.issuperset(shape[:-1].split(b"\n"))
    ):
        return None
    try:
        days, minutes, seconds = _DAYS, _MINUTES, _SECONDS
        whole = [days[text[:10]] + minutes[text[11:16]] + seconds[text[17:19]] for text in texts]
    except KeyError:
        return None
    if shape == _NANO_SHAPE * len(texts):
        return whole, list(map(int, map(_NANOSECONDS, texts)))
    scale = _FRACTION_SCALE
    return whole, [int(text[20:-1] or "0") * scale[len(text) - 21] for text in texts]


def clean_name(name: str, limits: Limits, dotdot: bool = False) -> bytes:
    """A tar-style relative name as a clean absolute path (raises ValueError: why not).
    ``dotdot``: a ``..`` part removes the one before, as Go's ``filepath.Clean`` does."""
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogate escapes)") from None
    if raw.find(b"\0") >= 0:
        raise ValueError("must not contain NUL")
    parts = [part for part in raw.split(b"/") if part and part != b"."]
    if b".." in parts:
        if not dotdot:
            raise ValueError("must not contain a '..' component")
        kept: list[bytes] = []
        for part in parts:
            if part != b"..":
                kept.append(part)
            elif not kept:
                raise ValueError("must not climb above the root with '..'")
            else:
                kept.pop()
        parts = kept
    if not parts:
        return ROOT
    path = b"/" + b"/".join(parts)
    if len(path) > limits.max_path_bytes:
        raise ValueError(f"path longer than {limits.max_path_bytes} bytes")
    if max(map(len, parts)) > limits.max_name_bytes:
        raise ValueError(f"has a component longer than {limits.max_name_bytes} bytes")
    return path


# in the \0-framed names: an empty part, a "." or ".." part, a leading "/" (and
# the text any of them needs, searched first: the regex scans slowly)
_ODD_NAME = re.compile(r"\x00(?=[/\x00]|\.\.?[/\x00])|//|/\.\.?(?=[/\x00])")
_ODD_HINTS = ("//", "\0/", "\0\0", "\0.", "/./", "/.\0", "/../", "/..\0")


# containers/storage's dump escapes an xattr's name and value: 4 bytes for "=" and
# each byte that is not graphic ASCII, 2 for a backslash, newline, return, tab;
# mkcomposefs refuses a line whose xattrs take more than 65535 bytes
DUMP_XATTRS_MAX = 0xFFFF
_ESCAPED_4 = bytes(set(range(33)) - set(b"\t\n\r") | set(range(127, 256)) | {ord("=")})
_ESCAPED_2 = b"\\\t\n\r"


def dump_xattrs_bytes(xattrs: tuple[tuple[bytes, bytes], ...]) -> int:
    """The bytes the xattrs take on a dumpfile line containers/storage writes."""
    joined = b"\0".join(part for pair in xattrs for part in pair)
    fours = len(joined) - len(joined.translate(None, _ESCAPED_4))
    twos = len(joined) - len(joined.translate(None, _ESCAPED_2))
    separators = len(xattrs)  # "=" after each name, " " between pairs (one fewer)
    # each joining NUL counted as a 4-byte escape: take them back out
    nuls = max(len(xattrs) * 2 - 1, 0)
    return len(joined) - nuls + 3 * (fours - nuls) + twos + separators + len(xattrs) - 1


def xattr_problem(
    key: str, encoded: object, limits: Limits, go: bool = False
) -> str | tuple[bytes, bytes]:
    """What is wrong with one xattr, or its (name, value) as bytes.  ``go``: the value
    is read as Go's ``base64.StdEncoding`` reads it (newlines and returns skipped)."""
    if not (key.startswith(_XATTR_PREFIXES) or key in _XATTR_EXACT):
        return (
            f"name {show(key)} has no known prefix (user., trusted., "
            "security., system.posix_acl_access/default)"
        )
    try:
        key_bytes = key.encode()
    except UnicodeEncodeError:
        return f"name {show(key)} is not valid Unicode"
    top = limits.max_xattr_name_bytes
    if len(key_bytes) > top or key_bytes.find(b"\0") >= 0 or key in _XATTR_PREFIXES:
        return f"name {show(key)} must be 1..{top} bytes without NUL, with a name after the prefix"
    if encoded.__class__ is not str:
        return f"value of {show(key)} must be a base64 string, got {show(encoded)}"
    if go and (encoded.find("\n") >= 0 or encoded.find("\r") >= 0):
        encoded = encoded.replace("\n", "").replace("\r", "")
    try:
        raw = binascii.a2b_base64(encoded, strict_mode=True)
    except ValueError:
        return f"value of {show(key)} is not strict base64: {show(encoded)}"
    if len(encoded) % 4 or encoded.endswith("==="):
        # padding after a complete quantum ("AAAA=="), which strict mode lets by
        # and Go's decoder (RFC 4648) refuses
        return f"value of {show(key)} is not strict base64: {show(encoded)}"
    if len(raw) > limits.max_xattr_value_bytes:
        return f"value of {show(key)} is longer than {limits.max_xattr_value_bytes} bytes"
    if key_bytes in ACL_XATTR_NAMES and (acl := posix_acl_problem(raw)) is not None:
        return f"value of {show(key)}: {acl}"  # the kernel would refuse to show it
    return key_bytes, raw


def _columns_function() -> Any:
    """:func:`columns_of`, one comprehension per field: attribute loads in a
    comprehension take half the time of ``attrgetter`` maps on structs."""
    body = ", ".join(f"{field!r}: [e.{field} for e in entries]" for field in FIELDS)
    scope: dict[str, Any] = {}
    exec(f"def columns_of(entries):\n    return {{{body}}}", scope)  # our own text
    return scope["columns_of"]


#: Decoded entries as columns, by field: ``columns_of(entries) -> {field: [value, ...]}``.
columns_of = _columns_function()


#: The fields whose value the schema takes only as a JSON string.
_STRING_FIELDS = frozenset(field for field, rule in FIELDS.items() if rule.kind in ("str", "oneof"))


def column_quotes(col: dict[str, list[Any]]) -> int:
    """The quotes of the JSON strings the schema took from the entries of ``col``: two
    for each key, each string value and each xattr's name and value (absent fields
    hold the mark; ``any`` fields count where they hold a string)."""
    n = len(col["type"])
    strings = 2 * sum(len(value) for value in col["xattrs"] if value is not UNSET)
    for field, values in col.items():
        given = n - values.count(MARK[field])
        if field in _STRING_FIELDS:
            given *= 2
        elif given and FIELDS[field].kind == "any":
            given += sum(value.__class__ is str for value in values)
        strings += given
    return 2 * strings


def _rare_name_starts(joined: bytes) -> Iterator[int]:
    """Offsets in the \0-joined paths ``joined`` inside a path that rare_row looks at."""
    for match in _WHITEOUT_PART.finditer(joined):
        yield match.start()
    if joined.find(b"landmark") < 0 and joined.find(STARGZ_INDEX) < 0:
        return
    framed = b"\0" + joined + b"\0"  # an offset in it is the next byte's in joined
    for needle in _RARE_PATHS:
        at = framed.find(needle)
        while at >= 0:
            yield at
            at = framed.find(needle, at + 1)


class Batches:
    """The entries of one TOC, batch by batch, checked and turned into node rows; the
    batch being checked (``first``, ``col``, ``types``, ``names``, ``paths``) is kept here."""

    def __init__(self, limits: Limits, compat: bool, opaque: set[bytes], collect: bool) -> None:
        self.limits, self.compat, self.collect, self.opaque = limits, compat, collect, opaque
        self.whiteouts = not compat
        # compat: the hardlinks by linkName as given, and the names as given that are
        # not their path without the leading "/" (by row): containers/storage's link counts
        self.link_counts: dict[str, int] = {}
        self.odd_names: dict[int, str] = {}
        self.odd_rows: set[int] = set()
        self.opaque_done: set[bytes] = set()
        self.problems: dict[int, tuple[float, ValidationError]] = {}
        self.bookkeeping: dict[bytes, tuple[int, object]] = {}
        if len(_DAYS) > 1 << 16:
            _DAYS.clear()  # the process keeps the dates it saw, up to a bound
        self.chain: list[Any] | None = None  # [entry, name, path, size, covered]
        # the node rows: (path, mode, uid, gid, mtime, nsec, size, data) columns ...
        self.rows: tuple[list[Any], ...] = tuple([] for _ in range(8))
        self.entry: list[int | None] = []
        self.rdev: dict[int, int] = {}
        self.links: dict[int, bytes] = {}
        self.extras: dict[int, Extra] = {}
        self.first = 0
        self.col: dict[str, list[Any]] = {}
        self.types: list[str] = []
        self.names: list[str] = []
        self.paths: list[Any] = []

    def fail(self, index: int, rank: str, name: Any, field: Any, reason: str, at: int = -1) -> None:
        """Record a problem of entry ``index``, found at entry ``at`` (by default the same)."""
        at = index if at < 0 else at
        known = self.problems.get(at)
        if known is None or RANK[rank] < known[0]:
            error = ValidationError(reason, entry=index, path=name, field=field)
            self.problems[at] = (RANK[rank], error)

    def bad(self, row: int, rank: str, field: str, reason: str) -> None:
        """Record a problem of the batch's ``row``."""
        self.fail(self.first + row, rank, self.names[row], field, reason)

    def given(self, field: str) -> Iterator[bool]:
        """Whether each row of the batch gives ``field`` (an absent one holds the mark)."""
        mark = MARK[field]
        return map(ne if mark is NO_INT else is_not, self.col[field], repeat(mark))

    def rows_with(self, field: str) -> Iterator[int]:
        return compress(range(len(self.types)), self.given(field))

    # -- one batch ---------------------------------------------------------------

    def batch(self, entries: list[Any], first: int) -> int:
        """Check ``entries`` (from entry ``first`` on) and add their rows; return the
        quotes of the strings the schema took from them (:func:`column_quotes`)."""
        n = len(entries)
        self.col = col = columns_of(entries)
        del entries
        self.first, self.types, self.names = first, col["type"], col["name"]
        quotes = column_quotes(col)
        types, bad = self.types, self.bad
        self.paths = self.clean_paths()
        is_chunk = list(map("chunk".__eq__, types))
        other = list(map(and_, map("reg".__ne__, types), map(not_, is_chunk)))  # no data
        modes = col["mode"]
        node_modes: dict[tuple[str, int], int] = {}  # (type, mode) -> the node's mode
        for kind, mode in set(zip(types, modes, strict=True)):
            node_modes[kind, mode] = TYPE_BITS[kind] | (mode & 0o7777 if mode > 0 else 0)
            if mode > 0o7777 and mode & S_IFMT != TYPE_BITS[kind]:
                reason = f"file type bits 0o{mode & S_IFMT:o} do not match type {kind}"
                for row, pair in enumerate(zip(types, modes, strict=True)):
                    if pair == (kind, mode):
                        bad(row, "MODE", "mode", reason)
        sizes = col["size"]
        sized = list(map(lt, repeat(0), sizes))
        if self.compat and any(compress(sized, other)):
            # containers/storage's size on another kind changes nothing: dropped
            drop = list(map(and_, sized, other))
            sizes = [NO_INT if no else size for size, no in zip(sizes, drop, strict=True)]
            col["size"] = sizes
            sized = list(map(lt, repeat(0), sizes))
        for row in compress(range(n), map(and_, sized, other)):
            bad(row, "SIZE", "size", f"only regular files have a size, not a {types[row]}")
        mtimes = self.times()
        majors, minors = col["devMajor"], col["devMinor"]
        devices = compress(range(n), map(or_, self.given("devMajor"), self.given("devMinor")))
        rdevs = {row: self.device(row, majors[row], minors[row]) for row in devices}
        if self.compat and rdevs:  # elsewhere the numbers change nothing
            rdevs = {row: rdev for row, rdev in rdevs.items() if types[row] in ("char", "block")}
        xattrs = col["xattrs"]
        pairs = {row: self.xattr_pairs(row, xattrs[row]) for row in self.rows_with("xattrs")}
        digests = col["digest"]
        has_digest = list(self.given("digest"))
        if (
            not all_digests(digests)
            or any(compress(has_digest, other))
            or sum(compress(has_digest, sized)) != sum(sized)
            or not {UNSET, EMPTY_SHA256}.issuperset(compress(digests, map(not_, sized)))
        ):
            for row in range(n):
                self.digest(row, types[row], sizes[row], digests[row])
        offsets, ends = col["offset"], col["endOffset"]
        for row in compress(range(n), map(lt, ends, offsets)):
            if ends[row] != NO_INT:
                bad(row, "OFFSETS", "endOffset", f"{ends[row]} is before offset {offsets[row]}")
        self.chunk_fields()
        links = self.link_names()
        csizes = col["chunkSize"]
        for row in compress(range(n), map(lt, sizes, csizes)):
            if types[row] == "reg":
                reason = f"{csizes[row]} is larger than the file ({max(sizes[row], 0)} bytes)"
                bad(row, "CHUNK_SIZE", "chunkSize", reason)
        dead = [False] * n  # the rows with a problem (none, most often)
        if self.problems:
            dead = list(map(self.problems.__contains__, range(first, first + n)))
        self.chains(dead)
        modes = list(map(node_modes.__getitem__, zip(types, modes, strict=True)))
        self.add_rows(modes, mtimes, links, pairs, rdevs, is_chunk, dead)
        return quotes

    def clean_paths(self) -> list[bytes | None]:
        """The clean paths of the names (None: refused); the odd names (``.`` or empty
        parts, a leading ``/``, NUL, long parts) go through :func:`clean_name`."""
        names, limits = self.names, self.limits
        n = len(names)
        framed = "\0" + "\0".join(names) + "\0"
        odd: set[int] = set()
        paths: list[Any] = [None] * n
        try:
            joined = framed.replace("/\0", "\0").encode()
        except UnicodeEncodeError:
            joined = b""  # a lone surrogate: every name is odd
        if not joined or framed.count("\0") != n + 1:
            odd.update(range(n))
        else:
            paths = joined.replace(b"\0", b"\0/")[1:-2].split(b"\0")
            short = min(limits.max_name_bytes + 1, limits.max_path_bytes)
            if max(map(len, paths)) > short:
                odd.update(row for row, path in enumerate(paths) if len(path) > short)
            found = []
            if any(map(framed.__contains__, _ODD_HINTS)):
                found = [match.start() for match in _ODD_NAME.finditer(framed)]
            if found:
                starts = list(accumulate([len(name) + 1 for name in names], initial=0))
                odd.update(bisect_right(starts, at) - 1 for at in found)
        odd.discard(n)
        if self.compat:  # and a trailing "/" (not in the path), but on a directory
            slashed = map(str.endswith, names, repeat("/"))
            self.odd_rows = odd.union(
                compress(range(n), map(and_, slashed, map("dir".__ne__, self.types)))
            )
        for row in sorted(odd):
            try:
                paths[row] = clean_name(names[row], limits, self.compat)
            except ValueError as err:
                paths[row] = None
                self.bad(row, "name", "name", str(err))
        return paths

    def times(self) -> tuple[list[int], list[int]]:
        """Seconds and nanoseconds of each modtime (absent: 0); every time given must be valid."""
        col = self.col
        modtimes = col["modtime"]
        texts = [text if text is not UNSET else "1970-01-01T00:00:00Z" for text in modtimes]
        parsed = go_times(texts)
        if parsed is None:
            found = [parse_time(text, self.compat) for text in texts]
            for row in compress(range(len(found)), map(is_, found, repeat(None))):
                self.bad(row, "TIME", "modtime", wrong("modtime", texts[row]))
            times = [time or (0, 0) for time in found]
            parsed = (list(map(itemgetter(0), times)), list(map(itemgetter(1), times)))
        seen = set(modtimes)
        for field in ("accesstime", "changetime"):
            other = col[field]
            extra = list(set(other).difference(seen) - {UNSET}) if other != modtimes else []
            if extra and go_times(extra) is None:
                refused = {text for text in extra if parse_time(text, self.compat) is None}
                for row in compress(range(len(other)), map(refused.__contains__, other)):
                    self.bad(row, "TIME", field, wrong(field, other[row]))
        return parsed

    def device(self, row: int, major: int, minor: int) -> int:
        major, minor, typ = max(major, 0), max(minor, 0), self.types[row]
        if (major or minor) and typ != "char" and typ != "block" and not self.compat:
            reason = f"only char and block devices have device numbers, not a {typ}"
            self.bad(row, "DEVICE", "devMajor" if major else "devMinor", reason)
        return os.makedev(major, minor)

    def xattr_pairs(self, row: int, xattrs: dict[str, Any]) -> tuple[tuple[bytes, bytes], ...]:
        """The xattrs of an entry, decoded and sorted (a problem is recorded, and none kept)."""
        limits = self.limits
        pairs: list[Any] = [
            xattr_problem(key, value, limits, self.compat) for key, value in xattrs.items()
        ]
        problem = next((pair for pair in pairs if pair.__class__ is str), None)
        result: tuple[tuple[bytes, bytes], ...] = () if problem else tuple(sorted(pairs))
        bound = 4 * sum(len(name) + len(data) for name, data in result) + 2 * len(result)
        if self.compat and bound > DUMP_XATTRS_MAX:
            shown = dump_xattrs_bytes(result)
            if shown > DUMP_XATTRS_MAX:
                problem = (
                    f"take {shown} bytes of a dumpfile line, more than "
                    f"the {DUMP_XATTRS_MAX} mkcomposefs reads from containers/storage's dump"
                )
        space = Limits.xattr_space(result)
        if not problem and space > limits.max_xattr_space:
            problem = f"take {space} bytes of inode xattr space, more than {limits.max_xattr_space}"
        if problem:
            self.bad(row, "XATTRS", "xattrs", problem)
            return ()
        return result

    def digest(self, row: int, typ: str, size: int, digest: Any) -> None:
        reason = None
        if self.compat and digest is not UNSET and typ != "reg" and typ != "chunk":
            # containers/storage reads a link's target instead, and parses the digest of
            # the other kinds; either way it names no payload
            if typ != "symlink" and typ != "hardlink" and not is_digest(digest):
                reason = wrong("digest", digest)
        elif digest is UNSET:
            if size > 0 and typ != "chunk":
                reason = "required for a regular file with data"
        elif not is_digest(digest):
            reason = wrong("digest", digest)
        elif typ != "reg" and typ != "chunk":
            reason = f"only regular files have one, not a {typ}"
        elif size <= 0 and typ == "reg" and digest != EMPTY_SHA256 and not self.compat:
            reason = "an empty file's digest must be the sha256 of nothing"
        if reason is not None:
            self.bad(row, "DIGEST", "digest", reason)

    def chunk_fields(self) -> None:
        col, types = self.col, self.types
        size, offset, digest, kind = map(
            self.given, ("chunkSize", "chunkOffset", "chunkDigest", "chunkType")
        )
        rows = list(
            compress(range(len(types)), map(or_, map(or_, size, offset), map(or_, digest, kind)))
        )
        for row in rows:
            typ, offset = types[row], col["chunkOffset"][row]
            if typ != "reg" and typ != "chunk":
                reason = f"only regular files and chunks have chunk fields, not a {typ}"
                self.bad(row, "CHUNK_FIELDS", "chunkSize", reason)
            elif typ == "reg" and offset > 0:
                reason = f"a regular file holds its first chunk, at 0, got {offset}"
                self.bad(row, "CHUNK_FIELDS", "chunkOffset", reason)
        digests = col["chunkDigest"]
        if rows and not all_digests(digests):
            for row, digest in enumerate(digests):
                if digest is not UNSET and not is_digest(digest):
                    self.bad(row, "CHUNK_FIELDS", "chunkDigest", wrong("digest", digest))

    def link_names(self) -> dict[int, bytes]:
        """Symlink targets and hardlink targets (row -> clean path); theirs is the only linkName."""
        types, link_names, limits = self.types, self.col["linkName"], self.limits
        kinds = map(or_, map("symlink".__eq__, types), map("hardlink".__eq__, types))
        links: dict[int, bytes] = {}
        for row in compress(range(len(types)), map(or_, self.given("linkName"), kinds)):
            typ, link = types[row], link_names[row]
            link = "" if link is UNSET else link
            reason = None
            if typ == "symlink":
                try:
                    target = link.encode()
                except UnicodeEncodeError:
                    target = b""
                if not link:
                    reason = "a symlink needs a target"
                elif not target:
                    reason = "must be valid Unicode"
                elif len(target) > limits.max_symlink_bytes or target.find(b"\0") >= 0:
                    reason = f"must be 1..{limits.max_symlink_bytes} bytes without NUL"
                else:
                    links[row] = target
            elif typ == "hardlink":
                if not link:
                    reason = "a hardlink needs the name of its target"
                else:
                    if self.compat:
                        self.link_counts[link] = self.link_counts.get(link, 0) + 1
                    try:
                        links[row] = clean_name(link, limits, self.compat)
                    except ValueError as err:
                        reason = str(err)
                    else:
                        if links[row] == self.paths[row]:
                            reason = "a hardlink cannot link to itself"
            elif link and (typ != "chunk" or self.compat):
                reason = f"only symlinks and hardlinks have one, not a {typ}"
            if reason is not None:
                self.bad(row, "LINK", "linkName", reason)
        return links

    # -- chunk chains ---------------------------------------------------------------

    def chains(self, dead: list[bool]) -> None:
        """Each chunk continues the regular file before it, and the chunks cover it
        (the open chain carried from the batch before), walked row by row."""
        col, paths = self.col, self.paths
        sizes, csizes, coffs = col["size"], col["chunkSize"], col["chunkOffset"]
        if self.chain is None and "chunk" not in self.types and csizes.count(NO_INT) == len(csizes):
            return  # no chain here
        first = self.first
        for row, typ in enumerate(self.types):
            if typ != "chunk":
                # (a problem in the chain it ends ends this entry, as a walk would)
                if self.chain is not None and not self.close_chain(first + row):
                    continue
                if typ == "reg" and csizes[row] != NO_INT and not dead[row]:
                    self.chain = [first + row, self.names[row], paths[row], sizes[row], csizes[row]]
                continue
            chain = self.chain
            if paths[row] is None:
                continue
            if chain is None or chain[2] != paths[row]:
                self.bad(row, "FOLLOW", "name", _NOT_FOLLOWING)
                continue
            if dead[row]:
                continue
            offset, size, covered, length = max(coffs[row], 0), chain[3], chain[4], csizes[row]
            field, reason = "chunkOffset", None
            if covered is None:
                reason = "the previous piece of this file already ran to its end"
            elif offset != covered:
                reason = f"must be {covered} (where the previous piece ends), got {offset}"
            elif offset >= size:
                reason = f"{offset} is not inside the file ({size} bytes)"
            elif length == NO_INT:
                chain[4] = None
            elif offset + length > size:
                field = "chunkSize"
                reason = f"chunk {offset}..{offset + length} overruns the file ({size} bytes)"
            else:
                chain[4] = offset + length
            if reason is not None:
                self.bad(row, "CHAIN", field, reason)

    def close_chain(self, at: int) -> bool:
        """The chunks of the last regular file ended at entry ``at``: they must cover it."""
        chain, self.chain = self.chain, None
        if chain is not None and chain[4] is not None and chain[4] != chain[3]:
            reason = f"chunks cover {chain[4]} of the file's {chain[3]} bytes"
            self.fail(chain[0], "CLOSE", chain[1], "chunkSize", reason, at)
            return False
        return True

    # -- node rows ---------------------------------------------------------------------

    def add_rows(
        self,
        modes: list[int],
        mtimes: tuple[list[int], list[int]],
        links: dict[int, bytes],
        pairs: dict[int, Any],
        rdevs: dict[int, int],
        is_chunk: list[bool],
        dead: list[bool],
    ) -> None:
        col, types, paths = self.col, self.types, self.paths
        n = len(types)
        keep = list(map(not_, map(or_, is_chunk, dead)))
        uids, gids, sizes = (
            list(map(max, values, repeat(0))) if NO_INT in values else values
            for values in (col["uid"], col["gid"], col["size"])
        )
        seconds, nsecs = mtimes
        data: list[bytes | None] = [None] * n
        # a regular file with data (kept) -> its payload name, "ab/cdef..."
        with_data = list(map(and_, map(and_, map("reg".__eq__, types), map(bool, sizes)), keep))
        if any(with_data):
            digests = compress(col["digest"], with_data)
            pieces = iter([f"{digest[7:9]}/{digest[9:]}".encode() for digest in digests])
            for row in compress(range(n), with_data):
                data[row] = next(pieces)
        rare: dict[int, Any] = dict.fromkeys(pairs)
        rare.update(dict.fromkeys(rdevs))
        for row, target in links.items():
            if types[row] == "symlink":
                data[row] = target
            else:
                rare[row] = None
        joined = b"\0".join([path or b"" for path in paths])
        if (
            joined.find(b"/.wh.") >= 0
            or joined.find(b"landmark") >= 0
            or (joined.find(STARGZ_INDEX) >= 0 or self.opaque)
        ):
            starts = list(accumulate([len(path or b"") + 1 for path in paths], initial=0))
            for offset in _rare_name_starts(joined):
                rare[bisect_right(starts, offset) - 1] = None
            if self.opaque:
                rare.update(dict.fromkeys(compress(range(n), map(self.opaque.__contains__, paths))))
        columns: tuple[list[Any], ...] = (paths, modes, uids, gids, seconds, nsecs, sizes, data)
        found: dict[int, tuple[int | None, Any]] = {}
        for row in sorted(rare):
            if not keep[row]:
                continue
            values = [column[row] for column in columns]
            extra = self.rare_row(row, values, links.get(row), pairs.get(row, ()), rdevs.get(row))
            if extra is None:
                keep[row] = False
                continue
            for column, value in zip(columns, values, strict=True):
                column[row] = value
            found[row] = extra
        base = len(self.entry)
        entries: list[int | None] = list(range(self.first, self.first + n))
        if not all(keep):
            columns = tuple(list(compress(column, keep)) for column in columns)
            entries = list(compress(entries, keep))
        for column, kept in zip(self.rows, columns, strict=True):
            column += kept
        self.entry += entries
        if self.odd_rows or found:
            at = list(accumulate(keep, initial=base - 1))  # at[row + 1]: a kept row's place
            self.odd_names.update(
                (at[row + 1], self.names[row]) for row in self.odd_rows if keep[row]
            )
            for row, (rdev, more) in found.items():
                if rdev is not None:
                    self.rdev[at[row + 1]] = rdev
                if more.__class__ is bytes:
                    self.links[at[row + 1]] = more
                elif more:
                    self.extras[at[row + 1]] = (None, None, more)

    def rare_row(
        self,
        row: int,
        values: list[Any],
        link: bytes | None,
        xattrs: tuple[tuple[bytes, bytes], ...],
        rdev: int | None,
    ) -> tuple[int | None, Any] | None:
        """A rare row's node: (rdev or None, xattrs or a hardlink's target); None: no node.
        ``values`` are the row's node columns, changed in place.  ``.wh.NAME``: a char
        0/0 (mode 0, its owner and time); ``.wh..wh.*`` but the opaque marker: skipped."""
        typ, path, rdev = self.types[row], values[0], rdev or None
        uid, gid, mtime, nsec = values[2:6]
        if (
            self.whiteouts
            and typ == "reg"
            and ((values[6] == 1 and path in LANDMARKS) or path == STARGZ_INDEX)
        ):
            self.same_as_before(row, (typ, *values[1:], xattrs))
            return None
        if typ == "dir" and path in self.opaque:
            xattrs = tuple(sorted(dict((*xattrs, OPAQUE_XATTR)).items()))
            self.opaque_done.add(path)
        more: Any = xattrs
        if typ == "hardlink":
            more = link
            values[1:8] = [S_IFREG, 0, 0, 0, 0, 0, None]
        if not self.whiteouts or path.find(b"/.wh.") < 0:
            return rdev, more
        cut = path.rfind(b"/")
        base, parent = path[cut + 1 :], path[:cut] or ROOT
        if base.startswith(WH):
            seen = (typ, self.col["mode"][row], uid, gid, mtime, nsec, *values[6:8], more, rdev)
            if not self.same_as_before(row, seen):
                return None
        if base.startswith(WH_META) and base != WH_OPAQUE:
            return None  # aufs metadata, which containers/storage skips too
        for part in parent.split(b"/"):
            if part.startswith(WH_META):
                return None  # inside aufs metadata
            if part.startswith(WH):
                self.bad(row, "WHITEOUT", "name", "a whiteout cannot hold entries")
                return None
        if not base.startswith(WH):
            return rdev, more
        hidden = base[len(WH) :]
        if typ == "dir":
            self.bad(row, "WHITEOUT", "type", "a whiteout must not be a directory")
        elif base != WH_OPAQUE and hidden in (b"", b".", b".."):
            self.bad(row, "WHITEOUT", "name", "a whiteout must name a file after .wh.")
        elif base != WH_OPAQUE and parent not in self.opaque:
            # (an opaque directory already hides everything below it)
            target = (parent if parent != ROOT else b"") + b"/" + hidden
            values[:8] = [target, S_IFCHR, uid, gid, mtime, nsec, 0, None]
            return None, ()
        return None  # an opaque marker is applied to the directory itself

    def podman_nlinks(self, first: dict[bytes, int]) -> list[int] | None:
        """GenerateDump's link counts (None: the same as ``count_hardlinks``'): one more per
        hardlink whose ``linkName`` spells an entry's ``name`` (or a symlink's target)."""
        counts = self.link_counts
        if not counts:
            return None
        paths, modes, data = self.rows[0], self.rows[1], self.rows[7]
        extra: dict[bytes, int] = {}  # path -> the links GenerateDump gives it beyond 1
        same = len(first) == len(paths) + 1  # (+1: the root's key "")
        for key, count in counts.items():
            try:
                path = clean_name(key, self.limits, True)
            except ValueError:  # pragma: no cover - refused with its entry
                continue
            row = first.get(path)
            if row is None:
                continue  # no target: the tree says so
            if self.odd_names.get(row, paths[row][1:].decode()) == key:
                extra[path] = extra.get(path, 0) + count
                same = same and row not in self.links
            else:
                same = False
        targets = {key.encode() for key in counts}
        for row in compress(range(len(data)), map(targets.__contains__, data)):
            if modes[row] & S_IFMT == S_IFLNK:
                extra[paths[row]] = extra.get(paths[row], 0) + counts[data[row].decode()]
                same = False
        if same:
            return None
        nlink = [1] * len(paths)
        for row in compress(range(len(paths)), map(extra.__contains__, paths)):
            nlink[row] += extra[paths[row]]
        return nlink

    def same_as_before(self, row: int, seen: object) -> bool:
        """An entry that makes no node at its own path: a repeat of it must agree."""
        index = self.first + row
        known = self.bookkeeping.setdefault(self.paths[row], (index, seen))
        if known[1] != seen:
            self.bad(
                row, "WHITEOUT", "name", f"path repeats entry {known[0]} with different attributes"
            )
            return False
        return True
