"""The trusted model: :class:`Inode`, :class:`Hardlink`, :class:`Tree`.

A :class:`Tree` is immutable and always valid: the only way to make one is
:class:`TreeBuilder`, which owns every invariant libcomposefs relies on
(several misuses make the C library ``abort()``).  Every validator (TOC,
dumpfile, layer readers, image reader) builds through it, so those rules are
written once, here.

One storage form: every Tree keeps its rows as columns, a
:class:`~composefs_py._columns.Table` (storage only: no rule lives there),
and makes nodes as they are read.  Two ways in, one builder: :meth:`TreeBuilder.add`
takes one node at a time (dumpfile, layers, scan, the image reader,
strategies), :meth:`TreeBuilder.add_columns` takes many rows at once (the
TOC), checking them column by column with the same limits and the same
rule functions (``_inode_problem`` for the rows with extras,
``payloads_are_names``, ``_int_ranges``), and takes nothing when it cannot
prove them: the caller then adds them one by one, for the exact error.
``add_columns(proven=...)`` is a narrow contract (``PROVEN_RULES``): the rules
a caller's own schema checked over every value (only the TOC's) are not
checked again; the paths, types, data placement, extras, parents, duplicates,
hardlinks and limits always are.

Paths are ``bytes``, absolute and clean: ``b"/"`` is the root, ``b"/usr/bin"``
a child of ``b"/usr"``.  No trailing ``/``, no empty, ``.`` or ``..``
component, no NUL.

Cost (DESIGN rule 7): :meth:`TreeBuilder.add` is linear in the path and
node it is given (the path's checks, one dict insertion); each ``Limits``
cap is checked before the node it bounds is kept: ``max_entries`` before
the insertion, ``max_path_bytes``/``max_name_bytes``/``max_depth`` on the
path, ``max_total_path_bytes`` as each path is added and, for the parents a
path stands for (``synthesize_parents``), as they are found, before they
are made (a 4 KiB path of 1-byte names stands for 2,000 parents and 4 MB of
their paths); ``max_xattr_*``, ``max_inline_bytes``, ``max_symlink_bytes``
and ``max_file_size`` on the node.  :meth:`TreeBuilder.build` is linear in
the entries but for sorting each directory's names: hardlink chains are
resolved once each, however they are shaped (see ``_resolve_hardlinks``),
then the rows are put in columns in one pass (``_table_of``).
:meth:`TreeBuilder.add_columns` is linear in the rows but for the one sort
of the paths into Tree order (n log n): C-level joins, counts, ``min``/
``max`` and set algebra; ``max_path_bytes``/``max_name_bytes``/``max_depth``
on the joined paths before any column is made; the parents to make are
counted against ``max_entries`` and ``max_total_path_bytes`` as they are
found, before any is made (``_ancestors``); ``max_entries`` and
``max_total_path_bytes`` over all rows before the Table is made; hardlink
chains resolve once each (``_resolve_links``).
Rules of confinement (DESIGN rule 8) live here too: a payload is an object
name of the store, and an input's overlay xattrs (``trusted.overlay.*``,
``user.overlay.*``) are refused
(see ``payload_problem`` and ``OVERLAY_XATTR_PREFIXES``), unless ``Limits``
opts in.
"""

from __future__ import annotations

import os
import re
import stat
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import compress, count, repeat
from operator import eq, is_, is_not, itemgetter, not_
from typing import Any, Literal, TypeVar, cast

from ._columns import INT_FIELDS, NodeColumns, Table
from .errors import ValidationError
from .limits import Limits

__all__ = [
    "Hardlink",
    "Inode",
    "Node",
    "Tree",
    "TreeBuilder",
    "ROOT",
    "column_nodes",
    "new_inode",
]

_T = TypeVar("_T")

ROOT = b"/"

S_IFMT = stat.S_IFMT(0o177777)
S_IFREG = stat.S_IFREG
S_IFDIR = stat.S_IFDIR
S_IFLNK = stat.S_IFLNK
S_IFCHR = stat.S_IFCHR
S_IFBLK = stat.S_IFBLK
S_IFIFO = stat.S_IFIFO
S_IFSOCK = stat.S_IFSOCK
_FILE_TYPES = frozenset((S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK))
_U32_MAX = (1 << 32) - 1
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_NSEC_PER_SEC = 1_000_000_000
#: The int fields' bounds (low 0 but mtime's): add() checks them node by node
#: (``_inode_problem``), add_columns() column by column (``_int_ranges``).
#: A regular file's size is bounded by ``Limits.max_file_size``.
_MODE_MAX = S_IFMT | 0o7777
_NLINK_MAX = _ID_MAX = _U32_MAX
#: EROFS keeps 32 bits of device number: a larger one would silently become
#: another device (or 0:0, a whiteout).
_RDEV_MAX = _U32_MAX
_NSEC_MAX = _NSEC_PER_SEC - 1
DIGEST_SIZE = 32
#: xattr names EROFS stores as a prefix index and an empty suffix, which the
#: kernel refuses and the image reader loses.
_BARE_PREFIXES = frozenset((b"user.", b"trusted.", b"security.", b"lustre."))

#: A regular file's payload names its object in the store: the sha256 of the
#: content as 2 lowercase hex digits, ``/``, the other 62 (DESIGN rule 8).
#: Nothing else may name a file to open: not ``..``, not an absolute path,
#: not a digest of another length (``limits.allow_foreign_payloads`` opts out).
PAYLOAD_SIZE = 65
_HEX_AS_0 = bytes.maketrans(b"123456789abcdef", b"0" * 15)
_PAYLOAD_SHAPE = (b"00/" + b"0" * 62).translate(_HEX_AS_0)

