# ruff: noqa: E501, RUF001
"""The TOC rules as one table: a mutation, and what parse_toc says of it.

Each row changes one field of a small TOC that holds every kind of entry
(or edits a real zstd:chunked TOC) and names the outcome: None (accepted)
or the exact message, with its entry and field.  The same message must come
first with ``collect=True``, and an accepted TOC must give the same Tree
either way.  A pair is (default, ``compat="containers-storage"``), where
whiteouts make the difference.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from composefs_py import ValidationError
from composefs_py.strategies import real_toc_paths
from composefs_py.toc import parse_toc

COMPATS = [None, "containers-storage"]
DIGEST = "sha256:" + hashlib.sha256(b"hello").hexdigest()
OTHER_DIGEST = "sha256:" + hashlib.sha256(b"ping").hexdigest()
EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()
T1 = "2021-04-10T05:54:23.611178002Z"
T2 = "2023-06-19T13:16:46Z"
T3 = "2020-02-29T23:59:59.5Z"
CAPABILITY = base64.b64encode(bytes.fromhex("0100000220000000000000000000000000000000")).decode()
ID_MAX = (1 << 32) - 2
I63_MAX = (1 << 63) - 1
DELETE = object()


def document(entries: list[dict[str, Any]], **top: Any) -> bytes:
    return json.dumps({"version": 1, "entries": entries, **top}, separators=(",", ":")).encode()


def plain_entries() -> list[dict[str, Any]]:
    """A small TOC of every kind the bulk path takes, with Go's field habits."""
    times = {"modtime": T1, "accesstime": T1, "changetime": T1}
    return [
        {"type": "dir", "name": "etc/", "mode": 0o755, **times},
        {"type": "reg", "name": "etc/passwd", "mode": 0o644, "size": 5, "uid": 1, "gid": 2,
         "modtime": T2, "accesstime": T3, "changetime": T2, "digest": DIGEST,
         "offset": 10, "endOffset": 30},
        {"type": "reg", "name": "etc/empty", "mode": 0o600, "digest": EMPTY_DIGEST, **times},
        {"type": "symlink", "name": "etc/link", "linkName": "passwd", "mode": 0o777, **times},
        {"type": "hardlink", "name": "etc/hard", "linkName": "etc/passwd", "mode": 0o644, **times},
        {"type": "reg", "name": "usr/bin/ping", "mode": 0o755, "size": 4, "digest": OTHER_DIGEST,
         "xattrs": {"security.capability": CAPABILITY, "user.a": ""}, "offset": 30, **times},
        {"type": "dir", "name": "usr/", "mode": 0o700, "uid": 3, "modtime": T3},
    ]  # fmt: skip


Entries = list[dict[str, Any]]


def _chain(entries: Entries) -> list[int]:
    """The rows of the first regular file in chunks: the file's, then its chunks'."""
    head = next(
        row
        for row, entry in enumerate(entries)
        if entry["type"] == "reg" and 0 < entry.get("chunkSize", 0) < entry.get("size", 0)
    )
    rows = [head]
    while entries[rows[-1] + 1]["type"] == "chunk":
        rows.append(rows[-1] + 1)
    return rows


def _named(entries: Entries, kind: str) -> dict[str, Any]:
    return next(entry for entry in entries if entry["type"] == kind)


def _set(row: Callable[[Entries], dict[str, Any]], **fields: object) -> Callable[[Entries], None]:
    def edit(entries: Entries) -> None:
        entry = row(entries)
        for field, value in fields.items():
            if value is DELETE:
                del entry[field]
            else:
                entry[field] = value

    return edit


def _head(entries: Entries) -> dict[str, Any]:
    return entries[_chain(entries)[0]]


def _first_chunk(entries: Entries) -> dict[str, Any]:
    return entries[_chain(entries)[1]]


def _last_chunk(entries: Entries) -> dict[str, Any]:
    return entries[_chain(entries)[-1]]


def _unchunked(entries: Entries) -> None:
    rows = _chain(entries)
    del entries[rows[1] : rows[-1] + 1]
    entries[rows[0]].pop("chunkSize")


def _one_chunk_less(entries: Entries) -> None:
    rows = _chain(entries)
    del entries[rows[-1]]
    entries[rows[-2]].pop("chunkSize", None)  # now the last: it runs to the end


def _drop(pick: Callable[[Entries], int]) -> Callable[[Entries], None]:
    return lambda entries: entries.__delitem__(pick(entries))


def _add(entry: dict[str, Any], at: int | None = None) -> Callable[[Entries], None]:
    def edit(entries: Entries) -> None:
        entries.insert(len(entries) if at is None else at, copy.deepcopy(entry))

    return edit


def _moved_chunk(entries: Entries) -> None:
    rows = _chain(entries)
    entries.insert(rows[-1] + 1, entries.pop(rows[1]))


def _add_between_chunks(entries: Entries) -> None:
    entries.insert(_chain(entries)[1], {"type": "dir", "name": "opt"})


