"""The trusted model: :class:`Inode`, :class:`Hardlink`, :class:`Tree`.

A :class:`Tree` is immutable and always valid: the only way to make one is
:class:`TreeBuilder`, which owns every invariant libcomposefs relies on
(several misuses make the C library ``abort()``).  Every validator (TOC,
dumpfile, layer readers, image reader) builds through it, so those rules are
written once, here.

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
resolved once each, however they are shaped (see ``_resolve_hardlinks``).
Rules of confinement (DESIGN rule 8) live here too: a payload is an object
name of the store, and an input's overlay xattrs (``trusted.overlay.*``,
``user.overlay.*``) are refused
(see ``payload_problem`` and ``OVERLAY_XATTR_PREFIXES``), unless ``Limits``
opts in.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Literal, cast

from .errors import ValidationError
from .limits import Limits

__all__ = [
    "Hardlink",
    "Inode",
    "Node",
    "Tree",
    "TreeBuilder",
    "ROOT",
    "new_inode",
]

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
    """

    #: None until first read in a Tree built in bulk (made from ``_table``).
    _order: tuple[bytes, ...] | None
    _nodes: Mapping[bytes, Node]
    _key: object = None
    #: The checked columns of a Tree built in bulk (composefs_py._columns).
    _table: object = None

    def __post_init__(self) -> None:
        if self._key is not _BUILDER_KEY:
            raise TypeError("a Tree is made by TreeBuilder.build(), which checks it")

    def __iter__(self) -> Iterator[tuple[bytes, Node]]:
        if self._table is not None:
            yield from self._table.items()  # type: ignore[attr-defined]
            return
        nodes = self._nodes
        for path in self.paths:
            yield path, nodes[path]

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, path: object) -> bool:
        return (_as_bytes(path) if path.__class__ is str else path) in self._nodes

    def __getitem__(self, path: bytes | str) -> Node:
        return self._nodes[path if path.__class__ is bytes else _as_bytes(path)]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tree):
            return NotImplemented
        return self.paths == other.paths and all(
            self._nodes[p] == other._nodes[p] for p in self.paths
        )

    def __hash__(self) -> int:
        return hash(self.paths)

    def __repr__(self) -> str:
        return f"<Tree: {len(self)} entries>"

    def get(self, path: bytes | str) -> Node | None:
        return self._nodes.get(path if path.__class__ is bytes else _as_bytes(path))

    @property
    def paths(self) -> tuple[bytes, ...]:
        """Every path, in iteration order."""
        order = self._order
        if order is None:
            order = self._table.tree_paths()  # type: ignore[attr-defined]
            object.__setattr__(self, "_order", order)
        return order

    @property
    def root(self) -> Inode:
        node = self._nodes[ROOT]
        assert isinstance(node, Inode)  # guaranteed by TreeBuilder
        return node

    def inode(self, path: bytes | str) -> Inode:
        """Return the inode at ``path``, following a hardlink."""
        node = self._nodes[path if path.__class__ is bytes else _as_bytes(path)]
        if isinstance(node, Hardlink):
            node = self._nodes[node.target]
        assert isinstance(node, Inode)  # hardlinks resolve to inodes
        return node


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

    def build(self) -> Tree:
        """Resolve hardlinks, fix link counts, order the entries; return the Tree."""
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
        return Tree(tuple(order), MappingProxyType(dict(nodes)), _BUILDER_KEY)

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
    if mode.__class__ is not int or mode < 0 or mode & ~(S_IFMT | 0o7777):
        return "mode", f"must be file type bits plus permission bits 0o7777, got {mode!r}"
    ftype = mode & S_IFMT
    if ftype not in _FILE_TYPES:
        return "mode", f"unknown file type 0o{ftype:o}"
    if not (node.nlink.__class__ is int and 0 <= node.nlink <= _U32_MAX):
        return "nlink", f"must be an integer in 0..{_U32_MAX}, got {node.nlink!r}"
    if not (node.uid.__class__ is int and 0 <= node.uid <= _U32_MAX):
        return "uid", f"must be an integer in 0..{_U32_MAX}, got {node.uid!r}"
    if not (node.gid.__class__ is int and 0 <= node.gid <= _U32_MAX):
        return "gid", f"must be an integer in 0..{_U32_MAX}, got {node.gid!r}"
    if not (node.mtime.__class__ is int and _I64_MIN <= node.mtime <= _I64_MAX):
        return "mtime", f"must be an integer in {_I64_MIN}..{_I64_MAX}, got {node.mtime!r}"
    if not (node.mtime_nsec.__class__ is int and 0 <= node.mtime_nsec <= _NSEC_PER_SEC - 1):
        return "mtime", f"nanoseconds must be in 0..999999999, got {node.mtime_nsec!r}"
    is_reg = ftype == S_IFREG
    if is_reg:
        if not (node.size.__class__ is int and 0 <= node.size <= limits.max_file_size):
            return "size", f"must be an integer in 0..{limits.max_file_size}, got {node.size!r}"
    elif node.size != 0:
        return "size", "only regular files have a size"
    if ftype in (S_IFCHR, S_IFBLK):
        # EROFS keeps 32 bits of device number: a larger one would silently
        # become another device (or 0:0, a whiteout).
        if not (node.rdev.__class__ is int and 0 <= node.rdev <= _U32_MAX):
            return "rdev", f"must be an integer in 0..{_U32_MAX}, got {node.rdev!r}"
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
