"""composefs_py._erofs.check_image: the structural check read_image runs first.

It must accept every image libcomposefs writes (upstream's assets, the real
layers, Hypothesis trees, both format versions) and reject, naming the field,
each way an image can make libcomposefs 1.0.8's loader read out of bounds,
use freed memory or recurse without end.  Hostile images are made here by
patching single fields of a real image; the sanitized replays of the loader
bugs themselves are in tests/test_fuzz_crashes.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import stat
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from composefs_py import strategies
from composefs_py._erofs import check_image
from composefs_py.dumpfile import parse_dumpfile
from composefs_py.errors import ValidationError
from composefs_py.layers import open_layer
from composefs_py.limits import Limits
from composefs_py.model import ROOT, Hardlink, Inode, Tree, TreeBuilder, name_of, parent_of
from composefs_py.writer import read_image, write_image

REPO = Path(__file__).resolve().parent.parent
LAYERS = REPO / "tests" / "data" / "layers"
ROOT_WHITEOUTS = {f"{i:02x}".encode() for i in range(256)}
DIGEST = "0123456789abcdef" * 4

#: Every structure the loader reads: shared xattrs (user.shared on three
#: inodes), inline and out-of-line content and symlink targets, a chunk-based
#: file with a payload, a hardlink, devices, a fifo, a whiteout, a directory
#: of several blocks.
BASE_DUMP = (
    "\n".join(
        sorted(
            [
                "/ 4096 40755 4 0 0 0 1700000000.0 - - - user.a=1",
                "/d 4096 40755 2 0 0 0 0.0 - - -",
                "/d/x 3 100644 1 0 0 0 0.0 - abc - user.shared=same",
                "/d/y 3 100644 1 0 0 0 0.0 - xyz - user.shared=same",
                f"/f 10 100644 1 0 0 0 0.0 ab/{DIGEST[2:]} - {DIGEST} user.shared=same",
                "/h 3 @100644 1 0 0 0 0.0 /d/x - -",
                "/i 5 100644 1 0 0 0 0.0 - hello - user.v=" + "v" * 40,
                "/l 6 120777 1 0 0 0 0.0 target - -",
                "/long 4000 120777 1 0 0 0 0.0 " + "s" * 4000 + " - - user.pad=" + "p" * 200,
                "/w 0 20000 1 0 0 0 0.0 - - -",
                "/c 0 20644 1 0 0 0 0.0 - - -",
                "/p 0 10644 1 0 0 0 0.0 - - -",
                "/many 4096 40755 2 0 0 0 0.0 - - -",
            ]
            + [
                f"/many/entry-{i:04d}-with-a-long-name 0 100644 1 0 0 0 0.0 - - -"
                for i in range(150)
            ]
        )
    )
    + "\n"
)


def _write(tree: Tree, version: int) -> bytes:
    fd = os.memfd_create("cfspy-check")
    try:
        write_image(tree, fd, backend="native", min_version=0, max_version=version)
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


def _entries(tree: Tree) -> int:
    """Directory entries an image of ``tree`` holds (libcomposefs adds 00..ff)."""
    top = {name_of(p) for p in tree.paths if p != ROOT and parent_of(p) == ROOT}
    return len(tree) - 1 + len(ROOT_WHITEOUTS - top)


# ---------------------------------------------------------------------------
# what libcomposefs writes is accepted
# ---------------------------------------------------------------------------


def _asset_names() -> list[str]:
    src = REPO / ".deps" / "src" / "composefs" / "tests" / "assets"
    if not src.is_dir():
        return []
    return sorted(
        p.name
        for p in src.iterdir()
        if not p.name.startswith("should-fail") and p.name.endswith((".dump", ".dump.gz"))
    )


def _dump_entries(text: bytes) -> int:
    """Directory entries an image of this dumpfile holds (libcomposefs adds 00..ff)."""
    paths = [line.split(b" ", 1)[0] for line in text.split(b"\n") if line.strip()]
    top = {p[1:] for p in paths if p.count(b"/") == 1 and p != b"/"}
    return len(paths) - 1 + len(ROOT_WHITEOUTS - top)


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("name", _asset_names())
def test_every_upstream_asset_image_is_accepted(
    composefs_src: Path, run_mkcomposefs: Callable[..., bytes], name: str, version: int
) -> None:
    # mkcomposefs writes what the native backend writes (test_upstream_assets
    # proves it), and much faster for the 100k-entry assets.
    raw = (composefs_src / "tests" / "assets" / name).read_bytes()
    text = gzip.decompress(raw) if name.endswith(".gz") else raw
    image = run_mkcomposefs(text, f"--min-version={version}", f"--max-version={version}")
    summary = check_image(image)
    assert summary.version == version
    assert summary.entries == _dump_entries(text)


@pytest.mark.parametrize("blob", sorted(LAYERS.glob("*.blob")), ids=lambda p: p.name)
@pytest.mark.parametrize("version", [0, 1])
def test_images_of_the_real_layers_are_accepted(blob: Path, version: int) -> None:
    tree = open_layer(blob).tree()
    summary = check_image(_write(tree, version))
    assert summary.entries == _entries(tree)


@settings(max_examples=60, deadline=None)
@given(tree=strategies.trees(max_entries=30), version=st.integers(0, 1))
def test_images_of_any_tree_are_accepted(tree: Tree, version: int) -> None:
    summary = check_image(_write(tree, version))
    assert summary.entries == _entries(tree)
    dirs = sum(1 for _, node in tree if isinstance(node, Inode) and node.is_dir)
    assert summary.directories == dirs
    # Every path as the Tree keys it, and the root's whiteouts libcomposefs adds.
    paths = sum(len(path) for path in tree.paths if path != ROOT)
    assert summary.path_bytes == paths + 3 * (summary.entries - len(tree) + 1)


def test_base_image_is_accepted_and_read() -> None:
    image = _base_image()
    summary = check_image(image)
    assert summary.directories == 3
    assert summary.depth == 1
    assert read_image(image).inode(b"/long").symlink_target == b"s" * 4000


def test_a_deep_tree_is_accepted_up_to_max_depth() -> None:
    builder = TreeBuilder()
    builder.add(ROOT, Inode(mode=stat.S_IFDIR | 0o755))
    path = b""
    for _ in range(12):
        path += b"/d"
        builder.add(path, Inode(mode=stat.S_IFDIR | 0o755))
    image = _write(builder.build(), 1)
    assert check_image(image, max_depth=12).depth == 12
    with pytest.raises(ValidationError) as err:
        check_image(image, max_depth=11)
    assert err.value.field == "depth"
    assert err.value.path == "/d" * 12


# ---------------------------------------------------------------------------
# hostile images: one field patched in a real image
# ---------------------------------------------------------------------------

_SUPER = 1024
_META = _SUPER + 40
_XATTR = _SUPER + 44
_ROOT_NID = _SUPER + 14


class Image:
    """A writable image and where its parts are (parsed independently of _erofs)."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        (meta,) = struct.unpack_from("<I", data, _META)
        (xattr,) = struct.unpack_from("<I", data, _XATTR)
        self.meta = meta * 4096
        self.xattr = xattr * 4096
        (self.root,) = struct.unpack_from("<H", data, _ROOT_NID)

    def inode(self, nid: int) -> tuple[int, int, int, int]:
        """(offset, inode size, xattr area size, data size) of ``nid``."""
        off = self.meta + nid * 32
        i_format, icount = struct.unpack_from("<HH", self.data, off)
        extended = i_format & 1
        isize = 64 if extended else 32
        (size,) = struct.unpack_from("<Q" if extended else "<I", self.data, off + 8)
        return off, isize, 0 if icount == 0 else 12 + (icount - 1) * 4, size

    def blocks(self, nid: int) -> list[tuple[int, int]]:
        """(offset, size) of each block of directory ``nid``."""
        off, isize, xsize, size = self.inode(nid)
        i_format, _, _, _, _, _, blkaddr = struct.unpack_from("<HHHHIII", self.data, off)
        tail = size % 4096 if i_format >> 1 == 2 else 0
        oob = size - tail
        out = [(blkaddr * 4096 + b, min(4096, oob - b)) for b in range(0, oob, 4096)]
        return out + ([(off + isize + xsize, tail)] if tail else [])

    def dirents(self, nid: int) -> dict[bytes, tuple[int, int]]:
        """name -> (offset of its dirent, nid) in directory ``nid``."""
        out = {}
        for block, size in self.blocks(nid):
            (table,) = struct.unpack_from("<H", self.data, block + 8)
            raw = [struct.unpack_from("<QH", self.data, block + i) for i in range(0, table, 12)]
            for i, (child, nameoff) in enumerate(raw):
                end = raw[i + 1][1] if i + 1 < len(raw) else size
                name = bytes(self.data[block + nameoff : block + end]).split(b"\0")[0]
                out[name] = (block + 12 * i, int(child))
        return out

    def nid(self, path: bytes) -> int:
        nid = int(self.root)
        for part in filter(None, path.split(b"/")):
            nid = self.dirents(nid)[part][1]
        return nid

    def put(self, fmt: str, offset: int, value: int) -> None:
        struct.pack_into(fmt, self.data, offset, value)