def _dot_slash_opaque_dir(entries: Entries) -> None:
    marker = next(entry for entry in entries if entry["name"].endswith("/.wh..wh..opq"))
    directory = marker["name"].removesuffix(".wh..wh..opq")
    next(entry for entry in entries if entry["name"] == directory)["name"] = "./" + directory


def _repeat(kind: str, **fields: object) -> Callable[[Entries], None]:
    return lambda entries: entries.append({**_named(entries, kind), **fields})


CHUNKED = {"type": "reg", "name": "opt/whole", "size": 5, "digest": DIGEST, "chunkSize": 5,
           "chunkDigest": DIGEST}  # fmt: skip
REAL_EDITS: list[tuple[str, Callable[[Entries], None], object]] = [
    # valid: the bulk path takes them
    ("no chunks", _unchunked, True),
    ("one chunk less", _one_chunk_less, True),
    ("zeros", _set(_first_chunk, chunkType="zeros"), True),
    ("no chunkDigest", _set(_head, chunkDigest=DELETE), True),
    ("whole-file chunkSize", _add(CHUNKED), True),
    ("whole-file chunkSize first", _add(CHUNKED, 0), True),
    ("chunkOffset 0", _set(_head, chunkOffset=0), True),
    (
        "other device",
        _set(lambda e: _named(e, "char"), devMajor=4095, devMinor=(1 << 20) - 1),
        True,
    ),
    ("device 0", _set(lambda e: _named(e, "block"), devMajor=0, devMinor=0), True),
    ("repeated device", _repeat("char"), True),
    ("repeated fifo", _repeat("fifo"), True),
    ("devMajor 0 on a file", _set(lambda e: _named(e, "reg"), devMajor=0), True),
    ("opaque first", _add({"type": "reg", "name": "usr/.wh..wh..opq"}, 0), True),
    ("whiteout in an opaque dir", _add({"type": "reg", "name": "var/cache/apt/.wh.x"}), True),
    ("aufs metadata", _add({"type": "reg", "name": ".wh..wh.plnk/1"}), True),
    ("opaque dir made", _add({"type": "reg", "name": "new/.wh..wh..opq"}), True),
    ("name to clean", _add({"type": "dir", "name": "./opt//x/", "mode": 0o700}), True),
    ("opaque dir named ./", _dot_slash_opaque_dir, True),
    ("hardlink to a device", _add({"type": "hardlink", "name": "l", "linkName": "dev/null"}), True),
    (
        "hardlink the walker takes",
        _add({"type": "hardlink", "name": "l", "linkName": "dev/null", "devMajor": 0}),
        True,
    ),
    # the bulk path may step aside
    ('chunkType ""', _set(_first_chunk, chunkType=""), None),
    # invalid: the walker says what is wrong
    (
        "chunkSize + 1",
        lambda entries: _head(entries).update(chunkSize=_head(entries)["chunkSize"] + 1),
        False,
    ),
    ("chunk offset off", _set(_first_chunk, chunkOffset=1), False),
    ("chunk lost", _drop(lambda e: _chain(e)[1]), False),
    ("last chunk lost", _drop(lambda e: _chain(e)[-1]), False),
    ("chunk moved", _moved_chunk, False),
    ("an entry between chunks", _add_between_chunks, False),
    ("chunk alone", _add({"type": "chunk", "name": "etc", "chunkOffset": 0}, 1), False),
    ("chunk of another file", _set(_first_chunk, name="usr/bin/other"), False),
    ("chunkType ones", _set(_first_chunk, chunkType="ones"), False),
    ("chunkDigest upper", _set(_head, chunkDigest=DIGEST.upper()), False),
    ("chunkDigest short", _set(_first_chunk, chunkDigest=DIGEST[:-1]), False),
    ("head chunkOffset 1", _set(_head, chunkOffset=1), False),
    ("chunkSize 0", _set(_head, chunkSize=0), False),
    ("chunkSize -1", _set(_head, chunkSize=-1), False),
    ("chunkSize a string", _set(_head, chunkSize="5"), False),
    ("whole file too big", _add({**CHUNKED, "chunkSize": 6}), False),
    ("whole file too small", _add({**CHUNKED, "chunkSize": 4}), False),
    (
        "whole file, then a chunk",
        lambda e: e.extend(
            [copy.deepcopy(CHUNKED), {"type": "chunk", "name": "opt/whole", "chunkOffset": 5}]
        ),
        False,
    ),
    ("chunkDigest on a dir", _set(lambda e: _named(e, "dir"), chunkDigest=DIGEST), False),
    ("chunkSize on a symlink", _set(lambda e: _named(e, "symlink"), chunkSize=1), False),
    ("devMajor 4096", _set(lambda e: _named(e, "char"), devMajor=4096), False),
    ("devMinor on a fifo", _set(lambda e: _named(e, "fifo"), devMinor=1), False),
    ("devMinor on a file", _set(lambda e: _named(e, "reg"), devMinor=1), False),
    ("devMajor a bool", _set(lambda e: _named(e, "block"), devMajor=True), False),
    ("device repeated otherwise", _repeat("char", mode=0o600), False),
    ("size on a device", _set(lambda e: _named(e, "block"), size=1), False),
    ("whiteout dir", _add({"type": "dir", "name": "etc/.wh.x"}), False),
    ("whiteout of nothing", _add({"type": "reg", "name": "etc/.wh."}), False),
    ("whiteout and its file", _add({"type": "reg", "name": "etc/motd"}), False),
    ("whiteout of a directory", _add({"type": "reg", "name": "usr/.wh.bin"}), False),
    ("whiteout of a directory first", _add({"type": "reg", "name": ".wh.usr"}, 0), False),
    ("root a file", _add({"type": "reg", "name": "./"}), False),
    ("unknown type", _add({"type": "socket", "name": "run/s"}), False),
    ("innerOffset", _set(_first_chunk, innerOffset=0), False),
]


