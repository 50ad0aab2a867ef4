"""Hypothesis strategies for composefs-py: valid inputs and hostile ones.

Valid inputs (each comes with what a correct validator must make of it):

* :func:`trees` -- valid :class:`~composefs_py.model.Tree` objects, every
  inode field drawn over its full range (edge values weighted), names with
  bytes that need escaping, hardlinks, inline content, xattrs up to the
  per-inode space; ``toc_compatible=True`` restricts them to what a TOC can
  express.
* :func:`toc_cases` -- ``(toc_json_bytes, expected_tree)``: a TOC as
  containers/storage writes it (zstd:chunked or eStargz flavour, entries in
  any order, optional parents, chunk entries) and the Tree ``parse_toc`` must
  return; :func:`tocs` gives the bytes only.
* :func:`dumpfile_cases` -- ``(dumpfile_text, tree)`` with escapes chosen at
  random among the valid spellings; :func:`dumpfiles` gives the text only.
* :func:`seeded_tocs` -- the real layers' TOCs (``../shared/testdata`` or
  ``$COMPOSEFS_PY_TESTDATA``), whole or as a random subset of entries.

Hostile inputs (each mutator is named; ``must_reject=True`` keeps only those
the specification says a validator must refuse):

* :func:`hostile_tocs` -- path traversal, NUL, overlong names and targets,
  deep nesting, duplicate keys and paths, hardlink cycles and dangling
  targets, type confusion, bad base64, oversized xattrs, digest tricks,
  numeric edge values, bad times, chunk tricks and byte-level JSON corruption.
* :func:`hostile_dumpfiles` -- the same families for composefs-dump(5) text.
* :func:`hostile_tree_entries` -- ``(path, node)`` pairs that break one
  :class:`~composefs_py.model.TreeBuilder` invariant each.
* :func:`hostile_payloads` -- payload strings that are not object names
  (every length and shape, traversal aimed at given host paths);
  :func:`hostile_payload_fields` spells them as dumpfile fields and
  :func:`link_targets` gives symlink targets reaching given host paths.
* :func:`corrupted_blobs` -- byte-level and structure-aware (zstd:chunked and
  eStargz footer) corruption of a layer blob.

Every bound comes from :class:`~composefs_py.limits.Limits`, so the edge
values sit exactly on both sides of what the validators accept.

Hypothesis is installed only with the ``fuzz`` extra
(``pip install 'composefs-py[fuzz]'``); this is the one module of the package
that imports it, and without it importing this module says so.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import itertools
import json
import os
import random
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, TypeAlias

try:
    from hypothesis import strategies as st
except ImportError as exc:  # the package itself runs without Hypothesis
    raise ModuleNotFoundError(
        "composefs_py.strategies needs Hypothesis, which composefs-py installs only with "
        "its fuzz extra: pip install 'composefs-py[fuzz]'",
        name="hypothesis",
    ) from exc

from .limits import LCFS_INLINE_CONTENT_MAX, Limits
from .model import ROOT, Hardlink, Inode, Node, Tree, TreeBuilder, is_object_name, name_of

__all__ = [
    "HOSTILE_DUMPFILE_MUTATIONS",
    "HOSTILE_TOC_MUTATIONS",
    "TOC_XATTR_PREFIXES",
    "Mutation",
    "corrupted_blobs",
    "dumpfile_cases",
    "dumpfiles",
    "hostile_dumpfiles",
    "hostile_payload_fields",
    "hostile_payloads",
    "hostile_toc_cases",
    "hostile_tocs",
    "hostile_tree_entries",
    "inodes",
    "is_object_name",
    "link_targets",
    "names",
    "real_toc_paths",
    "render_dumpfile",
    "render_json",
    "seeded_tocs",
    "testdata_dir",
    "toc_cases",
    "tocs",
    "tree_to_toc",
    "trees",
]

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1
#: RFC 3339 as Go writes it covers years 0001..9999.
RFC3339_MIN = -62135596800  # 0001-01-01T00:00:00Z
RFC3339_MAX = 253402300799  # 9999-12-31T23:59:59Z
#: The xattr name prefixes a TOC may use (DESIGN.md section 4).
TOC_XATTR_PREFIXES = (
    b"user.",
    b"trusted.",
    b"security.",
)
TOC_XATTR_EXACT = (b"system.posix_acl_access", b"system.posix_acl_default")
_DEFAULT_LIMITS = Limits()

Draw: TypeAlias = st.DrawFn


# ---------------------------------------------------------------------------
# names and inodes
# ---------------------------------------------------------------------------

# Ordinary bytes, bytes composefs-dump(5) must escape, and non-UTF-8 bytes.
_PLAIN = b"abcdefxyz0123456789._-+~ABCZ"
_AWKWARD = b" \n\t\r\\=@-#%&'\"*:;?[]{}\x01\x1b\x7f"
_UTF8 = ["\u00e9", "\u00dc", "\u4e2d", "\U0001f600", "\u200b"]
_NON_UTF8 = [b"\xff", b"\xc3", b"\x80", b"\xed\xa0\x80"]


@cache
def _edge_ints(low: int, high: int, *extra: int) -> st.SearchStrategy[int]:
    """Integers in ``low..high``, with the bounds and a few edges weighted up."""
    edges = sorted({v for v in (low, low + 1, high - 1, high, 0, 1, *extra) if low <= v <= high})
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


_NAME_PIECES = [bytes([c]) for c in _PLAIN] + [c.encode() for c in _UTF8]
_NAME_PIECES += [bytes([c]) for c in _AWKWARD]
_NAME_BODY_UTF8 = st.lists(st.sampled_from(_NAME_PIECES), min_size=1, max_size=10).map(b"".join)
_NAME_BODY_ANY = st.lists(st.sampled_from(_NAME_PIECES + _NON_UTF8), min_size=1, max_size=10).map(
    b"".join
)
_NAME_SPECIAL = st.sampled_from([b"-", b"...", b"@", b".hidden", b"a b", b"=", b"\\"])
_KIND20 = st.integers(0, 19)


@st.composite
def names(draw: Draw, *, utf8_only: bool = False, limits: Limits | None = None) -> bytes:
    """One path component: never empty, ``.``, ``..``, no ``/`` or NUL.

    Includes bytes that need escaping in a dumpfile, multi-byte UTF-8, and
    (unless ``utf8_only``) invalid UTF-8; now and then the longest allowed name.
    """
    limits = limits or _DEFAULT_LIMITS
    kind = draw(_KIND20)
    if kind == 0:
        name = b"n" * limits.max_name_bytes
    elif kind == 1:
        name = draw(_NAME_SPECIAL)
    else:
        name = draw(_NAME_BODY_UTF8 if utf8_only else _NAME_BODY_ANY)[: limits.max_name_bytes]
    if utf8_only:
        name = name.decode("utf-8", "ignore").encode()
    if not name or name in (b".", b".."):
        name += b"x"
    return name


_BARE_PREFIXES = frozenset((b"user.", b"trusted.", b"security.", b"lustre."))
_TOC_XATTR_PREFIX = st.sampled_from([*TOC_XATTR_PREFIXES, *TOC_XATTR_EXACT])
_ANY_XATTR_PREFIX = st.sampled_from([*TOC_XATTR_PREFIXES, b"system.", b"os2.", b""])
#: overlayfs's own namespaces: drawn only where ``Limits.allow_overlay_xattrs``.
_OVERLAY_XATTR_PREFIX = st.sampled_from([b"trusted.overlay.", b"user.overlay."])
_TOC_XATTR_REST = st.lists(
    st.sampled_from(list(b"abcdefgxyz0123456789._-")), min_size=1, max_size=12
).map(bytes)
_ANY_XATTR_REST = st.lists(st.sampled_from(list(b"abcdefgxyz0123456789._-=\\ ")), max_size=12).map(
    bytes
)
_KIND31 = st.integers(0, 30)
_KIND10 = st.integers(0, 9)
_SEEDS = st.integers(0, U32_MAX)
_SMALL_VALUE = st.binary(max_size=64)
_FILL_BYTE = st.sampled_from([b"v", b"\0", b"\xff", b"="])


def _xattr_name(draw: Draw, toc: bool, limits: Limits) -> bytes:
    prefix = draw(_TOC_XATTR_PREFIX if toc else _ANY_XATTR_PREFIX)
    if limits.allow_overlay_xattrs and draw(_KIND10) == 0:
        prefix = draw(_OVERLAY_XATTR_PREFIX)
    if prefix in TOC_XATTR_EXACT:
        return prefix
    rest = draw(_TOC_XATTR_REST if toc else _ANY_XATTR_REST)
    if toc:
        # parse_toc wants a name after the prefix and no trailing dot.
        rest = b"k" + rest.rstrip(b".")
    if draw(_KIND31) == 0:
        rest = b"x" * (limits.max_xattr_name_bytes - len(prefix))
    name = prefix + rest
    if name in _BARE_PREFIXES:
        name += b"x"  # a bare namespace prefix is no name (the image loses it)
    return name[: limits.max_xattr_name_bytes] or b"x"


def _acl(perms: tuple[int, int, int], users: tuple[tuple[int, int], ...]) -> bytes:
    """A ``system.posix_acl_*`` value (``posix_acl_xattr_header`` version 2)."""
    entry = struct.Struct("<HHI")
    out = [struct.pack("<I", 2), entry.pack(0x01, perms[0], 0xFFFFFFFF)]
    out += [entry.pack(0x02, perm, uid) for uid, perm in sorted(users)]
    out.append(entry.pack(0x04, perms[1], 0xFFFFFFFF))
    if users:
        out.append(entry.pack(0x10, 7, 0xFFFFFFFF))  # ACL_MASK
    out.append(entry.pack(0x20, perms[2], 0xFFFFFFFF))
    return b"".join(out)


_PERM = st.integers(0, 7)
_POSIX_ACLS = st.builds(
    _acl,
    st.tuples(_PERM, _PERM, _PERM),
    st.lists(
        st.tuples(st.integers(0, U32_MAX - 1), _PERM), max_size=3, unique_by=lambda u: u[0]
    ).map(tuple),
)


def _xattrs(draw: Draw, toc: bool, limits: Limits) -> tuple[tuple[bytes, bytes], ...]:
    count = draw(_edge_ints(0, 4))
    chosen: dict[bytes, bytes] = {}
    for _ in range(count):
        name = _xattr_name(draw, toc, limits)
        if name in TOC_XATTR_EXACT:
            # The kernel parses POSIX ACLs: give it a well-formed one.
            chosen[name] = draw(_POSIX_ACLS)
            continue
        if draw(_KIND10) == 0:
            # Close to the per-inode space: the largest value that still fits alone.
            size = limits.max_xattr_space - 12 - 7 - len(name) - draw(_edge_ints(0, 3))
            value = draw(_FILL_BYTE) * max(size, 0)
        else:
            value = draw(_SMALL_VALUE)
        chosen[name] = value
    pairs = tuple(sorted(chosen.items()))
    # Drop the largest values until the set fits the inode's xattr space.
    while pairs and Limits.xattr_space(pairs) > limits.max_xattr_space:
        biggest = max(range(len(pairs)), key=lambda i: len(pairs[i][1]))
        pairs = pairs[:biggest] + pairs[biggest + 1 :]
    return pairs


def _payload_from_digest(digest_hex: str) -> bytes:
    return f"{digest_hex[:2]}/{digest_hex[2:]}".encode()


_FILE_TYPES = st.sampled_from(
    [
        stat.S_IFREG,
        stat.S_IFDIR,
        stat.S_IFLNK,
        stat.S_IFCHR,
        stat.S_IFBLK,
        stat.S_IFIFO,
        stat.S_IFSOCK,
    ]
)
_TOC_FILE_TYPES = st.sampled_from(
    [stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO]
)
_REG_STYLES = st.sampled_from(["empty", "payload", "inline", "bare"])
_SEED_BYTES = st.binary(min_size=1, max_size=8)
_DIGEST_BYTES = st.binary(min_size=32, max_size=32)
_INLINE_CONTENT = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.sampled_from([b"\0" * LCFS_INLINE_CONTENT_MAX, b"x" * 4096]),
)


@st.composite
def inodes(
    draw: Draw,
    file_type: int | None = None,
    *,
    toc_compatible: bool = False,
    max_rdev: int = U32_MAX,
    limits: Limits | None = None,
) -> Inode:
    """A valid :class:`Inode` (``nlink`` 1; the tree builder fixes directories').

    ``toc_compatible`` keeps to what a TOC can say: no inline content, no
    fs-verity digest, payload named by a sha256 digest, uid/gid up to
    2^32-2, times within RFC 3339, known xattr prefixes, no sockets.
    """
    limits = limits or _DEFAULT_LIMITS
    if file_type is not None:
        ftype = file_type
    else:
        ftype = draw(_TOC_FILE_TYPES if toc_compatible else _FILE_TYPES)
    perms = draw(_edge_ints(0, 0o7777, 0o755, 0o644, 0o4755, 0o1777))
    id_max = U32_MAX - 1 if toc_compatible else U32_MAX
    uid = draw(_edge_ints(0, id_max, 1000, 65534))
    gid = draw(_edge_ints(0, id_max, 1000, 65534))
    if toc_compatible:
        mtime = draw(_edge_ints(RFC3339_MIN, RFC3339_MAX, 1_700_000_000))
    else:
        mtime = draw(_edge_ints(I64_MIN, I64_MAX, -1, 1_700_000_000, U32_MAX, 1 << 32))
    mtime_nsec = draw(_edge_ints(0, 999_999_999, 500_000_000))
    fields: dict[str, Any] = {
        "mode": ftype | perms,
        "uid": uid,
        "gid": gid,
        "mtime": mtime,
        "mtime_nsec": mtime_nsec,
    }
    if ftype == stat.S_IFREG:
        style = draw(_REG_STYLES)
        if toc_compatible and style in ("inline", "bare"):
            style = "payload"
        if style == "payload":
            size = draw(_edge_ints(1, limits.max_file_size, 4096, 1 << 32))
            if toc_compatible:
                digest_hex = hashlib.sha256(draw(_SEED_BYTES)).hexdigest()
                fields["payload"] = _payload_from_digest(digest_hex)
            else:
                fields["payload"] = draw(_payloads(limits))
                if draw(st.booleans()):
                    fields["fsverity_digest"] = draw(_DIGEST_BYTES)
            fields["size"] = size
        elif style == "inline":
            content = draw(_INLINE_CONTENT)[: limits.max_inline_bytes]
            fields["content"] = content
            fields["size"] = len(content)
            if draw(st.booleans()):
                fields["fsverity_digest"] = hashlib.sha256(content).digest()
        elif style == "bare":
            fields["size"] = draw(_edge_ints(0, limits.max_file_size))
    elif ftype == stat.S_IFLNK:
        fields["symlink_target"] = draw(_symlink_targets(limits, utf8_only=toc_compatible))
    elif ftype in (stat.S_IFCHR, stat.S_IFBLK):
        if toc_compatible:
            major = draw(_edge_ints(0, 4095, 1, 7))
            minor = draw(_edge_ints(0, 0xFFFFF, 3))
            fields["rdev"] = os.makedev(major, minor)
        else:
            fields["rdev"] = draw(_edge_ints(0, max_rdev, os.makedev(1, 3), U32_MAX))
    fields["xattrs"] = _xattrs(draw, toc_compatible, limits)
    return Inode(**fields)


@cache
def _payloads(limits: Limits) -> st.SearchStrategy[bytes]:
    """Object names; any other payload only where ``limits`` allow foreign payloads."""
    digest_named = st.binary(min_size=32, max_size=32).map(lambda d: _payload_from_digest(d.hex()))
    if not limits.allow_foreign_payloads:
        return digest_named
    odd = st.binary(min_size=1, max_size=min(80, limits.max_path_bytes)).map(
        lambda b: b.replace(b"\0", b"_")
    )
    longest = st.just(b"p" * limits.max_path_bytes)
    return st.one_of(digest_named, odd, longest)


@cache
def _symlink_targets(limits: Limits, *, utf8_only: bool) -> st.SearchStrategy[bytes]:
    plain = st.sampled_from([b"/", b"..", b"../usr/lib/os-release", b"a", b"-", b"/etc/passwd"])
    built = st.lists(names(utf8_only=utf8_only, limits=limits), min_size=1, max_size=4).map(
        lambda parts: b"/".join(parts)[: limits.max_symlink_bytes]
    )
    longest = st.just(b"t" * limits.max_symlink_bytes)
    return st.one_of(plain, built, longest)


# ---------------------------------------------------------------------------
# trees
# ---------------------------------------------------------------------------


def _join(parent: bytes, name: bytes) -> bytes:
    return (b"" if parent == ROOT else parent) + b"/" + name


@st.composite
def trees(
    draw: Draw,
    *,
    max_entries: int = 20,
    toc_compatible: bool = False,
    hardlinks: bool = True,
    max_depth: int = 6,
    max_rdev: int = U32_MAX,
    limits: Limits | None = None,
) -> Tree:
    """A valid :class:`Tree` of up to ``max_entries`` entries below the root.

    With ``toc_compatible`` it is exactly what ``parse_toc`` returns for
    :func:`tree_to_toc` of it: non-directory link counts are one plus the
    hardlinks to them, names are UTF-8.  Now and then the tree is one deep
    chain of directories instead (up to the path-length limit).
    """
    limits = limits or _DEFAULT_LIMITS
    builder = TreeBuilder(limits)
    builder.add(ROOT, draw(inodes(stat.S_IFDIR, toc_compatible=toc_compatible, limits=limits)))
    if draw(st.integers(0, 24)) == 0:
        # A deep chain: 1-byte names, as deep as the path length allows.
        depth = draw(st.sampled_from([64, 512, (limits.max_path_bytes - 2) // 2]))
        depth = min(depth, limits.max_depth - 1)  # the file goes one deeper
        path = ROOT
        for _ in range(depth):
            path = _join(path, b"d")
            builder.add(path, Inode(mode=stat.S_IFDIR | 0o755))
        builder.add(_join(path, b"f"), Inode(mode=stat.S_IFREG | 0o644))
        return builder.build()
    dirs = [ROOT]
    linkable: list[bytes] = []
    link_counts: dict[bytes, int] = {}
    n = draw(st.integers(0, max_entries))
    for _ in range(n):
        parent = draw(st.sampled_from(dirs))
        path = _join(parent, draw(names(utf8_only=toc_compatible, limits=limits)))
        if (
            path in builder
            or len(path) > limits.max_path_bytes
            or path.count(b"/") > min(limits.max_depth, max_depth)
            or (toc_compatible and name_of(path).startswith(b".wh."))
        ):
            continue
        if hardlinks and linkable and draw(st.integers(0, 5)) == 0:
            target = draw(st.sampled_from(linkable))
            builder.add(path, Hardlink(target))
            link_counts[target] = link_counts.get(target, 0) + 1
            continue
        node = draw(inodes(toc_compatible=toc_compatible, max_rdev=max_rdev, limits=limits))
        if not toc_compatible and not node.is_dir:
            node = replace(node, nlink=draw(_edge_ints(1, U32_MAX, 2)))
        builder.add(path, node)
        if node.is_dir:
            dirs.append(path)
        else:
            linkable.append(path)
    tree = builder.build()
    if toc_compatible and link_counts:
        rebuilt = TreeBuilder(limits, count_hardlinks=True)
        for path, entry in tree:
            rebuilt.add(path, entry)
        tree = rebuilt.build()
    return tree


# ---------------------------------------------------------------------------
# JSON rendering with full control (duplicate keys, raw tokens)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Raw:
    """A JSON token written verbatim (``NaN``, ``1e400``, ``-0``, ``01``...)."""

    text: str


@dataclass(frozen=True, slots=True)
class Pairs:
    """A JSON object as ordered ``(key, value)`` pairs; keys may repeat."""

    items: tuple[tuple[str, Any], ...]


def render_json(value: Any, *, indent: int | None = None, ensure_ascii: bool = False) -> bytes:
    """Serialize ``value`` to UTF-8 JSON bytes; :class:`Raw` and :class:`Pairs` allowed.

    Strings may hold lone surrogates (written as ``\\udXXX`` escapes).
    """
    out: list[str] = []
    _render(value, out, indent, 0, ensure_ascii)
    return "".join(out).encode("utf-8", "surrogatepass")


def _render(value: Any, out: list[str], indent: int | None, level: int, ascii_: bool) -> None:
    nl = "" if indent is None else "\n" + " " * (indent * (level + 1))
    end = "" if indent is None else "\n" + " " * (indent * level)
    sep = ", " if indent is None else ","
    if isinstance(value, Raw):
        out.append(value.text)
    elif isinstance(value, str):
        out.append(_json_string(value, ascii_))
    elif value is None or isinstance(value, bool | int | float):
        out.append(json.dumps(value))
    elif isinstance(value, dict | Pairs):
        items = value.items if isinstance(value, Pairs) else tuple(value.items())
        if not items:
            out.append("{}")
            return
        out.append("{")
        for i, (key, item) in enumerate(items):
            if i:
                out.append(sep)
            out.append(nl)
            out.append(_json_string(key, ascii_))
            out.append(": ")
            _render(item, out, indent, level + 1, ascii_)
        out.append(end + "}")
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(sep)
            out.append(nl)
            _render(item, out, indent, level + 1, ascii_)
        out.append(end + "]")
    else:
        raise TypeError(f"cannot render {type(value).__name__} as JSON")


def _json_string(text: str, ascii_: bool) -> str:
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return json.dumps(text, ensure_ascii=True)
    return json.dumps(text, ensure_ascii=ascii_)


# ---------------------------------------------------------------------------
# TOCs
# ---------------------------------------------------------------------------


def _rfc3339(sec: int, nsec: int, offset_minutes: int = 0) -> str:
    tz = _dt.timezone(_dt.timedelta(minutes=offset_minutes))
    moment = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(seconds=sec)
    local = moment.astimezone(tz) if offset_minutes else moment
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if len(text.split("-")[0]) < 4:  # strftime does not pad years < 1000 everywhere
        text = f"{local.year:04d}" + text[text.index("-") :]
    if nsec:
        text += "." + f"{nsec:09d}".rstrip("0")
    if offset_minutes:
        sign = "+" if offset_minutes > 0 else "-"
        hours, minutes = divmod(abs(offset_minutes), 60)
        text += f"{sign}{hours:02d}:{minutes:02d}"
    else:
        text += "Z"
    return text


_TOC_TYPES = {
    stat.S_IFREG: "reg",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
}


def _toc_name(path: bytes, is_dir: bool, style: int) -> str:
    name = path.decode("utf-8")[1:]
    if path == ROOT:
        return ["./", ".", "/", ""][style % 4]
    if is_dir and style % 2 == 0:
        name += "/"
    if style % 3 == 1:
        name = "./" + name
    return name


@st.composite
def tree_to_toc(
    draw: Draw, tree: Tree, *, flavour: str | None = None, omit_synthetic: bool = True
) -> dict[str, Any]:
    """A TOC document (as JSON-ready Python objects) that describes ``tree``.

    ``tree`` must come from ``trees(toc_compatible=True)``.  The entries are
    shuffled; directories whose attributes equal those containers/storage
    synthesizes may be left out; regular files may be split into chunk
    entries.  ``flavour`` is ``"zstd:chunked"`` or ``"estargz"`` (drawn when
    None).
    """
    flavour = flavour or draw(st.sampled_from(["zstd:chunked", "estargz"]))
    synthetic = Inode(mode=stat.S_IFDIR | 0o755)
    groups: list[list[dict[str, Any]]] = []
    for path, node in tree:
        if isinstance(node, Hardlink):
            target = tree.inode(node.target)
            entry: dict[str, Any] = {
                "type": "hardlink",
                "name": _toc_name(path, False, draw(st.integers(0, 5))),
                "linkName": node.target.decode("utf-8")[1:],
                "mode": target.mode & 0o7777,
            }
            groups.append([entry])
            continue
        is_dir = node.is_dir
        if (
            is_dir
            and omit_synthetic
            and replace(node, nlink=1) == synthetic
            and draw(st.booleans())
        ):
            continue
        style = draw(st.integers(0, 5))
        entry = {"type": _TOC_TYPES[node.file_type], "name": _toc_name(path, is_dir, style)}
        mode = node.mode & 0o7777
        entry["mode"] = node.mode if draw(st.integers(0, 4)) == 0 else mode
        for key, value in (("uid", node.uid), ("gid", node.gid)):
            if value or draw(st.integers(0, 3)) == 0:
                entry[key] = value
        if node.file_type == stat.S_IFREG and node.size:
            entry["size"] = node.size
        if node.mtime or node.mtime_nsec or draw(st.booleans()):
            if flavour == "estargz" and node.mtime_nsec == 0:
                entry["modtime"] = _rfc3339(node.mtime, 0)
            else:
                entry["modtime"] = _rfc3339(node.mtime, node.mtime_nsec)
            if flavour == "zstd:chunked" and draw(st.booleans()):
                entry["accesstime"] = _rfc3339(draw(_edge_ints(0, RFC3339_MAX)), 0)
                entry["changetime"] = entry["modtime"]
        if node.symlink_target is not None:
            entry["linkName"] = node.symlink_target.decode("utf-8")
        if node.file_type in (stat.S_IFCHR, stat.S_IFBLK):
            major, minor = os.major(node.rdev), os.minor(node.rdev)
            if major or draw(st.booleans()):
                entry["devMajor"] = major
            if minor or draw(st.booleans()):
                entry["devMinor"] = minor
        if node.xattrs:
            entry["xattrs"] = {
                name.decode(): base64.b64encode(value).decode() for name, value in node.xattrs
            }
        group = [entry]
        if node.payload is not None:
            digest = "sha256:" + node.payload.decode().replace("/", "")
            entry["digest"] = digest
            entry["offset"] = draw(_edge_ints(0, I64_MAX - (1 << 20)))
            if flavour == "zstd:chunked":
                entry["endOffset"] = entry["offset"] + draw(st.integers(0, 1 << 20))
            else:
                entry["chunkDigest"] = digest
            if node.size > 1 and draw(st.integers(0, 3)) == 0:
                group += _chunks(draw, entry, node.size, flavour)
        elif node.file_type == stat.S_IFREG and flavour == "estargz":
            entry["digest"] = "sha256:" + hashlib.sha256(b"").hexdigest()
        groups.append(group)
    order = draw(st.permutations(range(len(groups))))
    entries = [e for i in order for e in groups[i]]
    doc: dict[str, Any] = {"version": 1, "entries": entries}
    if flavour == "zstd:chunked" and draw(st.booleans()):
        doc["tarSplitDigest"] = "sha256:" + hashlib.sha256(b"ts").hexdigest()
    return doc


def _chunks(draw: Draw, entry: dict[str, Any], size: int, flavour: str) -> list[dict[str, Any]]:
    count = draw(st.integers(2, 4))
    cuts = sorted(set(draw(st.lists(st.integers(1, size - 1), min_size=1, max_size=count - 1))))
    bounds = [0, *cuts, size]
    chunk_digest = "sha256:" + hashlib.sha256(b"chunk").hexdigest()
    entry["chunkSize"] = bounds[1] - bounds[0]
    entry["chunkDigest"] = chunk_digest
    out = []
    for start, stop in itertools.pairwise(bounds[1:]):
        chunk: dict[str, Any] = {
            "type": "chunk",
            "name": entry["name"],
            "offset": entry["offset"],
            "chunkOffset": start,
            "chunkSize": stop - start,
            "chunkDigest": chunk_digest,
        }
        if flavour == "estargz" and stop == size:
            del chunk["chunkSize"]
        out.append(chunk)
    return out


@st.composite
def toc_cases(
    draw: Draw, *, max_entries: int = 16, limits: Limits | None = None
) -> tuple[bytes, Tree]:
    """``(toc_json, tree)``: a valid TOC and the Tree ``parse_toc`` must return."""
    tree = draw(trees(max_entries=max_entries, toc_compatible=True, limits=limits))
    doc = draw(tree_to_toc(tree))
    indent = draw(st.sampled_from([None, None, 1, 2]))
    return render_json(doc, indent=indent, ensure_ascii=draw(st.booleans())), tree


def tocs(*, max_entries: int = 16, limits: Limits | None = None) -> st.SearchStrategy[bytes]:
    """Valid TOC JSON documents (bytes)."""
    return toc_cases(max_entries=max_entries, limits=limits).map(lambda case: case[0])


def testdata_dir() -> Path | None:
    """Folder with the real layers (``$COMPOSEFS_PY_TESTDATA``, else ``../shared/testdata``)."""
    env = os.environ.get("COMPOSEFS_PY_TESTDATA")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parent.parent
    candidates += [repo.parent / "shared" / "testdata", repo / "tests" / "data"]
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.toc.json")):
            return candidate
    return None


def real_toc_paths() -> list[Path]:
    """The real layers' decoded TOCs (``*.toc.json``), sorted; empty when absent."""
    folder = testdata_dir()
    return sorted(folder.glob("*.toc.json")) if folder else []


@cache
def _real_toc_docs() -> tuple[bytes, ...]:
    return tuple(p.read_bytes() for p in real_toc_paths())


@st.composite
def seeded_tocs(draw: Draw) -> bytes:
    """A real layer's TOC, whole or a random subset of its entries (still valid).

    Subsets keep every ``chunk`` entry with its file and drop hardlinks whose
    target was dropped, so the result is still a valid TOC.
    """
    docs = _real_toc_docs()
    if not docs:
        return draw(tocs())
    raw = draw(st.sampled_from(docs))
    if draw(st.booleans()):
        return raw
    doc = json.loads(raw)
    entries: list[dict[str, Any]] = doc["entries"]
    groups: list[list[dict[str, Any]]] = []
    for entry in entries:
        if entry.get("type") == "chunk" and groups:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    keep = draw(st.lists(st.booleans(), min_size=len(groups), max_size=len(groups)))
    kept = [g for g, k in zip(groups, keep, strict=True) if k]
    kept_names = {g[0]["name"].rstrip("/") for g in kept}
    kept = [g for g in kept if g[0].get("type") != "hardlink" or g[0].get("linkName") in kept_names]
    doc["entries"] = [e for g in kept for e in g]
    return render_json(doc, indent=draw(st.sampled_from([None, 1])))


# ---------------------------------------------------------------------------
# dumpfiles
# ---------------------------------------------------------------------------

_MUST_ESCAPE = frozenset(b" \n\r\t\\") | frozenset(range(0x21)) | frozenset(range(0x7F, 0x100))


def _escape(value: bytes, rnd: random.Random | None, *, equals: bool = False) -> str:
    """Escape ``value`` for a dumpfile field; with ``rnd``, choose among valid spellings."""
    out: list[str] = []
    for byte in value:
        must = byte in _MUST_ESCAPE or (equals and byte == 0x3D)
        spelled = None
        if rnd is not None and (must or rnd.random() < 0.06):
            choice = rnd.randrange(3)
            if choice == 0:
                spelled = f"\\x{byte:02X}"
            elif choice == 1 and byte in b"\\\n\r\t":
                spelled = {0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}[byte]
            elif choice == 2 and not must:
                spelled = f"\\x{byte:02x}"
        if spelled is None:
            spelled = f"\\x{byte:02x}" if must else chr(byte)
        out.append(spelled)
    text = "".join(out)
    if text == "-":
        text = "\\x2d"
    return text


def _optional(value: bytes | None, rnd: random.Random | None) -> str:
    if value is None:
        return "-"
    return _escape(value, rnd)


def render_dumpfile(
    tree: Tree, rnd: random.Random | None = None, *, final_newline: bool = True
) -> str:
    """composefs-dump(5) text for ``tree``.

    Without ``rnd`` the escapes are the minimal ones; with it, bytes are
    escaped at random with any valid spelling (``\\xHH`` in either case,
    ``\\\\``, ``\\n``, ``\\r``, ``\\t``) and xattrs come in random order.
    Hardlink lines repeat the target's fields, as composefs-info writes them.
    """
    lines: list[str] = []
    for path, node in tree:
        if isinstance(node, Hardlink):
            inode = tree.inode(path)
            mode = f"@{inode.mode:o}"
            payload = _escape(node.target, rnd)
            content = "-"
        else:
            inode = node
            mode = f"{inode.mode:o}"
            payload = _optional(
                inode.symlink_target if inode.file_type == stat.S_IFLNK else inode.payload, rnd
            )
            content = _optional(inode.content, rnd)
        size = len(inode.symlink_target or b"") if inode.file_type == stat.S_IFLNK else inode.size
        digest = inode.fsverity_digest.hex() if inode.fsverity_digest else "-"
        fields = [
            _escape(path, rnd),
            str(size),
            mode,
            str(inode.nlink),
            str(inode.uid),
            str(inode.gid),
            str(inode.rdev),
            f"{inode.mtime}.{inode.mtime_nsec}",
            payload,
            content,
            digest,
        ]
        xattrs = [
            f"{_escape(name, rnd, equals=True)}={_escape(value, rnd)}"
            for name, value in inode.xattrs
        ]
        if rnd is not None:
            rnd.shuffle(xattrs)
        lines.append(" ".join(fields + list(xattrs)))
    text = "\n".join(lines)
    if final_newline:
        text += "\n"
    return text


@st.composite
def dumpfile_cases(
    draw: Draw, *, max_entries: int = 20, limits: Limits | None = None
) -> tuple[str, Tree]:
    """``(dumpfile_text, tree)``: a valid dumpfile and the Tree it describes."""
    tree = draw(trees(max_entries=max_entries, limits=limits))
    # Per-byte spelling choices come from a seeded PRNG: one draw, not thousands.
    rnd = random.Random(draw(_SEEDS))
    return render_dumpfile(tree, rnd), tree


def dumpfiles(*, max_entries: int = 20, limits: Limits | None = None) -> st.SearchStrategy[str]:
    """Valid composefs-dump(5) texts."""
    return dumpfile_cases(max_entries=max_entries, limits=limits).map(lambda case: case[0])


# ---------------------------------------------------------------------------
# hostile mutations
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mutation:
    """A named way to break an input; ``must_reject``: the spec says it is invalid."""

    name: str
    apply: Callable[[Draw, Any], Any]
    must_reject: bool


def _pick_entry(draw: Draw, doc: dict[str, Any], *types: str) -> dict[str, Any] | None:
    entries = [
        e for e in doc["entries"] if isinstance(e, dict) and (not types or e.get("type") in types)
    ]
    if not entries:
        return None
    entry: dict[str, Any] = draw(st.sampled_from(entries))
    return entry


def _add_file(doc: dict[str, Any], name: str, **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "reg", "name": name, "mode": 0o644, **fields}
    doc["entries"].append(entry)
    return entry


_LIM = _DEFAULT_LIMITS


def _m_traversal(draw: Draw, doc: dict[str, Any]) -> Any:
    bad = draw(
        st.sampled_from(
            ["..", "../", "../etc/passwd", "a/../../b", "./..", "a/..", "/..", "x/../..", "../.."]
        )
    )
    field = draw(st.sampled_from(["name", "hardlink"]))
    if field == "hardlink":
        _add_file(doc, "t")
        doc["entries"].append({"type": "hardlink", "name": "h", "linkName": bad, "mode": 420})
    else:
        _add_file(doc, bad)
    return doc


def _m_nul(draw: Draw, doc: dict[str, Any]) -> Any:
    where = draw(st.sampled_from(["name", "symlink", "xattr", "hardlink"]))
    if where == "name":
        _add_file(doc, draw(st.sampled_from(["a\0b", "\0", "dir/\0", "a\0/b"])))
    elif where == "symlink":
        doc["entries"].append({"type": "symlink", "name": "s", "linkName": "a\0b", "mode": 511})
    elif where == "xattr":
        _add_file(doc, "x", xattrs={"user.a\0b": "dg=="})
    else:
        _add_file(doc, "t")
        doc["entries"].append({"type": "hardlink", "name": "h", "linkName": "t\0", "mode": 420})
    return doc


def _m_overlong(draw: Draw, doc: dict[str, Any]) -> Any:
    which = draw(st.sampled_from(["component", "path", "symlink", "xattr_name", "xattr_value"]))
    if which == "component":
        _add_file(doc, "n" * (_LIM.max_name_bytes + 1))
    elif which == "path":
        parts = (_LIM.max_path_bytes // 200) + 1
        _add_file(doc, "/".join(["p" * 199] * parts) + "/f")
    elif which == "symlink":
        doc["entries"].append(
            {"type": "symlink", "name": "s", "linkName": "t" * (_LIM.max_symlink_bytes + 1)}
        )
    elif which == "xattr_name":
        _add_file(doc, "x", xattrs={"user." + "n" * _LIM.max_xattr_name_bytes: "dg=="})
    else:
        value = base64.b64encode(b"v" * (_LIM.max_xattr_value_bytes + 1)).decode()
        _add_file(doc, "x", xattrs={"user.big": value})
    return doc


def _m_xattr_space(draw: Draw, doc: dict[str, Any]) -> Any:
    # Many values that are each fine but together exceed the inode's space.
    per = 4000
    count = _LIM.max_xattr_space // per + 2
    value = base64.b64encode(b"v" * per).decode()
    _add_file(doc, "x", xattrs={f"user.k{i}": value for i in range(count)})
    return doc


def _m_deep_path(draw: Draw, doc: dict[str, Any]) -> Any:
    depth = draw(st.sampled_from([_LIM.max_depth + 1, 5000]))
    _add_file(doc, "a/" * depth + "f")
    return doc


def _m_deep_json(draw: Draw, doc: dict[str, Any]) -> Any:
    depth = draw(st.sampled_from([_LIM.max_json_depth + 1, 1000, 100_000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    nested = Raw(opener * depth + "1" + closer * depth)
    target = _pick_entry(draw, doc)
    if target is None or draw(st.booleans()):
        doc["deep"] = nested
    else:
        target["xattrs"] = nested
    return doc


def _m_duplicate_key(draw: Draw, doc: dict[str, Any]) -> Any:
    entry = _pick_entry(draw, doc)
    if entry is None or draw(st.integers(0, 3)) == 0:
        key = draw(st.sampled_from(["version", "entries"]))
        items = [*doc.items()]
        items.append((key, doc[key]))
        return Pairs(tuple(items))
    key = draw(st.sampled_from(sorted(entry)))
    value = entry[key] if draw(st.booleans()) else _other_value(entry[key])
    index = doc["entries"].index(entry)
    doc["entries"][index] = Pairs((*entry.items(), (key, value)))
    return doc


def _other_value(value: Any) -> Any:
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, int) and not isinstance(value, bool):
        return value + 1
    return "x"


def _m_duplicate_path(draw: Draw, doc: dict[str, Any]) -> Any:
    entry = _pick_entry(draw, doc, "reg", "dir", "symlink", "fifo", "char", "block")
    if entry is None:
        _add_file(doc, "d", uid=1)
        _add_file(doc, "d", uid=2)
        return doc
    clone = dict(entry)
    change = draw(st.sampled_from(["uid", "type", "mode", "name_variant"]))
    if change == "uid":
        clone["uid"] = int(clone.get("uid", 0)) + 1
    elif change == "mode":
        clone["mode"] = (int(clone.get("mode", 0)) ^ 0o7) & 0o7777
    elif change == "type":
        clone["type"] = "fifo" if clone.get("type") != "fifo" else "dir"
        for key in ("size", "digest", "linkName", "devMajor", "devMinor", "chunkSize"):
            clone.pop(key, None)
    else:
        name = str(clone["name"])
        clone["name"] = "./" + name.rstrip("/") + ("/" if not name.endswith("/") else "")
        clone["uid"] = int(clone.get("uid", 0)) + 1
    doc["entries"].insert(draw(st.integers(0, len(doc["entries"]))), clone)
    return doc


def _m_hardlink(draw: Draw, doc: dict[str, Any]) -> Any:
    kind = draw(st.sampled_from(["cycle", "self", "dangling", "to_dir", "chain_cycle", "empty"]))
    entries = doc["entries"]
    if kind == "cycle":
        entries += [
            {"type": "hardlink", "name": "ha", "linkName": "hb", "mode": 420},
            {"type": "hardlink", "name": "hb", "linkName": "ha", "mode": 420},
        ]
    elif kind == "self":
        entries.append({"type": "hardlink", "name": "hs", "linkName": "hs", "mode": 420})
    elif kind == "dangling":
        entries.append({"type": "hardlink", "name": "hd", "linkName": "no/such/file", "mode": 420})
    elif kind == "to_dir":
        entries.append({"type": "dir", "name": "dd/", "mode": 493})
        entries.append({"type": "hardlink", "name": "hdir", "linkName": "dd/", "mode": 493})
    elif kind == "chain_cycle":
        entries += [
            {"type": "hardlink", "name": f"c{i}", "linkName": f"c{(i + 1) % 5}", "mode": 420}
            for i in range(5)
        ]
    else:
        entries.append({"type": "hardlink", "name": "he", "linkName": "", "mode": 420})
    return doc


_MINUS_ZERO = Raw("-0")
_CONFUSED: list[Any] = [
    True,
    False,
    None,
    1.5,
    "1",
    [],
    {},
    -1,
    Raw("1e3"),
    _MINUS_ZERO,
    Raw("1.0"),
]
_INT_KEYS = frozenset(("mode", "uid", "gid", "size", "devMajor", "devMinor", "offset", "chunkSize"))


def _m_type_confusion(draw: Draw, doc: dict[str, Any]) -> Any:
    where = draw(st.sampled_from(["field", "version", "entries", "entry", "top", "type"]))
    if where == "version":
        doc["version"] = draw(st.sampled_from([*_CONFUSED, 2, 0, Raw("1.0"), True]))
    elif where == "entries":
        doc["entries"] = draw(st.sampled_from([{}, "x", None, 1, True]))
    elif where == "entry":
        doc["entries"].insert(0, draw(st.sampled_from([[], "reg", 1, None, True])))
    elif where == "top":
        return draw(st.sampled_from([[doc], "toc", 1, None, True]))
    elif where == "type":
        entry = _pick_entry(draw, doc)
        if entry is None:
            entry = _add_file(doc, "f")
        entry["type"] = draw(st.sampled_from(["file", "REG", "", "socket", "whiteout", 1, None]))
    else:
        entry = _pick_entry(draw, doc)
        if entry is None:
            entry = _add_file(doc, "f")
        key = draw(
            st.sampled_from(
                [
                    "name",
                    "mode",
                    "uid",
                    "gid",
                    "size",
                    "modtime",
                    "devMajor",
                    "devMinor",
                    "xattrs",
                    "digest",
                    "linkName",
                    "offset",
                    "chunkSize",
                ]
            )
        )
        current = entry.get(key)
        choices = [v for v in _CONFUSED if type(v) is not type(current)]
        if key in _INT_KEYS:
            # JSON's -0 is the integer 0: a valid value of an integer field
            choices.remove(_MINUS_ZERO)
        entry[key] = draw(st.sampled_from(choices))
    return doc


def _m_base64(draw: Draw, doc: dict[str, Any]) -> Any:
    bad = draw(st.sampled_from(["!!!!", "abc", "YQ", "YQ===", "Y Q==", "-_-_", "YQ==\n", "\u00e9"]))
    entry = _pick_entry(draw, doc, "reg", "dir")
    if entry is None:
        entry = _add_file(doc, "f")
    entry["xattrs"] = {"user.bad": bad}
    return doc


def _m_xattr_name(draw: Draw, doc: dict[str, Any]) -> Any:
    bad = draw(st.sampled_from(["", "foo.bar", "user", "system.other", "nocolon", "os2.x"]))
    _add_file(doc, "xn", xattrs={bad: "dg=="})
    return doc


def _m_digest(draw: Draw, doc: dict[str, Any]) -> Any:
    hex64 = hashlib.sha256(b"d").hexdigest()
    bad = draw(
        st.sampled_from(
            [
                "sha256:" + hex64[:63],
                "sha256:" + hex64 + "0",
                "sha256:" + hex64.upper(),
                "sha512:" + hex64,
                "SHA256:" + hex64,
                "sha256:" + "../../../../etc/passwd".ljust(64, "a"),
                "sha256:" + "g" * 64,
                hex64,
                "sha256:",
                "",
                "sha256:" + hex64[:2] + "/" + hex64[3:],
            ]
        )
    )
    entry = _pick_entry(draw, doc, "reg")
    if entry is None or draw(st.booleans()):
        entry = _add_file(doc, "dg", size=10)
    entry["size"] = max(int(entry.get("size", 0) or 0), 1)
    entry["digest"] = bad
    return doc


def _m_missing_digest(draw: Draw, doc: dict[str, Any]) -> Any:
    _add_file(doc, "nodigest", size=draw(st.integers(1, 1 << 40)))
    return doc


_NUMERIC_EDGES: list[Any] = [
    -1,
    U32_MAX,
    1 << 32,
    1 << 63,
    U64_MAX,
    1 << 64,
    -(1 << 63) - 1,
    Raw("1" + "0" * 400),
    Raw("1e400"),
    Raw("-1e400"),
    Raw("0x10"),
    Raw("01"),
    Raw("1E2"),
]


def _m_numeric(draw: Draw, doc: dict[str, Any]) -> Any:
    key = draw(st.sampled_from(["uid", "gid", "size", "mode", "devMajor", "devMinor"]))
    value = draw(st.sampled_from(_NUMERIC_EDGES))
    if key in ("devMajor", "devMinor"):
        entry: dict[str, Any] = {"type": "char", "name": "cdev", "mode": 0o600}
        doc["entries"].append(entry)
    else:
        entry = _add_file(doc, "num")
    entry[key] = value
    return doc


def _m_bad_mode(draw: Draw, doc: dict[str, Any]) -> Any:
    value = draw(
        st.sampled_from(
            [stat.S_IFDIR | 0o644, 0o170000 | 0o644, 0o10000000, 1 << 16, stat.S_IFLNK | 0o777]
        )
    )
    _add_file(doc, "badmode")["mode"] = value
    return doc


def _m_device_fields(draw: Draw, doc: dict[str, Any]) -> Any:
    which = draw(st.sampled_from(["on_reg", "on_dir", "size_on_dir", "size_on_link"]))
    if which == "on_reg":
        _add_file(doc, "r", devMajor=1, devMinor=3)
    elif which == "on_dir":
        doc["entries"].append({"type": "dir", "name": "dv/", "mode": 493, "devMajor": 8})
    elif which == "size_on_dir":
        doc["entries"].append({"type": "dir", "name": "ds/", "mode": 493, "size": 10})
    else:
        doc["entries"].append(
            {"type": "symlink", "name": "ls", "linkName": "x", "mode": 511, "size": 5}
        )
    return doc


def _m_symlink(draw: Draw, doc: dict[str, Any]) -> Any:
    entry: dict[str, Any] = {"type": "symlink", "name": "sl", "mode": 511}
    if draw(st.booleans()):
        entry["linkName"] = ""
    doc["entries"].append(entry)
    return doc


def _m_parent(draw: Draw, doc: dict[str, Any]) -> Any:
    kind = draw(st.sampled_from(["file", "symlink", "fifo"]))
    if kind == "file":
        _add_file(doc, "pf")
    elif kind == "symlink":
        doc["entries"].append({"type": "symlink", "name": "pf", "linkName": "/", "mode": 511})
    else:
        doc["entries"].append({"type": "fifo", "name": "pf", "mode": 420})
    _add_file(doc, "pf/child")
    return doc


def _m_time(draw: Draw, doc: dict[str, Any]) -> Any:
    bad = draw(
        st.sampled_from(
            [
                "2026-13-01T00:00:00Z",
                "2026-02-30T00:00:00Z",
                "not a time",
                "2026-11-28T07:12:52.1234567890Z",
                "2026-11-28 07:12:52Z",
                "10000-01-01T00:00:00Z",
                "2026-11-28T25:00:00Z",
                "2026-11-28T07:12:52",
                "2026-11-28T07:12:52.Z",
                "",
            ]
        )
    )
    key = draw(st.sampled_from(["modtime", "accesstime", "changetime"]))
    _add_file(doc, "tm")[key] = bad
    return doc


def _m_chunk(draw: Draw, doc: dict[str, Any]) -> Any:
    kind = draw(st.sampled_from(["orphan", "other_name", "after_dir"]))
    chunk = {"type": "chunk", "name": "zz", "offset": 0, "chunkOffset": 10, "chunkSize": 5}
    if kind == "orphan":
        doc["entries"].insert(0, chunk)
    elif kind == "other_name":
        _add_file(doc, "yy", size=20, digest="sha256:" + hashlib.sha256(b"y").hexdigest())
        doc["entries"].append(chunk)
    else:
        doc["entries"].append({"type": "dir", "name": "zz/", "mode": 493})
        doc["entries"].append(chunk)
    return doc


def _m_version(draw: Draw, doc: dict[str, Any]) -> Any:
    choice = draw(st.sampled_from(["missing", "two", "zero", "string", "no_entries"]))
    if choice == "missing":
        del doc["version"]
    elif choice == "no_entries":
        del doc["entries"]
    else:
        doc["version"] = {"two": 2, "zero": 0, "string": "1"}[choice]
    return doc


def _m_surrogate(draw: Draw, doc: dict[str, Any]) -> Any:
    bad = draw(st.sampled_from(["\ud800", "a\udcff", "\udfff\ud800"]))
    where = draw(st.sampled_from(["name", "linkName", "xattr"]))
    if where == "name":
        _add_file(doc, bad)
    elif where == "linkName":
        doc["entries"].append({"type": "symlink", "name": "sg", "linkName": bad, "mode": 511})
    else:
        _add_file(doc, "sx", xattrs={"user." + bad: "dg=="})
    return doc


def _m_acl(draw: Draw, doc: dict[str, Any]) -> Any:
    # Malformed POSIX ACLs: a mounted image makes such a directory unreadable
    # (EINVAL) when the access ACL is bad.  Not (yet) required to be rejected.
    value = draw(st.sampled_from([b"", b"\0", b"garbage", b"\x02\0\0\0\x01\0", b"\x01\0\0\0"]))
    name = draw(st.sampled_from(TOC_XATTR_EXACT)).decode()
    entry = {
        "type": "dir",
        "name": "acl/",
        "mode": 0o755,
        "xattrs": {name: base64.b64encode(value).decode()},
    }
    doc["entries"].append(entry)
    return doc


def _m_identity(draw: Draw, doc: dict[str, Any]) -> Any:
    return doc


#: Document-level TOC mutations (before rendering to JSON).
HOSTILE_TOC_MUTATIONS: tuple[Mutation, ...] = (
    Mutation("path-traversal", _m_traversal, True),
    Mutation("nul", _m_nul, True),
    Mutation("overlong", _m_overlong, True),
    Mutation("xattr-space", _m_xattr_space, True),
    Mutation("deep-path", _m_deep_path, True),
    Mutation("deep-json", _m_deep_json, True),
    Mutation("duplicate-key", _m_duplicate_key, True),
    Mutation("duplicate-path", _m_duplicate_path, True),
    Mutation("hardlink", _m_hardlink, True),
    Mutation("type-confusion", _m_type_confusion, True),
    Mutation("bad-base64", _m_base64, True),
    Mutation("xattr-name", _m_xattr_name, True),
    Mutation("digest", _m_digest, True),
    Mutation("missing-digest", _m_missing_digest, True),
    Mutation("numeric-edge", _m_numeric, True),
    Mutation("bad-mode", _m_bad_mode, True),
    Mutation("device-fields", _m_device_fields, True),
    Mutation("symlink-target", _m_symlink, True),
    Mutation("non-dir-parent", _m_parent, True),
    Mutation("bad-time", _m_time, True),
    Mutation("chunk", _m_chunk, True),
    Mutation("version", _m_version, True),
    Mutation("surrogate", _m_surrogate, True),
    Mutation("malformed-acl", _m_acl, False),
    Mutation("none", _m_identity, False),
)


def _byte_corruption(draw: Draw, data: bytes) -> bytes:
    """Flip, drop, insert, truncate, splice tokens, append garbage."""
    kind = draw(
        st.sampled_from(
            [
                "flip",
                "truncate",
                "insert",
                "delete",
                "token",
                "trailing",
                "bom",
                "invalid_utf8",
                "whitespace",
                "repeat",
            ]
        )
    )
    if not data:
        data = b"{}"
    pos = draw(st.integers(0, len(data)))
    if kind == "flip":
        pos = min(pos, len(data) - 1)
        return data[:pos] + bytes([data[pos] ^ (1 << draw(st.integers(0, 7)))]) + data[pos + 1 :]
    if kind == "truncate":
        return data[:pos]
    if kind == "insert":
        return data[:pos] + draw(st.binary(min_size=1, max_size=8)) + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + draw(st.integers(1, 16)) :]
    if kind == "token":
        token = draw(
            st.sampled_from(
                [
                    b"NaN",
                    b"Infinity",
                    b"-Infinity",
                    b"1e999",
                    b"null",
                    b'"\\u0000"',
                    b"]",
                    b"}",
                    b",",
                    b'"\\ud800"',
                    b"\\",
                    b'"',
                ]
            )
        )
        return data[:pos] + token + data[pos:]
    if kind == "trailing":
        return data + draw(st.sampled_from([b"x", b"{}", b"\0", b" 1", b"\n{}", b"]"]))
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    if kind == "invalid_utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"]))
        return data[:pos] + bad + data[pos:]
    if kind == "whitespace":
        return data[:pos] + b" " * draw(st.integers(1, 10_000)) + data[pos:]
    chunk = data[pos : pos + draw(st.integers(1, 64))]
    return data[:pos] + chunk * draw(st.integers(2, 20)) + data[pos:]


