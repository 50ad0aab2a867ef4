"""TreeBuilder.add_columns (the builder's bulk entry) against its per-row add.

The bulk entry may only ever say "the same Tree" or "not proven" (False):
for valid rows it must give the Tree per-row adds make of them, for rows
those refuse it must take nothing.  Hypothesis throws valid trees, shuffled
rows with missing parents, and single hostile changes at both.
"""

from __future__ import annotations

import dataclasses
import os
import random
import stat
import tempfile
from typing import Any, cast

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from composefs_py import Tree, ValidationError, dump, write_image
from composefs_py._columns import NodeColumns
from composefs_py.limits import Limits
from composefs_py.model import (
    EMPTY_FILE,
    PROVEN_INT_RANGES,
    PROVEN_PAYLOAD_NAMES,
    ROOT,
    Hardlink,
    TreeBuilder,
    column_nodes,
    is_object_name,
)
from composefs_py.strategies import trees


def tree_from_columns(
    columns: NodeColumns,
    limits: Limits | None = None,
    *,
    proven: frozenset[str] = frozenset(),
    **options: Any,
) -> Tree | None:
    """The Tree a fresh TreeBuilder takes ``columns`` in bulk into, or None (not taken)."""
    builder = TreeBuilder(limits, **options)
    return builder.build() if builder.add_columns(columns, proven=proven) else None


def columns_of(tree: Tree) -> NodeColumns:
    """``tree``'s nodes, in Tree order, as the columns ``add_columns`` takes."""
    nodes: list[Any] = [tree[path] for path in tree.paths]
    links = {row: node.target for row, node in enumerate(nodes) if node.__class__ is Hardlink}
    for row in links:
        nodes[row] = EMPTY_FILE
    extras = {
        row: (node.content, node.fsverity_digest, node.xattrs)
        for row, node in enumerate(nodes)
        if node.content is not None or node.fsverity_digest is not None or node.xattrs
    }
    return NodeColumns(
        paths=list(tree.paths),
        mode=[node.mode for node in nodes],
        uid=[node.uid for node in nodes],
        gid=[node.gid for node in nodes],
        mtime=[node.mtime for node in nodes],
        mtime_nsec=[node.mtime_nsec for node in nodes],
        size=[node.size for node in nodes],
        data=[
            node.payload if node.symlink_target is None else node.symlink_target for node in nodes
        ],
        nlink=[node.nlink for node in nodes],
        rdev=[node.rdev for node in nodes],
        links=links,
        extras=extras,
    )


_SMALL = Limits(
    max_entries=60,
    max_depth=8,
    max_name_bytes=40,
    max_path_bytes=120,
    max_symlink_bytes=64,
    max_total_path_bytes=2000,
)
#: The strategies' trees hold payloads that are no object names and
#: trusted.overlay.* xattrs: they are valid Trees under these opt-ins (the
#: hostile rows are judged with and without them).
_OPEN = Limits(allow_foreign_payloads=True, allow_overlay_xattrs=True)
_SMALL_OPEN = dataclasses.replace(_SMALL, allow_foreign_payloads=True, allow_overlay_xattrs=True)
PAYLOAD = b"ab/" + b"cd" * 31
#: What the TOC vouches for (toc.TOC_PROVEN).
_BOTH = frozenset((PROVEN_INT_RANGES, PROVEN_PAYLOAD_NAMES))


def _builder_tree(
    columns: NodeColumns, limits: Limits | None = None, **options: Any
) -> Tree | ValidationError:
    builder = TreeBuilder(limits, **options)
    try:
        for row, (path, node) in enumerate(column_nodes(columns)):
            builder.add(path, node, entry=row)
        return builder.build()
    except ValidationError as error:
        return error


def _image(tree: Tree, path: str) -> bytes:
    write_image(tree, path, backend="native")
    with open(path, "rb") as f:
        return f.read()


def _same(bulk: Tree, tree: Tree) -> None:
    assert bulk == tree
    assert list(bulk) == list(tree)
    assert bulk.paths == tree.paths
    assert dump(bulk) == dump(tree)


