"""A three-layer container image, stacked and flattened, equals its tars extracted in order.

The three layers are plain tars written here with Python's ``tarfile``:

* base: directories, regular files (inline-sized, large, empty, setuid,
  private), a symlink, hardlinks, a fifo, a directory that a later layer
  replaces by a file and a file that a later layer replaces by a directory;
* middle: ``etc/.wh.motd`` and ``opt/.wh.keep`` delete a file and a whole
  directory, ``usr/share/doc/.wh..wh..opq`` makes a directory opaque (with
  one new file in it, and a redundant ``.wh.README`` that must not undo the
  opacity), one of two hardlinked files is replaced (the link is
  broken), a file becomes a directory, a directory changes mode and owner;
* top: new files (one hardlinked to another), a deleted file added again, a
  retargeted symlink, a directory replaced by a file.

Each layer goes through the public API: :func:`open_layer` ->
``import_objects(ObjectStore(...))`` -> :func:`write_image`.  The images are
mounted with :func:`mount_layers` (top first) and :func:`flatten` (base first)
of the three layer Trees is written as one image and mounted alone with
:func:`mount`.  Both mounted trees must equal the reference: the three tars
extracted in order into a real folder by ``tarfile`` (as root, numeric
owners), with OCI whiteouts applied by this file's own code (a whiteout
removes what lower layers have at its path; an opaque marker empties its
directory of what lower layers put there; an entry replaces what was at its
path, a directory over a directory keeps the lower children).  Compared: every
path, type, content, symlink target, permission bits, uid/gid, mtime, xattrs,
device numbers, and which paths share one inode.

What the stacked mount shows besides (asserted, not skipped): a directory
whose topmost layer held ``.wh.NAME`` whiteouts carries ``user.overlay.opaque=x``
and ``user.overlay.whiteouts`` (libcomposefs writes them next to the
``trusted.overlay.*`` ones the stacking overlay consumes).  The flattened
image has no whiteouts left, so none of them.  Link counts in the stacked
mount are each layer's own (a file whose hardlink partner a later layer
replaced still counts 2); ``flatten`` recounts them, so the flattened mount
shows the extracted tree's counts.
"""

from __future__ import annotations

import errno
import io
import os
import random
import shutil
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_mount import Seen, require_mounts, user_namespace, walk

from composefs_py import (
    ObjectStore,
    Tree,
    flatten,
    mount,
    mount_layers,
    open_layer,
    unmount,
    write_image,
)

# ---------------------------------------------------------------------------
# the three layers
# ---------------------------------------------------------------------------

_T = 1_700_000_000  # a base mtime; every member gets its own


@dataclass(frozen=True)
class Member:
    """One tar member: ``kind`` is dir, reg, sym, lnk (hardlink) or fifo."""

    name: str
    kind: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = _T
    data: bytes = b""
    link: str = ""


def _blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _dir(name: str, mode: int = 0o755, mtime: int = _T, uid: int = 0, gid: int = 0) -> Member:
    return Member(name, "dir", mode, uid, gid, mtime)


def _reg(name: str, data: bytes, mode: int = 0o644, mtime: int = _T, uid: int = 0) -> Member:
    return Member(name, "reg", mode, uid, uid, mtime, data)


def _link(name: str, target: Member) -> Member:
    """A hardlink member; it carries its target's attributes, as tar writers do."""
    return Member(name, "lnk", target.mode, target.uid, target.gid, target.mtime, link=target.name)


_TOOL = _reg("usr/bin/tool", _blob(1, 70_000), mode=0o755, mtime=_T + 10)
_LIBX = _reg("usr/lib/libx.so.1", _blob(3, 9000), mode=0o755, mtime=_T + 14)
_NEWTOOL = _reg("usr/bin/newtool", _blob(6, 20_000), mode=0o755, mtime=_T + 207)

