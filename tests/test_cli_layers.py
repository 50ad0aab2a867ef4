"""``composefs-py build`` of several layers, stacked and ID-mapped ``mount``,
and the fs-verity options, through the command line (composefs_py.cli.main).

Layers are real: the shipped layer blobs (tests/data/layers) and small tars
written here with whiteouts and opaque directories.  What a build or a mount
gives is compared with an independent reference: the tars extracted in order
with OCI whiteout rules, written in this file from the OCI image spec (it
shares no code with composefs_py.mount.flatten).  Mount tests need root and
a kernel with erofs + overlayfs (stacking: Linux >= 6.7); elsewhere they skip.
Every mount is unmounted in a ``finally``, and each mount test checks that
nothing stays mounted.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import test_cli
from test_cli import Run, one_error_line
from test_fsverity import dump_digests
from test_mount import leftover_mounts, require_mounts

from composefs_py.fsverity import fsverity_digest
from composefs_py.model import Inode
from composefs_py.objects import ObjectStore
from composefs_py.writer import read_image

run = test_cli.run  # the fixture running composefs_py.cli.main

LAYERS = Path(__file__).resolve().parent / "data" / "layers"
BLOB = LAYERS / "small.zstd-chunked.blob"
BLOB_SOURCE_TAR = LAYERS / "small.tar"  # what skopeo made BLOB from

#: A path's kind and what identifies its content: file bytes, symlink target,
#: "major,minor" of a device, b"" otherwise.
View = dict[str, tuple[str, bytes]]

# ---------------------------------------------------------------------------
# layer tars and the reference extraction
# ---------------------------------------------------------------------------

Member = tuple[str, str, bytes | str]  # (name, kind, data or link target)


def make_tar(path: Path, members: Sequence[Member]) -> Path:
    """Write a tar layer: kind is file, dir, symlink, hardlink or whiteout
    (an empty ``.wh.NAME`` file; ``.wh..wh..opq`` marks an opaque dir)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            info.uid = info.gid = 1000 if name.startswith("home/") else 0
            data = b""
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, str(payload)
            else:
                data = payload if isinstance(payload, bytes) else b""
                info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def _clean(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _remove_tree(view: View, path: str) -> None:
    for key in [k for k in view if k == path or k.startswith(path + "/")]:
        if key:
            del view[key]


def reference(tars: Sequence[Path]) -> View:
    """Extract ``tars`` (base first) the OCI way: in each layer, whiteouts
    first remove from the lower layers (``.wh.NAME``: NAME and below;
    ``.wh..wh..opq``: everything below its directory), then its entries are
    added; a non-directory over a directory replaces the whole subtree."""
    view: View = {"": ("dir", b"")}
    for tar_path in tars:
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            contents = {
                _clean(m.name): tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in members
                if m.isreg()
            }
        for member in members:
            name = _clean(member.name)
            parent, _, base = name.rpartition("/")
            if base == ".wh..wh..opq":
                for key in [k for k in view if k.startswith(parent + "/" if parent else "")]:
                    if key and key != parent:
                        del view[key]
            elif base.startswith(".wh."):
                _remove_tree(view, f"{parent}/{base[4:]}" if parent else base[4:])
        for member in members:
            name = _clean(member.name)
            if name.rpartition("/")[2].startswith(".wh.") or not name:
                continue
            parts = name.split("/")
            for depth in range(1, len(parts)):  # missing parents become directories
                ancestor = "/".join(parts[:depth])
                if view.get(ancestor, ("",))[0] != "dir":
                    _remove_tree(view, ancestor)
                    view[ancestor] = ("dir", b"")
            if member.isdir():
                entry: tuple[str, bytes] = ("dir", b"")
            elif member.issym():
                entry = ("symlink", member.linkname.encode())
            elif member.islnk():
                entry = ("reg", contents[_clean(member.linkname)])
            elif member.isreg():
                entry = ("reg", contents[name])
            elif member.ischr() or member.isblk():
                kind = "char" if member.ischr() else "block"
                entry = (kind, f"{member.devmajor},{member.devminor}".encode())
            else:
                entry = ("fifo", b"")
            if entry[0] != "dir" or view.get(name, ("",))[0] != "dir":
                _remove_tree(view, name)
            view[name] = entry
    return view


def seen_in(mnt: Path, ghosts: set[str] | None = None) -> View:
    """The mounted tree, read through syscalls.

    A name that readdir lists but lstat does not find is an error, unless
    ``ghosts`` is given: then it is collected there.
    """
    view: View = {}
    for folder, dirs, files in os.walk(mnt):
        for name in ["", *dirs, *files] if Path(folder) == mnt else [*dirs, *files]:
            path = Path(folder) / name
            rel = _clean(os.path.relpath(path, mnt)) if name else ""
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if ghosts is None:
                    raise
                ghosts.add(rel)
                continue
            view[rel] = entry_of(st.st_mode, st.st_rdev, path.read_bytes, partial(link_of, path))
    return view


def link_of(path: Path) -> bytes:
    return os.fsencode(os.readlink(path))


def entry_of(
    mode: int, rdev: int, data: Callable[[], bytes], link: Callable[[], bytes]
) -> tuple[str, bytes]:
    """A View entry for a file of ``mode``; ``data``/``link`` read what it holds."""
    if stat.S_ISDIR(mode):
        return ("dir", b"")
    if stat.S_ISREG(mode):
        return ("reg", data())
    if stat.S_ISLNK(mode):
        return ("symlink", link())
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "char" if stat.S_ISCHR(mode) else "block"
        return (kind, f"{os.major(rdev)},{os.minor(rdev)}".encode())
    return ("fifo", b"")


def image_view(image: Path, objects: Path) -> View:
    """The image's tree, contents read from the object store (no mount)."""
    store = ObjectStore(objects)
    tree = read_image(image)
    view: View = {}
    for path, _node in tree:
        inode = tree.inode(path)

        def data(inode: Inode = inode) -> bytes:
            if inode.payload is not None:
                return store.path_for(inode.payload).read_bytes()
            return inode.content or b""

        view[_clean(path.decode())] = entry_of(
            inode.mode, inode.rdev, data, partial(lambda node: node.symlink_target or b"", inode)
        )
    return view


# ---------------------------------------------------------------------------
# the layers used here
# ---------------------------------------------------------------------------

BIG = hashlib.shake_256(b"big").digest(100_000)


def small_stack(tmp: Path) -> list[Path]:
    """Three tar layers, base first: files; deletions, an opaque dir, a
    replaced file, a dir replaced by a file; additions and a hardlink."""
    base = make_tar(
        tmp / "base.tar",
        [
            ("etc/", "dir", b""),
            ("etc/a.conf", "file", b"a = 1\n" * 50),
            ("etc/b.conf", "file", b"b = 1\n"),
            ("usr/bin/tool", "file", BIG),
            ("usr/lib/x/one.so", "file", b"one" * 1000),
            ("usr/lib/x/two.so", "file", b"two" * 1000),
            ("opt/keep/data", "file", b"kept" * 100),
            ("opt/gone/data", "file", b"gone" * 100),
            ("var/thing/inner", "file", b"inner" * 100),
            ("home/user/.profile", "file", b"export A=1\n"),
            ("bin", "symlink", "usr/bin"),
        ],
    )
    middle = make_tar(
        tmp / "middle.tar",
        [
            ("etc/.wh.a.conf", "whiteout", b""),
            ("usr/lib/x/.wh..wh..opq", "whiteout", b""),
            ("usr/lib/x/three.so", "file", b"three" * 1000),
            ("opt/.wh.gone", "whiteout", b""),
            ("etc/b.conf", "file", b"b = 2\n" * 30),
            ("var/thing", "file", b"a file where a directory was\n"),
        ],
    )
    top = make_tar(
        tmp / "top.tar",
        [
            ("etc/a.conf", "file", b"a is back\n" * 20),
            ("srv/new/file", "file", BIG[::-1]),
            ("srv/new/link", "hardlink", "srv/new/file"),
            ("usr/bin/.wh.tool", "whiteout", b""),
        ],
    )
    return [base, middle, top]


def real_stack(tmp: Path) -> tuple[list[Path], list[Path]]:
    """The shipped zstd:chunked layer as the base, then two tars changing it.

    Returns (the layers to build, base first; the tars the reference
    extracts: small.tar, the blob's source, instead of the blob)."""
    if not BLOB.is_file() or not BLOB_SOURCE_TAR.is_file():
        pytest.skip(f"shipped layers missing in {LAYERS}")
    middle = make_tar(
        tmp / "real-middle.tar",
        [
            ("usr/bin/.wh.passwd", "whiteout", b""),
            ("usr/lib/python3.11/email/.wh..wh..opq", "whiteout", b""),
            ("usr/lib/python3.11/email/only.py", "file", b"ONLY = True\n" * 10),
            ("etc/os-release", "file", b"NAME=composefs-py test\n" * 5),
            ("usr/bin/.wh.unzstd", "whiteout", b""),  # zstd, its hardlink, stays
        ],
    )
    top = make_tar(
        tmp / "real-top.tar",
        [
            ("usr/bin/passwd", "file", b"#!/bin/sh\necho replaced\n" * 10),
            ("opt/app/big", "file", BIG),
        ],
    )
    return [BLOB, middle, top], [BLOB_SOURCE_TAR, middle, top]


def without_whiteouts(view: View) -> View:
    """The reference for one layer alone: its whiteouts are not files."""
    return {k: v for k, v in view.items() if not k.rpartition("/")[2].startswith(".wh.")}


# ---------------------------------------------------------------------------
# build of several layers (no mount needed)
# ---------------------------------------------------------------------------


def test_build_several_tar_layers_applies_whiteouts_and_opaque_dirs(
    run: Run, tmp_path: Path
) -> None:
    layers = small_stack(tmp_path)
    image, objects = tmp_path / "stack.cfs", tmp_path / "objects"
    status, stdout, stderr = run("build", *layers, "-o", image, "--objects", objects)
    assert status == 0, stderr
    assert stdout.strip() == fsverity_digest(image).hex()
    expected = reference(layers)
    assert image_view(image, objects) == expected
    # what the layers did, spelled out
    assert "etc/a.conf" in expected and expected["etc/a.conf"][1].startswith(b"a is back")
    assert "usr/lib/x/one.so" not in expected and "usr/lib/x/three.so" in expected
    assert "opt/gone" not in expected and "opt/keep/data" in expected
    assert expected["var/thing"][0] == "reg" and "var/thing/inner" not in expected
    assert "usr/bin/tool" not in expected
    tree = read_image(image)
    assert tree.inode(b"/srv/new/link") == tree.inode(b"/srv/new/file")  # still one inode


def test_build_real_layers_base_first(run: Run, tmp_path: Path) -> None:
    layers, reference_tars = real_stack(tmp_path)
    image, objects = tmp_path / "real.cfs", tmp_path / "objects"
    status, _, stderr = run("build", *layers, "-o", image, "--objects", objects)
    assert status == 0, stderr
    expected = reference(reference_tars)
    assert image_view(image, objects) == expected
    assert expected["usr/bin/passwd"][1].startswith(b"#!/bin/sh")
    assert sorted(k for k in expected if k.startswith("usr/lib/python3.11/email/")) == [
        "usr/lib/python3.11/email/only.py"
    ]
    # base first matters: the other order gives another tree
    other = tmp_path / "reversed.cfs"
    assert run("build", *reversed(layers), "-o", other, "--objects", objects)[0] == 0
    assert image_view(other, objects) != expected


def test_build_one_layer_keeps_its_whiteouts(run: Run, tmp_path: Path) -> None:
    middle = small_stack(tmp_path)[1]
    image = tmp_path / "middle.cfs"
    assert run("build", middle, "-o", image, "--objects", tmp_path / "objects")[0] == 0
    whiteout = read_image(image).inode(b"/etc/a.conf")
    assert stat.S_ISCHR(whiteout.mode) and whiteout.rdev == 0


def test_build_several_sources_errors(run: Run, tmp_path: Path) -> None:
    layers = small_stack(tmp_path)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a layer at all" * 100)
    objects = tmp_path / "objects"
    status, _, stderr = run("build", layers[0], bad, "-o", tmp_path / "x.cfs", "--objects", objects)
    assert status == 1
    assert "not a layer" in one_error_line(stderr)
    assert not (tmp_path / "x.cfs").exists()
    status, _, stderr = run("build", "-", "-", "-o", tmp_path / "x.cfs")
    assert status == 2 and "standard input" in stderr


@contextmanager
def cli_mounted(run: Run, mnt: Path, *args: str | os.PathLike[str]) -> Iterator[Path]:
    status, _, stderr = run("mount", *args, mnt)
    assert status == 0, stderr
    try:
        yield mnt
    finally:
        status, _, stderr = run("unmount", mnt)
        assert status == 0, stderr


# ---------------------------------------------------------------------------
# fs-verity options of build
# ---------------------------------------------------------------------------


def extract_regular_files(tar_path: Path, into: Path) -> None:
    """Write the tar's regular files (hardlinks as copies) below ``into``."""
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            if member.isreg() or member.islnk():
                target = into / _clean(member.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]


def unescape_dump_path(path: str) -> str:
    """A composefs-dump(5) path with its ``\\xHH`` escapes decoded."""
    return path.encode("ascii").decode("unicode_escape").encode("latin-1").decode()


def test_build_verity_digests_equal_mkcomposefs_digest_store(
    run: Run, tmp_path: Path, mkcomposefs: Path, composefs_info: Path
) -> None:
    layers, reference_tars = real_stack(tmp_path)
    image, objects = tmp_path / "verity.cfs", tmp_path / "objects"
    status, _, stderr = run("build", *layers, "-o", image, "--objects", objects, "--verity-digests")
    assert status == 0, stderr
    ours = {}
    tree = read_image(image)
    for path, node in tree:
        if isinstance(node, Inode) and node.payload is not None:
            assert node.fsverity_digest is not None, path
            assert node.fsverity_digest == fsverity_digest(objects / node.payload.decode())
            ours[path.decode()] = node.fsverity_digest.hex()
    # The oracle: mkcomposefs hashes the same files, extracted from the tars.
    source = tmp_path / "extracted"
    for tar_path in reference_tars:
        extract_regular_files(tar_path, source)
    oracle = tmp_path / "oracle.cfs"
    subprocess.run(
        [str(mkcomposefs), f"--digest-store={tmp_path / 'oracle-store'}", str(source), str(oracle)],
        check=True,
        capture_output=True,
    )
    theirs = {
        unescape_dump_path(path): value
        for path, value in dump_digests(composefs_info, oracle).items()
    }
    # every file with an object is compared, but the few mkcomposefs inlines (<= 64 bytes)
    compared = [name for name in ours if name in theirs]
    inlined = [name for name in ours if name not in theirs]
    assert all(tree.inode(name.encode()).size <= 64 for name in inlined), inlined
    assert len(compared) >= 20
    for name in compared:
        assert ours[name] == theirs[name][1], name


def test_build_verity_options_need_objects(run: Run, tmp_path: Path) -> None:
    for flag in ("--verity-digests", "--enable-verity"):
        status, _, stderr = run("build", BLOB, "-o", tmp_path / "x.cfs", flag)
        assert status == 2 and f"{flag} needs --digest-store" in stderr


def test_build_enable_verity_enables_it_or_fails_before_importing(run: Run, tmp_path: Path) -> None:
    layers = small_stack(tmp_path)
    image, objects, mnt = tmp_path / "v.cfs", tmp_path / "objects", tmp_path / "mnt"
    status, _, stderr = run("build", *layers, "-o", image, "--objects", objects, "--enable-verity")
    if status == 1:  # this kernel or file system has no fs-verity
        line = one_error_line(stderr)
        assert f"cannot enable fs-verity on the object store {objects}: " in line
        assert "file system" in line
        assert not image.exists()
        assert [p for p in objects.rglob("*")] == []
        return
    # The live path: every object has fs-verity, the image requires it.
    assert status == 0, stderr
    require_mounts()
    mnt.mkdir()
    with cli_mounted(run, mnt, image, "--objects", objects, "--require-verity"):
        assert seen_in(mnt) == reference(layers)


def test_require_verity_mount_of_objects_without_fsverity_is_refused(
    run: Run, tmp_path: Path
) -> None:
    require_mounts()
    layers = small_stack(tmp_path)
    image, objects, mnt = tmp_path / "d.cfs", tmp_path / "objects", tmp_path / "mnt"
    mnt.mkdir()
    assert run("build", *layers, "-o", image, "--objects", objects, "--verity-digests")[0] == 0
    status, _, stderr = run("mount", image, mnt, "--objects", objects, "--require-verity")
    if status == 0:  # objects on a file system with fs-verity enabled by default: unusual
        run("unmount", mnt)
        pytest.skip("the objects have fs-verity here")
    assert status == 1
    assert "has no fs-verity" in one_error_line(stderr)
    assert leftover_mounts(tmp_path) == []
    # try-verity falls back to a mount without it
    with cli_mounted(run, mnt, image, "--objects", objects, "--try-verity"):
        assert seen_in(mnt) == reference(layers)


# ---------------------------------------------------------------------------
# mounting: the flattened image and the stacked layer images
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["small", "real"])
def test_flattened_and_stacked_mounts_show_the_reference(
    stack: str, run: Run, tmp_path: Path
) -> None:
    require_mounts(xwhiteouts=True)
    if stack == "small":
        layers = small_stack(tmp_path)
        reference_tars = layers
    else:
        layers, reference_tars = real_stack(tmp_path)
    expected = reference(reference_tars)
    objects, mnt = tmp_path / "objects", tmp_path / "mnt"
    mnt.mkdir()
    flat = tmp_path / "flat.cfs"
    assert run("build", *layers, "-o", flat, "--objects", objects)[0] == 0
    per_layer = []
    for index, layer in enumerate(layers):
        image = tmp_path / f"layer{index}.cfs"
        assert run("build", layer, "-o", image, "--objects", objects)[0] == 0
        per_layer.append(image)
    with cli_mounted(run, mnt, flat, "--objects", objects):
        assert seen_in(mnt) == expected
    ghosts: set[str] = set()
    with cli_mounted(run, mnt, *reversed(per_layer), "--objects", objects):  # top first
        assert seen_in(mnt, ghosts) == expected
    # Linux 6.18's overlayfs lists the whiteouts of the lowest layer in
    # readdir (a lookup finds nothing): exactly those names, nothing else.
    base_whiteouts = set()
    with tarfile.open(reference_tars[0]) as tar:
        for member in tar.getmembers():
            parent, _, base = _clean(member.name).rpartition("/")
            if base.startswith(".wh.") and base != ".wh..wh..opq":
                base_whiteouts.add(f"{parent}/{base[4:]}" if parent else base[4:])
    assert ghosts <= base_whiteouts
    assert leftover_mounts(tmp_path) == []