#: overlayfs keeps its metadata in ``trusted.overlay.*`` xattrs.  libcomposefs
#: escapes an input's ``trusted.overlay.X`` as ``trusted.overlay.overlay.X`` in
#: the image, but the composefs mount shows it unescaped again, and an overlay
#: stacked on that mount (``mount_layers``) then reads it as its own: a
#: redirect to another layer's file, a metacopy, an origin, a whiteout...
#: So an input's ``trusted.overlay.*`` xattrs are refused (DESIGN section 4),
#: but for the one this package makes itself: ``trusted.overlay.opaque`` on a
#: directory, with the value ``y`` (what a ``.wh..wh..opq`` marker becomes:
#: the directory hides the layers below it, which the marker may do anyway)
#: or ``x`` (what libcomposefs itself puts on a directory holding whiteouts in
#: format 1, which reading such an image gives back: it only tells overlayfs
#: to look for whiteouts there, and every whiteout an input can make is a
#: character device 0/0 already).  ``user.overlay.*`` is the same metadata
#: for an overlay mounted with ``userxattr`` (an unprivileged one, in a user
#: namespace), which libcomposefs does not escape at all: it gets the same
#: rule, and the same two exceptions (format 1 marks a directory holding
#: whiteouts with ``user.overlay.opaque=x`` too).
#: ``limits.allow_overlay_xattrs`` opts out.
OVERLAY_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
_OWN_OVERLAY_XATTRS = frozenset(
    (prefix + b"opaque", value) for prefix in OVERLAY_XATTR_PREFIXES for value in (b"y", b"x")
)


def is_object_name(payload: bytes) -> bool:
    """Whether ``payload`` is an object name of the store, ``ab/`` + 62
    lowercase hex digits: the one definition (the store checks it again
    where it opens a file)."""
    return (
        payload.__class__ is bytes
        and len(payload) == PAYLOAD_SIZE
        and payload.translate(_HEX_AS_0) == _PAYLOAD_SHAPE
    )


def payload_problem(payload: bytes) -> str | None:
    """Why ``payload`` is no object name of the store, or None."""
    if is_object_name(payload):
        return None
    return (
        "must name an object of the store: 2 lowercase hex digits, '/', 62 lowercase "
        f"hex digits (the content's sha256), got {payload[:80]!r}"
        + ("..." if len(payload) > 80 else "")
    )


def payloads_are_names(payloads: list[bytes]) -> bool:
    """Each of ``payloads`` (bytes) is an object name (:func:`payload_problem` in bulk)."""
    if not payloads:
        return True
    joined = b"".join(payloads)
    return (
        len(joined) == PAYLOAD_SIZE * len(payloads)
        and set(map(len, payloads)) == {PAYLOAD_SIZE}
        and joined.translate(_HEX_AS_0) == _PAYLOAD_SHAPE * len(payloads)
    )


@dataclass(frozen=True, slots=True)
class Inode:
    """One inode of the image.

    ``mode`` is the full ``st_mode`` (file type and permission bits).
    ``nlink`` is kept as given for non-directories (the image stores it);
    for directories the builder sets it to 2 plus the number of
    subdirectories, as libcomposefs does.  ``size`` is the size of a regular
    file and 0 for every other type.  ``payload`` is the path of a regular
    file's content in the object store (``b"ab/cdef..."``), ``content`` its
    inline data, ``symlink_target`` a symlink's target, ``fsverity_digest`` the
    32-byte fs-verity digest of a regular file's content.  ``xattrs`` is
    sorted by name, names unique.
    """

    mode: int
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    mtime_nsec: int = 0
    size: int = 0
    rdev: int = 0
    payload: bytes | None = None
    symlink_target: bytes | None = None
    content: bytes | None = None
    fsverity_digest: bytes | None = None
    xattrs: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def file_type(self) -> int:
        """``stat.S_IFMT(mode)``."""
        return self.mode & S_IFMT

    @property
    def is_dir(self) -> bool:
        return self.mode & S_IFMT == S_IFDIR


@dataclass(frozen=True, slots=True)
class Hardlink:
    """A hardlink to the non-directory :class:`Inode` at ``target``.

    In a built :class:`Tree` the target is always an :class:`Inode` (chains are
    resolved by the builder).
    """

    target: bytes


Node = Inode | Hardlink


def parent_of(path: bytes) -> bytes:
    """Return the parent of clean absolute ``path`` (the root's parent is the root)."""
    cut = path.rfind(b"/")
    return path[:cut] if cut > 0 else ROOT


def name_of(path: bytes) -> bytes:
    """Return the last component of clean absolute ``path`` (``b""`` for the root)."""
    return path[path.rfind(b"/") + 1 :]


def _sort_key(path: bytes) -> list[bytes]:
    return path.split(b"/")


