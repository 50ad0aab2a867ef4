"""mkcomposefs's build flags applied to a Tree (composefs_py._buildflags).

The image bytes against the real mkcomposefs are checked in test_cli.py
(``test_build_flags_as_mkcomposefs_builds_a_directory``); here: what each
flag keeps, hardlinks to devices, and the cost of hostile shapes.
"""

from __future__ import annotations

import stat

import pytest
from cost import growth

from composefs_py._buildflags import BuildFlags, apply_build_flags
from composefs_py.model import Hardlink, Inode, Tree, TreeBuilder

DIR = stat.S_IFDIR | 0o755
FILE = stat.S_IFREG | 0o644
CHAR = stat.S_IFCHR | 0o600
MARKERS = ((b"trusted.overlay.opaque", b"x"), (b"user.overlay.opaque", b"x"))


def tree_of(nodes: dict[bytes, Inode | Hardlink]) -> Tree:
    builder = TreeBuilder()
    for path, node in nodes.items():
        builder.add(path, node)
    return builder.build()


def sample() -> Tree:
    return tree_of(
        {
            b"/": Inode(DIR, mtime=5, mtime_nsec=6),
            b"/a": Inode(DIR, xattrs=tuple(sorted((*MARKERS, (b"user.k", b"v"))))),
            b"/a/f": Inode(
                FILE, nlink=2, mtime=7, xattrs=((b"security.x", b"1"), (b"user.y", b"2"))
            ),
            b"/a/g": Hardlink(b"/a/f"),
            b"/a/wh": Inode(CHAR),  # a whiteout
            b"/b": Hardlink(b"/z"),  # a link met before its device
            b"/z": Inode(CHAR, nlink=2, rdev=0x103),
        }
    )


def test_no_flag_returns_the_tree_itself() -> None:
    tree = sample()
    assert apply_build_flags(tree, BuildFlags()) is tree


def test_use_epoch_zeroes_every_time_and_nothing_else() -> None:
    out = apply_build_flags(sample(), BuildFlags(use_epoch=True))
    assert out.paths == sample().paths
    for path in out.paths:
        before, after = sample().inode(path), out.inode(path)
        assert (after.mtime, after.mtime_nsec) == (0, 0)
        assert after.xattrs == before.xattrs and after.nlink == before.nlink


def test_xattr_flags() -> None:
    skipped = apply_build_flags(sample(), BuildFlags(skip_xattrs=True))
    assert all(not skipped.inode(p).xattrs for p in skipped.paths)
    user = apply_build_flags(sample(), BuildFlags(user_xattrs=True))
    assert user.inode(b"/a/f").xattrs == ((b"user.y", b"2"),)
    assert user.inode(b"/a").xattrs == ((b"user.k", b"v"), (b"user.overlay.opaque", b"x"))
    with pytest.raises(ValueError, match="exclude each other"):
        BuildFlags(skip_xattrs=True, user_xattrs=True)


def test_skip_devices_drops_devices_their_hardlinks_and_whiteout_markers() -> None:
    out = apply_build_flags(sample(), BuildFlags(skip_devices=True))
    assert out.paths == (b"/", b"/a", b"/a/f", b"/a/g")
    assert out.inode(b"/a").xattrs == ((b"user.k", b"v"),)
    assert out.inode(b"/a/g") == out.inode(b"/a/f")
    assert out.inode(b"/a/f").nlink == 2


def _hostile(n: int) -> Tree:
    """n entries: a deep chain of directories with xattrs, whiteouts and
    devices beside them, and as many hardlinks to one device as to one file."""
    nodes: dict[bytes, Inode | Hardlink] = {b"/": Inode(DIR), b"/dev": Inode(CHAR, rdev=1)}
    nodes[b"/file"] = Inode(FILE)
    path = b"/c0"
    nodes[path] = Inode(DIR)
    for i in range(n // 8):
        if len(path) > 3000:  # a new chain, near the path length limit
            path = b"/c%d" % i
            nodes[path] = Inode(DIR)
        path += b"/d"
        nodes[path] = Inode(DIR, mtime=i, xattrs=tuple(sorted((*MARKERS, (b"user.i", b"%d" % i)))))
        nodes[path + b"/wh"] = Inode(CHAR)
    for i in range(n // 4):
        nodes[b"/l%d" % i] = Hardlink(b"/dev")
        nodes[b"/m%d" % i] = Hardlink(b"/file")
    return tree_of(nodes)


def test_cost_is_linear_on_hostile_shapes() -> None:
    flags = BuildFlags(use_epoch=True, user_xattrs=True, skip_devices=True)
    small, large, ratio = growth(lambda tree: apply_build_flags(tree, flags), _hostile, 8_000)
    assert ratio < 8.0, (small, large, ratio)  # 4 times the entries