_BASE: list[bytes] = []


def _base_image() -> bytes:
    if not _BASE:
        _BASE.append(_write(parse_dumpfile(BASE_DUMP), 1))
    return _BASE[0]


def _inode_of(img: Image, path: bytes) -> int:
    return img.inode(img.nid(path))[0]


def _first_shared_index_at(img: Image, path: bytes) -> int:
    off, isize, xsize, _ = img.inode(img.nid(path))
    assert xsize and img.data[off + isize + 4] >= 1, "a shared xattr"
    return off + isize + 12


def _first_inline_xattr_at(img: Image, path: bytes) -> int:
    off, isize, _xsize, _ = img.inode(img.nid(path))
    shared = img.data[off + isize + 4]
    return off + isize + 12 + 4 * shared


def _dirent(img: Image, path: bytes) -> int:
    return img.dirents(img.nid(parent_of(path)))[name_of(path)][0]


Patch = Callable[[Image], None]

#: name -> (patch, the field ValidationError names).  The comments name the
#: libcomposefs 1.0.8 loader bug each check keeps away.
HOSTILE: dict[str, tuple[Patch, str]] = {
    "header magic": (lambda i: i.put("<I", 0, 0x1234), "header.magic"),
    "header version": (lambda i: i.put("<I", 4, 2), "header.version"),
    "composefs version": (lambda i: i.put("<I", 12, 7), "header.composefs_version"),
    "erofs magic": (lambda i: i.put("<I", _SUPER, 0), "superblock.magic"),
    "block size": (lambda i: i.put("<B", _SUPER + 12, 13), "superblock.blkszbits"),
    "compression": (lambda i: i.put("<I", _SUPER + 80, 0x3), "superblock.feature_incompat"),
    "unknown compat feature": (
        lambda i: i.put("<I", _SUPER + 8, 0x80),
        "superblock.feature_compat",
    ),
    # meta_blkaddr * 4096 is computed in 32 bits: 2^24 blocks wrap to 0.
    "metadata past the end": (lambda i: i.put("<I", _META, 1 << 24), "superblock.meta_blkaddr"),
    "xattr area past the end": (lambda i: i.put("<I", _XATTR, 1 << 20), "superblock.xattr_blkaddr"),
    "root not a directory": (lambda i: i.put("<H", _ROOT_NID, i.nid(b"/l")), "superblock.root_nid"),
    "root past the end": (lambda i: i.put("<H", _ROOT_NID, 0xFFFF), "nid"),
    # lcfs_image_get_erofs_inode checks the start of an inode only.
    "nid past the end": (lambda i: i.put("<Q", _dirent(i, b"/l"), 1 << 40), "nid"),
    "unknown i_format bit": (lambda i: i.put("<H", _inode_of(i, b"/p"), 0x10), "i_format"),
    "compressed layout": (lambda i: i.put("<H", _inode_of(i, b"/p"), 1 << 1), "i_format"),
    "unknown file type": (lambda i: i.put("<H", _inode_of(i, b"/p") + 4, 0o644), "i_mode"),
    "device with a size": (lambda i: i.put("<I", _inode_of(i, b"/p") + 8, 1), "i_size"),
    # erofs_readdir_block reads a directory block before any bounds check.
    "directory block past the end": (
        lambda i: i.put("<I", _inode_of(i, b"/many") + 16, 1 << 19),
        "i_u.raw_blkaddr",
    ),
    "inline tail past the block": (lambda i: i.put("<I", _inode_of(i, b"/d") + 8, 4000), "i_size"),
    # strnlen/memcpy of a name at an unchecked dirent offset.
    "name offset past the block": (
        lambda i: i.put("<H", _dirent(i, b"/l") + 8, 0xFFF0),
        "dirent.nameoff",
    ),
    "dirent table past the block": (
        lambda i: i.put("<H", next(iter(i.dirents(i.nid(b"/d")).values()))[0] + 8, 0xF000),
        "dirent.nameoff",
    ),
    "name with a slash": (
        lambda i: i.data.__setitem__(_name_at(i, b"/d/x"), ord("/")),
        "dirent.name",
    ),
    "names out of order": (
        lambda i: i.data.__setitem__(_name_at(i, b"/d/y"), ord("a")),
        "dirent.name",
    ),
    "dot names another inode": (lambda i: i.put("<Q", _dirent(i, b"/d/."), i.root), "dirent.nid"),
    "dotdot names another inode": (
        lambda i: i.put("<Q", _dirent(i, b"/d/.."), i.nid(b"/many")),
        "dirent.nid",
    ),
    # A directory entered twice becomes a hardlink to a directory (here to
    # an ancestor: a reference cycle libcomposefs never frees).
    "directory contains the root": (
        lambda i: i.put("<Q", _dirent(i, b"/d/x"), i.root),
        "dirent.nid",
    ),
    "directory entered twice": (
        lambda i: i.put("<Q", _dirent(i, b"/l"), i.nid(b"/d")),
        "dirent.nid",
    ),
    # The loader frees a whiteout and keeps it in its nid table: a second
    # entry for it is a heap use after free in lcfs_node_ref (LOADER_BUGS).
    "whiteout entered twice": (
        lambda i: i.put("<Q", _dirent(i, b"/01"), i.nid(b"/00")),
        "dirent.nid",
    ),
    "file type mismatch": (lambda i: i.put("<B", _dirent(i, b"/l") + 10, 2), "dirent.file_type"),
    "symlink without target": (lambda i: i.put("<I", _inode_of(i, b"/l") + 8, 0), "i_size"),
    "symlink target too long": (lambda i: i.put("<I", _inode_of(i, b"/long") + 8, 4096), "i_size"),
    "symlink target past the end": (
        lambda i: i.put("<I", _inode_of(i, b"/long") + 16, 1 << 19),
        "i_u.raw_blkaddr",
    ),
    "content over the inline maximum": (
        lambda i: i.put("<I", _inode_of(i, b"/i") + 8, 5001),
        "i_size",
    ),
    "chunk format bits": (lambda i: i.put("<H", _inode_of(i, b"/f") + 16, 0x20), "i_u.c.format"),
    # Shared xattrs are read at an unchecked index (SIGSEGV).
    "shared xattr index past the end": (
        lambda i: i.put("<I", _first_shared_index_at(i, b"/f"), 1 << 29),
        "xattr",
    ),
    "shared xattr index that wraps": (
        lambda i: i.put("<I", _first_shared_index_at(i, b"/f"), 1 << 30),
        "xattr",
    ),
    "shared count over the area": (
        lambda i: i.put("<B", _first_shared_index_at(i, b"/f") - 8, 200),
        "h_shared_count",
    ),
    # memdup of an xattr value whose size is not checked.
    "xattr value past the area": (
        lambda i: i.put("<H", _first_inline_xattr_at(i, b"/i") + 2, 0xFFFF),
        "xattr",
    ),
    "xattr name index": (lambda i: i.put("<B", _first_inline_xattr_at(i, b"/i") + 1, 9), "xattr"),
    "xattr name with NUL": (
        lambda i: i.put("<B", _first_inline_xattr_at(i, b"/i") + 4, 0),
        "xattr",
    ),
    "xattr area past the image": (
        lambda i: i.put("<H", _inode_of(i, b"/p") + 2, 0xFFFF),
        "i_xattr_icount",
    ),
    "name longer than 255 bytes": (
        lambda i: i.put("<H", _second_dirent(i, b"/many") + 8, _nameoff(i, b"/many") + 300),
        "dirent.nameoff",
    ),
    # Each byte is read once: nothing the loader builds from an image is more
    # than linear in its size (every entry of a shared block, every inode
    # inside another, once per reader: directories x entries nodes).
    "directory block over the inode table": (
        lambda i: i.put("<I", _inode_of(i, b"/many") + 16, 0),
        "i_u.raw_blkaddr",
    ),
    "directory reads the root's blocks": (
        lambda i: i.put("<I", _inode_of(i, b"/many") + 16, _blkaddr(i, b"/")),
        "i_u.raw_blkaddr",
    ),
}


