"""ObjectStore: names by digest, atomic verified publish, dedup, verify."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from pathlib import Path

import pytest
import test_fsverity
from hypothesis import given
from hypothesis import strategies as st
from test_fsverity import findmnt_type

from composefs_py.errors import LibraryError, ValidationError
from composefs_py.fsverity import fsverity_digest, measure_fsverity
from composefs_py.objects import ObjectStore, payload_for_hex

tmpfs_dir = test_fsverity.tmpfs_dir  # the fixture: a folder on tmpfs


def sha256_payload(data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    return f"{digest[:2]}/{digest[2:]}".encode()


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def libcomposefs_fsverity(data: bytes) -> bytes:
    native = pytest.importorskip("composefs_py._native")
    return bytes(native.fsverity_digest_bytes(data))


def test_add_names_object_by_sha256_and_stores_content(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    data = b"hello composefs\n" * 1000
    payload = store.add(data)
    assert payload == sha256_payload(data)
    path = store.path_for(payload)
    assert path == tmp_path / "objects" / payload.decode()
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert store.has(payload) and store.verify(payload)
    assert list(store.payloads()) == [payload]
    assert store.temporary_files() == []


def test_add_accepts_streams_and_iterables(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    data = os.urandom(3 << 20)  # several read sizes long
    assert store.add(io.BytesIO(data)) == sha256_payload(data)
    pieces = [b"a" * 10, b"", b"b" * 5000]
    assert store.add(iter(pieces)) == sha256_payload(b"".join(pieces))
    assert store.add(b"") == sha256_payload(b"")
    assert store.path_for(sha256_payload(b"")).read_bytes() == b""


@pytest.mark.parametrize("form", ["sha256:{}", "{}", "raw"])
def test_expected_digest_forms_accepted(tmp_path: Path, form: str) -> None:
    store = ObjectStore(tmp_path)
    data = b"content"
    digest = hashlib.sha256(data)
    expected: str | bytes = digest.digest() if form == "raw" else form.format(digest.hexdigest())
    assert store.add(data, expected) == sha256_payload(data)


def test_mismatch_rejected_and_leaves_no_trace(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = ObjectStore(root)
    claimed = hashlib.sha256(b"what the TOC says").hexdigest()
    with pytest.raises(ValidationError) as info:
        store.add(b"what the blob holds", "sha256:" + claimed)
    assert info.value.field == "digest"
    assert claimed in str(info.value)
    assert all_files(root) == []
    assert not store.has(payload_for_hex(claimed))


def test_mismatch_without_context_manager_still_leaves_no_trace(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    writer = store.writer(hashlib.sha256(b"expected").hexdigest())
    writer.write(b"actual")
    assert len(store.temporary_files()) == 1
    with pytest.raises(ValidationError):
        writer.commit()
    assert all_files(tmp_path) == []


def test_mismatch_checked_even_when_object_exists(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    good = b"genuine"
    payload = store.add(good)
    before = store.path_for(payload).stat()
    with pytest.raises(ValidationError):
        store.add(b"forged", hashlib.sha256(good).hexdigest())
    after = store.path_for(payload).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert store.path_for(payload).read_bytes() == good
    assert store.temporary_files() == []


def test_existing_object_is_not_rewritten(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    data = b"same content twice"
    first = store.add(data)
    inode = store.path_for(first).stat().st_ino
    with store.writer() as out:
        out.write(data)
        second = out.commit()
    assert second == first and not out.created
    assert store.path_for(first).stat().st_ino == inode
    assert len(all_files(tmp_path)) == 1


def test_writer_aborted_by_exception_removes_temporary_file(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    with pytest.raises(RuntimeError), store.writer() as out:
        out.write(b"partial")
        assert len(store.temporary_files()) == 1
        raise RuntimeError("reader failed")
    assert all_files(tmp_path) == []


def test_verify_detects_corruption_and_absence(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    payload = store.add(b"original")
    path = store.path_for(payload)
    path.chmod(0o644)
    path.write_bytes(b"tampered")
    assert not store.verify(payload)
    assert not store.verify(sha256_payload(b"never stored"))


@pytest.mark.parametrize(
    "bad",
    [b"../etc/passwd", b"AB/" + b"0" * 62, b"ab" + b"0" * 62, b"ab/" + b"0" * 61, "ab/x"],
)
def test_path_for_rejects_names_that_are_not_digests(tmp_path: Path, bad: bytes | str) -> None:
    store = ObjectStore(tmp_path)
    with pytest.raises(ValidationError):
        store.path_for(bad)


def test_fsverity_naming_uses_libcomposefs_digest(tmp_path: Path) -> None:
    data = os.urandom(5 * 4096 + 17)
    expected = libcomposefs_fsverity(data)
    store = ObjectStore(tmp_path, naming="fsverity")
    payload = store.add(data, hashlib.sha256(data).hexdigest())
    assert payload == payload_for_hex(expected.hex())
    assert store.fsverity_digest(payload) == expected
    assert store.verify(payload)
    store.path_for(payload).write_bytes(b"x")
    assert not store.verify(payload)


def test_fsverity_digest_of_sha256_named_object(tmp_path: Path) -> None:
    data = os.urandom(70000)
    store = ObjectStore(tmp_path, fsverity=True)
    payload = store.add(data)
    assert store.fsverity_digest(payload) == libcomposefs_fsverity(data)
    # A fresh store (nothing cached) computes it from the file.
    assert ObjectStore(tmp_path).fsverity_digest(payload) == libcomposefs_fsverity(data)


@given(st.lists(st.binary(max_size=9000), max_size=6))
def test_store_holds_exactly_what_was_added(contents: list[bytes]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        store = ObjectStore(root, durable=False)  # many examples: skip the fsyncs
        names = {store.add(data, hashlib.sha256(data).hexdigest()) for data in contents}
        assert set(store.payloads()) == names
        for name in names:
            content = store.path_for(name).read_bytes()
            assert sha256_payload(content) == name
        assert store.temporary_files() == []


def test_non_durable_store_still_publishes_only_verified_objects(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, durable=False)
    payload = store.add(b"fast path", hashlib.sha256(b"fast path").hexdigest())
    assert store.verify(payload)
    with pytest.raises(ValidationError):
        store.add(b"forged", hashlib.sha256(b"fast path!").hexdigest())
    assert all_files(tmp_path) == [store.path_for(payload)]


def test_batch_publishes_all_at_the_end(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    with store.batch():
        first = store.add(b"one")
        second = store.add(b"two")
        assert store.add(b"one") == first  # a repeat inside the batch is dropped
        assert not store.has(first) and not store.has(second)
        assert len(store.temporary_files()) == 2
    assert store.has(first) and store.has(second)
    assert store.verify(first) and store.verify(second)
    assert store.temporary_files() == []


def test_failed_batch_publishes_nothing(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    kept = store.add(b"there before")
    with pytest.raises(ValidationError), store.batch():
        store.add(b"verified but doomed")
        store.add(b"there before")
        store.add(b"bad", hashlib.sha256(b"good").hexdigest())
    assert all_files(tmp_path) == [store.path_for(kept)]


def test_enable_verity_gives_the_kernel_digest_we_compute(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    payload = store.add(os.urandom(100_000))
    try:
        measured = store.enable_verity(payload)
    except LibraryError as exc:
        if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP):
            pytest.skip(f"{tmp_path} has no fs-verity support ({exc})")
        raise
    assert measured == store.fsverity_digest(payload)
    assert store.enable_verity(payload) == measured  # enabling twice only measures


def test_enable_verity_store_on_tmpfs_is_refused_before_any_object(tmpfs_dir: Path) -> None:
    root = tmpfs_dir / "objects"
    with pytest.raises(LibraryError) as refused:
        ObjectStore(root, enable_verity=True)
    assert refused.value.errno == errno.ENOTTY
    assert refused.value.strerror == (
        f"cannot enable fs-verity on the object store {root}: "
        "the tmpfs file system does not support fs-verity"
    )
    assert list(root.iterdir()) == []  # the scratch file is gone


def test_enable_verity_store_enables_every_object_or_says_what_is_missing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "objects"
    fs = findmnt_type(tmp_path)
    try:
        store = ObjectStore(root, enable_verity=True)
    except LibraryError as exc:
        assert exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY), exc
        assert str(exc.strerror).startswith(f"cannot enable fs-verity on the object store {root}: ")
        assert f"the {fs} file system" in str(exc.strerror)
        assert list(root.iterdir()) == []
        return
    # The live path (a kernel and file system with fs-verity).
    assert store.computes_fsverity and store.enables_verity
    plain = ObjectStore(root).add(b"there before, without verity" * 100)
    first = store.add(os.urandom(70_000))
    with store.batch():
        second = store.add(os.urandom(5000))
        again = store.add(b"there before, without verity" * 100)
    assert again == plain
    for payload in (first, second, again):
        fd = os.open(store.path_for(payload), os.O_RDONLY)
        try:
            assert measure_fsverity(fd) == fsverity_digest(store.path_for(payload))
        finally:
            os.close(fd)


def test_stale_temporary_files_removed_fresh_ones_kept(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    payload = store.add(b"an object")
    writer = store.writer()
    writer.write(b"an import still running")
    (stale,) = store.temporary_files()
    os.utime(stale, (1, 1))  # as if a process died long ago
    writer2 = store.writer()
    writer2.write(b"another one still running")
    assert store.remove_stale_temporary_files(older_than=3600) == 1
    assert not stale.exists() and len(store.temporary_files()) == 1
    writer2.abort()
    writer.abort()
    assert all_files(tmp_path) == [store.path_for(payload)]
