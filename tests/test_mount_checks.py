"""What mount checks before mounting: the image's objects are in the store
(else a refusal, or a warning with ``allow_missing``), and the image is the
one expected (``expected_digest``/``expected_digests``, ``mount --digest``,
mount.composefs's ``digest=``), its fs-verity digest computed in userspace.

Real mounts (root, erofs, overlayfs); every mount is unmounted.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import test_mount
from test_mount import Entry, build_image, mounted, require_mounts
from test_objects import deadline

from composefs_py import _native
from composefs_py.cli import main
from composefs_py.errors import LibraryError
from composefs_py.fsverity import fsverity_digest
from composefs_py.mount import (
    EWRONGVERITY,
    MissingObjectsWarning,
    is_mountpoint,
    mount,
    mount_layers,
    unmount,
)

mnt = test_mount.mnt  # the fixture: a mount point left with nothing mounted


def _image(mkcomposefs: Path, tmp_path: Path, name: str, files: int) -> tuple[Path, Path]:
    """An image of ``files`` files with external content, all in a fresh store."""
    objects = tmp_path / f"{name}-objects"
    objects.mkdir()
    entries = [Entry(b"/", "dir", 0o755)]
    entries += [
        Entry(f"/f{i:03d}".encode(), "reg", 0o644, data=f"{name} {i}\n".encode() * 20)
        for i in range(files)
    ]
    return build_image(mkcomposefs, tmp_path, name, entries, objects), objects


def _remove(objects: Path, count: int) -> list[str]:
    removed = sorted(str(p.relative_to(objects)) for p in objects.glob("*/*"))[:count]
    for name in removed:
        (objects / name).unlink()
    return removed


def _no_mount_attempted(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the image was mounted before the check refused it")

    monkeypatch.setattr(_native, "mount_image", refuse)


@pytest.mark.parametrize("missing", [1, 3, 40])
def test_mount_refuses_an_image_whose_objects_are_missing(
    mkcomposefs: Path, tmp_path: Path, mnt: Path, missing: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_mounts()
    image, objects = _image(mkcomposefs, tmp_path, "img", 50)
    removed = _remove(objects, missing)
    _no_mount_attempted(monkeypatch)
    with pytest.raises(LibraryError) as info:
        mount(image, mnt, objects=objects)
    assert info.value.errno == errno.ENOENT
    text = str(info.value)
    assert f"{missing} of its 50 objects" in text
    assert removed[0] in text  # the first few are named
    assert removed[-1] in text if missing <= 5 else removed[5] not in text
    assert "allow_missing" in text
    assert not is_mountpoint(mnt)


def test_mount_with_allow_missing_warns_and_mounts(
    mkcomposefs: Path, tmp_path: Path, mnt: Path
) -> None:
    require_mounts()
    image, objects = _image(mkcomposefs, tmp_path, "img", 4)
    removed = _remove(objects, 1)
    with pytest.warns(MissingObjectsWarning, match=f"1 of its 4 objects.*{removed[0]}"):
        mount(image, mnt, objects=objects, allow_missing=True)
    try:
        assert (mnt / "f001").read_bytes()[:5] == b"img 1"
    finally:
        unmount(mnt)


def test_an_object_in_any_of_several_stores_is_not_missing(
    mkcomposefs: Path, tmp_path: Path, mnt: Path
) -> None:
    require_mounts()
    image, objects = _image(mkcomposefs, tmp_path, "img", 4)
    other = tmp_path / "other"
    name = sorted(str(p.relative_to(objects)) for p in objects.glob("*/*"))
    (other / name[0]).parent.mkdir(parents=True)
    (objects / name[0]).rename(other / name[0])
    with pytest.raises(LibraryError, match="1 of its 4 objects"):
        mount(image, mnt, objects=objects)
    with mounted([image], mnt, [objects, other]):
        assert len(list(mnt.iterdir())) == 4


def test_mount_command_refuses_or_warns_with_allow_missing(
    mkcomposefs: Path, tmp_path: Path, mnt: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    require_mounts()
    image, objects = _image(mkcomposefs, tmp_path, "img", 3)
    removed = _remove(objects, 2)
    capfd.readouterr()
    assert main(["mount", str(image), str(mnt), "--objects", str(objects)]) == 1
    err = capfd.readouterr().err
    assert "2 of its 3 objects" in err and removed[0] in err and "--allow-missing" in err
    assert not is_mountpoint(mnt)
    assert main(["mount", str(image), str(mnt), "--objects", str(objects), "--allow-missing"]) == 0
    try:
        err = capfd.readouterr().err
        assert err.startswith("composefs-py: warning: ") and "2 of its 3 objects" in err
        assert is_mountpoint(mnt)
    finally:
        unmount(mnt)


@pytest.mark.parametrize("form", ["bytes", "hex"])
def test_mount_with_the_images_digest_mounts_without_kernel_fsverity(
    mkcomposefs: Path, tmp_path: Path, mnt: Path, form: str
) -> None:
    require_mounts()
    image, objects = _image(mkcomposefs, tmp_path, "img", 2)
    digest = fsverity_digest(image)
    with mounted(
        [image], mnt, objects, expected_digest=digest if form == "bytes" else digest.hex()
    ):
        assert len(list(mnt.iterdir())) == 2


def test_mount_with_another_digest_is_refused_before_mounting(
    mkcomposefs: Path, tmp_path: Path, mnt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_mounts()
    image, objects = _image(mkcomposefs, tmp_path, "img", 2)
    other, _ = _image(mkcomposefs, tmp_path, "other", 3)
    _no_mount_attempted(monkeypatch)
    with pytest.raises(LibraryError) as info:
        mount(image, mnt, objects=objects, expected_digest=fsverity_digest(other))
    assert info.value.errno == EWRONGVERITY
    assert fsverity_digest(image).hex() in str(info.value)
    assert fsverity_digest(other).hex() in str(info.value)
    assert not is_mountpoint(mnt)


def test_mount_command_digest_option(
    mkcomposefs: Path, tmp_path: Path, mnt: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    require_mounts()
    image, objects = _image(mkcomposefs, tmp_path, "img", 2)
    wrong = "ab" * 32
    base = ["mount", str(image), str(mnt), "--basedir", str(objects)]
    assert main([*base, "--digest", wrong]) == 1
    assert "fs-verity digest" in capfd.readouterr().err
    assert not is_mountpoint(mnt)
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--digest", "not-hex"])
    assert exit_info.value.code == 2
    assert main([*base, "--digest", fsverity_digest(image).hex()]) == 0
    try:
        assert is_mountpoint(mnt)
    finally:
        unmount(mnt)


def test_mount_layers_checks_every_layer_before_mounting_any(
    mkcomposefs: Path, tmp_path: Path, mnt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_mounts(xwhiteouts=True)
    top, top_objects = _image(mkcomposefs, tmp_path, "top", 2)
    base, base_objects = _image(mkcomposefs, tmp_path, "base", 3)
    stores = [top_objects, base_objects]
    digests = [fsverity_digest(top), fsverity_digest(base)]
    with mounted([top, base], mnt, stores, expected_digests=digests):
        assert len(list(mnt.iterdir())) == 3
    with monkeypatch.context() as patch:
        _no_mount_attempted(patch)
        with pytest.raises(LibraryError) as info:
            mount_layers(
                [top, base], mnt, objects=stores, expected_digests=[digests[0], digests[0]]
            )
        assert info.value.errno == EWRONGVERITY and "base.cfs" in str(info.value)
        with pytest.raises(ValueError, match="one digest per image"):
            mount_layers([top, base], mnt, objects=stores, expected_digests=[digests[0]])
        _remove(base_objects, 1)
        with pytest.raises(LibraryError, match=r"base\.cfs.*1 of its 3 objects"):
            mount_layers([top, base], mnt, objects=stores, expected_digests=[None, None])
    assert not is_mountpoint(mnt)
    with pytest.warns(MissingObjectsWarning):
        mount_layers([top, base], mnt, objects=stores, allow_missing=True)
    unmount(mnt)


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_an_image_that_is_no_file_is_refused_without_blocking(
    tmp_path: Path, mnt: Path, kind: str
) -> None:
    """A FIFO given as the image is never opened for reading in a way that
    waits for a writer; a folder or a character device is no image."""
    image = tmp_path / "image.cfs"
    if kind == "fifo":
        os.mkfifo(image)
    elif kind == "directory":
        image.mkdir()
    else:
        image = Path("/dev/zero")
    objects = tmp_path / "objects"
    objects.mkdir()
    with deadline(5), pytest.raises(LibraryError, match="not a regular file"):
        mount(image, mnt, objects=objects)
    assert not is_mountpoint(mnt)


def test_an_image_larger_than_the_input_limit_is_refused_before_it_is_read(
    mkcomposefs: Path, tmp_path: Path, mnt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import composefs_py.limits

    image, objects = _image(mkcomposefs, tmp_path, "img", 2)
    size = image.stat().st_size
    limits = composefs_py.limits.Limits
    monkeypatch.setattr(composefs_py.limits, "Limits", lambda: limits(max_input_bytes=size - 1))
    read: list[int] = []
    real_pread = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        read.append(length)
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", pread)
    with pytest.raises(LibraryError, match="max_input_bytes"):
        mount(image, mnt, objects=objects)
    assert max(read) < size  # the magic numbers' check only: no read of the image


def test_the_checks_before_mounting_cost_linear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Digest, image read, one lookup per distinct object: twice the files,
    about twice the CPU (the kernel's part is left out: nothing is mounted)."""
    import hashlib
    import stat
    import time

    from composefs_py.model import Hardlink, Inode, TreeBuilder
    from composefs_py.writer import write_image

    monkeypatch.setattr(_native, "mount_image", lambda *args, **kwargs: None)
    cost = {}
    for files in (2000, 4000):
        objects = tmp_path / f"objects{files}"
        builder = TreeBuilder(count_hardlinks=True)
        builder.add(b"/", Inode(mode=stat.S_IFDIR | 0o755, nlink=2))
        for i in range(files):
            digest = hashlib.sha256(b"%d" % i).hexdigest()
            (objects / digest[:2]).mkdir(parents=True, exist_ok=True)
            (objects / digest[:2] / digest[2:]).write_bytes(b"")
            name = b"/f%d" % i
            payload = f"{digest[:2]}/{digest[2:]}".encode()
            builder.add(name, Inode(mode=stat.S_IFREG | 0o644, size=1, payload=payload))
            builder.add(name + b".link", Hardlink(name))
        image = tmp_path / f"image{files}.cfs"
        digest_of_image = write_image(builder.build(), image)
        target = tmp_path / f"mnt{files}"
        target.mkdir()
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            mount(image, target, objects=objects, expected_digest=digest_of_image)
            best = min(best, time.process_time() - start)
        cost[files] = best
    ratio = cost[4000] / cost[2000]
    assert ratio < 3.0, f"2x the files cost {ratio:.2f}x the CPU ({cost})"
