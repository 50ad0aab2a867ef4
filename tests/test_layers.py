"""Layer readers against the real layers in ../shared/testdata.

The blobs were made by skopeo (zstd:chunked), containerd's estargz library
(eStargz) and GNU tar (small.tar); see ../shared/testdata/README.md.  The
oracle for every tree is small.tar itself, read here with ``tarfile``.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composefs_py._progress import Progress
from composefs_py.errors import ValidationError
from composefs_py.layers import open_layer, sniff_format
from composefs_py.layers.tar import TarLayer
from composefs_py.limits import Limits
from composefs_py.model import Hardlink, Inode, Tree
from composefs_py.objects import ObjectStore

TESTDATA = Path(__file__).resolve().parent / "data" / "layers"
TAR = "small.tar"
ZSTD_CHUNKED = "small.zstd-chunked.blob"
ESTARGZ = "small.estargz.blob"
ESTARGZ_CHUNKED = "small.estargz-chunk256k.blob"
BLOBS = {
    TAR: "tar",
    ZSTD_CHUNKED: "zstd:chunked",
    ESTARGZ: "estargz",
    ESTARGZ_CHUNKED: "estargz",
}
OPAQUE = (b"trusted.overlay.opaque", b"y")
#: Sparse tar members: GNU's old "S" type and the pax sparse formats.
SPARSE_FORMATS = ["gnu", "pax-0.0", "pax-0.1", "pax-1.0"]


def shared(name: str) -> Path:
    path = TESTDATA / name
    if not path.exists():
        pytest.skip(
            f"{path} is absent (the shared test layers are not checked out beside the repo)"
        )
    return path


def sha256_payload(data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    return f"{digest[:2]}/{digest[2:]}".encode()


def payloads_of(tree: Tree) -> set[bytes]:
    return {
        node.payload for _, node in tree if isinstance(node, Inode) and node.payload is not None
    }


def store_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def assert_store_clean(root: Path) -> None:
    """Every file in the store is an object whose sha256 is its name; no temp files."""
    for path in store_files(root):
        name = path.relative_to(root).as_posix().encode()
        assert sha256_payload(path.read_bytes()) == name, name


def write_blob(tmp_path: Path, data: bytes, name: str = "layer.blob") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- the oracle: small.tar read with tarfile ----------------------------------


def tar_members() -> dict[bytes, tuple[tarfile.TarInfo, bytes | None]]:
    result: dict[bytes, tuple[tarfile.TarInfo, bytes | None]] = {}
    with tarfile.open(shared(TAR), encoding="utf-8", errors="surrogateescape") as archive:
        for member in archive:
            data = archive.extractfile(member).read() if member.isreg() else None  # type: ignore[union-attr]
            path = b"/" + member.name.rstrip("/").encode("utf-8", "surrogateescape")
            result[path] = (member, data)
    return result


def pax_mtime_ns(member: tarfile.TarInfo) -> tuple[int, int]:
    text = member.pax_headers.get("mtime")
    if text is None:
        return int(member.mtime), 0
    whole, _, fraction = text.partition(".")
    return int(whole), int(fraction[:9].ljust(9, "0")) if fraction else 0


TAR_TYPES = {
    tarfile.REGTYPE: stat.S_IFREG,
    tarfile.DIRTYPE: stat.S_IFDIR,
    tarfile.SYMTYPE: stat.S_IFLNK,
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}


def check_against_tar(tree: Tree, *, nanoseconds: bool) -> None:
    """Every tar member is in ``tree`` with the same attributes (whiteouts converted)."""
    members = tar_members()
    seen = {b"/"}
    for path, (member, data) in members.items():
        name = path.rsplit(b"/", 1)[1]
        parent = path.rsplit(b"/", 1)[0] or b"/"
        if name == b".wh..wh..opq":
            assert OPAQUE in tree.inode(parent).xattrs
            continue
        if name.startswith(b".wh."):
            hidden = parent.rstrip(b"/") + b"/" + name[4:]
            whiteout = tree.inode(hidden)
            assert whiteout.mode == stat.S_IFCHR and whiteout.rdev == 0, hidden
            seen.add(hidden)
            continue
        seen.add(path)
        node = tree[path]
        if member.islnk():
            assert node == Hardlink(b"/" + member.linkname.encode())
            assert tree.inode(path).nlink == 2
            continue
        assert isinstance(node, Inode)
        assert node.mode == TAR_TYPES[member.type] | member.mode, path
        assert (node.uid, node.gid) == (member.uid, member.gid), path
        seconds, nsec = pax_mtime_ns(member)
        if nanoseconds:
            assert (node.mtime, node.mtime_nsec) == (seconds, nsec), path
        else:
            # eStargz rewrites the tar with Go's archive/tar, which rounds
            # times to the nearest second (half away from zero).
            assert (node.mtime, node.mtime_nsec) == (seconds + (nsec >= 500_000_000), 0), path
        xattrs = {
            key[len("SCHILY.xattr.") :].encode(): value.encode("utf-8", "surrogateescape")
            for key, value in member.pax_headers.items()
            if key.startswith("SCHILY.xattr.")
        }
        if path == b"/var/cache/apt":
            xattrs[OPAQUE[0]] = OPAQUE[1]
        assert dict(node.xattrs) == xattrs, path
        if member.isreg():
            assert data is not None
            assert node.size == len(data)
            assert node.payload == (sha256_payload(data) if data else None), path
            assert node.content is None
        elif member.issym():
            assert node.symlink_target == member.linkname.encode()
        elif member.ischr() or member.isblk():
            assert node.rdev == os.makedev(member.devmajor, member.devminor)
    assert set(tree.paths) == seen


# -- sniffing and trees --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BLOBS))
def test_open_layer_sniffs_format(name: str) -> None:
    layer = open_layer(shared(name))
    assert layer.format == BLOBS[name]
    assert sniff_format(shared(name)) == BLOBS[name]


@pytest.mark.parametrize("name", [TAR, ZSTD_CHUNKED])
def test_tree_matches_tar_with_nanoseconds(name: str) -> None:
    check_against_tar(open_layer(shared(name)).tree(), nanoseconds=True)


@pytest.mark.parametrize("name", [ESTARGZ, ESTARGZ_CHUNKED])
def test_estargz_tree_matches_tar_with_rounded_second_times(name: str) -> None:
    check_against_tar(open_layer(shared(name)).tree(), nanoseconds=False)


def test_tar_and_zstd_chunked_trees_are_identical() -> None:
    assert open_layer(shared(TAR)).tree() == open_layer(shared(ZSTD_CHUNKED)).tree()


@pytest.mark.parametrize("compat", [None, "containers-storage"])
def test_compressed_tars_read_like_the_tar(tmp_path: Path, compat: str | None) -> None:
    raw = shared(TAR).read_bytes()
    gz = write_blob(tmp_path, gzip.compress(raw, mtime=0), "small.tar.gz")
    # Two zstd frames: the reader must continue across frames.
    half = len(raw) // 2
    compressor = zstandard.ZstdCompressor()
    zst = write_blob(
        tmp_path, compressor.compress(raw[:half]) + compressor.compress(raw[half:]), "small.tar.zst"
    )
    expected = open_layer(shared(TAR)).tree(compat=compat)
    for path, compression in ((gz, "gzip"), (zst, "zstd")):
        layer = open_layer(path)
        assert isinstance(layer, TarLayer) and layer.compression == compression
        assert layer.tree(compat=compat) == expected


def test_compat_containers_storage_keeps_whiteout_files() -> None:
    for name in (TAR, ZSTD_CHUNKED, ESTARGZ):
        tree = open_layer(shared(name)).tree(compat="containers-storage")
        for path in (b"/etc/.wh.motd", b"/var/cache/apt/.wh..wh..opq"):
            node = tree.inode(path)
            assert stat.S_ISREG(node.mode) and node.size == 0
        assert b"/etc/motd" not in tree
        assert OPAQUE not in tree.inode(b"/var/cache/apt").xattrs


# -- TOCs ----------------------------------------------------------------------


def zstd_annotations() -> dict[str, str]:
    manifest = json.loads(shared("small.zstd-chunked.oci-manifest.json").read_bytes())
    annotations: dict[str, str] = manifest["layers"][0]["annotations"]
    return annotations


def test_zstd_chunked_toc_and_checksum_annotation() -> None:
    annotations = zstd_annotations()
    layer = open_layer(
        shared(ZSTD_CHUNKED),
        manifest_position=annotations["io.github.containers.zstd-chunked.manifest-position"],
        toc_digest=annotations["io.github.containers.zstd-chunked.manifest-checksum"],
    )
    toc = layer.toc_bytes()
    assert json.loads(toc) == json.loads(shared("small.zstd-chunked.toc.json").read_bytes())
    assert layer.tree() == open_layer(shared(ZSTD_CHUNKED)).tree()


@pytest.mark.parametrize("name", [ESTARGZ, ESTARGZ_CHUNKED])
def test_estargz_toc_is_the_index_json(name: str) -> None:
    toc = open_layer(shared(name)).toc_bytes()
    reference = shared(name.replace(".blob", ".toc.json")).read_bytes()
    assert json.loads(toc) == json.loads(reference)
    # Digest-checked open succeeds with the TOC's own digest, fails with another.
    digest = "sha256:" + hashlib.sha256(toc).hexdigest()
    assert open_layer(shared(name), toc_digest=digest).toc_bytes() == toc
    with pytest.raises(ValidationError) as info:
        open_layer(shared(name), toc_digest="sha256:" + "0" * 64).toc_bytes()
    assert info.value.field == "toc_digest"


def test_estargz_toc_digests_match_readme() -> None:
    # The annotation values estargz.Build printed (README of the testdata).
    readme = shared("README.md").read_text()
    for name in (ESTARGZ, ESTARGZ_CHUNKED):
        digest = "sha256:" + hashlib.sha256(open_layer(shared(name)).toc_bytes()).hexdigest()
        assert digest in readme


def test_zstd_chunked_wrong_checksum_rejected() -> None:
    layer = open_layer(shared(ZSTD_CHUNKED), toc_digest="sha256:" + "1" * 64)
    with pytest.raises(ValidationError) as info:
        layer.tree()
    assert info.value.field == "toc_digest"


def test_progress_reports_counts_and_defaults_off_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from composefs_py._progress import resolve_progress

    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert resolve_progress(None, "x") is None
    assert resolve_progress(False, "x") is None
    shown = resolve_progress(True, "x")
    assert shown is not None
    text = io.StringIO()
    progress = Progress(stream=text)
    progress.start("importing l", total_files=2, total_bytes=3 << 20)
    progress.advance(nbytes=1 << 20, files=1)
    progress.close()
    assert text.getvalue().rstrip().endswith("importing l: 1/2 files, 1.0/3.0 MiB")


def test_tar_has_no_toc() -> None:
    assert open_layer(shared(TAR)).toc_bytes() is None


# -- importing objects -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BLOBS))
def test_import_stores_exactly_the_tree_payloads(tmp_path: Path, name: str) -> None:
    layer = open_layer(shared(name))
    root = tmp_path / "objects"
    store = ObjectStore(root)
    progress_text = io.StringIO()
    tree = layer.import_objects(store, progress=Progress(stream=progress_text))
    assert tree == layer.tree()
    names = {path.relative_to(root).as_posix().encode() for path in store_files(root)}
    assert names == payloads_of(tree)
    assert_store_clean(root)
    members = tar_members()
    for path, (member, data) in members.items():
        if member.isreg() and data:
            assert store.path_for(sha256_payload(data)).read_bytes() == data, path
    assert "files" in progress_text.getvalue()
    # A second import finds everything in place and changes nothing.
    before = {p: p.stat().st_ino for p in store_files(root)}
    assert layer.import_objects(store, progress=False) == tree
    assert {p: p.stat().st_ino for p in store_files(root)} == before


@pytest.mark.parametrize("name", [TAR, ZSTD_CHUNKED, ESTARGZ])
def test_import_with_fsverity_sets_digests(tmp_path: Path, name: str) -> None:
    native = pytest.importorskip("composefs_py._native")
    store = ObjectStore(tmp_path / "objects", naming="fsverity")
    tree = open_layer(shared(name)).import_objects(store, progress=False)
    plain = open_layer(shared(name)).tree()
    assert tree.paths == plain.paths
    for path, node in tree:
        if isinstance(node, Inode) and node.payload is not None:
            content = store.path_for(node.payload).read_bytes()
            digest = bytes(native.fsverity_digest_bytes(content))
            assert node.fsverity_digest == digest
            assert node.payload.replace(b"/", b"") == digest.hex().encode()
            assert plain.inode(path).payload == sha256_payload(content)
            assert node == dataclasses.replace(
                plain.inode(path), payload=node.payload, fsverity_digest=digest
            )
        else:
            assert node == plain[path]


# -- tampered layers -----------------------------------------------------------


def zstd_footer(blob: bytes) -> tuple[int, ...]:
    return struct.unpack("<7Q", blob[-64:-8])


def skippable(payload: bytes) -> bytes:
    return struct.pack("<II", 0x184D2A50, len(payload)) + payload


def rebuild_zstd_chunked(
    blob: bytes,
    toc: bytes,
    *,
    compressed: bytes | None = None,
    uncompressed_length: int | None = None,
) -> bytes:
    """The blob with its TOC replaced (data and tar-split kept), footer rewritten."""
    toc_offset, _, _, kind, split_offset, split_length, split_size = zstd_footer(blob)
    data = blob[: toc_offset - 8]
    split = blob[split_offset : split_offset + split_length]
    if compressed is None:
        compressed = zstandard.ZstdCompressor().compress(toc)
    out = data + skippable(compressed)
    new_split_offset = len(out) + 8
    out += skippable(split)
    footer = struct.pack(
        "<7Q",
        len(data) + 8,
        len(compressed),
        len(toc) if uncompressed_length is None else uncompressed_length,
        kind,
        new_split_offset,
        split_length,
        split_size,
    )
    return out + skippable(footer + b"GNUlInUx")


def estargz_footer(offset: int) -> bytes:
    return (
        b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
        + struct.pack("<H", 26)
        + b"SG"
        + struct.pack("<H", 22)
        + b"%016x" % offset
        + b"STARGZ"
        + b"\x01\x00\x00\xff\xff"
        + bytes(8)
    )


def rebuild_estargz(blob: bytes, toc: bytes, *, name: str = "stargz.index.json") -> bytes:
    offset = int(blob[-51 + 16 : -51 + 32], 16)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo(name)
        info.size = len(toc)
        archive.addfile(info, io.BytesIO(toc))
    return blob[:offset] + gzip.compress(buffer.getvalue(), mtime=0) + estargz_footer(offset)


def patched_toc(toc: bytes, name: str, **changes: object) -> bytes:
    document = json.loads(toc)
    for entry in document["entries"]:
        if entry["name"] == name and entry["type"] == "reg":
            entry.update(changes)
            break
    else:
        raise AssertionError(f"{name} not in the TOC")
    return json.dumps(document).encode()


def toc_entry(layer_name: str, name: str) -> tuple[int, dict[str, object]]:
    document = json.loads(open_layer(shared(layer_name)).toc_bytes())
    for index, entry in enumerate(document["entries"]):
        if entry["name"] == name and entry["type"] == "reg":
            return index, entry
    raise AssertionError(name)


FORGED = "sha256:" + hashlib.sha256(b"not the content").hexdigest()


@pytest.mark.parametrize("name", [ZSTD_CHUNKED, ESTARGZ, ESTARGZ_CHUNKED])
def test_patched_toc_digest_rejected_leaving_no_trace(tmp_path: Path, name: str) -> None:
    victim = "usr/lib/python3.11/json/decoder.py"
    blob = shared(name).read_bytes()
    layer = open_layer(shared(name))
    rebuild = rebuild_zstd_chunked if layer.format == "zstd:chunked" else rebuild_estargz
    forged_blob = write_blob(
        tmp_path, rebuild(blob, patched_toc(layer.toc_bytes(), victim, digest=FORGED))
    )
    index, _ = toc_entry(name, victim)
    root = tmp_path / "objects"
    with pytest.raises(ValidationError) as info:
        open_layer(forged_blob).import_objects(ObjectStore(root), progress=False)
    error = info.value
    assert (error.entry, error.path, error.field) == (index, victim, "digest")
    assert victim in str(error)
    real = members_content(victim)
    store = ObjectStore(root)
    assert not store.has(FORGED[7:9] + "/" + FORGED[9:])
    assert not store.has(sha256_payload(real))
    assert store.temporary_files() == []
    # All or nothing: the verified files imported before the bad one are gone too.
    assert store_files(root) == []


def members_content(name: str) -> bytes:
    data = tar_members()[b"/" + name.encode()][1]
    assert data is not None
    return data


@pytest.mark.parametrize("name", [ZSTD_CHUNKED, ESTARGZ, ESTARGZ_CHUNKED])
def test_flipped_byte_in_file_data_rejected_naming_the_file(tmp_path: Path, name: str) -> None:
    victim = "usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6"
    index, entry = toc_entry(name, victim)
    offset = entry["offset"]
    assert isinstance(offset, int)
    blob = bytearray(shared(name).read_bytes())
    blob[offset + 2000] ^= 0x55  # inside the file's first frame / gzip member
    root = tmp_path / "objects"
    with pytest.raises(ValidationError) as info:
        open_layer(write_blob(tmp_path, bytes(blob))).import_objects(
            ObjectStore(root), progress=False
        )
    assert (info.value.entry, info.value.path) == (index, victim)
    assert not ObjectStore(root).has(sha256_payload(members_content(victim)))
    assert store_files(root) == []  # nothing of the layer, no temporary file


@pytest.mark.parametrize("field", ["offset", "endOffset"])
def test_offsets_outside_the_data_rejected(tmp_path: Path, field: str) -> None:
    victim = "usr/bin/unzstd"
    blob = shared(ZSTD_CHUNKED).read_bytes()
    toc = open_layer(shared(ZSTD_CHUNKED)).toc_bytes()
    forged = write_blob(
        tmp_path, rebuild_zstd_chunked(blob, patched_toc(toc, victim, **{field: len(blob) + 5}))
    )
    with pytest.raises(ValidationError) as info:
        open_layer(forged).import_objects(ObjectStore(tmp_path / "objects"), progress=False)
    assert info.value.path == victim
    assert info.value.field in ("offset", "endOffset")


# -- damaged blobs -------------------------------------------------------------


def footer_patched(blob: bytes, field: int, value: int) -> bytes:
    fields = list(zstd_footer(blob))
    fields[field] = value
    return blob[:-64] + struct.pack("<7Q", *fields) + b"GNUlInUx"


def toc_frame_size_patched(blob: bytes, size: int) -> bytes:
    at = zstd_footer(blob)[0] - 4
    return blob[:at] + struct.pack("<I", size) + blob[at + 4 :]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: footer_patched(b, 0, len(b) + 100), id="toc-offset-past-end"),
        pytest.param(lambda b: footer_patched(b, 0, 3), id="toc-offset-in-header"),
        pytest.param(
            lambda b: footer_patched(b, 0, zstd_footer(b)[0] + 1), id="toc-offset-off-by-one"
        ),
        pytest.param(lambda b: footer_patched(b, 1, 1 << 62), id="toc-length-huge"),
        pytest.param(lambda b: footer_patched(b, 1, 0), id="toc-length-zero"),
        pytest.param(lambda b: footer_patched(b, 2, 0), id="uncompressed-zero"),
        pytest.param(lambda b: footer_patched(b, 2, 100), id="uncompressed-too-small"),
        pytest.param(lambda b: footer_patched(b, 3, 2), id="manifest-type"),
        pytest.param(lambda b: b[:-68] + struct.pack("<I", 63) + b[-64:], id="footer-frame-size"),
        pytest.param(lambda b: b[:-72] + b"\0\0\0\0" + b[-68:], id="footer-frame-magic"),
        pytest.param(
            lambda b: toc_frame_size_patched(b, zstd_footer(b)[1] - 1), id="toc-frame-size"
        ),
    ],
)
def test_damaged_zstd_chunked_footer_rejected(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    path = write_blob(tmp_path, damage(shared(ZSTD_CHUNKED).read_bytes()))
    with pytest.raises(ValidationError):
        open_layer(path).tree()


@pytest.mark.parametrize(
    "position", ["1605729:9126:42437", "1605730:9126:42437:1", "1605729:9126:42437:2", "a:b:c:d"]
)
def test_bad_manifest_position_rejected(position: str) -> None:
    with pytest.raises(ValidationError) as info:
        open_layer(shared(ZSTD_CHUNKED), manifest_position=position).tree()
    assert info.value.field == "manifest_position"


@pytest.mark.parametrize("content_size", [True, False])
def test_zstd_toc_bomb_rejected(tmp_path: Path, content_size: bool) -> None:
    blob = shared(ZSTD_CHUNKED).read_bytes()
    toc = open_layer(shared(ZSTD_CHUNKED)).toc_bytes()
    bomb = toc + b" " * (64 << 20)  # claims the real length, holds 64 MiB more
    compressed = zstandard.ZstdCompressor(write_content_size=content_size).compress(bomb)
    assert len(compressed) < 1 << 20
    path = write_blob(
        tmp_path,
        rebuild_zstd_chunked(blob, toc, compressed=compressed, uncompressed_length=len(toc)),
    )
    with pytest.raises(ValidationError) as info:
        open_layer(path).tree()
    assert "more than" in str(info.value)


def test_zstd_toc_over_limit_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        open_layer(shared(ZSTD_CHUNKED), limits=Limits(max_input_bytes=40000))
    assert "max_input_bytes" in str(info.value)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:-35] + b"g" + b[-34:], id="offset-not-hex"),
        pytest.param(lambda b: b[:-51] + estargz_footer(len(b)), id="offset-past-end"),
        pytest.param(lambda b: b[:-51] + estargz_footer(0), id="offset-zero"),
        pytest.param(lambda b: b[:-51] + estargz_footer(1000), id="offset-not-a-member"),
        pytest.param(lambda b: b[:-8] + b"\1" + b[-7:], id="footer-crc"),
    ],
)
def test_damaged_estargz_footer_rejected(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    path = write_blob(tmp_path, damage(shared(ESTARGZ).read_bytes()))
    try:
        layer = open_layer(path)
    except ValidationError:
        return
    if layer.format == "tar":  # no longer an eStargz footer: read as tar.gz
        with pytest.raises(ValidationError):
            layer.tree()
        return
    with pytest.raises(ValidationError):
        layer.tree()


def test_estargz_toc_with_wrong_name_or_over_limit_rejected(tmp_path: Path) -> None:
    blob = shared(ESTARGZ).read_bytes()
    toc = open_layer(shared(ESTARGZ)).toc_bytes()
    wrong = write_blob(tmp_path, rebuild_estargz(blob, toc, name="other.json"))
    with pytest.raises(ValidationError, match=r"stargz\.index\.json"):
        open_layer(wrong).toc_bytes()
    with pytest.raises(ValidationError, match="max_input_bytes"):
        open_layer(shared(ESTARGZ), limits=Limits(max_input_bytes=1000)).toc_bytes()


def test_not_a_layer_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        open_layer(write_blob(tmp_path, b"just some text, not a layer\n" * 40))
    with pytest.raises(ValidationError):
        open_layer(write_blob(tmp_path, b""))


def check_only_validation_errors(tmp_path: Path, data: bytes) -> None:
    """Reading ``data`` either fails with ValidationError or gives verified objects."""
    root = tmp_path / "objects"
    path = write_blob(tmp_path, data)
    try:
        open_layer(path).import_objects(ObjectStore(root), progress=False)
    except ValidationError:
        pass
    assert not list(root.glob(".tmp-*"))
    assert_store_clean(root)


@pytest.mark.parametrize("name", sorted(BLOBS))
@pytest.mark.parametrize("keep", [0.0, 0.3, 0.98, 0.9999])
def test_truncated_blobs_raise_validation_error_only(
    tmp_path: Path, name: str, keep: float
) -> None:
    blob = shared(name).read_bytes()
    check_only_validation_errors(tmp_path, blob[: int(len(blob) * keep)])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(sorted(BLOBS)),
    position=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    mask=st.integers(min_value=1, max_value=255),
)
def test_flipped_bytes_raise_validation_error_only(
    tmp_path_factory: pytest.TempPathFactory, name: str, position: float, mask: int
) -> None:
    blob = bytearray(shared(name).read_bytes())
    blob[int(len(blob) * position)] ^= mask
    check_only_validation_errors(tmp_path_factory.mktemp("flip"), bytes(blob))


# -- plain tar specifics --------------------------------------------------------


def make_tar(
    members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def reg(name: str, data: bytes, **attrs: object) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def test_tar_duplicate_path_last_wins(tmp_path: Path) -> None:
    data = make_tar([reg("a", b"first"), reg("b", b"x"), reg("a", b"second", mode=0o600)])
    tree = open_layer(write_blob(tmp_path, data)).tree()
    node = tree.inode(b"/a")
    assert node.payload == sha256_payload(b"second") and node.mode == stat.S_IFREG | 0o600


def test_tar_sub_second_and_negative_mtimes(tmp_path: Path) -> None:
    first, _ = reg("a", b"1")
    first.pax_headers = {"mtime": "1700000000.123456789123"}
    second, _ = reg("b", b"2")
    second.pax_headers = {"mtime": "-1.25"}
    tree = open_layer(write_blob(tmp_path, make_tar([(first, b"1"), (second, b"2")]))).tree()
    assert (tree.inode(b"/a").mtime, tree.inode(b"/a").mtime_nsec) == (1700000000, 123456789)
    assert (tree.inode(b"/b").mtime, tree.inode(b"/b").mtime_nsec) == (-2, 750000000)


def test_tar_binary_xattr_and_root_entry(tmp_path: Path) -> None:
    value = bytes(range(256))
    info, data = reg("f", b"data")
    info.pax_headers = {"SCHILY.xattr.user.blob": value.decode("utf-8", "surrogateescape")}
    root = tarfile.TarInfo("./")
    root.type, root.mode, root.uid = tarfile.DIRTYPE, 0o700, 5
    tree = open_layer(write_blob(tmp_path, make_tar([(root, None), (info, data)]))).tree()
    assert tree.inode(b"/f").xattrs == ((b"user.blob", value),)
    assert tree.root.mode == stat.S_IFDIR | 0o700 and tree.root.uid == 5


@pytest.mark.parametrize(
    ("members", "entry", "field"),
    [
        pytest.param([reg("ok", b"1"), reg("../escape", b"2")], 1, "name", id="dotdot"),
        pytest.param(
            [(reg("a", b"")[0], None), reg("b", b"", type=tarfile.LNKTYPE, linkname="missing")],
            1,
            "linkName",
            id="dangling-hardlink",
        ),
        pytest.param([reg("a", b"1"), reg("v", b"", type=b"V")], 1, "type", id="volume-header"),
        pytest.param([reg("a", b"1", mtime=1 << 40)], 0, "mtime", id="mtime-year-beyond-9999"),
    ],
)
def test_tar_bad_members_rejected_with_member_index(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], entry: int, field: str
) -> None:
    data = make_tar(members, tarfile.GNU_FORMAT)
    with pytest.raises(ValidationError) as info:
        open_layer(write_blob(tmp_path, data)).tree()
    assert (info.value.entry, info.value.field) == (entry, field)


def test_tar_non_utf8_name_rejected(tmp_path: Path) -> None:
    info, data = reg("caf\udce9", b"x")
    blob = make_tar([(info, data)], tarfile.GNU_FORMAT)
    with pytest.raises(ValidationError) as error:
        open_layer(write_blob(tmp_path, blob)).tree()
    assert error.value.entry == 0


def test_tar_damaged_header_mid_archive_rejected(tmp_path: Path) -> None:
    data = bytearray(make_tar([reg("a", b"1" * 600), reg("b", b"2")], tarfile.USTAR_FORMAT))
    second_header = 512 + 1024
    assert data[second_header : second_header + 1] == b"b"
    data[second_header + 100] ^= 0x7F  # mode field: the checksum no longer matches
    with pytest.raises(ValidationError, match="damaged tar header"):
        open_layer(write_blob(tmp_path, bytes(data))).tree()


def test_tar_huge_extended_header_rejected_before_reading(tmp_path: Path) -> None:
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = 1 << 30
    block = header.tobuf(tarfile.USTAR_FORMAT)
    with pytest.raises(ValidationError, match="extended header"):
        open_layer(write_blob(tmp_path, block + bytes(4096))).tree()


def test_tar_import_names_objects_from_content(tmp_path: Path) -> None:
    data = make_tar([reg("a", b"alpha"), reg("dir/b", b"beta"), reg("empty", b"")])
    root = tmp_path / "objects"
    tree = open_layer(write_blob(tmp_path, data)).import_objects(ObjectStore(root), progress=False)
    assert payloads_of(tree) == {sha256_payload(b"alpha"), sha256_payload(b"beta")}
    assert tree.inode(b"/empty").payload is None
    assert {p.relative_to(root).as_posix().encode() for p in store_files(root)} == payloads_of(tree)


def test_tar_xattrs_match_pax_records_base64() -> None:
    # The TOC carries the same xattrs base64-encoded; both must give the raw bytes.
    toc = json.loads(open_layer(shared(ZSTD_CHUNKED)).toc_bytes())
    tree = open_layer(shared(TAR)).tree()
    for entry in toc["entries"]:
        for key, value in entry.get("xattrs", {}).items():
            node = tree.inode(b"/" + entry["name"].rstrip("/").encode())
            assert dict(node.xattrs)[key.encode()] == base64.b64decode(value)


def make_estargz_with_inner_offsets(files: dict[str, bytes]) -> bytes:
    """An eStargz blob whose files all share one gzip member (``innerOffset``),
    as estargz >= 0.13 writes small files with a minimum chunk size."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as archive:
        members = archive.getmembers()  # offset_data is known when reading
    body = gzip.compress(buffer.getvalue(), mtime=0)
    entries = [
        {
            "name": member.name,
            "type": "reg",
            "mode": 0o644,
            "size": member.size,
            "digest": "sha256:" + hashlib.sha256(files[member.name]).hexdigest(),
            "offset": 0,
            "innerOffset": member.offset_data,
        }
        for member in members
    ]
    toc = json.dumps({"version": 1, "entries": entries}).encode()
    return rebuild_estargz(body + estargz_footer(len(body)), toc)