@dataclass(frozen=True, slots=True, eq=False)
class Tree:
    """An immutable, valid filesystem tree; make one with :class:`TreeBuilder`.

    Iterating yields ``(path, node)`` depth first: the root first, every
    directory before its children, siblings sorted by name bytes (the order of
    composefs-dump(5)).  Paths are bytes; a lookup takes a ``str`` too
    (``tree["/usr/bin"]``, encoded as :func:`os.fsencode` does).

    One storage form: the rows the builder proved, as columns
    (:class:`~composefs_py._columns.Table`); nodes are made as they are read
    (a per-node build keeps the node objects it was given with its rows).
    """

    _table: Table
    _key: object = None

    def __post_init__(self) -> None:
        if self._key is not _BUILDER_KEY:
            raise TypeError("a Tree is made by TreeBuilder.build(), which checks it")

    def __iter__(self) -> Iterator[tuple[bytes, Node]]:
        table = self._table
        nodes = table.nodes
        if nodes is not None:
            return zip(table.tree_paths(), map(nodes.__getitem__, table.order), strict=True)  # type: ignore[arg-type]
        return _table_items(table)

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, path: object) -> bool:
        return (_as_bytes(path) if path.__class__ is str else path) in self._table.index

    def __getitem__(self, path: bytes | str) -> Node:
        table = self._table
        return _table_node(table, table.index[path if path.__class__ is bytes else _as_bytes(path)])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tree):
            return NotImplemented
        return self.paths == other.paths and all(
            map(eq, (node for _, node in self), (node for _, node in other))
        )

    def __hash__(self) -> int:
        return hash(self.paths)

    def __repr__(self) -> str:
        return f"<Tree: {len(self)} entries>"

    def get(self, path: bytes | str) -> Node | None:
        table = self._table
        row = table.index.get(path if path.__class__ is bytes else _as_bytes(path))
        return None if row is None else _table_node(table, row)

    @property
    def paths(self) -> tuple[bytes, ...]:
        """Every path, in iteration order."""
        return self._table.tree_paths()

    @property
    def root(self) -> Inode:
        node = self[ROOT]
        assert isinstance(node, Inode)  # guaranteed by TreeBuilder
        return node

    def inode(self, path: bytes | str) -> Inode:
        """Return the inode at ``path``, following a hardlink."""
        node = self[path]
        if isinstance(node, Hardlink):
            node = self[node.target]
        assert isinstance(node, Inode)  # hardlinks resolve to inodes
        return node


def _table_node(table: Table, row: int) -> Node:
    """The node of ``table``'s ``row``."""
    nodes = table.nodes
    if nodes is not None:
        return cast(Node, nodes[row])
    target = table.links.get(row)
    if target is not None:
        return Hardlink(table.paths[target])
    ints = table.ints
    mode = ints["mode"][row]
    data = table.data[row]
    is_link = mode & S_IFMT == S_IFLNK
    content, digest, xattrs = table.extras.get(row, (None, None, ()))
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


def _table_items(table: Table, batch: int = 4096) -> Iterator[tuple[bytes, Node]]:
    """``(path, node)`` in Tree order, made a batch of rows at a time by C-level maps."""
    order, paths, data = table.order, table.paths, table.data
    columns = [table.ints[name] for name in INT_FIELDS]
    special = {*table.links, *table.extras}
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        pick = _picker(rows)
        ints = [pick(column) for column in columns]
        pieces = pick(data)
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
                    nodes[at] = _table_node(table, row)
        yield from zip(pick(paths), nodes, strict=True)


def _picker(rows: array[int]) -> Callable[[Sequence[_T]], tuple[_T, ...]]:
    """What takes the items at ``rows`` of a sequence, as a tuple (one C-level call)."""
    if len(rows) == 1:
        row = rows[0]
        return lambda values: (values[row],)
    return itemgetter(*rows)


def _as_bytes(path: bytes | str) -> bytes:
    """A Tree path given as ``str``, in bytes (:func:`os.fsencode`)."""
    return os.fsencode(path)


_BUILDER_KEY = object()

DuplicatePolicy = Literal["reject", "identical", "replace"]


