"""Tests of composefs_py.model: the TreeBuilder owns every invariant.

libcomposefs calls ``abort()`` (through ``assert``) on several misuses of its
node API.  Each has a test here proving that no :class:`Tree` can carry it,
because the builder rejects the input with :class:`ValidationError`:

=====================================  ======================================
libcomposefs ``assert``                test
=====================================  ======================================
child named ``..`` (lcfs_node_add_     ``test_abort_case_dotdot_child_*``
child accepts it, the writer's path
walk then recurses)
self hardlink (``lcfs_node_make_       ``test_abort_case_self_hardlink_*``
hardlink``: ``assert(node !=
target)``)
symlink without target (``lcfs_node_   ``test_abort_case_symlink_without_
set_symlink_payload``: asserts on the  target_*``
mode, refuses NULL/empty)
cycles (``assert(!child->in_tree)``    ``test_abort_case_hardlink_cycle_*``,
in the writer's tree walk; hardlink    ``test_abort_case_tree_cycle_*``
loops)
unref of a parented node (``lcfs_      ``test_abort_case_unref_of_parented_
node_unref``: ``assert(node->parent    node_*``
== NULL)``)
=====================================  ======================================

A Hypothesis property then throws random, partly hostile build sequences at
the builder: every sequence is either rejected with ValidationError or gives
a Tree that satisfies all invariants and that libcomposefs writes (in this
process: an ``abort()`` would kill the test run).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_upstream_assets import fsck

from composefs_py.errors import ValidationError
from composefs_py.limits import (
    LCFS_INLINE_CONTENT_MAX,
    LCFS_INODE_EXTERNAL_XATTR_MAX,
    XATTR_HEADROOM,
    Limits,
)
from composefs_py.model import (
    ROOT,
    Hardlink,
    Inode,
    Node,
    Tree,
    TreeBuilder,
)

DIR = stat.S_IFDIR | 0o755
REG = stat.S_IFREG | 0o644
LNK = stat.S_IFLNK | 0o777
CHR = stat.S_IFCHR | 0o600
BLK = stat.S_IFBLK | 0o600
FIFO = stat.S_IFIFO | 0o600
SOCK = stat.S_IFSOCK | 0o600
PAYLOAD = b"ab/" + b"cd" * 31
U32_MAX = (1 << 32) - 1
I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1


def builder_with_root(**options: object) -> TreeBuilder:
    builder = TreeBuilder(**options)  # type: ignore[arg-type]
    builder.add(ROOT, Inode(DIR))
    return builder


def build(*entries: tuple[bytes, Node], **options: object) -> Tree:
    builder = builder_with_root(**options)
    for index, (path, node) in enumerate(entries):
        builder.add(path, node, entry=index)
    return builder.build()


def rejects(*entries: tuple[bytes, Node], **options: object) -> ValidationError:
    """Assert that building ``entries`` raises ValidationError; return it."""
    with pytest.raises(ValidationError) as caught:
        build(*entries, **options)
    return caught.value


def write_checked(tree: Tree, fsck_erofs: Path) -> bytes:
    """Write ``tree`` in this process (an abort() would end the run), fsck it."""
    from composefs_py import _native

    with tempfile.TemporaryDirectory(prefix="cfspy-model-") as tmp:
        image = Path(tmp) / "tree.cfs"
        with open(image, "wb") as out:
            digest = _native.write_tree(tree, out.fileno())
        fsck(fsck_erofs, image)
    assert len(digest) == 32
    return digest


def assert_tree_invariants(tree: Tree) -> None:
    """Check, independently of the builder, what libcomposefs relies on."""
    paths = tree.paths
    assert paths[0] == ROOT
    assert len(set(paths)) == len(paths)
    assert tree.root.is_dir
    seen: set[bytes] = set()
    for path, node in tree:
        if path != ROOT:
            assert path.startswith(b"/") and not path.endswith(b"/")
            parts = path.split(b"/")[1:]
            for part in parts:
                assert part not in (b"", b".", b"..")
                assert b"\0" not in part and len(part) <= 255
            parent = path.rsplit(b"/", 1)[0] or ROOT
            assert parent in seen, "parents come before their children"
            parent_node = tree[parent]
            assert isinstance(parent_node, Inode) and parent_node.is_dir
        seen.add(path)
        if isinstance(node, Hardlink):
            assert node.target != path
            target = tree[node.target]
            assert isinstance(target, Inode), "hardlinks resolve in one step"
            assert not target.is_dir
            continue
        ftype = node.file_type
        if ftype == stat.S_IFLNK:
            assert node.symlink_target
            assert b"\0" not in node.symlink_target
        else:
            assert node.symlink_target is None
        if node.content is not None:
            assert len(node.content) <= LCFS_INLINE_CONTENT_MAX
            assert len(node.content) == node.size
        if node.xattrs:
            names = [name for name, _ in node.xattrs]
            assert names == sorted(set(names))
            assert Limits.xattr_space(node.xattrs) <= Limits().max_xattr_space
    # Directory link counts are what libcomposefs computes.
    for path, node in tree:
        if isinstance(node, Inode) and node.is_dir:
            prefix = path if path != ROOT else b""
            subdirs = sum(
                1
                for other, child in tree
                if other != ROOT
                and (other.rsplit(b"/", 1)[0] or ROOT) == (prefix or ROOT)
                and isinstance(child, Inode)
                and child.is_dir
            )
            assert node.nlink == 2 + subdirs


# ---------------------------------------------------------------------------
# the abort() cases, one by one
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [b"/..", b"/a/..", b"/a/../b", b"/.", b"/a/.", b"/a/./b"])
def test_abort_case_dotdot_child_is_rejected(path: bytes) -> None:
    error = rejects((b"/a", Inode(DIR)), (path, Inode(REG)))
    assert error.field == "path"
    assert error.entry == 1


def test_abort_case_dotdot_child_cannot_be_synthesized_as_a_parent() -> None:
    builder = TreeBuilder(synthesize_parents=True)
    with pytest.raises(ValidationError):
        builder.add(b"/../etc/passwd", Inode(REG))
    assert len(builder) == 0, "nothing was added before the rejection"


def test_abort_case_dotdot_child_cannot_be_a_hardlink_target() -> None:
    error = rejects(
        (b"/a", Inode(DIR)),
        (b"/a/f", Inode(REG)),
        (b"/g", Hardlink(b"/a/../a/f")),
    )
    assert error.field == "linkName"


def test_abort_case_self_hardlink_is_rejected() -> None:
    error = rejects((b"/f", Hardlink(b"/f")))
    assert error.field == "linkName"
    assert "itself" in error.reason


def test_abort_case_self_hardlink_through_replacement_is_rejected() -> None:
    # A tar-style "last wins" replacement must not sneak a self link in.
    error = rejects((b"/f", Inode(REG)), (b"/f", Hardlink(b"/f")), duplicates="replace")
    assert error.field == "linkName"


@pytest.mark.parametrize("target", [None, b""])
def test_abort_case_symlink_without_target_is_rejected(target: bytes | None) -> None:
    error = rejects((b"/l", Inode(LNK, symlink_target=target)))
    assert error.field == "linkName"


def test_abort_case_symlink_without_target_as_replacement_is_rejected() -> None:
    rejects(
        (b"/l", Inode(LNK, symlink_target=b"x")),
        (b"/l", Inode(LNK)),
        duplicates="replace",
    )


def test_abort_case_symlink_target_with_nul_is_rejected() -> None:
    # libcomposefs copies the target with strdup(): a NUL would cut it.
    rejects((b"/l", Inode(LNK, symlink_target=b"a\0b")))


@pytest.mark.parametrize("length", [2, 3, 7])
def test_abort_case_hardlink_cycle_is_rejected(length: int) -> None:
    names = [f"/h{i}".encode() for i in range(length)]
    entries = [(name, Hardlink(names[(i + 1) % length])) for i, name in enumerate(names)]
    error = rejects(*entries)
    assert error.field == "linkName"
    assert "cycle" in error.reason


def test_abort_case_hardlink_cycle_beside_a_valid_chain_is_rejected() -> None:
    rejects(
        (b"/f", Inode(REG)),
        (b"/a", Hardlink(b"/f")),
        (b"/b", Hardlink(b"/a")),
        (b"/x", Hardlink(b"/y")),
        (b"/y", Hardlink(b"/x")),
    )


def test_hardlink_chains_resolve_to_the_inode_in_one_step() -> None:
    tree = build(
        (b"/f", Inode(REG)),
        (b"/a", Hardlink(b"/b")),
        (b"/b", Hardlink(b"/c")),
        (b"/c", Hardlink(b"/f")),
    )
    # The inode stays where the input put it (its place changes the image
    # bytes, and containers/storage keeps it at the TOC's target).
    for path in (b"/a", b"/b", b"/c"):
        assert tree[path] == Hardlink(b"/f")
    assert_tree_invariants(tree)


@pytest.mark.parametrize("target", [b"/", b"/d"])
def test_abort_case_tree_cycle_through_a_directory_hardlink_is_rejected(
    target: bytes,
) -> None:
    # A hardlinked directory would make a directory its own ancestor.
    error = rejects((b"/d", Inode(DIR)), (b"/d/up", Hardlink(target)))
    assert error.field == "linkName"


def test_abort_case_tree_cycle_node_added_twice_is_rejected() -> None:
    error = rejects((b"/d", Inode(DIR)), (b"/d", Inode(DIR)))
    assert error.field == "name"


def test_abort_case_tree_cycle_root_added_twice_is_rejected() -> None:
    error = rejects((ROOT, Inode(DIR)))
    assert error.path == "/"


def test_abort_case_tree_cycle_root_cannot_become_a_hardlink() -> None:
    rejects((ROOT, Hardlink(b"/f")), (b"/f", Inode(REG)), duplicates="replace")


def test_abort_case_tree_cycle_identical_repeat_adds_one_node() -> None:
    tree = build(
        (b"/d", Inode(DIR)),
        (b"/d/f", Inode(REG)),
        (b"/d", Inode(DIR)),
        duplicates="identical",
    )
    assert tree.paths == (ROOT, b"/d", b"/d/f")


def test_abort_case_unref_of_parented_node_parent_must_exist() -> None:
    # _native unrefs only the root and a node not yet added to its parent;
    # lcfs_node_add_child() cannot fail for a Tree, so every node gets a parent.
    error = rejects((b"/missing/f", Inode(REG)))
    assert error.field == "path"


@pytest.mark.parametrize("mode", [REG, LNK, CHR, FIFO, SOCK])
def test_abort_case_unref_of_parented_node_parent_must_be_a_directory(
    mode: int,
) -> None:
    target = b"t" if mode == LNK else None
    error = rejects((b"/p", Inode(mode, symlink_target=target)), (b"/p/f", Inode(REG)))
    assert error.field == "path"


def test_abort_case_unref_of_parented_node_parent_cannot_be_a_hardlink() -> None:
    rejects((b"/f", Inode(REG)), (b"/h", Hardlink(b"/f")), (b"/h/x", Inode(REG)))


def test_abort_case_unref_of_parented_node_directory_keeps_its_children() -> None:
    # Replacing a populated directory by a file would orphan its children.
    error = rejects(
        (b"/d", Inode(DIR)),
        (b"/d/f", Inode(REG)),
        (b"/d", Inode(REG)),
        duplicates="replace",
    )
    assert error.field == "type"


def test_abort_case_unref_of_parented_node_every_tree_node_has_a_parent() -> None:
    tree = build(
        (b"/a/b/c", Inode(REG)),
        (b"/a/b/d", Inode(DIR)),
        (b"/z", Hardlink(b"/a/b/c")),
        synthesize_parents=True,
    )
    assert tree.paths == (ROOT, b"/a", b"/a/b", b"/a/b/c", b"/a/b/d", b"/z")
    assert_tree_invariants(tree)


# ---------------------------------------------------------------------------
# names and paths
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [b"relative", b"/trailing/", b"//double", b"/a//b", b"/nul\0", b"", b"/a\0b"],
)
def test_unclean_paths_are_rejected(path: bytes) -> None:
    builder = builder_with_root()
    builder.add(b"/a", Inode(DIR))
    with pytest.raises(ValidationError) as caught:
        builder.add(path, Inode(REG))
    assert caught.value.field == "path"


def test_component_of_255_bytes_passes_and_256_is_rejected() -> None:
    build((b"/" + b"n" * 255, Inode(REG)))
    rejects((b"/" + b"n" * 256, Inode(REG)))


def test_path_of_4095_bytes_passes_and_4096_is_rejected() -> None:
    def deep(total: int) -> list[tuple[bytes, Node]]:
        entries: list[tuple[bytes, Node]] = []
        path = b""
        while len(path) + 201 < total:
            path += b"/" + b"d" * 200
            entries.append((path, Inode(DIR)))
        path += b"/" + b"f" * (total - len(path) - 1)
        entries.append((path, Inode(REG)))
        assert len(path) == total
        return entries

    build(*deep(4095))
    rejects(*deep(4096))


def test_depth_limit_is_enforced() -> None:
    limits = Limits(max_depth=3)
    build(
        (b"/a", Inode(DIR)),
        (b"/a/b", Inode(DIR)),
        (b"/a/b/c", Inode(REG)),
        limits=limits,
    )
    rejects(
        (b"/a", Inode(DIR)),
        (b"/a/b", Inode(DIR)),
        (b"/a/b/c", Inode(DIR)),
        (b"/a/b/c/d", Inode(REG)),
        limits=limits,
    )


def test_entry_limit_is_enforced() -> None:
    limits = Limits(max_entries=3)
    build((b"/a", Inode(REG)), (b"/b", Inode(REG)), limits=limits)
    rejects((b"/a", Inode(REG)), (b"/b", Inode(REG)), (b"/c", Inode(REG)), limits=limits)


def test_total_path_bytes_limit_is_enforced() -> None:
    limits = Limits(max_total_path_bytes=10)
    build((b"/aaaa", Inode(REG)), (b"/bbbb", Inode(REG)), limits=limits)
    rejects((b"/aaaa", Inode(REG)), (b"/bbbbb", Inode(REG)), limits=limits)


def test_root_must_be_a_directory() -> None:
    builder = TreeBuilder()
    with pytest.raises(ValidationError):
        builder.add(ROOT, Inode(REG))


def test_missing_root_is_rejected_unless_synthesized() -> None:
    with pytest.raises(ValidationError):
        TreeBuilder().build()
    tree = TreeBuilder(synthesize_parents=True).build()
    assert tree.paths == (ROOT,)
    assert tree.root == Inode(DIR, nlink=2)


def test_synthesized_parents_are_plain_0755_directories_until_replaced() -> None:
    builder = TreeBuilder(synthesize_parents=True, duplicates="identical")
    builder.add(b"/a/b/f", Inode(REG, uid=5))
    builder.add(b"/a", Inode(DIR & ~0o777 | 0o700, uid=7, mtime=9))
    tree = builder.build()
    assert tree[b"/a"] == Inode(stat.S_IFDIR | 0o700, nlink=3, uid=7, mtime=9)
    assert tree[b"/a/b"] == Inode(DIR, nlink=2)
    assert tree[ROOT] == Inode(DIR, nlink=3)


def test_order_is_depth_first_with_siblings_sorted_by_name_bytes() -> None:
    tree = build(
        (b"/b", Inode(DIR)),
        (b"/a", Inode(REG)),
        (b"/b/z", Inode(REG)),
        (b"/b/\xff", Inode(REG)),
        (b"/b/A", Inode(REG)),
        (b"/a.d", Inode(DIR)),
        (b"/a.d/x", Inode(REG)),
    )
    assert tree.paths == (
        ROOT,
        b"/a",
        b"/a.d",
        b"/a.d/x",
        b"/b",
        b"/b/A",
        b"/b/z",
        b"/b/\xff",
    )


def test_errors_name_entry_path_and_field() -> None:
    builder = builder_with_root()
    with pytest.raises(ValidationError) as caught:
        builder.add(b"/usr", Inode(DIR, uid=-1), entry=17)
    error = caught.value
    assert (error.entry, error.path, error.field) == (17, "/usr", "uid")
    assert str(error).startswith('entry 17 ("/usr"): uid: ')


# ---------------------------------------------------------------------------
# mode and type agreement
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode",
    [
        0o7777,  # no file type
        stat.S_IFREG | 0o10000,  # a bit outside type and permissions
        0o170000 | 0o644,  # unknown type
        0o030000 | 0o644,  # unknown type
        -1,
        1 << 40,
    ],
)
def test_mode_must_be_a_known_type_plus_permission_bits(mode: int) -> None:
    assert rejects((b"/x", Inode(mode))).field == "mode"


def test_mode_must_be_an_int_not_a_bool_or_str() -> None:
    rejects((b"/x", Inode(True)))
    rejects((b"/x", Inode("0o644")))  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", [DIR, LNK, CHR, BLK, FIFO, SOCK])
def test_only_regular_files_have_a_size(mode: int) -> None:
    target = b"t" if mode == LNK else None
    assert rejects((b"/x", Inode(mode, size=1, symlink_target=target))).field == "size"


@pytest.mark.parametrize("mode", [REG, DIR, LNK, FIFO, SOCK])
def test_only_devices_have_a_device_number(mode: int) -> None:
    target = b"t" if mode == LNK else None
    assert rejects((b"/x", Inode(mode, rdev=1, symlink_target=target))).field == "rdev"


@pytest.mark.parametrize("mode", [DIR, LNK, CHR, BLK, FIFO, SOCK])
def test_only_regular_files_have_payload_content_or_digest(mode: int) -> None:
    target = b"t" if mode == LNK else None
    for extra in (
        {"payload": PAYLOAD},
        {"content": b""},
        {"fsverity_digest": bytes(32)},
    ):
        node = Inode(mode, symlink_target=target, **extra)  # type: ignore[arg-type]
        rejects((b"/x", node))


@pytest.mark.parametrize("mode", [REG, DIR, CHR, FIFO])
def test_only_symlinks_have_a_target(mode: int) -> None:
    assert rejects((b"/x", Inode(mode, symlink_target=b"t"))).field == "linkName"


def test_symlink_target_of_4095_bytes_passes_and_4096_is_rejected() -> None:
    build((b"/l", Inode(LNK, symlink_target=b"t" * 4095)))
    rejects((b"/l", Inode(LNK, symlink_target=b"t" * 4096)))


@pytest.mark.parametrize("payload", [b"", b"a\0b", b"x" * 4096])
def test_bad_payloads_are_rejected(payload: bytes) -> None:
    rejects((b"/f", Inode(REG, size=1, payload=payload)))


@pytest.mark.parametrize("digest", [bytes(31), bytes(33), b""])
def test_fsverity_digest_must_be_32_bytes(digest: bytes) -> None:
    assert rejects((b"/f", Inode(REG, fsverity_digest=digest))).field == "digest"


def test_every_file_type_builds_and_writes(fsck_erofs: Path) -> None:
    tree = build(
        (b"/d", Inode(DIR)),
        (b"/f", Inode(REG, size=3, content=b"abc")),
        (b"/p", Inode(REG, size=1 << 40, payload=PAYLOAD, fsverity_digest=bytes(32))),
        (b"/l", Inode(LNK, symlink_target=b"/f")),
        (b"/c", Inode(CHR, rdev=os.makedev(1, 3))),
        (b"/b", Inode(BLK, rdev=os.makedev(8, 1))),
        (b"/fifo", Inode(FIFO)),
        (b"/s", Inode(SOCK)),
        (b"/h", Hardlink(b"/f")),
    )
    assert_tree_invariants(tree)
    write_checked(tree, fsck_erofs)


# ---------------------------------------------------------------------------
# numeric ranges
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["uid", "gid", "nlink"])
def test_u32_fields_take_0_to_2_32_minus_1(field: str) -> None:
    for good in (0, 1, U32_MAX - 1):
        build((b"/f", Inode(REG, **{field: good})))  # type: ignore[arg-type]
    for bad in (-1, U32_MAX + 1, 1 << 64, True, 1.0, "1"):
        error = rejects((b"/f", Inode(REG, **{field: bad})))  # type: ignore[arg-type]
        assert error.field == field


def test_mtime_takes_any_int64_and_nanoseconds_below_one_second() -> None:
    for sec in (I64_MIN, -1, 0, I64_MAX):
        build((b"/f", Inode(REG, mtime=sec, mtime_nsec=999_999_999)))
    bad: tuple[object, ...] = (I64_MIN - 1, I64_MAX + 1, 1.5, False)
    for value in bad:
        node = Inode(REG, mtime=value)  # type: ignore[arg-type]
        assert rejects((b"/f", node)).field == "mtime"
    for nsec in (-1, 1_000_000_000):
        assert rejects((b"/f", Inode(REG, mtime_nsec=nsec))).field == "mtime"


def test_size_is_bounded_by_the_limit() -> None:
    # 2**53 is the largest external file libcomposefs can describe (EFBIG beyond).
    build((b"/f", Inode(REG, size=1 << 53, payload=PAYLOAD)))
    rejects((b"/f", Inode(REG, size=(1 << 53) + 1, payload=PAYLOAD)))
    rejects((b"/f", Inode(REG, size=-1)))
    limits = Limits(max_file_size=10)
    rejects((b"/f", Inode(REG, size=11, payload=PAYLOAD)), limits=limits)


def test_rdev_takes_the_32_bits_erofs_keeps() -> None:
    build((b"/c", Inode(CHR, rdev=(1 << 32) - 1)))
    rejects((b"/c", Inode(CHR, rdev=1 << 32)))
    rejects((b"/c", Inode(BLK, rdev=-1)))


def test_empty_inline_content_is_rejected_in_favour_of_none() -> None:
    build((b"/f", Inode(REG, size=0, content=None)))
    assert rejects((b"/f", Inode(REG, size=0, content=b""))).field == "content"


@pytest.mark.parametrize("name", [b"user.", b"trusted.", b"security."])
def test_xattr_name_that_is_only_a_prefix_is_rejected(name: bytes) -> None:
    assert rejects((b"/f", Inode(REG, xattrs=((name, b"v"),)))).field == "xattrs"


def test_fast_and_slow_path_checks_agree_on_bad_last_components() -> None:
    for bad in (b"/d/.", b"/d/..", b"/d/" + b"x" * 256, b"/d/a\0b", b"/d/", b"//d", b"//x"):
        rejects((b"/d", Inode(DIR)), (bad, Inode(REG)))


# ---------------------------------------------------------------------------
# inline content
# ---------------------------------------------------------------------------


def test_inline_content_up_to_5000_bytes_passes() -> None:
    assert LCFS_INLINE_CONTENT_MAX == 5000
    tree = build((b"/f", Inode(REG, size=5000, content=b"c" * 5000)))
    assert_tree_invariants(tree)


def test_inline_content_of_5001_bytes_is_rejected() -> None:
    error = rejects((b"/f", Inode(REG, size=5001, content=b"c" * 5001)))
    assert error.field == "content"


def test_inline_content_must_match_size_and_exclude_a_payload() -> None:
    rejects((b"/f", Inode(REG, size=4, content=b"abc")))
    rejects((b"/f", Inode(REG, size=3, content=b"abc", payload=PAYLOAD)))


# ---------------------------------------------------------------------------
# xattrs
# ---------------------------------------------------------------------------


def xattr_node(*pairs: tuple[bytes, bytes]) -> Inode:
    return Inode(REG, xattrs=pairs)


def test_xattrs_must_be_sorted_unique_bytes_pairs() -> None:
    build((b"/f", xattr_node((b"user.a", b"1"), (b"user.b", b""))))
    rejects((b"/f", xattr_node((b"user.b", b"1"), (b"user.a", b"2"))))
    rejects((b"/f", xattr_node((b"user.a", b"1"), (b"user.a", b"2"))))
    rejects((b"/f", xattr_node(("user.a", b"1"))))  # type: ignore[arg-type]
    rejects((b"/f", Inode(REG, xattrs=[(b"user.a", b"1")])))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [b"", b"user.\0x", b"user." + b"n" * 251])
def test_bad_xattr_names_are_rejected(name: bytes) -> None:
    assert rejects((b"/f", xattr_node((name, b"v")))).field == "xattrs"


def test_xattr_name_of_255_bytes_passes() -> None:
    build((b"/f", xattr_node((b"user." + b"n" * 250, b"v"))))


def test_xattr_value_over_65535_bytes_is_rejected() -> None:
    error = rejects((b"/f", xattr_node((b"user.big", b"v" * 65536))))
    assert error.field == "xattrs"


def test_xattr_space_keeps_headroom_below_libcomposefs_limit() -> None:
    limit = LCFS_INODE_EXTERNAL_XATTR_MAX - XATTR_HEADROOM
    assert Limits().max_xattr_space == limit
    name = b"user.v"
    # One xattr taking exactly the allowed space passes; one byte more fails.
    value_len = limit - 12 - 7 - len(name)
    build((b"/f", xattr_node((name, b"v" * value_len))))
    error = rejects((b"/f", xattr_node((name, b"v" * (value_len + 1)))))
    assert error.field == "xattrs"


def test_xattr_space_headroom_leaves_room_for_libcomposefs(fsck_erofs: Path) -> None:
    # The largest accepted xattr set still writes: libcomposefs' own limit
    # (LCFS_INODE_EXTERNAL_XATTR_MAX) is not reached.
    limit = Limits().max_xattr_space
    pairs = tuple((f"user.{i:03d}".encode(), b"x" * 200) for i in range(limit // 215))
    space = Limits.xattr_space(pairs)
    assert space <= limit < space + 215
    tree = build((b"/f", xattr_node(*pairs)), (b"/d", Inode(DIR, xattrs=pairs)))
    write_checked(tree, fsck_erofs)


# ---------------------------------------------------------------------------
# duplicates, hardlinks, link counts
# ---------------------------------------------------------------------------


def test_duplicate_policies() -> None:
    first, second = Inode(REG, uid=1), Inode(REG, uid=2)
    rejects((b"/f", first), (b"/f", first))
    build((b"/f", first), (b"/f", first), duplicates="identical")
    rejects((b"/f", first), (b"/f", second), duplicates="identical")
    tree = build((b"/f", first), (b"/f", second), duplicates="replace")
    assert tree[b"/f"] == second


def test_hardlink_to_missing_target_is_rejected() -> None:
    error = rejects((b"/h", Hardlink(b"/nowhere")))
    assert error.field == "linkName"


def test_hardlink_target_must_be_an_absolute_path() -> None:
    rejects((b"/f", Inode(REG)), (b"/h", Hardlink(b"f")))


def test_hardlink_to_a_later_entry_is_fine() -> None:
    tree = build((b"/h", Hardlink(b"/z/f")), (b"/z", Inode(DIR)), (b"/z/f", Inode(REG)))
    assert tree.inode(b"/h") is tree[b"/z/f"]
    assert tree[b"/h"] == Hardlink(b"/z/f")


def test_count_hardlinks_sets_target_nlink() -> None:
    entries = (
        (b"/f", Inode(REG)),
        (b"/a", Hardlink(b"/f")),
        (b"/b", Hardlink(b"/a")),
    )
    assert build(*entries).inode(b"/f").nlink == 1
    assert build(*entries, count_hardlinks=True).inode(b"/f").nlink == 3


def test_directory_nlink_is_two_plus_subdirectories() -> None:
    tree = build(
        (b"/a", Inode(DIR, nlink=99)),
        (b"/a/b", Inode(DIR)),
        (b"/a/c", Inode(DIR)),
        (b"/a/f", Inode(REG)),
    )
    assert tree[b"/a"] == Inode(DIR, nlink=4)
    assert tree.root.nlink == 3


def test_tree_is_immutable() -> None:
    tree = build((b"/f", Inode(REG)))
    with pytest.raises(TypeError):
        tree[b"/g"] = Inode(REG)  # type: ignore[index]
    with pytest.raises(AttributeError):
        tree._table = tree._table  # type: ignore[misc]
    node = tree.inode(b"/f")
    with pytest.raises(AttributeError):
        node.uid = 5  # type: ignore[misc]


def test_a_tree_has_one_storage_form_its_rows() -> None:
    """A per-node build keeps its Tree as the bulk entry does: as rows (a Table)."""
    from composefs_py._columns import Table

    assert [field.name for field in dataclasses.fields(Tree)] == ["_table", "_key"]
    tree = build(
        (b"/d", Inode(DIR)),
        (b"/d/f", Inode(REG, size=3, payload=PAYLOAD, xattrs=((b"user.a", b"1"),))),
        (b"/h", Hardlink(b"/d/f")),
        (b"/l", Inode(LNK, symlink_target=b"d/f")),
        count_hardlinks=True,
    )
    table = tree._table
    assert isinstance(table, Table)
    assert table.tree_paths() == tree.paths == (b"/", b"/d", b"/d/f", b"/h", b"/l")
    assert list(table.ints["nlink"]) == [3, 2, 2, 1, 1]
    assert list(table.ints["size"]) == [0, 0, 3, 0, 0]
    assert table.links == {3: 2}  # the hardlink row, its target's row
    assert table.extras == {2: (None, None, ((b"user.a", b"1"),))}
    assert table.data == [None, None, PAYLOAD, None, b"d/f"]
    assert tree[b"/h"] == Hardlink(b"/d/f") and tree.inode(b"/h").nlink == 2
    assert tree.get("/l") == Inode(LNK, symlink_target=b"d/f")
    assert tree.get(b"/nothing") is None and b"/d" in tree and "/x" not in tree


def test_rows_go_in_by_one_entry_only() -> None:
    """add_columns takes rows into an empty builder only, and never with add()."""
    from composefs_py._columns import NodeColumns

    def columns() -> NodeColumns:
        return NodeColumns([ROOT, b"/f"], [DIR, REG], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0],
                           [None, None])  # fmt: skip

    builder = builder_with_root()
    assert not builder.add_columns(columns())  # not empty: add the rows one by one
    bulk = TreeBuilder()
    assert bulk.add_columns(columns())
    assert not bulk.add_columns(columns())
    bulk.add(ROOT, Inode(DIR))
    with pytest.raises(RuntimeError):
        bulk.build()
    with pytest.raises(ValueError, match="unknown rules"):
        TreeBuilder().add_columns(columns(), proven=frozenset({"everything"}))


# ---------------------------------------------------------------------------
# the property: reject, or give a Tree libcomposefs can write
# ---------------------------------------------------------------------------

GOOD_NAMES = [b"a", b"b", b"c", b"\xff", b"n" * 255]
BAD_NAMES = [b".", b"..", b"", b"c\0", b"n" * 256]


def _paths() -> st.SearchStrategy[bytes]:
    good = st.sampled_from(GOOD_NAMES)
    name = st.one_of(good, good, good, good, st.sampled_from(BAD_NAMES))
    return st.lists(name, min_size=0, max_size=3).map(lambda parts: b"/" + b"/".join(parts))


def _valid_inodes() -> st.SearchStrategy[Inode]:
    """Inodes whose fields agree with their type (to reach deep trees)."""
    common = {
        "uid": st.sampled_from([0, 1000, U32_MAX]),
        "mtime": st.sampled_from([0, -1, I64_MAX]),
        "xattrs": st.sampled_from([(), ((b"user.a", b"1"), (b"user.b", b""))]),
    }
    regular = st.one_of(
        st.builds(Inode, mode=st.just(REG), **common),
        st.binary(min_size=1, max_size=8).flatmap(
            lambda data: st.builds(
                Inode,
                mode=st.just(REG),
                size=st.just(len(data)),
                content=st.just(data),
                **common,
            )
        ),
        st.builds(
            Inode,
            mode=st.just(REG),
            size=st.integers(1, I64_MAX),
            payload=st.just(PAYLOAD),
            fsverity_digest=st.sampled_from([None, bytes(32)]),
            **common,
        ),
    )
    return st.one_of(
        st.builds(Inode, mode=st.just(DIR), **common),
        regular,
        st.builds(
            Inode,
            mode=st.just(LNK),
            symlink_target=st.sampled_from([b"t", b"/a/..", b"."]),
            **common,
        ),
        st.builds(Inode, mode=st.sampled_from([CHR, BLK]), rdev=st.integers(0, 1 << 20)),
        st.builds(Inode, mode=st.sampled_from([FIFO, SOCK]), **common),
    )


def _hostile_inodes() -> st.SearchStrategy[Inode]:
    mode = st.sampled_from([DIR, REG, LNK, CHR, FIFO, SOCK, 0o644, stat.S_IFREG | 0o10644])
    return st.builds(
        Inode,
        mode=mode,
        nlink=st.sampled_from([0, 1, U32_MAX, U32_MAX + 1]),
        uid=st.sampled_from([0, -1, U32_MAX]),
        size=st.sampled_from([0, 3, 5001]),
        rdev=st.sampled_from([0, 5]),
        payload=st.sampled_from([None, PAYLOAD, b""]),
        symlink_target=st.sampled_from([None, b"", b"t", b"/a/.."]),
        content=st.sampled_from([None, b"", b"abc", b"x" * 5001]),
        xattrs=st.sampled_from(
            [
                (),
                ((b"user.a", b"1"),),
                ((b"", b"1"),),
                ((b"user.b", b"1"), (b"user.a", b"")),
            ]
        ),
    )


@st.composite
def _ops(draw: st.DrawFn) -> list[tuple[bytes, Node]]:
    """A mostly valid build sequence, with at most one hostile step in it."""
    good_path = st.lists(st.sampled_from(GOOD_NAMES[:3]), min_size=1, max_size=3).map(
        lambda parts: b"/" + b"/".join(parts)
    )
    paths = draw(st.lists(good_path, max_size=14))
    ops: list[tuple[bytes, Node]] = []
    for path in paths:
        is_parent = any(other.startswith(path + b"/") for other in paths)
        if is_parent:
            node: Node = draw(st.builds(Inode, mode=st.just(DIR), uid=st.integers(0, 9)))
        elif ops and draw(st.integers(0, 4)) == 0:
            node = Hardlink(draw(st.sampled_from([p for p, _ in ops] + [path])))
        else:
            node = draw(_valid_inodes())
        ops.append((path, node))
    if draw(st.booleans()):
        hostile: tuple[bytes, Node] = draw(
            st.one_of(
                st.tuples(_paths(), _hostile_inodes()),
                st.tuples(_paths(), _paths().map(Hardlink)),
            )
        )
        ops.insert(draw(st.integers(0, len(ops))), hostile)
    return ops


def _attempt(ops: list[tuple[bytes, Node]], options: dict[str, object]) -> Iterator[Tree]:
    builder = TreeBuilder(**options)  # type: ignore[arg-type]
    try:
        for index, (path, node) in enumerate(ops):
            builder.add(path, node, entry=index)
        yield builder.build()
    except ValidationError:
        return


@given(
    ops=_ops(),
    synthesize=st.booleans(),
    duplicates=st.sampled_from(["reject", "identical", "replace"]),
    count=st.booleans(),
)
def test_any_build_sequence_is_rejected_or_gives_a_writable_valid_tree(
    fsck_erofs: Path,
    ops: list[tuple[bytes, Node]],
    synthesize: bool,
    duplicates: str,
    count: bool,
) -> None:
    options: dict[str, object] = {
        "synthesize_parents": synthesize,
        "duplicates": duplicates,
        "count_hardlinks": count,
    }
    for tree in _attempt([(ROOT, Inode(DIR)), *ops], options):
        assert_tree_invariants(tree)
        write_checked(tree, fsck_erofs)


def test_a_tree_cannot_be_made_without_the_builder() -> None:
    from types import MappingProxyType

    with pytest.raises(TypeError):
        Tree((b"/",), MappingProxyType({b"/": Inode(DIR)}))


# ---------------------------------------------------------------------------
# cost: hardlink chains resolve in linear time
# ---------------------------------------------------------------------------


def _link_shape(shape: str, n: int) -> list[tuple[bytes, Node]]:
    """``n`` hardlinks (and their one inode ``/f``) shaped as ``shape``.

    ``chain``: l0 -> l1 -> ... -> f, in that order; ``reverse``: the same
    chain, its end first; ``fan-in``: half the links in a chain, the other
    half all to the chain's far end; ``comb``: a chain with a link to each
    of its links.
    """
    name = [b"/l%d" % i for i in range(n)]
    if shape == "chain":
        return [(b"/f", Inode(REG)), *((name[i], Hardlink(name[i + 1])) for i in range(n - 1)),
                (name[n - 1], Hardlink(b"/f"))]  # fmt: skip
    if shape == "reverse":
        return list(reversed(_link_shape("chain", n)))
    half = n // 2
    spine = _link_shape("chain", half)
    if shape == "fan-in":
        return [*spine, *((b"/m%d" % i, Hardlink(name[0])) for i in range(n - half))]
    if shape == "comb":
        return [*spine, *((b"/m%d" % i, Hardlink(name[i % half])) for i in range(n - half))]
    raise AssertionError(shape)


def _build_links(entries: list[tuple[bytes, Node]]) -> Tree:
    builder = TreeBuilder(count_hardlinks=True)
    builder.add(ROOT, Inode(DIR))
    for index, (path, node) in enumerate(entries):
        builder.add(path, node, entry=index)
    return builder.build()


@pytest.mark.parametrize("shape", ["chain", "reverse", "fan-in", "comb"])
def test_hardlink_resolution_is_linear(shape: str) -> None:
    from tests.cost import growth

    small, large, ratio = growth(_build_links, lambda n: _link_shape(shape, n), 10000)
    assert ratio < 8, f"{shape}: 10000 links {small:.3f} s, 40000 links {large:.3f} s"


@pytest.mark.parametrize("shape", ["chain", "reverse", "fan-in", "comb"])
def test_hardlink_shapes_resolve_to_their_inode(shape: str) -> None:
    entries = _link_shape(shape, 50)
    tree = _build_links(entries)
    links = [path for path, node in entries if isinstance(node, Hardlink)]
    assert all(tree[path] == Hardlink(b"/f") for path in links)
    assert tree.inode(b"/f").nlink == 1 + len(links)
    assert_tree_invariants(tree)


def test_a_cycle_reached_through_a_resolved_chain_is_still_a_cycle() -> None:
    # /a resolves first; /x -> /y -> /x is a cycle though /y also leads nowhere else
    error = rejects(
        (b"/f", Inode(REG)),
        (b"/a", Hardlink(b"/f")),
        (b"/b", Hardlink(b"/a")),
        (b"/c", Hardlink(b"/x")),
        (b"/x", Hardlink(b"/y")),
        (b"/y", Hardlink(b"/x")),
    )
    assert (error.entry, error.path, error.field) == (3, "/c", "linkName")
    assert "cycle" in error.reason


def test_a_chain_to_a_directory_or_nowhere_names_the_first_link() -> None:
    error = rejects((b"/d", Inode(DIR)), (b"/a", Hardlink(b"/b")), (b"/b", Hardlink(b"/d")))
    assert (error.entry, error.path, error.reason) == (1, "/a", "hardlink to a directory")
    error = rejects((b"/a", Hardlink(b"/b")), (b"/b", Hardlink(b"/gone")))
    assert (error.entry, error.path) == (0, "/a")
    assert "'/gone' does not exist" in error.reason


# ---------------------------------------------------------------------------
# payloads are object names (DESIGN rule 8)
# ---------------------------------------------------------------------------

HEX62 = bytes(b"0123456789abcdef"[i % 16] for i in range(62))

#: Payloads of the right length (65) but the wrong shape, and other hostile ones.
BAD_PAYLOAD_SHAPES = [
    b"AB/" + HEX62,  # uppercase
    b"ab/" + HEX62.upper(),
    b"ab/" + HEX62[:-1] + b"g",  # not hex
    b"abc" + HEX62,  # no slash
    b"ab/" + HEX62[:30] + b"/" + HEX62[31:],  # another slash
    b"/b/" + HEX62,  # absolute
    b"/ab/" + HEX62,
    b"../" + HEX62,
    b"ab/../../etc/shadow",
    b"ab/" + HEX62[:-1] + b"\0",  # NUL
    b"ab/" + HEX62[:-1] + b"\n",  # newline
    b"ab/" + HEX62 + b"\n",
    b"\nab/" + HEX62,
    b"ab/" + HEX62 + b".file",  # ostree's object names
    b"../../etc/shadow",
    b"/etc/shadow",
    b"ab\\/" + HEX62,
    b"ab/" + "é".encode() + HEX62[2:],
]


def _payload_shaped(length: int) -> bytes:
    """``length`` bytes of ``ab/`` then hex (a payload only at 65)."""
    return (b"ab/" + HEX62 * 2)[:length]


@pytest.mark.parametrize("length", range(71))
def test_a_payload_of_each_length_but_65_is_refused(length: int) -> None:
    payload = _payload_shaped(length)
    entries = ((b"/f", Inode(REG, size=1, payload=payload or None)),)
    if length in (0, 65):
        build(*entries)  # 0: no payload at all
        return
    error = rejects(*entries)
    assert (error.path, error.field) == ("/f", "payload")


@pytest.mark.parametrize("payload", BAD_PAYLOAD_SHAPES)
def test_a_payload_of_another_shape_is_refused(payload: bytes) -> None:
    error = rejects((b"/f", Inode(REG, size=1, payload=payload)))
    assert (error.path, error.field) == ("/f", "payload")
    assert error.entry == 0


@pytest.mark.parametrize("payload", BAD_PAYLOAD_SHAPES)
def test_foreign_payloads_opt_in(payload: bytes) -> None:
    limits = Limits(allow_foreign_payloads=True)
    entries = ((b"/f", Inode(REG, size=1, payload=payload)),)
    if b"\0" in payload:
        rejects(*entries, limits=limits)  # never a NUL: C would cut the name
    else:
        assert build(*entries, limits=limits).inode(b"/f").payload == payload


# ---------------------------------------------------------------------------
# trusted.overlay.* xattrs of an input never act as overlay metadata
# ---------------------------------------------------------------------------

OVERLAY_XATTRS = [
    (b"trusted.overlay.redirect", b"/secret"),
    (b"trusted.overlay.metacopy", b""),
    (b"trusted.overlay.origin", b"\x00\xfb"),
    (b"trusted.overlay.whiteout", b""),
    (b"trusted.overlay.whiteouts", b""),
    (b"trusted.overlay.upper", b"x"),
    (b"trusted.overlay.impure", b"y"),
    (b"trusted.overlay.nlink", b"U+1"),
    (b"trusted.overlay.protattr", b"i"),
    (b"trusted.overlay.overlay.redirect", b"/x"),  # an escaped one
    (b"trusted.overlay.opaque", b"n"),
    (b"trusted.overlay.opaque", b""),
    (b"trusted.overlay.opaque", b"yes"),
    # an overlay mounted with userxattr (unprivileged) reads user.overlay.*,
    # which libcomposefs does not escape
    (b"user.overlay.redirect", b"/secret"),
    (b"user.overlay.metacopy", b""),
    (b"user.overlay.whiteout", b""),
    (b"user.overlay.opaque", b"n"),
]


@pytest.mark.parametrize("kind", [DIR, REG, LNK, CHR])
@pytest.mark.parametrize("xattr", OVERLAY_XATTRS, ids=lambda x: f"{x[0].decode()}={x[1]!r}")
def test_overlay_xattrs_of_an_input_are_refused(xattr: tuple[bytes, bytes], kind: int) -> None:
    target = b"x" if kind == LNK else None
    node = Inode(kind, symlink_target=target, xattrs=((b"a.b", b"1"), xattr, (b"user.z", b"")))
    error = rejects((b"/n", node))
    assert (error.entry, error.path, error.field) == (0, "/n", "xattrs")
    assert xattr[0].decode() in error.reason and "overlay" in error.reason
    # the opt-in carries them
    carried = build((b"/n", node), limits=Limits(allow_overlay_xattrs=True)).inode(b"/n")
    assert carried.xattrs == node.xattrs


@pytest.mark.parametrize("namespace", [b"trusted", b"user"])
@pytest.mark.parametrize("value", [b"y", b"x"])
def test_the_packages_own_opaque_marks_are_taken_on_a_directory(
    value: bytes, namespace: bytes
) -> None:
    mark = (namespace + b".overlay.opaque", value)
    tree = build((b"/d", Inode(DIR, xattrs=(mark,))))
    assert tree.inode(b"/d").xattrs == (mark,)
    for kind in (REG, CHR, FIFO):
        error = rejects((b"/n", Inode(kind, xattrs=(mark,))))
        assert (error.path, error.field) == ("/n", "xattrs")


def test_names_that_only_look_like_overlay_xattrs_are_plain_xattrs() -> None:
    xattrs = ((b"trusted.overlayx", b"1"), (b"user.overlayfs.redirect", b"/y"))
    build((b"/f", Inode(REG, xattrs=xattrs)))