def test_estargz_inner_offsets(tmp_path: Path) -> None:
    files = {"a": b"first file\n", "b": os.urandom(3000), "c/d": b"third"}
    path = write_blob(tmp_path, make_estargz_with_inner_offsets(files))
    layer = open_layer(path)
    assert layer.format == "estargz"
    root = tmp_path / "objects"
    tree = layer.import_objects(ObjectStore(root), progress=False)
    for name, data in files.items():
        payload = tree.inode(b"/" + name.encode()).payload
        assert payload == sha256_payload(data)
        assert ObjectStore(root).path_for(payload).read_bytes() == data


def small_layers() -> dict[str, bytes]:
    """Tiny layers of each kind, quick enough to damage many times."""
    files = {"a": b"alpha\n" * 50, "dir/b": os.urandom(2000), "dir/c": b""}
    members = [reg(name, data) for name, data in files.items()]
    link = tarfile.TarInfo("dir/link")
    link.type, link.linkname = tarfile.SYMTYPE, "b"
    plain = make_tar([*members, (link, None)])
    return {
        "tar": plain,
        "tar.gz": gzip.compress(plain, mtime=0),
        "tar.zst": zstandard.ZstdCompressor().compress(plain),
        "estargz": make_estargz_with_inner_offsets(files),
        **{
            f"sparse-{fmt}": sparse_tar(fmt, 5000, [(0, b"a" * 100), (3000, b"b" * 50)])
            for fmt in SPARSE_FORMATS
        },
        "long-names": (
            tar_member(b"././@LongLink", b"n" * 300 + b"\0", kind=b"L")
            + tar_member(b"x", b"data")
            + pax_member({b"path": b"p" * 300, b"linkpath": b"l" * 200, b"mtime": b"1.5"})
            + tar_member(b"y", kind=b"2")
            + pax_member({b"uid": b"7"}, kind=b"g")
            + tar_member(b"z", b"zz")
            + tar_end()
        ),
    }


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(
        ["tar", "tar.gz", "tar.zst", "estargz", "long-names"]
        + [f"sparse-{fmt}" for fmt in SPARSE_FORMATS]
    ),
    flips=st.lists(
        st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), max_size=4
    ),
    keep=st.one_of(st.just(1.0), st.floats(0.0, 1.0)),
)
def test_damaged_small_layers_raise_validation_error_only(
    tmp_path_factory: pytest.TempPathFactory,
    kind: str,
    flips: list[tuple[float, int]],
    keep: float,
) -> None:
    blob = bytearray(small_layers()[kind])
    for position, mask in flips:
        blob[int(len(blob) * position)] ^= mask
    check_only_validation_errors(
        tmp_path_factory.mktemp("damaged"), bytes(blob[: max(1, int(len(blob) * keep))])
    )


