"""scan_directory: a directory becomes the Tree mkcomposefs would make of it.

The oracle is mkcomposefs 1.0.8 itself: on a tree without hardlinks the
image from ``write_image(scan_directory(D))`` equals ``mkcomposefs D IMG``
byte for byte, for each of its options, with and without a store (and the
store holds the same objects as ``--digest-store``'s).  Where there are
hardlinks (which mkcomposefs loses), the mounted image equals the tree.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import stat
import struct
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cost import growth
from test_mount import Seen, mounted, require_mounts, walk

import composefs_py
from composefs_py import Hardlink, ObjectStore, ValidationError, write_image
from composefs_py._progress import ProgressUpdate
from composefs_py.limits import Limits
from composefs_py.objects import fsverity_of_fd
from composefs_py.scan import _MAX_OPEN_DIRS, INLINE_MAX, _Scanner, scan_directory

DATA = Path(__file__).parent / "data"
OPTIONS = ["", "--use-epoch", "--skip-xattrs", "--user-xattrs", "--skip-devices"]


def _kwargs(option: str) -> dict[str, bool]:
    return {option.lstrip("-").replace("-", "_"): True} if option else {}


def _set_mtime(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def make_every_kind(root: Path) -> Path:
    """A tree with every file type, xattrs of each namespace, devices, set
    mtimes, a deep and a wide directory, long names, empty, inline-sized and
    larger files; no hardlink."""
    root.mkdir()
    (root / "empty").write_bytes(b"")
    (root / "one").write_bytes(b"x")
    (root / "inline-max").write_bytes(b"i" * INLINE_MAX)
    (root / "just-over").write_bytes(b"o" * (INLINE_MAX + 1))
    (root / "big").write_bytes(os.urandom(3 * 4096 + 17))
    (root / "same-as-big").write_bytes((root / "big").read_bytes())  # one object
    (root / "exec").write_bytes(b"#!/bin/sh\n" * 20)
    (root / "exec").chmod(0o4755)
    (root / "link").symlink_to("big")
    (root / "dangling").symlink_to("/nowhere/" + "n" * 200)
    (root / "outside").symlink_to("../../../etc/passwd")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "loop", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mknod(root / "whiteout", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.fspath(root / "sock"))
    sock.close()
    (root / ("L" * 255)).write_bytes(b"long name" * 10)
    (root / os.fsdecode(b"not-utf8-\xff\xfe")).write_bytes(b"raw name")
    (root / "new\nline and \\ back=slash").write_bytes(b"odd name" * 10)
    os.setxattr(root / "one", "user.color", b"blue")
    os.setxattr(root / "big", "trusted.note", b"\0binary\xff")
    os.setxattr(root / "big", "user.empty", b"")
    os.setxattr(root, "user.root", b"r")
    with_selinux = root / "labelled"
    with_selinux.write_bytes(b"label" * 30)
    try:
        os.setxattr(with_selinux, "security.selinux", b"system_u:object_r:etc_t:s0\0")
    except OSError:
        pass  # the file system or an LSM refuses it here
    deep = root / "deep"
    deep.mkdir()
    here = deep
    for level in range(40):
        here = here / f"d{level}"
        here.mkdir()
    (here / "bottom").write_bytes(b"b" * 100)
    wide = root / "wide"
    wide.mkdir()
    for i in range(300):
        (wide / f"f{i:04d}").write_bytes(b"w" * (i % 80))
    (wide / "sub").mkdir(mode=0o700)
    os.chown(wide / "sub", 1234, 5678)
    os.chown(root / "one", 4321, 8765)
    os.lchown(root / "link", 42, 43)
    for n, path in enumerate(sorted(root.rglob("*"), reverse=True)):
        _set_mtime(path, 1_000_000_000 * (1_600_000_000 + n) + 123_456_789 * (n % 3))
    _set_mtime(root, -5_000_000_001)  # before the epoch, with nanoseconds
    return root


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_every_kind(tmp_path_factory.mktemp("scan") / "tree")


def mkcomposefs_image(mkcomposefs: Path, tree: Path, out: Path, *args: str) -> bytes:
    subprocess.run([mkcomposefs, *args, tree, out], check=True, capture_output=True)
    return out.read_bytes()


def scanned_image(tree: Path, out: Path, **kwargs: object) -> bytes:
    write_image(scan_directory(tree, **kwargs), out)  # type: ignore[arg-type]
    return out.read_bytes()


def store_files(root: Path) -> dict[str, bytes]:
    return {os.fspath(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# -- same bytes as mkcomposefs ------------------------------------------------


@pytest.mark.parametrize("option", OPTIONS)
def test_every_kind_of_file_gives_mkcomposefs_bytes(
    every_kind: Path, mkcomposefs: Path, tmp_path: Path, option: str
) -> None:
    args = [option] if option else []
    expected = mkcomposefs_image(mkcomposefs, every_kind, tmp_path / "ref.img", *args)
    assert scanned_image(every_kind, tmp_path / "mine.img", **_kwargs(option)) == expected


@pytest.mark.parametrize("option", OPTIONS)
def test_with_a_store_same_image_and_same_objects_as_digest_store(
    every_kind: Path, mkcomposefs: Path, tmp_path: Path, option: str
) -> None:
    args = [option] if option else []
    ref_store = tmp_path / "ref-store"
    expected = mkcomposefs_image(
        mkcomposefs, every_kind, tmp_path / "ref.img", f"--digest-store={ref_store}", *args
    )
    with ObjectStore(tmp_path / "store", naming="fsverity") as objects:
        got = scanned_image(every_kind, tmp_path / "mine.img", objects=objects, **_kwargs(option))
        assert got == expected
        assert objects.temporary_files() == []
        assert all(objects.verify(p) for p in objects.payloads())
    assert store_files(tmp_path / "store") == store_files(ref_store)


def test_a_sha256_store_names_payloads_by_sha256_and_keeps_fsverity_digests(
    every_kind: Path, tmp_path: Path
) -> None:
    with ObjectStore(tmp_path / "store") as objects:
        tree = scan_directory(every_kind, objects=objects)
        big = tree.inode("/big")
        assert big.payload is not None and objects.verify(big.payload)
        assert objects.path_for(big.payload).read_bytes() == (every_kind / "big").read_bytes()
        with open(every_kind / "big", "rb") as f:
            assert big.fsverity_digest == fsverity_of_fd(f.fileno())
        assert tree.inode("/same-as-big").payload == big.payload
        assert tree.inode("/one").content == b"x" and tree.inode("/one").payload is None
        assert tree.inode("/empty").payload is None and tree.inode("/empty").content is None


def test_the_shared_test_layer_extracted_gives_mkcomposefs_bytes(
    mkcomposefs: Path, tmp_path: Path
) -> None:
    root = tmp_path / "layer"
    with tarfile.open(DATA / "layers" / "small.tar") as tar:
        tar.extractall(root, filter="fully_trusted")
    links = [p for p in root.rglob("*") if p.is_file() and p.lstat().st_nlink > 1]
    if links:  # mkcomposefs loses hardlinks: compare without them
        for path in links:
            data = path.read_bytes()
            path.unlink()
            path.write_bytes(data)
    expected = mkcomposefs_image(mkcomposefs, root, tmp_path / "ref.img")
    assert scanned_image(root, tmp_path / "mine.img") == expected


@pytest.mark.parametrize(
    "part", ["/usr/share/doc", *sorted(str(p) for p in Path("/usr/lib").glob("python3*"))]
)
def test_a_real_tree_of_this_machine_gives_mkcomposefs_bytes(
    mkcomposefs: Path, tmp_path: Path, part: str
) -> None:
    if not Path(part).is_dir():
        pytest.skip(f"no {part} here")
    if any(p.lstat().st_nlink > 1 for p in Path(part).rglob("*") if not p.is_dir()):
        pytest.skip(f"{part} holds hardlinks here (mkcomposefs loses them)")
    expected = mkcomposefs_image(mkcomposefs, part, tmp_path / "ref.img")
    assert scanned_image(part, tmp_path / "mine.img", threads=2) == expected


def test_deeper_than_the_open_directory_budget(mkcomposefs: Path, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    here = root
    for level in range(3 * _MAX_OPEN_DIRS):
        here = here / f"{level}"
        here.mkdir(parents=True)
        (here / "f").write_bytes(b"x" * (level % 100))
    expected = mkcomposefs_image(mkcomposefs, root, tmp_path / "ref.img")
    assert scanned_image(root, tmp_path / "mine.img") == expected


# -- hardlinks ------------------------------------------------------------------


def make_hardlinks(root: Path) -> Path:
    root.mkdir()
    (root / "a").mkdir()
    (root / "b").mkdir()
    (root / "a" / "big").write_bytes(os.urandom(10_000))
    os.link(root / "a" / "big", root / "b" / "big-again")
    os.link(root / "a" / "big", root / "z-third")
    (root / "small").write_bytes(b"tiny")
    os.link(root / "small", root / "a" / "small-too")
    (root / "empty").write_bytes(b"")
    os.link(root / "empty", root / "b" / "empty-too")
    os.setxattr(root / "small", "user.k", b"v")
    os.mkfifo(root / "fifo")
    os.link(root / "fifo", root / "fifo2")
    (root / "target").symlink_to("a/big")
    os.link(root / "target", root / "b" / "target2", follow_symlinks=False)
    (root / "alone").write_bytes(b"a" * 5000)
    return root


def test_hardlink_groups_are_kept(tmp_path: Path) -> None:
    tree = scan_directory(make_hardlinks(tmp_path / "tree"))
    assert tree["/a/big"] == tree.inode("/a/big")  # the first name in order holds it
    assert tree["/b/big-again"] == Hardlink(b"/a/big")
    assert tree["/z-third"] == Hardlink(b"/a/big")
    assert tree.inode("/a/big").nlink == 3
    assert tree["/small"] == Hardlink(b"/a/small-too")
    assert tree.inode("/a/small-too").nlink == 2
    assert tree["/empty"] == Hardlink(b"/b/empty-too")
    assert tree["/fifo2"] == Hardlink(b"/fifo")
    assert tree["/target"] == Hardlink(b"/b/target2")
    assert tree.inode("/alone").nlink == 1


def test_mounted_image_equals_the_tree_with_hardlinks(tmp_path: Path) -> None:
    require_mounts()
    root = make_every_kind(tmp_path / "tree")
    # A whiteout (char 0/0) is escaped in the image, and the mount shows it as
    # whatever the kernel's overlayfs makes of the escape: the image bytes
    # (mkcomposefs's) are checked above; here the tree is compared without it.
    (root / "whiteout").unlink()
    make_hardlinks(root / "links")
    with ObjectStore(tmp_path / "store", naming="fsverity") as objects:
        write_image(scan_directory(root, objects=objects), tmp_path / "img")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    original = walk(root)
    with mounted([tmp_path / "img"], mnt, tmp_path / "store"):
        shown = walk(mnt)
    assert set(shown) == set(original)

    def groups(seen: dict[bytes, Seen]) -> set[frozenset[bytes]]:
        by_ino: dict[int, set[bytes]] = {}
        for path, entry in seen.items():
            if entry.kind != "dir":
                by_ino.setdefault(entry.ino, set()).add(path)
        return {frozenset(g) for g in by_ino.values()}

    assert groups(shown) == groups(original)
    assert any(len(g) == 3 for g in groups(shown))
    for path, entry in original.items():
        got = shown[path]
        assert (got.kind, got.perm, got.uid, got.gid, got.mtime_ns, got.size, got.rdev) == (
            entry.kind, entry.perm, entry.uid, entry.gid, entry.mtime_ns, entry.size, entry.rdev,
        ), path  # fmt: skip
        assert got.data == entry.data, path
        assert got.xattrs == entry.xattrs, path
        if entry.kind != "dir":
            assert got.nlink == entry.nlink, path


# -- a tree that changes during the scan ---------------------------------------


def test_a_file_appended_to_during_the_scan_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(50):
        (root / f"f{i:02d}").write_bytes(b"x" * 200_000)
    growing = root / "f25"
    stop = threading.Event()

    def append() -> None:
        with open(growing, "ab") as f:
            while not stop.is_set():
                f.write(b"more" * 1000)
                f.flush()
                time.sleep(0.0005)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        time.sleep(0.05)
        with pytest.raises(ValidationError, match="changed during the scan") as caught:
            scan_directory(root)
    finally:
        stop.set()
        writer.join()
    assert caught.value.path == "/f25"


def test_a_file_changed_while_it_is_stored_leaves_nothing_in_the_store(tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"a" * 10_000)
    with ObjectStore(tmp_path / "store", naming="fsverity") as objects, open(source, "rb") as f:
        with pytest.raises(ValidationError, match="changed while it was stored"):
            objects.add_file(f.fileno(), fsverity=bytes(32))
        assert list(objects.payloads()) == [] and objects.temporary_files() == []
        payload = objects.add_file(f.fileno())
        assert objects.path_for(payload).read_bytes() == source.read_bytes()


def _swap_before(name: bytes, swap: Callable[[], None]) -> Callable[..., object]:
    """Scanner._entry that runs ``swap`` just before it handles entry ``name``
    (listed and stat'ed already: the race's worst moment)."""
    original = _Scanner._entry

    def entry(self: _Scanner, frame: object, entry_name: bytes, *args: object) -> object:
        if entry_name == name:
            swap()
        return original(self, frame, entry_name, *args)  # type: ignore[arg-type]

    return entry


@pytest.mark.parametrize("kind", ["directory", "file", "fifo"])
def test_a_name_swapped_for_a_symlink_mid_scan_does_not_leave_the_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret" * 100)
    root = tmp_path / "tree"
    root.mkdir()
    victim = root / "victim"
    if kind == "directory":
        victim.mkdir()
        (victim / "inside").write_bytes(b"fine" * 100)
    else:
        victim.write_bytes(b"fine" * 100)

    def swap() -> None:
        victim.rename(root / "moved")
        if kind == "fifo":  # opening it for reading would block, or act on it
            os.mkfifo(victim)
        else:
            victim.symlink_to(outside if kind == "directory" else outside / "secret")

    monkeypatch.setattr(_Scanner, "_entry", _swap_before(b"victim", swap))
    with pytest.raises(ValidationError, match="changed during the scan") as caught:
        scan_directory(root)
    assert caught.value.path == "/victim"


def test_a_directory_swapped_for_a_symlink_after_descent_is_still_walked_by_fd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret" * 100)
    root = tmp_path / "tree"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a").write_bytes(b"a" * 100)
    (root / "d" / "b").write_bytes(b"b" * 100)

    def swap() -> None:  # while d is walked, its name points outside
        (root / "d").rename(root / "elsewhere")
        (root / "d").symlink_to(outside)

    monkeypatch.setattr(_Scanner, "_entry", _swap_before(b"b", swap))
    tree = scan_directory(root)
    assert "/d/b" in tree and "/d/secret" not in tree
    assert tree.inode("/d/b").content is None and tree.inode("/d/b").payload is not None


# -- limits, progress, cost --------------------------------------------------------


def test_limits_are_checked_before_the_contents_are_read(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(30):
        (root / f"f{i}").write_bytes(b"x" * 100)
    with pytest.raises(ValidationError, match="more than 10 entries"):
        scan_directory(root, limits=Limits(max_entries=10))
    (root / "d" / "e" / "f").mkdir(parents=True)
    with pytest.raises(ValidationError, match="deeper than 2 levels"):
        scan_directory(root, limits=Limits(max_depth=2))
    with pytest.raises(ValidationError, match="size"):
        scan_directory(root, limits=Limits(max_file_size=99))


def test_overlay_xattrs_of_the_input_are_refused_naming_the_path(
    mkcomposefs: Path, tmp_path: Path
) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "f").write_bytes(b"x")
    os.setxattr(root / "f", "trusted.overlay.redirect", b"/elsewhere")
    with pytest.raises(ValidationError, match="overlayfs metadata") as caught:
        scan_directory(root)
    assert caught.value.path == "/f"
    # taken when the caller opts in: then escaped as mkcomposefs escapes them
    expected = mkcomposefs_image(mkcomposefs, root, tmp_path / "ref.img")
    opted_in = Limits(allow_overlay_xattrs=True)
    assert scanned_image(root, tmp_path / "mine.img", limits=opted_in) == expected


def test_progress_callback_counts_every_entry_and_the_bytes(every_kind: Path) -> None:
    updates: list[ProgressUpdate] = []
    tree = scan_directory(every_kind, progress=updates.append)
    assert updates[-1].finished
    assert updates[-1].files_done == len(tree)
    assert updates[-1].bytes_done == sum(
        tree.inode(p).size for p, n in tree if not isinstance(n, Hardlink)
    )


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="exclude"):
        scan_directory(".", skip_xattrs=True, user_xattrs=True)
    with pytest.raises(ValueError, match="threads"):
        scan_directory(".", threads=0)
    assert composefs_py.scan_directory is scan_directory


def _wide(root: Path, n: int) -> None:
    for d in range(n // 50):
        sub = root / f"d{d:04d}"
        sub.mkdir(parents=True)
        for f in range(50):
            (sub / f"f{f:02d}").write_bytes(b"y" * (f * 3))


def _deep(root: Path, n: int) -> None:
    here = root
    for _ in range(n // 2):
        here = here / "d"
        here.mkdir(parents=True)
        (here / "f").write_bytes(b"z" * 100)


def _hardlinks(root: Path, n: int) -> None:
    root.mkdir()
    (root / "t").write_bytes(b"q" * 1000)
    for i in range(n):
        os.link(root / "t", root / f"l{i}")


@pytest.mark.parametrize("shape", [_wide, _deep, _hardlinks])
def test_scan_cost_is_linear_in_the_entries(
    tmp_path: Path, shape: Callable[[Path, int], None]
) -> None:
    def make(n: int) -> Path:
        root = tmp_path / f"n{n}"
        shape(root, n)
        return root

    n = 200 if shape is _deep else 1000  # 400 levels at most: tmp_path's cleanup recurses
    small, large, ratio = growth(lambda root: len(scan_directory(root, threads=1)), make, n)
    assert ratio < 6, f"{n} -> {4 * n} entries: {small:.3f} -> {large:.3f} s CPU ({ratio:.1f}x)"


def test_scan_with_a_store_cost_is_linear_in_the_bytes(tmp_path: Path) -> None:
    def make(n: int) -> Path:
        root = tmp_path / f"b{n}"
        root.mkdir()
        for i in range(n):
            (root / f"f{i}").write_bytes(os.urandom(256 * 1024))
        return root

    def work(root: Path) -> int:
        store = root.parent / (root.name + "-store")
        shutil.rmtree(store, ignore_errors=True)
        with ObjectStore(store, naming="fsverity", durable=False) as objects:
            return len(scan_directory(root, objects=objects, threads=1))

    small, large, ratio = growth(work, make, 20)
    assert ratio < 6, f"20 -> 80 files of 256 KiB: {small:.3f} -> {large:.3f} s CPU"


@pytest.mark.parametrize("way", ["reflink", "copy_file_range", "read-write"])
def test_add_file_stores_by_each_way_and_checks_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    import errno

    from composefs_py import objects as objects_module

    data = os.urandom(3 << 20)
    source = tmp_path / "f"
    source.write_bytes(data)
    calls: list[str] = []

    def ioctl(dst: int, request: int, src: int) -> int:
        calls.append("ioctl")
        if way != "reflink":
            raise OSError(errno.EOPNOTSUPP, "no reflink here")
        os.write(dst, os.pread(src, len(data), 0))  # what a reflink shows
        return 0

    real_copy_range = os.copy_file_range

    def copy_range(src: int, dst: int, count: int, offset_src: int | None = None) -> int:
        calls.append("copy_file_range")
        if way == "read-write":
            raise OSError(errno.EXDEV, "not here")
        return real_copy_range(src, dst, count, offset_src)

    monkeypatch.setattr(objects_module.fcntl, "ioctl", ioctl)
    monkeypatch.setattr(objects_module.os, "copy_file_range", copy_range)
    store = ObjectStore(tmp_path / "store", naming="fsverity", durable=False)
    with store as objects, open(source, "rb") as f:
        digest = fsverity_of_fd(f.fileno())
        payload = objects.add_file(f.fileno(), fsverity=digest)
        assert objects.path_for(payload).read_bytes() == data
        assert payload == digest.hex()[:2].encode() + b"/" + digest.hex()[2:].encode()
        assert objects.temporary_files() == []
        assert calls[0] == "ioctl" and (way == "reflink") == (calls == ["ioctl"])
        calls.clear()
        assert objects.add_file(f.fileno(), fsverity=digest) == payload  # there: not read
        assert calls == []


def test_a_deep_directory_moved_mid_scan_is_an_error_not_a_walk_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "tree"
    levels = [root]
    for level in range(2 * _MAX_OPEN_DIRS):
        levels.append(levels[-1] / f"{level}")
    levels[-1].mkdir(parents=True)
    (levels[-1] / "f").write_bytes(b"x")
    moved = levels[_MAX_OPEN_DIRS // 2 + 1]  # its parent's fd is closed when f is met

    def swap() -> None:
        moved.rename(root / "elsewhere")

    monkeypatch.setattr(_Scanner, "_entry", _swap_before(b"f", swap))
    with pytest.raises(ValidationError, match="moved") as caught:
        scan_directory(root)
    assert caught.value.path == "/" + "/".join(str(n) for n in range(_MAX_OPEN_DIRS // 2))


def test_a_file_the_kernel_will_not_open_fails_the_scan_naming_its_host_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "tree"
    (root / "d").mkdir(parents=True)
    (root / "d" / "locked").write_bytes(b"x" * 100)  # as mkcomposefs: it must be read
    real_open = os.open

    def refusing_open(name: object, flags: int, *args: object, **kwargs: object) -> int:
        opens_for_reading = not flags & os.O_PATH and not flags & os.O_DIRECTORY
        if opens_for_reading and str(name).startswith("/proc/self/fd/"):
            raise PermissionError(13, "Permission denied")
        return real_open(name, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(PermissionError) as caught:
        scan_directory(root)
    assert caught.value.filename == os.fspath(root / "d" / "locked")


# -- the command line: composefs-py build DIR ------------------------------------


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run(
        [sys.executable, "-m", "composefs_py", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("option", OPTIONS)
def test_cli_build_dir_gives_mkcomposefs_bytes(
    every_kind: Path, mkcomposefs: Path, tmp_path: Path, option: str
) -> None:
    args = [option] if option else []
    expected = mkcomposefs_image(mkcomposefs, every_kind, tmp_path / "ref.img", *args)
    done = _cli("build", *args, every_kind, tmp_path / "mine.img")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mine.img").read_bytes() == expected


def test_cli_build_dir_with_a_digest_store_as_mkcomposefs(
    every_kind: Path, mkcomposefs: Path, tmp_path: Path
) -> None:
    ref_store = tmp_path / "ref-store"
    expected = mkcomposefs_image(
        mkcomposefs, every_kind, tmp_path / "ref.img", f"--digest-store={ref_store}"
    )
    done = _cli(
        "build", "--threads", 2, "--digest-store", tmp_path / "store", every_kind, "-o",
        tmp_path / "mine.img",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mine.img").read_bytes() == expected
    assert store_files(tmp_path / "store") == store_files(ref_store)


def test_cli_build_dir_keeps_hardlinks_and_names_a_bad_option(tmp_path: Path) -> None:
    tree = make_hardlinks(tmp_path / "tree")
    done = _cli("build", tree, "-o", tmp_path / "x.img")
    assert done.returncode == 0, done.stderr
    image = composefs_py.read_image(tmp_path / "x.img")
    assert any(isinstance(node, Hardlink) for _, node in image) or any(
        getattr(node, "nlink", 1) > 1 and stat.S_ISREG(getattr(node, "mode", 0))
        for _, node in image
    )
    done = _cli("build", "--compat", "containers-storage", tree, "-o", tmp_path / "y.img")
    assert done.returncode == 2 and "--compat" in done.stderr


# -- the work per file ------------------------------------------------------------


def test_without_a_store_files_are_digested_a_batch_per_native_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each regular file read by a worker costs no Python call of its own: a
    call per file was a GIL handoff per file (a fifth of a 20k-file scan's CPU
    went to futex wake-ups and waits between the walking thread and the
    workers).  Contents are hashed in C a batch of files at a time."""
    import composefs_py.objects as objects_module
    import composefs_py.scan as scan_module

    pytest.importorskip("composefs_py._native", reason="the compiled extension is not available")
    native = getattr(scan_module, "_native_digest_files", lambda: None)()
    root = tmp_path / "tree"
    root.mkdir()
    n = 200
    for i in range(n):
        (root / f"f{i:03d}").write_bytes(bytes([i]) * (INLINE_MAX + 1 + 97 * i))
    batches: list[int] = []

    def counting(fds: list[int], *args: object) -> object:
        batches.append(len(fds))
        return native(fds, *args)  # type: ignore[misc]

    per_file: list[int] = []

    def refuse(*args: object) -> bytes:
        per_file.append(1)
        raise AssertionError("a file digested by a Python call of its own")

    if native is not None:
        monkeypatch.setattr(scan_module, "_native_digest_files", lambda: counting)
    monkeypatch.setattr(objects_module, "fsverity_of_bytes", refuse)
    monkeypatch.setattr(objects_module, "fsverity_of_fd", refuse)
    monkeypatch.setattr(scan_module, "fsverity_of_bytes", refuse, raising=False)
    monkeypatch.setattr(scan_module, "fsverity_of_fd", refuse, raising=False)
    tree = scan_directory(root, threads=2)
    assert per_file == [], f"{len(per_file)} of {n} files digested by a Python call each"
    assert sum(batches) == n and len(batches) <= n // 8, batches
    monkeypatch.undo()
    for i in range(n):
        with open(root / f"f{i:03d}", "rb") as f:
            assert tree.inode(f"/f{i:03d}").fsverity_digest == fsverity_of_fd(f.fileno())


