"""Tests of composefs_py.fsverity: the pure-Python digest against libcomposefs
and the real ``mkcomposefs --digest-store``; the enable/measure ioctls against
this kernel (which may lack fs-verity: then their errors are what is checked)."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from composefs_py import _native
from composefs_py.errors import LibraryError
from composefs_py.fsverity import (
    FsverityHasher,
    enable_fsverity,
    filesystem_type,
    fsverity_digest,
    measure_fsverity,
)

BLOCK = 4096
# Sizes around every boundary of the Merkle tree: one block, one block of
# hashes (128 blocks), two levels of hashes (128 * 128 blocks).
SIZES = [
    1,
    2,
    31,
    32,
    33,
    4095,
    4096,
    4097,
    8191,
    8192,
    8193,
    127 * BLOCK,
    128 * BLOCK - 1,
    128 * BLOCK,
    128 * BLOCK + 1,
    129 * BLOCK,
    (1 << 20) + 1,
    128 * 128 * BLOCK,
    128 * 128 * BLOCK + 1,
]


def content(size: int) -> bytes:
    return hashlib.shake_256(b"%d" % size).digest(size)


@pytest.mark.parametrize("size", SIZES)
def test_digest_equals_libcomposefs(size: int) -> None:
    data = content(size)
    assert fsverity_digest(data) == _native.fsverity_digest_bytes(data)


def test_empty_file_digest_is_the_kernel_one() -> None:
    # The kernel (and fsverity-utils) define an empty file's root hash as all
    # zeros; libcomposefs 1.0.8 hashes a zero block instead.  Empty files
    # never have a payload in composefs, so the two never meet.
    assert fsverity_digest(b"").hex() == (
        "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"
    )


@given(st.binary(min_size=1, max_size=3 * BLOCK + 100))
def test_digest_equals_libcomposefs_for_any_content(data: bytes) -> None:
    assert fsverity_digest(data) == _native.fsverity_digest_bytes(data)


@given(st.lists(st.integers(min_value=0, max_value=3 * BLOCK), max_size=6))
def test_incremental_updates_give_the_same_digest(cuts: list[int]) -> None:
    data = content(3 * BLOCK + 1)
    hasher = FsverityHasher()
    start = 0
    for cut in sorted(cuts):
        hasher.update(data[start:cut])
        start = max(start, cut)
    hasher.update(data[start:])
    assert hasher.digest() == fsverity_digest(data)


def test_bytes_like_path_and_fd_sources_agree(tmp_path: Path) -> None:
    data = content(5 * BLOCK + 3)
    path = tmp_path / "object"
    path.write_bytes(data)
    expected = _native.fsverity_digest_bytes(data)
    assert fsverity_digest(bytearray(data)) == expected
    assert fsverity_digest(memoryview(data)) == expected
    assert fsverity_digest(path) == expected
    assert fsverity_digest(str(path)) == expected
    fd = os.open(path, os.O_RDONLY)
    try:
        assert fsverity_digest(fd) == expected
    finally:
        os.close(fd)


def test_fd_source_reads_a_pipe() -> None:
    data = content(50000)  # fits in the pipe buffer
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)
    os.close(write_fd)
    try:
        assert fsverity_digest(read_fd) == _native.fsverity_digest_bytes(data)
    finally:
        os.close(read_fd)


def test_missing_path_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fsverity_digest(tmp_path / "missing")


def test_measure_without_verity_raises_enotty_like_libcomposefs(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_bytes(b"x")
    with open(path, "rb") as f:
        with pytest.raises(LibraryError) as ours:
            measure_fsverity(f.fileno())
        with pytest.raises(LibraryError) as theirs:
            _native.measure_fsverity(f.fileno())
    assert ours.value.errno == theirs.value.errno == errno.ENOTTY


def test_enable_agrees_with_libcomposefs(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_bytes(b"data")
    with open(path, "rb") as f:
        try:
            enable_fsverity(f.fileno())
        except LibraryError as exc:
            with pytest.raises(LibraryError) as theirs:
                _native.enable_fsverity(f.fileno())
            assert exc.errno == theirs.value.errno
            assert isinstance(exc, OSError)
        else:  # a filesystem with fs-verity: the kernel agrees with us
            assert measure_fsverity(f.fileno()) == fsverity_digest(b"data")


# ---------------------------------------------------------------------------
# against mkcomposefs --digest-store (files on disk, hashed by the tool)
# ---------------------------------------------------------------------------

#: mkcomposefs inlines files of up to 64 bytes (no object, no digest), so the
#: sizes it hashes start above that; smaller ones are checked against
#: libcomposefs' own function above.
STORE_SIZES = [65, *(size for size in SIZES if size > 64)]


def dump_digests(composefs_info: Path, image: Path) -> dict[str, tuple[str, str]]:
    """path -> (payload, fs-verity digest hex) of each file with external content."""
    text = subprocess.run(
        [str(composefs_info), "dump", str(image)], check=True, capture_output=True
    ).stdout.decode()
    result = {}
    for line in text.splitlines():
        fields = line.split(" ")
        if fields[8] != "-":
            result[fields[0]] = (fields[8], fields[10])
    return result


def test_digests_equal_mkcomposefs_digest_store(
    mkcomposefs: Path, composefs_info: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for size in STORE_SIZES:
        (source / f"f{size}").write_bytes(content(size))
    store = tmp_path / "store"
    image = tmp_path / "image.cfs"
    subprocess.run(
        [str(mkcomposefs), f"--digest-store={store}", str(source), str(image)],
        check=True,
        capture_output=True,
    )
    theirs = dump_digests(composefs_info, image)
    assert sorted(theirs) == sorted(f"/f{size}" for size in STORE_SIZES)
    for size in STORE_SIZES:
        payload, digest = theirs[f"/f{size}"]
        ours = fsverity_digest(source / f"f{size}")
        assert ours.hex() == digest, size
        # the tool names each stored object by that digest
        assert payload == f"{ours.hex()[:2]}/{ours.hex()[2:]}"
        assert fsverity_digest(store / payload) == ours


# ---------------------------------------------------------------------------
# enable / measure on this kernel's file systems
# ---------------------------------------------------------------------------


def findmnt_type(path: Path) -> str:
    """The file system type of ``path`` as util-linux's findmnt reports it."""
    tool = shutil.which("findmnt")
    if tool is None:
        pytest.skip("findmnt (util-linux) not found")
    out = subprocess.run(
        [tool, "-n", "-o", "FSTYPE", "--target", str(path)], check=True, capture_output=True
    )
    return out.stdout.decode().split()[-1]