@st.composite
def hostile_toc_cases(
    draw: Draw, *, must_reject: bool = False, byte_level: bool | None = None
) -> tuple[str, bytes]:
    """``(mutation_name, toc_bytes)``: a valid or real TOC, broken on purpose.

    With ``must_reject`` only mutations the specification forbids are used, and
    no byte-level corruption (which may leave the document valid).
    """
    base = draw(st.one_of(seeded_tocs(), tocs(max_entries=8)))
    mutations = [m for m in HOSTILE_TOC_MUTATIONS if m.must_reject or not must_reject]
    mutation = draw(st.sampled_from(mutations))
    doc = mutation.apply(draw, json.loads(base))
    data = render_json(doc, indent=draw(st.sampled_from([None, 1])))
    name = mutation.name
    if byte_level is None:
        byte_level = not must_reject and draw(st.integers(0, 2)) == 0
    if byte_level:
        for _ in range(draw(st.integers(1, 3))):
            data = _byte_corruption(draw, data)
        name += "+bytes"
    return name, data


def hostile_tocs(*, must_reject: bool = False) -> st.SearchStrategy[bytes]:
    """Hostile TOC bytes (see :func:`hostile_toc_cases`)."""
    return hostile_toc_cases(must_reject=must_reject).map(lambda case: case[1])


