"""The TOC's JSON level and its per-field rules, declared once and worded here.

:data:`FIELDS` holds each entry field's JSON type and range: :func:`entry_decoder`
makes it a msgspec typed schema, :func:`field_problem` words a refusal.  An absent
field decodes to ``-1`` (integers: every range excludes it) or ``UNSET``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from ..errors import ValidationError, read_source
from ..limits import Limits

TocSource = bytes | bytearray | memoryview | str | os.PathLike[str] | os.PathLike[bytes]

TYPES = ("reg", "dir", "symlink", "hardlink", "char", "block", "fifo", "chunk")
ID_MAX = (1 << 32) - 2  # (uid_t)-1 means "no id"
I63_MAX = (1 << 63) - 1
# EROFS keeps a 32-bit rdev: the kernel's 12-bit major and 20-bit minor.
MAJOR_MAX = (1 << 12) - 1
MINOR_MAX = (1 << 20) - 1
NO_INT = -1


@dataclass(frozen=True, slots=True)
class Rule:
    """One field's JSON type and range: ``kind`` int, str, oneof, xattrs or any."""

    kind: str
    low: int = 0
    high: int | str = 0  # a str names the Limits field that holds it
    what: str = "must be a string"  # a str field's message for a wrong type
    choices: tuple[str, ...] = ()

    def top(self, limits: Limits) -> int:
        return self.high if isinstance(self.high, int) else int(getattr(limits, self.high))


_ID = Rule("int", 0, ID_MAX)
_I63 = Rule("int", 0, I63_MAX)
_TIME = Rule("str", what="must be an RFC 3339 date-time string")
_DIGEST = Rule("str", what="must be sha256: and 64 lowercase hex digits")
#: Every known entry field and its rule, in the order an entry's problems are told.
FIELDS: dict[str, Rule] = {
    "name": Rule("str"),
    "type": Rule("oneof", choices=TYPES),
    "mode": Rule("int", 0, 0o177777),
    "uid": _ID,
    "gid": _ID,
    "size": Rule("int", 0, "max_file_size"),
    "modtime": _TIME,
    "accesstime": _TIME,
    "changetime": _TIME,
    "devMajor": Rule("int", 0, MAJOR_MAX),
    "devMinor": Rule("int", 0, MINOR_MAX),
    "xattrs": Rule("xattrs"),
    "digest": _DIGEST,
    "offset": _I63,
    "endOffset": _I63,
    "innerOffset": _I63,
    "chunkSize": Rule("int", 1, I63_MAX),
    "chunkOffset": _I63,
    "chunkDigest": _DIGEST,
    "chunkType": Rule("oneof", choices=("", "zeros")),
    "linkName": Rule("str"),
    # eStargz's: declared, so they count as known keys; any value is taken
    "userName": Rule("any"),
    "groupName": Rule("any"),
}

#: What an absent field decodes to.
MARK = {field: NO_INT if rule.kind == "int" else UNSET for field, rule in FIELDS.items()}


def show(value: object) -> str:
    """``value`` as JSON-ish text for a message, cut to a sane length."""
    import json  # (error paths only: not loaded by a valid TOC)

    if value is True or value is False or value is None:
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 80 else value[:80] + "...")
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 256 else "a huge integer"
    if isinstance(value, float):
        return repr(value)
    return "an object" if isinstance(value, dict) else "an array"


def wrong(field: str, value: object) -> str:
    """``value`` refused by the type of the str ``field``."""
    return f"{FIELDS[field].what}, got {show(value)}"


def field_problem(field: str, value: object, limits: Limits) -> str | None:
    """What is wrong with ``value`` by ``field``'s rule (None: its JSON type and range are fine)."""
    rule = FIELDS[field]
    if value is None and rule.kind != "any" and field != "name" and field != "type":
        return "must not be null"
    if rule.kind == "int":
        top = rule.top(limits)
        if value.__class__ is not int or not rule.low <= value <= top:
            return f"must be an integer in {rule.low}..{top}, got {show(value)}"
    elif rule.kind == "str":
        if value.__class__ is not str:
            return wrong(field, value)
    elif rule.kind == "oneof":
        if value.__class__ is not str or value not in rule.choices:
            if field == "chunkType":
                return f'must be "" or "zeros", got {show(value)}'
            return f"must be one of {', '.join(rule.choices)}, got {show(value)}"
    elif rule.kind == "xattrs" and value.__class__ is not dict:
        return f"must be an object of name -> base64 value, got {show(value)}"
    return None