#: Edits of the real zstd:chunked TOC -> the outcome.
REAL_OUTCOMES: dict[str, object] = {
    "no chunks": None,
    "one chunk less": None,
    "zeros": None,
    "no chunkDigest": None,
    "whole-file chunkSize": None,
    "whole-file chunkSize first": None,
    "chunkOffset 0": None,
    "other device": None,
    "device 0": None,
    "repeated device": None,
    "repeated fifo": None,
    "devMajor 0 on a file": None,
    "opaque first": None,
    "whiteout in an opaque dir": None,
    "aufs metadata": None,
    "opaque dir made": None,
    "name to clean": None,
    "opaque dir named ./": None,
    "hardlink to a device": None,
    "hardlink the walker takes": None,
    'chunkType ""': None,
    "chunkSize + 1": 'entry 18 ("usr/bin/passwd"): chunkOffset: must be 12990 (where the previous piece ends), got 12989',
    "chunk offset off": 'entry 18 ("usr/bin/passwd"): chunkOffset: must be 12989 (where the previous piece ends), got 1',
    "chunk lost": 'entry 18 ("usr/bin/passwd"): chunkOffset: must be 12989 (where the previous piece ends), got 16384',
    "last chunk lost": 'entry 17 ("usr/bin/passwd"): chunkSize: chunks cover 59600 of the file\'s 68248 bytes',
    "chunk moved": 'entry 18 ("usr/bin/passwd"): chunkOffset: must be 12989 (where the previous piece ends), got 16384',
    "an entry between chunks": 'entry 17 ("usr/bin/passwd"): chunkSize: chunks cover 12989 of the file\'s 68248 bytes',
    "chunk alone": 'entry 1 ("etc"): name: a chunk must follow the regular file it belongs to, whose chunkSize says that more chunks come',
    "chunk of another file": 'entry 18 ("usr/bin/other"): name: a chunk must follow the regular file it belongs to, whose chunkSize says that more chunks come',
    "chunkType ones": 'entry 18 ("usr/bin/passwd"): chunkType: must be "" or "zeros", got "ones"',
    "chunkDigest upper": 'entry 17 ("usr/bin/passwd"): chunkDigest: must be sha256: and 64 lowercase hex digits, got "SHA256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"',
    "chunkDigest short": 'entry 18 ("usr/bin/passwd"): chunkDigest: must be sha256: and 64 lowercase hex digits, got "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b982"',
    "head chunkOffset 1": 'entry 17 ("usr/bin/passwd"): chunkOffset: a regular file holds its first chunk, at 0, got 1',
    "chunkSize 0": 'entry 17 ("usr/bin/passwd"): chunkSize: must be an integer in 1..9223372036854775807, got 0',
    "chunkSize -1": 'entry 17 ("usr/bin/passwd"): chunkSize: must be an integer in 1..9223372036854775807, got -1',
    "chunkSize a string": 'entry 17 ("usr/bin/passwd"): chunkSize: must be an integer in 1..9223372036854775807, got "5"',
    "whole file too big": 'entry 172 ("opt/whole"): chunkSize: 6 is larger than the file (5 bytes)',
    "whole file too small": 'entry 172 ("opt/whole"): chunkSize: chunks cover 4 of the file\'s 5 bytes',
    "whole file, then a chunk": 'entry 173 ("opt/whole"): chunkOffset: 5 is not inside the file (5 bytes)',
    "chunkDigest on a dir": 'entry 0 ("dev/"): chunkSize: only regular files and chunks have chunk fields, not a dir',
    "chunkSize on a symlink": 'entry 6 ("etc/os-release"): chunkSize: only regular files and chunks have chunk fields, not a symlink',
    "devMajor 4096": 'entry 2 ("dev/null"): devMajor: must be an integer in 0..4095, got 4096',
    "devMinor on a fifo": 'entry 13 ("run/initctl"): devMinor: only char and block devices have device numbers, not a fifo',
    "devMinor on a file": 'entry 4 ("etc/.wh.motd"): devMinor: only char and block devices have device numbers, not a reg',
    "devMajor a bool": 'entry 1 ("dev/loop0"): devMajor: must be an integer in 0..4095, got true',
    "device repeated otherwise": 'entry 172 ("dev/null"): name: path repeats entry 2 with different attributes',
    "size on a device": 'entry 1 ("dev/loop0"): size: only regular files have a size, not a block',
    "whiteout dir": ('entry 172 ("etc/.wh.x"): type: a whiteout must not be a directory', None),
    "whiteout of nothing": (
        'entry 172 ("etc/.wh."): name: a whiteout must name a file after .wh.',
        None,
    ),
    "whiteout and its file": (
        'entry 172 ("etc/motd"): name: path repeats entry 4 with different attributes',
        None,
    ),
    "whiteout of a directory": (
        'entry 172 ("usr/.wh.bin"): name: path repeats entry 16 with different attributes',
        None,
    ),
    "whiteout of a directory first": (
        'entry 16 ("usr/"): name: path repeats entry 0 with different attributes',
        None,
    ),
    "root a file": 'entry 172 ("./"): type: a directory with entries below it cannot become a non-directory',
    "unknown type": 'entry 172 ("run/s"): type: must be one of reg, dir, symlink, hardlink, char, block, fifo, chunk, got "socket"',
    "innerOffset": None,
}