class TreeBuilder:
    """The one place that turns validated pieces into a :class:`Tree`.

    ``synthesize_parents``: a missing parent directory is created as a
    directory 0755, uid/gid 0, mtime 0 (what containers/storage does); a later
    explicit directory entry for it replaces those attributes.  Otherwise a
    missing parent is an error (dumpfiles list parents first).

    ``duplicates``: what a second entry for the same path does: ``"reject"``
    (always an error), ``"identical"`` (an identical repeat is ignored, a
    different one rejected: TOC), ``"replace"`` (last wins: tar).  A directory
    that has children can only be replaced by a directory.

    ``count_hardlinks``: set each hardlink target's ``nlink`` to one plus the
    number of hardlinks to it (TOC and tar input, which carry no link counts).

    Every error is a :class:`ValidationError`; ``entry`` passed to :meth:`add`
    (the index of the record in the input) and the path locate it.
    """

    __slots__ = (
        "_limits",
        "_nodes",
        "_entries",
        "_synthesized",
        "_children",
        "_synthesize",
        "_duplicates",
        "_count_hardlinks",
        "_total_path_bytes",
        "_has_hardlinks",
        "_bulk",
    )

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        synthesize_parents: bool = False,
        duplicates: DuplicatePolicy = "reject",
        count_hardlinks: bool = False,
    ) -> None:
        self._limits = limits or Limits()
        self._nodes: dict[bytes, Node] = {}
        self._entries: dict[bytes, int | None] = {}
        self._synthesized: set[bytes] = set()
        self._children: dict[bytes, list[bytes]] = {}
        self._synthesize = synthesize_parents
        self._duplicates = duplicates
        self._count_hardlinks = count_hardlinks
        self._total_path_bytes = 0
        self._has_hardlinks = False
        self._bulk: Table | None = None

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, path: object) -> bool:
        return path in self._nodes

    def get(self, path: bytes | str) -> Node | None:
        return self._nodes.get(path if path.__class__ is bytes else _as_bytes(path))

    # -- adding --------------------------------------------------------

    def add(self, path: bytes, node: Node, *, entry: int | None = None) -> None:
        """Add ``node`` at clean absolute ``path``; raise ValidationError if invalid."""
        nodes = self._nodes
        if path in nodes:
            self._replace(path, node, entry)
            return
        if len(nodes) >= self._limits.max_entries:
            raise ValidationError(
                f"more than {self._limits.max_entries} entries", entry=entry, path=path
            )
        if path == ROOT:
            self._check_node(node, entry, path)
            if not (isinstance(node, Inode) and node.mode & S_IFMT == S_IFDIR):
                raise ValidationError("the root must be a directory", entry=entry, path=path)
        else:
            limits = self._limits
            cut = path.rfind(b"/")
            parent = path[:cut] if cut > 0 else ROOT
            siblings = self._children.get(parent)
            # cut == 1 would be "//name", which path[:1] turns into the root.
            if siblings is not None and cut >= 0 and cut != 1:
                # Fast path: the parent is a known (hence clean) directory, so
                # only the last component, the length and the depth are new.
                name = path[cut + 1 :]
                if (
                    not name
                    or name == b"."
                    or name == b".."
                    or len(name) > limits.max_name_bytes
                    or name.find(b"\0") >= 0
                    or len(path) > limits.max_path_bytes
                    or path.count(b"/") > limits.max_depth
                ):
                    self._check_path(path, entry)
            else:
                self._check_path(path, entry)
                if parent in nodes:
                    raise ValidationError(
                        "parent is not a directory", entry=entry, path=path, field="path"
                    )
                if not self._synthesize:
                    raise ValidationError(
                        "parent directory is missing", entry=entry, path=path, field="path"
                    )
                self._synthesize_dir(parent, entry)
                siblings = self._children[parent]
            if node.__class__ is Inode:
                problem = _inode_problem(node, limits)
                if problem is not None:
                    raise ValidationError(problem[1], entry=entry, path=path, field=problem[0])
            else:
                self._check_node(node, entry, path)
            siblings.append(path)
            self._total_path_bytes += len(path)
            if self._total_path_bytes > limits.max_total_path_bytes:
                raise ValidationError(
                    f"paths add up to more than {limits.max_total_path_bytes} bytes",
                    entry=entry,
                    path=path,
                )
        nodes[path] = node
        self._entries[path] = entry
        if isinstance(node, Hardlink):
            self._has_hardlinks = True
        elif node.mode & S_IFMT == S_IFDIR:
            self._children[path] = []

    def _synthesize_dir(self, path: bytes, entry: int | None) -> None:
        # The parents one deep path stands for take up to max_depth times its
        # length: count them against the limit as they are found, not once made.
        limits = self._limits
        room = limits.max_total_path_bytes - self._total_path_bytes - len(path)
        missing = [path]
        while path != ROOT and (path := parent_of(path)) not in self._nodes:
            room -= len(path)
            if room < 0:
                raise ValidationError(
                    f"paths add up to more than {limits.max_total_path_bytes} bytes",
                    entry=entry,
                    path=path,
                )
            missing.append(path)
        for synthetic in reversed(missing):
            self.add(synthetic, Inode(mode=S_IFDIR | 0o755), entry=entry)
            self._synthesized.add(synthetic)

    def _replace(self, path: bytes, node: Node, entry: int | None) -> None:
        old = self._nodes[path]
        self._check_node(node, entry, path)
        if path in self._synthesized:
            self._synthesized.discard(path)
        elif self._duplicates == "reject":
            raise ValidationError("duplicate path", entry=entry, path=path, field="name")
        elif self._duplicates == "identical":
            if old == node:
                return
            raise ValidationError(
                f"path repeats entry {self._entries[path]} with different attributes",
                entry=entry,
                path=path,
                field="name",
            )
        new_is_dir = isinstance(node, Inode) and node.mode & S_IFMT == S_IFDIR
        old_is_dir = isinstance(old, Inode) and old.mode & S_IFMT == S_IFDIR
        if old_is_dir and not new_is_dir:
            if self._children[path]:
                raise ValidationError(
                    "a directory with entries below it cannot become a non-directory",
                    entry=entry,
                    path=path,
                    field="type",
                )
            del self._children[path]
        elif new_is_dir and not old_is_dir:
            self._children[path] = []
        if path == ROOT and not new_is_dir:
            raise ValidationError("the root must be a directory", entry=entry, path=path)
        if isinstance(node, Hardlink):
            self._has_hardlinks = True
        self._nodes[path] = node
        self._entries[path] = entry

    # -- adding in bulk ------------------------------------------------

    def add_columns(self, columns: NodeColumns, *, proven: frozenset[str] = frozenset()) -> bool:
        """Take every row of ``columns`` at once if their rules hold; say whether.

        The rows are checked column by column with C-level operations (joins,
        counts, ``min``/``max``, set algebra, one regex over all paths) by
        this builder's rules and options, with the limits and rule functions
        :meth:`add` uses.  True: the rows are taken, :meth:`build` gives
        their Tree, the very Tree per-row adds would give.  False means only
        "not proven here" (a duplicate path, a missing parent not to be
        made, a bad value...): nothing is taken; add the rows one by one
        (:func:`column_nodes`), which says exactly what is wrong.  Only an
        empty builder takes rows in bulk.

        ``proven`` is a narrow contract: rule names (``PROVEN_RULES``) that
        the caller vouches every row already keeps, because every value went
        through a schema that checked exactly that rule (the TOC's msgspec
        schema and its column rules: ``toc.TOC_PROVEN``).  Those are not
        checked again.  Never pass it for rows of any other origin.
        """
        if self._nodes or self._bulk is not None:
            return False
        if not proven <= PROVEN_RULES:
            raise ValueError(f"unknown rules in proven: {sorted(proven - PROVEN_RULES)}")
        table = _bulk_table(columns, self._limits, self._synthesize, self._count_hardlinks, proven)
        if table is None:
            return False
        self._bulk = table
        return True

    # -- checks --------------------------------------------------------

    def _check_path(self, path: bytes, entry: int | None) -> None:
        limits = self._limits
        if (
            not path.startswith(b"/")
            or path.endswith(b"/")
            or path.find(b"\0") >= 0
            or path.find(b"//") >= 0
        ):
            raise ValidationError(
                "must be a clean absolute path without NUL", entry=entry, path=path, field="path"
            )
        if len(path) > limits.max_path_bytes:
            raise ValidationError(
                f"longer than {limits.max_path_bytes} bytes", entry=entry, path=path, field="path"
            )
        parts = path.split(b"/")
        if len(parts) - 1 > limits.max_depth:
            raise ValidationError(
                f"deeper than {limits.max_depth} levels", entry=entry, path=path, field="path"
            )
        for part in parts[1:]:
            if part == b"." or part == b"..":
                raise ValidationError(
                    f"component {part!r} is not allowed", entry=entry, path=path, field="path"
                )
            if len(part) > limits.max_name_bytes:
                raise ValidationError(
                    f"component longer than {limits.max_name_bytes} bytes",
                    entry=entry,
                    path=path,
                    field="path",
                )

    def _check_node(self, node: Node, entry: int | None, path: bytes) -> None:
        if isinstance(node, Hardlink):
            target = node.target
            if not isinstance(target, bytes) or not target.startswith(b"/"):
                raise ValidationError(
                    "hardlink target must be an absolute path",
                    entry=entry,
                    path=path,
                    field="linkName",
                )
            if target == path:
                raise ValidationError(
                    "hardlink to itself", entry=entry, path=path, field="linkName"
                )
            return
        if not isinstance(node, Inode):
            raise TypeError(f"expected Inode or Hardlink, got {type(node).__name__}")
        problem = _inode_problem(node, self._limits)
        if problem is not None:
            field, reason = problem
            raise ValidationError(reason, entry=entry, path=path, field=field)

    # -- building ------------------------------------------------------

    def build(self, *, cache_nodes: bool = True) -> Tree:
        """Resolve hardlinks, fix link counts, order the entries; return the Tree.

        ``cache_nodes``: the Tree keeps the node objects given to :meth:`add`
        with its rows, so reading a node makes none; False keeps the rows
        only (a node is made when read), for a Tree that is written rather
        than read: a tree of files with fs-verity digests then takes about a
        third of the memory.
        """
        if self._bulk is not None:
            if self._nodes:
                raise RuntimeError("rows were added both by add_columns() and by add()")
            return Tree(self._bulk, _BUILDER_KEY)
        nodes = self._nodes
        if ROOT not in nodes:
            if not self._synthesize:
                raise ValidationError("the input has no root directory")
            self.add(ROOT, Inode(mode=S_IFDIR | 0o755))
        if self._has_hardlinks:
            self._resolve_hardlinks()
        children = self._children
        is_dir = children.__contains__  # exactly the directories have a children list
        for directory, kids in children.items():
            node = nodes[directory]
            assert isinstance(node, Inode)
            nlink = 2 + sum(map(is_dir, kids))
            if node.nlink != nlink:
                nodes[directory] = _with(node, nlink=nlink)
        order: list[bytes] = []
        stack = [ROOT]
        while stack:
            path = stack.pop()
            order.append(path)
            below = children.get(path)
            if below:
                # siblings share their parent's prefix: path order is name order
                below.sort(reverse=True)
                stack.extend(below)
                below.reverse()  # leave ascending for later readers
        return Tree(_table_of(order, nodes, cache_nodes), _BUILDER_KEY)

    def _resolve_hardlinks(self) -> None:
        """Point every hardlink at the inode its chain ends at; count the links.

        Linear in the number of hardlinks, whatever their shape: once a
        chain is resolved, every link met on the way is rewritten to point at
        the inode, so a later chain through any of them ends in one step (a
        chain given from its start, or many links to one long chain, would
        otherwise be walked again for each link: quadratic).
        """
        nodes = self._nodes
        links: dict[bytes, int] = {}
        for path in list(nodes):
            node = nodes[path]
            if node.__class__ is not Hardlink:
                continue
            target = node.target
            found = nodes.get(target)
            if found.__class__ is not Inode:
                # a chain (or a bad link): walk it once, then shorten it
                walked = [path]
                on_walk = {path}
                while found.__class__ is Hardlink:
                    if target in on_walk:
                        raise ValidationError(
                            "hardlinks form a cycle",
                            entry=self._entries.get(path),
                            path=path,
                            field="linkName",
                        )
                    walked.append(target)
                    on_walk.add(target)
                    target = found.target
                    found = nodes.get(target)
                if found is None:
                    raise ValidationError(
                        f"hardlink target {target.decode('utf-8', 'backslashreplace')!r}"
                        " does not exist",
                        entry=self._entries.get(path),
                        path=path,
                        field="linkName",
                    )
                if len(walked) > 1 and found.mode & S_IFMT != S_IFDIR:  # type: ignore[union-attr]
                    resolved = Hardlink(target)
                    for link in walked:
                        nodes[link] = resolved
            if cast(Inode, found).mode & S_IFMT == S_IFDIR:
                raise ValidationError(
                    "hardlink to a directory",
                    entry=self._entries.get(path),
                    path=path,
                    field="linkName",
                )
            links[target] = links.get(target, 0) + 1
        if self._count_hardlinks:
            for target, count in links.items():
                inode = nodes[target]
                assert isinstance(inode, Inode)
                nodes[target] = _with(inode, nlink=1 + count)


