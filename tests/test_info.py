"""composefs-info's commands as composefs-py's: ls, objects, missing-objects.

Differential: the same images (built by the upstream mkcomposefs from the
test dumpfiles, and by this package from the real layers) listed by
composefs-info 1.0.8 and by ``composefs-py``; the outputs must be equal
byte for byte.  The API (``image_objects``, ``missing_objects``) is checked
against the same oracle.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_objects import CONFINED, CONFINED_HEX, PLANTS, Canary, deadline, plant

from composefs_py.cli import main
from composefs_py.objects import ObjectStore, image_objects, missing_objects

DATA = Path(__file__).parent / "data"
LAYERS = DATA / "layers"

# Names that composefs-info escapes (a space, a tab, '=', bytes outside ASCII,
# a backslash), a hardlink, a symlink, a device, an inline file, a FIFO, empty
# directories, and files whose content is in the store.
ODD = b"\n".join(
    [
        b"/ 4096 40755 3 0 0 0 0.0 - - -",
        b"/a\\x20b 5 100644 2 0 0 0 0.0 ab/" + b"c" * 62 + b" - -",
        b"/d 4096 40755 2 0 0 0 0.0 - - -",
        b"/d/\\x09tab=\\\\x\\xff 3 100644 1 0 0 0 0.0 - abc -",
        b"/d/dev 0 20644 1 0 0 259 0.0 - - -",
        b"/d/fifo 0 10644 1 0 0 0 0.0 - - -",
        b"/d/link 7 120777 1 0 0 0 0.0 t\\x20=\\xe9/x - -",
        b"/e 4096 40755 2 0 0 0 0.0 - - -",
        b"/hard 0 @100644 0 0 0 0 0.0 /a\\x20b - -",
        b"/z 9 100644 1 0 0 0 0.0 01/" + b"2" * 62 + b" - -",
        b"/zz 5 100644 1 0 0 0 0.0 ab/" + b"c" * 62 + b" - -",
        b"",
    ]
)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, mkcomposefs: Path) -> list[Path]:
    """Images of the test dumpfiles (mkcomposefs) and of the real layers (composefs-py)."""
    out = tmp_path_factory.mktemp("images")
    made = []
    odd = out / "odd.dump"
    odd.write_bytes(ODD)
    for dump in [*sorted(DATA.glob("*.dump")), odd]:
        image = out / (dump.stem + ".cfs")
        subprocess.run([str(mkcomposefs), "--from-file", str(dump), str(image)], check=True)
        made.append(image)
    for layer in [*sorted(LAYERS.glob("*.blob")), LAYERS / "small.tar"]:
        image = out / (layer.name + ".cfs")
        assert main(["build", str(layer), "-o", str(image)]) == 0
        made.append(image)
    return made


def cli(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, bytes]:
    capfd.readouterr()
    sys.stdout.flush()
    status = main(list(argv))
    sys.stdout.flush()
    out = capfd.readouterr().out
    return status, os.fsencode(out) if isinstance(out, str) else out


def info(tool: Path, *argv: str) -> bytes:
    return subprocess.run([str(tool), *argv], check=True, capture_output=True).stdout


@pytest.mark.parametrize("command", ["ls", "objects"])
def test_ls_and_objects_print_what_composefs_info_prints(
    images: list[Path],
    composefs_info: Path,
    capfdbinary: pytest.CaptureFixture[bytes],
    command: str,
) -> None:
    for image in images:
        expected = info(composefs_info, command, str(image))
        status, out = cli(capfdbinary, command, str(image))  # type: ignore[arg-type]
        assert status == 0
        assert out == expected, image.name
    # Several images: ls lists each in turn, objects is their union, sorted.
    paths = [str(p) for p in images]
    status, out = cli(capfdbinary, command, *paths)  # type: ignore[arg-type]
    assert out == info(composefs_info, command, *paths)


def test_ls_with_filter_keeps_the_named_top_level_entries(
    images: list[Path], composefs_info: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    image = str(next(p for p in images if p.name == "odd.cfs"))
    for names in (["d"], ["d", "zz"], ["nothing"], ["hard"], ["hard", "zz"]):
        filters = [f"--filter={n}" for n in names]
        expected = info(composefs_info, *filters, "ls", image)
        status, out = cli(capfdbinary, "ls", *filters, image)  # type: ignore[arg-type]
        assert (status, out) == (0, expected), names


def _store_with(root: Path, payloads: list[bytes]) -> None:
    for payload in payloads:
        path = root / payload.decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_missing_objects_prints_what_composefs_info_prints(
    images: list[Path],
    composefs_info: Path,
    capfdbinary: pytest.CaptureFixture[bytes],
    tmp_path: Path,
) -> None:
    paths = [str(p) for p in images]
    needed = image_objects(*images)
    assert needed, "the images hold objects"
    assert needed == info(composefs_info, "objects", *paths).splitlines()
    store = tmp_path / "store"
    store.mkdir()
    _store_with(store, needed[::2])  # every other one is there
    expected = info(composefs_info, f"--basedir={store}", "missing-objects", *paths)
    assert expected.splitlines() == needed[1::2]
    for option in ("--objects", "--digest-store", "--basedir"):
        status, out = cli(capfdbinary, "missing-objects", option, str(store), *paths)  # type: ignore[arg-type]
        assert (status, out) == (0, expected)
    assert missing_objects(*images, objects=store) == needed[1::2]
    # Several stores (mount's basedir=A:B): an object is there if any has it.
    other = tmp_path / "other"
    other.mkdir()
    _store_with(other, needed[1::4])
    assert missing_objects(*images, objects=[store, other]) == needed[3::4]
    status, out = cli(
        capfdbinary,  # type: ignore[arg-type]
        "missing-objects",
        "--objects",
        str(store),
        "--objects",
        str(other),
        *paths,
    )
    assert out.splitlines() == needed[3::4]


def test_the_api_takes_trees_as_well_as_image_paths(images: list[Path]) -> None:
    from composefs_py.writer import read_image

    trees = [read_image(p) for p in images]
    assert image_objects(*trees) == image_objects(*images)
    assert image_objects() == []


@pytest.mark.parametrize("where", PLANTS)
def test_missing_objects_never_follows_what_is_planted_in_the_store(
    tmp_path: Path, where: str, mkcomposefs: Path
) -> None:
    """A link or odd file at an object's name is no object: it is reported
    missing (composefs-info's fstatat would follow the link), and nothing
    outside the store is opened."""
    dump = tmp_path / "one.dump"
    payload = f"{CONFINED_HEX[:2]}/{CONFINED_HEX[2:]}"
    dump.write_text(f"/ 4096 40755 2 0 0 0 0.0 - - -\n/f 3 100644 1 0 0 0 0.0 {payload} - -\n")
    image = tmp_path / "one.cfs"
    subprocess.run([str(mkcomposefs), "--from-file", str(dump), str(image)], check=True)
    store = tmp_path / "store"
    store.mkdir()
    bird = Canary(tmp_path / "canary")
    try:
        plant(store, bird.path, where)
        bird.settle()
        assert missing_objects(image, objects=store) == [payload.encode()]
        bird.assert_untouched()
    finally:
        bird.close()


def test_what_is_planted_in_an_earlier_store_hides_the_object_of_a_later_one(
    tmp_path: Path,
) -> None:
    from composefs_py.model import Inode, TreeBuilder

    payload = f"{CONFINED_HEX[:2]}/{CONFINED_HEX[2:]}".encode()
    builder = TreeBuilder()
    builder.add(b"/", Inode(mode=0o40755, nlink=2))
    builder.add(b"/f", Inode(mode=0o100644, size=3, payload=payload))
    tree = builder.build()
    first, second = tmp_path / "first", tmp_path / "second"
    with ObjectStore(second) as store:
        assert store.add(CONFINED) == payload
    bird = Canary(tmp_path / "canary")
    try:
        first.mkdir()
        plant(first, bird.path, "object link to a file outside")
        bird.settle()
        assert missing_objects(tree, objects=[second, first]) == []
        assert missing_objects(tree, objects=[first, second]) == [payload]
        bird.assert_untouched()
    finally:
        bird.close()


def test_missing_objects_needs_a_store_and_names_a_bad_image(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["missing-objects", str(tmp_path / "x.cfs")])
    assert exit_info.value.code == 2
    bogus = tmp_path / "bogus.cfs"
    bogus.write_bytes(b"\0" * 4096)
    capfd.readouterr()
    assert main(["ls", str(bogus)]) == 1
    assert "bogus.cfs" in capfd.readouterr().err


def test_an_object_store_made_by_the_store_has_nothing_missing(
    tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    layer = LAYERS / "small.tar"
    image = tmp_path / "img.cfs"
    store = tmp_path / "objects"
    assert main(["build", str(layer), str(image), "--digest-store", str(store)]) == 0
    assert image_objects(image)
    assert missing_objects(image, objects=store) == []
    status, out = cli(capfdbinary, "missing-objects", "--objects", str(store), str(image))  # type: ignore[arg-type]
    assert (status, out) == (0, b"")
    victim = ObjectStore(store).path_for(image_objects(image)[0])
    victim.unlink()
    assert missing_objects(image, objects=store) == [image_objects(image)[0]]


@pytest.mark.parametrize("command", ["ls", "objects"])
def test_an_image_that_is_a_fifo_is_refused_without_blocking(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], command: str
) -> None:
    fifo = tmp_path / "image.cfs"
    os.mkfifo(fifo)
    with deadline(5):
        assert main([command, str(fifo)]) == 1
    assert "not a regular file" in capfd.readouterr().err


def _wide_image(tmp_path: Path, files: int) -> Path:
    """An image of ``files`` files under names every byte of which ls escapes
    (bytes over 0x7f), each with its own object, half of them also linked."""
    import stat

    from composefs_py.model import Hardlink, Inode, TreeBuilder
    from composefs_py.writer import write_image

    builder = TreeBuilder(count_hardlinks=True)
    builder.add(b"/", Inode(mode=stat.S_IFDIR | 0o755, nlink=2))
    for i in range(files):
        digest = hashlib.sha256(b"%d" % i).hexdigest()
        name = b"/" + bytes([0x80 + i % 100]) * 40 + b"%d" % i
        payload = f"{digest[:2]}/{digest[2:]}".encode()
        builder.add(name, Inode(mode=stat.S_IFREG | 0o644, size=1, payload=payload))
        if i % 2:
            builder.add(name + b".link", Hardlink(name))
    image = tmp_path / f"wide{files}.cfs"
    write_image(builder.build(), image)
    return image


def test_ls_objects_and_missing_objects_cost_linear(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    cost = {}
    for files in (3000, 6000):
        image = _wide_image(tmp_path, files)
        best = float("inf")
        for _ in range(3):
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                start = time.process_time()
                for command in ("ls", "objects"):
                    assert main([command, str(image)]) == 0
                assert main(["missing-objects", "--objects", str(store), str(image)]) == 0
                best = min(best, time.process_time() - start)
        cost[files] = best
    ratio = cost[6000] / cost[3000]
    assert ratio < 3.0, f"2x the files cost {ratio:.2f}x the CPU ({cost})"