BASE = [
    _dir(".", mtime=_T + 1),
    _dir("etc", mtime=_T + 2),
    _reg("etc/hostname", b"base\n", mtime=_T + 3),
    _reg("etc/motd", b"welcome to the base layer\n", mtime=_T + 4),
    _reg("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n" * 5, mtime=_T + 5),
    _reg("etc/shadow", b"root:*:19000::::::\n", mode=0o600, mtime=_T + 6),
    _reg("etc/empty", b"", mtime=_T + 7),
    _dir("usr", mtime=_T + 8),
    _dir("usr/bin", mtime=_T + 9),
    _TOOL,
    _link("usr/bin/tool-again", _TOOL),
    Member("usr/bin/sh", "sym", 0o777, mtime=_T + 11, link="tool"),
    _reg("usr/bin/su", _blob(2, 3000), mode=0o4755, mtime=_T + 12),
    _dir("usr/lib", mtime=_T + 13),
    _LIBX,
    _link("usr/lib/libx.so", _LIBX),
    _dir("usr/share", mtime=_T + 15),
    _dir("usr/share/doc", mtime=_T + 16),
    _reg("usr/share/doc/README", b"base docs\n", mtime=_T + 17),
    _dir("usr/share/doc/old", mtime=_T + 18),
    _reg("usr/share/doc/old/NEWS", _blob(4, 500), mtime=_T + 19),
    _dir("opt", mtime=_T + 20),
    _dir("opt/keep", mtime=_T + 21),
    _reg("opt/keep/data", b"kept until the middle layer\n", mtime=_T + 22),
    _dir("opt/other", mtime=_T + 23),
    _dir("var", mtime=_T + 24),
    _dir("var/lib", mode=0o700, uid=1000, gid=1000, mtime=_T + 25),
    _reg("var/lib/state", b"state", mode=0o640, uid=1000, mtime=_T + 26),
    Member("var/lib/fifo", "fifo", 0o600, mtime=_T + 27),
    _reg("srv", b"a file, a directory later\n", mtime=_T + 28),
    _dir("data", mtime=_T + 29),
    _dir("data/tree", mtime=_T + 30),
    _reg("data/tree/leaf", b"leaf", mtime=_T + 31),
]

MIDDLE = [
    _dir(".", mtime=_T + 101),
    _dir("etc", mode=0o750, mtime=_T + 102),
    Member("etc/.wh.motd", "reg"),
    _dir("usr", mtime=_T + 103),
    _dir("usr/lib", mtime=_T + 104),
    _reg("usr/lib/libx.so.1", _blob(5, 12_000), mode=0o755, mtime=_T + 105),
    _dir("usr/share", mtime=_T + 106),
    _dir("usr/share/doc", mode=0o775, mtime=_T + 107),
    Member("usr/share/doc/.wh..wh..opq", "reg"),
    Member("usr/share/doc/.wh.README", "reg"),  # redundant in an opaque directory
    _reg("usr/share/doc/NEW", b"docs of the middle layer\n", mtime=_T + 108),
    _dir("opt", mtime=_T + 109),
    Member("opt/.wh.keep", "reg"),
    _dir("var", mtime=_T + 110),
    _dir("var/lib", mode=0o750, uid=1001, gid=1002, mtime=_T + 111),
    _dir("srv", mtime=_T + 112),
    _reg("srv/index.html", b"<html></html>\n", mtime=_T + 113),
]

TOP = [
    _dir(".", mtime=_T + 201),
    _dir("etc", mode=0o750, mtime=_T + 202),
    _reg("etc/motd", b"the top layer's motd\n", mtime=_T + 203),
    _reg("etc/hostname", b"top\n", mtime=_T + 204),
    _dir("usr", mtime=_T + 205),
    _dir("usr/bin", mtime=_T + 206),
    _NEWTOOL,
    _link("usr/bin/newtool-alias", _NEWTOOL),
    Member("usr/bin/sh", "sym", 0o777, mtime=_T + 208, link="newtool"),
    _dir("usr/share", mtime=_T + 209),
    _dir("usr/share/doc", mode=0o775, mtime=_T + 210),
    _reg("usr/share/doc/TOP", b"top docs\n", mtime=_T + 211),
    _dir("home", mtime=_T + 212),
    _dir("home/user", mode=0o700, uid=1000, gid=1000, mtime=_T + 213),
    _reg("home/user/.profile", _blob(7, 100), mode=0o600, uid=1000, mtime=_T + 214),
    _dir("data", mtime=_T + 215),
    _reg("data/tree", b"a directory before\n", mtime=_T + 216),
]

LAYERS = {"base": BASE, "middle": MIDDLE, "top": TOP}  # applied in this order


def write_tar(path: Path, members: Sequence[Member]) -> None:
    types = {
        "dir": tarfile.DIRTYPE,
        "reg": tarfile.REGTYPE,
        "sym": tarfile.SYMTYPE,
        "lnk": tarfile.LNKTYPE,
        "fifo": tarfile.FIFOTYPE,
    }
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name + ("/" if m.kind == "dir" and m.name != "." else ""))
            info.type = types[m.kind]
            info.mode, info.uid, info.gid, info.mtime = m.mode, m.uid, m.gid, m.mtime
            info.linkname = m.link
            info.size = len(m.data) if m.kind == "reg" else 0
            tar.addfile(info, io.BytesIO(m.data) if m.kind == "reg" else None)