#: (row, field, value) of plain_entries() -> the outcome (DELETE removes the field).
FIELD_RULES: list[tuple[int, str, object, object]] = [
    (1, "mode", 33188, None),
    (1, "mode", DELETE, None),
    (4, "mode", 32768, None),
    (0, "mode", 16877, None),
    (1, "uid", 4294967294, None),
    (1, "gid", DELETE, None),
    (1, "modtime", DELETE, None),
    (1, "modtime", "2021-04-10T05:54:23.1Z", None),
    (1, "modtime", "1960-01-01T00:00:00.000000001Z", None),
    (1, "accesstime", "2024-02-29T00:00:00.12345678Z", None),
    (1, "accesstime", DELETE, None),
    (1, "offset", DELETE, None),
    (1, "offset", 0, None),
    (1, "endOffset", DELETE, None),
    (1, "endOffset", 10, None),
    (2, "digest", DELETE, None),
    (0, "name", "etc", None),
    (0, "name", "./", None),
    (0, "name", "./etc", None),
    (0, "name", "", None),
    (0, "name", "/", None),
    (0, "name", ".", None),
    (4, "linkName", "./etc/passwd", None),
    (4, "linkName", "etc//passwd/", None),
    (4, "xattrs", {"user.x": "eA=="}, None),
    (5, "xattrs", {}, None),
    (6, "name", "usr", None),
    (2, "name", "etc/x.wh.y", None),
    (2, "name", ".etc", None),
    (2, "name", "etc/...", None),
    (2, "name", "./etc/empty", None),
    (2, "name", "etc//empty/", None),
    (2, "name", "etc/.wh.gone", None),
    (2, "name", "etc/.wh..wh..opq", None),
    (2, "name", ".wh.gone", None),
    (2, "name", "usr/.wh..wh..opq", None),
    (1, "chunkSize", 5, None),
    (
        1,
        "chunkDigest",
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        None,
    ),
    (
        1,
        "chunkDigest",
        "sha256:758d61f26a44448384e5c4468a0dcb7a2abe456067b0f7b505bc28b9411fe931",
        None,
    ),
    (1, "chunkOffset", 0, None),
    (1, "chunkType", "zeros", None),
    (1, "devMajor", 0, None),
    (0, "devMinor", 0, None),
    (
        1,
        "size",
        9223372036854775807,
        'entry 1 ("etc/passwd"): size: must be an integer in 0..9007199254740992, got 9223372036854775807',
    ),
    (1, "chunkType", "", None),
    (0, "linkName", "", None),
    (
        1,
        "mode",
        16804,
        'entry 1 ("etc/passwd"): mode: file type bits 0o40000 do not match type reg',
    ),
    (1, "mode", 65536, 'entry 1 ("etc/passwd"): mode: must be an integer in 0..65535, got 65536'),
    (1, "mode", -1, 'entry 1 ("etc/passwd"): mode: must be an integer in 0..65535, got -1'),
    (1, "mode", True, 'entry 1 ("etc/passwd"): mode: must be an integer in 0..65535, got true'),
    (1, "mode", 1.0, 'entry 1 ("etc/passwd"): mode: must be an integer in 0..65535, got 1.0'),
    (1, "mode", None, 'entry 1 ("etc/passwd"): mode: must not be null'),
    (
        4,
        "mode",
        41471,
        'entry 4 ("etc/hard"): mode: file type bits 0o120000 do not match type hardlink',
    ),
    (
        1,
        "uid",
        4294967295,
        'entry 1 ("etc/passwd"): uid: must be an integer in 0..4294967294, got 4294967295',
    ),
    (1, "gid", -1, 'entry 1 ("etc/passwd"): gid: must be an integer in 0..4294967294, got -1'),
    (
        1,
        "size",
        9223372036854775808,
        'entry 1 ("etc/passwd"): size: must be an integer in 0..9007199254740992, got 9223372036854775808',
    ),
    (
        1,
        "size",
        0,
        'entry 1 ("etc/passwd"): digest: an empty file\'s digest must be the sha256 of nothing',
    ),
    (0, "size", 1, 'entry 0 ("etc/"): size: only regular files have a size, not a dir'),
    (3, "size", 2, 'entry 3 ("etc/link"): size: only regular files have a size, not a symlink'),
    (4, "size", 5, 'entry 4 ("etc/hard"): size: only regular files have a size, not a hardlink'),
    (1, "digest", DELETE, 'entry 1 ("etc/passwd"): digest: required for a regular file with data'),
    (
        1,
        "digest",
        "SHA256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
        'entry 1 ("etc/passwd"): digest: must be sha256: and 64 lowercase hex digits, got "SHA256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"',
    ),
    (
        1,
        "digest",
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b982",
        'entry 1 ("etc/passwd"): digest: must be sha256: and 64 lowercase hex digits, got "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b982"',
    ),
    (
        1,
        "digest",
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b98240",
        'entry 1 ("etc/passwd"): digest: must be sha256: and 64 lowercase hex digits, got "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b98240"',
    ),
    (
        1,
        "digest",
        "sha512:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        'entry 1 ("etc/passwd"): digest: must be sha256: and 64 lowercase hex digits, got "sha512:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"',
    ),
    (
        1,
        "digest",
        "",
        'entry 1 ("etc/passwd"): digest: must be sha256: and 64 lowercase hex digits, got ""',
    ),
    (
        2,
        "digest",
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        'entry 2 ("etc/empty"): digest: an empty file\'s digest must be the sha256 of nothing',
    ),
    (
        0,
        "digest",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        'entry 0 ("etc/"): digest: only regular files have one, not a dir',
    ),
    (
        3,
        "digest",
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        'entry 3 ("etc/link"): digest: only regular files have one, not a symlink',
    ),
    (
        4,
        "digest",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        'entry 4 ("etc/hard"): digest: only regular files have one, not a hardlink',
    ),
    (
        1,
        "modtime",
        "2021-02-29T00:00:00Z",
        'entry 1 ("etc/passwd"): modtime: must be an RFC 3339 date-time string, got "2021-02-29T00:00:00Z"',
    ),
    (
        1,
        "modtime",
        "2021-13-01T00:00:00Z",
        'entry 1 ("etc/passwd"): modtime: must be an RFC 3339 date-time string, got "2021-13-01T00:00:00Z"',
    ),
    (
        1,
        "modtime",
        "2021-04-10T24:00:00Z",
        'entry 1 ("etc/passwd"): modtime: must be an RFC 3339 date-time string, got "2021-04-10T24:00:00Z"',
    ),
    (
        1,
        "modtime",
        "2021-04-10T23:60:00Z",
        'entry 1 ("etc/passwd"): modtime: must be an RFC 3339 date-time string, got "2021-04-10T23:60:00Z"',
    ),
    (
        1,
        "modtime",
        "2021-04-10T23:59:60Z",
        'entry 1 ("etc/passwd"): modtime: must be an RFC 3339 date-time string, got "2021-04-10T23:59:60Z"',
    ),
    (
        1,
        "modtime",
        "2021-04-10T05:54:23.1234567890Z",
        'entry 1 ("etc/passwd"): modtime: must be an RFC 3339 date-time string, got "2021-04-10T05:54:23.1234567890Z"',
    ),
    (
        1,
        "modtime",
        "2021-04-10T05:54:23.Z",
        'entry 1 ("etc/passwd"): modtime: must be an RFC 3339 date-time string, got "2021-04-10T05:54:23.Z"',
    ),
    (
        1,
        "modtime",
        "2021-04-10 05:54:23Z",
        'entry 1 ("etc/passwd"): modtime: must be an RFC 3339 date-time string, got "2021-04-10 05:54:23Z"',
    ),
    (
        1,
        "modtime",
        "2021-04-10T05:54:23",
        'entry 1 ("etc/passwd"): modtime: must be an RFC 3339 date-time string, got "2021-04-10T05:54:23"',
    ),
    (
        1,
        "modtime",
        "2021-04-10T05:54:23Z\n2021-04-10T05:54:23Z",
        'entry 1 ("etc/passwd"): modtime: must be an RFC 3339 date-time string, got "2021-04-10T05:54:23Z\\n2021-04-10T05:54:23Z"',
    ),
    (
        1,
        "modtime",
        "２021-04-10T05:54:23Z",
        'entry 1 ("etc/passwd"): modtime: must be an RFC 3339 date-time string, got "\\uff12021-04-10T05:54:23Z"',
    ),
    (
        1,
        "modtime",
        "",
        'entry 1 ("etc/passwd"): modtime: must be an RFC 3339 date-time string, got ""',
    ),
    (
        1,
        "accesstime",
        "2021-04-10T05:54:23.Z",
        'entry 1 ("etc/passwd"): accesstime: must be an RFC 3339 date-time string, got "2021-04-10T05:54:23.Z"',
    ),
    (
        1,
        "changetime",
        "2021-02-30T00:00:00Z",
        'entry 1 ("etc/passwd"): changetime: must be an RFC 3339 date-time string, got "2021-02-30T00:00:00Z"',
    ),
    (
        1,
        "changetime",
        0,
        'entry 1 ("etc/passwd"): changetime: must be an RFC 3339 date-time string, got 0',
    ),
    (1, "endOffset", 9, 'entry 1 ("etc/passwd"): endOffset: 9 is before offset 10'),
    (
        1,
        "offset",
        -1,
        'entry 1 ("etc/passwd"): offset: must be an integer in 0..9223372036854775807, got -1',
    ),
    (
        1,
        "offset",
        9223372036854775808,
        'entry 1 ("etc/passwd"): offset: must be an integer in 0..9223372036854775807, got 9223372036854775808',
    ),
    (
        1,
        "linkName",
        "x",
        'entry 1 ("etc/passwd"): linkName: only symlinks and hardlinks have one, not a reg',
    ),
    (
        0,
        "linkName",
        "x",
        'entry 0 ("etc/"): linkName: only symlinks and hardlinks have one, not a dir',
    ),
    (3, "linkName", DELETE, 'entry 3 ("etc/link"): linkName: a symlink needs a target'),
    (3, "linkName", "", 'entry 3 ("etc/link"): linkName: a symlink needs a target'),
    (3, "linkName", "x\x00y", 'entry 3 ("etc/link"): linkName: must be 1..4095 bytes without NUL'),
    (3, "linkName", "\udc80", 'entry 3 ("etc/link"): linkName: must be valid Unicode'),
    (
        4,
        "linkName",
        DELETE,
        'entry 4 ("etc/hard"): linkName: a hardlink needs the name of its target',
    ),
    (4, "linkName", "etc/hard", 'entry 4 ("etc/hard"): linkName: a hardlink cannot link to itself'),
    (
        4,
        "linkName",
        "./etc/hard/",
        'entry 4 ("etc/hard"): linkName: a hardlink cannot link to itself',
    ),
    (
        4,
        "linkName",
        "nowhere",
        "entry 4 (\"etc/hard\"): linkName: hardlink target '/nowhere' does not exist",
    ),
    (4, "linkName", "etc", 'entry 4 ("etc/hard"): linkName: hardlink to a directory'),
    (
        4,
        "linkName",
        "../etc/passwd",
        "entry 4 (\"etc/hard\"): linkName: must not contain a '..' component",
    ),
    (
        4,
        "xattrs",
        {"bad.x": "eA=="},
        'entry 4 ("etc/hard"): xattrs: name "bad.x" has no known prefix (user., trusted., security., system.posix_acl_access/default)',
    ),
    (
        5,
        "xattrs",
        {"user.x": "eA="},
        'entry 5 ("usr/bin/ping"): xattrs: value of "user.x" is not strict base64: "eA="',
    ),
    (
        5,
        "xattrs",
        {"user.": "eA=="},
        'entry 5 ("usr/bin/ping"): xattrs: name "user." must be 1..255 bytes without NUL, with a name after the prefix',
    ),
    (
        5,
        "xattrs",
        {"system.posix_acl_access": "AA=="},
        'entry 5 ("usr/bin/ping"): xattrs: value of "system.posix_acl_access": a POSIX ACL needs a 4-byte header, got 1 bytes',
    ),
    (
        5,
        "xattrs",
        [],
        'entry 5 ("usr/bin/ping"): xattrs: must be an object of name -> base64 value, got an array',
    ),
    (5, "xattrs", None, 'entry 5 ("usr/bin/ping"): xattrs: must not be null'),
    (
        1,
        "name",
        "etc/../passwd",
        "entry 1 (\"etc/../passwd\"): name: must not contain a '..' component",
    ),
    (
        1,
        "name",
        "etc/./x",
        "entry 4 (\"etc/hard\"): linkName: hardlink target '/etc/passwd' does not exist",
    ),
    (
        1,
        "name",
        "/etc/x",
        "entry 4 (\"etc/hard\"): linkName: hardlink target '/etc/passwd' does not exist",
    ),
    (
        1,
        "name",
        "etc//x",
        "entry 4 (\"etc/hard\"): linkName: hardlink target '/etc/passwd' does not exist",
    ),
    (
        1,
        "name",
        "etc/x//",
        "entry 4 (\"etc/hard\"): linkName: hardlink target '/etc/passwd' does not exist",
    ),
    (1, "name", "etc/x\x00", 'entry 1 ("etc/x\x00"): name: must not contain NUL'),
    (
        1,
        "name",
        "etc/\udc80",
        'entry 1 ("etc/\udc80"): name: must be valid Unicode (no lone surrogate escapes)',
    ),
    (
        1,
        "name",
        "",
        'entry 1 (""): type: a directory with entries below it cannot become a non-directory',
    ),
    (
        1,
        "name",
        "etc/passwd/..",
        "entry 1 (\"etc/passwd/..\"): name: must not contain a '..' component",
    ),
    (
        1,
        "name",
        "etc/link/x",
        'entry 3 ("etc/link"): type: a directory with entries below it cannot become a non-directory',
    ),
    (1, "name", "etc/passwd/x", 'entry 4 ("etc/hard"): linkName: hardlink to a directory'),
    (
        3,
        "name",
        "etc/passwd",
        'entry 3 ("etc/passwd"): name: path repeats entry 1 with different attributes',
    ),
    (1, "type", "fifo", 'entry 1 ("etc/passwd"): size: only regular files have a size, not a fifo'),
    (
        1,
        "type",
        "chunk",
        'entry 1 ("etc/passwd"): name: a chunk must follow the regular file it belongs to, whose chunkSize says that more chunks come',
    ),
    (
        1,
        "type",
        "REG",
        'entry 1 ("etc/passwd"): type: must be one of reg, dir, symlink, hardlink, char, block, fifo, chunk, got "REG"',
    ),
    (1, "chunkSize", 4, 'entry 1 ("etc/passwd"): chunkSize: chunks cover 4 of the file\'s 5 bytes'),
    (1, "chunkSize", 6, 'entry 1 ("etc/passwd"): chunkSize: 6 is larger than the file (5 bytes)'),
    (
        1,
        "chunkSize",
        0,
        'entry 1 ("etc/passwd"): chunkSize: must be an integer in 1..9223372036854775807, got 0',
    ),
    (
        1,
        "chunkSize",
        -1,
        'entry 1 ("etc/passwd"): chunkSize: must be an integer in 1..9223372036854775807, got -1',
    ),
    (
        1,
        "chunkSize",
        True,
        'entry 1 ("etc/passwd"): chunkSize: must be an integer in 1..9223372036854775807, got true',
    ),
    (2, "chunkSize", 1, 'entry 2 ("etc/empty"): chunkSize: 1 is larger than the file (0 bytes)'),
    (
        1,
        "chunkOffset",
        5,
        'entry 1 ("etc/passwd"): chunkOffset: a regular file holds its first chunk, at 0, got 5',
    ),
    (
        1,
        "chunkOffset",
        -1,
        'entry 1 ("etc/passwd"): chunkOffset: must be an integer in 0..9223372036854775807, got -1',
    ),
    (
        1,
        "chunkDigest",
        "SHA256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
        'entry 1 ("etc/passwd"): chunkDigest: must be sha256: and 64 lowercase hex digits, got "SHA256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"',
    ),
    (
        1,
        "chunkDigest",
        "",
        'entry 1 ("etc/passwd"): chunkDigest: must be sha256: and 64 lowercase hex digits, got ""',
    ),
    (
        1,
        "chunkDigest",
        1,
        'entry 1 ("etc/passwd"): chunkDigest: must be sha256: and 64 lowercase hex digits, got 1',
    ),
    (
        0,
        "chunkDigest",
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        'entry 0 ("etc/"): chunkSize: only regular files and chunks have chunk fields, not a dir',
    ),
    (
        3,
        "chunkType",
        "zeros",
        'entry 3 ("etc/link"): chunkSize: only regular files and chunks have chunk fields, not a symlink',
    ),
    (
        1,
        "chunkType",
        "ZEROS",
        'entry 1 ("etc/passwd"): chunkType: must be "" or "zeros", got "ZEROS"',
    ),
    (
        1,
        "devMajor",
        1,
        'entry 1 ("etc/passwd"): devMajor: only char and block devices have device numbers, not a reg',
    ),
    (
        1,
        "devMajor",
        4096,
        'entry 1 ("etc/passwd"): devMajor: must be an integer in 0..4095, got 4096',
    ),
    (1, "devMajor", -1, 'entry 1 ("etc/passwd"): devMajor: must be an integer in 0..4095, got -1'),
    (1, "devMajor", None, 'entry 1 ("etc/passwd"): devMajor: must not be null'),
    (
        0,
        "devMinor",
        1,
        'entry 0 ("etc/"): devMinor: only char and block devices have device numbers, not a dir',
    ),
    (
        0,
        "devMinor",
        1048576,
        'entry 0 ("etc/"): devMinor: must be an integer in 0..1048575, got 1048576',
    ),
    (1, "innerOffset", 0, None),
    (1, "unknown", [1], None),
]


