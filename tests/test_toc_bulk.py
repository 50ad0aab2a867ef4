"""The bulk TOC path (``toc._bulk``) gives the walker's Tree, or steps aside.

``_bulk`` checks a whole TOC column by column (the rows the columns do not
take, such as chunks, devices and whiteouts, by the walker's own checks) and
builds it with ``tree_from_columns``; for every document it takes, the Tree must be the one
the entry-by-entry paths make (equal, same dump, same image bytes), and for
every other document it must return None, so that :func:`parse_toc` reports
exactly what it reports without it.  Each test compares against
``parse_toc`` with ``_bulk`` bypassed, and some also demand that ``_bulk``
takes the input, so that a fast path that never runs fails here too.
"""

from __future__ import annotations

import base64
import calendar
import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.generate import toc_json
from composefs_py import Hardlink, Limits, Tree, ValidationError, dump
from composefs_py import toc as toc_module
from composefs_py.strategies import hostile_toc_cases, real_toc_paths, toc_cases
from composefs_py.toc import parse_toc
from composefs_py.writer import write_image

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


@contextmanager
def bulk_bypassed() -> Iterator[None]:
    """parse_toc as it is without the bulk path."""
    saved = toc_module._bulk
    toc_module._bulk = lambda raw, limits, compat, head=None: None
    try:
        yield
    finally:
        toc_module._bulk = saved


def outcome(raw: bytes, compat: str | None, limits: Limits | None) -> Tree | str:
    """parse_toc's Tree, or its error message."""
    try:
        return parse_toc(raw, compat=compat, limits=limits)
    except ValidationError as error:
        return str(error)


def check(
    raw: bytes,
    compat: str | None = None,
    limits: Limits | None = None,
    *,
    taken: bool | None = None,
) -> Tree | None:
    """``_bulk(raw)`` is None or the walker's Tree; parse_toc's answer is unchanged.

    ``taken``: True demands that the bulk path takes ``raw``, False that it
    steps aside.  Returns the bulk Tree.
    """
    bulk = toc_module._bulk(raw, limits or Limits(), compat)
    with bulk_bypassed():
        reference = outcome(raw, compat, limits)
    assert outcome(raw, compat, limits) == reference
    if bulk is not None:
        assert isinstance(reference, Tree), reference
        assert bulk == reference
        assert list(bulk) == list(reference)
        assert dump(bulk) == dump(reference)
    if taken is not None:
        assert (bulk is not None) == taken, reference
    return bulk


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


def image_bytes(tree: Tree, path: Path) -> bytes:
    write_image(tree, path)
    return path.read_bytes()


# -- what the bulk path takes ----------------------------------------------------