def test_stacked_mount_failure_is_one_line_and_leaves_nothing(run: Run, tmp_path: Path) -> None:
    require_mounts(xwhiteouts=True)
    layers = small_stack(tmp_path)
    objects, mnt = tmp_path / "objects", tmp_path / "mnt"
    mnt.mkdir()
    good = tmp_path / "good.cfs"
    assert run("build", layers[0], "-o", good, "--objects", objects)[0] == 0
    not_image = tmp_path / "not-an-image.cfs"
    not_image.write_bytes(b"\0" * 8192)
    status, _, stderr = run("mount", good, not_image, mnt, "--objects", objects)
    assert status == 1
    assert "not-an-image.cfs" in one_error_line(stderr)
    assert leftover_mounts(tmp_path) == []


# ---------------------------------------------------------------------------
# ID-mapped mounts
# ---------------------------------------------------------------------------


def children_of_this_process() -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        found.update(int(pid) for pid in (task / "children").read_text().split())
    return found


@pytest.fixture
def owned_image(run: Run, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(image, objects, mountpoint): the small base layer, owned by 0:0 and,
    under home/, 1000:1000."""
    require_mounts()
    base = small_stack(tmp_path)[0]
    image, objects, mnt = tmp_path / "owned.cfs", tmp_path / "objects", tmp_path / "mnt"
    mnt.mkdir()
    assert run("build", base, "-o", image, "--objects", objects)[0] == 0
    return image, objects, mnt


def test_mount_uidmap_gidmap_shift_owners_and_leave_no_process(
    run: Run, owned_image: tuple[Path, Path, Path]
) -> None:
    image, objects, mnt = owned_image
    before = children_of_this_process()
    args = ("--uidmap", "0:100000:65536", "--gidmap", "0:200000:65536")
    with cli_mounted(run, mnt, image, "--objects", objects, *args):
        assert children_of_this_process() == before  # the namespace's child is reaped
        tool = os.stat(mnt / "usr/bin/tool")
        assert (tool.st_uid, tool.st_gid) == (100000, 200000)
        profile = os.stat(mnt / "home/user/.profile")
        assert (profile.st_uid, profile.st_gid) == (101000, 201000)
        assert (mnt / "usr/bin/tool").read_bytes() == BIG
    # without a map the owners are the image's
    with cli_mounted(run, mnt, image, "--objects", objects):
        assert os.stat(mnt / "usr/bin/tool").st_uid == 0
    assert leftover_mounts(mnt) == []


def test_mount_uidmap_alone_keeps_gids(run: Run, owned_image: tuple[Path, Path, Path]) -> None:
    image, objects, mnt = owned_image
    with cli_mounted(run, mnt, image, "--objects", objects, "--uidmap", "0:100000:2000"):
        profile = os.stat(mnt / "home/user/.profile")
        assert (profile.st_uid, profile.st_gid) == (101000, 1000)


def test_mount_idmap_pid_uses_that_process_namespace(
    run: Run, owned_image: tuple[Path, Path, Path]
) -> None:
    image, objects, mnt = owned_image
    libc = ctypes.CDLL(None, use_errno=True)

    def enter_userns() -> None:
        if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
            os._exit(99)

    child = subprocess.Popen(["sleep", "600"], preexec_fn=enter_userns)
    try:
        Path(f"/proc/{child.pid}/uid_map").write_text("0 300000 65536\n")
        Path(f"/proc/{child.pid}/gid_map").write_text("0 400000 65536\n")
        with cli_mounted(run, mnt, image, "--objects", objects, "--idmap-pid", str(child.pid)):
            tool = os.stat(mnt / "usr/bin/tool")
            assert (tool.st_uid, tool.st_gid) == (300000, 400000)
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--uidmap", "0:100000:10", "--uidmap", "5:300000:10"], "container ids overlap"),
        (["--gidmap", "0:100000:10", "--gidmap", "20:100005:10"], "host ids overlap"),
        (["--uidmap", "0:4294967290:10"], "go beyond 4294967294"),
        (["--uidmap", "0:100000:0"], "count must be at least 1"),
        (["--idmap-pid", "2147483647"], "no such process"),
    ],
)
def test_mount_bad_idmap_is_one_line_exit_1(
    args: list[str], message: str, run: Run, owned_image: tuple[Path, Path, Path]
) -> None:
    image, objects, mnt = owned_image
    before = children_of_this_process()
    status, _, stderr = run("mount", image, mnt, "--objects", objects, *args)
    assert status == 1
    assert message in one_error_line(stderr)
    assert leftover_mounts(mnt) == []
    assert children_of_this_process() == before


@pytest.mark.parametrize(
    "args",
    [
        ["--uidmap", "0:100000"],
        ["--uidmap", "a:b:c"],
        ["--gidmap", "-1:0:5"],
        ["--idmap-pid", "1", "--uidmap", "0:1:1"],
        ["--idmap-pid", "x"],
    ],
)
def test_mount_malformed_idmap_is_a_usage_error(args: list[str], run: Run, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    status, _, stderr = run(
        "mount", tmp_path / "i.cfs", tmp_path / "mnt", "--objects", tmp_path, *args
    )
    assert status == 2
    assert "Traceback" not in stderr
    last = stderr.splitlines()[-1]
    assert last.startswith(("composefs-py mount: error: ", "composefs-py: error: ")), stderr


def test_mount_idmap_with_more_ranges_than_the_kernel_takes_is_one_line(
    run: Run, owned_image: tuple[Path, Path, Path]
) -> None:
    image, objects, mnt = owned_image
    ranges = [f"--uidmap={i}:{100000 + i}:1" for i in range(341)]
    status, _, stderr = run("mount", image, mnt, "--objects", objects, *ranges)
    assert status == 1
    assert "at most 340 ranges" in one_error_line(stderr)


def test_mount_needs_an_image_and_a_mountpoint(run: Run, tmp_path: Path) -> None:
    status, _, stderr = run("mount", tmp_path, "--objects", tmp_path)
    assert status == 2
    assert "needs IMAGE and MNT" in stderr.splitlines()[-1]


def test_options_between_positionals_are_accepted_and_unknown_ones_refused(
    run: Run, tmp_path: Path
) -> None:
    layers = small_stack(tmp_path)
    image, objects = tmp_path / "i.cfs", tmp_path / "objects"
    status, _, stderr = run("build", layers[0], "-o", image, layers[1], "--objects", objects)
    assert status == 0, stderr
    assert image_view(image, objects) == reference(layers[:2])
    status, _, stderr = run("build", layers[0], "-o", image, layers[1], "--bogus")
    assert status == 2
    assert "unrecognized arguments: " in stderr and "--bogus" in stderr


def test_new_options_fail_in_one_line_from_the_real_command(tmp_path: Path) -> None:
    """The entry point itself (a real process): exit 1 and one line, no traceback."""
    (tmp_path / "mnt").mkdir()
    command = [sys.executable, "-m", "composefs_py"]
    cases = [
        ["mount", "i.cfs", "mnt", "--objects", ".", "--uidmap", "0:1:10", "--uidmap", "9:50:1"],
        ["mount", "i.cfs", "mnt", "--objects", ".", "--idmap-pid", "2147483647"],
        ["build", "missing-base.tar", "missing-top.tar", "-o", "x.cfs", "--objects", "o"],
    ]
    for args in cases:
        done = subprocess.run([*command, *args], capture_output=True, cwd=tmp_path)
        assert done.returncode == 1, args
        one_error_line(done.stderr.decode())
    usage = subprocess.run([*command, "mount", "--uidmap", "zero"], capture_output=True)
    assert usage.returncode == 2
    assert b"Traceback" not in usage.stderr


@pytest.mark.parametrize(
    ("name", "cut"),
    [
        ("small.zstd-chunked.blob", 1),
        ("small.zstd-chunked.blob", 72),
        ("small.zstd-chunked.blob", 4000),
        ("small.estargz.blob", 51),
        ("small.estargz.blob", 3000),
        ("small.tar", 100),
    ],
)
def test_validate_refuses_a_truncated_layer(run: Run, tmp_path: Path, name: str, cut: int) -> None:
    data = (LAYERS / name).read_bytes()
    status, stdout, _ = run("validate", LAYERS / name)
    assert status == 0, stdout
    path = tmp_path / name
    path.write_bytes(data[:-cut])
    status, stdout, err = run("validate", path)
    assert status == 1, (stdout, err)
    assert str(path) in stdout + err


@pytest.mark.parametrize("kind", ["gz", "zst"])
def test_validate_refuses_a_compressed_tar_cut_in_its_trailer(
    run: Run, tmp_path: Path, kind: str
) -> None:
    import gzip

    import zstandard

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("file")
        info.size = 3000
        tar.addfile(info, io.BytesIO(os.urandom(3000)))
    raw = buf.getvalue()
    whole = (
        gzip.compress(raw)
        if kind == "gz"
        else zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    )
    path = tmp_path / f"layer.tar.{kind}"
    for cut in (1, 3, 4):
        path.write_bytes(whole[:-cut])
        status, stdout, err = run("validate", path)
        assert status == 1, (cut, stdout, err)