# -- dumpfiles ---------------------------------------------------------------

_LINE = "/{name} 0 100644 1 0 0 0 0.0 - - -"


def _d_lines(draw: Draw, text: str) -> list[str]:
    return text.rstrip("\n").split("\n")


def _d_append(text: str, *lines: str) -> str:
    return text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"


def _dm_traversal(draw: Draw, text: str) -> str:
    path = draw(st.sampled_from(["/..", "/../etc", "/a/../b", "/./x", "/x/.", "/x/..", "/.."]))
    return _d_append(text, f"{path} 0 100644 1 0 0 0 0.0 - - -")


def _dm_relative(draw: Draw, text: str) -> str:
    path = draw(st.sampled_from(["rel", "", "//", "/a//b", "/dir/", "\\x00"]))
    return _d_append(text, f"{path} 0 100644 1 0 0 0 0.0 - - -")


def _dm_nul(draw: Draw, text: str) -> str:
    line = draw(
        st.sampled_from(
            [
                "/a\\x00b 0 100644 1 0 0 0 0.0 - - -",
                "/nul 0 100644 1 0 0 0 0.0 - - - user.a\\x00b=v",
                "/nul 1 120777 1 0 0 0 0.0 a\\x00b - -",
                "/nul 0 100644 1 0 0 0 0.0 ab/c\\x00d - -",
                "/raw\0nul 0 100644 1 0 0 0 0.0 - - -",
            ]
        )
    )
    return _d_append(text, line)


