"""The containers/storage TOC (zstd:chunked and eStargz) -> :class:`Tree`, one path.

:func:`parse_toc` is the only way a TOC becomes a Tree.  Every rejection is a
:class:`ValidationError` naming the entry index, its ``name`` as given and the
field.  Where each rule of DESIGN section 4 lives (each in one place):

* JSON level (UTF-8, depth, duplicate keys, NaN/Infinity, trailing data, input
  size): ``_schema.read_input``, msgspec's decoder, ``_schema.strict_json``.
* version, tarSplitDigest, entries: ``_schema.document_problems``.
* type, each field's JSON type and range: ``_schema.FIELDS``, run by msgspec,
  worded by ``_schema.field_problem``.
* name cleaning: ``_rules.Batches.clean_paths`` (``clean_name`` for odd names).
* mode's type bits, size only on reg, times, digest, linkName, offsets, chunk
  fields and chunk chains: the column rules of ``_rules.Batches``.
* device numbers, xattrs (prefixes, base64, ACLs, space), whiteouts, opaque
  markers, eStargz landmarks and index: ``_rules.Batches.rare_row`` and the
  helpers it calls, in document order.
* parents, duplicates, hardlinks, counts, tree limits, overlay xattrs,
  payload names: model.py (``TreeBuilder``; ``add_columns`` takes the rows in
  bulk, ``TOC_PROVEN`` the rules it need not check again).

``compat="containers-storage"`` is the image podman's own path makes, and its
refusals (the README's compat paragraph): ``clean_name(dotdot=True)``,
``parse_time(go=True)``, ``xattr_problem(go=True)``, ``Batches.podman_nlinks``,
``_Parse.podman_order``, ``podman_keys`` and ``dump_xattrs_bytes``.

Cost: linear in the document.  ``max_input_bytes`` is checked before a file
is read whole, ``max_json_depth`` by a C-speed pre-scan before any decoder
runs, ``max_entries`` on the entry count before any entry is decoded;
entries are decoded 8192 at a time, and every tree limit is model.py's,
checked before the nodes it bounds are made.  compat adds a dict of each
path's first row and a walk up from each entry whose parent is made up that
stops at the first path seen before (each made-up path once); entries are
decoded again only for the paths that repeat or come after entries inside
them; one lookup per distinct hardlink ``linkName``; an entry's dumpfile
xattr length only when four times their bytes could pass 65535.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from itertools import compress, repeat
from operator import eq, gt, ne
from typing import Any

import msgspec
from msgspec import UNSET

from .._columns import NodeColumns
from .._progress import Progress, ProgressArg, resolve_progress
from ..errors import ValidationError
from ..limits import Limits
from ..model import PROVEN_INT_RANGES, PROVEN_PAYLOAD_NAMES, ROOT, Tree, TreeBuilder, column_nodes
from ._rules import (
    EMPTY_SHA256,
    OPAQUE_XATTR,
    S_IFDIR,
    WH_OPAQUE,
    Batches,
    clean_name,
    column_quotes,
    columns_of,
    field_rank,
    xattr_problem,
)
from ._schema import (
    FIELDS,
    TocSource,
    document_decoder,
    document_problems,
    entry_decoder,
    field_problem,
    name_decoder,
    read_input,
    show,
    strict_json,
    string_quotes,
)

__all__ = ["COMPAT_MODES", "TocSource", "parse_toc"]

#: What every node row of a TOC the rules accepted keeps, so that
#: ``TreeBuilder.add_columns`` need not check it again: the schema's ranges
#: (mode, uid/gid, size within ``max_file_size``), ``parse_time``'s seconds and
#: nanoseconds, and payloads made from digests ``is_digest`` proved.
TOC_PROVEN = frozenset((PROVEN_INT_RANGES, PROVEN_PAYLOAD_NAMES))

#: Values accepted for ``compat``.
COMPAT_MODES = (None, "containers-storage")
_BATCH = 8192
_MAX_LISTED_PROBLEMS = 100
_AT_ENTRY = re.compile(r"`\$\[(\d+)\]")
# a character of the opaque marker's name, escaped in the JSON text
_MARKER_ESCAPE = re.compile(rb"\\u00(?:2[eE]|6[8fF]|7[017])")


def _may_name_marker(text: bytes) -> bool:
    """Whether the JSON ``text`` may spell ``.wh..wh..opq`` (a backslash is rare)."""
    if text.find(WH_OPAQUE) >= 0:
        return True
    return text.find(b"\\") >= 0 and _MARKER_ESCAPE.search(text) is not None


def parse_toc(
    data: TocSource,
    *,
    limits: Limits | None = None,
    compat: str | None = None,
    collect: bool = False,
    progress: ProgressArg = False,
) -> Tree:
    """Validate a containers/storage TOC (zstd:chunked or eStargz) and return its Tree.

    ``compat="containers-storage"``: the image podman's path makes.  ``collect=True``:
    one :class:`ValidationError` whose ``problems`` holds every problem.
    ``progress`` counts the entries checked (see :mod:`composefs_py._progress`).
    """
    if compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat mode {compat!r}; choose containers-storage or None")
    limits = limits or Limits()
    reporter = resolve_progress(progress, "validating TOC")
    parse = _Parse(read_input(data, limits), limits, compat, collect)
    parse.reporter = reporter
    tree = parse.run()
    if reporter is not None:
        reporter.close()
    return tree


class _Parse:
    reporter: Progress | None = None

    def __init__(self, raw: bytes, limits: Limits, compat: str | None, collect: bool) -> None:
        self.raw, self.limits, self.collect = raw, limits, collect
        self.whiteouts = compat is None
        self.compat = compat is not None
        self.count_links = True  # one link more per hardlink to a target (compat: see tree)
        self.value: Any = UNSET  # the document as the json module reads it, once needed
        self.decoder, self.entry_type = entry_decoder(limits.max_file_size)
        self.checked = False  # strict_json has passed on the document
        self.pieces: list[Any] = []  # raw entries (msgspec.Raw), or decoded ones

    def run(self) -> Tree:
        raw = self.raw
        if self.collect:
            self.strict()
        try:
            document = document_decoder().decode(raw)
            version, split, pieces = document.version, document.tarSplitDigest, document.entries
            del document
            raw_pieces = True
        except msgspec.DecodeError:
            self.strict()  # says what is wrong with the JSON, if anything
            value = self.value
            if value.__class__ is not dict:
                raise ValidationError(f"the TOC must be a JSON object, got {show(value)}") from None
            version, split = value.get("version", UNSET), value.get("tarSplitDigest", UNSET)
            pieces = value.get("entries", UNSET)
            raw_pieces = False  # JSON the typed decoder refuses (a lone surrogate escape)
        top = document_problems(version, split, pieces)
        if top and (not self.collect or pieces.__class__ is not list):
            self.strict()
            raise _combined(top)
        assert isinstance(pieces, list)
        if len(pieces) > self.limits.max_entries:
            self.strict()  # a JSON problem is told first
            raise ValidationError(f"more than {self.limits.max_entries} entries", field="entries")
        self.pieces = pieces
        opaque = self.opaque_dirs() if self.whiteouts else set()
        batches = Batches(self.limits, self.compat, opaque, self.collect)
        # the top level's strings: its keys, and the values that are strings
        taken = 2 * (3 - (version is UNSET) - (split is UNSET))
        taken += 2 * ((version.__class__ is str) + (split.__class__ is str))
        reporter = self.reporter
        if reporter is not None:
            reporter.start("validating TOC", total_files=len(pieces))
        spans: list[tuple[int, int]] = []  # each batch's first entry, the quotes taken from it
        checking = True
        for first in range(0, len(pieces), _BATCH):
            if checking:
                spans.append((first, self.batch(batches, pieces[first : first + _BATCH], first)))
                if reporter is not None:
                    reporter.advance(files=min(_BATCH, len(pieces) - first))
                # once a problem is found, the strings of the entries left, for the JSON level
                checking = self.collect or not batches.problems
            else:
                spans.append((first, self.quotes_of(pieces[first : first + _BATCH])))
        if checking:
            batches.close_chain(len(pieces))
        if self.compat or not self.checked:
            total = string_quotes(raw) if raw_pieces else None
            if total is None or total != taken + sum(quotes for _, quotes in spans):
                # a duplicate key, or only unknown ones: the json module says which
                self.odd_keys(spans if raw_pieces else [], total, taken)
        found = sorted(batches.problems.items())
        if found:
            # a walk adds each entry as it goes: a tree rule an earlier entry breaks
            # (a parent that is a file, a differing repeat, a limit) is found first
            upto = len(pieces) if self.collect else found[0][0]
            for error in self.tree_problems(batches, upto):
                assert error.entry is not None
                found.append((error.entry, (-1, error)))
            found.sort(key=lambda item: item[0])
        problems = top + [error for _, (_, error) in found]
        if problems:
            raise _combined(problems if self.collect else problems[:1])
        return self.tree(batches, opaque)

    def odd_keys(self, spans: list[tuple[int, int]], total: int | None, top: int) -> None:
        """Refuse a duplicate key (compat: a key podman reads otherwise).  The json module
        reads the batches of ``spans`` whose strings the schema did not all take, or the
        whole document when the strings it did not take are not all in entries."""
        objects: list[tuple[int | None, Any]] = []
        for first, quotes in spans:
            if total is None or quotes < 0:
                break
            text = b"[" + b",".join(self.pieces[first : first + _BATCH]) + b"]"
            counted = string_quotes(text)
            total -= counted
            if counted != quotes:
                objects += enumerate(strict_json(text), first)
        else:
            if total == top:
                if self.compat:
                    podman_keys(objects)
                return
        if not self.checked:
            self.strict()
        if self.compat:
            document = self.value
            entries = document.get("entries") if isinstance(document, dict) else None
            if entries.__class__ is list:
                objects = list(enumerate(entries))
            podman_keys([(None, document), *objects])

    def quotes_of(self, pieces: list[Any]) -> int:
        """The quotes of the strings the schema takes from ``pieces`` (a huge negative
        number: it refuses one)."""
        try:
            batches = range(0, len(pieces), _BATCH)
            return sum(
                column_quotes(columns_of(self.decode(pieces[i : i + _BATCH]))) for i in batches
            )
        except (msgspec.DecodeError, UnicodeEncodeError):
            return -(1 << 62)

    def decode(self, pieces: list[Any]) -> list[Any]:
        """``pieces`` (raw JSON, or what the json module decoded) by the schema."""
        if pieces[0].__class__ is msgspec.Raw:
            return self.decoder.decode(b"[" + b",".join(pieces) + b"]")
        return msgspec.convert(pieces, list[self.entry_type])  # type: ignore[name-defined]

    def tree_problems(self, batches: Batches, upto: int) -> list[ValidationError]:
        """The tree's problems with the rows of the entries before ``upto`` (the first only,
        unless collecting)."""
        rows = bisect_left(batches.entry, upto)  # type: ignore[type-var]
        paths, mode, uid, gid, mtime, nsec, size, data = (column[:rows] for column in batches.rows)
        columns = NodeColumns(paths, mode, uid, gid, mtime, nsec, size, data)
        columns.links = {row: link for row, link in batches.links.items() if row < rows}
        columns.extras = {row: extra for row, extra in batches.extras.items() if row < rows}
        if batches.rdev:
            columns.rdev = [batches.rdev.get(row, 0) for row in range(rows)]
        builder = TreeBuilder(self.limits, synthesize_parents=True, duplicates="identical")
        if not rows or builder.add_columns(columns):
            return []
        found = []
        for (path, node), index in zip(column_nodes(columns), batches.entry, strict=False):
            try:
                builder.add(path, node, entry=index)
            except ValidationError as error:
                found.append(self.located(error, index))
                if not self.collect:
                    break
        return found

    def strict(self) -> None:
        if not self.checked:
            self.value = strict_json(self.raw)
            self.checked = True

    def batch(self, batches: Batches, pieces: list[Any], first: int) -> int:
        """Decode ``pieces`` by the schema and check them; return the quotes of the strings
        they held."""
        quotes = 0
        while pieces:
            try:
                entries = self.decode(pieces)
            except (msgspec.ValidationError, UnicodeEncodeError) as err:
                bad = self.refused_at(err, pieces)
                if bad:
                    quotes += self.batch(batches, pieces[:bad], first)
                piece = pieces[bad]
                raw = piece.__class__ is msgspec.Raw
                self.refused_entry(
                    batches, first + bad, strict_json(bytes(piece)) if raw else piece
                )
                # (the schema may refuse an entry the rules take: an unknown key with a
                # lone surrogate escape; then the entries after it are checked as well)
                if not self.collect and first + bad in batches.problems:
                    # its strings (the json module took it: no duplicate) and those after it
                    counted = string_quotes(bytes(piece)) if raw else None
                    rest = self.quotes_of(pieces[bad + 1 :])
                    return quotes + rest + (-(1 << 62) if counted is None else counted)
                pieces, first = pieces[bad + 1 :], first + bad + 1
                continue
            except msgspec.DecodeError as err:  # pragma: no cover - the document decoded
                raise ValidationError(f"not valid JSON: {err}") from None
            return quotes + batches.batch(entries, first)
        return quotes

    def refused_at(self, err: Exception, pieces: list[Any]) -> int:
        """The index of the piece of ``pieces`` the schema refused with ``err``."""
        if isinstance(err, UnicodeEncodeError):
            # A lone surrogate (only the json module's decoding makes one) where
            # msgspec matches a Literal: the first piece that does not convert.
            for at, piece in enumerate(pieces):
                try:
                    self.decode([piece])
                except (msgspec.ValidationError, UnicodeEncodeError):
                    return at
        found = _AT_ENTRY.search(str(err))
        if found is None:  # pragma: no cover - msgspec always names the entry
            raise ValidationError(f"not valid JSON: {err}") from None
        return int(found.group(1))

    def refused_entry(self, batches: Batches, index: int, entry: object) -> None:
        """Record the problems of an entry the schema refused, as a walk would find them:
        each refused field is worded by its rule and dropped, the rest go through the
        other rules (a wrong name or type, or a null, is the entry's only problem)."""
        if not isinstance(entry, dict):
            batches.fail(index, "ENTRY", None, None, f"must be a JSON object, got {show(entry)}")
            return
        name = entry.get("name")
        problems: dict[str, Any] = {
            field: problem
            for field in FIELDS
            if (field in entry or field == "name" or field == "type")
            and (problem := field_problem(field, entry.get(field), self.limits)) is not None
        }
        early: list[str] = [field for field in ("name", "type") if field in problems]
        early += [field for field in problems if entry.get(field, 0) is None]
        if early:
            field = early[0]
            batches.fail(index, "ENTRY", None if field == "name" else name, field, problems[field])
            return
        kept = {field: value for field, value in entry.items() if field in FIELDS}
        if "xattrs" in kept and "xattrs" not in problems:
            for key, value in kept["xattrs"].items():
                found = xattr_problem(key, value, self.limits, self.compat)
                if found.__class__ is str:
                    problems["xattrs"] = found
                    break
        for field, problem in problems.items():
            batches.fail(index, field_rank(field, entry["type"]), name, field, problem)
            del kept[field]
        try:
            entries = self.decode([kept])
        except (msgspec.ValidationError, UnicodeEncodeError):  # pragma: no cover - all gone
            return
        batches.batch(entries, index)

    def opaque_dirs(self) -> set[bytes]:
        """Directories that hold a ``.wh..wh..opq`` marker (a pre-pass; problems wait)."""
        found: set[bytes] = set()
        if not _may_name_marker(self.raw):
            return found
        for index, piece in enumerate(self.pieces):
            if piece.__class__ is msgspec.Raw and not _may_name_marker(bytes(piece)):
                continue
            name = self.name_of(index)
            if not isinstance(name, str) or name.find(".wh..wh..opq") < 0:
                continue
            try:
                path = clean_name(name, self.limits)
            except ValueError:
                continue
            if path.endswith(b"/" + WH_OPAQUE):
                found.add(path[: path.rfind(b"/")] or ROOT)
        return found

    def name_of(self, index: int | None) -> object:
        if index is None or not 0 <= index < len(self.pieces):
            return None
        piece = self.pieces[index]
        if piece.__class__ is msgspec.Raw:
            try:
                return name_decoder().decode(piece).name
            except msgspec.DecodeError:  # not an object, or a name no JSON type holds
                return None
        return piece.get("name") if piece.__class__ is dict else None

    def tree(self, batches: Batches, opaque: set[bytes]) -> Tree:
        paths, mode, uid, gid, mtime, nsec, size, data = batches.rows
        entries = batches.entry
        for directory in sorted(opaque - batches.opaque_done):
            # no directory entry of its own: the marker makes (or marks) it
            batches.extras[len(entries)] = (None, None, (OPAQUE_XATTR,))
            entries.append(None)
            for column, value in zip(
                batches.rows, (directory, S_IFDIR | 0o755, 0, 0, 0, 0, 0, None), strict=True
            ):
                column.append(value)
        rdev = None
        if batches.rdev:
            rdev = [0] * len(paths)
            for row, value in batches.rdev.items():
                rdev[row] = value
        columns = NodeColumns(
            paths,
            mode,
            uid,
            gid,
            mtime,
            nsec,
            size,
            data,
            None,
            rdev,
            batches.links,
            batches.extras,
        )
        if self.compat:
            columns.nlink = batches.podman_nlinks(self.podman_order(paths, entries))
            self.count_links = columns.nlink is None
        del batches
        builder = TreeBuilder(
            self.limits,
            synthesize_parents=True,
            duplicates="identical",
            count_hardlinks=self.count_links,
        )
        if builder.add_columns(columns, proven=TOC_PROVEN):
            return builder.build()
        return self.build(builder, columns, entries)

    def build(self, builder: TreeBuilder, columns: NodeColumns, entries: list[int | None]) -> Tree:
        """The rows through ``builder`` one by one, which says what is wrong with them."""
        problems: list[ValidationError] = []
        for (path, node), index in zip(column_nodes(columns), entries, strict=True):
            try:
                builder.add(path, node, entry=index)
            except ValidationError as error:
                if index is None:
                    error = ValidationError(
                        "holds a .wh..wh..opq marker but cannot be made opaque: " + error.reason,
                        path=path,
                        field="name",
                    )
                else:
                    error = self.located(error, index)
                if not self.collect:
                    raise error from None
                problems.append(error)
        if problems:
            raise _combined(problems)
        try:
            return builder.build()
        except ValidationError as error:
            raise self.located(error, None) from None

    def podman_order(self, paths: list[bytes], entries: list[int | None]) -> dict[bytes, int]:
        """Refuse what GenerateDump refuses about the order of entries: it makes up each
        missing parent (0755, root's, no time) and compares every later entry for a path
        with the one it holds (``reflect.DeepEqual``).  Returns each path's first row."""
        n = len(paths)
        first = dict(zip(paths, range(n), strict=True))
        repeated: set[bytes] = set()
        if len(first) != n:
            first = dict(zip(reversed(paths), range(n - 1, -1, -1), strict=True))
            repeated = {path for row, path in enumerate(paths) if first[path] != row}
        first[b""] = first.get(ROOT, -2)  # the root, as the parent part of "/name"
        after: set[bytes] = set()  # paths whose first entry comes after one inside them
        rows: Any = range(n)
        up = paths
        if ROOT in first:
            rows = list(compress(range(n), map(ne, paths, repeat(ROOT))))
            up = list(map(paths.__getitem__, rows))
        parents = [path[: path.rfind(b"/")] for path in up]
        at = list(map(first.get, parents, repeat(-1)))
        if any(map(gt, at, rows)):
            after.update(p or ROOT for p, a, row in zip(parents, at, rows, strict=True) if a > row)
        # below a made-up parent: walked in document order, each made-up path once
        # (as GenerateDump's map of added paths), as the model makes each once
        made: set[bytes] = set()
        for i in compress(range(len(at)), map(eq, at, repeat(-1))):
            row, parent = rows[i], parents[i]
            while parent not in made and parent not in first:
                made.add(parent)
                parent = parent[: parent.rfind(b"/")]
            if first.get(parent, -1) > row:
                after.add(parent or ROOT)
        if not after and not repeated:
            return first
        problems = []
        held: dict[bytes, tuple[int | None, tuple[Any, ...]]] = {
            path: (None, self.podman_view({"type": "dir", "name": path.decode(), "mode": 0o755}))
            for path in after
        }
        for row, path in enumerate(paths):
            if path not in after and path not in repeated:
                continue
            index = entries[row]
            assert index is not None
            view = self.podman_view(self.pieces[index])
            known = held.setdefault(path, (index, view))
            if known[1] != view:
                reason = (
                    "a directory after entries inside it must equal the one containers/storage "
                    "makes up for it (dir 0755, uid/gid 0, no time, no other field)"
                    if known[0] is None
                    else f"path repeats entry {known[0]} with different data "
                    "(containers/storage compares the whole entries)"
                )
                problems.append(self.located(ValidationError(reason, field="name"), index))
        if problems:
            problems.sort(key=lambda error: error.entry or 0)
            raise _combined(problems if self.collect else problems[:1])
        return first

    def podman_view(self, piece: Any) -> tuple[Any, ...]:
        """An entry as containers/storage's FileMetadata holds it (absent: Go's zero value)."""
        entry = self.decode([piece])[0]
        view = {
            field: zero if (value := getattr(entry, field)) is UNSET or value == -1 else value
            for field, zero in PODMAN_FIELDS.items()
        }
        if entry.type == "reg" and not entry.size > 0 and entry.digest in (UNSET, ""):
            view["digest"] = EMPTY_SHA256
        return tuple(view.values())

    def located(self, error: ValidationError, index: int | None) -> ValidationError:
        """A TreeBuilder's ``error`` located by the entry's name as given."""
        where = error.entry if error.entry is not None else index
        name = self.name_of(where)
        return ValidationError(
            error.reason,
            entry=where,
            path=name if isinstance(name, str) else error.path,
            field="name" if error.field == "path" else error.field,
        )


#: containers/storage's FileMetadata: its fields (it ignores the others) and Go's zero values.
PODMAN_FIELDS = {
    "type": "", "name": "", "linkName": "", "mode": 0, "size": 0, "uid": 0, "gid": 0,
    "modtime": None, "accesstime": None, "changetime": None, "devMajor": 0, "devMinor": 0,
    "xattrs": None, "digest": "", "offset": 0, "endOffset": 0, "chunkSize": 0,
    "chunkOffset": 0, "chunkDigest": "", "chunkType": "",
}  # fmt: skip
_PODMAN_KEYS = {
    key.lower(): key for key in (*PODMAN_FIELDS, "version", "entries", "tarSplitDigest")
}


def podman_keys(objects: list[tuple[int | None, Any]]) -> None:
    """Refuse the keys containers/storage reads otherwise: an empty key (it stops reading
    the object there) and a known key in another case (it matches keys case-insensitively).
    ``objects``: (entry index, or None for the top level, JSON value)."""
    for index, value in objects:
        if value.__class__ is not dict:
            continue
        for key in value:
            known = _PODMAN_KEYS.get(key.lower())
            if key == "" or (known is not None and known != key):
                name = value.get("name") if index is not None else None
                what = f"key {show(key)} must be spelled {show(known)}" if key else "an empty key"
                raise ValidationError(
                    f"{what}: containers/storage reads keys case-insensitively and stops at an "
                    "empty one",
                    entry=index,
                    path=name if isinstance(name, str) else None,
                )


def _combined(found: list[ValidationError]) -> ValidationError:
    if len(found) == 1:
        return found[0]
    lines = [str(problem) for problem in found[:_MAX_LISTED_PROBLEMS]]
    if len(found) > _MAX_LISTED_PROBLEMS:
        lines.append(f"... and {len(found) - _MAX_LISTED_PROBLEMS} more")
    return ValidationError(
        f"{len(found)} problems:\n  " + "\n  ".join(lines), problems=tuple(found)
    )