def test_zstd_chunked_without_end_offsets_reads_chunk_by_chunk(tmp_path: Path) -> None:
    # Each chunk (zeros chunks too) starts its own frame: the chunk list alone
    # locates the data, as for TOCs written before endOffset existed.
    blob = shared(ZSTD_CHUNKED).read_bytes()
    document = json.loads(open_layer(shared(ZSTD_CHUNKED)).toc_bytes())
    for entry in document["entries"]:
        entry.pop("endOffset", None)
    assert any(entry.get("chunkType") == "zeros" for entry in document["entries"])
    path = write_blob(tmp_path, rebuild_zstd_chunked(blob, json.dumps(document).encode()))
    root = tmp_path / "objects"
    tree = open_layer(path).import_objects(ObjectStore(root), progress=False)
    assert tree == open_layer(shared(ZSTD_CHUNKED)).tree()
    assert {p.relative_to(root).as_posix().encode() for p in store_files(root)} == payloads_of(tree)
    assert_store_clean(root)


# -- many files: the threaded import and the one-call fast path --------------------


def many_files_blob(count: int, *, forged: int | None = None) -> tuple[bytes, list[bytes]]:
    """A zstd:chunked blob of ``count`` files (tar headers omitted: the TOC
    locates the data).  Frames vary as real writers make them: with and
    without a declared content size, and every 7th file in two frames (read
    by the streaming path).  ``forged``: that file's TOC digest is wrong."""
    with_size = zstandard.ZstdCompressor(level=1)
    without_size = zstandard.ZstdCompressor(level=1, write_content_size=False)
    data = bytearray(zstandard.ZstdCompressor().compress(bytes(512)))  # a leading frame
    contents: list[bytes] = []
    entries: list[dict[str, object]] = [{"type": "dir", "name": "d/", "mode": 0o755}]
    for index in range(count):
        key = index % (count - 3)  # the last 3 files repeat the first 3
        content = (f"file {key}\n" * (1 + key % 50)).encode()
        contents.append(content)
        start = len(data)
        if index % 7 == 3:
            half = len(content) // 2
            data += with_size.compress(content[:half]) + with_size.compress(content[half:])
        else:
            data += (with_size if index % 2 else without_size).compress(content)
        digest = hashlib.sha256(content + (b"!" if index == forged else b"")).hexdigest()
        entries.append(
            {
                "type": "reg",
                "name": f"d/f{index}",
                "mode": 0o644,
                "size": len(content),
                "digest": "sha256:" + digest,
                "offset": start,
                "endOffset": len(data),
            }
        )
    return zstd_chunked_blob(bytes(data), entries), contents


