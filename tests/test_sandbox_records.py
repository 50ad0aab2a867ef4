"""The sandboxed child's rebuild of the parent's frames (``_worker.tree_from_frames``).

The child collects the frames' rows into columns and checks them with the
bulk TreeBuilder (``tree_from_columns``), falling back to a
:class:`TreeBuilder` entry by entry where that cannot vouch for them.
Proved here, in this process, on the frames the parent really makes
(several, small):

* for any Tree, the child rebuilds exactly that Tree, in bulk (a silent
  fallback to the builder fails), and a Tree built in bulk (kept as
  columns) makes the very same frames as one built node by node;
* for hostile frames (a value, a path, a row, a hardlink, an entry's
  extras changed; rows swapped or dropped), the child accepts and rejects
  exactly as a plain TreeBuilder fed the same records one by one as they
  arrive, with the same message, and builds the same Tree when it accepts.
"""

from __future__ import annotations

import marshal
import stat
from array import array
from itertools import accumulate, islice, pairwise
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from composefs_py import sandbox
from composefs_py._columns import INT_FIELDS, columns_of, tree_from_columns
from composefs_py._worker import _Rows, tree_from_frames
from composefs_py.errors import ValidationError
from composefs_py.model import Inode, Tree, TreeBuilder
from composefs_py.strategies import trees

_FIELDS = len(INT_FIELDS)


def frames_of(tree: Tree, first_entries: int) -> list[Any]:
    """The parent's frames for ``tree``, marshal loaded (small ones: several)."""
    raw = sandbox._Records(tree).frames(first_entries, 2 * first_entries)
    return [marshal.loads(frame[8:]) for frame in raw if len(frame) > 8]


def child(frames: list[Any]) -> tuple[str, Any]:
    """What the child does: ("rejected", message) or ("built", Tree)."""
    try:
        return "built", tree_from_frames(frames)
    except ValidationError as exc:
        return "rejected", str(exc)


def builder(frames: list[Any]) -> tuple[str, Any]:
    """A plain TreeBuilder fed the same records one by one, as each frame arrives."""
    built = TreeBuilder()
    rows = _Rows()
    index = 0
    try:
        for frame in frames:
            rows.add_frame(frame)  # the frame's shape: the child's own reader
            for path, node in islice(rows.columns().nodes(), index, None):
                built.add(path, node, entry=index)
                index += 1
        return "built", built.build()
    except ValidationError as exc:
        return "rejected", str(exc)


@given(tree=trees(max_entries=30), first_entries=st.integers(1, 5))
def test_the_child_rebuilds_any_tree_in_bulk(tree: Tree, first_entries: int) -> None:
    frames = frames_of(tree, first_entries)
    outcome, rebuilt = child(frames)
    assert (outcome, rebuilt) == ("built", tree)
    assert rebuilt._table is not None  # tree_from_columns vouched: no fallback


@given(tree=trees(max_entries=30), step=st.integers(1, 5))
def test_every_frame_maker_makes_the_same_frames(tree: Tree, step: int) -> None:
    """From the native buffers or from the nodes, of a Tree of nodes or of columns."""
    bulk = tree_from_columns(columns_of(tree))
    assert bulk is not None and bulk._table is not None
    made = []
    for source in (tree, bulk):
        for maker in (sandbox._sliced_frames, sandbox._node_frames):
            make, entries = maker(source)
            assert entries == len(tree)
            made.append(
                [make(start, min(start + step, entries)) for start in range(0, entries, step)]
            )
    assert all(frames == made[0] for frames in made)


class _Frame:
    """A frame's values, decoded for changing (``encode`` makes it a frame again)."""

    def __init__(self, frame: Any) -> None:
        paths, path_lens, ints, data, data_lens, links, extras = frame
        at = list(accumulate(array("q", path_lens), initial=0))
        self.paths: list[Any] = [paths[start:end] for start, end in pairwise(at)]
        count = len(self.paths)
        values = array("q", ints).tolist()
        self.ints = [values[k::_FIELDS] for k in range(_FIELDS)]
        self.data: list[Any] = []
        start = 0
        for length in array("q", data_lens):
            self.data.append(None if length < 0 else data[start : start + length])
            start += max(length, 0)
        assert len(self.data) == count
        self.links: dict[int, Any] = dict(links)
        self.extras: dict[int, Any] = {extra[0]: extra[1:] for extra in extras}

    def make_link(self, row: int, target: Any) -> None:
        for k, column in enumerate(self.ints):
            column[row] = stat.S_IFREG if k == 0 else 0
        self.data[row] = None
        self.extras.pop(row, None)
        self.links[row] = target

    def swap(self, i: int, j: int) -> None:
        for column in (self.paths, self.data, *self.ints):
            column[i], column[j] = column[j], column[i]
        for found in (self.links, self.extras):
            at_i, at_j = found.pop(i, None), found.pop(j, None)
            if at_i is not None:
                found[j] = at_i
            if at_j is not None:
                found[i] = at_j

    def drop(self, row: int) -> None:
        for column in (self.paths, self.data, *self.ints):
            del column[row]
        for found in (self.links, self.extras):
            moved = {at - (at > row): value for at, value in found.items() if at != row}
            found.clear()
            found.update(moved)

    def encode(self) -> tuple[Any, ...]:
        count = len(self.paths)
        return (
            b"".join(self.paths),
            array("q", map(len, self.paths)).tobytes(),
            array(
                "q", [self.ints[k][row] for row in range(count) for k in range(_FIELDS)]
            ).tobytes(),
            b"".join(piece for piece in self.data if piece is not None),
            array("q", [-1 if piece is None else len(piece) for piece in self.data]).tobytes(),
            tuple(sorted(self.links.items())),
            tuple((at, *extra) for at, extra in sorted(self.extras.items())),
        )