@given(trees(max_entries=30, limits=_OPEN))
def test_valid_rows_give_the_builders_tree(tree: Tree) -> None:
    columns = columns_of(tree)
    bulk = tree_from_columns(columns, _OPEN)
    assert bulk is not None, "valid rows in Tree order must be taken"
    _same(bulk, tree)
    assert bulk._table.nodes is None  # kept as columns only


@given(trees(max_entries=30, limits=_OPEN), st.randoms(use_true_random=False), st.booleans())
def test_shuffled_rows_with_parents_to_make(tree: Tree, rnd: random.Random, count: bool) -> None:
    columns = columns_of(tree)
    rows = list(range(len(columns)))
    rnd.shuffle(rows)
    # drop some directories that are bare (the builder makes them the same way)
    bare = stat.S_IFDIR | 0o755
    rows = [
        row
        for row in rows
        if not (
            columns.mode[row] == bare
            and columns.uid[row] == columns.gid[row] == columns.mtime[row] == 0
            and columns.mtime_nsec[row] == 0
            and row not in columns.extras
            and rnd.random() < 0.5
        )
    ]
    shuffled = _select(columns, rows)
    expected = _builder_tree(shuffled, _OPEN, synthesize_parents=True, count_hardlinks=count)
    bulk = tree_from_columns(shuffled, _OPEN, synthesize_parents=True, count_hardlinks=count)
    note(f"expected {expected!r}")
    if isinstance(expected, ValidationError):
        assert bulk is None
    else:
        assert bulk is not None
        _same(bulk, expected)


def _select(columns: NodeColumns, rows: list[int]) -> NodeColumns:
    """The given rows of ``columns``, in that order."""
    new_row = {old: new for new, old in enumerate(rows)}

    def pick(values: list[Any] | None) -> Any:
        return None if values is None else [values[row] for row in rows]

    return NodeColumns(
        paths=pick(columns.paths),
        mode=pick(columns.mode),
        uid=pick(columns.uid),
        gid=pick(columns.gid),
        mtime=pick(columns.mtime),
        mtime_nsec=pick(columns.mtime_nsec),
        size=pick(columns.size),
        data=pick(columns.data),
        nlink=pick(columns.nlink),
        rdev=pick(columns.rdev),
        links={new_row[row]: target for row, target in columns.links.items() if row in new_row},
        extras={new_row[row]: extra for row, extra in columns.extras.items() if row in new_row},
    )


_INT_COLUMNS = ("mode", "uid", "gid", "mtime", "mtime_nsec", "size", "nlink", "rdev")
_HOSTILE_INTS = (
    -1, 1 << 32, (1 << 32) - 1, 1 << 63, -(1 << 63) - 1, (1 << 53) + 1, 10**9, True, False,
    1.0, None, "0", stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777, stat.S_IFCHR, stat.S_IFBLK,
    stat.S_IFIFO, stat.S_IFSOCK, 0o170000, 0o7777 | stat.S_IFREG, 0o10000 | stat.S_IFREG, 0,
)  # fmt: skip
_HOSTILE_PATHS = (
    b"", b"/", b"//", b"/a//b", b"/a/", b"/.", b"/..", b"/a/./b", b"/a/../b", b"a", b"/a\0b",
    b"/" + b"n" * 41, b"/" + b"/d" * 9, b"/" + b"x" * 130, "/str", None, b"/.hidden", b"/...",
    b"/a\nb", b"/missing/child",
)  # fmt: skip
_HOSTILE_DATA = (
    None, b"", b"x", b"a\0b", b"l" * 65, b"p" * 121, "str", b"ab/cdef", 0, PAYLOAD,
    PAYLOAD.upper(), PAYLOAD + b"\n", b"../" + PAYLOAD[3:], b"/etc/shadow", PAYLOAD[:-1] + b"/",
)  # fmt: skip