def zstd_chunked_blob(data: bytes, entries: list[dict[str, object]]) -> bytes:
    """A zstd:chunked blob: payload ``data``, then the TOC of ``entries``,
    an empty tar-split and the footer."""
    toc = json.dumps({"version": 1, "entries": entries}).encode()
    compressed = zstandard.ZstdCompressor().compress(toc)
    out = data + skippable(compressed)
    split = zstandard.ZstdCompressor().compress(b"")
    split_offset = len(out) + 8
    out += skippable(split)
    footer = struct.pack(
        "<7Q", len(data) + 8, len(compressed), len(toc), 1, split_offset, len(split), 0
    )
    return out + skippable(footer + b"GNUlInUx")


def test_many_files_import_stores_every_content_once(tmp_path: Path) -> None:
    blob, contents = many_files_blob(300)
    progress_text = io.StringIO()
    progress = Progress(stream=progress_text)
    root = tmp_path / "objects"
    tree = open_layer(write_blob(tmp_path, blob)).import_objects(
        ObjectStore(root), progress=progress
    )
    expected = {sha256_payload(content) for content in contents}
    assert len(expected) == 297
    assert payloads_of(tree) == expected
    assert {p.relative_to(root).as_posix().encode() for p in store_files(root)} == expected
    assert_store_clean(root)
    for index, content in enumerate(contents):
        node = tree.inode(f"/d/f{index}".encode())
        assert node.size == len(content) and node.payload == sha256_payload(content)
    assert (progress.files_done, progress.bytes_done) == (
        297,
        sum(len(c) for c in {sha256_payload(c): c for c in contents}.values()),
    )


