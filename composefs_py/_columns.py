"""TreeBuilder's bulk form: node columns -> a :class:`Tree` kept as columns.

A big input (a TOC, the sandbox's records) is checked column by column with
C-level operations (joins, counts, ``min``/``max``, set algebra, one regex
over all paths) instead of node by node.  :func:`tree_from_columns` vouches
only for what it can prove, by the very rules of
:class:`~composefs_py.model.TreeBuilder`, and returns None for anything else
(a duplicate path, a missing parent it may not make, a bad value...): the
caller then adds the same rows through a TreeBuilder, which says exactly
what is wrong.  So a Tree made here is the Tree a TreeBuilder makes from the
same rows (``tests/test_columns.py`` checks this differentially), and no
rule is written twice: whatever this module cannot prove cheaply it leaves
to the builder.

Cost: linear in the rows (the one sort, of the paths into Tree order, is
n log n); the parents to make for missing ones are counted against
``max_entries`` and ``max_total_path_bytes`` as they are found (see
``_ancestors``), and hardlink chains resolve once each (``_resolve_links``).

The Tree keeps the columns (``Tree._table``): its nodes are made when read,
and :mod:`composefs_py._native` hands the columns to C without a Python
object per node, which is where the memory and time of a big tree went.
"""

from __future__ import annotations

import marshal
import re
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import accumulate, compress, pairwise, repeat
from operator import is_not, not_
from typing import Any, TypeVar

from .limits import Limits
from .model import (
    _BUILDER_KEY,
    _FILE_TYPES,
    _I64_MAX,
    _I64_MIN,
    _NSEC_PER_SEC,
    _U32_MAX,
    ROOT,
    S_IFBLK,
    S_IFCHR,
    S_IFDIR,
    S_IFLNK,
    S_IFMT,
    S_IFREG,
    Hardlink,
    Inode,
    Node,
    Tree,
    _inode_problem,
    new_inode,
    payloads_are_names,
)

__all__ = ["EMPTY_FILE", "NodeColumns", "Table", "tree_from_columns"]

_T = TypeVar("_T")
Extra = tuple[bytes | None, bytes | None, tuple[tuple[bytes, bytes], ...]]

#: The int fields, in the order of cfspy_build_tree's rows (shim.h CFSPY_*).
INT_FIELDS = ("mode", "nlink", "uid", "gid", "mtime", "mtime_nsec", "size", "rdev")

# A "." or ".." component anywhere in the NUL-joined paths.
_DOT_COMPONENT = re.compile(rb"/\.\.?(?:/|\x00|\Z)").search


@dataclass(slots=True)
class NodeColumns:
    """Untrusted nodes as columns, one row per node, for :func:`tree_from_columns`.

    Row ``i`` is the node at ``paths[i]``: an :class:`Inode` with
    ``mode[i]``, ``uid[i]``... (``nlink`` None: all 1; ``rdev`` None: all 0),
    whose ``data[i]`` is its payload (a regular file) or its symlink target
    (a symlink) and None otherwise, and whose inline content, fs-verity
    digest and xattrs are ``extras[i]`` when it has any.  A row in ``links``
    is a :class:`Hardlink` to ``links[i]`` instead: its other columns must
    read as an empty regular file (mode ``S_IFREG``, zeros, data None).
    """

    paths: list[bytes]
    mode: list[int]
    uid: list[int]
    gid: list[int]
    mtime: list[int]
    mtime_nsec: list[int]
    size: list[int]
    data: list[bytes | None]
    nlink: list[int] | None = None
    rdev: list[int] | None = None
    links: dict[int, bytes] = field(default_factory=dict)
    extras: dict[int, Extra] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def nodes(self) -> Iterator[tuple[bytes, Node]]:
        """The rows as ``(path, node)``, for :meth:`TreeBuilder.add`."""
        links, extras = self.links, self.extras
        nlink = self.nlink
        rdev = self.rdev
        for row, path in enumerate(self.paths):
            target = links.get(row)
            if target is not None:
                yield path, Hardlink(target)
                continue
            mode = self.mode[row]
            data = self.data[row]
            is_link = mode.__class__ is int and mode & S_IFMT == S_IFLNK
            content, digest, xattrs = extras.get(row, (None, None, ()))
            yield (
                path,
                new_inode(
                    mode,
                    1 if nlink is None else nlink[row],
                    self.uid[row],
                    self.gid[row],
                    self.mtime[row],
                    self.mtime_nsec[row],
                    self.size[row],
                    0 if rdev is None else rdev[row],
                    None if is_link else data,
                    data if is_link else None,
                    content,
                    digest,
                    xattrs,
                ),
            )