def _dm_escape(draw: Draw, text: str) -> str:
    bad = draw(st.sampled_from(["\\q", "\\x4", "\\xZZ", "\\", "\\x", "\\u0041", "\\0"]))
    field = draw(st.sampled_from(["path", "xattr", "content", "payload"]))
    if field == "path":
        line = f"/e{bad} 0 100644 1 0 0 0 0.0 - - -"
    elif field == "xattr":
        line = f"/e 0 100644 1 0 0 0 0.0 - - - user.k=v{bad}"
    elif field == "content":
        line = f"/e 3 100644 1 0 0 0 0.0 - a{bad} -"
    else:
        line = f"/e 3 100644 1 0 0 0 0.0 p{bad} - -"
    return _d_append(text, line)


def _dm_fields(draw: Draw, text: str) -> str:
    line = draw(
        st.sampled_from(
            [
                "/f 0 100644 1 0 0 0 0.0 - -",
                "/f 0 100644",
                "/f",
                "/f  0 100644 1 0 0 0 0.0 - - -",
                "/f 0 100644 1 0 0 0 0.0 - - - novalue",
                "/f 0 100644 1 0 0 0 0.0 - - - =v",
                "/f\t0 100644 1 0 0 0 0.0 - - -",
            ]
        )
    )
    return _d_append(text, line)


