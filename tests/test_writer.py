"""Tests of composefs_py.writer: backends, atomic publish, read_image.

Every backend is real: the compiled module, the sandboxed child, the
upstream ``mkcomposefs``.  Failures are real too (a full file-size limit, a
failing tool, a missing directory), and every image written passes
``fsck.erofs`` (:func:`test_upstream_assets.fsck`).
"""

from __future__ import annotations

import ast
import contextlib
import errno
import os
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_upstream_assets import fsck

from composefs_py import writer
from composefs_py.dumpfile import dump
from composefs_py.errors import (
    BackendUnavailableError,
    LibraryError,
    SandboxError,
    ValidationError,
)
from composefs_py.fsverity import fsverity_digest
from composefs_py.limits import Limits
from composefs_py.model import ROOT, Hardlink, Inode, Tree, TreeBuilder
from composefs_py.writer import read_image, resolve_backend, write_image

REPO = Path(__file__).resolve().parent.parent
CONCRETE = ("native", "sandbox", "mkcomposefs")
PAYLOAD = b"ab/" + b"cd" * 31


def make_tree(whiteout: bool = True) -> Tree:
    """A tree with one of each kind of entry (a whiteout bumps v0..1 to v1)."""
    builder = TreeBuilder()
    builder.add(ROOT, Inode(stat.S_IFDIR | 0o755, mtime=1_700_000_000))
    builder.add(b"/etc", Inode(stat.S_IFDIR | 0o755, uid=3, mtime=5, mtime_nsec=7))
    builder.add(
        b"/etc/motd",
        Inode(stat.S_IFREG | 0o644, size=6, content=b"hello\n", mtime=1),
    )
    builder.add(
        b"/etc/big",
        Inode(
            stat.S_IFREG | 0o600,
            size=1 << 30,
            payload=PAYLOAD,
            fsverity_digest=bytes(range(32)),
            xattrs=((b"security.selinux", b"etc_t\0"), (b"user.x", b"\xff")),
        ),
    )
    builder.add(b"/etc/big-link", Hardlink(b"/etc/big"))
    builder.add(b"/bin", Inode(stat.S_IFLNK | 0o777, symlink_target=b"usr/bin"))
    builder.add(b"/null", Inode(stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3)))
    if whiteout:
        builder.add(b"/etc/gone", Inode(stat.S_IFCHR))
    for i in range(300):  # more than one directory block
        builder.add(f"/etc/f{i:03d}".encode(), Inode(stat.S_IFREG | 0o644))
    return builder.build()


@pytest.fixture(scope="module")
def tree() -> Tree:
    return make_tree()


@pytest.fixture(scope="module")
def reference(tree: Tree, tmp_path_factory: pytest.TempPathFactory, fsck_erofs: Path) -> bytes:
    """The image mkcomposefs itself writes for ``dump(tree)`` (the oracle).

    Tests that compare their output with it byte for byte need no fsck.erofs
    of their own: this one is checked.
    """
    out = tmp_path_factory.mktemp("ref") / "ref.cfs"
    tool = writer.find_mkcomposefs()
    assert tool is not None
    subprocess.run(
        [tool, "--from-file", "-", str(out)],
        input=dump(tree).encode("ascii"),
        check=True,
        capture_output=True,
    )
    fsck(fsck_erofs, out)
    return out.read_bytes()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.delenv(writer.BACKEND_ENV, raising=False)
    monkeypatch.delenv(writer.MKCOMPOSEFS_ENV, raising=False)
    yield monkeypatch


# ---------------------------------------------------------------------------
# backends agree
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CONCRETE)
def test_backend_writes_the_mkcomposefs_image_and_returns_its_digest(
    backend: str, tree: Tree, reference: bytes, tmp_path: Path, fsck_erofs: Path
) -> None:
    out = tmp_path / "image.cfs"
    digest = write_image(tree, out, backend=backend)
    fsck(fsck_erofs, out)
    assert out.read_bytes() == reference
    assert digest == fsverity_digest(reference)