def outcome(raw: bytes, compat: str | None, collect: bool = False) -> str | None:
    try:
        parse_toc(raw, compat=compat, collect=collect)
    except ValidationError as error:
        return str(error.problems[0])
    return None


#: What compat mode takes, as containers/storage does (it changes nothing in the image) ...
_COMPAT_TAKES = (
    "only regular files have a size",
    "only char and block devices have device numbers",
    "an empty file's digest must be",
    "digest: only regular files have one",
    ".1234567890Z",  # a fraction past nanoseconds, dropped
)
#: ... and what it refuses first, as containers/storage's GenerateDump does.
_COMPAT_FIRST = (
    "a directory after entries inside it must equal the one containers/storage makes up",
    "with different data (containers/storage compares the whole entries)",
    "must not climb above the root with '..'",
)


def _compat_differs(expected: object, got: str | None) -> bool:
    """compat's outcome differs from the default one by a deliberate compat rule."""
    if got is None:
        return isinstance(expected, str) and any(part in expected for part in _COMPAT_TAKES)
    return any(part in got for part in _COMPAT_FIRST)


def expect(raw: bytes, compat: str | None, expected: object) -> None:
    if isinstance(expected, tuple):
        expected = expected[COMPATS.index(compat)]
    got = outcome(raw, compat)
    if compat and got != expected and _compat_differs(expected, got):
        expected = got  # (still the same with collect=True)
    assert outcome(raw, compat) == expected
    assert outcome(raw, compat, collect=True) == expected
    if expected is None:
        assert parse_toc(raw, compat=compat) == parse_toc(raw, compat=compat, collect=True)


