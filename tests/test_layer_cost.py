"""What hostile layers cost the readers: time, memory, bytes read and written.

Each family of hostile layer is made at two sizes, n and 2n (files,
members, padding bytes, name lengths, declared sizes), and imported in a
forked child with ``RLIMIT_AS`` and a timeout, which reports its CPU time,
its peak RSS above what it held when it started, and the bytes it read and
wrote (``/proc/self/io``: ``rchar``, ``wchar``).  A linear reader costs
about twice as much for twice the input; a limit checked before the memory
or the write it bounds makes the cost of a refused input independent of
what lies beyond the limit.  Ratios only, never absolute times.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from cost import MiB, assert_flat, assert_linear, measure
from test_layers import (
    SPARSE_FORMATS,
    make_estargz_with_inner_offsets,
    pax_member,
    rebuild_zstd_chunked,
    skippable,
    sparse_tar,
    tar_end,
    tar_member,
    zero_chunk_blob,
    zstd_chunked_blob,
)

from composefs_py.errors import ValidationError
from composefs_py.layers import open_layer
from composefs_py.limits import Limits
from composefs_py.objects import ObjectStore


def importer(path: Path, store: Path, limits: Limits | None = None) -> Callable[[], str]:
    def work() -> str:
        # a store of its own for each run (each is a child with its own pid)
        tree = open_layer(path, limits=limits).import_objects(
            ObjectStore(store / str(os.getpid())), progress=False, limits=limits
        )
        return f"{sum(1 for _ in tree)} nodes"

    return work


# -- zstd:chunked: a file's range is bounded by the next entry ------------------


def padded_files(count: int, padding: int, *, tail: int = 0) -> bytes:
    """``count`` files without ``endOffset``, each followed by ``padding`` bytes
    of skippable frame, and ``tail`` bytes of them after the last."""
    compressor = zstandard.ZstdCompressor(level=1)
    data = bytearray(compressor.compress(bytes(512)))
    entries: list[dict[str, object]] = []
    for index in range(count):
        content = (f"file {index}\n" * 40).encode()
        entries.append(
            {
                "type": "reg",
                "name": f"f{index}",
                "mode": 0o644,
                "size": len(content),
                "digest": "sha256:" + hashlib.sha256(content).hexdigest(),
                "offset": len(data),
            }
        )
        data += compressor.compress(content)
        data += skippable(bytes(padding))
    if tail:
        data += skippable(bytes(tail))
    return zstd_chunked_blob(bytes(data), entries)


def test_zstd_chunked_without_end_offset_reads_each_range_once(tmp_path: Path) -> None:
    costs = []
    for count in (60, 120):
        path = tmp_path / f"padded-{count}.blob"
        path.write_bytes(padded_files(count, 64 << 10))
        costs.append(measure(importer(path, tmp_path / f"objects-{count}")))
    small, big = costs
    assert small.outcome.startswith("ok") and big.outcome.startswith("ok"), costs
    assert_linear(small, big, what="files x padding")
    assert big.read <= 2 * (tmp_path / "padded-120.blob").stat().st_size


def test_zstd_chunked_padding_after_the_files_is_never_read(tmp_path: Path) -> None:
    costs = []
    for tail in (16 * MiB, 32 * MiB):
        path = tmp_path / f"tail-{tail}.blob"
        path.write_bytes(padded_files(100, 0, tail=tail))
        costs.append(measure(importer(path, tmp_path / f"objects-{tail}")))
    small, big = costs
    assert small.outcome.startswith("ok") and big.outcome.startswith("ok"), costs
    assert_flat(small, big, what="padding before the TOC")


# -- eStargz: members shared through innerOffset are inflated once ----------------


def test_estargz_shared_member_inflated_once(tmp_path: Path) -> None:
    costs = []
    for count in (300, 600):
        path = tmp_path / f"shared-{count}.blob"
        path.write_bytes(
            make_estargz_with_inner_offsets(
                {f"f{i}": (f"line {i}\n" * 100).encode() for i in range(count)}
            )
        )
        costs.append(measure(importer(path, tmp_path / f"objects-{count}")))
    small, big = costs
    assert (small.outcome, big.outcome) == ("ok: 301 nodes", "ok: 601 nodes"), costs
    assert_linear(small, big, what="files in one member")


# -- compressed TOCs: memory follows the data, not what a header declares ---------


def test_zstd_chunked_toc_declared_length_allocates_nothing(tmp_path: Path) -> None:
    toc = json.dumps({"version": 1, "entries": [{"type": "dir", "name": "d"}]}).encode()
    blob = zstd_chunked_blob(zstandard.ZstdCompressor().compress(bytes(512)), [])
    costs = []
    for declared in (128 * MiB, 256 * MiB):
        forged = rebuild_zstd_chunked(blob, toc, uncompressed_length=declared)
        path = tmp_path / f"toc-{declared}.blob"
        path.write_bytes(forged)
        costs.append(measure(importer(path, tmp_path / "objects"), memory=200 * MiB))
    small, big = costs
    assert "decompresses to only" in small.outcome and "decompresses to only" in big.outcome, costs
    assert_flat(small, big, what="declared TOC length")


# -- tar: names, pax records and sparse maps checked as they are read ---------------


def tar_zst(members: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(members + tar_end())


def long_name_members(kind: str, count: int, length: int) -> bytes:
    """``count`` files, each with a name or link target of ``length`` bytes."""
    out = bytearray()
    for index in range(count):
        text = b"%d" % index + b"n" * (length - 8)
        if kind in ("L", "K"):
            out += tar_member(b"././@LongLink", text + b"\0", kind=kind.encode())
        else:
            out += pax_member({b"path" if kind == "pax-path" else b"linkpath": text})
        link = kind in ("K", "pax-linkpath")
        out += tar_member(b"f%d" % index, kind=b"2" if link else b"0")
    return bytes(out)


@pytest.mark.parametrize("kind", ["L", "K", "pax-path", "pax-linkpath"])
def test_tar_long_names_refused_as_read(tmp_path: Path, kind: str) -> None:
    costs = []
    for count in (8, 16):
        path = tmp_path / f"long-{count}.tar.zst"
        path.write_bytes(tar_zst(long_name_members(kind, count, 2 * MiB)))
        costs.append(measure(importer(path, tmp_path / f"objects-{count}")))
    small, big = costs
    assert small.outcome.startswith("refused") and big.outcome.startswith("refused"), costs
    assert_flat(small, big, what=f"{kind} names of 2 MiB")


def many_paths(count: int) -> bytes:
    """``count`` files with distinct 4000-byte pax paths (each within the path limit)."""
    out = bytearray()
    for index in range(count):
        name = (b"%06d/" % index) * 571 + b"f"
        out += pax_member({b"path": name[:3999] + b"f"}) + tar_member(b"f")
    return bytes(out)


def many_xattrs(count: int) -> bytes:
    """``count`` files with 16 KiB of xattrs each (within the per-inode space)."""
    out = bytearray()
    for index in range(count):
        value = (b"%08d" % index) * 2048
        out += pax_member({b"SCHILY.xattr.user.big": value}) + tar_member(b"f%d" % index)
    return bytes(out)


@pytest.mark.parametrize(
    ("make", "limits"),
    [
        (many_paths, Limits(max_total_path_bytes=MiB)),
        (many_xattrs, Limits(max_input_bytes=MiB)),
        (lambda count: long_name_members("L", count, 3000), Limits(max_entries=100)),
    ],
    ids=["total-path-bytes", "toc-bytes", "entries"],
)
def test_tar_running_totals_refuse_early(
    tmp_path: Path, make: Callable[[int], bytes], limits: Limits
) -> None:
    costs = []
    for count in (1500, 3000):
        path = tmp_path / f"many-{count}.tar"
        path.write_bytes(make(count) + tar_end())
        costs.append(measure(importer(path, tmp_path / f"objects-{count}", limits)))
    small, big = costs
    assert small.outcome.startswith("refused") and big.outcome.startswith("refused"), costs
    assert_flat(small, big, what="members beyond a running limit")


def global_keys_then_files(count: int) -> bytes:
    """A global pax header of ``20 * count`` records, then ``count`` files."""
    records = {b"k%06d" % index: b"v" for index in range(20 * count)}
    out = bytearray(pax_member(records, kind=b"g"))
    for index in range(count):
        out += tar_member(b"f%d" % index, b"x")
    return bytes(out)


def repeated_extended_headers(count: int) -> bytes:
    return pax_member({b"path": b"a"}) * count + tar_member(b"f")


@pytest.mark.parametrize(
    "make",
    [global_keys_then_files, repeated_extended_headers],
    ids=["global-header-kept-by-each-member", "extended-headers-in-a-row"],
)
def test_tar_extended_headers_cost_linear(tmp_path: Path, make: Callable[[int], bytes]) -> None:
    costs = []
    for count in (300, 600):
        path = tmp_path / f"extended-{count}.tar"
        path.write_bytes(make(count) + tar_end())
        costs.append(measure(importer(path, tmp_path / f"objects-{count}")))
    small, big = costs
    assert not small.outcome.startswith(("RecursionError", "MemoryError", "timeout")), costs
    assert_linear(small, big, what="extended headers")


@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
def test_tar_sparse_bomb_refused_before_writing(tmp_path: Path, fmt: str) -> None:
    costs = []
    for real_size in (16 * MiB, 32 * MiB):
        path = tmp_path / f"sparse-{real_size}.tar"
        path.write_bytes(sparse_tar(fmt, real_size, [(real_size - 512, b"z" * 512)]))
        limits = Limits(max_file_size=MiB)
        costs.append(measure(importer(path, tmp_path / f"objects-{real_size}", limits)))
    small, big = costs
    assert "max_file_size" in small.outcome and "max_file_size" in big.outcome, costs
    assert small.written < MiB and big.written < MiB, costs


@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
def test_tar_sparse_holes_are_bounded_by_the_blob(tmp_path: Path, fmt: str) -> None:
    # A few KB declaring 2 or 4 GiB of holes: under the default limits the
    # holes may add up to max_hole_ratio times the blob, so both are refused
    # from the sparse map, and nothing is hashed or written.
    costs = []
    for real_size in (2 << 30, 4 << 30):
        path = tmp_path / f"holes-{real_size}.tar"
        path.write_bytes(sparse_tar(fmt, real_size, [(real_size - 512, b"z" * 512)]))
        costs.append(measure(importer(path, tmp_path / f"objects-{real_size}"), timeout=30))
    small, big = costs
    assert "max_hole_ratio" in small.outcome and "max_hole_ratio" in big.outcome, costs
    assert_flat(small, big, what="sparse holes")
    assert small.cpu < 5 and big.cpu < 5, costs  # refused before hashing, not after


def test_tar_sparse_holes_within_the_ratio_are_taken(tmp_path: Path) -> None:
    real_size = 4 * MiB
    data = sparse_tar("pax-1.0", real_size, [(real_size - 512, b"z" * 512)])
    path = tmp_path / "holes.tar"
    path.write_bytes(data)
    assert real_size < Limits().max_hole_ratio * len(data)
    tree = open_layer(path).import_objects(ObjectStore(tmp_path / "objects"), progress=False)
    assert tree.inode(b"/s").size == real_size
    tight = Limits(max_hole_ratio=real_size // len(data) - 1)
    with pytest.raises(ValidationError, match="max_hole_ratio") as info:
        open_layer(path, limits=tight).import_objects(
            ObjectStore(tmp_path / "objects2"), progress=False, limits=tight
        )
    assert (info.value.path, info.value.field) == ("s", "sparse")


def test_zstd_chunked_zeros_are_bounded_by_the_blob(tmp_path: Path) -> None:
    costs = []
    for hole in (16 << 30, 32 << 30):
        blob, _ = zero_chunk_blob(end_offset=False, hole_size=hole, lazy_hole=True)
        path = tmp_path / f"zeros-{hole}.blob"
        path.write_bytes(blob)
        costs.append(measure(importer(path, tmp_path / f"objects-{hole}"), timeout=30))
    small, big = costs
    assert "max_hole_ratio" in small.outcome and "max_hole_ratio" in big.outcome, costs
    assert "chunkType" in small.outcome, costs
    assert_flat(small, big, what="zeros chunks")
    assert small.cpu < 5 and big.cpu < 5, costs


@pytest.mark.parametrize("fmt", ["gnu", "pax-0.0", "pax-1.0"])
def test_tar_sparse_map_cost_linear(tmp_path: Path, fmt: str) -> None:
    costs = []
    for count in (2000, 4000):
        path = tmp_path / f"map-{count}.tar"
        path.write_bytes(sparse_tar(fmt, 1024 * count, [(1024 * i, b"d") for i in range(count)]))
        costs.append(measure(importer(path, tmp_path / f"objects-{count}")))
    small, big = costs
    assert small.outcome == big.outcome == "ok: 3 nodes", costs
    assert_linear(small, big, what="sparse map entries")