@pytest.mark.parametrize("fails", [False, True], ids=["scanned", "failed"])
def test_the_workers_read_through_buffers_the_scan_maps_and_unmaps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    """Without a store, each worker reads through a buffer the walking thread
    mapped (one per worker), not one C allocates per task: freed in a
    worker's malloc arena, that memory stayed the process's, where the image
    writer could not reuse it.  Every buffer is unmapped when the scan ends,
    whether it read every file or failed."""
    import mmap

    import composefs_py.scan as scan_module

    native = scan_module._native_digest_files()
    if native is None:
        pytest.skip("the compiled extension is not available")
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(100):
        (root / f"f{i:03d}").write_bytes(bytes([i]) * (INLINE_MAX + 1 + 50 * i))
    mapped: list[mmap.mmap] = []
    given: list[object] = []
    real_mmap = mmap.mmap

    def mapping(fileno: int, length: int) -> mmap.mmap:
        buffer = real_mmap(fileno, length)
        mapped.append(buffer)
        return buffer

    def recording(fds: list[int], sizes: list[int], buffer: object, readahead: int) -> object:
        given.append(buffer)
        if fails and len(given) == 2:
            for fd in fds:
                os.close(fd)
            raise OSError(5, "Input/output error")
        return native(fds, sizes, buffer, readahead)  # type: ignore[arg-type]

    monkeypatch.setattr(mmap, "mmap", mapping)
    monkeypatch.setattr(scan_module, "_native_digest_files", lambda: recording)
    if fails:
        with pytest.raises(OSError):
            scan_directory(root, threads=3)
    else:
        tree = scan_directory(root, threads=3)
        monkeypatch.undo()
        with open(root / "f099", "rb") as f:
            assert tree.inode("/f099").fsverity_digest == fsverity_of_fd(f.fileno())
    assert len(mapped) == 3, "one buffer per worker"
    assert given and all(any(b is m for m in mapped) for b in given)
    assert all(buffer.closed for buffer in mapped)