@pytest.mark.parametrize(("row", "field", "value", "expected"), FIELD_RULES)
@pytest.mark.parametrize("compat", COMPATS)
def test_one_field_changed(
    row: int, field: str, value: object, expected: object, compat: str | None
) -> None:
    entries = plain_entries()
    if value is DELETE:
        del entries[row][field]
    else:
        entries[row][field] = value
    expect(document(entries), compat, expected)


@pytest.mark.parametrize(("label", "edit", "_"), REAL_EDITS, ids=[e[0] for e in REAL_EDITS])
@pytest.mark.parametrize("compat", COMPATS)
def test_real_toc_edited(
    label: str, edit: Callable[[Entries], None], _: object, compat: str | None
) -> None:
    paths = [path for path in real_toc_paths() if path.name.startswith("small.zstd")]
    if not paths:
        pytest.skip("no real TOCs (shared testdata) here")
    entries = json.loads(paths[0].read_bytes())["entries"]
    edit(entries)
    expect(document(entries), compat, REAL_OUTCOMES[label])


def _with_huge_number(entries: list[dict[str, Any]]) -> bytes:
    """The TOC with each ``"x": "huge"`` an unknown key holding 1e999 (no float holds it)."""
    return document(entries).replace(b'"x":"huge"', b'"x":1e999')