def _blkaddr(img: Image, path: bytes) -> int:
    (blkaddr,) = struct.unpack_from("<I", img.data, _inode_of(img, path) + 16)
    return int(blkaddr)


def _second_dirent(img: Image, path: bytes) -> int:
    """Offset of the second dirent of directory ``path``'s first block."""
    return img.blocks(img.nid(path))[0][0] + 12


def _nameoff(img: Image, path: bytes) -> int:
    """nameoff of the first dirent of directory ``path``'s first block."""
    (nameoff,) = struct.unpack_from("<H", img.data, img.blocks(img.nid(path))[0][0] + 8)
    return int(nameoff)


def _name_at(img: Image, path: bytes) -> int:
    """Offset of the first byte of ``path``'s name in its parent's directory."""
    entry = img.dirents(img.nid(parent_of(path)))[name_of(path)][0]
    block = max(b for b, _ in img.blocks(img.nid(parent_of(path))) if b <= entry)
    (nameoff,) = struct.unpack_from("<H", img.data, entry + 8)
    return block + int(nameoff)


#: Cases read_image's magic-number gate refuses before the check runs.
_MAGIC = frozenset({"header magic", "erofs magic"})


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_image_is_rejected_naming_the_field(case: str) -> None:
    patch, field = HOSTILE[case]
    img = Image(_base_image())
    patch(img)
    hostile = bytes(img.data)
    assert hostile != _base_image()
    with pytest.raises(ValidationError, match="not a valid composefs image") as err:
        check_image(hostile)
    assert err.value.field == field, str(err.value)
    # read_image refuses it the same way, before libcomposefs sees it.
    with pytest.raises(ValidationError) as again:
        read_image(hostile)
    assert again.value.field == (None if case in _MAGIC else field)