def _dm_numbers(draw: Draw, text: str) -> str:
    field = draw(st.integers(1, 7))
    value = draw(
        st.sampled_from(
            [
                "-1",
                str(U32_MAX + 1),
                str(U64_MAX + 1),
                "1" + "0" * 40,
                "0x10",
                "1e3",
                "+1",
                " ",
                "",
                "9" * 5000,
                "1.5",
                "\uff11",
            ]
        )
    )
    fields = ["/num", "0", "100644", "1", "0", "0", "0", "0.0", "-", "-", "-"]
    if field == 1 and value == str(U32_MAX + 1):
        value = str(_LIM.max_file_size + 1)  # 2^32 is a fine file size
    if field == 2:
        value = draw(st.sampled_from(["8", "9", "1000000", "77777777", "@", "170644", "0"]))
    if field == 7:
        value = draw(
            st.sampled_from(
                [
                    "0.1000000000",
                    "0.-1",
                    "1",
                    "1.",
                    ".1",
                    "0.999999999999",
                    "x.0",
                    str(I64_MAX + 1) + ".0",
                    str(I64_MIN - 1) + ".0",
                    "0.0.0",
                ]
            )
        )
    fields[field] = value
    return _d_append(text, " ".join(fields))


def _dm_digest(draw: Draw, text: str) -> str:
    hex64 = hashlib.sha256(b"x").hexdigest()
    bad = draw(
        st.sampled_from([hex64[:63], hex64[:10], hex64 + "00", "g" * 64, "x", hex64[:-1] + "G"])
    )
    return _d_append(text, f"/dg 10 100644 1 0 0 0 0.0 ab/cd - {bad}")


