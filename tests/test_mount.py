"""composefs_py.mount: real kernel mounts of images made by the real mkcomposefs.

The images here come from dumpfiles through the upstream ``mkcomposefs``
(the oracle) and an object store filled by hand, so these tests do not
depend on this package's own readers or writer.  Every mount test needs
root and a kernel with erofs + overlayfs data-only lower layers; elsewhere
it is skipped with the reason.  Every mount is unmounted in a ``finally``.

The helpers at the top (:func:`require_mounts`, :func:`walk`,
:func:`mounted`, :func:`leftover_mounts`) are shared with
test_layer_mounts.py.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import platform
import random
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import composefs_mounts, file_loop_devices
from test_objects import (
    CONFINED,
    CONFINED_HEX,
    CONFINED_PAYLOAD,
    PLANTS,
    Canary,
    deadline,
    plant,
)

from composefs_py.errors import LibraryError, ValidationError
from composefs_py.fsverity import enable_fsverity, fsverity_digest
from composefs_py.model import Hardlink, Inode, Tree, TreeBuilder
from composefs_py.mount import (
    ENOVERITY,
    flatten_layers,
    is_mountpoint,
    mount,
    mount_layers,
    unmount,
)
from composefs_py.objects import ObjectDir, ObjectStore

# ---------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------


def _kernel_at_least(major: int, minor: int) -> bool:
    release = platform.release().split("-")[0].split(".")
    try:
        return (int(release[0]), int(release[1])) >= (major, minor)
    except (IndexError, ValueError):
        return False


def require_mounts(*, xwhiteouts: bool = False) -> None:
    """Skip the calling test unless composefs images can be mounted here."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root (CAP_SYS_ADMIN)")
    if platform.system() != "Linux":
        pytest.skip("composefs mounts need Linux")
    filesystems = Path("/proc/filesystems").read_text()
    for fs in ("erofs", "overlay"):
        if fs not in filesystems.split():
            pytest.skip(f"the kernel has no {fs} file system")
    if not _kernel_at_least(6, 5):
        pytest.skip(
            f"overlayfs data-only lower layers need Linux >= 6.5, have {platform.release()}"
        )
    if xwhiteouts and not _kernel_at_least(6, 7):
        pytest.skip(
            "stacked composefs layers need overlayfs xwhiteouts (Linux >= 6.7), "
            f"have {platform.release()}"
        )
    try:
        import composefs_py._native  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the libcomposefs binding is not built: {exc}")


@dataclass(frozen=True)
class Seen:
    """One entry of a mounted tree, as ``lstat`` and friends report it."""

    kind: str  # reg dir symlink char block fifo sock
    perm: int  # st_mode & 0o7777
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0  # regular files only
    rdev: tuple[int, int] = (0, 0)  # devices only
    data: bytes | None = None  # file content or symlink target
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    ino: int = 0
    nlink: int = 0


_KINDS = {
    stat.S_IFREG: "reg",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "sock",
}


def read_xattrs(path: bytes) -> dict[bytes, bytes]:
    result = {}
    for name in os.listxattr(path, follow_symlinks=False):
        value = os.getxattr(path, name, follow_symlinks=False)
        result[os.fsencode(name)] = value
    return result


def walk(root: Path) -> dict[bytes, Seen]:
    """Every entry below ``root`` (``b"/"`` is root itself), read through syscalls."""
    top = os.fsencode(root)
    seen: dict[bytes, Seen] = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        path = top + rel
        st = os.lstat(path)
        kind = _KINDS[stat.S_IFMT(st.st_mode)]
        data = None
        if kind == "reg":
            with open(path, "rb") as f:
                data = f.read()
        elif kind == "symlink":
            data = os.readlink(path)
        elif kind == "dir":
            stack.extend(rel + b"/" + name for name in os.listdir(path))
        seen[rel or b"/"] = Seen(
            kind=kind,
            perm=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns,
            size=st.st_size if kind == "reg" else 0,
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev))
            if kind in ("char", "block")
            else (0, 0),
            data=data,
            xattrs=read_xattrs(path),
            ino=st.st_ino,
            nlink=st.st_nlink,
        )
    return seen


def leftover_mounts(under: Path) -> list[str]:
    """Mount points at or below ``under``, plus any image mount libcomposefs, mount
    or mount_layers staged (``.composefs.*``, ``.composefs-py-image.*``,
    ``.composefs-py-layers.*``)."""
    prefix = os.path.realpath(under)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split(" ")[4]
            if point == prefix or point.startswith(prefix + "/") or "/.composefs" in point:
                found.append(point)
    return found


@contextmanager
def mounted(
    images: Sequence[Path], mountpoint: Path, objects: Path | Sequence[Path], **options: object
) -> Iterator[Path]:
    """Mount ``images`` (one: :func:`mount`; several: :func:`mount_layers`)."""
    if len(images) == 1:
        mount(images[0], mountpoint, objects=objects, **options)  # type: ignore[arg-type]
    else:
        mount_layers(images, mountpoint, objects=objects, **options)  # type: ignore[arg-type]
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


# ---------------------------------------------------------------------------
# images from dumpfiles, object store by hand
# ---------------------------------------------------------------------------


def _esc(raw: bytes, *, extra: bytes = b"") -> str:
    out = []
    for byte in raw:
        if byte <= 0x20 or byte >= 0x7F or byte == 0x5C or byte in extra:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(chr(byte))
    return "".join(out)


@dataclass
class Entry:
    """One dumpfile line, and what the mounted tree must show for it."""

    path: bytes
    kind: str
    perm: int
    uid: int = 0
    gid: int = 0
    mtime: tuple[int, int] = (0, 0)
    data: bytes = b""  # content (external if > 64 bytes) or symlink target
    rdev: tuple[int, int] = (0, 0)
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    hardlink_to: bytes | None = None
    with_digest: bool = False

    @property
    def payload(self) -> str:
        digest = hashlib.sha256(self.data).hexdigest()
        return f"{digest[:2]}/{digest[2:]}"


_TYPE_BITS = {kind: bits for bits, kind in _KINDS.items()}


def dump_line(entry: Entry, entries: dict[bytes, Entry]) -> str:
    mode = f"{_TYPE_BITS[entry.kind] | entry.perm:o}"
    payload, content, digest = "-", "-", "-"
    size = 0
    if entry.hardlink_to is not None:
        target = entries[entry.hardlink_to]
        mode = "@" + f"{_TYPE_BITS[target.kind] | target.perm:o}"
        payload = _esc(entry.hardlink_to)
    elif entry.kind == "reg":
        size = len(entry.data)
        if len(entry.data) > 64:
            payload = entry.payload
            if entry.with_digest:
                digest = fsverity_digest(entry.data).hex()
        elif entry.data:
            content = _esc(entry.data)
    elif entry.kind == "symlink":
        payload = _esc(entry.data)
        size = len(entry.data)
    rdev = os.makedev(*entry.rdev)
    xattrs = " ".join(
        f"{_esc(name, extra=b'=')}={_esc(value, extra=b'=')}"
        for name, value in sorted(entry.xattrs.items())
    )
    sec, nsec = entry.mtime
    source = entry.hardlink_to or entry.path
    nlink = 1 + sum(1 for e in entries.values() if e.hardlink_to == source)
    line = (
        f"{_esc(entry.path)} {size} {mode} {nlink} {entry.uid} {entry.gid} {rdev} "
        f"{sec}.{nsec:09d} {payload} {content} {digest}"
    )
    return line + (" " + xattrs if xattrs else "")


