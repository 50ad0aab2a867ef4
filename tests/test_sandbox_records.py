"""The sandboxed child's check of the parent's records (``_worker._Records``).

The child checks every record through a :class:`TreeBuilder` (the model's
rules, in the model only) and writes the image from the very values it
checked (``_native._Columns.from_fields``), not from the Tree again.
Proved here, in this process, on the frames the parent really makes:

* for any Tree, the child rebuilds that Tree and packs exactly the columns
  ``_native.columns(tree)`` packs (so the image is byte-identical);
* for hostile records (a value, a path, a hardlink changed), the child
  rejects with the very message a plain TreeBuilder gives for the same
  records; where the builder accepts, the child accepts exactly when the
  records are the rows of the Tree built (else it rejects: the builder
  would have changed a link count or resolved a chain of hardlinks), and
  what it packs is ``_native.columns`` of that Tree.
"""

from __future__ import annotations

import marshal
import stat
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from composefs_py import sandbox
from composefs_py._worker import _frame_nodes, _Records
from composefs_py.errors import ValidationError
from composefs_py.model import Hardlink, Inode, Tree, TreeBuilder
from composefs_py.strategies import trees

_native = pytest.importorskip("composefs_py._native")

_SLOTS = ("ints", "paths", "path_lens", "data", "data_lens", "links", "extra", "extra_lens",
          "xattr_lens")  # fmt: skip


def packed(columns: Any) -> tuple[bytes | None, ...]:
    """Every buffer cfspy_build_tree reads, as bytes."""
    return tuple(
        None if getattr(columns, name) is None else bytes(getattr(columns, name)) for name in _SLOTS
    )


def frames_of(tree: Tree, first_entries: int) -> list[Any]:
    """The parent's frames for ``tree``, marshal loaded (small ones: several)."""
    raw = sandbox._Records(tree).frames(first_entries, 2 * first_entries)
    return [marshal.loads(frame[8:]) for frame in raw if len(frame) > 8]


def child(frames: list[Any]) -> tuple[str, Any, Any]:
    """What the child does: ("rejected", message) or ("accepted", Tree, columns)."""
    records = _Records()
    try:
        for frame in frames:
            records.add_frame(frame)
        tree = records.finish()
    except ValidationError as exc:
        return "rejected", str(exc), None
    return "accepted", tree, records.columns()


def rows(frames: list[Any]) -> tuple[list[Any], list[Any]]:
    """The paths and nodes the frames hold (the wire decoding, no rule)."""
    paths: list[Any] = []
    nodes: list[Any] = []
    for frame in frames:
        frame_paths, frame_nodes, _, _ = _frame_nodes(frame, len(paths))
        paths += frame_paths
        nodes += frame_nodes
    return paths, nodes


def builder_outcome(frames: list[Any]) -> tuple[str, Any]:
    """A plain TreeBuilder on the same records: ("rejected", message), or
    ("built", (Tree, the rows: their paths, and the nodes the builder took)."""
    builder = TreeBuilder()
    try:
        paths, nodes = rows(frames)
        for index, (path, node) in enumerate(zip(paths, nodes, strict=True)):
            if path.__class__ is not bytes:
                raise ValidationError("the path must be bytes", entry=index, field="path")
            builder.add(path, node, entry=index)
        return "built", (builder.build(), paths, nodes)
    except ValidationError as exc:
        return "rejected", str(exc)


@given(tree=trees(max_entries=30), first_entries=st.integers(1, 5))
def test_the_child_packs_what_native_packs_for_any_tree(tree: Tree, first_entries: int) -> None:
    outcome, got, columns = child(frames_of(tree, first_entries))
    assert outcome == "accepted", got
    assert got == tree
    assert packed(columns) == packed(_native.columns(tree))


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
def test_the_child_accepts_and_rejects_as_the_builder_on_hostile_records(
    frames: list[Any],
) -> None:
    expected = builder_outcome(frames)
    outcome, got, columns = child(frames)
    if expected[0] == "rejected":
        assert (outcome, got) == expected
        return
    built, paths, nodes = expected[1]
    exactly_built = tuple(paths) == built.paths and all(
        built[path] is node for path, node in zip(paths, nodes, strict=True)
    )
    if exactly_built:
        assert outcome == "accepted", got
        assert got == built
        assert packed(columns) == packed(_native.columns(built))
    else:
        assert outcome == "rejected"
        assert "differs from the entry its Tree has" in got or "not in the order" in got


def test_a_hardlink_to_a_hardlink_is_rejected_though_the_builder_resolves_it() -> None:
    builder = TreeBuilder()
    builder.add(b"/", Inode(stat.S_IFDIR | 0o755))
    builder.add(b"/a", Inode(stat.S_IFREG | 0o644))
    builder.add(b"/b", Hardlink(b"/a"))
    builder.add(b"/c", Hardlink(b"/a"))
    frames = [list(frame) for frame in frames_of(builder.build(), 8)]
    (frame,) = frames
    frame[2] = ((2, b"/a"), (3, b"/b"))  # /c -> /b -> /a
    outcome, message, _ = child([tuple(frame)])
    assert outcome == "rejected"
    assert message.startswith('entry 3 ("/c"): differs from the entry its Tree has')


def test_a_wrong_directory_link_count_is_rejected_not_corrected() -> None:
    builder = TreeBuilder()
    builder.add(b"/", Inode(stat.S_IFDIR | 0o755))
    builder.add(b"/d", Inode(stat.S_IFDIR | 0o755))
    frames = [list(frame) for frame in frames_of(builder.build(), 8)]
    frames[0][1][1][0] = 7  # the root's nlink; the Tree says 3
    outcome, message, _ = child([tuple(frame) for frame in frames])
    assert outcome == "rejected"
    assert 'entry 0 ("/")' in message and "differs from the entry its Tree has" in message


def test_write_columns_refuses_rows_of_other_lengths(tmp_path: Any) -> None:
    builder = TreeBuilder()
    builder.add(b"/", Inode(stat.S_IFDIR | 0o755))
    builder.add(b"/f", Inode(stat.S_IFREG | 0o644, size=1, content=b"x"))
    columns = _native.columns(builder.build())
    del columns.data_lens[-1]
    with open(tmp_path / "out.img", "wb") as out, pytest.raises(ValueError, match="2 nodes"):
        _native.write_columns(columns, out.fileno())
    assert (tmp_path / "out.img").stat().st_size == 0