def _dm_content(draw: Draw, text: str) -> str:
    line = draw(
        st.sampled_from(
            [
                "/c 5 100644 1 0 0 0 0.0 - abc -",
                "/c 1 100644 1 0 0 0 0.0 - abc -",
                f"/c {_LIM.max_inline_bytes + 1} 100644 1 0 0 0 0.0 - "
                f"{'a' * (_LIM.max_inline_bytes + 1)} -",
                "/c 3 40755 2 0 0 0 0.0 - abc -",
                "/c 3 120777 1 0 0 0 0.0 abc abc -",
                "/c 3 100644 1 0 0 0 0.0 ab/cd abc -",
            ]
        )
    )
    return _d_append(text, line)


def _dm_rdev(draw: Draw, text: str) -> str:
    line = draw(
        st.sampled_from(
            [
                "/r 0 100644 1 0 0 259 0.0 - - -",
                "/r 0 40755 2 0 0 1 0.0 - - -",
                "/r 0 10644 1 0 0 5 0.0 - - -",
                f"/r 0 20644 1 0 0 {U64_MAX + 1} 0.0 - - -",
            ]
        )
    )
    return _d_append(text, line)


def _dm_hardlink(draw: Draw, text: str) -> str:
    kind = draw(st.sampled_from(["dangling", "self", "cycle", "to_dir", "dir_link", "empty"]))
    lines = {
        "dangling": ["/hl 0 @100644 1 0 0 0 0.0 /no/such - -"],
        "self": ["/hl 0 @100644 1 0 0 0 0.0 /hl - -"],
        "cycle": ["/ha 0 @100644 1 0 0 0 0.0 /hb - -", "/hb 0 @100644 1 0 0 0 0.0 /ha - -"],
        "to_dir": ["/hdir 0 40755 2 0 0 0 0.0 - - -", "/hl 0 @100644 1 0 0 0 0.0 /hdir - -"],
        "dir_link": ["/t 0 100644 1 0 0 0 0.0 - - -", "/hl 0 @40755 1 0 0 0 0.0 /t - -"],
        "empty": ["/hl 0 @100644 1 0 0 0 0.0 - - -"],
    }[kind]
    return _d_append(text, *lines)