@st.composite
def _hostile(draw: st.DrawFn) -> tuple[NodeColumns, bool, bool]:
    tree = draw(trees(max_entries=20, limits=_SMALL_OPEN))
    columns = columns_of(tree)
    rows = list(range(len(columns)))
    if draw(st.booleans()):
        draw(st.randoms(use_true_random=False)).shuffle(rows)
    columns = _select(columns, rows)
    n = len(columns)
    for _ in range(draw(st.integers(1, 3))):
        row = draw(st.integers(0, n - 1))
        what = draw(st.sampled_from(("int", "path", "data", "link", "extra", "dup", "drop")))
        if what == "int":
            name = draw(st.sampled_from(_INT_COLUMNS))
            values = getattr(columns, name)
            if values is None:
                values = [1 if name == "nlink" else 0] * n
                setattr(columns, name, values)
            values[row] = draw(st.sampled_from(_HOSTILE_INTS))
        elif what == "path":
            cast("list[Any]", columns.paths)[row] = draw(st.sampled_from(_HOSTILE_PATHS))
        elif what == "data":
            cast("list[Any]", columns.data)[row] = draw(st.sampled_from(_HOSTILE_DATA))
        elif what == "link":
            target = draw(st.sampled_from([*columns.paths, b"/nowhere", b"rel", "str"]))
            cast("dict[int, Any]", columns.links)[row] = target
            if draw(st.booleans()):
                columns.mode[row], columns.size[row], columns.data[row] = stat.S_IFREG, 0, None
        elif what == "extra":
            columns.extras[row] = draw(
                st.sampled_from(
                    [
                        (b"abc", None, ()),
                        (None, bytes(32), ()),
                        (None, b"short", ()),
                        (None, None, ((b"user.a", b"1"),)),
                        (None, None, ((b"user.", b"1"),)),
                        (None, None, ((b"user.b", b"1"), (b"user.a", b"1"))),
                        (None, None, ((b"user.a", b"v" * 70000),)),
                        (None, None, ((b"trusted.overlay.redirect", b"/x"),)),
                        (None, None, ((b"trusted.overlay.opaque", b"y"),)),
                    ]
                )
            )
        elif what == "dup":
            columns.paths[row] = columns.paths[draw(st.integers(0, n - 1))]
        else:
            for name in (*_INT_COLUMNS, "paths", "data"):
                values = getattr(columns, name)
                if values is not None and len(values) == n:
                    del values[row]
            columns.links = {r - (r > row): t for r, t in columns.links.items() if r != row}
            columns.extras = {r - (r > row): e for r, e in columns.extras.items() if r != row}
            n -= 1
            if n == 0:
                break
    return columns, draw(st.booleans()), draw(st.booleans())


@given(_hostile())
def test_hostile_rows_are_never_taken_where_the_builder_refuses(
    case: tuple[NodeColumns, bool, bool],
) -> None:
    columns, synthesize, count = case
    for limits in (_SMALL_OPEN, _SMALL):
        try:
            expected = _builder_tree(
                columns, limits, synthesize_parents=synthesize, count_hardlinks=count
            )
        except (TypeError, AttributeError, IndexError, ValueError) as error:
            # rows TreeBuilder.add cannot even be given (not bytes, not ints...)
            expected = ValidationError(str(error))
        bulk = tree_from_columns(
            columns, limits, synthesize_parents=synthesize, count_hardlinks=count
        )
        note(f"expected {expected!r}")
        if isinstance(expected, ValidationError):
            assert bulk is None
        elif bulk is not None:
            _same(bulk, expected)
            with tempfile.TemporaryDirectory() as work:
                images = [
                    _image(tree, os.path.join(work, f"{i}"))
                    for i, tree in enumerate((bulk, expected))
                ]
            assert images[0] == images[1]


