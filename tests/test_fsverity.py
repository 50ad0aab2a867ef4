"""Tests of composefs_py.fsverity: the pure-Python digest against libcomposefs."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from composefs_py import _native
from composefs_py.errors import LibraryError
from composefs_py.fsverity import FsverityHasher, enable_fsverity, fsverity_digest, measure_fsverity

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