def _dm_symlink(draw: Draw, text: str) -> str:
    line = draw(
        st.sampled_from(
            [
                "/s 0 120777 1 0 0 0 0.0 - - -",
                f"/s {_LIM.max_symlink_bytes + 1} 120777 1 0 0 0 0.0 "
                f"{'t' * (_LIM.max_symlink_bytes + 1)} - -",
            ]
        )
    )
    return _d_append(text, line)


def _dm_order(draw: Draw, text: str) -> str:
    kind = draw(
        st.sampled_from(["missing_parent", "duplicate", "no_root", "file_root", "child_of_file"])
    )
    if kind == "missing_parent":
        return _d_append(text, "/no/parent 0 100644 1 0 0 0 0.0 - - -")
    if kind == "duplicate":
        return _d_append(text, "/dup 0 100644 1 0 0 0 0.0 - - -", "/dup 0 100644 1 0 0 0 0.0 - - -")
    if kind == "no_root":
        lines = [ln for ln in _d_lines(draw, text) if not ln.startswith("/ ")]
        return "\n".join([*lines, "/x 0 100644 1 0 0 0 0.0 - - -"]) + "\n"
    if kind == "file_root":
        return "/ 0 100644 1 0 0 0 0.0 - - -\n"
    return _d_append(text, "/pf 0 100644 1 0 0 0 0.0 - - -", "/pf/c 0 100644 1 0 0 0 0.0 - - -")