def _vouched_rules_hold(columns: NodeColumns, limits: Limits) -> bool:
    """What ``proven=_BOTH`` vouches for, checked here row by row, independently."""
    ranges = {
        "mode": (0, 0o177777), "uid": (0, (1 << 32) - 1), "gid": (0, (1 << 32) - 1),
        "mtime": (-(1 << 63), (1 << 63) - 1), "mtime_nsec": (0, 10**9 - 1),
        "size": (0, limits.max_file_size),
    }  # fmt: skip
    for name, (low, high) in ranges.items():
        for value in getattr(columns, name):
            if value.__class__ is not int or not low <= value <= high:
                return False
    return limits.allow_foreign_payloads or all(
        is_object_name(data)
        for mode, data in zip(columns.mode, columns.data, strict=True)
        if data is not None and mode.__class__ is int and stat.S_ISREG(mode)
    )


@given(_hostile())
def test_proven_changes_no_verdict_where_its_rules_hold(
    case: tuple[NodeColumns, bool, bool],
) -> None:
    columns, synthesize, count = case
    for limits in (_SMALL_OPEN, _SMALL):
        if not _vouched_rules_hold(columns, limits):
            continue
        options = {"synthesize_parents": synthesize, "count_hardlinks": count}
        checked = tree_from_columns(columns, limits, **options)
        vouched = tree_from_columns(columns, limits, proven=_BOTH, **options)
        assert (checked is None) == (vouched is None)
        if checked is not None and vouched is not None:
            _same(vouched, checked)