@pytest.mark.parametrize("cut", [4095, 4096 + 100, 8192, -4096, -1])
def test_truncated_image_is_rejected(cut: int) -> None:
    image = _base_image()
    with pytest.raises(ValidationError, match="not a valid composefs image"):
        check_image(image[:cut])


def test_error_names_the_inode_and_its_offset() -> None:
    img = Image(_base_image())
    HOSTILE["symlink without target"][0](img)
    with pytest.raises(ValidationError) as err:
        check_image(bytes(img.data))
    nid = img.nid(b"/l")
    assert err.value.path == "/l"
    assert f"inode {nid} at byte {img.meta + nid * 32}" in str(err.value)


def test_a_hardlinked_file_is_entered_twice_but_a_directory_is_not() -> None:
    img = Image(_base_image())
    assert img.nid(b"/h") == img.nid(b"/d/x")
    check_image(bytes(img.data))
    tree = read_image(bytes(img.data))
    assert tree[b"/h"] == Hardlink(b"/d/x") or tree[b"/d/x"] == Hardlink(b"/h")


#: Hostile cases on which libcomposefs 1.0.8's loader, reached without the
#: check, makes ASan report (what the report names): the upstream bugs the
#: check keeps away, replayed with the sanitized build as their record.
LOADER_BUGS: dict[str, str] = {
    "directory block past the end": "lcfs-writer-erofs.c:1546",  # erofs_readdir_block
    "dirent table past the block": "in erofs_readdir_block",  # memcpy of a name
    "name offset past the block": "in erofs_readdir_block",
    "shared xattr index past the end": "lcfs-writer-erofs.c:1920",
    "shared count over the area": "lcfs-writer-erofs.c:1920",
    "whiteout entered twice": "heap-use-after-free",  # lcfs_node_ref
    "symlink target past the end": "in lcfs_build_node_from_image",  # memcpy of the target
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(LOADER_BUGS))
def test_loader_bug_the_check_stops_is_real_under_asan(case: str, tmp_path: Path) -> None:
    from test_fuzz_crashes import _harness, _sanitized_env

    env = _sanitized_env()
    if env is None:
        pytest.skip("no sanitized build or no atheris: run `make fuzz-deps`")
    img = Image(_base_image())
    HOSTILE[case][0](img)
    path = tmp_path / "reader" / "hostile.cfs"
    path.parent.mkdir()
    path.write_bytes(bytes(img.data))
    returncode, report = _harness(path, env)
    assert returncode == 0, report[-3000:]  # refused by the check: clean
    returncode, report = _harness(path, {**env, "CFSPY_FUZZ_UNCHECKED": "1"})
    assert returncode != 0 and "ERROR: AddressSanitizer" in report, report[-3000:]
    assert LOADER_BUGS[case] in report, report[-3000:]


