"""Families of hostile inputs that scale with ``n``, and the operations they go through.

A :class:`Family` makes, for shape parameters drawn from its
:attr:`~Family.choices` (by Hypothesis or by the fuzzer's bytes), the input
of scale ``n`` and names the public entry point (:data:`OPERATIONS`) it goes
through, the way an attacker would hand it over: TOC JSON to ``parse_toc``,
dumpfile text to ``parse_dumpfile``, a blob file to ``open_layer(...)``,
image bytes to ``read_image``, an image file to ``mount``.  Doubling ``n``
doubles the work a linear reader does on it; each family says what it
attacks (``attacks``).

Inputs are made in the calling process (pure Python, or the native writer on
a thread with a large stack for deep trees); only the operation runs in the
measuring child (:func:`fuzz.cost.measure`).
"""

from __future__ import annotations

import ctypes
import gzip
import hashlib
import json
import random
import struct
import tarfile
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import zstandard

from fuzz.cost import Judgement, measure_series, root_available

__all__ = ["FAMILIES", "OPERATIONS", "Case", "Family", "Operation", "check", "skip_reason"]

# -- operations (run in the child) -------------------------------------------


def _limits(options: dict[str, Any]) -> Any:
    from composefs_py.limits import Limits

    return Limits(**options.get("limits", {}))


def _op_toc(data: bytes, path: Path, scratch: Path, options: dict[str, Any]) -> None:
    from composefs_py.toc import parse_toc

    parse_toc(data, limits=_limits(options))


def _op_dumpfile(data: bytes, path: Path, scratch: Path, options: dict[str, Any]) -> None:
    from composefs_py.dumpfile import parse_dumpfile

    parse_dumpfile(data, limits=_limits(options))


def _op_layer_tree(data: bytes, path: Path, scratch: Path, options: dict[str, Any]) -> None:
    from composefs_py.layers import open_layer

    open_layer(path, limits=_limits(options)).tree()


def _op_layer_import(data: bytes, path: Path, scratch: Path, options: dict[str, Any]) -> None:
    from composefs_py.layers import open_layer
    from composefs_py.objects import ObjectStore

    store = ObjectStore(scratch / "store", durable=False)
    open_layer(path, limits=_limits(options)).import_objects(store, progress=False)


def _op_read_image(data: bytes, path: Path, scratch: Path, options: dict[str, Any]) -> None:
    from composefs_py.writer import read_image

    read_image(data)


def _op_read_image_dump(data: bytes, path: Path, scratch: Path, options: dict[str, Any]) -> None:
    from composefs_py.dumpfile import dump
    from composefs_py.writer import read_image

    dump(read_image(data))


_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18


def _private_mounts() -> None:
    """A mount namespace of the child's own: whatever it mounts goes when it exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")


def _op_mount_try_verity(data: bytes, path: Path, scratch: Path, options: dict[str, Any]) -> None:
    from composefs_py.mount import mount, unmount

    target = scratch / "mnt"
    objects = scratch / "objects"
    target.mkdir()
    objects.mkdir()
    mount(path, target, objects=objects, try_verity=True)
    unmount(target)


@dataclass(frozen=True, slots=True)
class Operation:
    """A public entry point: ``run(data, path, scratch, options)``."""

    name: str
    run: Callable[[bytes, Path, Path, dict[str, Any]], None]
    #: Modules imported before measuring.
    modules: tuple[str, ...]
    #: Done once in the child before measuring (e.g. a private mount namespace).
    setup: Callable[[], None] | None = None
    #: Needs root and loop devices.
    needs_root: bool = False
    #: May run once in the measuring process, on a family's smallest input,
    #: before counted children are forked from it (:func:`check`); not the
    #: operations that hand the input to libcomposefs or the kernel.
    warms: bool = True

    def prepare(self, *, setup: bool = True) -> None:
        """Import the operation's modules; then its :attr:`setup`, unless ``setup`` is false."""
        import importlib

        for module in self.modules:
            importlib.import_module(module)
        if setup and self.setup is not None:
            self.setup()


_TOC_MODULES = ("composefs_py.toc", "composefs_py.model", "composefs_py._columns")
_LAYER_MODULES = (
    *_TOC_MODULES,
    "composefs_py.layers",
    "composefs_py.layers.tar",
    "composefs_py.layers.zstd_chunked",
    "composefs_py.layers.estargz",
    "composefs_py.objects",
)
_IMAGE_MODULES = ("composefs_py.writer", "composefs_py._native", "composefs_py.dumpfile")

OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("parse_toc", _op_toc, _TOC_MODULES),
        Operation("parse_dumpfile", _op_dumpfile, ("composefs_py.dumpfile",)),
        Operation("layer.tree", _op_layer_tree, _LAYER_MODULES),
        Operation("layer.import_objects", _op_layer_import, _LAYER_MODULES),
        Operation("read_image", _op_read_image, _IMAGE_MODULES, warms=False),
        Operation("read_image+dump", _op_read_image_dump, _IMAGE_MODULES, warms=False),
        Operation(
            "mount(try_verity=True)",
            _op_mount_try_verity,
            (*_IMAGE_MODULES, "composefs_py.mount"),
            setup=_private_mounts,
            needs_root=True,
            warms=False,
        ),
    )
}

# -- families ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """One input and the operation it goes through."""

    data: bytes
    op: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Family:
    """Hostile inputs of one kind, made at any scale ``n``."""

    name: str
    #: What it attacks (a defect class, a limit, a code path).
    attacks: str
    #: Shape parameters: name -> the values it may take (the first is the default).
    choices: dict[str, tuple[Any, ...]]
    make: Callable[[int, dict[str, Any]], Case]
    #: ``n`` of the smallest input in a series (then 2n and 4n).
    scale: int
    #: Wall-clock timeout of one child, in seconds.
    timeout: float = 60.0
    #: ``n`` of the smallest input of a counted series (:mod:`fuzz.cost.fast`);
    #: 0: :attr:`scale` divided by :data:`FAST_DIVISOR`.
    fast: int = 0

    @property
    def fast_scale(self) -> int:
        return self.fast or max(1, self.scale // FAST_DIVISOR)

    def defaults(self) -> dict[str, Any]:
        return {key: values[0] for key, values in self.choices.items()}

    def series(self, params: dict[str, Any], scale: int | None = None) -> list[Case]:
        """The cases at ``n``, ``2n`` and ``4n`` (``n`` = ``scale`` or :attr:`scale`)."""
        n = scale or self.scale
        return [self.make(n * factor, params) for factor in (1, 2, 4)]


#: A counted series is this many times smaller than a timed one, by default.
FAST_DIVISOR = 64


def _toc(entries: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"version": 1, "entries": entries, **extra}).encode()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _rand(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# -- tar helpers -------------------------------------------------------------


_Format = Literal[0, 1, 2]  # tarfile.USTAR_FORMAT, GNU_FORMAT, PAX_FORMAT


def _tar_member(
    info: tarfile.TarInfo, content: bytes = b"", fmt: _Format = tarfile.PAX_FORMAT
) -> bytes:
    info.mtime = 1_700_000_000
    return info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape") + _pad(content)


def _pad(content: bytes) -> bytes:
    return content + bytes(-len(content) % 512)


def _tar_end() -> bytes:
    return bytes(1024)


def _compress(tar: bytes, compression: str) -> bytes:
    if compression == "gz":
        return gzip.compress(tar, mtime=0)
    if compression == "zst":
        return zstandard.ZstdCompressor().compress(tar)
    return tar


def _file(name: str, content: bytes = b"", fmt: _Format = tarfile.PAX_FORMAT) -> bytes:
    """A regular file member with its content."""
    return _tar_member(_reg(name, content), content, fmt)


def _reg(name: str, content: bytes = b"") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = 0o644
    return info


def _link(name: str, target: str, kind: bytes = tarfile.LNKTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.mode = 0o777 if kind == tarfile.SYMTYPE else 0o644
    return info


def _with_checksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    checksum = sum(block[:512])
    block[148:155] = b"%06o\0" % checksum
    return bytes(block)


# -- 1. hardlink chains (resolution walks each chain from its start) -----------


def _chain_links(n: int, shape: str) -> list[tuple[str, str]]:
    """(link, target) pairs; the file is ``f``."""
    if shape == "fan-in":
        half = n // 2
        chain = [(f"l{i}", "f" if i == 1 else f"l{i - 1}") for i in range(1, half + 1)]
        return chain + [(f"m{i}", f"l{half}") for i in range(1, n - half + 1)]
    chain = [(f"l{i}", "f" if i == 1 else f"l{i - 1}") for i in range(1, n + 1)]
    return chain[::-1] if shape == "reverse" else chain


def _make_chain(n: int, params: dict[str, Any]) -> Case:
    links = _chain_links(n, params["shape"])
    via = params["via"]
    if via == "parse_toc":
        entries: list[dict[str, Any]] = [{"type": "reg", "name": "f", "mode": 0o644}]
        entries += [{"type": "hardlink", "name": a, "linkName": b, "mode": 0o644} for a, b in links]
        if params["shape"] == "reverse":
            entries = entries[::-1]
        return Case(_toc(entries), via)
    if via == "parse_dumpfile":
        lines = ["/ 0 40755 2 0 0 0 0.0 - - -", f"/f 0 100644 {n + 1} 0 0 0 0.0 - - -"]
        lines += [f"/{a} 0 @100644 1 0 0 0 0.0 /{b} - -" for a, b in links]
        return Case(("\n".join(lines) + "\n").encode(), via)
    members = [_tar_member(_reg("f"))]
    members += [_tar_member(_link(a, b)) for a, b in links]
    if params["shape"] == "reverse":
        members = members[:1] + members[1:][::-1]
    blob = _compress(b"".join(members) + _tar_end(), "none")
    return Case(blob, via)


HARDLINK_CHAINS = Family(
    "hardlink-chains",
    "hardlink chain resolution (a->b->c..., reversed, fan-in into one chain)",
    {
        "shape": ("forward", "reverse", "fan-in"),
        "via": ("parse_toc", "parse_dumpfile", "layer.tree", "layer.import_objects"),
    },
    _make_chain,
    scale=1500,
)


# -- 2. images whose directories share dirent blocks ----------------------------

_BLOCK = 4096


def _with_big_stack(work: Callable[[], bytes]) -> bytes:
    """Run ``work`` on a thread with 512 MiB of stack (the writer recurses per level)."""
    out: list[bytes] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as exc:
            errors.append(exc)

    previous = threading.stack_size(512 << 20)
    try:
        thread = threading.Thread(target=run, name="cost-image-writer")
        thread.start()
    finally:
        threading.stack_size(previous)
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


def _image(dumpfile: str, version: int, deep: bool = False) -> bytes:
    """The image the native writer makes of ``dumpfile`` (limits lifted for deep trees)."""
    from composefs_py.dumpfile import parse_dumpfile
    from composefs_py.limits import Limits
    from composefs_py.writer import write_image

    limits = Limits(max_depth=1 << 20, max_path_bytes=1 << 24) if deep else Limits()

    def work() -> bytes:
        tree = parse_dumpfile(dumpfile, limits=limits)
        with tempfile.TemporaryFile() as out:
            write_image(tree, out.fileno(), backend="native", max_version=version)
            out.seek(0)
            return out.read()

    return _with_big_stack(work)


class _Image:
    """Just enough EROFS to find and patch directory inodes."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.root_nid = struct.unpack_from("<H", data, 1024 + 14)[0]
        self.meta = struct.unpack_from("<I", data, 1024 + 40)[0] * _BLOCK

    def inode(self, nid: int) -> tuple[int, int, int, int, int]:
        """(offset, extended, size, layout, i_u) of inode ``nid``."""
        off = self.meta + nid * 32
        (i_format,) = struct.unpack_from("<H", self.data, off)
        extended = i_format & 1
        if extended:
            size = struct.unpack_from("<Q", self.data, off + 8)[0]
        else:
            size = struct.unpack_from("<I", self.data, off + 8)[0]
        i_u = struct.unpack_from("<I", self.data, off + 16)[0]
        return off, extended, size, i_format >> 1, i_u

    def tail_start(self, nid: int) -> int:
        off, extended, _size, _layout, _i_u = self.inode(nid)
        icount = struct.unpack_from("<H", self.data, off + 2)[0]
        xattrs = 0 if icount == 0 else 12 + (icount - 1) * 4
        return off + (64 if extended else 32) + xattrs

    def entries(self, nid: int) -> dict[bytes, int]:
        _off, _ext, size, layout, i_u = self.inode(nid)
        tail = size % _BLOCK if layout == 2 else 0
        full = size - tail
        blocks = [(i_u * _BLOCK + b, min(_BLOCK, full - b)) for b in range(0, full, _BLOCK)]
        if tail:
            blocks.append((self.tail_start(nid), tail))
        found: dict[bytes, int] = {}
        for start, length in blocks:
            table = struct.unpack_from("<H", self.data, start + 8)[0]
            raw = [struct.unpack_from("<QHBB", self.data, start + i) for i in range(0, table, 12)]
            for i, (child, nameoff, _ftype, _r) in enumerate(raw):
                end = raw[i + 1][1] if i + 1 < len(raw) else length
                name = bytes(self.data[start + nameoff : start + end]).rstrip(b"\0")
                found[name] = child
        return found

    def set_data(self, nid: int, size: int, i_u: int) -> None:
        off, extended, _size, _layout, _i_u = self.inode(nid)
        if extended:
            struct.pack_into("<Q", self.data, off + 8, size)
        else:
            struct.pack_into("<I", self.data, off + 8, size)
        struct.pack_into("<I", self.data, off + 16, i_u)


def _make_shared_dirents(n: int, params: dict[str, Any]) -> Case:
    """``n`` directories that all read the same blocks of ``n`` hardlinks to one file.

    Directory 0 holds the hardlinks (names before ``.`` in byte order, so its
    full blocks hold nothing else); every other directory holds only ``.``
    and ``..`` inline, and is patched to read directory 0's full blocks
    before its own inline tail.  The image grows with ``n``; what it
    describes grows with ``n * n``.
    """
    dirs, links = n, max(n, 320)
    lines = ["/ 4096 40755 2 0 0 0 0.0 - - -", f"/f 0 100644 {links + 1} 0 0 0 0.0 - - -"]
    for d in range(dirs):
        lines.append(f"/d{d:05d} 4096 40755 2 0 0 0 0.0 - - -")
        if d == 0:
            lines += [f"/d00000/-{i:05d} 0 @100644 1 0 0 0 0.0 /f - -" for i in range(links)]
    image = _Image(_image("\n".join(sorted(lines)) + "\n", params["version"]))
    top = image.entries(image.root_nid)
    _off, _ext, size0, _layout, blk0 = image.inode(top[b"d00000"])
    full = (size0 - 1) // _BLOCK
    for d in range(1, dirs):
        nid = top[b"d%05d" % d]
        _o, _e, size, layout, _u = image.inode(nid)
        if layout != 2 or size >= _BLOCK:  # pragma: no cover - the writer inlines small dirs
            raise RuntimeError(f"directory d{d:05d} is not inline ({layout}, {size} bytes)")
        image.set_data(nid, full * _BLOCK + size, blk0)
    return Case(bytes(image.data), params["via"])


SHARED_DIRENTS = Family(
    "shared-dirents",
    "directories of an image reading the same dirent blocks (entries x directories nodes)",
    {"via": ("read_image", "read_image+dump"), "version": (1, 0)},
    _make_shared_dirents,
    scale=160,
    timeout=90.0,
)


# -- 3. long names and link targets in a compressed tar ---------------------


def _make_long_names(n: int, params: dict[str, Any]) -> Case:
    """16 members whose name (or link target) is ``n`` bytes: the tar compresses to nothing."""
    kind = params["kind"]
    members = []
    for i in range(16):
        long = (f"{i:02d}" + "x" * n)[:n]
        if kind == "gnu-longname":
            member = _tar_member(_reg(long), fmt=tarfile.GNU_FORMAT)
        elif kind == "gnu-longlink":
            member = _tar_member(_link(f"s{i}", long, tarfile.SYMTYPE), fmt=tarfile.GNU_FORMAT)
        elif kind == "pax-path":
            member = _tar_member(_reg(long), fmt=tarfile.PAX_FORMAT)
        else:  # pax-linkpath
            member = _tar_member(_link(f"s{i}", long, tarfile.SYMTYPE), fmt=tarfile.PAX_FORMAT)
        members.append(member)
    blob = _compress(b"".join(members) + _tar_end(), params["compression"])
    return Case(blob, params["via"])


LONG_NAMES = Family(
    "long-names",
    "GNU long-name/long-link members and pax path/linkpath records kept whole",
    {
        "kind": ("gnu-longname", "gnu-longlink", "pax-path", "pax-linkpath"),
        "compression": ("zst", "gz"),
        "via": ("layer.import_objects", "layer.tree"),
    },
    _make_long_names,
    scale=512 << 10,
)


# -- zstd:chunked / eStargz blob builders --------------------------------------

_SKIPPABLE = 0x184D2A50


def _skippable(payload: bytes) -> bytes:
    return struct.pack("<II", _SKIPPABLE, len(payload)) + payload


def _zstd_chunked(data: bytes, entries: list[dict[str, Any]], padding: int) -> bytes:
    """A zstd:chunked blob: ``data`` (frames at the entries' offsets), padding, TOC, footer."""
    from fuzz.seeds import finish_zstd_chunked

    return finish_zstd_chunked(
        data + (_skippable(bytes(padding)) if padding else b""), _toc(entries)
    )


def _estargz(data: bytes, entries: list[dict[str, Any]]) -> bytes:
    """An eStargz blob: ``data`` (gzip members at the entries' offsets), TOC, footer."""
    from fuzz.seeds import finish_estargz

    return finish_estargz(data, _toc(entries))


# -- 4. zstd:chunked without endOffset ------------------------------------------


def _make_no_end_offset(n: int, params: dict[str, Any]) -> Case:
    """``n`` small files without ``endOffset`` and ``n`` units of padding before the TOC."""
    zstd = zstandard.ZstdCompressor()
    out = bytearray()
    entries: list[dict[str, Any]] = []
    for i in range(n):
        content = _rand(i, 256)
        entry: dict[str, Any] = {
            "type": "reg",
            "name": f"f{i}",
            "mode": 0o644,
            "size": len(content),
            "digest": _sha(content),
            "offset": len(out),
        }
        if params["shape"] == "two-chunks":
            entry["chunkSize"] = 128
            out += zstd.compress(content[:128])
            chunk = {
                "type": "chunk",
                "name": f"f{i}",
                "offset": len(out),
                "chunkOffset": 128,
                "chunkSize": 128,
            }
            out += zstd.compress(content[128:])
            entries += [entry, chunk]
        else:
            out += zstd.compress(content)
            entries.append(entry)
    return Case(_zstd_chunked(bytes(out), entries, n * params["unit"]), "layer.import_objects")


NO_END_OFFSET = Family(
    "zstd-chunked-no-endoffset",
    "zstd:chunked files without endOffset read up to the end of the blob",
    {"shape": ("one-frame", "two-chunks"), "unit": (32 << 10, 8 << 10)},
    _make_no_end_offset,
    scale=96,
)


# -- 5. sparse tar members whose declared size scales ---------------------------


def _sparse_gnu(name: str, realsize: int) -> bytes:
    """An old GNU sparse member (type ``S``): one 512-byte data block, ``realsize`` declared."""
    info = _reg(name, bytes(512))
    info.type = tarfile.GNUTYPE_SPARSE
    info.mtime = 1_700_000_000
    block = bytearray(info.tobuf(format=tarfile.GNU_FORMAT)[-512:])
    block[386:398] = b"%011o\0" % 0  # sparse[0].offset
    block[398:410] = b"%011o\0" % 512  # sparse[0].numbytes
    block[482] = 0  # isextended
    block[483:495] = b"%011o\0" % realsize
    return _with_checksum(block) + b"\x01" * 512


def _sparse_pax(name: str, realsize: int, minor: str) -> bytes:
    if minor == "1.0":
        sparse_map = _pad(b"1\n0\n512\n")
        info = _reg(f"GNUSparseFile.0/{name}", sparse_map + b"\x01" * 512)
        info.pax_headers = {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": name,
            "GNU.sparse.realsize": str(realsize),
        }
        return _tar_member(info, sparse_map + b"\x01" * 512)
    info = _reg(f"GNUSparseFile.0/{name}", b"\x01" * 512)
    info.pax_headers = {
        "GNU.sparse.size": str(realsize),
        "GNU.sparse.numblocks": "1",
        "GNU.sparse.map": "0,512",
        "GNU.sparse.name": name,
    }
    return _tar_member(info, b"\x01" * 512)


def _make_sparse(n: int, params: dict[str, Any]) -> Case:
    """One sparse member declaring ``n`` bytes (above ``max_file_size``): the tar stays tiny."""
    if params["format"] == "gnu":
        member = _sparse_gnu("big", n)
    else:
        member = _sparse_pax("big", n, params["format"].removeprefix("pax-"))
    blob = _compress(_file("small", b"x") + member + _tar_end(), params["compression"])
    return Case(blob, params["via"], {"limits": {"max_file_size": 1 << 20}})


SPARSE = Family(
    "sparse-members",
    "sparse tar members whose declared size is written or hashed before the size limit",
    {
        "format": ("gnu", "pax-1.0", "pax-0.1"),
        "compression": ("none", "gz", "zst"),
        "via": ("layer.import_objects", "layer.tree"),
    },
    _make_sparse,
    scale=24 << 20,
    # the declared size, not the input: it stays above max_file_size
    fast=24 << 20,
)


# -- 6. eStargz: n files in one gzip member -------------------------------------


def _make_inner_offset(n: int, params: dict[str, Any]) -> Case:
    """``n`` files of 4 KiB packed into one gzip member, each at its ``innerOffset``."""
    size = 4096
    contents = [_rand(i, size) for i in range(n)]
    start = 0
    member = gzip.compress(b"".join(contents), mtime=0)
    entries: list[dict[str, Any]] = []
    order = list(range(n))
    if params["order"] == "reverse":
        order.reverse()
    for i in order:
        entries.append(
            {
                "type": "reg",
                "name": f"f{i}",
                "mode": 0o644,
                "size": size,
                "digest": _sha(contents[i]),
                "offset": start,
                "innerOffset": i * size,
            }
        )
    return Case(_estargz(member, entries), "layer.import_objects")


INNER_OFFSET = Family(
    "estargz-inner-offset",
    "eStargz files sharing one gzip member re-inflate it from its start",
    {"order": ("forward", "reverse")},
    _make_inner_offset,
    scale=384,
)


# -- 7. nesting -------------------------------------------------------------------


def _deep_dumpfile(depth: int) -> str:
    lines = ["/ 4096 40755 3 0 0 0 0.0 - - -"]
    path = ""
    for _ in range(depth):
        path += "/a"
        lines.append(f"{path} 4096 40755 2 0 0 0 0.0 - - -")
    return "\n".join(lines) + "\n"


def _make_nesting(n: int, params: dict[str, Any]) -> Case:
    """A tree ``n`` directories deep, or ``n / 4`` beyond ``Limits.max_depth``.

    Each series stays on one side of the limit: a refusal and an acceptance
    take different paths, whose costs are not comparable.  The text parsers
    take their limits as options: beyond, their ``max_depth`` is
    :data:`_TEXT_MAX_DEPTH` (a TOC repeats each path in full: 9 MB at the
    default limit); an image is read with the default.
    """
    via = params["via"]
    beyond = params["depth"] == "beyond"
    if via in ("parse_dumpfile", "parse_toc"):
        depth = _TEXT_MAX_DEPTH + n // 4 if beyond else n
        options = {"limits": {"max_depth": _TEXT_MAX_DEPTH}} if beyond else {}
        if via == "parse_dumpfile":
            return Case(_deep_dumpfile(depth).encode(), via, options)
        names = ["a/" * d for d in range(1, depth + 1)]
        entries = [{"type": "dir", "name": name, "mode": 0o755} for name in names]
        return Case(_toc(entries), via, options)
    depth = _MAX_DEPTH + n // 4 if beyond else n
    return Case(_image(_deep_dumpfile(depth), params["version"], deep=True), via)


_MAX_DEPTH = 2048  # Limits().max_depth
_TEXT_MAX_DEPTH = 256

NESTING = Family(
    "nesting",
    "trees n directories deep, up to and beyond Limits.max_depth (recursion per level)",
    {
        "via": ("mount(try_verity=True)", "read_image", "parse_toc", "parse_dumpfile"),
        "depth": ("within", "beyond"),
        "version": (1, 0),
    },
    _make_nesting,
    scale=500,
    fast=128,
)


# -- others: xattrs, duplicates, deep JSON, escapes, long names, chunk rows, pax, frames


def _make_xattrs(n: int, params: dict[str, Any]) -> Case:
    """16 files with ``n`` xattrs each."""
    files = 16
    names = [f"user.k{i:05d}" for i in range(n)]
    via = params["via"]
    if via == "parse_toc":
        xattrs = {name: "QQ==" for name in names}
        entries = [
            {"type": "reg", "name": f"f{i}", "mode": 0o644, "xattrs": xattrs} for i in range(files)
        ]
        return Case(_toc(entries), via)
    if via == "parse_dumpfile":
        tail = " ".join(f"{name}=A" for name in names)
        lines = ["/ 0 40755 2 0 0 0 0.0 - - -"]
        lines += [f"/f{i} 0 100644 1 0 0 0 0.0 - - - {tail}" for i in range(files)]
        return Case(("\n".join(lines) + "\n").encode(), via)
    members = []
    for i in range(files):
        info = _reg(f"f{i}")
        info.pax_headers = {f"SCHILY.xattr.{name}": "A" for name in names}
        members.append(_tar_member(info))
    return Case(b"".join(members) + _tar_end(), via)


XATTRS = Family(
    "many-xattrs",
    "many xattrs per inode (duplicate checks, space accounting)",
    {"via": ("parse_toc", "parse_dumpfile", "layer.tree")},
    _make_xattrs,
    scale=300,
    # a tar pads each header to 512 bytes: fewer xattrs would not grow it;
    # parse_dumpfile takes another path above 64 xattrs an inode (each side
    # linear): a counted series stays above it
    fast=72,
)


def _make_duplicates(n: int, params: dict[str, Any]) -> Case:
    """``n`` repeats of one entry (identical, or the same path with new content)."""
    via = params["via"]
    if via == "parse_toc":
        entry = {"type": "reg", "name": "dir/same", "mode": 0o644}
        return Case(_toc([dict(entry) for _ in range(n)]), via)
    members = [_file("dir/same", str(i).encode()) for i in range(n)]
    return Case(b"".join(members) + _tar_end(), via)


DUPLICATES = Family(
    "duplicates",
    "many repeated identical entries (TOC) or repeated paths (tar: last wins)",
    {"via": ("parse_toc", "layer.import_objects", "layer.tree")},
    _make_duplicates,
    scale=4000,
)


def _make_deep_json(n: int, params: dict[str, Any]) -> Case:
    """A TOC with JSON nested ``n`` deep (in an ignored key, or in place of an entry)."""
    nested = "[" * n + "]" * n if params["kind"] == "arrays" else '{"a":' * n + "1" + "}" * n
    if params["where"] == "unknown-key":
        text = '{"version":1,"entries":[],"x":' + nested + "}"
    else:
        text = '{"version":1,"entries":[' + nested + "]}"
    return Case(text.encode(), "parse_toc")


DEEP_JSON = Family(
    "deep-json",
    "TOC JSON nested far beyond Limits.max_json_depth",
    {"kind": ("arrays", "objects"), "where": ("unknown-key", "entries")},
    _make_deep_json,
    scale=50_000,
)


def _make_escapes(n: int, params: dict[str, Any]) -> Case:
    """A dumpfile with one field of ``n`` ``\\xHH`` escapes (beyond its limit at scale)."""
    escaped = "\\x41" * n
    which = params["field"]
    root = "/ 0 40755 2 0 0 0 0.0 - - -"
    if which == "xattr":
        line = f"/f 0 100644 1 0 0 0 0.0 - - - user.v={escaped}"
    elif which == "content":
        line = f"/f {n} 100644 1 0 0 0 0.0 - {escaped} -"
    elif which == "symlink":
        line = f"/f {n} 120777 1 0 0 0 0.0 {escaped} - -"
    else:  # path
        line = f"/{escaped} 0 100644 1 0 0 0 0.0 - - -"
    return Case(f"{root}\n{line}\n".encode(), "parse_dumpfile")


ESCAPES = Family(
    "dumpfile-escapes",
    "dumpfile fields made of escapes, far beyond their limits",
    {"field": ("xattr", "content", "symlink", "path")},
    _make_escapes,
    scale=200_000,
)


def _make_max_names(n: int, params: dict[str, Any]) -> Case:
    """``n`` files with 255-byte names under 14 directories with 255-byte names."""
    parts = [f"{d:03d}".ljust(255, "d") for d in range(14)]
    names = [f"{i:08d}".ljust(255, "n") for i in range(n)]
    base = "/".join(parts)
    via = params["via"]
    if via == "parse_toc":
        entries: list[dict[str, Any]] = [
            {"type": "reg", "name": f"{base}/{name}", "mode": 0o644} for name in names
        ]
        return Case(_toc(entries), via)
    prefix = base
    if via == "parse_dumpfile":
        lines = ["/ 0 40755 2 0 0 0 0.0 - - -"]
        acc = ""
        for part in prefix.split("/"):
            acc += "/" + part
            lines.append(f"{acc} 0 40755 2 0 0 0 0.0 - - -")
        lines += [f"/{prefix}/{name} 0 100644 1 0 0 0 0.0 - - -" for name in names]
        return Case(("\n".join(lines) + "\n").encode(), via)
    members = [_tar_member(_reg(f"{prefix}/{name}")) for name in names]
    return Case(b"".join(members) + _tar_end(), via)


MAX_NAMES = Family(
    "max-length-names",
    "names at the component limit, paths near the path limit",
    {"via": ("parse_toc", "parse_dumpfile", "layer.tree")},
    _make_max_names,
    scale=1000,
)


def _make_chunk_rows(n: int, params: dict[str, Any]) -> Case:
    """One regular file described by ``n`` chunk rows (through the TOC or a zstd:chunked blob)."""
    zstd = zstandard.ZstdCompressor()
    content = _rand(n, n * 16)
    out = bytearray()
    entries: list[dict[str, Any]] = [
        {"type": "reg", "name": "f", "mode": 0o644, "size": len(content), "digest": _sha(content)}
    ]
    for i in range(n):
        piece = content[i * 16 : (i + 1) * 16]
        row = {
            "offset": len(out),
            "chunkOffset": i * 16,
            "chunkSize": 16,
            "chunkDigest": _sha(piece),
        }
        out += zstd.compress(piece)
        if i == 0:
            entries[0].update(row)
        else:
            entries.append({"type": "chunk", "name": "f", **row})
    if params["via"] == "parse_toc":
        return Case(_toc(entries), "parse_toc")
    return Case(_zstd_chunked(bytes(out), entries, 0), "layer.import_objects")


CHUNK_ROWS = Family(
    "chunk-rows",
    "one file described by many chunk rows",
    {"via": ("parse_toc", "layer.import_objects")},
    _make_chunk_rows,
    scale=3000,
)


def _make_pax(n: int, params: dict[str, Any]) -> Case:
    """A pax header of ``n`` bytes: records of unknown keys, or digits (no record at all)."""
    kind = params["kind"]
    if kind == "records":
        body = b"".join(b"%d x.k%07d=v\n" % (len(b"x.k0000000=v\n") + 3, i) for i in range(n // 16))
    elif kind == "digits":
        body = b"1" * n
    else:  # one huge record of an unknown key
        value = b"v" * n
        record = b" comment=" + value + b"\n"
        length = len(record) + len(str(len(record)))
        length += len(str(length)) - len(str(len(record)))
        body = str(length).encode() + record
    header = _reg("PaxHeaders/f", body)
    header.type = tarfile.XHDTYPE
    blob = _tar_member(header, body, fmt=tarfile.USTAR_FORMAT) + _file("f", b"x")
    return Case(_compress(blob + _tar_end(), params["compression"]), params["via"])


PAX_HEADERS = Family(
    "pax-headers",
    "large pax extended headers: many records, one huge record, bare digits",
    {
        "kind": ("digits", "records", "huge-record"),
        "compression": ("none", "zst"),
        "via": ("layer.tree", "layer.import_objects"),
    },
    _make_pax,
    scale=6000,
)


def _make_frames(n: int, params: dict[str, Any]) -> Case:
    """A tar whose compressed stream is ``n`` tiny frames (zstd) or members (gzip)."""
    tar = b"".join(_file(f"f{i % 64}", b"%d" % i) for i in range(n // 8)) + _tar_end()
    pieces = [tar[i : i + 64] for i in range(0, len(tar), 64)]
    if params["compression"] == "zst":
        zstd = zstandard.ZstdCompressor()
        blob = b"".join(zstd.compress(piece) for piece in pieces)
    else:
        blob = b"".join(gzip.compress(piece, mtime=0) for piece in pieces)
    return Case(blob, params["via"])


FRAMES = Family(
    "compressed-frames",
    "tars split into many zstd frames or gzip members",
    {"compression": ("zst", "gz"), "via": ("layer.tree", "layer.import_objects")},
    _make_frames,
    scale=2000,
)


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        HARDLINK_CHAINS,
        SHARED_DIRENTS,
        LONG_NAMES,
        NO_END_OFFSET,
        SPARSE,
        INNER_OFFSET,
        NESTING,
        XATTRS,
        DUPLICATES,
        DEEP_JSON,
        ESCAPES,
        MAX_NAMES,
        CHUNK_ROWS,
        PAX_HEADERS,
        FRAMES,
    )
}


def skip_reason(case: Case) -> str | None:
    """Why ``case`` cannot be measured on this machine, or None."""
    return root_available() if OPERATIONS[case.op].needs_root else None


#: Inputs of the last counted series, by (family name, shape, n).
_COUNTED_CASES: OrderedDict[tuple[str, tuple[tuple[str, Any], ...], int], list[Case]] = (
    OrderedDict()
)
_COUNTED_KEPT = 128


def _counted_series(family: Family, params: dict[str, Any], n: int) -> list[Case]:
    """A counted series' inputs, kept for the next execution that picks the same case.

    Making an input (an image through the native writer for the deep trees)
    can cost more than counting it; the inputs are a function of the case.
    """
    key = (family.name, tuple(params.items()), n)
    cases = _COUNTED_CASES.pop(key, None) or family.series(params, n)
    _COUNTED_CASES[key] = cases
    while len(_COUNTED_CASES) > _COUNTED_KEPT:
        _COUNTED_CASES.popitem(last=False)
    return cases


#: The (family name, shape) pairs already warmed in this process.
_WARMED: set[tuple[str, tuple[tuple[str, Any], ...]]] = set()


def _warm(family: Family, params: dict[str, Any]) -> None:
    """Run ``family``'s input at ``n = 1`` through its operation here, once per shape.

    Counted children are forked from this process: what the operation does
    once per process (compile a pattern, fill a cache, import lazily) is
    then done before the fork, not again in every child, where it would be
    most of the count at a small scale and cost more than the work itself.
    """
    key = (family.name, tuple(params.items()))
    if key in _WARMED:
        return
    _WARMED.add(key)
    case = family.make(1, params)
    operation = OPERATIONS[case.op]
    if not operation.warms:
        return
    from fuzz.cost import _SCRATCH
    from fuzz.cost._child import run_operation

    operation.prepare(setup=False)
    with tempfile.TemporaryDirectory(prefix="cfspy-warm-", dir=_SCRATCH) as folder:
        path = Path(folder) / "input"
        path.write_bytes(case.data)
        (Path(folder) / "scratch").mkdir()
        run_operation(operation, case.data, path, Path(folder) / "scratch", case.options)


def check(
    family: Family, params: dict[str, Any], scale: int | None = None, *, counted: bool = False
) -> Judgement | str:
    """Measure ``family`` with ``params`` at n, 2n, 4n; a :class:`~fuzz.cost.Judgement`.

    ``counted``: deterministic counters in forked children
    (:func:`fuzz.cost.fast.measure_counts_series`, ``n`` defaults to
    :attr:`Family.fast_scale`); otherwise CPU time, peak memory and bytes
    written in fresh interpreters (:func:`fuzz.cost.measure_series`).
    Returns a string (the reason) instead when the entry point cannot run here.
    """
    if counted:
        cases = _counted_series(family, params, scale or family.fast_scale)
    else:
        cases = family.series(params, scale)
    reason = skip_reason(cases[0])
    if reason is not None:
        return reason
    if counted:
        from fuzz.cost.fast import measure_counts_series

        _warm(family, params)

        return measure_counts_series(
            cases[0].op, [case.data for case in cases], options=cases[0].options
        )
    return measure_series(
        cases[0].op,
        [case.data for case in cases],
        options=cases[0].options,
        timeout=family.timeout,
    )