class Table:
    """The checked columns behind a Tree (rows in input order, then made parents).

    Only a few big buffers: the paths and the data joined, with their
    lengths, and one array per int field, so that nothing of a node outlives
    the parse as a Python object of its own (a bulk parse frees every small
    object it made, and its memory with them).  The lists of paths and data,
    and the path -> row index, are made on first use, for reading nodes.
    """

    __slots__ = (
        "path_buf", "path_lens", "ints", "data_buf", "data_lens", "link_rows", "link_targets",
        "extras_blob", "order", "_paths", "_data", "_index", "_links", "_extras", "__weakref__",
    )  # fmt: skip

    def __init__(
        self,
        paths: list[bytes],
        ints: dict[str, array[int]],
        data: list[bytes | None],
        links: dict[int, int],
        extras: dict[int, Extra],
        order: array[int],
    ) -> None:
        self.path_buf = b"".join(paths)
        self.path_lens = array("q", map(len, paths))
        self.data_buf = b"".join(filter(None, data))  # an empty piece adds nothing
        self.data_lens = array("q", [-1 if piece is None else len(piece) for piece in data])
        #: field name -> array("q") of every row
        self.ints = ints
        #: each hardlink row, and the row of its (final) target
        self.link_rows = array("q", links)
        self.link_targets = array("q", links.values())
        #: row -> (content, fs-verity digest, xattrs), marshal'd
        self.extras_blob = marshal.dumps(extras) if extras else b""
        #: the rows in Tree order
        self.order = order
        self._paths: list[bytes] | None = None
        self._data: list[bytes | None] | None = None
        self._index: dict[bytes, int] | None = None
        self._links: dict[int, int] | None = None
        self._extras: dict[int, Extra] | None = None

    @property
    def links(self) -> dict[int, int]:
        """Hardlink row -> the row of its (final) target."""
        if self._links is None:
            self._links = dict(zip(self.link_rows, self.link_targets, strict=True))
        return self._links

    @property
    def extras(self) -> dict[int, Extra]:
        """Row -> (inline content, fs-verity digest, xattrs), for the rows that have any."""
        if self._extras is None:
            self._extras = marshal.loads(self.extras_blob) if self.extras_blob else {}
        return self._extras

    @staticmethod
    def starts(lens: array[int]) -> array[int]:
        """Where each piece starts in its buffer (a piece of length -1 is none)."""
        sizes = map(max, lens, repeat(0)) if -1 in lens else lens
        return array("q", accumulate(sizes, initial=0))

    @property
    def paths(self) -> list[bytes]:
        if self._paths is None:
            buf = self.path_buf
            self._paths = [buf[start:end] for start, end in pairwise(self.starts(self.path_lens))]
        return self._paths

    @property
    def data(self) -> list[bytes | None]:
        if self._data is None:
            buf = self.data_buf
            self._data = [
                None if length < 0 else buf[start : start + length]
                # starts has one more item (the end): zip stops at the last length
                for start, length in zip(self.starts(self.data_lens), self.data_lens, strict=False)
            ]
        return self._data

    @property
    def index(self) -> dict[bytes, int]:
        if self._index is None:
            self._index = dict(zip(self.paths, range(len(self.path_lens)), strict=True))
        return self._index

    def tree_paths(self) -> tuple[bytes, ...]:
        """The paths in Tree order."""
        return tuple(map(self.paths.__getitem__, self.order))

    def items(self, batch: int = 4096) -> Iterator[tuple[bytes, Node]]:
        """``(path, node)`` in Tree order, made a batch of rows at a time by C-level maps."""
        order, paths, data = self.order, self.paths, self.data
        columns = [self.ints[name] for name in INT_FIELDS]
        links, extras = self.links, self.extras
        special = {*links, *extras}
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            ints = [list(map(column.__getitem__, rows)) for column in columns]
            pieces = list(map(data.__getitem__, rows))
            symlinks = {m for m in set(ints[0]) if m & S_IFMT == S_IFLNK}
            is_link = list(map(symlinks.__contains__, ints[0]))
            nodes: list[Node] = list(
                map(
                    new_inode,
                    *ints,
                    [None if link else piece for link, piece in zip(is_link, pieces, strict=True)],
                    [piece if link else None for link, piece in zip(is_link, pieces, strict=True)],
                    repeat(None),
                    repeat(None),
                    repeat(()),
                )
            )
            if special:
                for at, row in enumerate(rows):
                    if row in special:
                        nodes[at] = self.node(row)
            yield from zip(map(paths.__getitem__, rows), nodes, strict=True)

    def node(self, row: int) -> Node:
        target = self.links.get(row)
        if target is not None:
            return Hardlink(self.paths[target])
        ints = self.ints
        mode = ints["mode"][row]
        data = self.data[row]
        is_link = mode & S_IFMT == S_IFLNK
        content, digest, xattrs = self.extras.get(row, (None, None, ()))
        return new_inode(
            mode,
            ints["nlink"][row],
            ints["uid"][row],
            ints["gid"][row],
            ints["mtime"][row],
            ints["mtime_nsec"][row],
            ints["size"][row],
            ints["rdev"][row],
            None if is_link else data,
            data if is_link else None,
            content,
            digest,
            xattrs,
        )