class _InodeSlots:
    """An :class:`Inode`'s slots, writable while :func:`new_inode` fills them.

    A frozen dataclass sets each field through ``object.__setattr__`` (about
    2.5 us per Inode, the largest single cost of a big TOC); plain slot stores
    then one ``__class__`` assignment (allowed: same slots, same layout) make
    the very same Inode in a quarter of the time.
    """

    __slots__ = tuple(field.name for field in fields(Inode))

    def __init__(
        self,
        mode: int,
        nlink: int,
        uid: int,
        gid: int,
        mtime: int,
        mtime_nsec: int,
        size: int,
        rdev: int,
        payload: bytes | None,
        symlink_target: bytes | None,
        content: bytes | None,
        fsverity_digest: bytes | None,
        xattrs: tuple[tuple[bytes, bytes], ...],
        /,
    ) -> None:
        self.mode = mode
        self.nlink = nlink
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.mtime_nsec = mtime_nsec
        self.size = size
        self.rdev = rdev
        self.payload = payload
        self.symlink_target = symlink_target
        self.content = content
        self.fsverity_digest = fsverity_digest
        self.xattrs = xattrs
        self.__class__ = Inode  # type: ignore[assignment]


#: ``Inode(...)`` with all 13 fields given positionally, about 4x faster; the
#: result is an ordinary Inode (frozen, equal to one made the usual way).  It
#: checks nothing, as ``Inode(...)`` does not: TreeBuilder checks every node.
new_inode = cast(
    "Callable[[int, int, int, int, int, int, int, int, bytes | None, bytes | None, "
    "bytes | None, bytes | None, tuple[tuple[bytes, bytes], ...]], Inode]",
    _InodeSlots,
)