# ---------------------------------------------------------------------------
# the reference: tar extraction in order, whiteouts applied here
# ---------------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def extract_in_order(tars: Sequence[Path], root: Path) -> None:
    """Extract ``tars`` (base first) into ``root`` with OCI whiteout semantics."""
    stamps: dict[str, tarfile.TarInfo] = {}  # the last member at each path
    for tar_path in tars:
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            # Whiteouts first: they apply to the lower layers only.
            for m in members:
                parent, _, base = m.name.rstrip("/").rpartition("/")
                if base == ".wh..wh..opq":
                    for child in (root / parent).iterdir():
                        _remove(child)
                elif base.startswith(".wh."):
                    _remove(root / parent / base[4:])
            for m in members:
                if m.name.rstrip("/").rpartition("/")[2].startswith(".wh."):
                    continue
                dest = root / m.name
                if not (m.isdir() and dest.is_dir() and not dest.is_symlink()):
                    _remove(dest)  # a new entry is a new inode (hardlinks to the old stay)
                tar.extract(m, root, numeric_owner=True, filter="fully_trusted")
                stamps[os.path.normpath(m.name)] = m
    # Later layers changed directories' contents, and tarfile does not set a
    # symlink's mtime: restore both as tar does, the deepest first.
    for name in sorted(stamps, key=lambda n: -n.count("/")):
        path = root / name
        if (stamps[name].isdir() or stamps[name].issym()) and os.path.lexists(path):
            os.utime(path, ns=(stamps[name].mtime * 10**9,) * 2, follow_symlinks=False)


def stacked_markers(layers: Sequence[Sequence[Member]]) -> set[bytes]:
    """Directories whose topmost layer (of ``layers``, base first) has ``.wh.NAME`` in them."""
    topmost: dict[str, int] = {}
    whiteouts: dict[int, set[str]] = {}
    for index, members in enumerate(layers):
        for m in members:
            parent, _, base = m.name.rpartition("/")
            if m.kind == "dir":
                topmost[os.path.normpath(m.name)] = index
            if base.startswith(".wh.") and base != ".wh..wh..opq":
                whiteouts.setdefault(index, set()).add(os.path.normpath(parent or "."))
    return {
        b"/" if d == "." else b"/" + d.encode()
        for d, index in topmost.items()
        if d in whiteouts.get(index, set())
    }


def expected_stacked(stack: Stack) -> dict[bytes, Seen]:
    """The reference, plus the whiteout bookkeeping a stacked mount shows."""
    expected = walk(stack.reference)
    for path in stacked_markers(list(LAYERS.values())):
        expected[path].xattrs.update({b"user.overlay.opaque": b"x", b"user.overlay.whiteouts": b""})
    return expected