# -- reflinks on a real file system -------------------------------------------------

_SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"
# <linux/fiemap.h>: struct fiemap, struct fiemap_extent; FS_IOC_FIEMAP.
_FIEMAP = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")
_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_SHARED = 0x2000


def _extents(path: Path) -> list[tuple[int, int, int, int]]:
    """``(logical, physical, length, flags)`` of each extent of ``path`` (FIEMAP)."""
    count = 256
    buf = bytearray(
        _FIEMAP.pack(0, 2**64 - 1, _FIEMAP_FLAG_SYNC, 0, count, 0)
        + bytes(_FIEMAP_EXTENT.size * count)
    )
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf, True)
    finally:
        os.close(fd)
    mapped = _FIEMAP.unpack_from(buf)[3]
    found = []
    for i in range(mapped):
        logical, physical, length, _r1, _r2, flags, *_ = _FIEMAP_EXTENT.unpack_from(
            buf, _FIEMAP.size + i * _FIEMAP_EXTENT.size
        )
        found.append((logical, physical, length, flags))
    return found


@pytest.fixture
def reflink_fs(tmp_path: Path) -> Iterator[Path]:
    """A btrfs (else xfs) file system on a loop device, mounted: it shares extents."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop file system needs root")
    kernel = Path("/proc/filesystems").read_text().split()
    usable = [
        (fs, mkfs, args)
        for fs, args in (("btrfs", ["-f", "-q"]), ("xfs", ["-f", "-q", "-m", "reflink=1"]))
        if fs in kernel and (mkfs := shutil.which(f"mkfs.{fs}", path=_SBIN)) is not None
    ]
    if not usable:
        pytest.skip("no btrfs or xfs here (kernel or mkfs.btrfs/mkfs.xfs missing)")
    fs, mkfs, mkfs_args = usable[0]
    image = tmp_path / f"{fs}.img"
    with open(image, "wb") as f:
        f.truncate(320 << 20)  # sparse; xfs wants 300 MiB at least
    made = subprocess.run([mkfs, *mkfs_args, image], capture_output=True, text=True, check=False)
    if made.returncode:
        pytest.skip(f"mkfs.{fs} failed: {made.stderr.strip()}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted_fs = subprocess.run(
        ["mount", "-o", "loop", image, mnt], capture_output=True, text=True, check=False
    )
    if mounted_fs.returncode:
        pytest.skip(f"cannot mount a loop {fs}: {mounted_fs.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)  # the loop device goes with it (autoclear)


def test_add_file_reflinks_on_a_file_system_that_shares_extents(
    reflink_fs: Path, tmp_path: Path
) -> None:
    """Source tree and store on one btrfs/xfs: each object shares its source's
    extents (FIEMAP: same physical blocks, flagged shared; the file system's
    free space does not shrink by the data), and is still hashed and checked
    before it is published.  A store on another file system gets copies."""
    source = reflink_fs / "src"
    source.mkdir()
    contents = {f"f{i}": os.urandom((1 << 20) + 4096 * i + 17) for i in range(4)}
    for name, data in contents.items():
        (source / name).write_bytes(data)
    os.sync()
    before = os.statvfs(reflink_fs)
    with ObjectStore(reflink_fs / "store", naming="fsverity", durable=False) as objects:
        tree = scan_directory(source, objects=objects, threads=2)
        os.sync()
        after = os.statvfs(reflink_fs)
        for name, data in contents.items():
            payload = tree.inode(f"/{name}").payload
            assert payload is not None and objects.verify(payload)
            stored = objects.path_for(payload)
            assert stored.read_bytes() == data
            theirs, ours = _extents(source / name), _extents(stored)
            assert [e[:3] for e in ours] == [e[:3] for e in theirs], name
            assert all(e[3] & _FIEMAP_EXTENT_SHARED for e in ours + theirs), name
    used = (before.f_bfree - after.f_bfree) * before.f_frsize
    assert used < sum(map(len, contents.values())) // 4, f"{used} bytes taken by reflinks"

    # verified before publish, reflink or not: a digest the content does not have
    with ObjectStore(reflink_fs / "store2", naming="fsverity", durable=False) as objects:
        with (
            open(source / "f0", "rb") as f,
            pytest.raises(ValidationError, match="changed while it was stored"),
        ):
            objects.add_file(f.fileno(), fsverity=bytes(32))
        assert list(objects.payloads()) == [] and objects.temporary_files() == []

    # across file systems (FICLONE: EXDEV): copies, the same objects
    with ObjectStore(tmp_path / "elsewhere", naming="fsverity", durable=False) as objects:
        copied = scan_directory(source, objects=objects, threads=2)
        for name, data in contents.items():
            payload = copied.inode(f"/{name}").payload
            assert payload is not None and payload == tree.inode(f"/{name}").payload
            stored = objects.path_for(payload)
            assert stored.read_bytes() == data and objects.verify(payload)
            assert not any(e[3] & _FIEMAP_EXTENT_SHARED for e in _extents(stored))


def test_a_wide_directory_is_listed_in_little_memory(tmp_path: Path) -> None:
    """A directory's listing is held while it is walked: per entry its name and
    what ``d_type`` says, not an ``lstat`` result (which took about 700 bytes
    of memory per entry more: a peak of about 1,090 bytes per entry then, 620
    now, the builder's nodes and the Tree's rows included)."""
    import tracemalloc

    root = tmp_path / "wide"
    root.mkdir()
    n = 5000
    for i in range(n):
        (root / f"n{i:06d}").touch()
    tracemalloc.start()
    try:
        tree = scan_directory(root, threads=1, progress=False)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(tree) == n + 1
    per_entry = peak / n
    assert per_entry < 800, f"{per_entry:.0f} bytes per entry at the peak of the scan"
    assert kept < peak


def test_a_scanned_tree_keeps_its_rows_not_its_nodes(tmp_path: Path) -> None:
    """The Tree of a scan is written rather than read: it keeps its rows as
    columns only, not the node objects the scan made (an Inode, a payload and
    a digest object per file: about 790 bytes per file with them, under 400
    without), and writing it does not cache its extras on it either."""
    import tracemalloc

    root = tmp_path / "files"
    root.mkdir()
    n = 3000
    for i in range(n):
        (root / f"f{i:05d}").write_bytes(i.to_bytes(4, "big") * 40)  # a digest each
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tree = scan_directory(root, threads=1, progress=False)
        kept = tracemalloc.get_traced_memory()[0] - before
        write_image(tree, tmp_path / "img", backend="native")
        kept_written = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(tree) == n + 1
    assert kept / n < 400, f"{kept / n:.0f} bytes per file kept by the Tree"
    assert kept_written / n < 400, f"{kept_written / n:.0f} bytes per file after writing it"
    assert tree.inode(b"/f00007").fsverity_digest is not None  # read from the rows