@pytest.mark.parametrize(
    "case",
    ["whiteout entered twice", "shared xattr index past the end", "dirent table past the block"],
)
def test_sandboxed_read_image_refuses_with_the_same_field(case: str) -> None:
    from composefs_py.writer import available_backends

    if "sandbox" not in available_backends():
        pytest.skip("the sandbox backend is not available")
    patch, field = HOSTILE[case]
    img = Image(_base_image())
    patch(img)
    # The child runs the check too, before its libcomposefs reads a byte.
    # (The parent rebuilds the error from the child's message: the text
    # names the field, the attributes are not carried over.)
    with pytest.raises(ValidationError) as err:
        read_image(bytes(img.data), sandbox=True)
    assert f"{field}: not a valid composefs image" in str(err.value)


# ---------------------------------------------------------------------------
# cost: what an image makes the loader build is linear in the image's size
# ---------------------------------------------------------------------------


def _shared_directories_image(directories: int, links: int) -> bytes:
    """An image whose ``directories`` directories all list the same dirent blocks.

    ``/d00000`` holds ``links`` hardlinks to ``/f`` named ``-NNNNN`` (they
    sort before ``.``, so its first blocks hold nothing else); every other
    directory keeps its own inline ``.`` and ``..`` and is patched to read
    those blocks first.  The loader would make ``directories * links``
    nodes of an image of about ``17 * links + 50 * directories`` bytes.
    """
    builder = TreeBuilder()
    builder.add(ROOT, Inode(mode=stat.S_IFDIR | 0o755))
    builder.add(b"/f", Inode(mode=stat.S_IFREG | 0o644))
    builder.add(b"/d00000", Inode(mode=stat.S_IFDIR | 0o755))
    for j in range(links):
        builder.add(b"/d00000/-%05d" % j, Hardlink(b"/f"))
    for i in range(1, directories):
        builder.add(b"/d%05d" % i, Inode(mode=stat.S_IFDIR | 0o755))
    img = Image(_write(builder.build(), 1))
    first = img.nid(b"/d00000")
    (blkaddr,) = struct.unpack_from("<I", img.data, img.inode(first)[0] + 16)
    shared = 0
    for start, size in img.blocks(first):
        if size != 4096 or start != (blkaddr + shared) * 4096:
            break
        names = {
            name
            for name, (entry, _nid) in img.dirents(first).items()
            if start <= entry < start + size
        }
        if b"." in names or b".." in names:
            break
        shared += 1
    assert shared >= 2, "the hardlinks fill whole blocks"
    for i in range(1, directories):
        off, _isize, _xsize, size = img.inode(img.nid(b"/d%05d" % i))
        assert size < 4096, "an inline directory"
        img.put("<I", off + 8, shared * 4096 + size)
        img.put("<I", off + 16, blkaddr)
    return bytes(img.data)