def identity_groups(root: Path, seen: dict[bytes, Seen]) -> set[frozenset[bytes]]:
    """Sets of (two or more) non-directory paths that are one inode (st_dev, st_ino)."""
    groups: dict[tuple[int, int], set[bytes]] = {}
    for path, entry in seen.items():
        if entry.kind != "dir":
            st = os.lstat(os.fsencode(root) + (b"" if path == b"/" else path))
            groups.setdefault((st.st_dev, st.st_ino), set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def comparable(seen: dict[bytes, Seen]) -> dict[bytes, Seen]:
    """Without inode numbers, link counts (a broken hardlink keeps its image's
    count) and directory sizes (file system specific)."""
    return {p: Seen(**{**s.__dict__, "ino": 0, "nlink": 0, "size": 0}) for p, s in seen.items()}


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    tars: list[Path]  # base first
    images: list[Path]  # top first, as mount_layers takes them
    stores: list[Path]  # top first
    trees: list[Tree]  # base first, as flatten takes them
    reference: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    tmp = tmp_path_factory.mktemp("stack")
    tars, images, stores, trees = [], [], [], []
    for name, members in LAYERS.items():
        tar = tmp / f"{name}.tar"
        write_tar(tar, members)
        store = tmp / f"objects-{name}"
        tree = open_layer(tar).import_objects(ObjectStore(store))
        image = tmp / f"{name}.cfs"
        write_image(tree, image)
        tars.append(tar)
        trees.append(tree)
        images.insert(0, image)
        stores.insert(0, store)
    reference = tmp / "reference"
    reference.mkdir()
    if os.geteuid() == 0:  # owners and the fifo need root; the mount tests skip otherwise
        extract_in_order(tars, reference)
    return Stack(tars, images, stores, trees, reference)


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "mnt"
    point.mkdir()
    yield point


# ---------------------------------------------------------------------------
# the proof
# ---------------------------------------------------------------------------


def test_reference_extraction_applied_the_whiteouts(stack: Stack) -> None:
    require_mounts()
    ref = stack.reference
    assert (ref / "etc" / "motd").read_bytes() == b"the top layer's motd\n"
    assert not (ref / "opt" / "keep").exists()
    assert sorted(os.listdir(ref / "usr" / "share" / "doc")) == ["NEW", "TOP"]
    assert (ref / "srv").is_dir() and (ref / "data" / "tree").is_file()
    assert os.lstat(ref / "usr/lib/libx.so").st_ino != os.lstat(ref / "usr/lib/libx.so.1").st_ino
    assert os.lstat(ref / "usr/bin/tool").st_ino == os.lstat(ref / "usr/bin/tool-again").st_ino


@pytest.mark.parametrize("stores", ["one store per layer", "one shared list"])
def test_stacked_layers_equal_the_tars_extracted_in_order(
    stack: Stack, mnt: Path, stores: str
) -> None:
    require_mounts(xwhiteouts=True)
    objects = stack.stores if stores == "one store per layer" else list(reversed(stack.stores))
    mount_layers(stack.images, mnt, objects=objects)
    try:
        seen = walk(mnt)
        groups = identity_groups(mnt, seen)
    finally:
        unmount(mnt)
    expected = expected_stacked(stack)
    assert comparable(seen) == comparable(expected)
    assert groups == identity_groups(stack.reference, expected)
    assert groups == {
        frozenset({b"/usr/bin/tool", b"/usr/bin/tool-again"}),
        frozenset({b"/usr/bin/newtool", b"/usr/bin/newtool-alias"}),
    }
    # Link counts are the layer's own: the base still counts the replaced partner.
    assert seen[b"/usr/lib/libx.so"].nlink == 2
    assert expected[b"/usr/lib/libx.so"].nlink == 1


def test_flattened_image_mounted_alone_equals_the_tars_extracted_in_order(
    stack: Stack, mnt: Path, tmp_path: Path
) -> None:
    require_mounts()
    flat = tmp_path / "flat.cfs"
    write_image(flatten(stack.trees), flat)
    mount(flat, mnt, objects=stack.stores)
    try:
        seen = walk(mnt)
        groups = identity_groups(mnt, seen)
    finally:
        unmount(mnt)
    expected = walk(stack.reference)
    assert comparable(seen) == comparable(expected)
    assert groups == identity_groups(stack.reference, expected)
    # flatten recounts links: a link whose partner was replaced is alone again.
    links = {p: s.nlink for p, s in seen.items() if s.kind != "dir"}
    assert links == {p: s.nlink for p, s in expected.items() if s.kind != "dir"}
    assert links[b"/usr/lib/libx.so"] == 1 and links[b"/usr/bin/tool"] == 2


def test_writes_to_a_stack_with_upperdir_land_in_upperdir(
    stack: Stack, mnt: Path, tmp_path: Path
) -> None:
    require_mounts(xwhiteouts=True)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    images_before = [image.read_bytes() for image in stack.images]
    mount_layers(stack.images, mnt, objects=stack.stores, upperdir=upper, workdir=work)
    try:
        (mnt / "etc" / "new").write_bytes(b"written through the stack")
        (mnt / "usr" / "share" / "doc" / "NEW").write_bytes(b"changed")
        os.unlink(mnt / "etc" / "passwd")  # from the base layer
        shutil.rmtree(mnt / "srv")  # from the middle layer
        assert not (mnt / "etc" / "passwd").exists()
        assert (mnt / "etc" / "shadow").read_bytes() == b"root:*:19000::::::\n"
    finally:
        unmount(mnt)
    assert (upper / "etc" / "new").read_bytes() == b"written through the stack"
    assert (upper / "usr" / "share" / "doc" / "NEW").read_bytes() == b"changed"
    for gone in ("etc/passwd", "srv"):  # overlay whiteouts: char 0/0
        st = os.lstat(upper / gone)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, gone
    assert [image.read_bytes() for image in stack.images] == images_before
    # Mounted again without the upper layer: the layers are as they were.
    mount_layers(stack.images, mnt, objects=stack.stores)
    try:
        assert (mnt / "etc" / "passwd").read_bytes() == b"root:x:0:0:root:/root:/bin/sh\n" * 5
        assert not (mnt / "etc" / "new").exists()
        with pytest.raises(OSError) as info:
            (mnt / "etc" / "new").write_bytes(b"x")
        assert info.value.errno == errno.EROFS
    finally:
        unmount(mnt)


def test_an_idmapped_stack_shows_every_owner_shifted(stack: Stack, mnt: Path) -> None:
    require_mounts(xwhiteouts=True)
    with user_namespace(uid_base=100000, gid_base=200000) as userns:
        mount_layers(stack.images, mnt, objects=stack.stores, idmap_userns_fd=userns)
        try:
            seen = walk(mnt)
        finally:
            unmount(mnt)
    shifted = {
        path: Seen(**{**entry.__dict__, "uid": entry.uid + 100000, "gid": entry.gid + 200000})
        for path, entry in expected_stacked(stack).items()
    }
    assert comparable(seen) == comparable(shifted)
    assert seen[b"/home/user"].uid == 101000