@pytest.fixture
def tmpfs_dir() -> Iterator[Path]:
    """A folder on tmpfs (no fs-verity on any kernel): under /dev/shm."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or findmnt_type(shm) != "tmpfs":
        pytest.skip("/dev/shm is not a tmpfs here")
    folder = Path(tempfile.mkdtemp(prefix="cfspy-verity-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def kernel_config_lacks_fsverity() -> bool:
    try:
        with gzip.open("/proc/config.gz", "rb") as config:
            return b"# CONFIG_FS_VERITY is not set" in config.read()
    except OSError:
        return False


def test_filesystem_type_agrees_with_findmnt(tmp_path: Path, tmpfs_dir: Path) -> None:
    for folder in (tmp_path, tmpfs_dir):
        path = folder / "file"
        path.write_bytes(b"x")
        fd = os.open(path, os.O_RDONLY)
        try:
            assert filesystem_type(fd) == findmnt_type(path)
        finally:
            os.close(fd)


def test_enable_on_tmpfs_says_the_file_system_lacks_fsverity(tmpfs_dir: Path) -> None:
    path = tmpfs_dir / "object"
    path.write_bytes(content(5000))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(LibraryError) as enabled:
            enable_fsverity(fd)
        with pytest.raises(LibraryError) as measured:
            measure_fsverity(fd)
    finally:
        os.close(fd)
    assert enabled.value.errno == errno.ENOTTY
    assert str(enabled.value.strerror) == (
        f"cannot enable fs-verity on {path}: the tmpfs file system does not support fs-verity"
    )
    assert measured.value.errno == errno.ENOTTY
    assert f"{path}" in str(measured.value.strerror)
    assert "tmpfs" in str(measured.value.strerror)


def test_enable_on_the_test_folder_works_or_names_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "object"
    data = content(3 * BLOCK + 5)
    path.write_bytes(data)
    fs = findmnt_type(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            enabled = enable_fsverity(fd)
        except LibraryError as exc:
            assert exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY), exc
            message = str(exc.strerror)
            assert message.startswith(f"cannot enable fs-verity on {path}: ")
            assert f"{fs} file system" in message
            if exc.errno == errno.EOPNOTSUPP and kernel_config_lacks_fsverity():
                assert "CONFIG_FS_VERITY is not set" in message
            # libcomposefs' own call meets the same refusal
            with pytest.raises(LibraryError) as theirs:
                _native.enable_fsverity(fd)
            assert theirs.value.errno == exc.errno
            with pytest.raises(LibraryError) as measured:
                measure_fsverity(fd)
            assert measured.value.errno == errno.ENOTTY
        else:  # a kernel and file system with fs-verity: the live path
            assert enabled is True
            assert enable_fsverity(fd) is False  # EEXIST: already enabled
            assert measure_fsverity(fd) == fsverity_digest(data)
            assert _native.measure_fsverity(fd) == fsverity_digest(data)
    finally:
        os.close(fd)


def test_enable_on_a_pipe_is_refused_with_its_errno() -> None:
    read_fd, write_fd = os.pipe()
    try:
        with pytest.raises(LibraryError) as refused:
            enable_fsverity(read_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert refused.value.errno == errno.ENOTTY
    assert str(refused.value.strerror).startswith("cannot enable fs-verity on pipe:[")


def test_enable_on_a_closed_fd_is_ebadf(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(LibraryError) as refused:
        enable_fsverity(fd)
    assert refused.value.errno == errno.EBADF
    assert isinstance(refused.value, OSError)


# -- the directory scan's batch digests (cfspy_digest_files) ---------------------


def test_digest_files_gives_each_files_digest_and_closes_every_fd(tmp_path: Path) -> None:
    """One native call reads and hashes a batch: each digest equals the pure
    Python one, across the read buffer's boundaries (one read below it, the
    streamed reads from it on), and every fd is closed."""
    buffer = 16 * BLOCK
    sizes = [65, BLOCK, BLOCK + 1, buffer - 1, buffer, buffer + 1, 3 * buffer + 17, 300_001]
    fds = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(size))
        fds.append(os.open(path, os.O_RDONLY))
    digests, stats, errors = _native.digest_files(fds, sizes, bytearray(buffer), 1 << 20)
    for i, size in enumerate(sizes):
        data = (tmp_path / f"f{i}").read_bytes()
        assert digests[32 * i : 32 * i + 32] == fsverity_digest(data), size
        assert list(stats[3 * i : 3 * i + 2]) == [size, size] and errors[i] == 0
        assert stats[3 * i + 2] == (tmp_path / f"f{i}").stat().st_mtime_ns
    for fd in fds:
        with pytest.raises(OSError) as closed:
            os.fstat(fd)
        assert closed.value.errno == errno.EBADF


def test_digest_files_reports_a_short_file_and_a_read_error(tmp_path: Path) -> None:
    """A file shorter or longer than listed gets the count read (the caller
    refuses it); one that cannot be read gets its errno; the others are read."""
    (tmp_path / "short").write_bytes(b"s" * 100)
    (tmp_path / "long").write_bytes(b"l" * 5000)
    (tmp_path / "fine").write_bytes(b"f" * 100)
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # read(2): EISDIR
    fds = [os.open(tmp_path / name, os.O_RDONLY) for name in ("short", "long", "fine")]
    digests, stats, errors = _native.digest_files(
        [*fds, directory], [200, 4000, 100, 4096], bytearray(1024), 0
    )
    assert (stats[0], stats[3], stats[6]) == (100, 5000, 100)
    assert digests[64:96] == fsverity_digest(b"f" * 100)
    assert list(errors) == [0, 0, 0, errno.EISDIR]