@pytest.mark.parametrize("forged", [0, 3, 150, 299])
def test_many_files_import_with_one_forged_digest_leaves_nothing(
    tmp_path: Path, forged: int
) -> None:
    blob, _ = many_files_blob(300, forged=forged)
    root = tmp_path / "objects"
    with pytest.raises(ValidationError) as info:
        open_layer(write_blob(tmp_path, blob)).import_objects(ObjectStore(root), progress=False)
    assert (info.value.entry, info.value.path, info.value.field) == (
        forged + 1,
        f"d/f{forged}",
        "digest",
    )
    assert store_files(root) == []  # no object, no temporary file


def test_many_files_import_into_a_store_holding_some(tmp_path: Path) -> None:
    blob, contents = many_files_blob(300)
    root = tmp_path / "objects"
    store = ObjectStore(root)
    before = {store.add(content) for content in contents[::10]}
    inodes = {name: store.path_for(name).stat().st_ino for name in before}
    open_layer(write_blob(tmp_path, blob)).import_objects(ObjectStore(root), progress=False)
    assert {name: store.path_for(name).stat().st_ino for name in before} == inodes
    assert len(store_files(root)) == 297
    assert_store_clean(root)


# -- chunkType "zeros": holes, read from nowhere ------------------------------------


def zero_chunk_blob(
    *, end_offset: bool, hole_size: int = 4096, lazy_hole: bool = False
) -> tuple[bytes, bytes]:
    """A zstd:chunked file of three chunks, data / zeros / data, whose zeros
    chunk has no data in the blob (its offset is the next chunk's), as a
    writer that leaves holes to containers/storage may make it.  With
    ``lazy_hole`` the hole is never made (the digests are placeholders, the
    content returned empty): for holes too big to hash in a test."""
    compressor = zstandard.ZstdCompressor()
    head, tail = b"a" * 1000, b"b" * 1000
    hole = b"" if lazy_hole else bytes(hole_size)
    data = bytearray(compressor.compress(bytes(512)))
    first = len(data)
    data += compressor.compress(head)
    third = len(data)
    data += compressor.compress(tail)
    content = b"" if lazy_hole else head + hole + tail
    entry: dict[str, object] = {
        "type": "reg",
        "name": "sparse",
        "mode": 0o644,
        "size": len(head) + hole_size + len(tail),
        "digest": "sha256:" + hashlib.sha256(content).hexdigest(),
        "offset": first,
        "chunkSize": len(head),
        "chunkDigest": "sha256:" + hashlib.sha256(head).hexdigest(),
    }
    if end_offset:
        entry["endOffset"] = len(data)
    chunks = [
        {
            "type": "chunk",
            "name": "sparse",
            "offset": third,
            "chunkOffset": len(head),
            "chunkSize": hole_size,
            "chunkDigest": "sha256:" + hashlib.sha256(hole).hexdigest(),
            "chunkType": "zeros",
        },
        {
            "type": "chunk",
            "name": "sparse",
            "offset": third,
            "chunkOffset": len(head) + hole_size,
            "chunkSize": len(tail),
            "chunkDigest": "sha256:" + hashlib.sha256(tail).hexdigest(),
        },
    ]
    return zstd_chunked_blob(bytes(data), [entry, *chunks]), content