def _annotation(rule: Rule, limits: Limits) -> Any:
    if rule.kind == "int":
        return Annotated[int, msgspec.Meta(ge=rule.low, le=rule.top(limits))]
    if rule.kind == "oneof":
        return Literal[rule.choices] | UnsetType
    if rule.kind == "xattrs":
        return dict[str, str] | UnsetType
    if rule.kind == "any":
        return Any
    return str | UnsetType


@cache
def entry_decoder(max_file_size: int) -> tuple[msgspec.json.Decoder[list[Any]], type]:
    """The decoder of a batch of entries and its entry type, made once per ``max_file_size``."""
    limits = Limits(max_file_size=max_file_size)
    fields: list[tuple[str, Any, Any]] = [
        ("type", Literal[TYPES], msgspec.NODEFAULT),
        ("name", str, msgspec.NODEFAULT),
    ]
    for field, rule in FIELDS.items():
        if field not in ("type", "name"):
            fields.append((field, _annotation(rule, limits), MARK[field]))
    entry = msgspec.defstruct("Entry", fields, gc=False)
    return msgspec.json.Decoder(list[entry]), entry  # type: ignore[valid-type]


class _Document(msgspec.Struct, gc=False):
    """The top level; each entry stays raw JSON (a view of the input) until its batch."""

    version: Any = UNSET
    entries: list[msgspec.Raw] | UnsetType = UNSET
    tarSplitDigest: Any = UNSET


@cache
def document_decoder() -> msgspec.json.Decoder[_Document]:
    return msgspec.json.Decoder(_Document)


class _Named(msgspec.Struct, gc=False):
    """An entry's name alone (its other keys skipped, whatever they hold)."""

    name: Any = None


@cache
def name_decoder() -> msgspec.json.Decoder[_Named]:
    return msgspec.json.Decoder(_Named)


# -- JSON strictness ------------------------------------------------------------------


def read_input(data: TocSource, limits: Limits) -> bytes:
    raw = read_source(data, limits.max_input_bytes, "TOC", wrap_os_errors=True)
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValidationError(f"the TOC is not valid UTF-8 (byte {err.start})") from None
    depth = nesting_depth(raw, limits.max_json_depth)
    if depth > limits.max_json_depth:
        raise ValidationError(f"JSON nesting is deeper than {limits.max_json_depth} levels")
    return raw


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')


def nesting_depth(raw: bytes, limit: int) -> int:
    """The JSON nesting depth of ``raw`` (``limit + 1``: deeper), at C speed: escapes,
    every byte but ``"[]{}`` and strings go; each round removes the innermost pairs."""
    if raw.find(b"\\") >= 0:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    shape = raw.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if shape.find(b'"') >= 0:
        shape = b"".join(shape.split(b'"')[::2])
    depth = 0
    while shape and depth <= limit:
        smaller = shape.replace(b"{}", b"").replace(b"[]", b"")
        if len(smaller) == len(shape):
            break  # unbalanced: the decoder says where
        depth += 1
        shape = smaller
    return depth


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {show(key)} in an object")
            seen.add(key)
    return result


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in a TOC")


def strict_json(raw: bytes | str) -> Any:
    """``raw`` decoded by the json module, refusing duplicate keys and NaN/Infinity (only
    where the typed decoder cannot tell: unknown keys, the wording of a refusal)."""
    import json

    decoder = json.JSONDecoder(
        object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant
    )
    try:
        return decoder.decode(raw.decode() if isinstance(raw, bytes) else raw)
    except RecursionError:
        raise ValidationError("JSON nesting is too deep") from None
    except ValueError as err:  # duplicate keys, NaN/Infinity, huge integers
        raise ValidationError(f"not valid JSON: {err}") from None


def string_quotes(raw: bytes) -> int:
    """The quotes that open and close the strings (keys among them) of the valid JSON
    ``raw``: with escaped backslashes gone, every ``"`` but an escaped ``\\"``."""
    quotes = raw.count(b'"')
    if raw.find(b"\\") >= 0:
        quotes -= raw.replace(b"\\\\", b"").count(b'\\"')
    return quotes


def document_problems(version: object, split: object, entries: object) -> list[ValidationError]:
    """The top level's problems (entries not an array comes last: nothing follows it)."""
    from ._rules import is_digest

    found = []
    if version.__class__ is not int or version != 1:
        shown = show(None if version is UNSET else version)
        found.append(ValidationError(f"must be 1, got {shown}", field="version"))
    if split is not UNSET and not is_digest(split):
        found.append(ValidationError(wrong("digest", split), field="tarSplitDigest"))
    if entries.__class__ is not list:
        shown = show(None if entries is UNSET else entries)
        found.append(ValidationError(f"must be an array, got {shown}", field="entries"))
    return found