def _with(inode: Inode, *, nlink: int) -> Inode:
    """``replace(inode, nlink=nlink)``, without replace()'s generic (slow) path."""
    return new_inode(
        inode.mode, nlink, inode.uid, inode.gid, inode.mtime, inode.mtime_nsec, inode.size,
        inode.rdev, inode.payload, inode.symlink_target, inode.content, inode.fsverity_digest,
        inode.xattrs,
    )  # fmt: skip


def _inode_problem(node: Inode, limits: Limits) -> tuple[str, str] | None:
    """Return ``(field, reason)`` for the first invariant ``node`` breaks, or None."""
    mode = node.mode
    if mode.__class__ is not int or mode < 0 or mode & ~_MODE_MAX:
        return "mode", f"must be file type bits plus permission bits 0o7777, got {mode!r}"
    ftype = mode & S_IFMT
    if ftype not in _FILE_TYPES:
        return "mode", f"unknown file type 0o{ftype:o}"
    if not (node.nlink.__class__ is int and 0 <= node.nlink <= _NLINK_MAX):
        return "nlink", f"must be an integer in 0..{_NLINK_MAX}, got {node.nlink!r}"
    if not (node.uid.__class__ is int and 0 <= node.uid <= _ID_MAX):
        return "uid", f"must be an integer in 0..{_ID_MAX}, got {node.uid!r}"
    if not (node.gid.__class__ is int and 0 <= node.gid <= _ID_MAX):
        return "gid", f"must be an integer in 0..{_ID_MAX}, got {node.gid!r}"
    if not (node.mtime.__class__ is int and _I64_MIN <= node.mtime <= _I64_MAX):
        return "mtime", f"must be an integer in {_I64_MIN}..{_I64_MAX}, got {node.mtime!r}"
    if not (node.mtime_nsec.__class__ is int and 0 <= node.mtime_nsec <= _NSEC_MAX):
        return "mtime", f"nanoseconds must be in 0..{_NSEC_MAX}, got {node.mtime_nsec!r}"
    is_reg = ftype == S_IFREG
    if is_reg:
        if not (node.size.__class__ is int and 0 <= node.size <= limits.max_file_size):
            return "size", f"must be an integer in 0..{limits.max_file_size}, got {node.size!r}"
    elif node.size != 0:
        return "size", "only regular files have a size"
    if ftype in (S_IFCHR, S_IFBLK):
        if not (node.rdev.__class__ is int and 0 <= node.rdev <= _RDEV_MAX):
            return "rdev", f"must be an integer in 0..{_RDEV_MAX}, got {node.rdev!r}"
    elif node.rdev != 0:
        return "rdev", "only character and block devices have a device number"
    payload = node.payload
    if payload is not None:
        if not is_reg:
            return "payload", "only regular files have a payload"
        if (
            payload.__class__ is not bytes
            or not payload
            or len(payload) > limits.max_path_bytes
            or payload.find(b"\0") >= 0
        ):
            return "payload", f"must be 1..{limits.max_path_bytes} bytes without NUL"
        if not limits.allow_foreign_payloads:
            problem = payload_problem(payload)
            if problem is not None:
                return "payload", problem
    target = node.symlink_target
    if ftype == S_IFLNK:
        if (
            target.__class__ is not bytes
            or not target
            or len(target) > limits.max_symlink_bytes
            or target.find(b"\0") >= 0
        ):
            return "linkName", (
                f"symlink target must be 1..{limits.max_symlink_bytes} bytes without NUL"
            )
    elif target is not None:
        return "linkName", "only symlinks have a target"
    content = node.content
    if content is not None:
        if not is_reg:
            return "content", "only regular files have inline content"
        if content.__class__ is not bytes:
            return "content", "must be bytes"
        if not content:
            return "content", "empty inline content must be None (the image cannot tell them apart)"
        if len(content) > limits.max_inline_bytes:
            return "content", f"inline content is limited to {limits.max_inline_bytes} bytes"
        if len(content) != node.size:
            return "content", f"is {len(content)} bytes but size is {node.size}"
        if payload is not None:
            return "content", "a file has either inline content or a payload"
    digest = node.fsverity_digest
    if digest is not None:
        if not is_reg:
            return "digest", "only regular files have an fs-verity digest"
        if digest.__class__ is not bytes or len(digest) != DIGEST_SIZE:
            return "digest", f"fs-verity digest must be {DIGEST_SIZE} bytes"
    xattrs = node.xattrs
    if xattrs:
        if xattrs.__class__ is not tuple:
            return "xattrs", "must be a tuple of (name, value) pairs"
        previous = b""
        for pair in xattrs:
            if pair.__class__ is not tuple or len(pair) != 2:
                return "xattrs", "must be a tuple of (name, value) pairs"
            name, value = pair
            if name.__class__ is not bytes or value.__class__ is not bytes:
                return "xattrs", "names and values must be bytes"
            if not name or len(name) > limits.max_xattr_name_bytes or name.find(b"\0") >= 0:
                return "xattrs", (
                    f"name must be 1..{limits.max_xattr_name_bytes} bytes without NUL, "
                    f"got {name[:64]!r}"
                )
            if name in _BARE_PREFIXES:
                return "xattrs", f"name {name!r} is only a namespace prefix"
            if name <= previous:
                return "xattrs", f"names must be unique and sorted, got {name!r} again"
            previous = name
            if (
                name.startswith(OVERLAY_XATTR_PREFIXES)
                and not limits.allow_overlay_xattrs
                and not (ftype == S_IFDIR and pair in _OWN_OVERLAY_XATTRS)
            ):
                return "xattrs", (
                    f"{name.decode('utf-8', 'backslashreplace')} is overlayfs metadata, "
                    "which would steer an overlay mount stacked on this image: refused "
                    "(only {trusted,user}.overlay.opaque=y or x on a directory is taken; "
                    "Limits.allow_overlay_xattrs=True carries any)"
                )
            if len(value) > limits.max_xattr_value_bytes:
                return "xattrs", (
                    f"value of {name.decode('utf-8', 'backslashreplace')} is longer than "
                    f"{limits.max_xattr_value_bytes} bytes"
                )
        space = Limits.xattr_space(xattrs)
        if space > limits.max_xattr_space:
            return "xattrs", (
                f"take {space} bytes of inode xattr space, more than {limits.max_xattr_space}"
            )
    return None


