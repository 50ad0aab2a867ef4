"""ObjectStore.check and ``composefs-py store check``: stale temporary files
left by a killed writer, objects whose content is not what their name says,
and what is planted in the store, found (and with ``repair`` removed or set
aside) through the store's own fds, never following a link; linear cost."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_objects import CONFINED, CONFINED_HEX, Canary, plant

from composefs_py.cli import main
from composefs_py.errors import LibraryError
from composefs_py.objects import ObjectStore, StoreReport

DAY = 24 * 3600


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        found[str(path.relative_to(root))] = (st.st_mode, data)
    return found


class Damaged:
    """A real store: good objects, a truncated one, one with a byte flipped,
    a stale and a fresh temporary file, and a link planted at an object name."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "store"
        self.canary = Canary(tmp_path / "canary")
        with ObjectStore(self.root) as store:
            self.good = [store.add(b"good %d\n" % i * 100) for i in range(5)]
            self.truncated = store.add(b"truncated\n" * 1000)
            self.flipped = store.add(b"flipped\n" * 1000)
        path = self.root / self.truncated.decode()
        path.write_bytes(path.read_bytes()[:-1])
        path = self.root / self.flipped.decode()
        data = bytearray(path.read_bytes())
        data[500] ^= 0x01
        path.write_bytes(bytes(data))
        self.stale = self.root / ".tmp-1234-deadbeef-1"
        self.stale.write_bytes(b"half an object")
        old = time.time() - 2 * DAY
        os.utime(self.stale, (old, old))
        self.fresh = self.root / ".tmp-1234-deadbeef-2"
        self.fresh.write_bytes(b"an object being written")
        # A link to a file outside holding the right content for its name.
        (self.canary.path / "sub" / CONFINED_HEX[2:]).write_bytes(CONFINED)
        plant(self.root, self.canary.path, "object link to a file outside")
        self.link = f"{CONFINED_HEX[:2]}/{CONFINED_HEX[2:]}"
        self.canary.settle()


@pytest.fixture
def damaged(tmp_path: Path) -> Damaged:
    store = Damaged(tmp_path)
    yield store
    store.canary.close()


def _kinds(report: StoreReport) -> dict[str, str]:
    return {problem.name: problem.kind for problem in report.problems}


def test_check_finds_corrupt_objects_stale_temporaries_and_planted_links(
    damaged: Damaged,
) -> None:
    before = _snapshot(damaged.root)
    with ObjectStore(damaged.root) as store:
        report = store.check()
    assert _kinds(report) == {
        damaged.truncated.decode(): "corrupt",
        damaged.flipped.decode(): "corrupt",
        damaged.stale.name: "stale-temporary",
        damaged.link: "not-a-file",
    }
    assert report.objects == 7  # every regular object was hashed
    assert report.in_progress == 1  # the fresh temporary file is kept
    assert all(problem.repaired is None for problem in report.problems)
    assert not report.clean
    assert _snapshot(damaged.root) == before  # a check changes nothing
    damaged.canary.assert_untouched()


def test_repair_removes_stale_temporaries_and_links_and_sets_corrupt_objects_aside(
    damaged: Damaged,
) -> None:
    with ObjectStore(damaged.root) as store:
        report = store.check(repair=True)
        repaired = {problem.name: problem.repaired for problem in report.problems}
        assert repaired[damaged.stale.name] == "removed"
        assert repaired[damaged.link] == "removed"
        for payload in (damaged.truncated, damaged.flipped):
            aside = f".corrupt/{payload[:2].decode()}{payload[3:].decode()}"
            assert repaired[payload.decode()] == f"moved to {aside}"
            assert (damaged.root / aside).is_file()
            assert not store.has(payload)
        assert report.clean  # everything found was repaired
        assert not damaged.stale.exists() and damaged.fresh.exists()
        assert all(store.verify(payload) for payload in damaged.good)
        again = store.check(repair=True)
        assert again.problems == () and again.objects == 5 and again.clean
    damaged.canary.assert_untouched()


def test_a_grace_of_zero_takes_every_temporary_file_as_stale(damaged: Damaged) -> None:
    with ObjectStore(damaged.root) as store:
        report = store.check(grace=0)
    assert _kinds(report)[damaged.fresh.name] == "stale-temporary"
    assert report.in_progress == 0


