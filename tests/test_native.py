"""Tests of composefs_py._native against the real libcomposefs (no mocks)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from composefs_py import _native
from composefs_py.errors import LibraryError, ValidationError
from composefs_py.fsverity import fsverity_digest
from composefs_py.model import Hardlink, Inode, Tree, TreeBuilder

PAYLOAD = b"ab/" + b"cd" * 31
DIGEST_HEX = "ab" + "cd" * 31
TOOL_PAYLOAD = b"12/" + b"34" * 31

# One of every kind of entry libcomposefs writes, as a Tree and as the
# composefs-dump(5) text mkcomposefs reads (written by hand on purpose: this
# checks the binding, not the dumpfile module).
ENTRIES: list[tuple[bytes, Inode | Hardlink]] = [
    (
        b"/",
        Inode(
            stat.S_IFDIR | 0o755,
            nlink=5,
            mtime=1700000000,
            mtime_nsec=5,
            xattrs=((b"user.root", b"yes"),),
        ),
    ),
    (b"/bin", Inode(stat.S_IFLNK | 0o777, mtime=1700000001, symlink_target=b"usr/bin")),
    (b"/dev", Inode(stat.S_IFDIR | 0o755, nlink=2, mtime=1700000000)),
    (b"/dev/fifo", Inode(stat.S_IFIFO | 0o644, mtime=1700000000)),
    (b"/dev/null", Inode(stat.S_IFCHR | 0o666, mtime=1700000000, rdev=os.makedev(1, 3))),
    (b"/dev/sda", Inode(stat.S_IFBLK | 0o660, gid=6, mtime=1700000000, rdev=os.makedev(8, 0))),
    (b"/empty", Inode(stat.S_IFREG | 0o600, mtime=1700000000)),
    (b"/etc", Inode(stat.S_IFDIR | 0o755, nlink=2, mtime=1700000000)),
    (b"/etc/hostname", Inode(stat.S_IFREG | 0o644, size=9, mtime=1700000000, content=b"composefs")),
    (
        b"/etc/passwd",
        Inode(
            stat.S_IFREG | 0o644,
            nlink=2,
            size=5000,
            mtime=1700000000,
            payload=PAYLOAD,
            fsverity_digest=bytes.fromhex(DIGEST_HEX),
            xattrs=((b"security.selinux", b"system_u:object_r:etc_t:s0\0"),),
        ),
    ),
    (b"/etc/passwd-link", Hardlink(b"/etc/passwd")),
    (
        b"/usr",
        Inode(stat.S_IFDIR | 0o755, nlink=3, uid=1000, gid=1000, mtime=0, mtime_nsec=999999999),
    ),
    (b"/usr/bin", Inode(stat.S_IFDIR | 0o755, nlink=2, mtime=1700000000)),
    (
        b"/usr/bin/tool",
        Inode(
            stat.S_IFREG | 0o4755,
            size=123456,
            mtime=1700000000,
            payload=TOOL_PAYLOAD,
            xattrs=((b"trusted.foo", b"bar"), (b"user.a", b"\0\xff")),
        ),
    ),
    (b"/usr/gone", Inode(stat.S_IFCHR, mtime=1700000000)),
    (b"/usr/sock", Inode(stat.S_IFSOCK | 0o755, mtime=1700000000)),
]

DUMP = b"".join(
    line + b"\n"
    for line in [
        b"/ 0 40755 5 0 0 0 1700000000.5 - - - user.root=yes",
        b"/bin 7 120777 1 0 0 0 1700000001.0 usr/bin - -",
        b"/dev 0 40755 2 0 0 0 1700000000.0 - - -",
        b"/dev/fifo 0 10644 1 0 0 0 1700000000.0 - - -",
        b"/dev/null 0 20666 1 0 0 259 1700000000.0 - - -",
        b"/dev/sda 0 60660 1 0 6 2048 1700000000.0 - - -",
        b"/empty 0 100600 1 0 0 0 1700000000.0 - - -",
        b"/etc 0 40755 2 0 0 0 1700000000.0 - - -",
        b"/etc/hostname 9 100644 1 0 0 0 1700000000.0 - composefs -",
        b"/etc/passwd 5000 100644 2 0 0 0 1700000000.0 "
        + PAYLOAD
        + b" - "
        + DIGEST_HEX.encode()
        + b" security.selinux=system_u:object_r:etc_t:s0\\x00",
        b"/etc/passwd-link 5000 @100644 2 0 0 0 1700000000.0 /etc/passwd - -",
        b"/usr 0 40755 3 1000 1000 0 0.999999999 - - -",
        b"/usr/bin 0 40755 2 0 0 0 1700000000.0 - - -",
        b"/usr/bin/tool 123456 104755 1 0 0 0 1700000000.0 "
        + TOOL_PAYLOAD
        + b" - - trusted.foo=bar user.a=\\x00\\xff",
        b"/usr/gone 0 20000 1 0 0 0 1700000000.0 - - -",
        b"/usr/sock 0 140755 1 0 0 0 1700000000.0 - - -",
    ]
)


def make_tree(entries: list[tuple[bytes, Inode | Hardlink]] = ENTRIES) -> Tree:
    builder = TreeBuilder()
    for index, (path, node) in enumerate(entries):
        builder.add(path, node, entry=index)
    return builder.build()


def write_bytes(tree: Tree, tmp_path: Path, **versions: int) -> tuple[bytes, bytes]:
    out = tmp_path / "image.cfs"
    with open(out, "wb") as f:
        digest = _native.write_tree(tree, f.fileno(), **versions)
    return out.read_bytes(), digest


@pytest.mark.parametrize("version", [0, 1])
def test_write_tree_is_byte_identical_to_mkcomposefs(
    version: int, tmp_path: Path, run_mkcomposefs: Callable[..., bytes]
) -> None:
    image, _ = write_bytes(make_tree(), tmp_path, min_version=version, max_version=version)
    expected = run_mkcomposefs(DUMP, f"--min-version={version}", f"--max-version={version}")
    assert image == expected


def test_default_versions_match_mkcomposefs_defaults(
    tmp_path: Path, run_mkcomposefs: Callable[..., bytes]
) -> None:
    image, _ = write_bytes(make_tree(), tmp_path)
    assert image == run_mkcomposefs(DUMP)


def test_returned_digest_is_the_fsverity_digest_of_the_image(tmp_path: Path) -> None:
    image, digest = write_bytes(make_tree(), tmp_path)
    assert len(digest) == 32
    assert digest == fsverity_digest(image) == _native.fsverity_digest_bytes(image)


def test_written_image_passes_fsck_erofs(tmp_path: Path, fsck_erofs: Path) -> None:
    write_bytes(make_tree(), tmp_path)
    subprocess.run([str(fsck_erofs), str(tmp_path / "image.cfs")], check=True, capture_output=True)


def test_composefs_info_lists_what_was_written(tmp_path: Path, composefs_info: Path) -> None:
    write_bytes(make_tree(), tmp_path)
    out = subprocess.run(
        [str(composefs_info), "ls", str(tmp_path / "image.cfs")], check=True, capture_output=True
    ).stdout
    for path in (b"/etc/passwd", b"/usr/bin/tool", b"/dev/null", b"/bin"):
        assert path in out


def test_image_is_deterministic(tmp_path: Path) -> None:
    first, d1 = write_bytes(make_tree(), tmp_path)
    second, d2 = write_bytes(make_tree(), tmp_path)
    assert first == second and d1 == d2


def test_write_to_a_pipe_streams_the_whole_image(tmp_path: Path) -> None:
    expected, digest = write_bytes(make_tree(), tmp_path)
    read_fd, write_fd = os.pipe()
    chunks: list[bytes] = []
    reader = threading.Thread(
        target=lambda: chunks.extend(iter(lambda: os.read(read_fd, 65536), b""))
    )
    reader.start()
    try:
        assert _native.write_tree(make_tree(), write_fd) == digest
    finally:
        os.close(write_fd)
        reader.join()
        os.close(read_fd)
    assert b"".join(chunks) == expected


def test_large_tree_larger_than_the_write_buffer(tmp_path: Path) -> None:
    entries: list[tuple[bytes, Inode | Hardlink]] = [(b"/", Inode(stat.S_IFDIR | 0o755, nlink=2))]
    entries += [
        (b"/f%05d" % i, Inode(stat.S_IFREG | 0o644, size=10, content=b"0123456789"))
        for i in range(20000)
    ]
    image, digest = write_bytes(make_tree(entries), tmp_path)
    assert len(image) > 1024 * 1024
    assert digest == fsverity_digest(image)
    assert len(_native.read_image(image)) == 20001


def test_write_to_a_full_device_raises_enospc() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(LibraryError) as info:
            _native.write_tree(make_tree(), fd)
    finally:
        os.close(fd)
    assert info.value.errno == errno.ENOSPC
    assert "lcfs_write_to" in str(info.value)


def test_write_to_a_read_only_fd_raises_ebadf(tmp_path: Path) -> None:
    path = tmp_path / "ro"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(LibraryError) as info:
            _native.write_tree(make_tree(), fd)
    finally:
        os.close(fd)
    assert info.value.errno == errno.EBADF
    assert isinstance(info.value, OSError)


@pytest.mark.parametrize("versions", [(1, 0), (-1, 1), (0, 2), (2, 2)])
def test_bad_format_versions_are_rejected(versions: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="format versions"):
        _native.write_tree(make_tree(), 1, min_version=versions[0], max_version=versions[1])


def test_read_image_round_trips_the_tree_plus_v1_opaque_markers(tmp_path: Path) -> None:
    # Format 1 marks a directory holding whiteouts with opaque=x xattrs, which
    # read back (composefs-info dump shows them too); all else round-trips.
    tree = make_tree()
    image, digest = write_bytes(tree, tmp_path)
    markers = ((b"trusted.overlay.opaque", b"x"), (b"user.overlay.opaque", b"x"))
    expected = make_tree(
        [
            (path, dataclasses.replace(node, xattrs=markers) if path == b"/usr" else node)
            for path, node in ENTRIES
        ]
    )
    again = _native.read_image(image)
    assert again == expected
    # ... and writing what was read gives the very same image.
    assert write_bytes(again, tmp_path) == (image, digest)


def test_read_image_round_trips_version_0(tmp_path: Path) -> None:
    tree = make_tree()
    image, _ = write_bytes(tree, tmp_path, min_version=0, max_version=0)
    assert _native.read_image(image) == tree
    assert _native.read_image(memoryview(bytearray(image))) == tree


def test_image_version_reports_the_format(tmp_path: Path) -> None:
    for version in (0, 1):
        write_bytes(make_tree(), tmp_path, min_version=version, max_version=version)
        with open(tmp_path / "image.cfs", "rb") as f:
            assert _native.image_version(f.fileno()) == version


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\0" * 4096, b"not an image at all" * 300, os.urandom(8192)],
    ids=["empty", "zeros", "text", "random"],
)
def test_read_image_rejects_garbage_with_validation_error(garbage: bytes) -> None:
    with pytest.raises(ValidationError, match="not a valid composefs image"):
        _native.read_image(garbage)


def test_read_image_rejects_a_truncated_image(tmp_path: Path) -> None:
    image, _ = write_bytes(make_tree(), tmp_path)
    with pytest.raises(ValidationError):
        _native.read_image(image[: len(image) // 2])


def test_hardlinks_keep_the_target_link_count(tmp_path: Path) -> None:
    tree = _native.read_image(write_bytes(make_tree(), tmp_path)[0])
    assert tree[b"/etc/passwd-link"] == Hardlink(b"/etc/passwd")
    assert tree.inode(b"/etc/passwd").nlink == 2


def test_fsverity_digest_bytes_matches_the_pure_python_digest() -> None:
    for size in (1, 4095, 4096, 4097, 128 * 4096, 128 * 4096 + 1, (1 << 20) + 7):
        data = hashlib.shake_256(str(size).encode()).digest(size)
        assert _native.fsverity_digest_bytes(data) == fsverity_digest(data), size


def test_fsverity_digest_fd_reads_from_the_current_position(tmp_path: Path) -> None:
    data = os.urandom(3 * 4096 + 17)
    path = tmp_path / "f"
    path.write_bytes(b"skip" + data)
    with open(path, "rb") as f:
        f.seek(4)
        assert _native.fsverity_digest_fd(f.fileno()) == fsverity_digest(data)


def test_fsverity_digest_fd_on_a_closed_fd_raises_library_error(tmp_path: Path) -> None:
    with pytest.raises(LibraryError) as info:
        _native.fsverity_digest_fd(987654)
    assert info.value.errno != 0
    assert "lcfs_compute_fsverity_from_fd" in str(info.value)


def test_measure_fsverity_without_verity_raises_enotty(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_bytes(b"no verity here")
    with open(path, "rb") as f, pytest.raises(LibraryError) as info:
        _native.measure_fsverity(f.fileno())
    assert info.value.errno == errno.ENOTTY


def test_enable_fsverity_where_unsupported_raises_library_error(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_bytes(b"data")
    with open(path, "rb") as f:
        try:
            _native.enable_fsverity(f.fileno())
        except LibraryError as exc:
            assert exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EPERM, errno.EACCES)
            assert "lcfs_fd_enable_fsverity" in str(exc)
        else:  # a filesystem with verity: then the kernel measures it
            assert _native.measure_fsverity(f.fileno()) == fsverity_digest(b"data")


def test_mount_image_of_a_missing_image_raises_library_error(tmp_path: Path) -> None:
    with pytest.raises(LibraryError) as info:
        _native.mount_image(tmp_path / "missing.cfs", tmp_path, objdirs=[tmp_path])
    assert info.value.errno == errno.ENOENT
    assert "lcfs_mount_image" in str(info.value)


def test_mount_flags_mirror_the_c_enum() -> None:
    assert _native.MountFlags.REQUIRE_VERITY == 1
    assert _native.MountFlags.READONLY == 2
    assert _native.MountFlags.IDMAP == 8
    assert _native.MountFlags.TRY_VERITY == 16


def test_build_stamp_and_library_version() -> None:
    assert _native.BUILD_STAMP == "composefs-py-ffi-7"
    major, minor, *_ = (int(p) for p in _native.LIBCOMPOSEFS_VERSION.split("."))
    assert (major, minor) >= (1, 0)
    assert _native.DIGEST_SIZE == 32


def test_hardlink_group_is_written_where_the_tree_puts_its_inode(
    tmp_path: Path, run_mkcomposefs: Callable[..., bytes]
) -> None:
    # The builder keeps a hardlink group's inode where the input put it
    # (/z/file, not the first path /a-link): that choice changes the image
    # bytes, and containers/storage keeps it at the TOC's target.  The image
    # must match mkcomposefs on the dumpfile that says the same.
    tree = make_tree(
        [
            (b"/", Inode(stat.S_IFDIR | 0o755, nlink=3)),
            (b"/a-link", Hardlink(b"/z/file")),
            (b"/b-link", Hardlink(b"/z/file")),
            (b"/z", Inode(stat.S_IFDIR | 0o700, nlink=2)),
            (b"/z/file", Inode(stat.S_IFREG | 0o644, nlink=3, size=3, content=b"abc")),
        ]
    )
    inode_path = next(path for path, node in tree if isinstance(node, Inode) and node.size == 3)
    assert inode_path == b"/z/file"
    dump = (
        b"/ 0 40755 3 0 0 0 0.0 - - -\n"
        b"/a-link 3 @100644 3 0 0 0 0.0 /z/file - -\n"
        b"/b-link 3 @100644 3 0 0 0 0.0 /z/file - -\n"
        b"/z 0 40700 2 0 0 0 0.0 - - -\n"
        b"/z/file 3 100644 3 0 0 0 0.0 - abc -\n"
    )
    image, _ = write_bytes(tree, tmp_path)
    assert image == run_mkcomposefs(dump)
    # The image does not say which name the input gave the inode: the reader
    # puts it at the group's first path, a documented round-trip difference.
    read = _native.read_image(image)
    assert isinstance(read[b"/a-link"], Inode)
    assert read[b"/b-link"] == read[b"/z/file"] == Hardlink(b"/a-link")
    assert read.inode(b"/z/file") == tree.inode(b"/z/file")
    assert _native.read_image(memoryview(bytearray(image))) == read