# ---------------------------------------------------------------------------
# the Tree's rows (composefs_py._columns.Table)
# ---------------------------------------------------------------------------


#: Rows put in columns at a time by ``_table_of``.
_BATCH = 8192


def _table_of(order: list[bytes], nodes: Mapping[bytes, Node], cache_nodes: bool) -> Table:
    """The rows of a per-node build, in Tree order (``cache_nodes``: they keep
    its node objects)."""
    in_order: list[Any] = list(map(nodes.__getitem__, order))
    inodes = in_order
    links: dict[int, int] = {}
    if Hardlink in set(map(type, in_order)):
        link_rows = list(compress(count(), map(is_, map(type, in_order), repeat(Hardlink))))
        targets = {in_order[row].target for row in link_rows}
        row_of = {path: row for row, path in enumerate(order) if path in targets}
        inodes = list(in_order)
        for row in link_rows:
            target = row_of[in_order[row].target]
            links[row] = target
            # the row of a hardlink: the target's mode (for C), nothing of its own
            inodes[row] = Inode(in_order[target].mode)
    ints = {name: array("q") for name in INT_FIELDS}
    columns = list(ints.values())
    step = len(columns)
    for start in range(0, len(inodes), _BATCH):
        # a batch row by row (one pass), then one C-level slice per field: the
        # temporaries stay small whatever the tree's size
        flat = array("q")
        flat.fromlist(
            [value for n in inodes[start : start + _BATCH]
             for value in (n.mode, n.nlink, n.uid, n.gid, n.mtime, n.mtime_nsec, n.size, n.rdev)]
        )  # fmt: skip
        for at, column in enumerate(columns):
            column.extend(flat[at::step])
    data = [n.payload if n.payload is not None else n.symlink_target for n in inodes]
    extras = {
        row: (n.content, n.fsverity_digest, n.xattrs)
        for row, n in enumerate(inodes)
        if n.content is not None or n.fsverity_digest is not None or n.xattrs
    }
    return Table(
        order, ints, data, links, extras, array("q", range(len(order))),
        in_order if cache_nodes else None,
    )  # fmt: skip


#: What a hardlink's row reads as in :class:`NodeColumns`.
EMPTY_FILE = Inode(S_IFREG, nlink=0)