@pytest.mark.parametrize(
    "where",
    [
        "fan-out link to a folder outside holding the object",
        "object is a FIFO",
        "object is a folder",
    ],
)
def test_what_is_planted_is_reported_never_followed_or_opened(tmp_path: Path, where: str) -> None:
    root = tmp_path / "store"
    ObjectStore(root).close()
    canary = Canary(tmp_path / "canary")
    try:
        plant(root, canary.path, where)
        canary.settle()
        with ObjectStore(root) as store:
            report = store.check()
            assert [(p.name, p.kind) for p in report.problems] == [
                (
                    CONFINED_HEX[:2]
                    if where.startswith("fan-out")
                    else f"{CONFINED_HEX[:2]}/{CONFINED_HEX[2:]}",
                    "not-a-file",
                )
            ]
            repaired = store.check(repair=True).problems[0].repaired
        # A folder is left for its owner to look at; a link or FIFO is removed.
        assert repaired == (None if where == "object is a folder" else "removed")
        canary.assert_untouched()
    finally:
        canary.close()


def test_a_corrupt_folder_planted_as_a_link_is_refused(damaged: Damaged) -> None:
    (damaged.root / ".corrupt").symlink_to(damaged.canary.path)
    damaged.canary.settle()
    with ObjectStore(damaged.root) as store, pytest.raises(LibraryError, match=r"\.corrupt"):
        store.check(repair=True)
    damaged.canary.assert_untouched()


def test_store_check_command(damaged: Damaged, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "check", "--objects", str(damaged.root)]) == 1
    out = capsys.readouterr().out
    assert f"{damaged.flipped.decode()}: corrupt: " in out
    assert f"{damaged.stale.name}: stale-temporary: " in out
    assert f"{damaged.link}: not-a-file: " in out
    assert "7 objects checked" in out and "4 problems" in out
    assert main(["store", "check", "--repair", "--objects", str(damaged.root)]) == 0
    out = capsys.readouterr().out
    assert "(moved to .corrupt/" in out and "(removed)" in out
    assert main(["store", "check", "--objects", str(damaged.root)]) == 0
    assert "0 problems" in capsys.readouterr().out
    damaged.canary.assert_untouched()


def test_store_check_command_help_says_what_repair_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["store", "check", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "moved to .corrupt/" in help_text and "grace" in help_text


def _cpu_of_check(root: Path) -> float:
    best = float("inf")
    for _ in range(3):
        with ObjectStore(root) as store:
            start = time.process_time()
            store.check()
            best = min(best, time.process_time() - start)
    return best


def test_check_costs_linear_in_the_objects(tmp_path: Path) -> None:
    sizes = {}
    for count in (400, 800):
        root = tmp_path / f"store{count}"
        with ObjectStore(root, durable=False) as store:
            for i in range(count):
                store.add(b"object %d\n" % i * 50)
        sizes[count] = _cpu_of_check(root)
    ratio = sizes[800] / sizes[400]
    assert ratio < 3.0, f"2x the objects cost {ratio:.2f}x the CPU ({sizes})"


def test_a_store_named_by_fsverity_digests_is_checked_by_them(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with ObjectStore(root, naming="fsverity") as store:
        good = store.add(b"good\n" * 2000)
        bad = store.add(b"bad\n" * 2000)
    path = root / bad.decode()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x20
    path.write_bytes(bytes(data))
    with ObjectStore(root, naming="fsverity") as store:
        report = store.check()
    assert [(p.name, p.kind) for p in report.problems] == [(bad.decode(), "corrupt")]
    assert "fs-verity" in report.problems[0].reason
    assert report.objects == 2 and good != bad


def test_an_object_larger_than_max_file_size_is_corrupt_and_never_read(tmp_path: Path) -> None:
    from composefs_py.limits import Limits

    root = tmp_path / "store"
    with ObjectStore(root) as store:
        payload = store.add(b"small\n")
    os.truncate(root / payload.decode(), 1 << 40)  # a terabyte, sparse
    start = time.process_time()
    with ObjectStore(root) as store:
        report = store.check(limits=Limits(max_file_size=1 << 30))
    assert time.process_time() - start < 1.0
    assert [(p.name, p.kind) for p in report.problems] == [(payload.decode(), "corrupt")]
    assert "more than max_file_size" in report.problems[0].reason