@pytest.mark.parametrize("end_offset", [False, True], ids=["chunks", "endOffset"])
def test_zstd_chunked_zeros_chunk_is_a_hole(tmp_path: Path, end_offset: bool) -> None:
    blob, content = zero_chunk_blob(end_offset=end_offset)
    root = tmp_path / "objects"
    tree = open_layer(write_blob(tmp_path, blob)).import_objects(ObjectStore(root), progress=False)
    payload = tree.inode(b"/sparse").payload
    assert payload == sha256_payload(content)
    assert ObjectStore(root).path_for(payload).read_bytes() == content


def test_files_whose_data_overlap_are_refused(tmp_path: Path) -> None:
    # Two files of one shared gzip member whose innerOffset ranges overlap:
    # serving both would decode the member twice.
    files = {"a": b"x" * 3000, "b": b"y" * 3000}
    blob = make_estargz_with_inner_offsets(files)
    offset = int(blob[-51 + 16 : -51 + 32], 16)
    toc = json.loads(open_layer(write_blob(tmp_path, blob)).toc_bytes() or b"")
    toc["entries"][1]["innerOffset"] = toc["entries"][0]["innerOffset"] + 1000
    forged = rebuild_estargz(blob[:offset] + estargz_footer(offset), json.dumps(toc).encode())
    with pytest.raises(ValidationError) as info:
        open_layer(write_blob(tmp_path, forged, "forged.blob")).import_objects(
            ObjectStore(tmp_path / "objects"), progress=False
        )
    assert (info.value.path, info.value.field) == ("b", "offset")
    assert store_files(tmp_path / "objects") == []


def test_zstd_chunked_files_sharing_an_offset_are_refused(tmp_path: Path) -> None:
    blob, _ = many_files_blob(10)
    toc = json.loads(open_layer(write_blob(tmp_path, blob)).toc_bytes() or b"")
    toc["entries"][5]["offset"] = toc["entries"][4]["offset"]
    forged = rebuild_zstd_chunked(blob, json.dumps(toc).encode())
    with pytest.raises(ValidationError) as info:
        open_layer(write_blob(tmp_path, forged, "forged.blob")).import_objects(
            ObjectStore(tmp_path / "objects"), progress=False
        )
    assert info.value.field == "offset" and info.value.entry in (4, 5)


# -- hand-made tar members: long names, pax records, sparse maps, number fields ------