def _dm_overlong(draw: Draw, text: str) -> str:
    which = draw(st.sampled_from(["component", "path", "xattr_name", "xattr_value", "xattr_space"]))
    if which == "component":
        return _d_append(text, f"/{'n' * (_LIM.max_name_bytes + 1)} 0 100644 1 0 0 0 0.0 - - -")
    if which == "path":
        parts = ["p" * 200] * (_LIM.max_path_bytes // 200 + 1)
        lines = [
            "/" + "/".join(parts[: i + 1]) + " 0 40755 2 0 0 0 0.0 - - -" for i in range(len(parts))
        ]
        return _d_append(text, *lines)
    if which == "xattr_name":
        return _d_append(text, f"/x 0 100644 1 0 0 0 0.0 - - - user.{'n' * 255}=v")
    if which == "xattr_value":
        return _d_append(text, f"/x 0 100644 1 0 0 0 0.0 - - - user.v={'v' * 65536}")
    pairs = " ".join(f"user.k{i}={'v' * 4000}" for i in range(_LIM.max_xattr_space // 4000 + 2))
    return _d_append(text, f"/x 0 100644 1 0 0 0 0.0 - - - {pairs}")


def _dm_xattr_dup(draw: Draw, text: str) -> str:
    return _d_append(text, "/xd 0 100644 1 0 0 0 0.0 - - - user.a=1 user.a=2")


def _dm_identity(draw: Draw, text: str) -> str:
    return text


#: Line-level dumpfile mutations.
HOSTILE_DUMPFILE_MUTATIONS: tuple[Mutation, ...] = (
    Mutation("path-traversal", _dm_traversal, True),
    Mutation("relative-path", _dm_relative, True),
    Mutation("nul", _dm_nul, True),
    Mutation("bad-escape", _dm_escape, True),
    Mutation("field-count", _dm_fields, True),
    Mutation("numeric-edge", _dm_numbers, True),
    Mutation("digest", _dm_digest, True),
    Mutation("content", _dm_content, True),
    Mutation("rdev", _dm_rdev, True),
    Mutation("hardlink", _dm_hardlink, True),
    Mutation("symlink-target", _dm_symlink, True),
    Mutation("order", _dm_order, True),
    Mutation("overlong", _dm_overlong, True),
    Mutation("duplicate-xattr", _dm_xattr_dup, True),
    Mutation("none", _dm_identity, False),
)


@st.composite
def hostile_dumpfile_cases(draw: Draw, *, must_reject: bool = False) -> tuple[str, bytes]:
    """``(mutation_name, dumpfile_bytes)``: a valid dumpfile broken on purpose."""
    base = draw(dumpfiles(max_entries=8))
    mutations = [m for m in HOSTILE_DUMPFILE_MUTATIONS if m.must_reject or not must_reject]
    mutation = draw(st.sampled_from(mutations))
    text: str = mutation.apply(draw, base)
    data = text.encode("utf-8", "surrogateescape")
    name = mutation.name
    if not must_reject and draw(st.integers(0, 2)) == 0:
        for _ in range(draw(st.integers(1, 3))):
            data = _byte_corruption(draw, data)
        name += "+bytes"
    return name, data


def hostile_dumpfiles(*, must_reject: bool = False) -> st.SearchStrategy[bytes]:
    """Hostile dumpfile bytes (see :func:`hostile_dumpfile_cases`)."""
    return hostile_dumpfile_cases(must_reject=must_reject).map(lambda case: case[1])


# -- trees -------------------------------------------------------------------


@st.composite
def hostile_tree_entries(draw: Draw) -> tuple[bytes, Node]:
    """``(path, node)`` that :meth:`TreeBuilder.add` must refuse below a fresh root.

    Either the path is unclean (``..``, ``.``, ``//``, relative, trailing
    ``/``, NUL, overlong) or one :class:`Inode` field breaks its invariant.
    """
    if draw(st.booleans()):
        path = draw(
            st.sampled_from(
                [
                    b"/..",
                    b"/a/..",
                    b"/.",
                    b"//a",
                    b"a",
                    b"/a/",
                    b"/a\0",
                    b"",
                    b"/a//b",
                    b"/" + b"n" * (_LIM.max_name_bytes + 1),
                    b"/" + b"/".join([b"p" * 200] * 21),
                ]
            )
        )
        return path, Inode(mode=stat.S_IFREG | 0o644)
    reg = Inode(mode=stat.S_IFREG | 0o644)
    bad: list[Node] = [
        replace(reg, mode=0o170000 | 0o644),
        replace(reg, mode=-1),
        replace(reg, mode=stat.S_IFREG | 0o10000),
        replace(reg, uid=-1),
        replace(reg, uid=U32_MAX + 1),
        replace(reg, gid=True),
        replace(reg, nlink=U32_MAX + 1),
        replace(reg, mtime=I64_MAX + 1),
        replace(reg, mtime_nsec=1_000_000_000),
        replace(reg, size=-1),
        replace(reg, size=_LIM.max_file_size + 1),
        replace(reg, payload=b""),
        replace(reg, payload=b"a\0b"),
        replace(reg, payload=b"p" * (_LIM.max_path_bytes + 1)),
        replace(reg, content=b"abc", size=2),
        replace(reg, content=b"x" * (_LIM.max_inline_bytes + 1), size=_LIM.max_inline_bytes + 1),
        replace(reg, content=b"abc", size=3, payload=b"ab/cd"),
        replace(reg, fsverity_digest=b"short"),
        replace(reg, rdev=5),
        replace(reg, symlink_target=b"x"),
        Inode(mode=stat.S_IFLNK | 0o777),
        Inode(mode=stat.S_IFLNK | 0o777, symlink_target=b""),
        Inode(mode=stat.S_IFLNK | 0o777, symlink_target=b"a\0"),
        Inode(mode=stat.S_IFLNK | 0o777, symlink_target=b"t" * (_LIM.max_symlink_bytes + 1)),
        Inode(mode=stat.S_IFDIR | 0o755, size=10),
        Inode(mode=stat.S_IFDIR | 0o755, payload=b"ab/cd"),
        Inode(mode=stat.S_IFCHR | 0o600, rdev=U64_MAX + 1),
        Inode(mode=stat.S_IFBLK | 0o600, rdev=U32_MAX + 1),
        replace(reg, content=b""),
        replace(reg, xattrs=((b"user.", b"v"),)),
        replace(reg, xattrs=((b"trusted.", b""),)),
        replace(reg, xattrs=((b"user.b", b""), (b"user.a", b""))),
        replace(reg, xattrs=((b"user.a", b""), (b"user.a", b""))),
        replace(reg, xattrs=((b"", b"v"),)),
        replace(reg, xattrs=((b"user.a\0", b"v"),)),
        replace(reg, xattrs=((b"user." + b"n" * 251, b"v"),)),
        replace(reg, xattrs=((b"user.v", b"v" * (_LIM.max_xattr_value_bytes + 1)),)),
        replace(
            reg,
            xattrs=tuple((b"user.k%03d" % i, b"v" * 4000) for i in range(9)),
        ),
        Hardlink(b"/hl"),
        Hardlink(b"relative"),
    ]
    node = draw(st.sampled_from(bad))
    return b"/hl", node


# -- layer blobs -------------------------------------------------------------

_SKIPPABLE_MAGIC = 0x184D2A50
_ZSTD_CHUNKED_FOOTER = struct.Struct("<QQQQQQQ8s")


@st.composite
def corrupted_blobs(draw: Draw, blob: bytes) -> bytes:
    """``blob`` (a layer) corrupted: byte flips, truncation, footer field tricks.

    Structure-aware cases rewrite the zstd:chunked footer's u64 fields (TOC
    offset and lengths, manifest type, tar-split position) and the eStargz
    footer's hex offset with edge values (0, past EOF, 2^63, 2^64-1, the
    footer itself), or replace the TOC frame by hostile bytes.
    """
    kind = draw(st.sampled_from(["bytes", "footer", "truncate_tail", "toc_field"]))
    if kind == "bytes" or len(blob) < 80:
        data = blob
        for _ in range(draw(st.integers(1, 4))):
            data = _byte_corruption(draw, data)
        return data
    if kind == "truncate_tail":
        return blob[: len(blob) - draw(st.integers(1, min(len(blob), 200)))]
    size = len(blob)
    edges = [0, 1, 7, 8, size - 72, size - 64, size - 1, size, size + 1, I64_MAX, U64_MAX, 1 << 32]
    if blob[-8:] == b"GNUlInUx":
        fields = list(_ZSTD_CHUNKED_FOOTER.unpack(blob[-64:]))
        index = draw(st.integers(0, 6))
        fields[index] = draw(st.sampled_from(edges)) % (1 << 64)
        if draw(st.integers(0, 4)) == 0:
            fields[7] = draw(st.sampled_from([b"GNUlInUX", b"\0" * 8]))
        footer = _ZSTD_CHUNKED_FOOTER.pack(*fields)
        if draw(st.integers(0, 4)) == 0:
            frame_size = draw(st.sampled_from([0, 63, 65, U32_MAX]))
            header = struct.pack("<II", _SKIPPABLE_MAGIC, frame_size)
            return blob[:-72] + header + footer
        return blob[:-64] + footer
    if len(blob) >= 51 and blob[-51:-49] == b"\x1f\x8b":
        offset = draw(st.sampled_from(edges))
        hex_text = draw(
            st.sampled_from(
                [
                    f"{offset % (1 << 64):016x}".encode(),
                    b"zzzzzzzzzzzzzzzz",
                    b"-000000000000001",
                    b" " * 16,
                ]
            )
        )
        return blob[:-35] + hex_text + blob[-19:]
    data = blob
    return _byte_corruption(draw, data)


# ---------------------------------------------------------------------------
# hostile object names (payloads) and link targets
# ---------------------------------------------------------------------------
#
# An object name (a regular file's payload) is exactly 2 lowercase hex
# digits, "/", 62 lowercase hex digits (DESIGN rule 8): the only string from
# an input that ever becomes a host path, relative to the object store's
# root.  These strategies give every other shape, so that a test can check
# that each validator refuses it and that nothing outside the store is
# reached through it.

_HEX_DIGITS = b"0123456789abcdef"
#: Bytes that are not lowercase hex digits: look-alikes, separators,
#: controls, what dumpfile syntax escapes, and non-ASCII.
_NOT_HEX = b"ABCDEFgGxXzZ./\\-_+:% \0\n\r\t\x0b\x0c\x7f\x80\xc3\xef\xff"
#: Multi-byte look-alikes of hex digits (fullwidth, Arabic-Indic, Cyrillic).
_LOOKALIKES = tuple(c.encode("utf-8") for c in ("\uff10", "\uff41", "\u0663", "\u0430", "\u0435"))


@st.composite
def _valid_object_names(draw: Draw) -> bytes:
    return _payload_from_digest(draw(_DIGEST_BYTES).hex())


@st.composite
def _hex_of_length(draw: Draw) -> bytes:
    """Hex digits of every length 0..70 (around 64), with the slash after 2, elsewhere or none."""
    length = draw(st.one_of(st.integers(0, 70), st.sampled_from([61, 62, 63, 64, 65, 66])))
    digits = (draw(_DIGEST_BYTES).hex() * 3).encode()[:length]
    where = draw(st.sampled_from(["after-2", "none", "anywhere"]))
    if where == "none" or not digits:
        return digits
    cut = 2 if where == "after-2" else draw(st.integers(0, len(digits)))
    return digits[:cut] + b"/" + digits[cut:]


@st.composite
def _one_byte_off(draw: Draw) -> bytes:
    """A valid name with one byte replaced, inserted or removed."""
    name = bytearray(draw(_valid_object_names()))
    index = draw(st.integers(0, len(name) - 1))
    how = draw(st.sampled_from(["replace", "insert", "delete", "upper", "lookalike"]))
    byte = draw(st.sampled_from(sorted(set(_NOT_HEX))))
    if how == "replace":
        name[index] = byte
    elif how == "insert":
        name.insert(index, byte)
    elif how == "delete":
        del name[index]
    elif how == "upper":
        letters = [i for i, b in enumerate(name) if b in b"abcdef"]
        if letters:
            index = draw(st.sampled_from(letters))
            name[index] -= 0x20  # "a" -> "A"
        else:  # all digits: put an uppercase letter in
            name[index] = ord("A")
    else:
        name[index : index + 1] = draw(st.sampled_from(_LOOKALIKES))
    return bytes(name)


@st.composite
def _slash_shapes(draw: Draw) -> bytes:
    """Leading, trailing, doubled, missing and extra slashes around a valid name."""
    name = draw(_valid_object_names())
    flat = name[:2] + name[3:]
    return draw(
        st.sampled_from(
            [
                b"/" + name,
                b"//" + name,
                name + b"/",
                name[:2] + b"//" + name[3:],
                flat,
                b"/" + flat,
                flat[:2] + b"/" + flat[2:4] + b"/" + flat[4:],
                name[:3] + b"/",
                b"/",
                b"//",
                b"",
            ]
        )
    )


@st.composite
def _dot_shapes(draw: Draw) -> bytes:
    """``.`` and ``..`` parts: traversal out of the store and detours inside it."""
    name = draw(_valid_object_names())
    depth = draw(st.integers(1, 8))
    up = b"../" * depth
    return draw(
        st.sampled_from(
            [
                up + name,
                b"./" + name,
                name[:3] + b"./" + name[3:],
                name[:3] + b"../" + name,
                name + b"/..",
                name + b"/.",
                b"..",
                b".",
                b"...",
                up + b"etc/shadow",
                name[:3] + up + b"etc/shadow",
                b"/etc/shadow",
                b"/proc/self/mem",
                b"/dev/zero",
                up[:-1],
            ]
        )
    )


@st.composite
def _control_shapes(draw: Draw) -> bytes:
    """NUL, newline and other controls before, inside or after a valid name."""
    name = draw(_valid_object_names())
    byte = draw(st.sampled_from([b"\0", b"\n", b"\r", b"\t", b" ", b"\x1b", b"\x7f"]))
    where = draw(st.integers(0, len(name)))
    return draw(st.sampled_from([name[:where] + byte + name[where:], name + byte, byte + name]))


@st.composite
def _backslash_shapes(draw: Draw) -> bytes:
    """Literal backslashes and what looks like an escape, kept as bytes."""
    name = draw(_valid_object_names())
    return draw(
        st.sampled_from(
            [
                name[:2] + b"\\" + name[3:],
                name[:2] + b"\\x2f" + name[3:],
                name[:2] + b"\\/" + name[3:],
                b"..\\..\\etc\\shadow",
                b"\\x2e\\x2e/\\x2e\\x2e/etc/shadow",
                name + b"\\",
                b"\\" + name,
            ]
        )
    )


@st.composite
def _long_shapes(draw: Draw) -> bytes:
    name = draw(_valid_object_names())
    size = draw(st.sampled_from([255, 256, 4095, 4096, 4097, 65_536]))
    return draw(
        st.sampled_from(
            [
                (name * (size // len(name) + 1))[:size],
                b"a" * size,
                name[:3] + b"0" * (size - 3),
                (b"../" * (size // 3))[: size - 10] + b"etc/shadow",
            ]
        )
    )


@st.composite
def _reaching(draw: Draw, reach: tuple[bytes, ...]) -> bytes:
    """Spellings of ``reach`` (host paths, absolute or relative to the store's root)."""
    target = draw(st.sampled_from(reach))
    if target.startswith(b"/"):
        depth = draw(st.integers(1, 40))  # past any root: ../ at / stays at /
        relative = b"../" * depth + target.lstrip(b"/")
    else:
        relative = target
    return draw(
        st.sampled_from(
            [
                target,
                relative,
                b"./" + relative,
                relative.replace(b"/", b"//"),
                relative.replace(b"/", b"/./"),
                b"ab/../" + relative,
                relative + b"/.",
            ]
        )
    )


def hostile_payloads(
    *, reach: tuple[bytes, ...] | list[bytes] = (), max_size: int | None = None
) -> st.SearchStrategy[bytes]:
    """Payload strings that are **not** object names; every one must be refused.

    Families: hex of every length 0..70 with the slash after two digits,
    elsewhere or missing; a valid name with one byte replaced, inserted,
    deleted, uppercased or swapped for a multi-byte look-alike; leading,
    trailing, doubled, missing and extra slashes; ``.`` and ``..`` parts
    (``../`` up to 8 deep, ``ab/../``, absolute host paths); NUL, newline and
    other controls; literal backslashes and escape look-alikes; very long
    names (255 .. 65536 bytes).  ``reach``: host paths (absolute, or relative
    to the object store's root, such as ``b"../outside/file"``) to aim at,
    each spelled several ways (``../`` past the root, ``//``, ``/./``,
    ``ab/../``).  ``max_size`` drops longer examples.  No example is ever
    digest-shaped (:func:`is_object_name`).
    """
    families = [
        _hex_of_length(),
        _one_byte_off(),
        _slash_shapes(),
        _dot_shapes(),
        _control_shapes(),
        _backslash_shapes(),
        _long_shapes(),
    ]
    if reach:
        targets = tuple(reach)
        families += [_reaching(targets), _reaching(targets)]  # weighted: the ones that hurt
    strategy = st.one_of(families).filter(lambda p: not is_object_name(p))
    if max_size is not None:
        strategy = strategy.filter(lambda p: len(p) <= max_size)
    return strategy


@st.composite
def hostile_payload_fields(
    draw: Draw, *, reach: tuple[bytes, ...] | list[bytes] = (), max_size: int | None = None
) -> tuple[str, bytes]:
    """``(field, payload)``: a :func:`hostile_payloads` example and a composefs-dump(5)
    spelling of it, bytes escaped at random (``\\x2e\\x2e\\x2f`` for ``../``,
    ``\\x2f`` for the slash, ``\\\\``, ``\\n``...), as a dumpfile's payload field."""
    payload = draw(hostile_payloads(reach=reach, max_size=max_size))
    rnd = random.Random(draw(_SEEDS))
    field = _escape(payload, rnd)
    if not field:
        field = draw(st.sampled_from(["", "\\x00"]))  # an empty field, or a lone NUL
        payload = b"" if not field else b"\0"
    return field, payload


@st.composite
def link_targets(draw: Draw, *, reach: tuple[bytes, ...] | list[bytes]) -> bytes:
    """Symlink targets leading to one of ``reach`` (absolute host paths) from a link
    placed anywhere: the absolute path, ``/./`` and ``//`` spellings, ``..``
    past the file system root, through ``/proc/self/root``, or the path with a
    trailing ``/.`` (which needs a directory)."""
    target = draw(st.sampled_from(tuple(reach)))
    if not target.startswith(b"/"):
        raise ValueError(f"link_targets: reach paths must be absolute, got {target!r}")
    depth = draw(st.integers(40, 64))  # deeper than any link: ".." stops at "/"
    return draw(
        st.sampled_from(
            [
                target,
                target.replace(b"/", b"//"),
                target.replace(b"/", b"/./"),
                b"/.." * depth + target,
                b"../" * depth + target.lstrip(b"/"),
                b"/proc/self/root" + target,
                target + b"/.",
            ]
        )
    )
