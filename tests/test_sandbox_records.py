"""The sandboxed child's rebuild of the parent's frames (``_worker.tree_from_frames``).

The child rebuilds the Tree through a :class:`TreeBuilder` (the model's
rules, in the model only).  Proved here, in this process, on the frames the
parent really makes (several, small):

* for any Tree, the child rebuilds exactly that Tree;
* for hostile frames (a value, a path, a hardlink changed, an entry
  dropped), the child accepts and rejects exactly as a plain TreeBuilder
  fed the same records one by one, with the same message, and builds the
  same Tree when it accepts.
"""

from __future__ import annotations

import marshal
import stat
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from composefs_py import sandbox
from composefs_py._worker import _frame_nodes, tree_from_frames
from composefs_py.errors import ValidationError
from composefs_py.model import Tree, TreeBuilder
from composefs_py.strategies import trees


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
    """A plain TreeBuilder fed the same records one by one."""
    built = TreeBuilder()
    index = 0
    try:
        for frame in frames:
            paths, nodes = _frame_nodes(frame, index)
            for path, node in zip(paths, nodes, strict=True):
                if path.__class__ is not bytes:
                    raise ValidationError("the path must be bytes", entry=index, field="path")
                built.add(path, node, entry=index)
                index += 1
        return "built", built.build()
    except ValidationError as exc:
        return "rejected", str(exc)


@given(tree=trees(max_entries=30), first_entries=st.integers(1, 5))
def test_the_child_rebuilds_any_tree(tree: Tree, first_entries: int) -> None:
    assert child(frames_of(tree, first_entries)) == ("built", tree)


_HOSTILE_VALUES = st.sampled_from(
    [None, -1, 0, 1, 2, 3, 1 << 32, True, b"", b"a", b"/", b"x\0y", b"ab/" + b"c" * 62,
     (), ((b"user.a", b"1"),), ((b"user.b", b""), (b"user.a", b"")), stat.S_IFDIR | 0o755,
     stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777, stat.S_IFCHR | 0o600]
)  # fmt: skip


@st.composite
def hostile_frames(draw: st.DrawFn) -> list[Any]:
    """The parent's frames of a valid Tree, then one thing in them changed."""
    tree = draw(trees(max_entries=20))
    frames = [list(frame) for frame in frames_of(tree, draw(st.integers(1, 4)))]
    frame = draw(st.sampled_from(frames))
    paths, columns, links = list(frame[0]), frame[1], list(frame[2])
    kind = draw(st.sampled_from(["value", "other-row", "path", "swap", "link", "drop"]))
    if kind in ("value", "other-row") and columns[0]:
        column = columns[draw(st.integers(0, len(columns) - 1))]
        row = draw(st.integers(0, len(column) - 1))
        if kind == "value":
            column[row] = draw(_HOSTILE_VALUES)
        else:
            column[row] = column[draw(st.integers(0, len(column) - 1))]
    elif kind == "path":
        paths[draw(st.integers(0, len(paths) - 1))] = draw(st.sampled_from([*tree.paths, "/", 7]))
    elif kind == "swap":
        i, j = draw(st.integers(0, len(paths) - 1)), draw(st.integers(0, len(paths) - 1))
        paths[i], paths[j] = paths[j], paths[i]
    elif kind == "link" and links:
        at = draw(st.integers(0, len(links) - 1))
        position, target = links[at]
        if draw(st.booleans()):
            target = draw(st.sampled_from(tree.paths))
        else:
            position = draw(st.integers(0, len(paths) - 1))
        links[at] = (position, target)
    elif kind == "drop" and len(paths) > 1:
        del paths[draw(st.integers(0, len(paths) - 1))]
    frame[0], frame[2] = tuple(paths), tuple(links)
    return [tuple(f) for f in frames]


@given(frames=hostile_frames())
def test_the_child_accepts_and_rejects_as_the_builder_on_hostile_frames(
    frames: list[Any],
) -> None:
    assert child(frames) == builder(frames)
