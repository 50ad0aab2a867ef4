"""The storage of a :class:`~composefs_py.model.Tree`: its rows as columns.

Storage only: no rule lives here.  :class:`NodeColumns` are rows handed to
:meth:`TreeBuilder.add_columns <composefs_py.model.TreeBuilder.add_columns>`
(untrusted until the builder takes them); :class:`Table` is what every Tree
keeps, made only by :class:`~composefs_py.model.TreeBuilder`, which proved
each row by its rules first.  Nodes are made from a Table by model.py.

A Table is a few big buffers: the paths and the data joined, with their
lengths, and one array per int field, so that nothing of a node outlives a
bulk build as a Python object of its own (a bulk parse frees every small
object it made, and its memory with them).  :mod:`composefs_py._native`
hands the buffers to C as they are.  The lists of paths and data, and the
path -> row index, are made on first use, for reading nodes.

Cost: a Table is made in one pass over its rows (joins, ``array`` of each
int column, one ``marshal`` of the few rows with extras); each lazy view is
one more pass, made once.
"""

from __future__ import annotations

import marshal
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise, repeat

__all__ = ["INT_FIELDS", "Extra", "NodeColumns", "Table"]

#: (inline content, fs-verity digest, xattrs) of a row that has any.
Extra = tuple[bytes | None, bytes | None, tuple[tuple[bytes, bytes], ...]]

#: The int fields, in the order of cfspy_build_tree's rows (shim.h CFSPY_*).
INT_FIELDS = ("mode", "nlink", "uid", "gid", "mtime", "mtime_nsec", "size", "rdev")


@dataclass(slots=True)
class NodeColumns:
    """Untrusted nodes as columns, one row per node, for ``TreeBuilder.add_columns``.

    Row ``i`` is the node at ``paths[i]``: an Inode with ``mode[i]``,
    ``uid[i]``... (``nlink`` None: all 1; ``rdev`` None: all 0), whose
    ``data[i]`` is its payload (a regular file) or its symlink target (a
    symlink) and None otherwise, and whose inline content, fs-verity digest
    and xattrs are ``extras[i]`` when it has any.  A row in ``links`` is a
    Hardlink to ``links[i]`` instead: its other columns must read as an
    empty regular file (mode ``S_IFREG``, zeros, data None).
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


class Table:
    """A Tree's rows: in input order, ``order`` lists them in Tree order.

    ``nodes``, when the rows were made from node objects (a per-node build),
    are those objects, row by row: reading a node then makes none.  They are
    the same rows, never another source for :mod:`composefs_py._native`,
    which reads only the buffers.
    """

    __slots__ = (
        "path_buf", "path_lens", "ints", "data_buf", "data_lens", "link_rows", "link_targets",
        "extras_blob", "order", "nodes", "_paths", "_data", "_index", "_links", "_extras",
        "_tree_paths", "__weakref__",
    )  # fmt: skip

    def __init__(
        self,
        paths: list[bytes],
        ints: dict[str, array[int]],
        data: list[bytes | None],
        links: dict[int, int],
        extras: dict[int, Extra],
        order: array[int],
        nodes: Sequence[object] | None = None,
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
        #: the rows in Tree order
        self.order = order
        self.nodes = nodes
        self._links: dict[int, int] | None = None
        self._tree_paths: tuple[bytes, ...] | None = None
        if nodes is None:
            # row -> (content, fs-verity digest, xattrs), marshal'd: no small objects kept
            self.extras_blob = marshal.dumps(extras) if extras else b""
            self._paths: list[bytes] | None = None
            self._data: list[bytes | None] | None = None
            self._extras: dict[int, Extra] | None = None
        else:
            # the node objects hold these pieces anyway (data is read from them)
            self.extras_blob = b""
            self._paths, self._data, self._extras = paths, None, extras
        self._index: dict[bytes, int] | None = None

    def __len__(self) -> int:
        return len(self.path_lens)

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

    def extras_once(self) -> dict[int, Extra]:
        """:attr:`extras` for one pass, not kept: read from the marshal'd rows
        unless they are cached already (a writer reads them once; keeping the
        dict would hold a tuple and a digest object per file for the Tree's life)."""
        if self._extras is not None:
            return self._extras
        return marshal.loads(self.extras_blob) if self.extras_blob else {}

    @staticmethod
    def starts(lens: array[int]) -> array[int]:
        """Where each piece starts in its buffer (a piece of length -1 is none)."""
        sizes = map(max, lens, repeat(0)) if -1 in lens else lens
        return array("q", accumulate(sizes, initial=0))

    @property
    def paths(self) -> list[bytes]:
        """The paths, by row."""
        if self._paths is None:
            buf = self.path_buf
            self._paths = [buf[start:end] for start, end in pairwise(self.starts(self.path_lens))]
        return self._paths

    @property
    def data(self) -> list[bytes | None]:
        """Each row's payload or symlink target (None: neither), by row."""
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
        """Path -> row."""
        if self._index is None:
            self._index = dict(zip(self.paths, range(len(self.path_lens)), strict=True))
        return self._index

    def tree_paths(self) -> tuple[bytes, ...]:
        """The paths in Tree order."""
        if self._tree_paths is None:
            self._tree_paths = tuple(map(self.paths.__getitem__, self.order))
        return self._tree_paths