def column_nodes(columns: NodeColumns) -> Iterator[tuple[bytes, Node]]:
    """The rows of ``columns`` as ``(path, node)``, for :meth:`TreeBuilder.add`."""
    links, extras = columns.links, columns.extras
    nlink = columns.nlink
    rdev = columns.rdev
    for row, path in enumerate(columns.paths):
        target = links.get(row)
        if target is not None:
            yield path, Hardlink(target)
            continue
        mode = columns.mode[row]
        data = columns.data[row]
        is_link = mode.__class__ is int and mode & S_IFMT == S_IFLNK
        content, digest, xattrs = extras.get(row, (None, None, ()))
        yield (
            path,
            new_inode(
                mode,
                1 if nlink is None else nlink[row],
                columns.uid[row],
                columns.gid[row],
                columns.mtime[row],
                columns.mtime_nsec[row],
                columns.size[row],
                0 if rdev is None else rdev[row],
                None if is_link else data,
                data if is_link else None,
                content,
                digest,
                xattrs,
            ),
        )


# ---------------------------------------------------------------------------
# the rules in bulk (TreeBuilder.add_columns)
# ---------------------------------------------------------------------------

#: ``proven=``: every mode, uid, gid, mtime, mtime_nsec and size is an int
#: (not a bool) in its range of :func:`_int_ranges`.
PROVEN_INT_RANGES = "int_ranges"
#: ``proven=``: every regular file's data is an object name (:func:`is_object_name`).
PROVEN_PAYLOAD_NAMES = "payload_names"
PROVEN_RULES = frozenset((PROVEN_INT_RANGES, PROVEN_PAYLOAD_NAMES))
_PROVEN_INTS = frozenset(("mode", "uid", "gid", "mtime", "mtime_nsec", "size"))

# A "." or ".." component anywhere in the NUL-joined paths.
_DOT_COMPONENT = re.compile(rb"/\.\.?(?:/|\x00|\Z)").search


def _int_ranges(limits: Limits) -> dict[str, tuple[int, int]]:
    """Each int field's range, as :func:`_inode_problem` checks it node by node."""
    return {
        "mode": (0, _MODE_MAX),
        "nlink": (0, _NLINK_MAX),
        "uid": (0, _ID_MAX),
        "gid": (0, _ID_MAX),
        "mtime": (_I64_MIN, _I64_MAX),
        "mtime_nsec": (0, _NSEC_MAX),
        "size": (0, limits.max_file_size),
        "rdev": (0, _RDEV_MAX),
    }


def _int_column(values: list[int], low: int, high: int, proven: bool) -> array[int] | None:
    """``values`` as an array("q") if each is an int (not a bool) in low..high."""
    if not values:
        return array("q")
    if not proven and set(map(type, values)) != {int}:
        return None
    try:
        column = array("q", values)  # proves _I64_MIN..._I64_MAX
    except (OverflowError, TypeError):
        return None
    if proven:
        return column
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


def _bulk_table(
    columns: NodeColumns,
    limits: Limits,
    synthesize_parents: bool,
    count_hardlinks: bool,
    proven: frozenset[str],
) -> Table | None:
    """The rows a TreeBuilder makes of ``columns``, as a Table; None: not proven.

    Without ``synthesize_parents`` a parent must come before its children,
    as :meth:`TreeBuilder.add` wants.
    """
    paths = list(columns.paths)
    n = len(paths)
    if n == 0 or n > limits.max_entries or not all(
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
    path_bytes = len(joined) - (n - 1) - (root_row is not None)  # as add() counts
    del joined

    ints: dict[str, array[int]] = {}
    given = PROVEN_INT_RANGES in proven
    for name, (low, high) in _int_ranges(limits).items():
        values = getattr(columns, name)
        if values is None:
            ints[name] = array("q", (1 if name == "nlink" else 0,)) * n
            continue
        column = _int_column(values, low, high, given and name in _PROVEN_INTS)
        if column is None:
            return None
        ints[name] = column
    mode = ints["mode"]

    # file types, by distinct mode (a few dozen at most)
    modes = set(mode)
    if any(m & ~_MODE_MAX or m & S_IFMT not in _FILE_TYPES for m in modes):
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
    if not _data_ok(columns.data, is_reg, is_link, limits, PROVEN_PAYLOAD_NAMES in proven):
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
        if found is None or not index.keys().isdisjoint(found):
            # past a limit, or an ancestor to make up that the input has as a
            # non-directory (a file two levels up): add() says which
            return None
        made = found
    elif not synthesize_parents:
        # add() wants each parent before its children (the root first)
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
        for target, times in _counts(final_links.values()).items():
            nlink[target] = 1 + times
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
    return Table(paths, ints, data, final_links, dict(extras), order)


def _counts(items: Iterable[_T]) -> dict[_T, int]:
    """How often each item comes (Counter's first isinstance check against
    Mapping fills the ABC caches with small objects that live on, each
    keeping an allocator arena that the parse's temporaries had filled)."""
    counts: dict[_T, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


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
            path = parent_of(path)
    return sorted(made, key=lambda path: path.count(b"/") if path != ROOT else -1)


def _data_ok(
    data: list[bytes | None],
    is_reg: list[bool],
    is_link: list[bool],
    limits: Limits,
    names_proven: bool,
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
    if names_proven and not limits.allow_foreign_payloads:
        return True
    payloads = [d for d in compress(data, is_reg) if d is not None]
    if not payloads:
        return True
    if limits.allow_foreign_payloads:
        return _strings_ok(payloads, limits.max_path_bytes)
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