def tar_header(
    name: bytes,
    *,
    kind: bytes = b"0",
    size: int = 0,
    linkname: bytes = b"",
    mode: int = 0o644,
    gnu: bool = False,
    fields: dict[int, bytes] | None = None,
) -> bytes:
    """One 512-byte header block (ustar, or GNU's magic with ``gnu``);
    ``fields``: raw bytes put at those offsets (base-256 numbers, sparse maps)."""
    block = bytearray(512)
    block[0 : len(name[:100])] = name[:100]
    block[100:108] = b"%07o\0" % mode
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size if 0 <= size < 8**11 else b"\x80" + size.to_bytes(11, "big")
    block[136:148] = b"%011o\0" % 1700000000
    block[156:157] = kind
    block[157 : 157 + len(linkname[:100])] = linkname[:100]
    block[257:265] = b"ustar  \0" if gnu else b"ustar\x0000"
    for offset, value in (fields or {}).items():
        block[offset : offset + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def tar_data(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def tar_member(name: bytes, data: bytes = b"", **header: object) -> bytes:
    return tar_header(name, size=len(data), **header) + tar_data(data)  # type: ignore[arg-type]


def pax_records(records: dict[bytes, bytes]) -> bytes:
    out = bytearray()
    for key, value in records.items():
        body = b" " + key + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length += 1
        out += str(length).encode() + body
    return bytes(out)


def pax_member(records: dict[bytes, bytes], *, kind: bytes = b"x") -> bytes:
    return tar_member(b"PaxHeaders/x", pax_records(records), kind=kind)


def tar_end() -> bytes:
    return bytes(1024)


def sparse_tar(fmt: str, real_size: int, pieces: list[tuple[int, bytes]]) -> bytes:
    """One sparse file ``s`` of ``real_size`` bytes with data ``pieces`` (offset, bytes),
    in GNU's old format (``S``) or pax sparse 0.0, 0.1 or 1.0, then a file ``after``."""
    data = b"".join(piece for _, piece in pieces)
    pairs = [(offset, len(piece)) for offset, piece in pieces]
    if fmt == "gnu":
        fields: dict[int, bytes] = {483: b"%011o\0" % real_size}
        for index, (offset, length) in enumerate(pairs[:4]):
            fields[386 + 24 * index] = b"%011o\0%011o\0" % (offset, length)
        extension = b""
        rest = pairs[4:]
        if rest:
            fields[482] = b"\1"
        while rest:
            block = bytearray(512)
            for index, (offset, length) in enumerate(rest[:21]):
                block[24 * index : 24 * index + 24] = b"%011o\0%011o\0" % (offset, length)
            rest = rest[21:]
            block[504] = 1 if rest else 0
            extension += bytes(block)
        member = tar_header(b"s", kind=b"S", size=len(data), gnu=True, fields=fields)
        member += extension + tar_data(data)
    elif fmt == "pax-0.0":
        records = [
            (b"GNU.sparse.size", b"%d" % real_size),
            (b"GNU.sparse.numblocks", b"%d" % len(pairs)),
        ]
        for offset, length in pairs:
            records += [
                (b"GNU.sparse.offset", b"%d" % offset),
                (b"GNU.sparse.numbytes", b"%d" % length),
            ]
        body = b"".join(pax_records({key: value}) for key, value in records)
        member = tar_member(b"PaxHeaders/s", body, kind=b"x") + tar_member(b"s", data)
    elif fmt == "pax-0.1":
        sparse_map = b",".join(b"%d,%d" % pair for pair in pairs)
        records = {
            b"GNU.sparse.size": b"%d" % real_size,
            b"GNU.sparse.numblocks": b"%d" % len(pairs),
            b"GNU.sparse.map": sparse_map,
        }
        member = pax_member(records) + tar_member(b"s", data)
    else:
        assert fmt == "pax-1.0"
        records = {
            b"GNU.sparse.major": b"1",
            b"GNU.sparse.minor": b"0",
            b"GNU.sparse.name": b"s",
            b"GNU.sparse.realsize": b"%d" % real_size,
        }
        sparse_map = b"%d\n" % len(pairs) + b"".join(b"%d\n%d\n" % pair for pair in pairs)
        member = pax_member(records) + tar_member(b"GNUSparseFile.0/s", tar_data(sparse_map) + data)
    return member + tar_member(b"after", b"tail") + tar_end()


def sparse_content(real_size: int, pieces: list[tuple[int, bytes]]) -> bytes:
    content = bytearray(real_size)
    for offset, piece in pieces:
        content[offset : offset + len(piece)] = piece
    return bytes(content)


@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
@pytest.mark.parametrize(
    "pieces",
    [
        [(0, b"head"), (10000, b"middle" * 100), (70000, b"end")],
        [(512 * i, b"%d" % i) for i in range(30)],  # GNU: extension blocks
        [(5000, b"x")],  # a hole first
        [],  # holes only
    ],
    ids=["three", "thirty", "hole-first", "empty-map"],
)
def test_tar_sparse_members_read_with_their_holes(
    tmp_path: Path, fmt: str, pieces: list[tuple[int, bytes]]
) -> None:
    real_size = 80000
    root = tmp_path / "objects"
    blob = write_blob(tmp_path, sparse_tar(fmt, real_size, pieces))
    tree = open_layer(blob).import_objects(ObjectStore(root), progress=False)
    content = sparse_content(real_size, pieces)
    node = tree.inode(b"/s")
    assert node.size == real_size and node.payload == sha256_payload(content)
    assert ObjectStore(root).path_for(node.payload).read_bytes() == content
    assert tree.inode(b"/after").payload == sha256_payload(b"tail")


@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
@pytest.mark.parametrize(
    ("real_size", "pieces"),
    [
        (1000, [(0, b"x" * 600), (500, b"y" * 10)]),  # overlapping
        (1000, [(500, b"y"), (0, b"x")]),  # out of order
        (1000, [(990, b"z" * 20)]),  # beyond the real size
    ],
    ids=["overlap", "unordered", "beyond"],
)
def test_tar_inconsistent_sparse_maps_rejected(
    tmp_path: Path, fmt: str, real_size: int, pieces: list[tuple[int, bytes]]
) -> None:
    root = tmp_path / "objects"
    blob = write_blob(tmp_path, sparse_tar(fmt, real_size, pieces))
    with pytest.raises(ValidationError) as info:
        open_layer(blob).import_objects(ObjectStore(root), progress=False)
    assert info.value.entry == 0 and info.value.field == "sparse"
    assert store_files(root) == []


@pytest.mark.parametrize(
    ("blob", "field"),
    [
        pytest.param(
            tar_header(b"neg", fields={124: b"\xff" * 12}) + tar_end(), "size", id="negative-size"
        ),
        pytest.param(
            tar_member(b"a", b"1") + tar_header(b"big", size=1 << 80) + tar_end(),
            "size",
            id="base256-size-beyond-limit",
        ),
        pytest.param(
            tar_member(b"././@LongLink", b"n" * 5000 + b"\0", kind=b"L")
            + tar_member(b"short")
            + tar_end(),
            "name",
            id="gnu-long-name",
        ),
        pytest.param(
            tar_member(b"././@LongLink", b"t" * 5000 + b"\0", kind=b"K")
            + tar_member(b"link", kind=b"2")
            + tar_end(),
            "linkName",
            id="gnu-long-link",
        ),
        pytest.param(
            pax_member({b"path": b"p" * 5000}) + tar_member(b"short") + tar_end(),
            "name",
            id="pax-path",
        ),
        pytest.param(
            pax_member({b"linkpath": b"l" * 5000}) + tar_member(b"link", kind=b"2") + tar_end(),
            "linkName",
            id="pax-linkpath",
        ),
        pytest.param(
            pax_member({b"size": b"-5"}) + tar_member(b"f") + tar_end(), "size", id="pax-size"
        ),
        pytest.param(
            pax_member({b"path": b"a"}) * 50 + tar_member(b"f") + tar_end(),
            "type",
            id="extended-headers-without-a-file",
        ),
        pytest.param(pax_member({b"path": b"a"}) + tar_end(), "type", id="pax-then-end"),
        pytest.param(
            tar_member(b"PaxHeaders/x", b"99 path=x\n", kind=b"x") + tar_end(),
            "pax",
            id="pax-record-length-beyond-header",
        ),
    ],
)
def test_tar_hostile_headers_rejected(tmp_path: Path, blob: bytes, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        open_layer(write_blob(tmp_path, blob), limits=Limits(max_file_size=1 << 40)).tree()
    assert info.value.field == field


def test_tar_long_names_up_to_the_limit_accepted(tmp_path: Path) -> None:
    name = ("d" * 200 + "/") * 20 + "f" * 74  # "/" and this: 4095 bytes
    assert len(name) == 4094
    target = "t" * 4095
    blob = (
        tar_member(b"././@LongLink", name.encode() + b"\0", kind=b"L")
        + tar_member(b"x", b"data")
        + pax_member({b"path": b"./" + name.encode()[:-1] + b"g", b"linkpath": target.encode()})
        + tar_member(b"y", kind=b"2")
        + tar_end()
    )
    tree = open_layer(write_blob(tmp_path, blob)).tree()
    assert tree.inode(b"/" + name.encode()).size == 4
    assert tree.inode(b"/" + name.encode()[:-1] + b"g").symlink_target == target.encode()


@pytest.mark.parametrize(
    "options",
    [
        ["--format=gnu"],
        ["--format=posix"],
        ["--format=posix", "--sparse-version=0.1"],
        ["--format=posix", "--sparse-version=0.0"],
    ],
    ids=["gnu", "pax-1.0", "pax-0.1", "pax-0.0"],
)
def test_tar_sparse_files_and_long_names_from_gnu_tar(tmp_path: Path, options: list[str]) -> None:
    tar = shutil.which("tar")
    if (
        tar is None
        or b"GNU tar" not in subprocess.run([tar, "--version"], capture_output=True).stdout
    ):
        pytest.skip("GNU tar is not installed")
    root = tmp_path / "root"
    (root / ("d" * 150)).mkdir(parents=True)
    sparse = root / "sparse"
    with sparse.open("wb") as out:
        out.truncate(10 << 20)
        out.seek(5_000_000)
        out.write(b"hello")
        out.seek(9_000_000)
        out.write(b"end")
    long_name = root / ("d" * 150) / ("f" * 200)
    long_name.write_bytes(b"long")
    (root / "link").symlink_to("t" * 300)
    blob = tmp_path / "layer.tar"
    subprocess.run([tar, "-C", str(root), "--sparse", *options, "-cf", str(blob), "."], check=True)
    store = tmp_path / "objects"
    tree = open_layer(blob).import_objects(ObjectStore(store), progress=False)
    node = tree.inode(b"/sparse")
    assert node.size == 10 << 20 and node.payload == sha256_payload(sparse.read_bytes())
    assert ObjectStore(store).path_for(node.payload).stat().st_size == 10 << 20
    assert tree.inode(b"/" + b"d" * 150 + b"/" + b"f" * 200).payload == sha256_payload(b"long")
    assert tree.inode(b"/link").symlink_target == b"t" * 300


# -- truncated blobs -------------------------------------------------------------

#: Cut lengths: every one of the last 128 bytes, then a dense sample up to 5000.
CUTS = [*range(1, 129), *range(131, 5001, 97), 4999, 5000]


def _small_tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(3):
            data = os.urandom(700 + 900 * i)
            info = tarfile.TarInfo(f"dir/file{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _generated(kind: str) -> bytes:
    raw = _small_tar_bytes()
    if kind == "tar.gz":
        return gzip.compress(raw)
    if kind == "tar.zst":
        return zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    return raw


def _refused(path: Path) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        layer = open_layer(path)
        layer.tree()
    return info.value


@pytest.mark.parametrize("name", [ZSTD_CHUNKED, ESTARGZ, ESTARGZ_CHUNKED, TAR])
def test_truncated_real_blob_is_refused(name: str, tmp_path: Path) -> None:
    data = shared(name).read_bytes()
    cut = tmp_path / "cut.blob"
    cut.write_bytes(data)
    accepted = []
    for length in CUTS:
        os.truncate(cut, len(data) - length)
        try:
            _refused(cut)
        except pytest.fail.Exception:
            accepted.append(length)
    assert not accepted, f"{name} cut by these byte counts was accepted: {accepted[:20]}"


@pytest.mark.parametrize("kind", ["tar.gz", "tar.zst", "tar"])
def test_truncated_generated_blob_is_refused(kind: str, tmp_path: Path) -> None:
    data = _generated(kind)
    path = tmp_path / f"layer.{kind}"
    path.write_bytes(data)
    assert open_layer(path).tree()  # intact: accepted
    # A plain tar may lose whole zero blocks after its last member (see test_tar_end_rule).
    members_end = -(-len(data.rstrip(b"\0")) // 512) * 512
    accepted = []
    for length in range(1, min(5000, len(data) - 1)):
        if kind == "tar" and length % 512 == 0 and len(data) - length >= members_end:
            continue
        path.write_bytes(data[:-length])
        try:
            error = _refused(path)
        except pytest.fail.Exception:
            accepted.append(length)
            continue
        assert str(error)
    assert not accepted, f"{kind} cut by these byte counts was accepted: {accepted[:20]}"


def test_corrupt_gzip_and_zstd_checksums_are_refused(tmp_path: Path) -> None:
    gz = bytearray(_generated("tar.gz"))
    gz[-8] ^= 1  # CRC32 of the member
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(gz)
    assert "data check" in str(_refused(path))  # zlib: the CRC-32 does not match
    zst = bytearray(_generated("tar.zst"))
    zst[-1] ^= 1  # the frame's content checksum
    path = tmp_path / "bad.tar.zst"
    path.write_bytes(zst)
    _refused(path)


@pytest.mark.parametrize(
    ("name", "footer", "marker"), [(ZSTD_CHUNKED, 72, "zstd:chunked"), (ESTARGZ, 51, "eStargz")]
)
def test_blob_without_its_footer_is_not_downgraded(
    name: str, footer: int, marker: str, tmp_path: Path
) -> None:
    data = shared(name).read_bytes()
    path = tmp_path / "nofooter.blob"
    path.write_bytes(data[:-footer])  # exactly the footer removed: a valid tar.zst / tar.gz
    assert marker in str(_refused(path))


def test_tar_end_rule(tmp_path: Path) -> None:
    """Two zero blocks, or EOF right after a complete member (as GNU tar and Go accept)."""
    raw = _small_tar_bytes()
    body = raw.rstrip(b"\0")
    body += bytes(-len(body) % 512)
    path = tmp_path / "t.tar"
    path.write_bytes(body)  # complete last member, no end blocks
    assert open_layer(path).tree()
    path.write_bytes(body + bytes(512))
    assert open_layer(path).tree()
    path.write_bytes(body + bytes(1024))
    assert open_layer(path).tree()
    path.write_bytes(body + bytes(1024) + b"junk" + bytes(508))
    _refused(path)


def test_truncated_zstd_chunked_with_annotation_is_refused(tmp_path: Path) -> None:
    data = shared(ZSTD_CHUNKED).read_bytes()
    manifest = json.loads(shared("small.zstd-chunked.oci-manifest.json").read_text())
    position = manifest["layers"][0]["annotations"][
        "io.github.containers.zstd-chunked.manifest-position"
    ]
    path = tmp_path / "cut.blob"
    for length in (1, 8, 72, 500):
        path.write_bytes(data[:-length])
        with pytest.raises(ValidationError):
            open_layer(path, manifest_position=position).tree()


@pytest.mark.parametrize("name", [ESTARGZ, ESTARGZ_CHUNKED])
def test_estargz_toc_member_crc_is_checked(name: str, tmp_path: Path) -> None:
    data = bytearray(shared(name).read_bytes())
    data[-51 - 8] ^= 1  # the CRC-32 of the TOC's gzip member, just before the footer
    path = tmp_path / "bad.blob"
    path.write_bytes(data)
    error = _refused(path)
    assert error.field == "toc"


def test_tar_zst_frames_of_every_shape_are_followed(tmp_path: Path) -> None:
    """Frames with and without checksums or content sizes, pzstd's skippable
    frames between them: accepted whole, refused cut anywhere."""
    raw = _small_tar_bytes()
    pieces = [raw[i : i + 1500] for i in range(0, len(raw), 1500)]
    out = b""
    for i, piece in enumerate(pieces):
        compressor = zstandard.ZstdCompressor(
            level=1 + i % 5, write_checksum=bool(i % 2), write_content_size=bool(i % 3)
        )
        out += struct.pack("<II", 0x184D2A50, 4) + struct.pack("<I", i)  # as pzstd writes
        out += compressor.compress(piece)
    path = tmp_path / "frames.tar.zst"
    path.write_bytes(out)
    assert len(open_layer(path).tree()) > 1
    for length in range(1, 600):
        path.write_bytes(out[:-length])
        _refused(path)


def test_zeros_after_the_tar_end_are_bounded(tmp_path: Path) -> None:
    raw = _small_tar_bytes() + bytes(64 << 20)
    path = tmp_path / "zeros.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor(level=19).compress(raw))
    assert open_layer(path).tree()
    with pytest.raises(ValidationError, match="max_hole_ratio"):
        open_layer(path, limits=Limits(max_hole_ratio=100)).tree()


def test_manifest_position_must_agree_with_the_footer() -> None:
    with pytest.raises(ValidationError, match="footer") as info:
        open_layer(shared(ZSTD_CHUNKED), manifest_position="1605729:9126:42438:1")
    assert info.value.field == "manifest_position"


def test_zstd_chunked_with_bytes_after_the_tar_split_is_refused(tmp_path: Path) -> None:
    data = shared(ZSTD_CHUNKED).read_bytes()
    path = tmp_path / "padded.blob"
    path.write_bytes(data[:-72] + bytes(16) + data[-72:])
    with pytest.raises(ValidationError, match="tar-split"):
        open_layer(path)


@pytest.mark.parametrize("name", [ESTARGZ, ESTARGZ_CHUNKED])
def test_estargz_file_member_crc_is_checked_on_import(name: str, tmp_path: Path) -> None:
    data = bytearray(shared(name).read_bytes())
    toc = json.loads(open_layer(shared(name)).toc_bytes())
    entry = next(e for e in toc["entries"] if e["type"] == "reg" and e.get("size", 0) > 100)
    inflate = zlib.decompressobj(31)
    inflate.decompress(bytes(data[entry["offset"] :]))
    member_end = len(data) - len(inflate.unused_data)
    data[member_end - 8] ^= 1  # the CRC-32 of the member holding the file's first data
    path = tmp_path / "bad.blob"
    path.write_bytes(data)
    with pytest.raises(ValidationError, match="data check") as info:
        open_layer(path).import_objects(ObjectStore(tmp_path / "objects"), progress=False)
    assert info.value.path is not None
    assert not store_files(tmp_path / "objects")