def test_bulk_path_takes_the_benchmark_toc_with_the_same_image(tmp_path: Path) -> None:
    raw = toc_json(2000)
    bulk = check(raw, taken=True)
    assert bulk is not None
    with bulk_bypassed():
        reference = parse_toc(raw)
    assert image_bytes(bulk, tmp_path / "bulk") == image_bytes(reference, tmp_path / "walker")
    # the document has what real layers have: hardlinks, symlinks, xattrs, empty files
    kinds = {json.dumps(entry.get("type")) for entry in json.loads(raw)["entries"]}
    assert kinds == {'"reg"', '"dir"', '"symlink"', '"hardlink"'}
    assert any(isinstance(node, Hardlink) for _, node in bulk)
    assert any(node.xattrs for _, node in bulk if not isinstance(node, Hardlink))


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_bulk_path_gives_the_same_tree_in_batches_of_any_size(
    batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = toc_json(500)
    whole = check(raw, taken=True)
    monkeypatch.setattr(toc_module, "_BULK_BATCH", batch)
    assert check(raw, taken=True) == whole
    # a broken entry in a later batch still sends the document to the walker
    entries = json.loads(raw)["entries"]
    entries[-1]["mode"] = 0o170644  # type bits of no type
    check(document(entries), taken=False)
    entries[-1]["unknown"] = 1
    check(document(entries), taken=False)


@pytest.mark.parametrize("compat", COMPATS)
def test_bulk_path_takes_every_kind_and_field_it_knows(compat: str | None, tmp_path: Path) -> None:
    raw = document(plain_entries())
    bulk = check(raw, compat, taken=True)
    assert bulk is not None
    with bulk_bypassed():
        reference = parse_toc(raw, compat=compat)
    assert image_bytes(bulk, tmp_path / "bulk") == image_bytes(reference, tmp_path / "walker")
    assert bulk[b"/etc/hard"] == Hardlink(b"/etc/passwd")
    assert bulk.inode(b"/etc/hard").nlink == 2
    assert bulk.inode(b"/usr/bin/ping").xattrs[0][0] == b"security.capability"
    assert bulk.inode(b"/etc/passwd").mtime_nsec == 0
    assert bulk.inode(b"/etc").mtime_nsec == 611178002


def real_tocs() -> list[bytes]:
    paths = real_toc_paths()
    if not paths:
        pytest.skip("no real TOCs (shared testdata) here")
    return [path.read_bytes() for path in paths]


@pytest.mark.parametrize("compat", COMPATS)
def test_bulk_path_takes_the_real_tocs_with_the_same_image(
    compat: str | None, tmp_path: Path
) -> None:
    # what they hold besides plain files: chunks, devices, whiteouts, a repeat, bookkeeping
    kinds = {entry["type"] for raw in real_tocs() for entry in json.loads(raw)["entries"]}
    assert {"chunk", "char", "block", "fifo"} <= kinds
    for raw in real_tocs():
        bulk = check(raw, compat, taken=True)
        assert bulk is not None
        with bulk_bypassed():
            reference = parse_toc(raw, compat=compat)
        assert image_bytes(bulk, tmp_path / "bulk") == image_bytes(reference, tmp_path / "ref")
        assert bulk.inode(b"/dev/null").rdev == (1 << 8) | 3
        if compat is None:
            assert bulk.inode(b"/etc/motd").mode == 0o020000
            assert (b"trusted.overlay.opaque", b"y") in bulk.inode(b"/var/cache/apt").xattrs
        else:
            assert b"/etc/.wh.motd" in bulk


@pytest.mark.parametrize("batch", [1, 2, 5, 64])
def test_bulk_path_takes_the_real_tocs_in_batches_of_any_size(
    batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # chunk chains and runs of the walker's rows cross the batch ends
    tocs = real_tocs()
    whole = [check(raw, taken=True) for raw in tocs]
    monkeypatch.setattr(toc_module, "_BULK_BATCH", batch)
    assert [check(raw, taken=True) for raw in tocs] == whole


def _with_root(raw: bytes) -> bytes:
    entries = json.loads(raw)["entries"]
    entries.insert(0, {"type": "dir", "name": "./", "mode": 0o755, "modtime": T2})
    return document(entries)


def _dot_slash(raw: bytes) -> bytes:
    """``raw`` with every name as tar -C dir . writes it: "./" first."""
    entries = json.loads(raw)["entries"]
    for entry in entries:
        entry["name"] = "./" + entry["name"]
    return document(entries)


@pytest.mark.parametrize("compat", COMPATS)
def test_bulk_path_takes_names_with_a_leading_dot_slash(compat: str | None) -> None:
    for raw in [*real_tocs(), toc_json(500)]:
        bulk = check(_dot_slash(raw), compat, taken=True)
        assert bulk == check(raw, compat, taken=True)


@pytest.mark.parametrize("compat", COMPATS)
def test_bulk_path_takes_a_root_entry(compat: str | None) -> None:
    for raw in real_tocs():
        bulk = check(_with_root(raw), compat, taken=True)
        assert bulk is not None
        assert bulk.inode(b"/").mtime == calendar.timegm((2023, 6, 19, 13, 16, 46))


# -- real TOCs edited: chunks, devices, whiteouts ------------------------------------

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
REAL_EDITS: list[tuple[str, Callable[[Entries], None], bool | None]] = [
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
#: Edits with .wh. names, which compat="containers-storage" keeps as plain files.
PLAIN_FILES_IN_COMPAT = {
    "opaque first", "whiteout in an opaque dir", "aufs metadata", "opaque dir made",
    "whiteout dir", "whiteout of nothing", "whiteout and its file", "whiteout of a directory",
    "whiteout of a directory first",
}  # fmt: skip


@pytest.mark.parametrize(("label", "edit", "taken"), REAL_EDITS, ids=[e[0] for e in REAL_EDITS])
@pytest.mark.parametrize("compat", COMPATS)
def test_bulk_path_judges_edited_real_tocs_as_the_walker(
    label: str, edit: Callable[[Entries], None], taken: bool | None, compat: str | None
) -> None:
    edited = 0
    for raw in real_tocs():
        entries = json.loads(raw)["entries"]
        try:
            edit(entries)
        except StopIteration:
            continue  # a TOC without a file in chunks
        edited += 1
        if compat is not None and label in PLAIN_FILES_IN_COMPAT:
            taken = True  # .wh. names are plain files then
        check(document(entries), compat, taken=taken)
    assert edited >= 2


def test_bulk_path_takes_a_benchmark_toc_with_chunk_fields() -> None:
    entries = json.loads(toc_json(3000))["entries"]
    chunked = 0
    for entry in entries:
        if entry["type"] == "reg" and entry.get("size"):
            entry["chunkDigest"] = entry["digest"]
            entry["chunkSize"] = entry["size"]
            chunked += 1
    assert chunked > 1000
    check(document(entries), taken=True)


# -- one field changed: taken alike, or left to the walker ----------------------------

# Row, field -> values: each makes one TOC (DELETE removes the field).
# still plain: the bulk path takes them
TAKEN: dict[tuple[int, str], list[object]] = {
    (1, "mode"): [0o100644, DELETE],
    (4, "mode"): [0o100000],
    (0, "mode"): [0o40755],
    (1, "uid"): [ID_MAX],
    (1, "gid"): [DELETE],
    (1, "modtime"): [DELETE, "2021-04-10T05:54:23.1Z", "1960-01-01T00:00:00.000000001Z"],
    (1, "accesstime"): ["2024-02-29T00:00:00.12345678Z", DELETE],
    (1, "offset"): [DELETE, 0],
    (1, "endOffset"): [DELETE, 10],
    (2, "digest"): [DELETE],
    (0, "name"): ["etc", "./", "./etc", "", "/", "."],
    (4, "linkName"): ["./etc/passwd", "etc//passwd/"],
    (4, "xattrs"): [{"user.x": "eA=="}],
    (5, "xattrs"): [{}],
    (6, "name"): ["usr"],
    (2, "name"): [
        "etc/x.wh.y",
        ".etc",
        "etc/...",
        "./etc/empty",
        "etc//empty/",
        # the walker's, for the bulk path
        "etc/.wh.gone",
        "etc/.wh..wh..opq",
        ".wh.gone",
        "usr/.wh..wh..opq",
    ],
    # the fields and names the walker's checks take for the bulk path
    (1, "chunkSize"): [5],
    (1, "chunkDigest"): [DIGEST, OTHER_DIGEST],
    (1, "chunkOffset"): [0],
    (1, "chunkType"): ["zeros"],
    (1, "devMajor"): [0],
    (0, "devMinor"): [0],
}
# the bulk path may step aside
EITHER: dict[tuple[int, str], list[object]] = {
    (1, "size"): [I63_MAX],
    (1, "chunkType"): [""],
    (0, "linkName"): [""],
}
# invalid, or not the bulk path's: the walker decides
REJECTED: dict[tuple[int, str], list[object]] = {
    (1, "mode"): [0o40644, 0o177777 + 1, -1, True, 1.0, None],
    (4, "mode"): [0o120777],
    (1, "uid"): [ID_MAX + 1],
    (1, "gid"): [-1],
    (1, "size"): [I63_MAX + 1, 0],
    (0, "size"): [1],
    (3, "size"): [2],
    (4, "size"): [5],
    (1, "digest"): [DELETE, DIGEST.upper(), DIGEST[:-1], DIGEST + "0", "sha512:" + DIGEST[7:], ""],
    (2, "digest"): [DIGEST],
    (0, "digest"): [EMPTY_DIGEST],
    (3, "digest"): [DIGEST],
    (4, "digest"): [EMPTY_DIGEST],
    (1, "modtime"): [
        "2021-02-29T00:00:00Z",
        "2021-13-01T00:00:00Z",
        "2021-04-10T24:00:00Z",
        "2021-04-10T23:60:00Z",
        "2021-04-10T23:59:60Z",
        "2021-04-10T05:54:23.1234567890Z",
        "2021-04-10T05:54:23.Z",
        "2021-04-10 05:54:23Z",
        "2021-04-10T05:54:23",
        "2021-04-10T05:54:23Z\n2021-04-10T05:54:23Z",
        "\uff12021-04-10T05:54:23Z",
        "",
    ],
    (1, "accesstime"): ["2021-04-10T05:54:23.Z"],
    (1, "changetime"): ["2021-02-30T00:00:00Z", 0],
    (1, "endOffset"): [9],
    (1, "offset"): [-1, I63_MAX + 1],
    (1, "linkName"): ["x"],
    (0, "linkName"): ["x"],
    (3, "linkName"): [DELETE, "", "x\0y", "\udc80"],
    (4, "linkName"): [DELETE, "etc/hard", "./etc/hard/", "nowhere", "etc", "../etc/passwd"],
    (4, "xattrs"): [{"bad.x": "eA=="}],
    (5, "xattrs"): [
        {"user.x": "eA="},
        {"user.": "eA=="},
        {"system.posix_acl_access": "AA=="},
        [],
        None,
    ],
    (1, "name"): [
        "etc/../passwd",
        "etc/./x",
        "/etc/x",
        "etc//x",
        "etc/x//",
        "etc/x\0",
        "etc/\udc80",
        "",
        "etc/passwd/..",
        "etc/link/x",
        "etc/passwd/x",
    ],
    (3, "name"): ["etc/passwd"],
    (1, "type"): ["fifo", "chunk", "REG"],
    (1, "chunkSize"): [4, 6, 0, -1, True],
    (2, "chunkSize"): [1],
    (1, "chunkOffset"): [5, -1],
    (1, "chunkDigest"): [DIGEST.upper(), "", 1],
    (0, "chunkDigest"): [DIGEST],
    (3, "chunkType"): ["zeros"],
    (1, "chunkType"): ["ZEROS"],
    (1, "devMajor"): [1, 4096, -1, None],
    (0, "devMinor"): [1, 1 << 20],
    (1, "innerOffset"): [0],
    (1, "unknown"): [[1]],
}
EDITS = [
    (row, field, value, taken)
    for table, taken in ((TAKEN, True), (EITHER, None), (REJECTED, False))
    for (row, field), values in table.items()
    for value in values
]


@pytest.mark.parametrize(("row", "field", "value", "taken"), EDITS)
@pytest.mark.parametrize("compat", COMPATS)
def test_bulk_path_takes_what_the_walker_takes_one_field_changed(
    row: int, field: str, value: object, taken: bool | None, compat: str | None
) -> None:
    entries = plain_entries()
    if value is DELETE:
        del entries[row][field]
    else:
        entries[row][field] = value
    check(document(entries), compat, taken=taken)


@pytest.mark.parametrize(
    "mutate",
    [
        # duplicates: an identical repeat is fine for the walker, not proven here
        lambda entries: entries.append(copy.deepcopy(entries[1])),
        lambda entries: entries.append({**entries[1], "mode": 0o600}),
        # a parent that is not a directory, a directory after its children
        lambda entries: entries.append({"type": "reg", "name": "etc/passwd/x"}),
        lambda entries: entries.append({"type": "dir", "name": "usr/bin", "mode": 0o711}),
        # whiteouts, eStargz bookkeeping, the root
        lambda entries: entries.append({"type": "reg", "name": "etc/.wh.x"}),
        lambda entries: entries.append({"type": "reg", "name": "etc/.wh..wh..opq"}),
        lambda entries: entries.append({"type": "reg", "name": "stargz.index.json"}),
        lambda entries: entries.append(
            {"type": "reg", "name": ".prefetch.landmark", "size": 1, "digest": DIGEST}
        ),
        lambda entries: entries.append({"type": "dir", "name": "./", "mode": 0o700}),
        lambda entries: entries.append({"type": "dir", "name": ".", "mode": 0o700}),
        lambda entries: entries.append({"type": "reg", "name": ".hidden"}),
        lambda entries: entries.append({"type": "reg", "name": "etc/..."}),
        # a leading "./", and what it may hide
        lambda entries: entries.append({"type": "reg", "name": "./stargz.index.json"}),
        lambda entries: entries.append(
            {"type": "reg", "name": "./.no.prefetch.landmark", "size": 1, "digest": DIGEST}
        ),
        lambda entries: entries.append({"type": "reg", "name": "././etc/x"}),
        lambda entries: entries.append({"type": "reg", "name": "./.wh.etc"}),
        lambda entries: entries.append({"type": "reg", "name": "./usr/.wh..wh..opq"}),
        lambda entries: entries.append({"type": "reg", "name": "./etc/./x"}),
        lambda entries: entries.append({"type": "reg", "name": ".//etc/x"}),
        lambda entries: entries.append({"type": "dir", "name": "./usr/", "mode": 0o711}),
        # hardlinks: chains, cycles, to a directory, to a later entry
        lambda entries: entries.append({"type": "hardlink", "name": "h2", "linkName": "etc/hard"}),
        lambda entries: entries.append({"type": "hardlink", "name": "etc", "linkName": "etc/hard"}),
        lambda entries: entries.extend(
            [
                {"type": "hardlink", "name": "a", "linkName": "b"},
                {"type": "hardlink", "name": "b", "linkName": "a"},
            ]
        ),
        lambda entries: entries.insert(
            0, {"type": "hardlink", "name": "first", "linkName": "etc/passwd"}
        ),
        lambda entries: entries.append({"type": "hardlink", "name": "h3", "linkName": "usr"}),
        # the same digest twice, a big xattr
        lambda entries: entries.append({**entries[1], "name": "etc/copy"}),
        lambda entries: entries[5]["xattrs"].update({"user.big": "eA==" * 20000}),
        # non-ASCII names and targets
        lambda entries: entries.append({"type": "reg", "name": "etc/café"}),
        lambda entries: entries.append(
            {"type": "symlink", "name": "etc/ünï", "linkName": "ü/../x"}
        ),
    ],
)
@pytest.mark.parametrize("compat", COMPATS)
def test_bulk_path_on_trees_with_odd_shapes(
    mutate: Callable[[list[dict[str, Any]]], None], compat: str | None
) -> None:
    entries = plain_entries()
    mutate(entries)
    check(document(entries), compat)


@pytest.mark.parametrize(
    "text",
    [
        # keys the bulk structs would lose: duplicates, unknown, white space before a colon
        '{"version":1,"entries":[{"type":"dir","name":"a","mode":1,"mode":2}]}',
        '{"version":1,"entries":[{"type":"dir","name":"a","name":"b"}]}',
        '{"version":1,"version":1,"entries":[{"type":"dir","name":"a"}]}',
        '{"version":1,"entries":[{"type":"dir","name":"a","xattrs":{"user.a":"","user.a":""}}]}',
        '{"version":1,"entries":[{"type":"dir","name":"a","mode":1,"mode":2,"uid" :0}]}',
        '{"version":1,"entries":[{"type":"dir","name":"a","x":1}]}',
        '{"version":1,"entries":[{"type":"dir","name":"a"}],"x":{}}',
        '{"version":1,"entries":[{"type":"dir","name":"a\\":","name":"b"}]}',
        # values equal to the bulk path's "absent" marks
        '{"version":1,"entries":[{"type":"dir","name":"a","modtime":""}]}',
        '{"version":1,"entries":[{"type":"reg","name":"a","linkName":""}]}',
        '{"version":1,"entries":[{"type":"dir","name":"a","xattrs":null}]}',
        '{"version":1,"entries":[{"type":"dir","name":"a","uid":-1}]}',
        # the document itself
        '{"version":2,"entries":[{"type":"dir","name":"a"}]}',
        '{"version":1,"entries":[{"type":"dir","name":"a"}],"tarSplitDigest":"x"}',
        '{"version":1,"entries":[]}',
        '{"version":1,"entries":[{"type":"dir","name":"a"}]} x',
        '{"version":1,"entries":[{"type":"dir","name":"a","mode":NaN}]}',
    ],
)
def test_bulk_path_steps_aside_for_keys_it_cannot_account_for(text: str) -> None:
    check(text.encode(), taken=False)


@pytest.mark.parametrize(
    "text",
    [
        '{"version":1,"entries":[{"type":"dir","name":"a"}]}',
        '{"version":1,"entries":[{"type":"dir","name":"a","uid":0,"offset":0}]}',
        '{"version":1,"entries":[{"type":"dir","name":"a","xattrs":{}}]}',
        '{"entries":[{"name":"a","type":"dir"}],"tarSplitDigest":"sha256:' + "0" * 64
        + '","version":1}',
        '{"version":1,"entries":[{"type":"dir","name":"a\\\\\\"b\\\\"},{"type":"dir","name":"c"}]}',
        ' {"version": 1, "entries": [{"type": "dir", "name": "a"}]}\n',
    ],
)  # fmt: skip
def test_bulk_path_counts_keys_through_escapes_and_zeros(text: str) -> None:
    check(text.encode(), taken=True)


@pytest.mark.parametrize(
    "limits",
    [
        Limits(max_entries=10),
        Limits(max_entries=2004),
        Limits(max_path_bytes=20),
        Limits(max_name_bytes=8),
        Limits(max_depth=2),
        Limits(max_total_path_bytes=1000),
        Limits(max_file_size=100),
        Limits(max_symlink_bytes=4),
        Limits(max_xattr_value_bytes=4),
        Limits(max_json_depth=3),
    ],
    ids=repr,
)
def test_bulk_path_keeps_to_the_limits(limits: Limits) -> None:
    check(toc_json(300), limits=limits)
    check(document(plain_entries()), limits=limits)


# -- generated TOCs, valid and hostile ----------------------------------------------


@given(case=toc_cases(max_entries=24), compat=st.sampled_from(COMPATS))
def test_bulk_path_gives_the_walkers_tree_for_generated_tocs(
    case: tuple[bytes, Tree], compat: str | None
) -> None:
    raw, _tree = case
    check(raw, compat)


@given(case=hostile_toc_cases(), compat=st.sampled_from(COMPATS))
def test_bulk_path_never_takes_what_the_walker_rejects(
    case: tuple[str, bytes], compat: str | None
) -> None:
    _mutation, raw = case
    check(raw, compat)


# -- every TOC the rule tests of test_toc.py parse --------------------------------------


class _Recorder:
    """A pytest plugin: every ``_bulk`` call of a run, kept with what it returned."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, Limits, str | None, bool]] = []

    def pytest_configure(self) -> None:
        real = self.real = toc_module._bulk

        def recording(
            raw: bytes, limits: Limits, compat: str | None, head: Any = None
        ) -> Tree | None:
            tree = real(raw, limits, compat, head)
            self.calls.append((raw, limits, compat, tree is not None))
            return tree

        toc_module._bulk = recording

    def pytest_unconfigure(self) -> None:
        toc_module._bulk = self.real

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # the Hypothesis tests are covered above
        items[:] = [
            item
            for item in items
            if not getattr(getattr(item, "obj", None), "is_hypothesis_test", False)
        ]


def test_bulk_path_on_every_toc_the_rule_tests_parse() -> None:
    recorder = _Recorder()
    test_toc = Path(__file__).resolve().parent / "test_toc.py"
    pytest.main([str(test_toc), "-q", "-p", "no:cacheprovider", "--no-header"], [recorder])
    assert len(recorder.calls) > 300
    taken = 0
    for raw, limits, compat, took in recorder.calls:
        taken += took
        tree = check(raw, compat, limits)
        assert (tree is not None) == took
    assert taken > 30
