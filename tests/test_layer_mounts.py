"""The mission's proof: real layers, built and mounted, equal the tar they came from.

For each layer in ``../shared/testdata`` (zstd:chunked, eStargz, eStargz with
256 KiB chunks, and ``small.tar`` itself): ``open_layer`` ->
``import_objects`` into an :class:`ObjectStore` -> ``write_image`` -> kernel
mount -> walk the mounted tree and compare it with ``small.tar`` as Python's
``tarfile`` reads it: every path, file type, content bytes, permission bits,
uid/gid, xattrs, symlink target, hardlink identity (same ``st_ino``), device
numbers and mtime.  Then the layer is stacked over a lower layer to prove its
whiteouts hide what they should, and :func:`flatten_layers` must agree with
the kernel.

What the formats force (copied into the README as is): see
:data:`FORMAT_DIFFERENCES`.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_mount import Seen, leftover_mounts, mounted, require_mounts, walk

from composefs_py.model import Inode, Tree, TreeBuilder
from composefs_py.mount import flatten_layers

#: Differences between the source tar and the mounted image that EROFS, the
#: overlay or the layer format force.  Each is asserted below, not skipped.
FORMAT_DIFFERENCES: tuple[str, ...] = (
    "eStargz: mtimes are rounded to the nearest whole second (its builder rewrites the "
    "tar with Go's archive/tar, which rounds, and its TOC has seconds only); "
    "zstd:chunked and tar keep nanoseconds.",
    "atime and ctime are not kept: EROFS stores one timestamp, so a mounted file "
    "shows its mtime as atime and ctime too (tar's PAX atime/ctime are dropped).",
    "User and group names (tar uname/gname) are not kept, only numeric uid/gid.",
    "The root directory has no entry in a layer: it is 0755, root:root, mtime 0 "
    "(what containers/storage synthesizes), as is any missing parent directory.",
    "Directory sizes, link counts and st_blocks are EROFS's own, not the tar's.",
    "Whiteouts: `.wh.NAME` becomes an overlay whiteout NAME (char 0/0 in the image's "
    "tree). libcomposefs stores it escaped, so mounted alone the layer shows NAME as an "
    "empty regular file with xattrs trusted.overlay.whiteout and user.overlay.whiteout, "
    "and its directory gains trusted.overlay.opaque=x, trusted.overlay.whiteouts, "
    "user.overlay.opaque=x and user.overlay.whiteouts. Stacked over a lower layer "
    "(mount_layers) NAME and what it covers disappear.",
    "`.wh..wh..opq` becomes trusted.overlay.opaque=y on its directory (visible when the "
    "layer is mounted alone); stacked, it hides everything the lower layers have there.",
)

TESTDATA = Path(__file__).resolve().parent / "data" / "layers"
LAYERS = {
    "zstd:chunked": "small.zstd-chunked.blob",
    "estargz": "small.estargz.blob",
    "estargz-chunk256k": "small.estargz-chunk256k.blob",
    "tar": "small.tar",
}
SECONDS_ONLY = {"estargz", "estargz-chunk256k"}
XWHITEOUT = {b"trusted.overlay.whiteout": b"", b"user.overlay.whiteout": b""}
WHITEOUT_DIR_MARKERS = {
    b"trusted.overlay.opaque": b"x",
    b"trusted.overlay.whiteouts": b"",
    b"user.overlay.opaque": b"x",
    b"user.overlay.whiteouts": b"",
}
_NSEC = 1_000_000_000


def _testdata(name: str) -> Path:
    path = TESTDATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared test layers are not checked out)")
    return path


# ---------------------------------------------------------------------------
# what small.tar says
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    view: dict[bytes, Seen]
    whiteouts: frozenset[bytes]  # paths that must be whiteouts (xwhiteouts alone)
    hardlinks: tuple[tuple[bytes, bytes], ...]  # (link, target): same inode


def _mtime_ns(member: tarfile.TarInfo, seconds_only: bool) -> int:
    """The tar's mtime in ns; rounded to the nearest second (half up) if ``seconds_only``."""
    text = member.pax_headers.get("mtime")
    if text is None:
        ns = int(member.mtime) * _NSEC
    else:
        sec, _, frac = text.partition(".")
        ns = int(sec) * _NSEC + int((frac + "000000000")[:9])
    return (ns + _NSEC // 2) // _NSEC * _NSEC if seconds_only else ns


def _xattrs(member: tarfile.TarInfo) -> dict[bytes, bytes]:
    prefix = "SCHILY.xattr."
    return {
        name[len(prefix) :].encode(): value.encode("utf-8", "surrogateescape")
        for name, value in member.pax_headers.items()
        if name.startswith(prefix)
    }


def expected_from_tar(tar_path: Path, *, seconds_only: bool) -> Expected:
    """The tree a mount of this layer must show, from the tar alone."""
    view: dict[bytes, Seen] = {
        b"/": Seen(kind="dir", perm=0o755, uid=0, gid=0, mtime_ns=0),
    }
    whiteouts: set[bytes] = set()
    opaque: set[bytes] = set()
    hardlinks: list[tuple[bytes, bytes]] = []
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
        contents = {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in members
            if m.isreg()
        }
    by_name = {m.name.rstrip("/"): m for m in members}
    for member in members:
        name = member.name.rstrip("/")
        path = b"/" + name.encode("utf-8", "surrogateescape")
        parent, _, base = path.rpartition(b"/")
        parent = parent or b"/"
        if base == b".wh..wh..opq":
            opaque.add(parent)
            continue
        if base.startswith(b".wh."):
            whiteouts.add(parent + (b"/" if parent != b"/" else b"") + base[4:])
            continue
        source = member
        if member.islnk():
            source = by_name[member.linkname.rstrip("/")]
            hardlinks.append((path, b"/" + source.name.encode()))
        kind = {
            tarfile.REGTYPE: "reg",
            tarfile.AREGTYPE: "reg",
            tarfile.DIRTYPE: "dir",
            tarfile.SYMTYPE: "symlink",
            tarfile.CHRTYPE: "char",
            tarfile.BLKTYPE: "block",
            tarfile.FIFOTYPE: "fifo",
        }[source.type]
        data = None
        if kind == "reg":
            data = contents[source.name]
        elif kind == "symlink":
            data = source.linkname.encode("utf-8", "surrogateescape")
        view[path] = Seen(
            kind=kind,
            perm=source.mode & 0o7777,
            uid=source.uid,
            gid=source.gid,
            mtime_ns=_mtime_ns(source, seconds_only),
            size=len(data) if kind == "reg" and data is not None else 0,
            rdev=(source.devmajor, source.devminor) if kind in ("char", "block") else (0, 0),
            data=data,
            xattrs=_xattrs(source),
        )
    for path in opaque:
        view[path].xattrs[b"trusted.overlay.opaque"] = b"y"
    return Expected(view, frozenset(whiteouts), tuple(hardlinks))


# ---------------------------------------------------------------------------
# build and mount each layer
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    name: str
    image: Path
    objects: Path
    tree: Tree


@pytest.fixture(scope="module", params=sorted(LAYERS))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    from composefs_py.layers import open_layer
    from composefs_py.objects import ObjectStore
    from composefs_py.writer import write_image

    blob = _testdata(LAYERS[request.param])
    tmp = tmp_path_factory.mktemp(request.param.replace(":", "-"))
    objects = tmp / "objects"
    tree = open_layer(blob).import_objects(ObjectStore(objects))
    image = tmp / "layer.cfs"
    write_image(tree, image)
    return Built(request.param, image, objects, tree)


@pytest.fixture
def mnt(tmp_path: Path) -> Path:
    point = tmp_path / "mnt"
    point.mkdir()
    return point


def test_mounted_layer_equals_the_tar(built: Built, mnt: Path) -> None:
    require_mounts()
    expected = expected_from_tar(_testdata("small.tar"), seconds_only=built.name in SECONDS_ONLY)
    try:
        with mounted([built.image], mnt, built.objects):
            seen = walk(mnt)
    finally:
        assert leftover_mounts(mnt) == []

    # Whiteouts: escaped by libcomposefs, shown as xwhiteouts; never as .wh. files.
    for path in expected.whiteouts:
        entry = seen.pop(path)
        assert (entry.kind, entry.size, entry.data) == ("reg", 0, b""), path
        assert entry.xattrs == XWHITEOUT, path
        parent = path.rpartition(b"/")[0] or b"/"
        for marker, value in WHITEOUT_DIR_MARKERS.items():
            assert seen[parent].xattrs.pop(marker) == value, (parent, marker)
    assert not [p for p in seen if b"/.wh." in p]

    # Hardlinks: one inode.
    for link, target in expected.hardlinks:
        assert seen[link].ino == seen[target].ino, (link, target)
        assert seen[target].nlink == 2

    # Everything else, field by field (inode numbers and link counts aside).
    assert sorted(seen) == sorted(expected.view)
    for path, want in expected.view.items():
        got = seen[path]
        want_cmp = Seen(**{**want.__dict__, "ino": 0, "nlink": 0})
        if want.kind == "dir":
            got_cmp = Seen(**{**got.__dict__, "ino": 0, "nlink": 0, "size": 0})
        else:
            got_cmp = Seen(**{**got.__dict__, "ino": 0, "nlink": 0})
        assert got_cmp == want_cmp, path


def test_atime_and_ctime_are_the_mtime(built: Built, mnt: Path) -> None:
    require_mounts()
    with mounted([built.image], mnt, built.objects):
        st = os.lstat(mnt / "usr" / "bin" / "ping")
    assert st.st_atime_ns == st.st_ctime_ns == st.st_mtime_ns


def test_layer_tree_holds_whiteouts_as_char_0_0(built: Built) -> None:
    for path in (b"/etc/motd", b"/usr/lib/python3.11/distutils"):
        inode = built.tree.inode(path)
        assert stat.S_ISCHR(inode.mode) and inode.rdev == 0, path
    assert (b"trusted.overlay.opaque", b"y") in built.tree.inode(b"/var/cache/apt").xattrs
    assert not [p for p in built.tree.paths if b"/.wh." in p]


# ---------------------------------------------------------------------------
# stacked over a lower layer: the whiteouts hide
# ---------------------------------------------------------------------------

LOWER_FILES = {
    b"/etc/motd": b"lower motd\n",  # .wh.motd hides it
    b"/etc/hostname": b"lower\n",  # stays
    b"/usr/lib/python3.11/distutils/__init__.py": b"# old\n",  # .wh.distutils hides it
    b"/var/cache/apt/pkgcache.bin": b"stale\n",  # .wh..wh..opq hides it
    b"/var/cache/apt/archives/old.deb": b"old deb\n",  # hidden too (opaque)
    b"/usr/bin/unzstd": b"lower unzstd\n",  # the layer's file wins
}
HIDDEN = (
    b"/etc/motd",
    b"/usr/lib/python3.11/distutils",
    b"/var/cache/apt/pkgcache.bin",
    b"/var/cache/apt/archives/old.deb",
)


def _lower_tree() -> Tree:
    builder = TreeBuilder(synthesize_parents=True)
    for path, content in LOWER_FILES.items():
        builder.add(
            path,
            Inode(mode=stat.S_IFREG | 0o644, size=len(content), content=content, mtime=42),
        )
    return builder.build()


@pytest.fixture(scope="module")
def lower_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from composefs_py.writer import write_image

    image = tmp_path_factory.mktemp("lower") / "lower.cfs"
    write_image(_lower_tree(), image)
    return image


def test_stacked_layer_whiteouts_hide_the_lower_layer(
    built: Built, lower_image: Path, mnt: Path
) -> None:
    require_mounts(xwhiteouts=True)
    with mounted([built.image, lower_image], mnt, built.objects):
        seen = walk(mnt)
    for path in HIDDEN:
        assert path not in seen, path
    assert seen[b"/etc/hostname"].data == b"lower\n"
    assert seen[b"/var/cache/apt/archives/partial"].kind == "dir"
    assert len(seen[b"/usr/bin/unzstd"].data or b"") == 1_276_544
    assert seen[b"/usr/bin/zstd"].ino == seen[b"/usr/bin/unzstd"].ino
    assert not [p for p, s in seen.items() if s.xattrs.get(b"trusted.overlay.whiteout") == b""]


def test_flatten_layers_agrees_with_the_stacked_mount(
    built: Built, lower_image: Path, mnt: Path, tmp_path: Path
) -> None:
    require_mounts(xwhiteouts=True)
    from composefs_py.writer import write_image

    flat_image = tmp_path / "flat.cfs"
    write_image(flatten_layers([built.tree, _lower_tree()]), flat_image)
    with mounted([flat_image], mnt, built.objects):
        from_flat = walk(mnt)
    with mounted([built.image, lower_image], mnt, built.objects):
        from_stack = walk(mnt)
    for seen in (from_flat, from_stack):
        for entry in seen.values():
            # Whiteout bookkeeping the stacking overlay passes up from the top layer.
            entry.xattrs.pop(b"user.overlay.opaque", None)
            entry.xattrs.pop(b"user.overlay.whiteouts", None)
    strip = {"ino": 0, "nlink": 0, "size": 0}
    assert {p: Seen(**{**s.__dict__, **strip}) for p, s in from_flat.items()} == {
        p: Seen(**{**s.__dict__, **strip}) for p, s in from_stack.items()
    }