def build_image(
    mkcomposefs: Path, tmp: Path, name: str, entries: Sequence[Entry], objects: Path
) -> Path:
    """mkcomposefs the dumpfile of ``entries``; put external contents in ``objects``."""
    by_path = {e.path: e for e in entries}
    text = "\n".join(dump_line(e, by_path) for e in entries) + "\n"
    image = tmp / f"{name}.cfs"
    subprocess.run(
        [str(mkcomposefs), "--from-file", "-", str(image)],
        input=text.encode(),
        check=True,
        capture_output=True,
    )
    for e in entries:
        if e.kind == "reg" and e.hardlink_to is None and len(e.data) > 64:
            obj = objects / e.payload
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes(e.data)
    return image


def expected_view(entries: Sequence[Entry]) -> dict[bytes, Seen]:
    by_path = {e.path: e for e in entries}
    view = {}
    for e in entries:
        src = by_path[e.hardlink_to] if e.hardlink_to is not None else e
        view[e.path] = Seen(
            kind=src.kind,
            perm=src.perm,
            uid=src.uid,
            gid=src.gid,
            mtime_ns=src.mtime[0] * 1_000_000_000 + src.mtime[1],
            size=len(src.data) if src.kind == "reg" else 0,
            rdev=src.rdev,
            data=src.data if src.kind in ("reg", "symlink") else None,
            xattrs=dict(src.xattrs),
        )
    return view


def comparable(seen: dict[bytes, Seen]) -> dict[bytes, Seen]:
    """Drop what the expectations do not model (inode numbers, link counts)."""
    return {p: Seen(**{**s.__dict__, "ino": 0, "nlink": 0}) for p, s in seen.items()}


BIG = random.Random(1234).randbytes(300_000)
CAP = bytes.fromhex("0100000220000000000000000000000000000000")

SAMPLE = [
    Entry(b"/", "dir", 0o755, mtime=(1_700_000_000, 500_000_000)),
    Entry(b"/bin", "dir", 0o755, mtime=(1_600_000_000, 0)),
    Entry(
        b"/bin/tool",
        "reg",
        0o4755,
        mtime=(1_600_000_000, 123_456_789),
        data=BIG,
        xattrs={b"security.capability": CAP, b"user.k": b"v=1"},
    ),
    Entry(b"/bin/tool2", "reg", 0o4755, hardlink_to=b"/bin/tool"),
    Entry(b"/bin/link", "symlink", 0o777, data=b"tool", mtime=(5, 6)),
    Entry(b"/etc", "dir", 0o755),
    Entry(b"/etc/inline", "reg", 0o644, uid=1000, gid=1001, data=b"hi\n", mtime=(7, 8)),
    Entry(b"/etc/empty", "reg", 0o444),
    Entry(b"/etc/caf\xc3\xa9 name.txt", "reg", 0o640, data=b"x" * 100 + b"\n"),
    Entry(b"/dev", "dir", 0o755),
    Entry(b"/dev/null", "char", 0o666, rdev=(1, 3)),
    Entry(b"/dev/loop0", "block", 0o660, gid=6, rdev=(7, 0)),
    Entry(b"/run", "dir", 0o755),
    Entry(b"/run/initctl", "fifo", 0o600),
    Entry(b"/home", "dir", 0o755),
    Entry(b"/home/u", "dir", 0o700, uid=1000, gid=1000, xattrs={b"user.comment": b"home"}),
    Entry(b"/tmp", "dir", 0o1777),
]


@pytest.fixture
def sample(mkcomposefs: Path, tmp_path: Path) -> tuple[Path, Path]:
    objects = tmp_path / "objects"
    objects.mkdir()
    return build_image(mkcomposefs, tmp_path, "sample", SAMPLE, objects), objects


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    # Whatever a test did, it must leave nothing mounted.
    assert leftover_mounts(tmp_path) == []


# ---------------------------------------------------------------------------
# mount / unmount
# ---------------------------------------------------------------------------


def test_mount_shows_every_attribute_of_the_image(sample: tuple[Path, Path], mnt: Path) -> None:
    require_mounts()
    image, objects = sample
    with mounted([image], mnt, objects):
        seen = walk(mnt)
    assert comparable(seen) == expected_view(SAMPLE)
    assert seen[b"/bin/tool"].ino == seen[b"/bin/tool2"].ino
    assert seen[b"/bin/tool"].nlink == 2
    assert os.listdir(mnt) == []


def test_mount_is_read_only_without_upperdir(sample: tuple[Path, Path], mnt: Path) -> None:
    require_mounts()
    image, objects = sample
    with mounted([image], mnt, objects):
        with pytest.raises(OSError) as info:
            (mnt / "etc" / "new").write_bytes(b"x")
        assert info.value.errno == errno.EROFS


def test_mount_with_upperdir_writes_to_upperdir_only(
    sample: tuple[Path, Path], mnt: Path, tmp_path: Path
) -> None:
    require_mounts()
    image, objects = sample
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    before = image.read_bytes()
    with mounted([image], mnt, objects, upperdir=upper, workdir=work):
        (mnt / "etc" / "new").write_bytes(b"written")
        (mnt / "bin" / "tool").write_bytes(b"replaced")
        # overlayfs (without index=on) breaks a hardlink on copy-up.
        assert (mnt / "bin" / "tool2").read_bytes() == BIG
        os.unlink(mnt / "etc" / "inline")
    assert (upper / "etc" / "new").read_bytes() == b"written"
    assert (upper / "bin" / "tool").read_bytes() == b"replaced"
    assert stat.S_ISCHR(os.lstat(upper / "etc" / "inline").st_mode)  # overlay whiteout
    assert image.read_bytes() == before
    assert (objects / SAMPLE[2].payload).read_bytes() == BIG


def test_unmount_of_a_folder_that_is_not_mounted_says_so(tmp_path: Path) -> None:
    require_mounts()
    with pytest.raises(LibraryError) as info:
        unmount(tmp_path)
    assert info.value.errno == errno.EINVAL
    assert "not a mount point" in str(info.value)


def test_unmount_of_a_busy_mount_fails_and_lazy_detaches(
    sample: tuple[Path, Path], mnt: Path
) -> None:
    require_mounts()
    image, objects = sample
    mount(image, mnt, objects=objects)
    try:
        with open(mnt / "bin" / "tool", "rb") as busy:
            with pytest.raises(LibraryError) as info:
                unmount(mnt)
            assert info.value.errno == errno.EBUSY
            assert is_mountpoint(mnt)
            unmount(mnt, lazy=True)
            assert not is_mountpoint(mnt)
            assert busy.read() == BIG  # a detached mount stays usable while open
    finally:
        if is_mountpoint(mnt):
            unmount(mnt, lazy=True)


def test_mount_with_several_object_dirs_finds_objects_in_each(
    mkcomposefs: Path, tmp_path: Path, mnt: Path
) -> None:
    require_mounts()
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    entries = [
        Entry(b"/", "dir", 0o755),
        Entry(b"/a", "reg", 0o644, data=b"A" * 1000),
        Entry(b"/b", "reg", 0o644, data=b"B" * 1000),
    ]
    image = build_image(mkcomposefs, tmp_path, "two", entries, one)
    moved = two / entries[2].payload
    moved.parent.mkdir(parents=True)
    (one / entries[2].payload).rename(moved)
    with mounted([image], mnt, [one, two]):
        assert (mnt / "a").read_bytes() == b"A" * 1000
        assert (mnt / "b").read_bytes() == b"B" * 1000