@pytest.mark.parametrize("backend", CONCRETE)
@pytest.mark.parametrize("versions", [(0, 0), (1, 1), (0, 1)])
def test_backends_agree_for_every_format_version_range(
    backend: str, versions: tuple[int, int], tmp_path: Path, fsck_erofs: Path
) -> None:
    low, high = versions
    images = {}
    for name in ("native", backend):
        out = tmp_path / f"{name}.cfs"
        write_image(make_tree(), out, backend=name, min_version=low, max_version=high)
        fsck(fsck_erofs, out)
        images[name] = out.read_bytes()
    assert images["native"] == images[backend]
    header_version = int.from_bytes(images["native"][12:16], "little")
    assert header_version == (high if high == 1 else low)  # the whiteout asks for 1


def test_image_is_deterministic(tree: Tree, tmp_path: Path) -> None:
    first = write_image(tree, tmp_path / "a.cfs", backend="native")
    second = write_image(make_tree(), tmp_path / "b.cfs", backend="native")
    assert first == second
    assert (tmp_path / "a.cfs").read_bytes() == (tmp_path / "b.cfs").read_bytes()


# ---------------------------------------------------------------------------
# backend choice
# ---------------------------------------------------------------------------


def test_auto_is_native_when_the_module_imports(clean_env: pytest.MonkeyPatch) -> None:
    assert resolve_backend("auto") == "native"
    assert resolve_backend() == "native"


