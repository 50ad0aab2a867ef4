"""Small, valid seed inputs for the fuzz targets, made from scratch.

The real layers in ``../shared/testdata`` are 1.6 MB each, too big for a seed
corpus; :func:`zstd_chunked_blob` and :func:`estargz_blob` build layers of a
few hundred bytes with the same structure (per-file zstd frames or gzip
members, an embedded TOC, the footer), which the layer readers accept and
whose files import.  :func:`write_corpus` (``python -m fuzz seed``) writes the
seed corpus ``fuzz/corpus/<target>/`` from these and the real TOCs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path

import zstandard

from composefs_py.strategies import real_toc_paths

__all__ = [
    "FILES",
    "estargz_blob",
    "finish_estargz",
    "finish_zstd_chunked",
    "seed_inputs",
    "write_corpus",
    "zstd_chunked_blob",
]

#: The files of the seed layers: name -> content (``None`` for a directory).
FILES: tuple[tuple[str, bytes | None], ...] = (
    ("etc/", None),
    ("etc/hostname", b"fuzz\n"),
    ("etc/empty", b""),
    ("usr/", None),
    ("usr/bin/", None),
    ("usr/bin/tool", b"\x7fELF" + bytes(range(64)) * 4),
)
_SKIPPABLE = 0x184D2A50


def _tar_header(name: str, content: bytes | None) -> bytes:
    info = tarfile.TarInfo(name)
    info.mtime = 1_700_000_000
    if content is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.size = len(content)
        info.mode = 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _pad(content: bytes) -> bytes:
    return content + bytes(-len(content) % 512)


def _entry(name: str, content: bytes | None) -> dict[str, object]:
    entry: dict[str, object] = {
        "type": "dir" if content is None else "reg",
        "name": name,
        "mode": 0o755 if content is None else 0o644,
        "modtime": "2023-11-14T22:13:20Z",
    }
    if content:
        entry["size"] = len(content)
        entry["digest"] = "sha256:" + hashlib.sha256(content).hexdigest()
    return entry


def _skippable(payload: bytes) -> bytes:
    return struct.pack("<II", _SKIPPABLE, len(payload)) + payload


def zstd_chunked_blob() -> bytes:
    """A zstd:chunked layer of :data:`FILES` (each file's data its own frame)."""
    zstd = zstandard.ZstdCompressor()
    out = bytearray()
    entries = []
    for name, content in FILES:
        out += zstd.compress(_tar_header(name, content))
        entry = _entry(name, content)
        if content:
            entry["offset"] = len(out)
            out += zstd.compress(_pad(content))
            entry["endOffset"] = len(out)
        entries.append(entry)
    out += zstd.compress(bytes(1024))
    return finish_zstd_chunked(out, json.dumps({"version": 1, "entries": entries}).encode())


def finish_zstd_chunked(data: bytes | bytearray, toc: bytes) -> bytes:
    """``data`` (the frames) followed by the TOC, tar-split and footer skippable frames."""
    zstd = zstandard.ZstdCompressor()
    out = bytearray(data)
    compressed_toc = zstd.compress(toc)
    toc_offset = len(out) + 8
    out += _skippable(compressed_toc)
    tar_split = zstd.compress(b'{"type":2,"payload":"","position":0}\n')
    split_offset = len(out) + 8
    out += _skippable(tar_split)
    footer = struct.pack(
        "<7Q8s",
        toc_offset,
        len(compressed_toc),
        len(toc),
        1,
        split_offset,
        len(tar_split),
        38,
        b"GNUlInUx",
    )
    out += _skippable(footer)
    return bytes(out)


def _gzip_member(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def estargz_blob() -> bytes:
    """An eStargz layer of :data:`FILES` (each file's data its own gzip member)."""
    out = bytearray()
    entries = []
    for name, content in FILES:
        out += _gzip_member(_tar_header(name, content))
        entry = _entry(name, content)
        if content is not None and content:
            entry["offset"] = len(out)
            entry["chunkDigest"] = entry["digest"]
            out += _gzip_member(_pad(content))
        elif content is not None:
            entry["digest"] = "sha256:" + hashlib.sha256(b"").hexdigest()
        entries.append(entry)
    return finish_estargz(out, json.dumps({"version": 1, "entries": entries}).encode())


def finish_estargz(data: bytes | bytearray, toc: bytes) -> bytes:
    """``data`` (the gzip members) followed by the TOC member and the 51-byte footer."""
    toc_offset = len(data)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("stargz.index.json")
        info.size = len(toc)
        tar.addfile(info, io.BytesIO(toc))
    out = bytes(data) + _gzip_member(buf.getvalue())
    extra = b"SG" + struct.pack("<H", 22) + b"%016x" % toc_offset + b"STARGZ"
    footer = (
        b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
        + struct.pack("<H", len(extra))
        + extra
        + b"\x01\x00\x00\xff\xff"  # an empty stored deflate block
        + struct.pack("<II", 0, 0)
    )
    assert len(footer) == 51, len(footer)
    return out + footer


_SAMPLE_DUMP = (
    "/ 4096 40755 3 0 0 0 1700000000.0 - - - user.a=1\n"
    "/dir 4096 40755 2 1000 1000 0 1.999999999 - - - trusted.overlay.opaque=y\n"
    "/dir/dev 0 20600 1 0 6 259 0.0 - - -\n"
    "/dir/fifo 0 10644 1 0 0 0 0.0 - - -\n"
    "/dir/inline 5 100644 2 0 0 0 0.0 - hello -\n"
    "/dir/link 5 @100644 2 0 0 0 0.0 /dir/inline - -\n"
    "/dir/sym 6 120777 1 0 0 0 0.0 ../a\\x20b - -\n"
    "/file 1048576 104755 1 0 0 0 0.0"
    " ab/cdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789 -"
    " 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    " security.capability=\\x01\\x00\n"
    "/white 0 20000 1 0 0 0 0.0 - - -\n"
)


def _rich_dump() -> str:
    """A dumpfile whose image uses every structure the image loader reads.

    Extended and compact inodes, a directory of several blocks, inline and
    out-of-line file content and symlink targets, shared and inline xattrs
    (ACLs, an escaped overlay xattr), hardlinks, a chunk-based file with a
    payload and digest, devices, a fifo, a whiteout.
    """
    digest = "0123456789abcdef" * 4
    lines = [
        "/ 4096 40755 4 0 0 0 1700000000.0 - - - user.a=1",
        "/big 8192 40700 2 70000 70000 0 1700000001.5 - - -",
        "/big/ext 3 100600 1 70000 0 0 5.5 - abc - user.shared=same",
        f"/file 3000000 100644 1 0 0 0 0.0 ab/{digest[2:]} - {digest}"
        " security.capability=\\x01\\x00 user.shared=same",
        "/inline 4100 100644 2 0 0 0 0.0 - " + "x" * 4100 + " - user.shared=same",
        "/hard 4100 @100644 2 0 0 0 0.0 /inline - -",
        "/outside 3000 100644 1 0 0 0 0.0 - " + "y" * 3000 + " -",
        "/acl 0 100644 1 0 0 0 0.0 - - -"
        " system.posix_acl_access=\\x02\\x00\\x00\\x00\\x01\\x00\\x06\\x00"
        "\\xff\\xff\\xff\\xff\\x04\\x00\\x04\\x00\\xff\\xff\\xff\\xff"
        "\\x20\\x00\\x04\\x00\\xff\\xff\\xff\\xff",
        "/opaque 4096 40755 2 0 0 0 0.0 - - - trusted.overlay.opaque=y",
        "/opaque/white 0 20000 1 0 0 0 0.0 - - -",
        "/sym 6 120777 1 0 0 0 0.0 target - -",
        "/longsym 4000 120777 1 0 0 0 0.0 " + "s" * 4000 + " - - user.pad=" + "p" * 200,
        "/blk 0 60660 1 0 6 2049 0.0 - - -",
        "/fifo 0 10644 1 0 0 0 0.0 - - -",
    ]
    lines += [f"/big/entry-{i:04d}-padding-name 0 100644 1 0 0 0 0.0 - - -" for i in range(160)]
    return "\n".join(sorted(lines)) + "\n"


def seed_inputs() -> Iterator[tuple[str, str, bytes]]:
    """``(target, file_name, data)`` for every seed of every target."""
    # the differential targets start from their single-sided target's seeds
    for target in ("toc", "toc_diff"):
        for path in real_toc_paths():
            yield target, path.name, path.read_bytes()
        yield target, "minimal.json", b'{"version":1,"entries":[]}'
    for target in ("dumpfile", "dumpfile_diff"):
        yield target, "sample.dump", _SAMPLE_DUMP.encode()
        yield target, "root-only.dump", b"/ 0 40755 2 0 0 0 0.0 - - -\n"
    yield "writer", "sample.dump", _SAMPLE_DUMP.encode()
    yield "layer", "mini.zstd-chunked", zstd_chunked_blob()
    yield "layer", "mini.estargz", estargz_blob()
    from fuzz.cost.families import FAMILIES

    for index, family in enumerate(FAMILIES.values()):
        # one byte picks the family, then one per shape parameter and the scale
        yield "cost", f"{family.name}.bin", bytes([index]) + bytes(len(family.choices) + 1)
    from composefs_py.dumpfile import parse_dumpfile
    from composefs_py.writer import write_image

    for name, text in (("sample", _SAMPLE_DUMP), ("rich", _rich_dump())):
        for version in (0, 1):
            out = io.BytesIO()
            tree = parse_dumpfile(text)
            import tempfile

            with tempfile.TemporaryFile() as tmp:
                write_image(tree, tmp.fileno(), backend="native", max_version=version)
                tmp.seek(0)
                out.write(tmp.read())
            yield "reader", f"{name}-v{version}.cfs", out.getvalue()


def write_corpus(root: Path) -> list[Path]:
    """Write the seed corpus under ``root/<target>/``; return the files written."""
    written = []
    for target, name, data in seed_inputs():
        folder = root / target
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        written.append(folder / name)
    return written