def _flat_files(n: int) -> NodeColumns:
    """``n`` files in n/4 directories that are not given (the builder makes them)."""
    paths = [b"/d%d/f%d" % (i // 4, i) for i in range(n)]
    return NodeColumns(
        paths, [stat.S_IFREG | 0o644] * n, [0] * n, [0] * n, [0] * n, [0] * n, [1] * n,
        [PAYLOAD] * n,
    )  # fmt: skip


def _bulk_files(columns: NodeColumns) -> Tree:
    tree = tree_from_columns(columns, synthesize_parents=True)
    assert tree is not None
    return tree


def test_the_bulk_entry_costs_linear_time() -> None:
    from tests.cost import growth

    small, large, ratio = growth(_bulk_files, _flat_files, 20000)
    assert ratio < 8, f"20000 rows {small:.3f} s, 80000 rows {large:.3f} s"


# Row 1 is the regular file /a, row 2 the symlink /b (see _three_files).
_REFUSALS = [
    (1, "paths", b"/.."),
    (1, "paths", b"/."),
    (1, "paths", b"/a/"),
    (1, "paths", b"//a"),
    (1, "paths", b"a"),
    (1, "paths", b"/a\0"),
    (1, "paths", b"/b"),  # a duplicate
    (1, "paths", b"/b/x"),  # below a symlink
    (1, "paths", "/a"),
    (1, "mode", stat.S_IFDIR | 0o10000),
    (1, "mode", 0o644),
    (1, "mode", True),
    (1, "uid", 1 << 32),
    (1, "uid", -1),
    (1, "gid", 1.0),
    (1, "mtime", 1 << 63),
    (1, "mtime_nsec", 10**9),
    (1, "size", -1),
    (1, "size", (1 << 53) + 1),
    (2, "size", 5),  # a size on a symlink
    (1, "nlink", 1 << 32),
    (1, "rdev", 1),  # a device number on a regular file
    (1, "data", b"a\0b"),
    (1, "data", b""),
    (1, "data", "ab/cd"),
    (1, "data", b"ab/cd"),  # no object name
    (1, "data", PAYLOAD.upper()),
    (1, "data", b"../../etc/shadow"),
    (1, "data", PAYLOAD + b"x"),
    (2, "data", None),  # a symlink without target
    (2, "data", b"t" * 4096),
    (0, "data", b"x"),  # data on a directory
    (0, "mode", stat.S_IFREG | 0o644),  # the root not a directory
]


@pytest.mark.parametrize(("row", "change", "value"), _REFUSALS)
@pytest.mark.parametrize("synthesize", [False, True])
def test_refusals_of_each_rule(row: int, change: str, value: object, synthesize: bool) -> None:
    base = columns_of(_three_files())
    assert tree_from_columns(base, synthesize_parents=synthesize) is not None
    columns = dataclasses.replace(base, **{change: list(getattr(base, change))})  # type: ignore[arg-type]
    getattr(columns, change)[row] = value
    with pytest.raises((ValidationError, TypeError, AttributeError)):
        tree = _builder_tree(columns, synthesize_parents=synthesize)
        if isinstance(tree, ValidationError):
            raise tree
    assert tree_from_columns(columns, synthesize_parents=synthesize) is None


@pytest.mark.parametrize(
    ("links", "extras"),
    [
        ({1: b"/b"}, {}),  # a hardlink to a symlink is fine: see below
        ({1: b"/"}, {}),  # to a directory
        ({1: b"/a"}, {}),  # to itself
        ({1: b"/nowhere"}, {}),
        ({1: b"a"}, {}),
        ({1: "/b"}, {}),
        ({}, {1: (b"abc", None, ())}),  # content and a payload
        ({}, {2: (None, bytes(32), ())}),  # a digest on a symlink
        ({}, {1: (None, b"short", ())}),
        ({}, {1: (None, None, ((b"user.b", b""), (b"user.a", b"")))}),
        ({}, {1: (None, None, ((b"user.", b""),))}),
        ({}, {7: (None, None, ((b"user.a", b""),))}),
    ],
)
def test_refusals_of_links_and_extras(links: dict[int, object], extras: dict[int, Any]) -> None:
    columns = columns_of(_three_files())
    columns.links = dict(links)  # type: ignore[arg-type]
    columns.extras = dict(extras)
    for row in links:
        columns.mode[row], columns.size[row], columns.data[row] = stat.S_IFREG, 0, None
    if links == {1: b"/b"} and extras == {}:
        # data on a hardlink row: the builder ignores it, C would read it as the next row's
        with_data = dataclasses.replace(columns, data=[None, PAYLOAD, b"a"])
        assert tree_from_columns(with_data) is None
    expected = _builder_tree(columns) if 7 not in extras else ValidationError("no row 7")
    bulk = tree_from_columns(columns)
    if isinstance(expected, ValidationError):
        assert bulk is None
    else:  # the hardlink to the symlink
        assert bulk is not None
        _same(bulk, expected)


def _three_files() -> Tree:
    builder = TreeBuilder()
    from composefs_py.model import Inode

    builder.add(ROOT, Inode(stat.S_IFDIR | 0o755))
    builder.add(b"/a", Inode(stat.S_IFREG | 0o644, size=3, payload=PAYLOAD))
    builder.add(b"/b", Inode(stat.S_IFLNK | 0o777, symlink_target=b"a"))
    return builder.build()


def test_a_table_tree_reads_and_writes_as_its_nodes(tmp_path: Any) -> None:
    tree = next(iter([_three_files()]))
    bulk = tree_from_columns(columns_of(tree))
    assert bulk is not None
    assert bulk[b"/a"] == tree[b"/a"]
    assert bulk.get(b"/b") == tree.get(b"/b")
    assert bulk.get(b"/nothing") is None
    assert b"/a" in bulk and b"/x" not in bulk
    assert bulk.inode(b"/a") == tree.inode(b"/a")
    assert len(bulk) == len(tree) == 3
    assert _image(bulk, os.fspath(tmp_path / "a")) == _image(tree, os.fspath(tmp_path / "b"))


@given(trees(max_entries=25, limits=_OPEN))
def test_table_trees_write_the_same_image(tree: Tree) -> None:
    bulk = tree_from_columns(columns_of(tree), _OPEN)
    assert bulk is not None
    with tempfile.TemporaryDirectory() as work:
        assert _image(bulk, os.path.join(work, "a")) == _image(tree, os.path.join(work, "b"))


@pytest.mark.parametrize(
    ("limits", "path"),
    [
        (Limits(max_depth=3), b"/d/d/d/f"),
        (Limits(max_entries=3), b"/d/f"),
        (Limits(max_name_bytes=3), b"/dddd/f"),
        (Limits(max_path_bytes=6), b"/d/d/ff"),
        (Limits(max_total_path_bytes=8), b"/d/ff"),
    ],
)
def test_limits_count_the_parents_made(limits: Limits, path: bytes) -> None:
    columns = columns_of(_three_files())
    assert tree_from_columns(columns, limits, synthesize_parents=True) is not None
    columns.paths[1] = path
    assert isinstance(_builder_tree(columns, limits, synthesize_parents=True), ValidationError)
    assert tree_from_columns(columns, limits, synthesize_parents=True) is None


# ---------------------------------------------------------------------------
# cost: hardlink chains resolve in linear time
# ---------------------------------------------------------------------------


def _link_columns(entries: list[tuple[bytes, Any]]) -> NodeColumns:
    """NodeColumns of the root, then ``entries`` (an Inode or a Hardlink each)."""
    from composefs_py.model import Inode

    nodes = [(ROOT, Inode(stat.S_IFDIR | 0o755)), *entries]
    links = {row: node.target for row, (_, node) in enumerate(nodes) if isinstance(node, Hardlink)}
    inodes = [EMPTY_FILE if isinstance(node, Hardlink) else node for _, node in nodes]
    return NodeColumns(
        paths=[path for path, _ in nodes],
        mode=[node.mode for node in inodes],
        uid=[0] * len(nodes),
        gid=[0] * len(nodes),
        mtime=[0] * len(nodes),
        mtime_nsec=[0] * len(nodes),
        size=[0] * len(nodes),
        data=[None] * len(nodes),
        links=links,
    )


def _bulk_links(columns: NodeColumns) -> Tree:
    tree = tree_from_columns(columns, count_hardlinks=True)
    assert tree is not None
    return tree


@pytest.mark.parametrize("shape", ["chain", "reverse", "fan-in", "comb"])
def test_hardlink_resolution_in_bulk_is_linear(shape: str) -> None:
    from test_model import _link_shape

    from tests.cost import growth

    small, large, ratio = growth(_bulk_links, lambda n: _link_columns(_link_shape(shape, n)), 10000)
    assert ratio < 8, f"{shape}: 10000 links {small:.3f} s, 40000 links {large:.3f} s"


@pytest.mark.parametrize("shape", ["chain", "reverse", "fan-in", "comb"])
def test_hardlink_shapes_in_bulk_give_the_builders_tree(shape: str) -> None:
    from test_model import _link_shape

    columns = _link_columns(_link_shape(shape, 60))
    bulk = tree_from_columns(columns, count_hardlinks=True)
    assert bulk is not None
    tree = _builder_tree(columns, count_hardlinks=True)
    assert isinstance(tree, Tree)
    _same(bulk, tree)


@pytest.mark.parametrize(
    "targets",
    [
        {b"/a": b"/b", b"/b": b"/a"},  # a cycle
        {b"/a": b"/b", b"/b": b"/c", b"/c": b"/b"},  # a chain into a cycle
        {b"/a": b"/f", b"/b": b"/a", b"/c": b"/b", b"/x": b"/c", b"/y": b"/x", b"/z": b"/z"},
        {b"/a": b"/f", b"/b": b"/a", b"/c": b"/d"},  # to a directory, after a good chain
        {b"/a": b"/f", b"/b": b"/a", b"/c": b"/gone"},
    ],
)
def test_bad_chains_are_not_taken_in_bulk(targets: dict[bytes, bytes]) -> None:
    from composefs_py.model import Hardlink, Inode

    entries: list[tuple[bytes, Any]] = [
        (b"/d", Inode(stat.S_IFDIR | 0o755)),
        (b"/f", Inode(stat.S_IFREG)),
        *((path, Hardlink(target)) for path, target in targets.items()),
    ]
    columns = _link_columns(entries)
    assert tree_from_columns(columns) is None
    assert isinstance(_builder_tree(columns), ValidationError)


def _files_with(payloads: list[bytes]) -> NodeColumns:
    from composefs_py.model import Inode

    entries = [(b"/f%d" % i, Inode(stat.S_IFREG | 0o644, size=1)) for i in range(len(payloads))]
    columns = _link_columns(entries)
    columns.data[1:] = payloads
    columns.size[1:] = [1] * len(payloads)
    return columns


@pytest.mark.parametrize(
    "payloads",
    [
        # each too short or too long, but joined the shape of good ones
        [PAYLOAD[:-1], b"c" + PAYLOAD],
        [PAYLOAD + b"c", PAYLOAD[1:]],
        [PAYLOAD, PAYLOAD[:-1], b"d" + PAYLOAD],
        [b"ab/" + b"c" * 61, b"c" + PAYLOAD],
    ],
)
def test_payloads_that_join_into_good_ones_are_refused(payloads: list[bytes]) -> None:
    columns = _files_with(payloads)
    assert b"".join(payloads).count(b"/") == len(payloads)
    assert tree_from_columns(columns) is None
    error = _builder_tree(columns)
    assert isinstance(error, ValidationError) and error.field == "payload"
    assert tree_from_columns(columns, _OPEN) is not None  # the opt-in takes them


def test_object_names_are_taken_in_bulk() -> None:
    payloads = [b"%02x/" % i + bytes(b"0123456789abcdef"[(i + j) % 16] for j in range(62))
                for i in range(256)]  # fmt: skip
    bulk = tree_from_columns(_files_with(payloads))
    assert bulk is not None
    assert [bulk.inode(b"/f%d" % i).payload for i in range(256)] == payloads


# ---------------------------------------------------------------------------
# proven=: the narrow contract the TOC hands its rows over with
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "change", "value", "vouched"),
    [
        (1, "uid", 1 << 40, PROVEN_PAYLOAD_NAMES),
        (1, "size", -1, PROVEN_PAYLOAD_NAMES),
        (1, "data", b"../../etc/shadow", PROVEN_INT_RANGES),
        (1, "data", PAYLOAD.upper(), PROVEN_INT_RANGES),
    ],
)
def test_proven_spares_only_the_rules_it_names(
    row: int, change: str, value: object, vouched: str
) -> None:
    base = columns_of(_three_files())
    columns = dataclasses.replace(base, **{change: list(getattr(base, change))})  # type: ignore[arg-type]
    getattr(columns, change)[row] = value
    assert tree_from_columns(columns) is None
    assert tree_from_columns(columns, proven=frozenset((vouched,))) is None