@pytest.mark.parametrize("backend", CONCRETE)
def test_environment_overrides_auto_only(backend: str, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(writer.BACKEND_ENV, backend)
    assert resolve_backend("auto") == backend
    assert resolve_backend("native") == "native"


def test_environment_auto_means_auto(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(writer.BACKEND_ENV, "auto")
    assert resolve_backend("auto") == "native"


def test_bad_environment_backend_is_a_value_error(
    clean_env: pytest.MonkeyPatch, tree: Tree, tmp_path: Path
) -> None:
    clean_env.setenv(writer.BACKEND_ENV, "fastest")
    with pytest.raises(ValueError, match="COMPOSEFS_PY_BACKEND"):
        write_image(tree, tmp_path / "x.cfs")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", ["", "Native", "cffi", "mkcomposefs "])
def test_unknown_backend_is_a_value_error(backend: str, tree: Tree, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        write_image(tree, tmp_path / "x.cfs", backend=backend)
    assert list(tmp_path.iterdir()) == []


def test_environment_backend_is_used_by_write_image(
    clean_env: pytest.MonkeyPatch, tree: Tree, tmp_path: Path
) -> None:
    # Point the mkcomposefs backend at a tool that does not exist: if auto
    # follows the variable, the write fails as unavailable.
    clean_env.setenv(writer.BACKEND_ENV, "mkcomposefs")
    clean_env.setenv(writer.MKCOMPOSEFS_ENV, str(tmp_path / "no-such-tool"))
    with pytest.raises(BackendUnavailableError):
        write_image(tree, tmp_path / "x.cfs")
    assert write_image(tree, tmp_path / "y.cfs", backend="native")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.cfs"]


def _package_imports(module: str) -> set[str]:
    """The composefs_py modules ``module`` imports, at its top or in a function."""
    source = (REPO / "composefs_py" / f"{module}.py").read_text()
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("composefs_py"):
            found.add((node.module or "").removeprefix("composefs_py").lstrip(".") or "")
    return found


def test_backends_import_neither_the_writer_nor_each_other() -> None:
    # One protocol (composefs_py._backend), one place that picks (writer).
    for module in ("sandbox", "_worker", "_native", "_backend"):
        assert "writer" not in _package_imports(module), module
    assert not {"sandbox", "_native", "_worker"} & _package_imports("_backend")
    assert "importlib" not in (REPO / "composefs_py" / "writer.py").read_text()


def test_each_backend_module_is_loaded_once(tree: Tree, tmp_path: Path) -> None:
    writer._loaded.cache_clear()
    for i in range(3):
        for backend in ("native", "sandbox"):
            write_image(tree, tmp_path / f"{backend}{i}.cfs", backend=backend)
    assert writer._loaded.cache_info().misses == 2


@pytest.mark.parametrize("backend", CONCRETE)
def test_every_backend_takes_the_same_call(backend: str) -> None:
    import inspect

    function = writer._writer_for(backend)
    parameters = inspect.signature(function).parameters
    assert list(parameters)[:2] == ["tree", "fd"]
    for name in ("min_version", "max_version"):
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_format_versions_are_checked_before_a_backend_loads(tree: Tree, tmp_path: Path) -> None:
    writer._loaded.cache_clear()
    with pytest.raises(ValueError, match="format versions"):
        write_image(tree, tmp_path / "x.cfs", backend="sandbox", min_version=2, max_version=2)
    with pytest.raises(TypeError, match="min_version must be an int"):
        write_image(tree, tmp_path / "x.cfs", backend="native", min_version=True)
    assert writer._loaded.cache_info().currsize == 0
    assert list(tmp_path.iterdir()) == []


def test_mkcomposefs_location_order(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundled = REPO / ".deps" / "prefix" / "bin" / "mkcomposefs"
    clean_env.setenv(writer.MKCOMPOSEFS_ENV, "/opt/elsewhere/mkcomposefs")
    assert writer.find_mkcomposefs() == "/opt/elsewhere/mkcomposefs"
    clean_env.delenv(writer.MKCOMPOSEFS_ENV)
    if os.access(bundled, os.X_OK):
        assert writer.find_mkcomposefs() == str(bundled)
    else:
        clean_env.setenv("PATH", str(tmp_path))
        assert writer.find_mkcomposefs() is None


def test_failing_mkcomposefs_is_a_library_error_and_leaves_nothing(
    clean_env: pytest.MonkeyPatch, tree: Tree, tmp_path: Path
) -> None:
    clean_env.setenv(writer.MKCOMPOSEFS_ENV, "/bin/false")
    (tmp_path / "out").mkdir()
    with pytest.raises(LibraryError, match="mkcomposefs failed"):
        write_image(tree, tmp_path / "out" / "x.cfs", backend="mkcomposefs")
    assert list((tmp_path / "out").iterdir()) == []


# The compiled module made unimportable in a fresh interpreter (a build
# without the extension): auto falls back to the sandbox, which then writes
# with mkcomposefs; native and read_image say the backend is unavailable.
_WITHOUT_EXTENSION = textwrap.dedent(
    """
    import sys
    sys.modules["composefs_py._lcfs"] = None  # import raises ImportError
    from composefs_py import writer
    from composefs_py.dumpfile import parse_dumpfile
    from composefs_py.errors import BackendUnavailableError
    tree = parse_dumpfile(open(sys.argv[1], "rb").read())
    print(writer.resolve_backend("auto"))
    print(writer.available_backends())
    print(writer.write_image(tree, sys.argv[2]).hex())
    for call in (
        lambda: writer.write_image(tree, sys.argv[2] + ".n", backend="native"),
        lambda: writer.read_image(sys.argv[2]),
    ):
        try:
            call()
        except BackendUnavailableError as exc:
            print("unavailable:", exc)
    """
)


def test_without_the_extension_auto_uses_the_sandbox(
    tree: Tree, reference: bytes, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "tree.dump"
    source.write_text(dump(tree))
    out = tmp_path / "image.cfs"
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTENSION, str(source), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert lines[0] == "sandbox"
    assert "native" not in lines[1] and "sandbox" in lines[1]
    assert lines[2] == fsverity_digest(reference).hex()
    assert out.read_bytes() == reference
    assert sum(line.startswith("unavailable:") for line in lines) == 2
    assert not (tmp_path / "image.cfs.n").exists()


# ---------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("versions", [(1, 0), (-1, 1), (0, 2), (2, 2)])
def test_bad_format_versions_are_a_value_error(
    versions: tuple[int, int], tree: Tree, tmp_path: Path
) -> None:
    low, high = versions
    with pytest.raises(ValueError, match="min_version"):
        write_image(tree, tmp_path / "x.cfs", min_version=low, max_version=high)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [True, 1.0, "1", None])
def test_format_versions_must_be_ints(value: object, tree: Tree, tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_image(tree, tmp_path / "x.cfs", max_version=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("dest", [True, 1.5, None, [b"x"]])
def test_dest_must_be_a_path_or_fd(dest: object, tree: Tree) -> None:
    with pytest.raises(TypeError):
        write_image(tree, dest)  # type: ignore[arg-type]


def test_tree_must_be_a_tree(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_image(dump(make_tree()), tmp_path / "x.cfs")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# publishing to a path
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CONCRETE)
def test_existing_file_is_replaced_atomically_leaving_no_temporary(
    backend: str, tree: Tree, reference: bytes, tmp_path: Path
) -> None:
    out = tmp_path / "image.cfs"
    out.write_bytes(b"old image")
    with open(out, "rb") as reader:  # a reader of the old file keeps it whole
        old_inode = os.stat(out).st_ino
        write_image(tree, out, backend=backend)
        assert os.stat(out).st_ino != old_inode, "replaced by rename, not rewritten"
        assert reader.read() == b"old image"
    assert out.read_bytes() == reference
    assert [p.name for p in tmp_path.iterdir()] == ["image.cfs"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_image_mode_is_0644_less_umask(umask: int, tree: Tree, tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        write_image(tree, tmp_path / "x.cfs", backend="native")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "x.cfs").st_mode) == 0o644 & ~umask


def test_path_types_are_accepted(
    tree: Tree, reference: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_image(tree, str(tmp_path / "s.cfs"), backend="native")
    write_image(tree, tmp_path / "p.cfs", backend="native")
    monkeypatch.chdir(tmp_path)
    write_image(tree, "relative.cfs", backend="native")
    for name in ("s.cfs", "p.cfs", "relative.cfs"):
        assert (tmp_path / name).read_bytes() == reference


def test_empty_path_is_a_value_error(tree: Tree) -> None:
    with pytest.raises(ValueError, match="empty"):
        write_image(tree, "", backend="native")


def test_missing_directory_fails_and_creates_nothing(tree: Tree, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        write_image(tree, tmp_path / "no" / "x.cfs", backend="native")
    assert info.value.filename == str(tmp_path / "no" / "x.cfs")
    assert list(tmp_path.iterdir()) == []


def test_directory_as_destination_fails_and_leaves_it_alone(tree: Tree, tmp_path: Path) -> None:
    target = tmp_path / "dir"
    target.mkdir()
    (target / "keep").write_bytes(b"k")
    with pytest.raises(IsADirectoryError) as info:
        write_image(tree, target, backend="native")
    assert info.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]
    assert [p.name for p in target.iterdir()] == ["keep"]


# A write that runs out of room half way (the file-size rlimit gives EFBIG
# on the first write past it): the error surfaces, the old image stays and
# no temporary file is left.  Run in a child so the rlimit stays there.
_FILE_SIZE_LIMIT = textwrap.dedent(
    """
    import resource, signal, sys
    from composefs_py.dumpfile import parse_dumpfile
    from composefs_py.writer import write_image
    tree = parse_dumpfile(open(sys.argv[1], "rb").read())
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
    try:
        write_image(tree, sys.argv[2], backend=sys.argv[3])
    except OSError as exc:
        print(type(exc).__name__, exc.errno)
    else:
        print("written")
    """
)


@pytest.mark.parametrize("backend", ["native", "mkcomposefs"])
def test_failure_half_way_leaves_the_old_image_and_no_temporary(
    backend: str, tree: Tree, reference: bytes, tmp_path: Path
) -> None:
    assert len(reference) > 20000
    source = tmp_path / "tree.dump"
    source.write_text(dump(tree))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "image.cfs"
    out.write_bytes(b"previous")
    proc = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT, str(source), str(out), backend],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert proc.stdout.split()[0] in ("LibraryError", "OSError")
    assert proc.stdout.split()[1] == "27"  # EFBIG
    assert out.read_bytes() == b"previous"
    assert [p.name for p in out_dir.iterdir()] == ["image.cfs"]


# ---------------------------------------------------------------------------
# writing to a file descriptor
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CONCRETE)
def test_fd_is_written_from_its_position_and_left_open(
    backend: str, tree: Tree, reference: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "with-prefix"
    with open(path, "wb") as stream:
        stream.write(b"PREFIX")
        stream.flush()
        digest = write_image(tree, stream.fileno(), backend=backend)
        os.fstat(stream.fileno())  # still open
        stream.write(b"SUFFIX")
    data = path.read_bytes()
    assert data == b"PREFIX" + reference + b"SUFFIX"
    assert digest == fsverity_digest(reference)
    assert [p.name for p in tmp_path.iterdir()] == ["with-prefix"]


@pytest.mark.parametrize("backend", CONCRETE)
def test_fd_may_be_a_pipe(backend: str, tree: Tree, reference: bytes) -> None:
    read_end, write_end = os.pipe()
    chunks: list[bytes] = []

    def drain() -> None:
        while chunk := os.read(read_end, 1 << 16):
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        write_image(tree, write_end, backend=backend)
    finally:
        os.close(write_end)
        reader.join()
        os.close(read_end)
    assert b"".join(chunks) == reference


def test_fd_open_read_only_is_an_error(tree: Tree, tmp_path: Path) -> None:
    path = tmp_path / "ro"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            write_image(tree, fd, backend="native")
    finally:
        os.close(fd)
    assert path.read_bytes() == b""


# ---------------------------------------------------------------------------
# destinations other than a regular file: written through, never replaced
# ---------------------------------------------------------------------------


def listing(*folders: Path) -> dict[str, list[str]]:
    return {f.name: sorted(os.listdir(f)) for f in folders}


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on ``where`` for the block (root only, else the test is skipped).

    The session runs in a mount namespace of its own (conftest.py), so
    nothing outside the test run sees it.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir(exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.mark.parametrize("backend", CONCRETE)
def test_symlink_to_a_file_is_kept_and_its_target_replaced_atomically(
    backend: str, tree: Tree, reference: bytes, tmp_path: Path
) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    target = there / "real.cfs"
    target.write_bytes(b"old image")
    link = here / "image.cfs"
    link.symlink_to("../there/real.cfs")
    old_inode = target.stat().st_ino
    with open(target, "rb") as reader:  # a reader of the old target keeps it whole
        digest = write_image(tree, link, backend=backend)
        assert reader.read() == b"old image"
    assert link.is_symlink() and os.readlink(link) == "../there/real.cfs"
    assert target.read_bytes() == reference
    assert target.stat().st_ino != old_inode, "the target is replaced by rename, not rewritten"
    assert digest == fsverity_digest(reference)
    assert listing(here, there) == {"here": ["image.cfs"], "there": ["real.cfs"]}


def test_chain_of_links_through_a_linked_folder_replaces_the_last_target(
    tree: Tree, reference: bytes, tmp_path: Path
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "image.cfs").write_bytes(b"old")
    (tmp_path / "folder-link").symlink_to("real")
    (tmp_path / "second").symlink_to("folder-link/image.cfs")
    first = tmp_path / "first"
    first.symlink_to(tmp_path / "second")
    write_image(tree, first, backend="native")
    assert os.readlink(first) == str(tmp_path / "second")
    assert os.readlink(tmp_path / "second") == "folder-link/image.cfs"
    assert (real / "image.cfs").read_bytes() == reference
    assert listing(tmp_path, real) == {
        tmp_path.name: ["first", "folder-link", "real", "second"],
        "real": ["image.cfs"],
    }


def test_dangling_symlink_creates_its_target_and_keeps_the_link(
    tree: Tree, reference: bytes, tmp_path: Path
) -> None:
    """Like mkcomposefs (and a shell's ``>``), which open through the link."""
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    link = here / "image.cfs"
    link.symlink_to(there / "new.cfs")
    write_image(tree, link, backend="native")
    assert os.readlink(link) == str(there / "new.cfs")
    assert (there / "new.cfs").read_bytes() == reference
    assert listing(here, there) == {"here": ["image.cfs"], "there": ["new.cfs"]}


def test_dangling_symlink_into_a_missing_folder_names_the_link(tree: Tree, tmp_path: Path) -> None:
    link = tmp_path / "image.cfs"
    link.symlink_to(tmp_path / "absent" / "new.cfs")
    with pytest.raises(FileNotFoundError) as info:
        write_image(tree, link, backend="native")
    assert isinstance(info.value, LibraryError)
    assert info.value.filename == str(link)
    assert sorted(os.listdir(tmp_path)) == ["image.cfs"]


def test_symlink_to_a_directory_is_an_error_naming_the_link(tree: Tree, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    link = tmp_path / "image.cfs"
    link.symlink_to("dir")
    with pytest.raises(IsADirectoryError) as info:
        write_image(tree, link, backend="native")
    assert isinstance(info.value, LibraryError)
    assert info.value.filename == str(link)
    assert link.is_symlink()
    assert listing(tmp_path, tmp_path / "dir") == {tmp_path.name: ["dir", "image.cfs"], "dir": []}


def test_symlink_loop_is_an_error_naming_the_link(tree: Tree, tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(LibraryError) as info:
        write_image(tree, tmp_path / "a", backend="native")
    assert info.value.errno == errno.ELOOP
    assert info.value.filename == str(tmp_path / "a")
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


@pytest.fixture
def null_device(tmp_path: Path) -> Path:
    """A node of the null device (1, 3) of the test's own: a writer that
    replaced what it was given would put the system's /dev/null at risk."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD")
    return node


@pytest.mark.parametrize("via", ["node", "link"])
@pytest.mark.parametrize("backend", CONCRETE)
def test_character_device_is_written_through(
    backend: str, via: str, null_device: Path, tree: Tree, reference: bytes, tmp_path: Path
) -> None:
    dest = null_device
    if via == "link":
        dest = tmp_path / "image.cfs"
        dest.symlink_to(null_device)
    before = os.lstat(null_device)
    digest = write_image(tree, dest, backend=backend)
    after = os.lstat(null_device)
    assert stat.S_ISCHR(after.st_mode), f"the device was replaced by {stat.filemode(after.st_mode)}"
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert dest.is_symlink() == (via == "link")
    assert digest == fsverity_digest(reference)
    assert sorted(os.listdir(tmp_path)) == sorted({"null", dest.name})


class FifoReader:
    """Reads a FIFO to its end on a thread.  If the writer never opens the
    FIFO (it replaced it instead), :meth:`close` releases the blocked reader
    through a second name of the same FIFO."""

    def __init__(self, fifo: Path) -> None:
        self.alias = fifo.with_name(fifo.name + ".alias")
        os.link(fifo, self.alias)
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._drain, args=(fifo,), daemon=True)
        self.thread.start()

    def _drain(self, fifo: Path) -> None:
        fd = os.open(fifo, os.O_RDONLY)
        try:
            while chunk := os.read(fd, 1 << 16):
                self.chunks.append(chunk)
        finally:
            os.close(fd)

    def close(self) -> bytes:
        self.thread.join(10)
        if self.thread.is_alive():
            os.close(os.open(self.alias, os.O_WRONLY | os.O_NONBLOCK))
            self.thread.join(10)
        self.alias.unlink()
        return b"".join(self.chunks)


@pytest.mark.parametrize("backend", CONCRETE)
def test_fifo_is_written_through_to_its_reader(
    backend: str, tree: Tree, reference: bytes, tmp_path: Path
) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    try:
        digest = write_image(tree, fifo, backend=backend)
    finally:
        received = reader.close()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced"
    assert received == reference
    assert digest == fsverity_digest(reference)
    assert sorted(os.listdir(tmp_path)) == ["pipe"]


@pytest.mark.parametrize("dest_kind", ["fifo", "fd-link"])
def test_a_failed_build_writes_nothing_through(
    dest_kind: str, tree: Tree, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """The image is whole before the destination is opened: a build that
    fails neither blocks on a FIFO nobody reads nor writes a byte."""
    clean_env.setenv(writer.MKCOMPOSEFS_ENV, "/bin/false")
    dest = tmp_path / "dest"
    if dest_kind == "fifo":
        os.mkfifo(dest)
    else:
        dest.write_bytes(b"")  # written through: a /proc link to an open file
        dest = Path(f"/proc/self/fd/{os.open(dest, os.O_WRONLY | os.O_APPEND)}")
    failure: list[BaseException] = []

    def build() -> None:
        try:
            write_image(tree, dest, backend="mkcomposefs")
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # blocked opening the FIFO: release it, then fail
        os.close(os.open(dest, os.O_RDONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail("the writer opened the FIFO before the image was built")
    assert len(failure) == 1 and isinstance(failure[0], LibraryError), failure
    assert "mkcomposefs failed" in str(failure[0])
    if dest_kind == "fd-link":
        fd = int(dest.name)
        assert os.fstat(fd).st_size == 0
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == ["dest"]


def assert_names(error: LibraryError, dest: Path, code: int) -> None:
    """``error`` is ``code`` and names ``dest``, not a temporary file."""
    assert error.errno == code, error
    assert error.filename == str(dest)
    assert ".tmp" not in str(error)


@pytest.mark.parametrize("via", ["path", "link"])
@pytest.mark.parametrize("backend", CONCRETE)
def test_read_only_folder_is_an_error_naming_the_users_path(
    backend: str, via: str, tree: Tree, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=64k") as folder:
        dest = folder / "image.cfs"
        if via == "link":
            dest = tmp_path / "image.cfs"
            dest.symlink_to(folder / "image.cfs")
        with pytest.raises(LibraryError) as info:
            write_image(tree, dest, backend=backend)
        assert_names(info.value, dest, errno.EROFS)
        assert os.listdir(folder) == []


@pytest.mark.parametrize("backend", CONCRETE)
def test_full_disk_is_an_error_naming_the_path_and_leaves_the_old_image(
    backend: str, tree: Tree, reference: bytes, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "small", "size=64k") as folder:
        dest = folder / "image.cfs"
        # the new image would fit beside the old one but for a page
        previous = b"p" * (64 * 1024 - len(reference) + 4096)
        dest.write_bytes(previous)
        with pytest.raises(LibraryError) as info:
            write_image(tree, dest, backend=backend)
        assert_names(info.value, dest, errno.ENOSPC)
        assert dest.read_bytes() == previous
        assert os.listdir(folder) == ["image.cfs"]


# ---------------------------------------------------------------------------
# read_image
# ---------------------------------------------------------------------------


def test_read_image_accepts_bytes_and_paths(tree: Tree, reference: bytes, tmp_path: Path) -> None:
    path = tmp_path / "image.cfs"
    path.write_bytes(reference)
    trees = [
        read_image(reference),
        read_image(bytearray(reference)),
        read_image(memoryview(reference)),
        read_image(path),
        read_image(str(path)),
    ]
    assert all(t == trees[0] for t in trees)
    assert dump(trees[0]).count("\n") == len(tree)


def test_read_image_in_the_sandbox_gives_the_same_tree(reference: bytes) -> None:
    assert read_image(reference, sandbox=True) == read_image(reference)


def test_read_image_round_trips_a_tree_without_whiteouts(tmp_path: Path) -> None:
    tree = make_tree(whiteout=False)
    out = tmp_path / "image.cfs"
    write_image(tree, out, backend="native")
    assert dump(read_image(out)) == dump(tree)


_NOT_IMAGES = {
    "empty": b"",
    "text": b"/ 0 40755 2 0 0 0 0.0 - - -\n",
    "zeros": bytes(8192),
    "short header": bytes.fromhex("9a6278d0") + bytes(100),
    "composefs magic, no erofs magic": bytes.fromhex("9a6278d0") + bytes(4096),
    "erofs magic only": bytes(1024) + bytes.fromhex("e2e1f5e0") + bytes(3068),
}


@pytest.mark.parametrize("case", sorted(_NOT_IMAGES))
@pytest.mark.parametrize("sandbox", [False, True])
def test_read_image_rejects_non_images_before_parsing(case: str, sandbox: bool) -> None:
    with pytest.raises(ValidationError, match="not a composefs image"):
        read_image(_NOT_IMAGES[case], sandbox=sandbox)


def test_read_image_of_a_non_image_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ValidationError, match=r"notes\.txt"):
        read_image(path)


@pytest.mark.parametrize("cut", [1028, 4096, 8192, 12288])
def test_read_image_rejects_a_truncated_image(reference: bytes, cut: int) -> None:
    assert cut < len(reference)
    with pytest.raises(ValidationError):
        read_image(reference[:cut])


@pytest.mark.parametrize("sandbox", [False, True])
def test_read_image_applies_the_callers_limits(reference: bytes, sandbox: bool) -> None:
    small = Limits(max_entries=10)
    with pytest.raises(ValidationError, match=r"\b10\b"):
        read_image(reference, sandbox=sandbox, limits=small)
    assert len(read_image(reference, sandbox=sandbox)) > 10


def test_read_image_refuses_a_file_larger_than_max_input_bytes_before_reading_it(
    reference: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.cfs"
    path.write_bytes(reference)
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, f: object) -> None:
            self._f = f

        def __enter__(self) -> Spy:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()  # type: ignore[attr-defined]

        def fileno(self) -> int:
            return int(self._f.fileno())  # type: ignore[attr-defined]

        def read(self, n: int = -1) -> bytes:
            reads.append(n)
            return bytes(self._f.read(n))  # type: ignore[attr-defined]

    monkeypatch.setattr(writer, "open", lambda *a, **k: Spy(real_open(*a, **k)), raising=False)
    limit = len(reference) - 1
    with pytest.raises(ValidationError, match="max_input_bytes"):
        read_image(path, limits=Limits(max_input_bytes=limit))
    assert reads == []
    with pytest.raises(ValidationError, match="max_input_bytes"):
        read_image(reference, limits=Limits(max_input_bytes=limit))
    assert read_image(path, limits=Limits(max_input_bytes=len(reference))) == read_image(reference)
    assert reads == [len(reference) + 1]


def test_read_image_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "absent.cfs")


@pytest.mark.parametrize("src", [12, None, 1.0])
def test_read_image_src_type_is_checked(src: object) -> None:
    with pytest.raises(TypeError):
        read_image(src)  # type: ignore[arg-type]


def test_is_image_matches_written_images(reference: bytes) -> None:
    assert writer.is_image(reference)
    assert not writer.is_image(reference[:1027])


def _chain(depth: int) -> Tree:
    builder = TreeBuilder()
    builder.add(ROOT, Inode(stat.S_IFDIR | 0o755))
    path = b""
    for _ in range(depth):
        path += b"/d"
        builder.add(path, Inode(stat.S_IFDIR | 0o755))
    builder.add(path + b"/f", Inode(stat.S_IFREG | 0o644))
    return builder.build()


def test_read_image_reads_back_the_deepest_valid_tree(tmp_path: Path, fsck_erofs: Path) -> None:
    # 2046 levels plus a file fill a 4095-byte path; libcomposefs recurses per
    # level and would overflow a default 8 MiB stack near 950.
    tree = _chain(2046)
    out = tmp_path / "deep.cfs"
    write_image(tree, out, backend="native")
    fsck(fsck_erofs, out)
    assert dump(read_image(out)) == dump(tree)


def _hostile_image(tmp_path: Path) -> bytes:
    """A valid image whose root directory's data block points far outside it."""
    builder = TreeBuilder()
    builder.add(ROOT, Inode(stat.S_IFDIR | 0o755))
    builder.add(b"/a", Inode(stat.S_IFREG | 0o644))
    out = tmp_path / "base.cfs"
    write_image(builder.build(), out, backend="native")
    data = bytearray(out.read_bytes())
    superblock = writer.EROFS_SUPER_OFFSET
    meta_blkaddr = int.from_bytes(data[superblock + 40 : superblock + 44], "little")
    root_nid = int.from_bytes(data[superblock + 14 : superblock + 16], "little")
    inode = meta_blkaddr * 4096 + root_nid * 32
    i_format = int.from_bytes(data[inode : inode + 2], "little")
    data[inode : inode + 2] = (i_format & ~0b1110).to_bytes(2, "little")  # flat plain
    data[inode + 16 : inode + 20] = (0x7FFFFF00).to_bytes(4, "little")  # raw_blkaddr
    return bytes(data)


def test_hostile_image_read_in_the_sandbox_is_an_exception(tmp_path: Path) -> None:
    # In this process libcomposefs would read 8 TiB past the image (SIGSEGV):
    # sandbox=True is how untrusted images are read.
    with pytest.raises((SandboxError, ValidationError)):
        read_image(_hostile_image(tmp_path), sandbox=True)