class _TableNodes(Mapping[bytes, Node]):
    """A Tree's path -> node mapping over its :class:`Table` (nodes made on reading)."""

    __slots__ = ("_table",)

    def __init__(self, table: Table) -> None:
        self._table = table

    def __getitem__(self, path: bytes) -> Node:
        return self._table.node(self._table.index[path])

    def __contains__(self, path: object) -> bool:
        return path in self._table.index

    def get(self, path: bytes, default: Any = None) -> Any:
        row = self._table.index.get(path)
        return default if row is None else self._table.node(row)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._table.index)

    def __len__(self) -> int:
        return len(self._table.path_lens)


def _int_column(values: list[int], low: int, high: int) -> array[int] | None:
    """``values`` as an array("q") if each is an int (not a bool) in low..high."""
    if not values:
        return array("q")
    if set(map(type, values)) != {int}:
        return None
    try:
        column = array("q", values)  # proves _I64_MIN..._I64_MAX
    except OverflowError:
        return None
    if (low > _I64_MIN and min(values) < low) or (high < _I64_MAX and max(values) > high):
        return None
    return column


def _paths_ok(paths: list[bytes], joined: bytes, has_root: bool, limits: Limits) -> bool:
    """Every path clean, absolute, within the length, name and depth limits."""
    n = len(paths)
    if (
        joined.count(b"\0") != n - 1
        or (b"\0" + joined).count(b"\0/") != n
        or joined.find(b"//") >= 0
        or (joined + b"\0").count(b"/\0") != has_root
        or _DOT_COMPONENT(joined) is not None
    ):
        return False
    longest = max(map(len, paths))
    if longest > limits.max_path_bytes:
        return False
    # Only a path longer than a limit can break it: those few are split.
    if longest > limits.max_name_bytes or longest > limits.max_depth:
        for path in paths:
            if len(path) > limits.max_name_bytes or len(path) > limits.max_depth:
                parts = path.split(b"/")
                if len(parts) - 1 > limits.max_depth:
                    return False
                if max(map(len, parts)) > limits.max_name_bytes:
                    return False
    return True


