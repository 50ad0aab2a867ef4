"""Deterministic, realistic benchmark inputs.

``toc_json(n)`` makes a containers/storage TOC with ``n`` entries shaped like
a root filesystem: about 85% regular files, 8% symlinks, 7% directories,
some hardlinks, some xattrs, nanosecond mtimes, a few non-root owners.

``zstd_chunked_layer(n_files, dest)`` writes a real zstd:chunked blob
(every tar header and every file payload its own zstd frame, the TOC and an
empty tar-split in skippable frames, the 64-byte footer), which
``zstd -dc`` turns back into a plain tar.  Same seed, same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import struct
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

_WORDS = [
    "import",
    "def",
    "class",
    "return",
    "self",
    "value",
    "None",
    "for",
    "in",
    "if",
    "else",
    "while",
    "yield",
    "from",
    "with",
    "lambda",
    "try",
    "except",
    "raise",
    "assert",
    "pass",
    "break",
    "continue",
    "global",
    "nonlocal",
    "and",
    "or",
    "not",
    "is",
    "static",
    "const",
    "int",
    "char",
    "void",
    "struct",
    "include",
    "define",
    "ifdef",
    "endif",
    "unsigned",
    "long",
    "size_t",
    "usr",
    "lib",
    "share",
    "bin",
    "etc",
    "var",
    "locale",
    "doc",
    "man",
    "python3",
    "perl",
    "gnu",
    "linux",
    "x86_64",
    "config",
    "data",
]
_TOP = ("usr", "etc", "var", "opt", "srv", "lib")
_SUB = ("bin", "lib", "share", "include", "libexec", "local", "doc", "man", "locale", "python3")
_EXT = (".py", ".so", ".h", ".txt", ".json", ".mo", ".gz", "", ".conf", ".pyc")


@dataclass(frozen=True, slots=True)
class Spec:
    """One entry of a generated tree (a TOC-neutral description)."""

    kind: str  # "dir", "reg", "symlink", "hardlink"
    name: str  # tar-style relative path; directories end in "/"
    mode: int
    uid: int
    gid: int
    mtime: str
    size: int = 0
    digest: str | None = None
    link: str | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()


def _mtime(rng: random.Random) -> str:
    sec = 1_600_000_000 + rng.randrange(100_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{rng.randrange(10**9):09d}Z"


def tree_specs(n: int, *, seed: int = 1) -> list[Spec]:
    """Return ``n`` entries of a rootfs-like tree, parents before children."""
    rng = random.Random(seed)
    dirs: list[str] = []
    files: list[str] = []
    specs: list[Spec] = []
    for top in _TOP:
        dirs.append(top + "/")
        specs.append(Spec("dir", top + "/", 0o755, 0, 0, _mtime(rng)))
    counter = 0
    while len(specs) < n:
        roll = rng.random()
        parent = (
            dirs[min(len(dirs) - 1, int(rng.paretovariate(1.2)) - 1)]
            if rng.random() < 0.3
            else rng.choice(dirs)
        )
        counter += 1
        if roll < 0.07 and parent.count("/") < 9:
            name = f"{parent}{rng.choice(_SUB)}{counter}/"
            dirs.append(name)
            specs.append(Spec("dir", name, 0o755, 0, 0, _mtime(rng)))
            continue
        base = f"{parent}{rng.choice(_WORDS)}_{counter}{rng.choice(_EXT)}"
        if roll < 0.15 and files:
            specs.append(
                Spec(
                    "symlink",
                    base,
                    0o777,
                    0,
                    0,
                    _mtime(rng),
                    link="../" + rng.choice(files).rsplit("/", 1)[-1],
                )
            )
            continue
        if roll < 0.16 and files:
            specs.append(Spec("hardlink", base, 0o644, 0, 0, _mtime(rng), link=rng.choice(files)))
            continue
        size = 0 if rng.random() < 0.03 else min(int(rng.lognormvariate(8.0, 1.6)), 4 << 20)
        digest = hashlib.sha256(f"{seed}:{counter}:{size}".encode()).hexdigest() if size else None
        owner = 1000 if rng.random() < 0.02 else 0
        xattrs: tuple[tuple[str, bytes], ...] = ()
        if rng.random() < 0.02:
            xattrs = (("user.mime_type", b"text/plain"),)
        if rng.random() < 0.005:
            xattrs = (("security.capability", bytes(20)),)
        mode = rng.choice((0o644, 0o644, 0o644, 0o755, 0o600, 0o4755 if owner == 0 else 0o644))
        files.append(base)
        specs.append(
            Spec("reg", base, mode, owner, owner, _mtime(rng), size, digest, xattrs=xattrs)
        )
    return specs


def toc_json(n: int, *, seed: int = 1) -> bytes:
    """A zstd:chunked-style TOC (JSON bytes) with ``n`` entries."""
    entries: list[dict[str, object]] = []
    offset = 0
    for spec in tree_specs(n, seed=seed):
        entry: dict[str, object] = {"type": spec.kind, "name": spec.name, "mode": spec.mode}
        if spec.uid:
            entry["uid"] = spec.uid
            entry["gid"] = spec.gid
        if spec.kind == "reg" and spec.size:
            entry["size"] = spec.size
        entry["modtime"] = spec.mtime
        entry["accesstime"] = spec.mtime
        entry["changetime"] = spec.mtime
        if spec.link is not None:
            entry["linkName"] = spec.link
        if spec.digest:
            entry["digest"] = "sha256:" + spec.digest
            entry["offset"] = offset
            offset += spec.size // 3 + 64
            entry["endOffset"] = offset
        if spec.xattrs:
            entry["xattrs"] = {k: base64.b64encode(v).decode() for k, v in spec.xattrs}
        entries.append(entry)
    return json.dumps({"version": 1, "entries": entries}, separators=(",", ":")).encode()


# -- a real zstd:chunked blob ------------------------------------------------

_SKIPPABLE = 0x184D2A50
_FOOTER_MAGIC = b"GNUlInUx"


def _content(rng: random.Random, size: int) -> bytes:
    words = rng.choices(_WORDS, k=size // 5 + 1)
    return " ".join(words).encode()[:size].ljust(size, b"\n")


def _skippable(payload: bytes) -> bytes:
    return struct.pack("<II", _SKIPPABLE, len(payload)) + payload


def _file_specs(n_files: int, seed: int) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    rng = random.Random(seed)
    dirs = ["usr/", "usr/lib/", "usr/share/", "etc/"]
    for name in dirs:
        info = tarfile.TarInfo(name.rstrip("/"))
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        info.mtime = 1_700_000_000
        yield info, b""
    made = 0
    while made < n_files:
        if rng.random() < 0.05:
            name = f"{rng.choice(dirs)}{rng.choice(_SUB)}{len(dirs)}/"
            dirs.append(name)
            info = tarfile.TarInfo(name.rstrip("/"))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = 1_700_000_000
            yield info, b""
            continue
        made += 1
        size = min(int(rng.lognormvariate(7.5, 1.5)), 1 << 20)
        info = tarfile.TarInfo(f"{rng.choice(dirs)}{rng.choice(_WORDS)}_{made}{rng.choice(_EXT)}")
        info.size = size
        info.mode = 0o644
        info.mtime = 1_700_000_000 + made
        yield info, _content(rng, size)


def zstd_chunked_layer(n_files: int, dest: Path, *, seed: int = 7) -> Path:
    """Write a zstd:chunked layer of ``n_files`` regular files to ``dest``."""
    cctx = zstandard.ZstdCompressor(level=3)
    out = io.BytesIO()
    entries: list[dict[str, object]] = []
    for info, data in _file_specs(n_files, seed):
        header = info.tobuf(format=tarfile.PAX_FORMAT)
        out.write(cctx.compress(header))
        name = info.name + ("/" if info.isdir() else "")
        entry: dict[str, object] = {
            "type": "dir" if info.isdir() else "reg",
            "name": name,
            "mode": info.mode,
            "modtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.mtime)),
        }
        if data:
            start = out.tell()
            padding = b"\0" * (-len(data) % 512)
            out.write(cctx.compress(data))
            end = out.tell()
            if padding:
                out.write(cctx.compress(padding))
            entry.update(
                size=len(data),
                digest="sha256:" + hashlib.sha256(data).hexdigest(),
                offset=start,
                endOffset=end,
            )
        entries.append(entry)
    out.write(cctx.compress(b"\0" * 1024))  # end-of-archive blocks
    toc = cctx.compress(json.dumps({"version": 1, "entries": entries}).encode())
    toc_offset = out.tell() + 8
    out.write(_skippable(toc))
    tar_split = cctx.compress(b"")
    split_offset = out.tell() + 8
    out.write(_skippable(tar_split))
    footer = (
        struct.pack(
            "<QQQQQQQ",
            toc_offset,
            len(toc),
            len(zstandard.ZstdDecompressor().decompress(toc)),
            1,
            split_offset,
            len(tar_split),
            0,
        )
        + _FOOTER_MAGIC
    )
    out.write(_skippable(footer))
    dest.write_bytes(out.getvalue())
    return dest