#: read_image of the image at argv[1] in a child with RLIMIT_AS at argv[2]
#: bytes: prints its outcome, peak RSS (KiB, VmHWM) and CPU seconds.
_COST_CHILD = """
import json, resource, sys, time
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from composefs_py.errors import ValidationError
from composefs_py.writer import read_image
data = open(sys.argv[1], "rb").read()
start = time.process_time()
try:
    outcome = f"read {len(read_image(data))} entries"
except ValidationError as exc:
    outcome = f"refused ({exc.field}): {exc}"
except MemoryError:
    outcome = "MemoryError"
cpu = time.process_time() - start
# VmHWM, not ru_maxrss: execve keeps the parent's ru_maxrss, not its VmHWM.
status = open("/proc/self/status").read()
peak = int(status.split("VmHWM:")[1].split()[0])
print(json.dumps([outcome, peak, cpu]))
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Cost:
    """What read_image of one image cost a child process."""

    outcome: str
    peak_kib: int
    cpu: float


def _read_cost(image: bytes, tmp_path: Path) -> Cost:
    """read_image of ``image`` in a child (3 GiB of address space, 60 s)."""
    path = tmp_path / f"cost-{len(image)}.cfs"
    path.write_bytes(image)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _COST_CHILD, str(path), str(3 << 30)],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Cost("timed out", 3 << 20, 60.0)
    if done.returncode != 0:
        return Cost(f"exit {done.returncode}: {done.stderr[-300:]!r}", 3 << 20, 0.0)
    outcome, peak, cpu = json.loads(done.stdout)
    return Cost(outcome, peak, cpu)


def _growth(small: bytes, large: bytes, tmp_path: Path) -> tuple[float, float, str]:
    """How much more memory and CPU read_image takes for ``large`` than ``small``.

    Memory is counted above a child that reads a small valid image; both are
    floored (8 MiB, 50 ms) so that noise does not make a ratio.
    """
    base = _read_cost(_base_image(), tmp_path)
    one, two = _read_cost(small, tmp_path), _read_cost(large, tmp_path)
    memory = [max(c.peak_kib - base.peak_kib, 8 << 10) for c in (one, two)]
    cpu = [max(c.cpu, 0.05) for c in (one, two)]
    report = f"image {len(small)} -> {len(large)} bytes: {one} -> {two} (base {base})"
    assert one.outcome.startswith("refused") == two.outcome.startswith("refused"), report
    return memory[1] / memory[0], cpu[1] / cpu[0], report


@pytest.mark.parametrize("directories", [40])
def test_directories_sharing_dirent_blocks_are_refused_at_linear_cost(
    directories: int, tmp_path: Path
) -> None:
    # Twice the directories and twice the links: under twice the image, four
    # times the entries the loader would build from it.
    small = _shared_directories_image(directories, 40 * directories)
    large = _shared_directories_image(2 * directories, 80 * directories)
    assert len(large) < 2 * len(small)
    memory, cpu, report = _growth(small, large, tmp_path)
    print(report)
    assert memory < 2.5 and cpu < 2.5, report
    with pytest.raises(ValidationError, match="each block is read once") as err:
        check_image(large)
    assert err.value.field == "i_u.raw_blkaddr"


def _clustered_nids_image(files: int, buckets: int = 8) -> bytes:
    """An image of ``files`` fifos whose nids fall in ``buckets`` residues mod 11.

    libcomposefs's loader keeps the inodes it meets in a gnulib hash table
    of 11 buckets (nid % 11) that grows only when 9 of them are in use: with
    8, every lookup walks a chain of about ``files / 8`` inodes.  The
    inodes (the root's whiteouts too) are copied to fresh slots past the
    end, ``buckets`` slots out of every 11, and the dirents patched.
    """
    builder = TreeBuilder()
    builder.add(ROOT, Inode(mode=stat.S_IFDIR | 0o755))
    for i in range(files):
        builder.add(b"/%06d" % i, Inode(mode=stat.S_IFIFO | 0o644))
    img = Image(_write(builder.build(), 0))
    base = -(-len(img.data) // 4096) * 128  # the next block, in slots
    base += -base % 11
    moved = [
        (entry, nid) for name, (entry, nid) in img.dirents(img.root).items() if name.strip(b".")
    ]
    img.data.extend(bytes(32 * (base + 11 * (len(moved) // buckets + 1)) - len(img.data)))
    for k, (entry, nid) in enumerate(sorted(moved)):
        new = base + 11 * (k // buckets) + k % buckets
        old = img.meta + 32 * nid
        img.data[32 * new : 32 * new + 32] = img.data[old : old + 32]
        img.put("<Q", entry, new)
    assert img.root % 11 < buckets
    return bytes(img.data)


def test_inode_numbers_that_collide_in_the_loaders_table_are_refused(tmp_path: Path) -> None:
    # The same inodes spread over all 11 residues read back as usual.
    assert len(read_image(_clustered_nids_image(2000, buckets=11))) == 2001
    small, large = _clustered_nids_image(20_000), _clustered_nids_image(40_000)
    _memory, cpu, report = _growth(small, large, tmp_path)
    print(report)
    assert cpu < 2.5, report
    with pytest.raises(ValidationError, match="collide in libcomposefs's inode table") as err:
        check_image(small)
    assert err.value.field == "nid"


def test_an_inode_inside_a_files_content_is_refused() -> None:
    # /blob's content block holds a well-formed fifo inode and /p's entry
    # names it: the same bytes would be read as data and as an inode.
    text = (
        "/ 4096 40755 2 0 0 0 0.0 - - -\n"
        f"/blob 4200 100644 1 0 0 0 0.0 - {'c' * 4200} -\n"
        "/p 0 10644 1 0 0 0 0.0 - - -\n"
    )
    img = Image(_write(parse_dumpfile(text), 1))
    block = _blkaddr(img, b"/blob") * 4096
    img.data[block : block + 32] = img.data[_inode_of(img, b"/p") : _inode_of(img, b"/p") + 32]
    check_image(bytes(img.data))  # still /p's own inode: fine
    img.put("<Q", _dirent(img, b"/p"), (block - img.meta) // 32)
    with pytest.raises(ValidationError, match="overlap another inode or data") as err:
        check_image(bytes(img.data))
    assert (err.value.field, err.value.path) == ("nid", "/p")


def _deep_image(levels: int) -> bytes:
    builder = TreeBuilder()
    builder.add(ROOT, Inode(mode=stat.S_IFDIR | 0o755))
    for depth in range(1, levels + 1):
        builder.add(b"/d" * depth, Inode(mode=stat.S_IFDIR | 0o755))
    return _write(builder.build(), 0)


#: Limits.field -> (value, the field check_image names): every total is
#: checked as the walk meets it, before libcomposefs loads a byte.
LIMITED = {
    "max_entries": (100, "entries"),
    "max_path_bytes": (20, "path"),
    "max_total_path_bytes": (100, "path_bytes"),
    "max_input_bytes": (100, "tree_bytes"),
    "max_depth": (11, "depth"),
}


@pytest.mark.parametrize("limit", sorted(LIMITED))
def test_the_limits_bound_what_the_loader_would_build(limit: str) -> None:
    image = _deep_image(12)
    summary = check_image(image)
    assert (summary.entries, summary.path_bytes, summary.depth) == (12 + 256, 156 + 3 * 256, 12)
    value, field = LIMITED[limit]
    changes: dict[str, Any] = {limit: value}
    limits = dataclasses.replace(Limits().for_images(), **changes)
    with pytest.raises(ValidationError, match="not a valid composefs image") as err:
        check_image(image, limits=limits)
    assert err.value.field == field, str(err.value)


def test_xattr_space_and_payload_length_are_limited_before_loading() -> None:
    image = _base_image()
    small = dataclasses.replace(Limits().for_images(), max_xattr_space=100)
    with pytest.raises(ValidationError, match="xattrs take more than 100 bytes") as err:
        check_image(image, limits=small)
    assert (err.value.field, err.value.path) == ("xattr", "/long")
    # /f's payload is ab/ and 62 hex digits, stored as a redirect /ab/...
    short = dataclasses.replace(Limits().for_images(), max_path_bytes=60)
    with pytest.raises(ValidationError, match=r"a payload \(overlay redirect\) of 66 bytes") as err:
        check_image(image, limits=short)
    assert (err.value.field, err.value.path) == ("xattr", "/f")


def test_a_shared_xattr_counts_for_every_inode_that_holds_it() -> None:
    # One 30,000-byte value stored once, held by 64 inodes: the tree the
    # loader builds holds it 64 times, and max_input_bytes bounds that.
    value = "v" * 30_000
    lines = ["/ 4096 40755 2 0 0 0 0.0 - - -"]
    lines += [f"/f{i:02d} 0 100644 1 0 0 0 0.0 - - - user.big={value}" for i in range(64)]
    image = _write(parse_dumpfile("\n".join(lines) + "\n"), 0)
    assert len(image) < 64 * 1024
    summary = check_image(image)
    assert summary.tree_bytes > 64 * 30_000
    limits = dataclasses.replace(Limits().for_images(), max_input_bytes=32 * 30_000)
    with pytest.raises(ValidationError, match="holds more than 960000 bytes") as err:
        check_image(image, limits=limits)
    assert err.value.field == "tree_bytes"


# ---------------------------------------------------------------------------
# the check's shortcuts decide as the plain walk would
# ---------------------------------------------------------------------------


def _loader_order(img: Image) -> list[int]:
    """Every lookup lcfs_load_node_from_image makes, in its order (depth first)."""
    out: list[int] = []
    met = {int(img.root)}

    def visit(nid: int) -> None:
        for name, (_entry, child) in sorted(img.dirents(nid).items()):
            if name in (b".", b".."):
                continue
            out.append(child)
            if child not in met:
                met.add(child)
                (mode,) = struct.unpack_from("<H", img.data, img.inode(child)[0] + 4)
                if stat.S_ISDIR(mode):
                    visit(child)

    visit(int(img.root))
    return out


def _chain_steps(root: int, lookups: list[int]) -> int:
    """Chain entries gnulib's hash table walks for ``lookups``: one step at a time."""
    from composefs_py._erofs import _GROWTH_FACTOR, _GROWTH_THRESHOLD, _bucket_size, _f32

    size = _bucket_size(0)
    inserted = [root]
    steps = 0
    for nid in lookups:
        chain = sum(1 for known in inserted if known % size == nid % size)
        if nid in inserted:
            steps += chain
            continue
        steps += 2 * chain
        used = len({known % size for known in inserted})
        if used > _f32(_GROWTH_THRESHOLD * size):
            size = _bucket_size(int(_f32(_f32(size * _GROWTH_FACTOR) * _GROWTH_THRESHOLD)))
        inserted.append(nid)
    return steps


def _scattered_nids_image(files: int, spread: int, seed: int) -> bytes:
    """An image of ``files`` fifos copied to random slots among ``spread * files``."""
    import random

    builder = TreeBuilder()
    builder.add(ROOT, Inode(mode=stat.S_IFDIR | 0o755))
    for i in range(files):
        builder.add(b"/%06d" % i, Inode(mode=stat.S_IFIFO | 0o644))
    img = Image(_write(builder.build(), 0))
    base = -(-len(img.data) // 4096) * 128
    moved = sorted(
        (entry, nid) for name, (entry, nid) in img.dirents(img.root).items() if name.strip(b".")
    )
    slots = random.Random(seed).sample(range(spread * len(moved)), len(moved))
    img.data.extend(bytes(32 * (base + spread * len(moved)) - len(img.data)))
    for (entry, nid), slot in zip(moved, slots, strict=True):
        old = img.meta + 32 * nid
        img.data[32 * (base + slot) : 32 * (base + slot) + 32] = img.data[old : old + 32]
        img.put("<Q", entry, base + slot)
    return bytes(img.data)


def _hardlinks_image() -> bytes:
    builder = TreeBuilder()
    builder.add(ROOT, Inode(mode=stat.S_IFDIR | 0o755))
    for i in range(40):
        builder.add(b"/d%02d" % i, Inode(mode=stat.S_IFDIR | 0o755))
        builder.add(b"/d%02d/f" % i, Inode(mode=stat.S_IFREG | 0o644))
        for j in range(8):
            builder.add(b"/d%02d/l%d" % (i, j), Hardlink(b"/d%02d/f" % ((i * 7 + j) % (i + 1))))
    return _write(builder.build(), 1)


@pytest.mark.parametrize(
    "make",
    [
        _base_image,
        _hardlinks_image,
        lambda: _clustered_nids_image(300),
        lambda: _clustered_nids_image(300, buckets=11),
        lambda: _scattered_nids_image(600, 1, 1),
        lambda: _scattered_nids_image(600, 5, 2),
        lambda: _deep_image(30),
    ],
    ids=["base", "hardlinks", "clustered", "spread", "scattered", "sparse", "deep"],
)
def test_the_inode_table_replay_counts_what_the_loader_walks(make: Callable[[], bytes]) -> None:
    # The walk goes in the loader's order, and the replay (bulk where no
    # inode is met twice) counts exactly the chain entries of a plain
    # one-lookup-at-a-time table.
    from array import array

    from composefs_py import _erofs

    image = make()
    img = Image(image)
    order = _loader_order(img)
    limits = Limits().for_images()
    checker = _erofs._Checker(image, limits, limits.max_depth)
    _version, root = checker.superblock()
    checker.walk(root)
    assert list(checker.order) == order
    unbounded = 1 << 62
    replay = _erofs._replay_inserts if len(set(order)) == len(order) else _erofs._replay_links
    assert replay(root, array("Q", order), unbounded) == _chain_steps(root, order)


def _xattr_image(files: dict[str, str]) -> Image:
    lines = ["/ 4096 40755 2 0 0 0 0.0 - - -"]
    lines += [f"/{name} 0 100644 1 0 0 0 0.0 - - - {xattrs}" for name, xattrs in files.items()]
    return Image(_write(parse_dumpfile("\n".join(lines) + "\n"), 1))


def test_an_xattr_area_shaped_like_a_checked_one_is_still_checked() -> None:
    # /a's area (one inline entry, user.a of 1 byte) is remembered by its
    # bytes up to the value; /b starts the same but holds a second entry,
    # patched to repeat the first name: the shortcut must not take it.
    img = _xattr_image({"a": "user.a=1", "b": "user.a=2 user.b=3", "c": "user.a=4"})
    # /b's header as /a's: the name filter (which the loader ignores) too.
    headers = [img.inode(img.nid(path))[0] + 32 for path in (b"/a", b"/b")]
    img.data[headers[1] : headers[1] + 12] = img.data[headers[0] : headers[0] + 12]
    check_image(bytes(img.data))
    second = _first_inline_xattr_at(img, b"/b") + 8  # 4-byte header, "a", 1-byte value
    assert img.data[second + 4 : second + 5] == b"b"
    img.data[second + 4] = ord("a")
    with pytest.raises(ValidationError, match="appears twice") as err:
        check_image(bytes(img.data))
    assert (err.value.field, err.value.path) == ("xattr", "/b")


def test_a_redirect_shaped_like_a_checked_one_still_notes_the_misread_payload() -> None:
    # Three files whose redirects (their payloads, all of one length) have
    # the same header and name: the loader over-reads /b's value (a byte
    # after it that is not a NUL) but /a's area was checked first.
    payloads = {name: f"{i:02x}/{DIGEST[2:]}" for i, name in enumerate("abc")}
    text = "/ 4096 40755 2 0 0 0 0.0 - - -\n" + "".join(
        f"/{name} 10 100644 1 0 0 0 0.0 {payload} - -\n" for name, payload in payloads.items()
    )
    img = Image(_write(parse_dumpfile(text), 1))
    assert check_image(bytes(img.data)).payloads == {}
    entry = _first_inline_xattr_at(img, b"/b")
    name_len, _index, value_size = struct.unpack_from("<BBH", img.data, entry)
    value = entry + 4 + name_len
    assert bytes(img.data[value : value + value_size]) == b"/" + payloads["b"].encode()
    assert img.data[value + value_size] == 0
    img.data[value + value_size] = ord("x")
    summary = check_image(bytes(img.data))
    assert summary.payloads == {b"/b": payloads["b"].encode()}  # the image's payload


def test_a_dropped_xattr_is_noted_on_directories_too() -> None:
    # A last inline xattr of 4 bytes (a prefix alone, an empty value) is
    # dropped by the loader on any inode: the check notes it for the
    # repair, on a directory it enters and on an empty one.
    builder = TreeBuilder()
    builder.add(ROOT, Inode(mode=stat.S_IFDIR | 0o755))
    for path, name in ((b"/d", b"system.posix_acl_access"), (b"/e", b"system.posix_acl_default")):
        builder.add(path, Inode(mode=stat.S_IFDIR | 0o755, xattrs=((b"a", b"1"), (name, b""))))
    builder.add(b"/d/f", Inode(mode=stat.S_IFREG | 0o644))
    summary = check_image(_write(builder.build(), 1))
    assert summary.dropped_xattrs == {
        b"/d": b"system.posix_acl_access",
        b"/e": b"system.posix_acl_default",
    }