def tree_from_columns(
    columns: NodeColumns,
    limits: Limits | None = None,
    *,
    synthesize_parents: bool = False,
    count_hardlinks: bool = False,
) -> Tree | None:
    """The Tree a TreeBuilder makes of ``columns``' rows, or None.

    ``synthesize_parents`` and ``count_hardlinks`` are TreeBuilder's; a
    duplicate path is never taken (None).  Without ``synthesize_parents`` a
    parent must come before its children, as ``TreeBuilder.add`` wants.
    None means only "not proven here": add the rows (``columns.nodes()``)
    through a TreeBuilder to learn what, if anything, is wrong.
    """
    limits = limits or Limits()
    paths = list(columns.paths)
    n = len(paths)
    if n == 0 or not all(
        len(column) == n
        for column in (
            columns.mode, columns.uid, columns.gid, columns.mtime, columns.mtime_nsec,
            columns.size, columns.data, columns.nlink or paths, columns.rdev or paths,
        )
    ):  # fmt: skip
        return None
    if set(map(type, paths)) != {bytes}:
        return None
    index = dict(zip(paths, range(n), strict=True))
    if len(index) != n:
        return None  # duplicates: the builder's policy decides
    root_row = index.get(ROOT)
    joined = b"\0".join(paths)
    if not _paths_ok(paths, joined, root_row is not None, limits):
        return None
    path_bytes = len(joined) - (n - 1) - (root_row is not None)  # as the builder counts
    del joined

    ints: dict[str, array[int]] = {}
    for name, values, low, high in (
        ("mode", columns.mode, 0, S_IFMT | 0o7777),
        ("uid", columns.uid, 0, _U32_MAX),
        ("gid", columns.gid, 0, _U32_MAX),
        ("mtime", columns.mtime, _I64_MIN, _I64_MAX),
        ("mtime_nsec", columns.mtime_nsec, 0, _NSEC_PER_SEC - 1),
        ("size", columns.size, 0, limits.max_file_size),
        ("nlink", columns.nlink, 0, _U32_MAX),
        ("rdev", columns.rdev, 0, _U32_MAX),
    ):
        if values is None:
            ints[name] = array("q", (1 if name == "nlink" else 0,)) * n
            continue
        column = _int_column(values, low, high)
        if column is None:
            return None
        ints[name] = column
    mode = ints["mode"]

    # file types, by distinct mode (a few dozen at most)
    modes = set(mode)
    if any(m & ~(S_IFMT | 0o7777) or m & S_IFMT not in _FILE_TYPES for m in modes):
        return None
    of_type = {
        kind: {m for m in modes if m & S_IFMT == kind}
        for kind in (S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFBLK)
    }
    is_reg = list(map(of_type[S_IFREG].__contains__, mode))
    is_link = list(map(of_type[S_IFLNK].__contains__, mode))
    if any(compress(ints["size"], map(not_, is_reg))):
        return None  # a size on something else than a regular file
    if columns.rdev is not None:
        devices = of_type[S_IFCHR] | of_type[S_IFBLK]
        if any(compress(ints["rdev"], map(not_, map(devices.__contains__, mode)))):
            return None
    if not _data_ok(columns.data, is_reg, is_link, limits):
        return None

    links = columns.links
    extras = columns.extras
    for row, extra in extras.items():
        if row.__class__ is not int or not 0 <= row < n or row in links:
            return None
        content, digest, xattrs = extra
        node = new_inode(
            mode[row], 1, 0, 0, 0, 0, ints["size"][row], 0,
            columns.data[row] if is_reg[row] else None,
            columns.data[row] if is_link[row] else None, content, digest, xattrs,
        )  # fmt: skip
        if _inode_problem(node, limits) is not None:
            return None

    # parents: each one a directory of the input (or one made here)
    dirs = set(compress(paths, map(of_type[S_IFDIR].__contains__, mode)))
    if root_row is not None and ROOT not in dirs:
        return None
    made: list[bytes] = []
    missing = {parent for parent, _, _ in map(bytes.rpartition, paths, repeat(b"/"))} - dirs
    missing.discard(b"")  # the root's
    if root_row is None:
        if not synthesize_parents:
            return None
        missing.add(ROOT)
    if missing:
        if not synthesize_parents or not missing.isdisjoint(index):
            return None  # a parent that is not a directory, or no maker
        found = _ancestors(
            missing,
            dirs,
            limits.max_entries - n,
            limits.max_total_path_bytes - path_bytes + 1,  # + 1: the root's "/" counts 0
        )
        if found is None:
            return None  # past a limit: the builder says which
        made = found
    elif not synthesize_parents:
        # TreeBuilder.add wants each parent before its children (the root first)
        below = map(bytes.rpartition, paths[1:], repeat(b"/"))
        rows = map(index.__getitem__, (parent or ROOT for parent, _, _ in below))
        if root_row != 0 or any(map(int.__ge__, rows, range(1, n))):
            return None
    if n + len(made) > limits.max_entries:
        return None
    if path_bytes + sum(map(len, made)) - (ROOT in made) > limits.max_total_path_bytes:
        return None

    if made:
        first = n
        for path in made:
            index[path] = len(paths)
            paths.append(path)
        data = [*columns.data, *repeat(None, len(made))]
        count = len(made)
        for name, column in ints.items():
            column.extend(array("q", (S_IFDIR | 0o755 if name == "mode" else 0,)) * count)
        ints["nlink"][first:] = array("q", (1,)) * count
        dirs.update(made)
        n = len(paths)
    else:
        data = list(columns.data)

    final_links = _resolve_links(links, index, data, mode, n)
    if final_links is None:
        return None
    nlink = ints["nlink"]
    if count_hardlinks and final_links:
        for target, count in _counts(final_links.values()).items():
            nlink[target] = 1 + count
    # a directory's link count: 2 + its subdirectories
    dirs.discard(ROOT)
    subdirs = _counts(parent or ROOT for parent, _, _ in map(bytes.rpartition, dirs, repeat(b"/")))
    dirs.add(ROOT)
    for path in dirs:
        nlink[index[path]] = 2 + subdirs.get(path, 0)
    for row in final_links:
        # the row of a hardlink reads as the builder keeps it (mode only matters to C)
        mode[row] = mode[final_links[row]]

    del index, dirs, subdirs
    keys = list(map(bytes.replace, paths, repeat(b"/"), repeat(b"\0")))
    order = array("q", sorted(range(n), key=keys.__getitem__))
    del keys
    table = Table(paths, ints, data, final_links, dict(extras), order)
    return Tree(None, _TableNodes(table), _BUILDER_KEY, table)


