"""Durability order, checked with recording fakes.

A crash must never leave a name pointing at content that is not on disk.  So
every publication is: the data synced (an ``fsync`` of the object or image
file, or one ``syncfs`` of the store for a batch), then the rename, then the
directory synced (an ``fsync`` of the folder, or the second ``syncfs`` of a
batch).  Nothing in the file system's visible state shows whether that
happened, so these tests replace the primitives the code calls with fakes
that record ``(call, path)`` and call through:

* ``os.fsync`` (``composefs_py.objects`` and ``composefs_py.writer`` call it
  as ``os.fsync``), the path read back from ``/proc/self/fd``;
* ``objects._syncfs_function`` (the store's ``syncfs``) and ``os.sync`` (its
  fallback);
* ``objects._rename_noreplace`` (the ``renameat2(RENAME_NOREPLACE)``
  wrapper), ``os.rename`` (its fallback ``renameat``) and ``os.replace``
  (``writer._replace``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from composefs_py import objects, writer
from composefs_py.dumpfile import parse_dumpfile
from composefs_py.layers import open_layer
from composefs_py.objects import ObjectStore
from composefs_py.writer import write_image

DATA = Path(__file__).resolve().parent / "data"
LAYERS = DATA / "layers"

Event = tuple[str, str, str]


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _at(dir_fd: int | None, name: str | bytes) -> str:
    path = os.fsdecode(name)
    if dir_fd is None:
        return os.path.realpath(path)
    return os.path.join(_fd_path(dir_fd), path)


@dataclass
class Recorder:
    """What the fakes saw, in order: ``(call, path, destination)``."""

    events: list[Event] = field(default_factory=list)

    def index(self, call: str, path: str, dest: str = "") -> int:
        matches = [
            i
            for i, event in enumerate(self.events)
            if event[0] == call and event[1] == path and (not dest or event[2] == dest)
        ]
        assert len(matches) == 1, f"{call}({path}) seen {len(matches)} times in {self.events}"
        return matches[0]

    def of(self, *calls: str) -> list[tuple[int, Event]]:
        return [(i, event) for i, event in enumerate(self.events) if event[0] in calls]


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    recorder = Recorder()
    events = recorder.events
    real_fsync = os.fsync
    real_sync = os.sync
    real_rename = os.rename
    real_replace = os.replace
    real_noreplace = objects._rename_noreplace
    real_syncfs_function = objects._syncfs_function

    def fsync(fd: int) -> None:
        events.append(("fsync", _fd_path(fd), ""))
        real_fsync(fd)

    def sync() -> None:
        events.append(("syncfs", "", ""))
        real_sync()

    def syncfs_function() -> Callable[[int], None] | None:
        real = real_syncfs_function()

        def syncfs(fd: int) -> None:
            events.append(("syncfs", _fd_path(fd), ""))
            if real is None:
                real_sync()
            else:
                real(fd)

        return syncfs

    def rename(
        src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
    ) -> None:
        events.append(("rename", _at(src_dir_fd, src), _at(dst_dir_fd, dst)))
        real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def replace(src: str, dst: str) -> None:
        events.append(("rename", _at(None, src), _at(None, dst)))
        real_replace(src, dst)

    def noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> bool | None:
        done = real_noreplace(src_dir, src, dst_dir, dst)
        if done:
            events.append(("rename", _at(src_dir, src), _at(dst_dir, dst)))
        return done

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "sync", sync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(objects, "_rename_noreplace", noreplace)
    monkeypatch.setattr(objects, "_syncfs_function", syncfs_function)
    yield recorder


@pytest.fixture(params=["renameat2", "renameat"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ObjectStore:
    """A durable store; ``renameat``: as where the kernel has no RENAME_NOREPLACE."""
    if request.param == "renameat":
        monkeypatch.setattr(objects, "_rename_noreplace", lambda *args: None)
    return ObjectStore(tmp_path.resolve() / "objects")


def _object_path(store: ObjectStore, payload: bytes) -> str:
    return str(store.root.resolve() / os.fsdecode(payload))


def check_single(rec: Recorder, store: ObjectStore, payload: bytes) -> None:
    """One object: its file fsynced, renamed, then its folder (and the root,
    which gained that folder) fsynced."""
    dest = _object_path(store, payload)
    renames = [event for _, event in rec.of("rename") if event[2] == dest]
    assert len(renames) == 1, rec.events
    tmp = renames[0][1]
    synced = rec.index("fsync", tmp)
    renamed = rec.index("rename", tmp, dest)
    folder = rec.index("fsync", os.path.dirname(dest))
    root = rec.index("fsync", str(store.root.resolve()))
    assert synced < renamed < folder, rec.events
    assert renamed < root, rec.events


def check_batch(rec: Recorder, store: ObjectStore, payloads: list[bytes]) -> None:
    """A batch: one syncfs of the store, every rename, one syncfs more; no
    rename before the first syncfs, none after the second."""
    root = str(store.root.resolve())
    dests = {_object_path(store, payload) for payload in payloads}
    syncs = [i for i, event in rec.of("syncfs") if event[1] in (root, "")]
    renames = [i for i, event in rec.of("rename") if event[2] in dests]
    assert len(renames) == len(dests), rec.events
    assert len(syncs) == 2, rec.events
    assert syncs[0] < min(renames) and max(renames) < syncs[1], rec.events


def test_add(rec: Recorder, store: ObjectStore) -> None:
    payload = store.add(b"durable content\n")
    check_single(rec, store, payload)


def test_writer_commit(rec: Recorder, store: ObjectStore) -> None:
    with store.writer() as out:
        out.write(b"x" * 5000)
        out.hole(1 << 16)
        payload = out.commit()
    check_single(rec, store, payload)


def test_batch(rec: Recorder, store: ObjectStore) -> None:
    with store.batch():
        payloads = [store.add(b"object %d\n" % n) for n in range(5)]
    check_batch(rec, store, payloads)
    tmp_syncs = [event for _, event in rec.of("fsync") if "/.tmp-" in event[1]]
    assert not tmp_syncs, "a batch syncs once, not per object"


def test_non_durable_store_never_syncs(rec: Recorder, tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects", durable=False)
    store.add(b"one")
    with store.batch():
        store.add(b"two")
    assert not rec.of("fsync", "syncfs"), rec.events
    assert len(rec.of("rename")) == 2


@pytest.mark.parametrize("name", ["small.tar", "small.zstd-chunked.blob", "small.estargz.blob"])
def test_layer_import(rec: Recorder, store: ObjectStore, name: str) -> None:
    path = LAYERS / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    tree = open_layer(path).import_objects(store)
    payloads = sorted(store.payloads())
    assert payloads and tree is not None
    check_batch(rec, store, payloads)


@pytest.mark.parametrize("existing", [False, True], ids=["new", "over-existing"])
@pytest.mark.parametrize("backend", ["native", "sandbox", "mkcomposefs"])
def test_write_image(rec: Recorder, tmp_path: Path, backend: str, existing: bool) -> None:
    if backend not in writer.available_backends():
        pytest.skip(f"the {backend} backend cannot run here")
    tree = parse_dumpfile(DATA / "sample.dump")
    folder = tmp_path.resolve() / "images"
    folder.mkdir()
    dest = folder / "image.cfs"
    if existing:
        dest.write_bytes(b"the old image")
    rec.events.clear()
    write_image(tree, dest, backend=backend)
    assert writer.is_image(dest.read_bytes())
    replaces = [event for _, event in rec.of("rename") if event[2] == str(dest)]
    assert len(replaces) == 1, rec.events
    temp = replaces[0][1]
    assert os.path.dirname(temp) == str(folder)
    synced = rec.index("fsync", temp)
    renamed = rec.index("rename", temp, str(dest))
    folder_synced = rec.index("fsync", str(folder))
    assert synced < renamed < folder_synced, rec.events