_HOSTILE_INTS = st.sampled_from(
    [-1, 0, 1, 2, 3, 7, 1 << 32, (1 << 32) - 1, -(1 << 63), (1 << 63) - 1, 10**9,
     stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFREG, stat.S_IFLNK | 0o777,
     stat.S_IFCHR | 0o600, stat.S_IFIFO | 0o644, 0o170644, 0o1000000]
)  # fmt: skip
_HOSTILE_DATA = st.sampled_from(
    [None, b"", b"a", b"/", b"x\0y", b"ab/" + b"c" * 62, b"d" * 5000, b"\x01" * 32]
)
_HOSTILE_VALUES = st.sampled_from(
    [None, -1, 0, True, b"", b"a", b"/", b"x\0y", b"ab/" + b"c" * 62, b"d" * 5000, "text",
     (), ((b"user.a", b"1"),), ((b"user.b", b""), (b"user.a", b"")), ((b"user.", b"1"),),
     [(b"user.a", b"1")], b"\x01" * 32, b"\x01" * 31]
)  # fmt: skip


@st.composite
def hostile_frames(draw: st.DrawFn) -> list[Any]:
    """The parent's frames of a valid Tree, then one thing in them changed."""
    tree = draw(trees(max_entries=20))
    frames = frames_of(tree, draw(st.integers(1, 4)))
    at = draw(st.integers(0, len(frames) - 1))
    frame = _Frame(frames[at])
    count = len(frame.paths)
    row = draw(st.integers(0, count - 1))
    other = draw(st.integers(0, count - 1))
    kinds = ["int", "other-row", "data", "path", "swap", "swap-path", "link", "make-link",
             "unlink", "extra", "drop"]  # fmt: skip
    kind = draw(st.sampled_from(kinds))
    if kind == "int":
        frame.ints[draw(st.integers(0, _FIELDS - 1))][row] = draw(_HOSTILE_INTS)
    elif kind == "other-row":
        column = draw(st.sampled_from([frame.data, *frame.ints]))
        column[row] = column[other]
    elif kind == "data":
        frame.data[row] = draw(_HOSTILE_DATA)
    elif kind == "path":
        frame.paths[row] = draw(st.sampled_from([*tree.paths, b"/new", b"/a/", b"//", b"", b"/\0"]))
    elif kind == "swap":
        frame.swap(row, other)
    elif kind == "swap-path":
        frame.paths[row], frame.paths[other] = frame.paths[other], frame.paths[row]
    elif kind == "link" and frame.links:
        link = draw(st.sampled_from(sorted(frame.links)))
        frame.links[link] = draw(st.sampled_from([*tree.paths, b"/nowhere", b"rel", 7]))
    elif kind == "make-link":
        frame.make_link(row, draw(st.sampled_from([*tree.paths, b"/nowhere"])))
    elif kind == "unlink" and frame.links:
        del frame.links[draw(st.sampled_from(sorted(frame.links)))]
    elif kind == "extra" and row not in frame.links:
        content, digest, xattrs = frame.extras.get(row, (None, None, ()))
        which = draw(st.integers(0, 2))
        value = draw(_HOSTILE_VALUES)
        content, digest, xattrs = (
            value if which == 0 else content,
            value if which == 1 else digest,
            value if which == 2 else xattrs,
        )
        frame.extras[row] = (content, digest, xattrs)
    elif kind == "drop":
        frame.drop(row)
    frames[at] = frame.encode()
    return frames


@given(frames=hostile_frames())
def test_the_child_accepts_and_rejects_as_the_builder_on_hostile_frames(
    frames: list[Any],
) -> None:
    assert child(frames) == builder(frames)


def test_a_bad_entry_is_reported_before_a_malformed_frame_after_it() -> None:
    tree = TreeBuilder()
    tree.add(b"/", Inode(stat.S_IFDIR | 0o755))
    tree.add(b"/a", Inode(stat.S_IFREG | 0o644))
    frames = frames_of(tree.build(), 1)
    bad = _Frame(frames[1])
    bad.ints[2][0] = -1  # uid
    frames[1] = bad.encode()
    frames.append(("not", "a", "frame"))
    assert child(frames) == builder(frames)
    assert child(frames)[1].startswith('entry 1 ("/a"): uid: must be an integer')