def _counts(items: Iterable[_T]) -> dict[_T, int]:
    """How often each item comes (Counter's first isinstance check against
    Mapping fills the ABC caches with small objects that live on, each
    keeping an allocator arena that the parse's temporaries had filled)."""
    counts: dict[_T, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def _parent(path: bytes) -> bytes:
    cut = path.rfind(b"/")
    return path[:cut] if cut > 0 else b""


def _ancestors(
    missing: set[bytes], dirs: set[bytes], entries: int, path_bytes: int
) -> list[bytes] | None:
    """The directories to make for ``missing`` parents, each after its own parent.

    None once they would be more than ``entries`` or their paths longer than
    ``path_bytes`` in all: checked as each is made, since a few deep paths
    of short names (a 4 KiB name, 2,000 levels) stand for megabytes of
    parents' paths.
    """
    made: set[bytes] = set()
    for path in missing:
        while path not in made and path not in dirs:
            made.add(path)
            entries -= 1
            path_bytes -= len(path)
            if entries < 0 or path_bytes < 0:
                return None
            if path == ROOT:
                break
            path = _parent(path) or ROOT
    return sorted(made, key=lambda path: path.count(b"/") if path != ROOT else -1)


def _data_ok(
    data: list[bytes | None], is_reg: list[bool], is_link: list[bool], limits: Limits
) -> bool:
    """Payloads only on regular files, each an object name; targets on every symlink."""
    present = list(map(is_not, data, repeat(None)))
    if present.count(True) != sum(is_link) + sum(compress(present, is_reg)):
        return False  # data on a type that has none
    targets = list(compress(data, is_link))
    if targets and not _strings_ok(targets, limits.max_symlink_bytes):  # type: ignore[arg-type]
        return False
    if len(targets) != sum(is_link) or None in targets:
        return False
    payloads = [d for d in compress(data, is_reg) if d is not None]
    if not payloads:
        return True
    if limits.allow_foreign_payloads:
        return _strings_ok(payloads, limits.max_path_bytes)
    # the model's rule (object names), over all of them at once
    return set(map(type, payloads)) == {bytes} and payloads_are_names(payloads)


def _strings_ok(values: list[bytes], longest: int) -> bool:
    """Each value bytes, 1..longest long, without NUL."""
    if set(map(type, values)) != {bytes}:
        return False
    lengths = list(map(len, values))
    return (
        min(lengths) >= 1
        and max(lengths) <= longest
        and b"\0".join(values).count(b"\0") == (len(values) - 1)
    )


def _resolve_links(
    links: dict[int, bytes],
    index: dict[bytes, int],
    data: list[bytes | None],
    mode: array[int],
    n: int,
) -> dict[int, int] | None:
    """Each hardlink row -> the row of the Inode its chain ends at (None: not proven)."""
    if not links:
        return {}
    found: dict[int, int] = {}
    for row, target in links.items():
        if row.__class__ is not int or not 0 <= row < n or target.__class__ is not bytes:
            return None
        # a hardlink row holds nothing of its own (C reads no data for it)
        if mode[row] != S_IFREG or data[row] is not None:
            return None
    # Each row's final target, once known: a chain met again ends in one step,
    # so resolving every chain is linear in the links, whatever their shape.
    for row, target in links.items():
        if row in found:
            continue
        walked = [row]
        on_walk = {row}
        at = index.get(target)
        while at is not None and at in links:
            end = found.get(at)
            if end is not None:
                at = end
                break
            if at in on_walk:
                return None  # a cycle
            walked.append(at)
            on_walk.add(at)
            at = index.get(links[at])
        if at is None or mode[at] & S_IFMT == S_IFDIR:
            return None
        for link in walked:
            found[link] = at
    return found


#: What a hardlink's row reads as (NodeColumns' rule).
EMPTY_FILE = Inode(S_IFREG, nlink=0)