@pytest.mark.parametrize("compat", COMPATS)
def test_unknown_keys_holding_huge_numbers_change_nothing(compat: str | None) -> None:
    """An unknown key is ignored whatever it holds, also where the entry's name is read
    again: to tell a tree problem, and to find opaque markers."""
    entries = plain_entries()
    entries[1]["x"] = "huge"
    expect(_with_huge_number(entries), compat, None)
    marked = [
        {"type": "dir", "name": "d/", "mode": 0o755},
        {"type": "reg", "name": "d/.wh..wh..opq", "x": "huge"},
    ]
    tree = parse_toc(_with_huge_number(marked), compat=compat)
    opaque = (b"trusted.overlay.opaque", b"y") in tree.inode("/d").xattrs
    assert (opaque, b"/d/.wh..wh..opq" in tree) == (compat is None, compat is not None)
    clash = [{"type": "reg", "name": "a"}, {"type": "reg", "name": "a/b", "x": "huge"}]
    with pytest.raises(ValidationError) as caught:
        parse_toc(_with_huge_number(clash), compat=compat)
    assert (caught.value.entry, caught.value.path) == (1, "a/b")


@pytest.mark.parametrize("spelled", ["\\u002ewh..wh..opq", ".wh..wh.\\u002e\\u006fpq"])
@pytest.mark.parametrize("compat", COMPATS)
def test_an_opaque_marker_spelled_with_json_escapes_is_one(
    spelled: str, compat: str | None
) -> None:
    """The marker is found by its decoded name, however the JSON text spells it."""
    entries = [{"type": "dir", "name": "d/"}, {"type": "reg", "name": "d/MARKER"}]
    raw = document(entries).replace(b"MARKER", spelled.encode())
    tree = parse_toc(raw, compat=compat)
    opaque = (b"trusted.overlay.opaque", b"y") in tree.inode("/d").xattrs
    assert (opaque, b"/d/.wh..wh..opq" in tree) == (compat is None, compat is not None)