@pytest.mark.parametrize(
    ("row", "change", "value"),
    [
        (1, "paths", b"/a/../b"),
        (1, "paths", b"/b"),  # a duplicate
        (1, "mode", 0o644),  # no file type
        (1, "mode", stat.S_IFDIR | 0o10000),
        (2, "size", 5),  # a size on a symlink
        (1, "mtime", 1 << 63),  # past int64, whatever is vouched
        (1, "uid", "0"),  # not an int, whatever is vouched
        (2, "data", None),  # a symlink without target
        (0, "data", PAYLOAD),  # data on a directory
        (1, "rdev", 1),
    ],
)
def test_proven_spares_no_tree_or_type_rule(row: int, change: str, value: object) -> None:
    base = columns_of(_three_files())
    assert tree_from_columns(base, proven=_BOTH) is not None
    columns = dataclasses.replace(base, **{change: list(getattr(base, change))})  # type: ignore[arg-type]
    getattr(columns, change)[row] = value
    assert tree_from_columns(columns, proven=_BOTH) is None


def test_the_toc_hands_its_rows_over_with_what_its_schema_proved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pathlib import Path

    from composefs_py import parse_toc, toc

    seen: list[frozenset[str]] = []
    add_columns = TreeBuilder.add_columns

    def spy(
        builder: TreeBuilder, columns: NodeColumns, *, proven: frozenset[str] = frozenset()
    ) -> bool:
        seen.append(proven)
        return add_columns(builder, columns, proven=proven)

    monkeypatch.setattr(TreeBuilder, "add_columns", spy)
    data = (Path(__file__).parent / "data" / "small.zstd-chunked.toc.json").read_bytes()
    tree = parse_toc(data)
    assert seen == [toc.TOC_PROVEN] == [_BOTH]
    assert tree._table.nodes is None  # taken in bulk, kept as rows