@contextmanager
def user_namespace(*, uid_base: int, gid_base: int, count: int = 65536) -> Iterator[int]:
    """An fd of a new user namespace mapping 0..count-1 to ``uid_base``/``gid_base``."""
    libc = ctypes.CDLL(None, use_errno=True)
    clone_newuser = 0x10000000

    def enter_userns() -> None:
        if libc.unshare(clone_newuser) != 0:
            os._exit(99)

    child = subprocess.Popen(["sleep", "600"], preexec_fn=enter_userns)
    try:
        Path(f"/proc/{child.pid}/uid_map").write_text(f"0 {uid_base} {count}\n")
        Path(f"/proc/{child.pid}/setgroups").write_text("deny")
        Path(f"/proc/{child.pid}/gid_map").write_text(f"0 {gid_base} {count}\n")
        userns = os.open(f"/proc/{child.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield userns
        finally:
            os.close(userns)
    finally:
        child.kill()
        child.wait()


def test_mount_with_an_idmapped_user_namespace_shifts_owners(
    sample: tuple[Path, Path], mnt: Path
) -> None:
    require_mounts()
    image, objects = sample
    with (
        user_namespace(uid_base=100000, gid_base=200000) as userns,
        mounted([image], mnt, objects, idmap_userns_fd=userns),
    ):
        seen = walk(mnt)
    assert (seen[b"/bin/tool"].uid, seen[b"/bin/tool"].gid) == (100000, 200000)
    assert (seen[b"/etc/inline"].uid, seen[b"/etc/inline"].gid) == (101000, 201001)
    assert seen[b"/bin/tool"].data == BIG


# ---------------------------------------------------------------------------
# verity
# ---------------------------------------------------------------------------


def test_require_verity_on_an_image_without_digests_fails_before_mounting(
    sample: tuple[Path, Path], mnt: Path
) -> None:
    require_mounts()
    image, objects = sample
    with pytest.raises(LibraryError) as info:
        mount(image, mnt, objects=objects, require_verity=True)
    assert info.value.errno == ENOVERITY
    assert "no fs-verity digest" in str(info.value)
    assert "/bin/tool" in str(info.value)
    assert not is_mountpoint(mnt)


def _filesystem_has_fsverity(folder: Path) -> bool:
    probe = folder / "verity-probe"
    probe.write_bytes(b"probe")
    fd = os.open(probe, os.O_RDONLY)
    try:
        enable_fsverity(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()
    return True


def test_require_verity_with_digests_needs_fsverity_on_the_objects(
    mkcomposefs: Path, tmp_path: Path, mnt: Path
) -> None:
    require_mounts()
    objects = tmp_path / "objects"
    objects.mkdir()
    entries = [
        Entry(b"/", "dir", 0o755),
        Entry(b"/f", "reg", 0o644, data=BIG, with_digest=True),
    ]
    image = build_image(mkcomposefs, tmp_path, "verity", entries, objects)
    if _filesystem_has_fsverity(objects):
        fd = os.open(objects / entries[1].payload, os.O_RDONLY)
        try:
            enable_fsverity(fd)
        finally:
            os.close(fd)
        with mounted([image], mnt, objects, require_verity=True):
            assert (mnt / "f").read_bytes() == BIG
    else:
        with pytest.raises(LibraryError) as info:
            mount(image, mnt, objects=objects, require_verity=True)
        assert info.value.errno == ENOVERITY
        assert "has no fs-verity" in str(info.value)
        assert not is_mountpoint(mnt)


def test_try_verity_without_digests_mounts_a_readable_tree(
    sample: tuple[Path, Path], mnt: Path
) -> None:
    require_mounts()
    image, objects = sample
    with mounted([image], mnt, objects, try_verity=True):
        assert (mnt / "bin" / "tool").read_bytes() == BIG


def test_expected_digest_is_checked_in_userspace_without_kernel_fsverity(
    sample: tuple[Path, Path], mnt: Path
) -> None:
    """The image file has no fs-verity here: its digest is computed from its
    bytes (tests/test_mount_checks.py has the refusals)."""
    require_mounts()
    image, objects = sample
    with mounted([image], mnt, objects, expected_digest=fsverity_digest(image)):
        assert is_mountpoint(mnt)


# ---------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------


def test_a_file_that_is_not_an_image_is_refused(tmp_path: Path, mnt: Path) -> None:
    require_mounts()
    bogus = tmp_path / "bogus.cfs"
    bogus.write_bytes(b"\0" * 8192)
    with pytest.raises(LibraryError) as info:
        mount(bogus, mnt, objects=tmp_path)
    assert info.value.errno == errno.EINVAL
    assert "not a composefs image" in str(info.value)


def test_missing_paths_are_named(sample: tuple[Path, Path], tmp_path: Path) -> None:
    image, objects = sample
    with pytest.raises(LibraryError, match=r"mountpoint .* is not a directory") as info:
        mount(image, tmp_path / "absent", objects=objects)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(LibraryError, match=r"object store .*nowhere"):
        mount(image, tmp_path, objects=tmp_path / "nowhere")
    with pytest.raises(LibraryError, match="cannot read image"):
        mount(tmp_path / "none.cfs", tmp_path, objects=objects)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"upperdir": "/tmp"}, "upperdir and workdir go together"),
        ({"workdir": "/tmp"}, "upperdir and workdir go together"),
        ({"objects": []}, "at least one object store"),
        ({"require_verity": True, "try_verity": True}, "exclude each other"),
        ({"expected_digest": b"\0" * 31}, "32-byte"),
        ({"idmap_userns_fd": -1}, "open fd"),
    ],
)
def test_inconsistent_arguments_raise_value_error(
    options: dict[str, object], message: str, tmp_path: Path
) -> None:
    kwargs: dict[str, object] = {"objects": tmp_path, **options}
    with pytest.raises(ValueError, match=message):
        mount(tmp_path / "x.cfs", tmp_path, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# several layers: kernel stacking and userspace flattening
# ---------------------------------------------------------------------------

LOWER = [
    Entry(b"/", "dir", 0o755),
    Entry(b"/etc", "dir", 0o755, mtime=(10, 0)),
    Entry(b"/etc/motd", "reg", 0o644, data=b"welcome\n"),
    Entry(b"/etc/hosts", "reg", 0o644, data=b"old hosts\n"),
    Entry(b"/etc/keep", "reg", 0o600, data=b"k" * 200),
    Entry(b"/lib", "dir", 0o755),
    Entry(b"/lib/gone", "dir", 0o755),
    Entry(b"/lib/gone/inner", "reg", 0o644, data=b"inner"),
    Entry(b"/cache", "dir", 0o755),
    Entry(b"/cache/stale", "reg", 0o644, data=b"stale"),
    Entry(b"/cache/sub", "dir", 0o755),
    Entry(b"/cache/sub/deep", "reg", 0o644, data=b"deep"),
    Entry(b"/was-file", "reg", 0o644, data=b"file"),
    Entry(b"/was-dir", "dir", 0o755),
    Entry(b"/was-dir/child", "reg", 0o644, data=b"child"),
    Entry(b"/links", "dir", 0o755),
    Entry(b"/links/a", "reg", 0o755, data=b"L" * 300),
    Entry(b"/links/b", "reg", 0o755, hardlink_to=b"/links/a"),
]

UPPER = [
    Entry(b"/", "dir", 0o755),
    Entry(b"/etc", "dir", 0o750, mtime=(20, 5)),
    Entry(b"/etc/motd", "char", 0o000),  # whiteout
    Entry(b"/etc/hosts", "reg", 0o644, data=b"new hosts\n"),
    Entry(b"/lib", "dir", 0o755),
    Entry(b"/lib/gone", "char", 0o000),  # whiteout of a directory
    Entry(b"/cache", "dir", 0o755, xattrs={b"trusted.overlay.opaque": b"y"}),
    Entry(b"/cache/fresh", "reg", 0o644, data=b"fresh"),
    Entry(b"/was-file", "dir", 0o755),
    Entry(b"/was-file/now", "reg", 0o644, data=b"now a dir"),
    Entry(b"/was-dir", "reg", 0o644, data=b"now a file"),
    Entry(b"/links", "dir", 0o755),
    Entry(b"/links/a", "reg", 0o644, data=b"replaced"),
]

STACKED = {
    b"/": ("dir", None),
    b"/etc": ("dir", None),
    b"/etc/hosts": ("reg", b"new hosts\n"),
    b"/etc/keep": ("reg", b"k" * 200),
    b"/lib": ("dir", None),
    b"/cache": ("dir", None),
    b"/cache/fresh": ("reg", b"fresh"),
    b"/was-file": ("dir", None),
    b"/was-file/now": ("reg", b"now a dir"),
    b"/was-dir": ("reg", b"now a file"),
    b"/links": ("dir", None),
    b"/links/a": ("reg", b"replaced"),
    b"/links/b": ("reg", b"L" * 300),
}


@pytest.fixture
def layers(mkcomposefs: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    objects = tmp_path / "objects"
    objects.mkdir()
    upper = build_image(mkcomposefs, tmp_path, "upper", UPPER, objects)
    lower = build_image(mkcomposefs, tmp_path, "lower", LOWER, objects)
    return upper, lower, objects


def test_single_layer_mount_shows_whiteouts_as_escaped_xwhiteouts(
    layers: tuple[Path, Path, Path], mnt: Path
) -> None:
    require_mounts()
    upper, _, objects = layers
    with mounted([upper], mnt, objects):
        seen = walk(mnt)
    motd = seen[b"/etc/motd"]
    assert (motd.kind, motd.size) == ("reg", 0)
    assert motd.xattrs == {b"trusted.overlay.whiteout": b"", b"user.overlay.whiteout": b""}
    assert seen[b"/etc"].xattrs == {
        b"trusted.overlay.opaque": b"x",
        b"trusted.overlay.whiteouts": b"",
        b"user.overlay.opaque": b"x",
        b"user.overlay.whiteouts": b"",
    }
    assert seen[b"/cache"].xattrs == {b"trusted.overlay.opaque": b"y"}


def test_mount_layers_whiteouts_and_opaque_dirs_hide_lower_entries(
    layers: tuple[Path, Path, Path], mnt: Path, tmp_path: Path
) -> None:
    require_mounts(xwhiteouts=True)
    upper, lower, objects = layers
    with mounted([upper, lower], mnt, objects):
        seen = walk(mnt)
        with pytest.raises(OSError) as info:
            (mnt / "new").write_bytes(b"x")
        assert info.value.errno == errno.EROFS
    assert {p: (s.kind, s.data) for p, s in seen.items()} == STACKED
    assert seen[b"/etc"].perm == 0o750
    assert seen[b"/etc"].mtime_ns == 20_000_000_005
    assert seen[b"/links/a"].ino != seen[b"/links/b"].ino
    assert not list(tmp_path.glob(".composefs*"))


def test_mount_layers_with_upperdir_is_writable(
    layers: tuple[Path, Path, Path], mnt: Path, tmp_path: Path
) -> None:
    require_mounts(xwhiteouts=True)
    upper, lower, objects = layers
    rw, work = tmp_path / "rw", tmp_path / "work"
    rw.mkdir()
    work.mkdir()
    with mounted([upper, lower], mnt, objects, upperdir=rw, workdir=work):
        (mnt / "etc" / "keep").write_bytes(b"changed")
        assert not (mnt / "etc" / "motd").exists()
    assert (rw / "etc" / "keep").read_bytes() == b"changed"


def test_mount_layers_failure_leaves_nothing_mounted(
    layers: tuple[Path, Path, Path], mnt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_mounts()
    upper, lower, objects = layers
    bogus = tmp_path / "bogus.cfs"
    bogus.write_bytes(b"\0" * 8192)
    staging = tmp_path / "staging"  # the test's own: other processes stage in /tmp too
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    with pytest.raises(LibraryError, match="not a composefs image"):
        mount_layers([upper, bogus], mnt, objects=objects)
    with pytest.raises(LibraryError) as info:
        # upper has no external content, so it mounts; lower's lacks digests.
        mount_layers([upper, lower], mnt, objects=objects, require_verity=True)
    assert info.value.errno == ENOVERITY
    assert leftover_mounts(tmp_path) == []
    assert list(staging.iterdir()) == []


def _tree(entries: Sequence[Entry]) -> Tree:
    builder = TreeBuilder(count_hardlinks=True)
    for e in entries:
        if e.hardlink_to is not None:
            builder.add(e.path, Hardlink(e.hardlink_to))
            continue
        mode = _TYPE_BITS[e.kind] | e.perm
        builder.add(
            e.path,
            Inode(
                mode=mode,
                uid=e.uid,
                gid=e.gid,
                mtime=e.mtime[0],
                mtime_nsec=e.mtime[1],
                size=len(e.data) if e.kind == "reg" else 0,
                rdev=os.makedev(*e.rdev),
                payload=e.payload.encode() if e.kind == "reg" and len(e.data) > 64 else None,
                content=e.data if e.kind == "reg" and 0 < len(e.data) <= 64 else None,
                symlink_target=e.data if e.kind == "symlink" else None,
                xattrs=tuple(sorted(e.xattrs.items())),
            ),
        )
    return builder.build()


def test_flatten_layers_applies_oci_whiteout_semantics() -> None:
    flat = flatten_layers([_tree(UPPER), _tree(LOWER)])
    kinds = {path: _KINDS[flat.inode(path).file_type] for path in flat.paths}
    assert kinds == {path: kind for path, (kind, _) in STACKED.items()}
    payload = {e.path: e.payload.encode() for e in LOWER + UPPER if e.kind == "reg"}
    assert flat.inode(b"/etc/keep").payload == payload[b"/etc/keep"]
    assert flat.inode(b"/links/a").content == b"replaced"
    assert flat.inode(b"/etc").mode & 0o7777 == 0o750
    assert flat.inode(b"/cache").xattrs == ()  # the opaque marker is consumed
    # /links/b lost its partner: it holds the inode now, with one link.
    assert isinstance(flat[b"/links/b"], Inode)
    assert flat.inode(b"/links/b").nlink == 1
    assert flat.inode(b"/links/b").payload == _tree(LOWER).inode(b"/links/a").payload


def test_flatten_layers_keeps_hardlinks_that_survive() -> None:
    lower = _tree(LOWER)
    top = _tree([Entry(b"/", "dir", 0o755), Entry(b"/new", "reg", 0o644, data=b"n")])
    flat = flatten_layers([top, lower])
    assert flat[b"/links/b"] == Hardlink(b"/links/a")
    assert flat.inode(b"/links/a").nlink == 2
    assert flatten_layers([lower]) == lower


def test_flatten_layers_moves_the_inode_to_a_surviving_link() -> None:
    lower = _tree(
        [
            Entry(b"/", "dir", 0o755),
            Entry(b"/a", "reg", 0o755, data=b"x" * 100),
            Entry(b"/b", "reg", 0o755, hardlink_to=b"/a"),
            Entry(b"/c", "reg", 0o755, hardlink_to=b"/a"),
        ]
    )
    top = _tree([Entry(b"/", "dir", 0o755), Entry(b"/a", "char", 0)])
    flat = flatten_layers([top, lower])
    assert flat.paths == (b"/", b"/b", b"/c")
    assert flat[b"/c"] == Hardlink(b"/b")
    assert flat.inode(b"/b").nlink == 2
    assert flat.inode(b"/b").payload == lower.inode(b"/a").payload


def test_flattened_image_mounts_like_the_stacked_layers(
    layers: tuple[Path, Path, Path], mnt: Path, tmp_path: Path
) -> None:
    require_mounts(xwhiteouts=True)
    from composefs_py._native import read_image, write_tree

    upper, lower, objects = layers
    flat = flatten_layers([read_image(upper.read_bytes()), read_image(lower.read_bytes())])
    flat_image = tmp_path / "flat.cfs"
    with open(flat_image, "wb") as f:
        write_tree(flat, f.fileno())
    with mounted([flat_image], mnt, objects):
        from_flat = walk(mnt)
    with mounted([upper, lower], mnt, objects):
        from_stack = walk(mnt)
    # The stacking overlay copies the directory xattrs libcomposefs adds for
    # whiteouts (user.overlay.*) up from the top layer; the flat image has no
    # whiteouts left, so it has none of them.
    for seen in (from_flat, from_stack):
        for entry in seen.values():
            entry.xattrs.pop(b"user.overlay.opaque", None)
            entry.xattrs.pop(b"user.overlay.whiteouts", None)
    assert comparable(from_flat) == comparable(from_stack)


def test_mount_layers_stacks_many_layers_and_odd_paths(tmp_path: Path) -> None:
    require_mounts(xwhiteouts=True)
    from composefs_py._native import write_tree

    count = 130  # their lowerdir list is longer than a 4 KiB mount option string
    odd = tmp_path / "odd, dir: with\\ chars"
    objects, mnt, upper, work = (odd / n for n in ("objects", "mnt", "upper", "work"))
    for folder in (objects, mnt, upper, work):
        folder.mkdir(parents=True)
    images = []
    for index in range(count):
        layer = [
            Entry(b"/", "dir", 0o755),
            Entry(b"/shared", "reg", 0o644, data=f"layer {index}".encode()),
            Entry(f"/only{index}".encode(), "reg", 0o644, data=b"x"),
        ]
        if index == 0:
            layer.append(Entry(f"/only{count - 1}".encode(), "char", 0))
        image = tmp_path / f"layer{index}.cfs"
        with open(image, "wb") as f:
            write_tree(_tree(layer), f.fileno())
        images.append(image)
    try:
        with mounted(images, mnt, objects, upperdir=upper, workdir=work):
            names = sorted(os.listdir(mnt))
            shared = (mnt / "shared").read_bytes()
            (mnt / "written").write_bytes(b"w")
    finally:
        assert leftover_mounts(tmp_path) == []
    assert names == sorted(["shared", *(f"only{i}" for i in range(count - 1))])
    assert shared == b"layer 0"
    assert (upper / "written").read_bytes() == b"w"


def test_mount_with_odd_upperdir_and_relative_paths(
    sample: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_mounts()
    image, objects = sample
    odd = tmp_path / "odd, dir: with\\ chars"
    for name in ("mnt", "upper", "work"):
        (odd / name).mkdir(parents=True)
    monkeypatch.chdir(odd)
    try:
        with mounted(
            [image], Path("mnt"), Path(os.path.relpath(objects)), upperdir="upper", workdir="work"
        ):
            assert (odd / "mnt" / "bin" / "tool").read_bytes() == BIG
            (odd / "mnt" / "written").write_bytes(b"w")
    finally:
        assert leftover_mounts(tmp_path) == []
    assert (odd / "upper" / "written").read_bytes() == b"w"


# ---------------------------------------------------------------------------
# what libcomposefs asks of the kernel: loop device, direct I/O, noacl
#
# libcomposefs (lcfs-mount.c) mounts the EROFS image from /proc/self/fd/N,
# read-only, with ``noacl`` unless the image's header says it has ACLs; when
# erofs refuses a file source (ENOTBLK) it binds a loop device with
# LO_FLAGS_READ_ONLY | LO_FLAGS_DIRECT_IO | LO_FLAGS_AUTOCLEAR and mounts
# that.  It then detaches the EROFS mount (only the overlay holds it), so
# mountinfo never lists it.  What can be observed:
#
# * the loop device, in /sys/block/loopN (ro, loop/dio, loop/autoclear,
#   loop/backing_file).  Linux >= 6.12 erofs with
#   CONFIG_EROFS_FS_BACKED_BY_FILE mounts a regular file itself when its file
#   system can read folios (ext4, xfs, ...); a file on tmpfs still needs a loop.
# * the superblock options: a block device has one erofs superblock, so a
#   second read-only mount of the loop device (asking for nothing) shares the
#   superblock libcomposefs made, and mountinfo shows its options.
# * on the file-backed path nothing shows them: strace shows the fsconfig call.
# ---------------------------------------------------------------------------

_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_MS_RDONLY = 1
_MNT_DETACH = 2

#: A minimal valid POSIX ACL (user::rw-, group::r--, other::r--), xattr form.
ACL = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in ((0x01, 6), (0x04, 4), (0x20, 4))
)
ACL_SAMPLE = [
    Entry(b"/", "dir", 0o755),
    Entry(b"/shared", "reg", 0o644, data=b"s" * 200, xattrs={b"system.posix_acl_access": ACL}),
]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


@contextmanager
def tmpfs(path: Path) -> Iterator[Path]:
    """A tmpfs on ``path``: erofs cannot mount its files itself, so they need a loop."""
    path.mkdir()
    libc = _libc()
    if libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", 0, b"size=64m") != 0:
        code = ctypes.get_errno()
        pytest.skip(f"cannot mount a tmpfs: {os.strerror(code)}")
    try:
        yield path
    finally:
        libc.umount2(os.fsencode(path), _MNT_DETACH)


def erofs_mounts_the_file_itself(image: Path) -> bool:
    """Whether the kernel's erofs takes ``image`` (a regular file) as its source.

    A superblock is created and dropped again; nothing is mounted.
    """
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(_SYS_FSOPEN, b"erofs", ctypes.c_uint(1))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "fsopen erofs")
    try:
        for cmd, key, value in (
            (_FSCONFIG_SET_STRING, b"source", os.fsencode(image)),
            (_FSCONFIG_SET_FLAG, b"ro", None),
            (_FSCONFIG_CMD_CREATE, None, None),
        ):
            if libc.syscall(_SYS_FSCONFIG, fd, ctypes.c_uint(cmd), key, value, 0) < 0:
                code = ctypes.get_errno()
                if cmd == _FSCONFIG_CMD_CREATE and code == errno.ENOTBLK:
                    return False
                raise OSError(code, f"fsconfig {key!r}: {os.strerror(code)}")
        return True
    finally:
        os.close(fd)


def loops_backed_by(image: Path) -> list[str]:
    wanted = str(image.resolve())
    return [dev for dev, backing in file_loop_devices().items() if backing == wanted]


def _sys_block(dev: str, name: str) -> str:
    return (Path("/sys/block") / os.path.basename(dev) / name).read_text().strip()


def _opens_with_o_direct(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        return False
    return True


def superblock_options(dev: str, peek: Path) -> list[str]:
    """The options of the erofs superblock on ``dev``, through a second mount of it.

    The mount asks for no option: what mountinfo shows is the existing
    superblock's (the kernel does not reconfigure a shared superblock).
    """
    peek.mkdir()
    libc = _libc()
    if libc.mount(os.fsencode(dev), os.fsencode(peek), b"erofs", _MS_RDONLY, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mount {dev}: {os.strerror(code)}")
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == str(peek):
                    tail = fields[fields.index("-") + 1 :]
                    assert tail[:2] == ["erofs", dev], line
                    return tail[2].split(",")
        raise AssertionError(f"{peek} is not in /proc/self/mountinfo")
    finally:
        libc.umount2(os.fsencode(peek), 0)


@pytest.fixture
def on_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "tmpfs") as path:
        yield path


def test_an_image_erofs_cannot_mount_itself_goes_through_a_read_only_direct_io_loop(
    mkcomposefs: Path, mnt: Path, on_tmpfs: Path, tmp_path: Path
) -> None:
    require_mounts()
    objects = tmp_path / "objects"
    objects.mkdir()
    image = build_image(mkcomposefs, on_tmpfs, "sample", SAMPLE, objects)
    if erofs_mounts_the_file_itself(image):
        pytest.skip("this kernel's erofs mounts files on tmpfs itself: no loop device to observe")
    assert loops_backed_by(image) == []
    mount(image, mnt, objects=objects)
    try:
        devices = loops_backed_by(image)
        assert len(devices) == 1
        dev = devices[0]
        assert _sys_block(dev, "ro") == "1"
        assert _sys_block(dev, "loop/autoclear") == "1"
        # LO_FLAGS_DIRECT_IO is asked for, and granted when the file can do O_DIRECT
        # (tmpfs can since Linux 6.6).  What a loop does with a file that cannot is
        # not asserted: on this kernel no such file needs a loop (ramfs files are
        # mounted by erofs itself).
        if _opens_with_o_direct(image):
            assert _sys_block(dev, "loop/dio") == "1"
        assert (mnt / "bin" / "tool").read_bytes() == BIG
    finally:
        unmount(mnt)
    assert loops_backed_by(image) == []  # auto-cleared with the last mount


@pytest.mark.parametrize(("entries", "option"), [(SAMPLE, "noacl"), (ACL_SAMPLE, "acl")])
def test_erofs_is_mounted_noacl_unless_the_image_has_acls(
    mkcomposefs: Path,
    mnt: Path,  # before on_tmpfs: its check runs after the tmpfs is gone
    on_tmpfs: Path,
    tmp_path: Path,
    entries: list[Entry],
    option: str,
) -> None:
    require_mounts()
    objects = tmp_path / "objects"
    objects.mkdir()
    image = build_image(mkcomposefs, on_tmpfs, "image", entries, objects)
    if erofs_mounts_the_file_itself(image):
        pytest.skip("this kernel's erofs mounts files on tmpfs itself: no loop device to observe")
    mount(image, mnt, objects=objects)
    try:
        (dev,) = loops_backed_by(image)
        options = superblock_options(dev, tmp_path / "peek")
        if entries is ACL_SAMPLE:
            assert os.getxattr(mnt / "shared", "system.posix_acl_access") == ACL
    finally:
        unmount(mnt)
    assert "ro" in options
    assert option in options
    assert ({"acl", "noacl"} - {option}).isdisjoint(options)


def test_an_image_erofs_mounts_from_its_file_needs_no_loop_device(
    sample: tuple[Path, Path], mnt: Path
) -> None:
    require_mounts()
    image, objects = sample
    direct = erofs_mounts_the_file_itself(image)
    mount(image, mnt, objects=objects)
    try:
        devices = loops_backed_by(image)
        assert (mnt / "bin" / "tool").read_bytes() == BIG
    finally:
        unmount(mnt)
    if direct:
        assert devices == []
    else:
        assert len(devices) == 1 and _sys_block(devices[0], "ro") == "1"


@pytest.mark.parametrize(("entries", "asked"), [(SAMPLE, True), (ACL_SAMPLE, False)])
def test_noacl_is_asked_for_on_the_file_backed_path_too(
    mkcomposefs: Path, tmp_path: Path, mnt: Path, entries: list[Entry], asked: bool
) -> None:
    require_mounts()
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not found: the file-backed erofs mount shows its options nowhere else")
    objects = tmp_path / "objects"
    objects.mkdir()
    image = build_image(mkcomposefs, tmp_path, "image", entries, objects)
    log = tmp_path / "strace.log"
    code = (
        "import sys\n"
        "from composefs_py.mount import mount, unmount\n"
        "mount(sys.argv[1], sys.argv[2], objects=sys.argv[3])\n"
        "unmount(sys.argv[2])\n"
    )
    traced = [sys.executable, "-c", code, str(image), str(mnt), str(objects)]
    subprocess.run(
        [strace, "-f", "-qq", "-e", "trace=fsopen,fsconfig", "-o", str(log), *traced],
        check=True,
        capture_output=True,
    )
    calls = log.read_text()
    assert 'fsopen("erofs"' in calls
    assert ('"noacl"' in calls) == asked


# ---------------------------------------------------------------------------
# failing halfway leaves nothing: no mount, no loop device, no folder
#
# The images live on a tmpfs, so every image mount goes through a loop
# device; the staging folders of mount() and mount_layers() go to a
# temporary directory of the test's own (tempfile.tempdir).
# ---------------------------------------------------------------------------


def corrupt_copy(image: Path, dest: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``image`` with its composefs and erofs magics intact and the rest of the
    erofs superblock overwritten, and the image reader of mount's checks
    made to pass it (an empty Tree): the kernel is the one to refuse it.
    Without the stand-in the checks refuse it before mounting anything."""
    import composefs_py.writer

    data = bytearray(image.read_bytes())
    data[1024 + 4 : 1024 + 128] = b"\xff" * 124
    dest.write_bytes(bytes(data))
    with pytest.raises(ValidationError, match="not a valid composefs image"):
        mount(dest, dest.parent, objects=dest.parent)
    real = composefs_py.writer.read_image

    def reader(src: bytes, **options: Any) -> Tree:
        if bytes(src) == bytes(data):
            builder = TreeBuilder()
            builder.add(b"/", Inode(mode=stat.S_IFDIR | 0o755, nlink=2))
            return builder.build()
        return real(src, **options)

    monkeypatch.setattr(composefs_py.writer, "read_image", reader)
    return dest


@dataclass(frozen=True)
class OnTmpfs:
    images: list[Path]  # three layers, top first
    objects: Path
    staging: Path  # tempfile.tempdir for the test


@pytest.fixture
def three_layers(
    mkcomposefs: Path,
    mnt: Path,
    on_tmpfs: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> OnTmpfs:
    objects = tmp_path / "objects"
    objects.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    images = [
        build_image(mkcomposefs, on_tmpfs, name, entries, objects)
        for name, entries in (("upper", UPPER), ("sample", SAMPLE), ("lower", LOWER))
    ]
    return OnTmpfs(images, objects, staging)


def assert_nothing_left(layers: OnTmpfs, tmp_path: Path) -> None:
    mounts = [m for m in composefs_mounts() if m[1].startswith(str(tmp_path) + "/")]
    assert mounts == []
    for image in layers.images:
        assert loops_backed_by(image) == [], image
    assert list(layers.staging.iterdir()) == []


def test_mount_layers_of_good_images_uses_one_loop_device_per_layer(
    three_layers: OnTmpfs, mnt: Path, tmp_path: Path
) -> None:
    # The stack the failure tests break: it mounts, each layer on its loop device.
    require_mounts(xwhiteouts=True)
    if erofs_mounts_the_file_itself(three_layers.images[0]):
        pytest.skip("this kernel's erofs mounts files on tmpfs itself: no loop device to observe")
    with mounted(three_layers.images, mnt, three_layers.objects):
        assert [len(loops_backed_by(image)) for image in three_layers.images] == [1, 1, 1]
        assert (mnt / "etc" / "hosts").read_bytes() == b"new hosts\n"
        assert (mnt / "bin" / "tool").read_bytes() == BIG
        assert list(three_layers.staging.iterdir()) == []
    assert_nothing_left(three_layers, tmp_path)


def test_mount_layers_with_a_layer_the_kernel_refuses_leaves_nothing(
    three_layers: OnTmpfs, mnt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_mounts(xwhiteouts=True)
    images = three_layers.images
    bad = corrupt_copy(images[2], images[2].with_name("corrupt.cfs"), monkeypatch)
    with pytest.raises(LibraryError, match=r"corrupt\.cfs") as info:
        # The top two layers are mounted (on loop devices) before the base fails.
        mount_layers([images[0], images[1], bad], mnt, objects=three_layers.objects)
    assert info.value.errno == errno.EINVAL
    assert loops_backed_by(bad) == []
    assert_nothing_left(three_layers, tmp_path)


def test_mount_layers_whose_stacking_overlay_is_refused_leaves_nothing(
    three_layers: OnTmpfs, mnt: Path, tmp_path: Path
) -> None:
    require_mounts(xwhiteouts=True)
    upper = tmp_path / "upper"
    work = upper / "work"  # overlayfs wants them apart: refused after every layer is mounted
    work.mkdir(parents=True)
    with pytest.raises(LibraryError, match="stacking overlay") as info:
        mount_layers(
            three_layers.images, mnt, objects=three_layers.objects, upperdir=upper, workdir=work
        )
    assert info.value.errno == errno.EINVAL
    assert_nothing_left(three_layers, tmp_path)


@pytest.mark.parametrize("problem", ["garbage image", "missing object store", "missing workdir"])
def test_mount_layers_with_a_bad_image_or_folder_leaves_nothing(
    three_layers: OnTmpfs, mnt: Path, tmp_path: Path, problem: str
) -> None:
    require_mounts(xwhiteouts=True)
    images = list(three_layers.images)
    objects: list[Path] = [three_layers.objects]
    options: dict[str, Path] = {}
    if problem == "garbage image":
        images[2] = tmp_path / "garbage.cfs"
        images[2].write_bytes(b"\0" * 8192)
    elif problem == "missing object store":
        objects.append(tmp_path / "nowhere")
    else:
        options = {"upperdir": tmp_path, "workdir": tmp_path / "nowhere"}
    with pytest.raises(LibraryError):
        mount_layers(images, mnt, objects=objects, **options)  # type: ignore[arg-type]
    assert_nothing_left(three_layers, tmp_path)


def test_mount_of_an_image_the_kernel_refuses_leaves_nothing(
    three_layers: OnTmpfs, mnt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_mounts()
    bad = corrupt_copy(
        three_layers.images[1], three_layers.images[1].with_name("corrupt.cfs"), monkeypatch
    )
    with pytest.raises(LibraryError) as info:
        mount(bad, mnt, objects=three_layers.objects)
    assert info.value.errno == errno.EINVAL
    assert loops_backed_by(bad) == []
    assert_nothing_left(three_layers, tmp_path)


def test_mount_whose_overlay_is_refused_after_the_image_mount_leaves_nothing(
    three_layers: OnTmpfs, mnt: Path, tmp_path: Path
) -> None:
    require_mounts()
    upper = tmp_path / "upper"
    work = upper / "work"
    work.mkdir(parents=True)
    with pytest.raises(LibraryError) as info:
        mount(
            three_layers.images[1], mnt, objects=three_layers.objects, upperdir=upper, workdir=work
        )
    assert info.value.errno == errno.EINVAL
    assert_nothing_left(three_layers, tmp_path)


# ---------------------------------------------------------------------------
# the leak check itself (tests/conftest.py)
# ---------------------------------------------------------------------------

LEAKING_TESTS = """
import subprocess
from pathlib import Path

from composefs_py.mount import mount

IMAGE = Path({image!r})


def test_leaves_a_mount(tmp_path):
    (tmp_path / "mnt").mkdir()
    mount(IMAGE, tmp_path / "mnt", objects={objects!r})


def test_leaves_a_loop_device(tmp_path):
    (tmp_path / "fs").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmp_path / "fs")], check=True)
    copy = tmp_path / "fs" / "image.cfs"
    copy.write_bytes(IMAGE.read_bytes())
    subprocess.run(["losetup", "--find", "--read-only", str(copy)], check=True)


def test_cleans_up(tmp_path):
    (tmp_path / "mnt").mkdir()
    mount(IMAGE, tmp_path / "mnt", objects={objects!r})
    subprocess.run(["umount", str(tmp_path / "mnt")], check=True)
"""


def test_the_leak_check_fails_a_test_that_leaves_a_mount_or_a_loop_device(
    sample: tuple[Path, Path], tmp_path: Path
) -> None:
    require_mounts()
    if shutil.which("losetup") is None:
        pytest.skip("losetup not found (util-linux)")
    image, objects = sample
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(Path(__file__).with_name("conftest.py"), suite / "conftest.py")
    (suite / "test_leaks.py").write_text(
        LEAKING_TESTS.format(image=str(image), objects=str(objects))
    )
    options = ["-q", "-p", "no:cacheprovider", "-o", "addopts=", "--basetemp"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *options, str(tmp_path / "basetemp"), str(suite)],
        cwd=suite,
        capture_output=True,
        text=True,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 1, report
    assert "3 passed, 2 errors" in report, report
    assert "ERROR at teardown of test_leaves_a_mount" in report
    assert "overlay composefs on " + str(tmp_path / "basetemp") in report
    assert "ERROR at teardown of test_leaves_a_loop_device" in report
    assert "loop device /dev/loop" in report
    # The loop device was cleared by the check (the tmpfs went with the run's namespace).
    assert not [b for b in file_loop_devices().values() if b.startswith(str(tmp_path))]


# ---------------------------------------------------------------------------
# hostile images with verity asked for
# ---------------------------------------------------------------------------

_MOUNT_IN_CHILD = r"""
import errno, sys
from composefs_py.errors import LibraryError
from composefs_py.mount import mount, unmount
image, mnt, objects, how = sys.argv[1:5]
try:
    mount(image, mnt, objects=objects, **{how: True})
except LibraryError as exc:
    print("LibraryError", errno.errorcode.get(exc.errno, exc.errno), exc)
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    unmount(mnt)
    print("mounted")
"""


def mount_in_child(
    image: Path, mnt: Path, objects: Path, how: str, *, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run :func:`mount` with ``how=True`` in a child (a crash must not take pytest down)."""
    return subprocess.run(
        [sys.executable, "-c", _MOUNT_IN_CHILD, str(image), str(mnt), str(objects), how],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def deep_image(tmp_path: Path, depth: int, objects: Path) -> Path:
    """An image (from this package's writer) ``depth`` directories deep, a file
    with an fs-verity digest at the bottom, its object in ``objects``."""
    from composefs_py.objects import ObjectStore
    from composefs_py.writer import write_image

    payload = ObjectStore(objects).add(BIG)
    builder = TreeBuilder(synthesize_parents=True)
    path = b"/" + b"/".join(b"d" for _ in range(depth)) + b"/f"
    builder.add(
        path,
        Inode(
            mode=stat.S_IFREG | 0o644,
            size=len(BIG),
            payload=payload,
            fsverity_digest=fsverity_digest(BIG),
        ),
    )
    image = tmp_path / f"deep-{depth}.cfs"
    write_image(builder.build(), image)
    return image


@pytest.mark.parametrize("depth", [1000, 2000])
@pytest.mark.parametrize("how", ["require_verity", "try_verity"])
def test_verity_checks_of_a_deep_image_do_not_crash(
    tmp_path: Path, mnt: Path, depth: int, how: str
) -> None:
    require_mounts()
    objects = tmp_path / "objects"
    image = deep_image(tmp_path, depth, objects)
    done = mount_in_child(image, mnt, objects, how)
    assert done.returncode == 0, f"the child died (rc {done.returncode}): {done.stderr[-2000:]}"
    if how == "try_verity" or _filesystem_has_fsverity(objects):
        assert done.stdout.startswith("mounted"), done.stdout
    else:
        assert done.stdout.startswith("LibraryError ENOTTY"), done.stdout
        assert "has no fs-verity" in done.stdout


def _loader_callers() -> set[str]:
    """Modules of the package that call ``_native.read_image`` (the loader) or import it."""
    import ast

    import composefs_py

    package = Path(composefs_py.__file__).parent
    found = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            direct = (
                isinstance(node, ast.Attribute)
                and node.attr == "read_image"
                and isinstance(node.value, ast.Name)
                and "native" in node.value.id
            )
            imported = (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").endswith("_native")
                and any(alias.name == "read_image" for alias in node.names)
            )
            if direct or imported:
                found.add(source.relative_to(package).as_posix())
    return found


def test_the_image_loader_is_reached_only_through_the_safe_reader() -> None:
    """writer.read_image (structural check, large-stack thread) is the one way in;
    the sandbox child, which raises its own stack limit, is the other caller."""
    assert _loader_callers() == {"writer.py", "_worker.py"}


def hostile_payloads(canary: Path) -> dict[str, bytes]:
    """Payloads of every shape an image may carry; only the digest-shaped ones
    may ever be looked up, and then only relative to the store, through no link."""
    hexdigest = CONFINED_HEX
    return {
        "relative escape": b"../canary/victim",
        "relative escape to a FIFO": b"../canary/fifo",
        "absolute path": os.fsencode(canary / "victim"),
        "absolute path of a FIFO": os.fsencode(canary / "fifo"),
        "a device": b"/dev/zero",
        "escape after a fan-out": f"{hexdigest[:2]}/../../canary/victim".encode(),
        "61 hex digits": CONFINED_PAYLOAD[:-1],
        "63 hex digits": CONFINED_PAYLOAD + b"0",
        "upper-case hex": CONFINED_PAYLOAD.upper(),
        "doubled slash": CONFINED_PAYLOAD.replace(b"/", b"//"),
        "leading ./": b"./" + CONFINED_PAYLOAD,
        "leading /": b"/" + CONFINED_PAYLOAD,
        "no slash": CONFINED_PAYLOAD.replace(b"/", b""),
        "three-digit fan-out": CONFINED_PAYLOAD[:3].replace(b"/", b"0")
        + b"/"
        + CONFINED_PAYLOAD[3:],
        "empty": b"",
    }


@pytest.fixture(name="canary")
def _canary(tmp_path: Path) -> Iterator[Canary]:
    bird = Canary(tmp_path / "canary")
    yield bird
    bird.close()


def _image_with_payload(mkcomposefs: Path, tmp_path: Path, payload: bytes) -> Path:
    digest = fsverity_digest(CONFINED).hex()
    text = (
        "/ 0 40755 2 0 0 0 0.0 - - -\n"
        f"/f {len(CONFINED)} 100644 1 0 0 0 0.0 {_esc(payload)} - {digest}\n"
    )
    image = tmp_path / "hostile.cfs"
    subprocess.run(
        [str(mkcomposefs), "--from-file", "-", str(image)],
        input=text.encode(),
        check=True,
        capture_output=True,
    )
    return image


def _hostile_cases() -> list[tuple[str, str]]:
    cases = [("shape", name) for name in hostile_payloads(Path("/x"))]
    cases += [("planted", where) for where in PLANTS]
    return cases


@pytest.mark.parametrize(("kind", "case"), _hostile_cases())
def test_verity_checks_of_an_image_open_nothing_outside_the_store(
    mkcomposefs: Path, tmp_path: Path, mnt: Path, canary: Canary, kind: str, case: str
) -> None:
    """A payload of any shape, or a link or odd file planted in the store, gives
    a clean refusal: no hang on a FIFO, no file outside the store opened."""
    require_mounts()
    objects = tmp_path / "objects"
    objects.mkdir()
    if kind == "shape":
        payload = hostile_payloads(canary.path)[case]
        if not payload:
            pytest.skip("a dumpfile cannot carry an empty payload")
        (objects / CONFINED_PAYLOAD.decode()).parent.mkdir()
        (objects / CONFINED_PAYLOAD.decode()).write_bytes(CONFINED)
    else:
        payload = CONFINED_PAYLOAD
        plant(objects, canary.path, case)
    image = _image_with_payload(mkcomposefs, tmp_path, payload)
    canary.settle()
    done = mount_in_child(image, mnt, objects, "require_verity", timeout=20)
    assert done.returncode == 0, f"the child died (rc {done.returncode}): {done.stderr[-2000:]}"
    assert done.stdout.startswith(("LibraryError", "ValidationError")), done.stdout
    canary.assert_untouched()
    assert not is_mountpoint(mnt)


@pytest.mark.parametrize(("kind", "case"), _hostile_cases())
def test_the_verity_check_itself_refuses_what_is_not_an_object(
    tmp_path: Path, canary: Canary, monkeypatch: pytest.MonkeyPatch, kind: str, case: str
) -> None:
    """The check in mount does not rely on the image reader refusing such
    payloads: given them (a reader stand-in), it refuses them itself."""
    objects = tmp_path / "objects"
    objects.mkdir()
    if kind == "shape":
        payload = hostile_payloads(canary.path)[case]
    else:
        payload = CONFINED_PAYLOAD
        plant(objects, canary.path, case)
    inode = Inode(
        mode=stat.S_IFREG | 0o644,
        size=len(CONFINED),
        payload=CONFINED_PAYLOAD,
        fsverity_digest=fsverity_digest(CONFINED),
    )
    object.__setattr__(inode, "payload", payload)  # what no validator would let through
    canary.settle()
    with deadline(10), ObjectDir(objects) as store:
        problem = sys.modules["composefs_py.mount"]._verity_problem([(b"/f", inode)], [store])
    assert isinstance(problem, LibraryError)
    reason = str(problem.strerror)
    assert reason.startswith("/f: ")
    if kind == "shape":
        assert problem.errno == errno.EINVAL
        assert "is not an object name" in reason
    else:
        assert f"object store {objects}: {CONFINED_HEX[:2]}" in reason
    canary.assert_untouched()


def test_verity_check_measures_each_object_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import composefs_py.fsverity
    import composefs_py.writer

    mount_module = sys.modules["composefs_py.mount"]
    objects = tmp_path / "objects"
    payload = ObjectStore(objects).add(CONFINED)
    inode = Inode(
        mode=stat.S_IFREG | 0o644,
        size=len(CONFINED),
        payload=payload,
        fsverity_digest=fsverity_digest(CONFINED),
    )
    nodes = [(b"/f%d" % i, inode) for i in range(1000)]
    measured: list[int] = []

    def measure(fd: int) -> bytes:
        measured.append(fd)
        return fsverity_digest(CONFINED)

    monkeypatch.setattr(composefs_py.fsverity, "measure_fsverity", measure)
    with ObjectDir(objects) as store:
        assert mount_module._verity_problem(nodes, [store]) is None
    assert len(measured) == 1
