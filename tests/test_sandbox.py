"""Tests of the sandboxed writer (composefs_py.sandbox and its child _worker).

Everything runs for real: a child python locks itself down with the real
kernel features, writes with the real libcomposefs (or execs the real
mkcomposefs), and each lockdown step is checked from inside the child.
Faults are injected through the test-only ``_fault`` argument, which only
the caller's code can set (it becomes a ``--fault`` argv flag; the input
never reaches argv).
"""

from __future__ import annotations

import fcntl
import gzip
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_columns import columns_of, tree_from_columns
from test_upstream_assets import OPT_INS

from composefs_py import _lockdown, read_image, sandbox, write_image
from composefs_py._columns import INT_FIELDS
from composefs_py._worker import LIMIT_HEADER, RECORD_PARTS, RECORDS_HEADER, RECORDS_SEALS, padded
from composefs_py.dumpfile import dump_bytes, parse_dumpfile
from composefs_py.errors import SandboxError, ValidationError
from composefs_py.fsverity import fsverity_digest
from composefs_py.model import Hardlink, Inode, Tree, TreeBuilder
from composefs_py.sandbox import (
    Piece,
    SandboxLimits,
    read_image_sandboxed,
    write_image_sandboxed,
)

_native = pytest.importorskip("composefs_py._native")

PAYLOAD = b"ab/" + b"cd" * 31
# Upstream's test dumpfiles that the strict validator accepts, small enough
# to run through both engines (cs9-x86_64-minimal has 22k entries).
UPSTREAM_ASSETS = [
    "bigfile-xattr.dump",
    "bigfile.dump",
    "config-with-hard-link.dump.gz",
    "cs9-x86_64-minimal.dump.gz",
    "honggfuzz-bigfile-with-acl.dump",
    "honggfuzz-chardev-nonzero-size.dump",
    "honggfuzz-long-symlink.dump",
    "special.dump",
    "special_v1.dump",
]


def small_tree() -> Tree:
    builder = TreeBuilder()
    builder.add(b"/", Inode(stat.S_IFDIR | 0o755, mtime=1700000000))
    builder.add(b"/etc", Inode(stat.S_IFDIR | 0o755, uid=1, gid=2, mtime=5, mtime_nsec=7))
    builder.add(
        b"/etc/passwd",
        Inode(
            stat.S_IFREG | 0o644,
            nlink=2,
            size=4096,
            payload=PAYLOAD,
            xattrs=((b"user.a", b"1"), (b"user.b", b"\0\xff")),
        ),
    )
    builder.add(b"/etc/link", Hardlink(b"/etc/passwd"))
    builder.add(b"/hostname", Inode(stat.S_IFREG | 0o644, size=4, content=b"host"))
    builder.add(b"/bin", Inode(stat.S_IFLNK | 0o777, symlink_target=b"usr/bin"))
    builder.add(b"/null", Inode(stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3)))
    return builder.build()


def synthetic_tree(entries: int) -> Tree:
    """A tree of ``entries`` entries: directories of 100 files each."""
    builder = TreeBuilder()
    builder.add(b"/", Inode(stat.S_IFDIR | 0o755))
    made = 1
    d = 0
    while made < entries:
        directory = b"/d%05d" % d
        builder.add(directory, Inode(stat.S_IFDIR | 0o755, mtime=d))
        made += 1
        for f in range(min(100, entries - made)):
            builder.add(
                directory + b"/f%03d" % f,
                Inode(stat.S_IFREG | 0o644, size=f + 1, mtime=f, payload=b"%02x/%062x" % (f, d)),
            )
            made += 1
        d += 1
    return builder.build()


def native_image(tree: Tree, tmp_path: Path, **versions: int) -> tuple[bytes, bytes]:
    path = tmp_path / "native.img"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        digest = _native.write_tree(tree, fd, **versions)
    finally:
        os.close(fd)
    return path.read_bytes(), digest


@pytest.fixture
def out(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    path = tmp_path / "sandbox.img"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        yield fd, path
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def mkcomposefs_tool() -> str:
    from composefs_py.writer import find_mkcomposefs

    tool = find_mkcomposefs()
    if tool is None:
        pytest.skip("mkcomposefs not found: run scripts/bootstrap.sh (make deps)")
    return tool


def assert_child_gone() -> None:
    pid = sandbox._last_child_pid
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not Path(f"/proc/{pid}").exists()


# ---------------------------------------------------------------------------
# the lockdown, checked from inside the child
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    limits = SandboxLimits(
        address_space=3 << 30, cpu_seconds=77, file_size=123 << 20, open_files=40
    )
    return sandbox._probe(limits)


def test_child_sets_the_rlimits_asked_for(probe: dict[str, Any]) -> None:
    rlimits = probe["probe"]["rlimits"]
    assert rlimits["AS"] == [3 << 30, 3 << 30]
    assert rlimits["CPU"] == [77, 78]
    assert rlimits["FSIZE"] == [123 << 20, 123 << 20]
    assert rlimits["NOFILE"] == [40, 40]
    assert rlimits["CORE"] == [0, 0]


def test_child_has_no_new_privs_and_no_capabilities(probe: dict[str, Any]) -> None:
    status = probe["probe"]["status_after_capabilities"]
    assert status["NoNewPrivs"] == "1"
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[key], 16) == 0, key


def _kernel_allows_user_namespaces() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return os.path.exists("/proc/self/ns/user")
    done = subprocess.run([unshare, "--user", "--net", "--ipc", "--mount", "true"], check=False)
    return done.returncode == 0


def test_child_is_in_new_namespaces_where_the_kernel_allows(probe: dict[str, Any]) -> None:
    report = probe["lockdown"]
    before = probe["probe"]["parent_namespaces"]
    after = probe["probe"]["namespaces"]
    mine = {name: os.readlink(f"/proc/self/ns/{name}") for name in ("user", "net", "ipc", "mnt")}
    assert before == mine  # the child started in ours
    if not _kernel_allows_user_namespaces():
        pytest.skip("this kernel does not allow new user namespaces")
    for name in ("user", "net", "ipc", "mnt"):
        assert report[f"{name}_namespace"] == "new"
        assert after[name] != mine[name], name


def test_child_sees_an_empty_read_only_root(probe: dict[str, Any]) -> None:
    if probe["lockdown"]["mnt_namespace"] != "new":
        pytest.skip("no mount namespace of its own: the root is left as it is")
    assert probe["lockdown"]["empty_root"] == "active"
    assert probe["probe"]["root_entries"] == []
    # stat() is not governed by Landlock: it finds nothing in the empty root.
    assert probe["probe"]["stat_etc"] == "denied: No such file or directory"


def test_landlock_denies_every_file_open(probe: dict[str, Any]) -> None:
    abi = _lockdown.landlock_abi()
    if isinstance(abi, str):
        pytest.skip(f"Landlock {abi}")
    assert probe["lockdown"]["landlock"] == f"abi {abi}"
    # Through a directory fd opened before lockdown, /etc/passwd is readable
    # until Landlock is applied, and not after.
    assert probe["probe"]["before_landlock_open_passwd_in_etc_fd"] == "opened"
    assert probe["probe"]["landlock_open_passwd_in_etc_fd"] == "denied: Permission denied"
    assert probe["probe"]["landlock_open_etc_passwd"].startswith("denied")


def test_seccomp_filter_is_installed(probe: dict[str, Any]) -> None:
    if _lockdown.seccomp_machine() is None:
        pytest.skip("no seccomp syscall table for this architecture")
    assert probe["lockdown"]["seccomp"] == "active"
    assert probe["probe"]["status_after_seccomp"]["Seccomp"] == "2"
    assert probe["probe"]["seccomp_open_etc_passwd"].startswith("denied")


def test_sandbox_info_reports_each_protection(probe: dict[str, Any]) -> None:
    info = sandbox.sandbox_info()
    for key in (
        "rlimits",
        "no_new_privs",
        "capabilities_dropped",
        "user_namespace",
        "net_namespace",
        "ipc_namespace",
        "mnt_namespace",
        "empty_root",
        "landlock",
        "seccomp",
    ):
        assert isinstance(info[key], bool), key
    assert info["rlimits"] and info["no_new_privs"] and info["capabilities_dropped"]
    assert info["native_engine"] == "yes"
    assert info["landlock"] == (not isinstance(_lockdown.landlock_abi(), str))
    assert info["seccomp"] == (_lockdown.seccomp_machine() is not None)
    assert info["user_namespace"] == (probe["lockdown"]["user_namespace"] == "new")
    assert_child_gone()


def test_seccomp_filter_checks_the_architecture_first() -> None:
    program = _lockdown.build_seccomp_filter(_lockdown.SeccompPolicy(), "x86_64", 1)
    first = [program[i : i + 8] for i in range(0, 24, 8)]
    # ld [arch]; jeq AUDIT_ARCH_X86_64; ret KILL_PROCESS
    assert first[0][:2] == b"\x20\x00" and first[0][4:] == (4).to_bytes(4, "little")
    assert first[1][4:] == _lockdown.AUDIT_ARCH_X86_64.to_bytes(4, "little")
    assert first[2][4:] == _lockdown.SECCOMP_RET_KILL_PROCESS.to_bytes(4, "little")
    arm = _lockdown.build_seccomp_filter(_lockdown.SeccompPolicy(), "aarch64", 1)
    assert arm[12:16] == _lockdown.AUDIT_ARCH_AARCH64.to_bytes(4, "little")
    # The last instruction is the default action: kill.
    assert program[-4:] == _lockdown.SECCOMP_RET_KILL_PROCESS.to_bytes(4, "little")


# ---------------------------------------------------------------------------
# same bytes as the native backend
# ---------------------------------------------------------------------------


def _asset_tree(composefs_src: Path, name: str) -> Tree:
    raw = (composefs_src / "tests" / "assets" / name).read_bytes()
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    return parse_dumpfile(raw, limits=OPT_INS.get(name))  # see test_upstream_assets


@pytest.mark.parametrize("engine", ["native", "mkcomposefs"])
@pytest.mark.parametrize("name", UPSTREAM_ASSETS)
def test_sandbox_image_is_byte_identical_to_native_on_upstream_assets(
    composefs_src: Path,
    name: str,
    engine: str,
    tmp_path: Path,
    out: tuple[int, Path],
    mkcomposefs_tool: str,
) -> None:
    tree = _asset_tree(composefs_src, name)
    expected, expected_digest = native_image(tree, tmp_path)
    fd, path = out
    digest = write_image_sandboxed(tree, fd, _engine=engine, _mkcomposefs=mkcomposefs_tool)
    assert path.read_bytes() == expected
    assert digest == expected_digest == fsverity_digest(expected)


@pytest.mark.parametrize("engine", ["native", "mkcomposefs"])
@pytest.mark.parametrize("versions", [(0, 0), (0, 1), (1, 1)])
def test_sandbox_honours_format_versions(
    engine: str,
    versions: tuple[int, int],
    tmp_path: Path,
    out: tuple[int, Path],
    mkcomposefs_tool: str,
) -> None:
    tree = small_tree()
    low, high = versions
    expected, expected_digest = native_image(tree, tmp_path, min_version=low, max_version=high)
    fd, path = out
    digest = write_image_sandboxed(
        tree, fd, min_version=low, max_version=high, _engine=engine, _mkcomposefs=mkcomposefs_tool
    )
    assert path.read_bytes() == expected
    assert digest == expected_digest


def test_sandbox_writes_from_the_current_offset(tmp_path: Path, out: tuple[int, Path]) -> None:
    tree = small_tree()
    expected, _ = native_image(tree, tmp_path)
    fd, path = out
    os.write(fd, b"prefix")
    write_image_sandboxed(tree, fd)
    assert path.read_bytes() == b"prefix" + expected
    assert os.lseek(fd, 0, os.SEEK_CUR) == 6 + len(expected)


def test_sandbox_writes_to_a_pipe_only_after_the_checks(tmp_path: Path) -> None:
    tree = small_tree()
    expected, expected_digest = native_image(tree, tmp_path)
    read_end, write_end = os.pipe()
    try:
        with open(read_end, "rb", closefd=False) as reader:
            import threading

            got: list[bytes] = []
            thread = threading.Thread(target=lambda: got.append(reader.read()))
            thread.start()
            try:
                digest = write_image_sandboxed(tree, write_end)
            finally:
                os.close(write_end)
                thread.join()
    finally:
        os.close(read_end)
    assert got == [expected]
    assert digest == expected_digest


def test_writer_sandbox_backend_publishes_the_same_image(tmp_path: Path) -> None:
    from composefs_py.writer import write_image

    tree = small_tree()
    expected, expected_digest = native_image(tree, tmp_path)
    dest = tmp_path / "out" / "image.cfs"
    dest.parent.mkdir()
    assert write_image(tree, dest, backend="sandbox") == expected_digest
    assert dest.read_bytes() == expected
    assert sorted(p.name for p in dest.parent.iterdir()) == ["image.cfs"]


def table_tree(tree: Tree) -> Tree:
    """``tree`` built in bulk: the same Tree, kept as columns (``Tree._table``)."""
    built = tree_from_columns(columns_of(tree))
    assert built is not None and built._table.nodes is None and built == tree
    return built


def test_links_and_xattrs_anywhere_make_the_same_image(
    tmp_path: Path, out: tuple[int, Path]
) -> None:
    # 20,000 entries, hardlinks and xattrs here and there: one set of
    # records, the native backend's own buffers.
    builder = TreeBuilder()
    builder.add(b"/", Inode(stat.S_IFDIR | 0o755))
    builder.add(b"/d", Inode(stat.S_IFDIR | 0o755))
    builder.add(b"/d/f00000", Inode(stat.S_IFREG | 0o644, nlink=7, size=1, payload=PAYLOAD))
    for i in range(1, 20_000):
        node = Hardlink(b"/d/f00000") if i % 4999 == 0 or i in (253, 254) else Inode(
            stat.S_IFREG | 0o600, size=i, mtime=i, payload=b"%02x/%062x" % (i % 256, i),
            xattrs=((b"user.n", b"%d" % i),) if i % 7 == 0 else (),
        )  # fmt: skip
        builder.add(b"/d/f%05d" % i, node)
    tree = builder.build()
    expected, expected_digest = native_image(tree, tmp_path)
    fd, path = out
    assert write_image_sandboxed(tree, fd) == expected_digest
    assert path.read_bytes() == expected


def test_a_tree_built_in_bulk_makes_the_same_image(tmp_path: Path) -> None:
    tree = small_tree()
    bulk = table_tree(tree)
    expected, expected_digest = native_image(tree, tmp_path)
    for which, source in (("nodes", tree), ("table", bulk)):
        path = tmp_path / f"{which}.img"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            assert write_image_sandboxed(source, fd) == expected_digest, which
        finally:
            os.close(fd)
        assert path.read_bytes() == expected, which


def records_file(pieces: Sequence[bytes], *, seals: int = RECORDS_SEALS) -> int:
    """A memfd holding ``pieces`` as the child maps them: the first as is
    (the header), each other one padded with zeros to 8 bytes; then sealed
    with ``seals``."""
    fd = sandbox._records_memfd()
    for at, piece in enumerate(pieces):
        os.write(fd, piece if at == 0 else piece.ljust(padded(len(piece)), b"\0"))
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def spawn_writer(
    records: Sequence[bytes] | int,
    out: tuple[int, Path],
    stdin: Iterable[bytes] = (),
    *,
    limits: SandboxLimits | None = None,
    input_bytes: int | None = 1 << 20,
    extra: Sequence[str] = (),
) -> sandbox._Outcome:
    """Run the writing child on the records file ``records`` (pieces for
    :func:`records_file`, or an fd it takes over) and ``stdin``; with
    ``input_bytes`` its limit is in its argv, else stdin must start with it."""
    fd, _ = out
    child_fd = os.dup(fd)
    records_fd = records if isinstance(records, int) else records_file(records)
    try:
        argv = sandbox._worker_argv(
            "write", limits or SandboxLimits(), input_bytes,
            ["--engine=native", f"--fd={child_fd}", f"--records-fd={records_fd}", *extra],
        )  # fmt: skip
        return sandbox._run_child(
            argv, stdin, 60, max_stdout=1 << 16, pass_fds=(child_fd, records_fd)
        )
    finally:
        os.close(records_fd)
        os.close(child_fd)


def run_writer(pieces: Sequence[bytes], out: tuple[int, Path]) -> dict[str, Any]:
    """Run the writing child on ``pieces`` (the size bound in its argv); its report."""
    record, _ = sandbox._first_line(spawn_writer(pieces, out).stdout)
    return record


def parent_records(tree: Tree) -> list[bytes]:
    """What the parent makes for ``tree``: the records' header, then their buffers."""
    buffers = [bytes(buffer) for buffer in sandbox._records(tree)]
    return [RECORDS_HEADER.pack(len(tree), *map(len, buffers)), *buffers]


@pytest.mark.parametrize("bulk", [False, True], ids=["nodes", "table"])
def test_the_child_writes_the_parents_records_as_the_native_backend(
    bulk: bool, tmp_path: Path, out: tuple[int, Path]
) -> None:
    tree = small_tree()
    record = run_writer(parent_records(table_tree(tree) if bulk else tree), out)
    assert set(record["times"]) == {"main", "lockdown", "records", "write"}
    expected, expected_digest = native_image(tree, tmp_path)
    assert record["digest"] == expected_digest.hex()
    assert out[1].read_bytes() == expected


def test_the_records_are_the_native_backends_buffers() -> None:
    from array import array

    tree = small_tree()
    header, *buffers = parent_records(tree)
    count, *sizes = RECORDS_HEADER.unpack(header)
    assert count == len(tree) and sizes == list(map(len, buffers))
    parts = dict(zip(RECORD_PARTS, buffers, strict=True))
    columns = _native._Columns(tree)
    for name in ("paths", "data", "extra"):
        assert parts[name] == bytes(getattr(columns, name)), name
    for name in ("path_lens", "ints", "data_lens", "links", "xattr_lens"):
        assert parts[name] == getattr(columns, name).tobytes(), name
    assert parts["extra_lens"] == columns.extra_lens.tobytes()
    assert parts["paths"] == b"".join(tree.paths)
    assert array("q", parts["path_lens"]).tolist() == list(map(len, tree.paths))
    nodes = [tree[path] for path in tree.paths]
    rows = [tree[n.target] if isinstance(n, Hardlink) else n for n in nodes]
    assert array("q", parts["ints"]).tolist()[:: len(INT_FIELDS)] == [r.mode for r in rows]
    assert array("q", parts["links"]).tolist() == [
        value
        for i, node in enumerate(nodes)
        if isinstance(node, Hardlink)
        for value in (i, tree.paths.index(node.target))
    ]


def _stdin_bytes(tree: Tree, out: tuple[int, Path], monkeypatch: pytest.MonkeyPatch) -> int:
    """How many bytes the writing child gets on its stdin for ``tree``."""
    sent: list[int] = []
    run_child = sandbox._run_child

    def counting(argv: list[str], data: Iterable[Piece], *args: Any, **kwargs: Any) -> Any:
        def pieces() -> Iterator[Piece]:
            for piece in data:
                sent.append(len(piece))
                yield piece

        return run_child(argv, pieces(), *args, **kwargs)

    monkeypatch.setattr(sandbox, "_run_child", counting)
    fd, _ = out
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    write_image_sandboxed(tree, fd)
    return sum(sent)


def test_the_records_reach_the_child_by_a_sealed_memfd_not_its_stdin(
    out: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The records were copied through the child's stdin pipe (twice the
    # entries, twice the bytes through it); they are mapped from a sealed
    # memfd now, and stdin carries the address-space limit only.
    small = _stdin_bytes(synthetic_tree(10_000), out, monkeypatch)
    large = _stdin_bytes(synthetic_tree(20_000), out, monkeypatch)
    assert small == large == LIMIT_HEADER.size


def _followers(monkeypatch: pytest.MonkeyPatch) -> list[sandbox._Follower]:
    """The parent's followers of the child's output, as they are made."""
    made: list[sandbox._Follower] = []
    follower = sandbox._Follower

    def recording(fd: int, start: int) -> sandbox._Follower:
        made.append(follower(fd, start))
        return made[-1]

    monkeypatch.setattr(sandbox, "_Follower", recording)
    return made


def test_the_parent_hashes_the_output_while_the_child_writes_it(
    tmp_path: Path, out: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under the native policy the child can only append: what lies before
    # the shared offset is final, and the parent hashes it while the child
    # still runs (at its first output byte the child's status shows its
    # seccomp filter); the digest is that of the whole image all the same.
    tree = synthetic_tree(40_000)
    fd, path = out
    hashed_before_exit: list[int] = []
    digest = sandbox._Follower.digest

    def final(self: sandbox._Follower, end: int) -> bytes:
        hashed_before_exit.append(self.hashed)
        return digest(self, end)

    monkeypatch.setattr(sandbox._Follower, "digest", final)
    made = _followers(monkeypatch)
    assert write_image_sandboxed(tree, fd) == native_image(tree, tmp_path)[1]
    assert [f.trusted for f in made] == [True]
    assert hashed_before_exit[0] >= sandbox._FOLLOW_STEP
    assert path.read_bytes() == native_image(tree, tmp_path)[0]


def test_without_a_seccomp_filter_the_output_is_hashed_after_the_exit(
    tmp_path: Path, out: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kernel without seccomp: the child could rewrite what it wrote, so
    # nothing of it is hashed before the child is gone; nor under the
    # mkcomposefs engine, whose policy lets the tool seek.
    monkeypatch.setattr(sandbox, "_seccomp_filtered", lambda pid: False)
    made = _followers(monkeypatch)
    tree = synthetic_tree(20_000)
    fd, _ = out
    assert write_image_sandboxed(tree, fd) == native_image(tree, tmp_path)[1]
    assert [f.trusted for f in made] == [False]
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    from composefs_py.writer import find_mkcomposefs

    if find_mkcomposefs() is not None:
        write_image_sandboxed(tree, fd, _engine="mkcomposefs")
        assert made[-1].trusted is None


def test_the_native_policy_lets_the_child_only_append_to_its_output() -> None:
    # What the follower relies on: no syscall that writes elsewhere than at
    # the shared offset, moves it back, shortens the file or maps it.
    for name in ("lseek", "pwrite64", "pwritev", "pwritev2", "ftruncate", "fallocate",
                 "copy_file_range", "sendfile", "splice", "io_uring_setup", "remap_file_pages",
                 "mmap", "dup2", "dup3", "openat", "open"):  # fmt: skip
        assert name not in _lockdown._BASE_ALLOW, name


def test_the_child_imports_nothing_it_does_not_use() -> None:
    # Every child pays for each import before it can take its records; the
    # parent-side helpers' modules (process spawning, file-tree copying,
    # path objects) stay out of it.
    probe = sandbox._BOOTSTRAP.replace(
        "from composefs_py._worker import main; main(sys.argv[1:])",
        "import composefs_py._worker; print(' '.join(sorted(sys.modules)))",
    )
    argv = [sys.executable, "-I", "-S", "-c", probe, sandbox._import_path(), sandbox._PACKAGE_DIR]
    loaded = subprocess.run(argv, capture_output=True, check=True, env={}, cwd="/").stdout.split()
    for name in (b"subprocess", b"shutil", b"pathlib", b"composefs_py.dumpfile"):
        assert name not in loaded, name


def test_address_space_bound_covers_the_records() -> None:
    builder = TreeBuilder()
    builder.add(b"/", Inode(stat.S_IFDIR | 0o755))
    target = b"/" + b"t" * 255
    builder.add(target, Inode(stat.S_IFREG | 0o644))
    for i in range(200):
        builder.add(b"/%d" % i, Hardlink(target))
    for tree in (small_tree(), synthetic_tree(3000), builder.build()):
        records_fd = sandbox._records_memfd()
        try:
            (limit_piece,) = sandbox._child_input(tree, SandboxLimits(), "native", records_fd)
            made = os.fstat(records_fd).st_size
            assert fcntl.fcntl(records_fd, fcntl.F_GET_SEALS) & RECORDS_SEALS == RECORDS_SEALS
        finally:
            os.close(records_fd)
        (limit,) = LIMIT_HEADER.unpack(limit_piece)
        assert SandboxLimits().address_space_for(made) <= limit
        assert limit <= SandboxLimits().address_space_for(made + 160 * len(tree))


_ROOT = Inode(stat.S_IFDIR | 0o755)
_FILE = Inode(stat.S_IFREG | 0o644, size=3, payload=PAYLOAD)
_LINK_ROW = Inode(stat.S_IFREG | 0o644)


def _lens(values: list[int]) -> bytes:
    from array import array

    return array("q", values).tobytes()


def _records(
    paths: list[bytes],
    rows: list[Inode],
    links: list[int] = (),  # type: ignore[assignment]
    /,
    count: int | None = None,
    extras: list[tuple[int, int, int]] | None = None,
    **replace: bytes,
) -> list[bytes]:
    """A records header and buffers of these entries, any buffer replaced by
    ``replace`` (the header announces what is sent unless ``count`` says)."""
    data = [row.payload if row.payload is not None else row.symlink_target for row in rows]
    parts: dict[str, bytes] = {
        "paths": b"".join(paths),
        "path_lens": _lens(list(map(len, paths))),
        "ints": _lens([getattr(row, name) for row in rows for name in INT_FIELDS]),
        "data": b"".join(piece for piece in data if piece is not None),
        "data_lens": _lens([-1 if piece is None else len(piece) for piece in data]),
        "links": _lens(list(links)),
        "extra": b"",
        "extra_lens": _lens([v for e in (extras or [(-1, 0, 0)] * len(rows)) for v in e]),
        "xattr_lens": b"",
    }
    parts.update(replace)
    buffers = [parts[name] for name in RECORD_PARTS]
    header = RECORDS_HEADER.pack(len(rows) if count is None else count, *map(len, buffers))
    return [header, *buffers]


def _announcing(pieces: list[bytes], part: str, size: int) -> list[bytes]:
    """``pieces`` whose header announces ``size`` bytes of ``part``."""
    count, *sizes = RECORDS_HEADER.unpack(pieces[0])
    sizes[RECORD_PARTS.index(part)] = size
    return [RECORDS_HEADER.pack(count, *sizes), *pieces[1:]]


_TWO = ([b"/", b"/a"], [_ROOT, _FILE])
_WITH_LINK = ([b"/", b"/a", b"/b"], [_ROOT, _FILE, _LINK_ROW])
_EXTRA_NONE = [(-1, 0, 0), (-1, 0, 0)]

# Records the parent never sends.  The child checks their framing (sizes,
# lengths, indices) and refuses what is malformed before C sees a byte;
# what is well framed goes to libcomposefs, which refuses what its own tree
# cannot hold.  Each is a clean refusal: a ValidationError, nothing written.
HOSTILE_RECORDS: list[tuple[str, list[bytes], str]] = [
    ("no-root", _records([], []), "the records hold no root"),
    ("count-says-more", _records(*_TWO, count=3), "8 ints, 2 lengths and 3 extra lengths"),
    ("short-ints", _records(*_TWO, ints=bytes(8 * 15)), "8 ints, 2 lengths and 3 extra lengths"),
    ("data-lens-short", _records(*_TWO, data_lens=bytes(8)), "8 ints, 2 lengths"),
    ("extra-lens-short", _records(*_TWO, extra_lens=bytes(8 * 5)), "3 extra lengths"),
    ("links-not-pairs", _records(*_TWO, links=bytes(8)), "pairs of links"),
    ("xattr-lens-not-pairs", _records(*_TWO, xattr_lens=bytes(8)), "pairs of links"),
    ("announces-too-much", _announcing(_records(*_TWO), "paths", 1 << 40), "more than"),
    ("header-cut", [_records(*_TWO)[0][:20]], "the records end early"),
    ("no-header", [b""], "the records end early"),
    ("buffer-cut", _records(*_TWO)[:4], "the records end early"),
    ("trailing-bytes", [*_records(*_TWO), b"x"], "bytes follow the records"),
    ("header-says-less", _announcing(_records(*_TWO), "paths", 0), "bytes follow the records"),
    ("header-says-more", _announcing(_records(*_TWO), "data", 4096), "the records end early"),
    ("path-lens-short", _records(*_TWO, paths=b"/a"), "path lengths must add up"),
    ("path-len-negative", _records(*_TWO, path_lens=_lens([4, -1]), paths=b"///"),
     "path lengths must add up"),
    ("data-lens-long", _records(*_TWO, data=PAYLOAD + b"x"), "data lengths must add up"),
    ("data-len-below-none", _records(*_TWO, data_lens=_lens([-2, 2 + len(PAYLOAD)])),
     "data lengths must add up"),
    ("content-past-extra", _records(*_TWO, extras=[(-1, 0, 0), (5, 0, 0)], extra=b"abcd"),
     "extra lengths must add up"),
    ("content-below-none", _records(*_TWO, extras=[(-1, 0, 0), (-2, 0, 0)]),
     "extra lengths must add up"),
    ("digest-flag-two", _records(*_TWO, extras=[(-1, 0, 0), (-1, 2, 0)], extra=bytes(64)),
     "extra lengths must add up"),
    ("digest-cut", _records(*_TWO, extras=[(-1, 0, 0), (-1, 1, 0)], extra=bytes(31)),
     "extra lengths must add up"),
    ("xattrs-without-lengths", _records(*_TWO, extras=[(-1, 0, 0), (-1, 0, 1)], extra=b"ab"),
     "extra lengths must add up"),
    ("xattr-count-negative", _records(*_TWO, extras=[(-1, 0, 0), (-1, 0, -1)],
                                      xattr_lens=_lens([1, 1]), extra=b"ab"),
     "extra lengths must add up"),
    ("xattr-len-negative", _records(*_TWO, extras=[(-1, 0, 0), (-1, 0, 1)],
                                    xattr_lens=_lens([-1, 3]), extra=b"ab"),
     "extra lengths must add up"),
    ("link-outside", _records(*_WITH_LINK, [7, 1]), "outside the records or out of order"),
    ("link-negative", _records(*_WITH_LINK, [-1, 1]), "outside the records or out of order"),
    ("links-out-of-order", _records([b"/", b"/a", b"/b", b"/c"], [_ROOT, _FILE, _LINK_ROW,
                                    _LINK_ROW], [3, 1, 2, 1]), "out of order"),
    ("link-twice", _records(*_WITH_LINK, [2, 1, 2, 1]), "out of order"),
    ("link-target-outside", _records(*_WITH_LINK, [2, 3]), "another entry that is not a hardlink"),
    ("link-to-itself", _records(*_WITH_LINK, [2, 2]), "another entry that is not a hardlink"),
    ("link-cycle", _records([b"/", b"/a", b"/b"], [_ROOT, _LINK_ROW, _LINK_ROW], [1, 2, 2, 1]),
     "another entry that is not a hardlink"),
    # well framed; libcomposefs's own tree refuses them
    ("first-not-root", _records([b"/a"], [_ROOT]), "the first node is not the root"),
    ("no-parent", _records([b"/", b"/a/b"], [_ROOT, _FILE]), "node before its parent"),
    ("parent-a-file", _records([b"/", b"/a", b"/a/b"], [_ROOT, _FILE, _FILE]),
     "node before its parent"),
    ("duplicate", _records([b"/", b"/a", b"/a"], [_ROOT, _FILE, _FILE]), "File exists"),
    ("empty-path", _records([b"/", b""], [_ROOT, _FILE]), "bad record"),
    ("relative-path", _records([b"/", b"a"], [_ROOT, _FILE]), "bad record"),
    ("empty-name", _records([b"/", b"/a/"], [_ROOT, Inode(stat.S_IFDIR | 0o755)]),
     "Invalid argument"),
    ("long-name", _records([b"/", b"/" + b"n" * 256], [_ROOT, _FILE]), "File name too long"),
    ("bad-mode", _records([b"/", b"/a"], [_ROOT, _LINK_ROW],
                          ints=_lens([*(getattr(_ROOT, n) for n in INT_FIELDS), 0o170644,
                                      *[0] * 7])), "lcfs_node_try_set_mode"),
    ("symlink-without-target", _records(
        [b"/", b"/a"], [_ROOT, _LINK_ROW],
        ints=_lens([*(getattr(_ROOT, n) for n in INT_FIELDS), stat.S_IFLNK | 0o777, *[0] * 7])),
     "symlink without target"),
    ("content-too-long", _records(*_TWO, extras=[(-1, 0, 0), (8000, 0, 0)], extra=bytes(8000)),
     "lcfs_node_set_content"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("pieces", "reason"),
    [case[1:] for case in HOSTILE_RECORDS],
    ids=[case[0] for case in HOSTILE_RECORDS],
)
def test_child_refuses_malformed_records_cleanly(
    pieces: list[bytes], reason: str, out: tuple[int, Path]
) -> None:
    with pytest.raises(ValidationError) as caught:
        spawn_writer(pieces, out)
    assert reason in str(caught.value)
    assert out[1].stat().st_size == 0
    assert_child_gone()


def _unsealed(seals: int) -> int:
    return records_file(parent_records(small_tree()), seals=seals)


def _regular_file() -> int:
    fd = os.open("/", os.O_TMPFILE | os.O_RDWR)
    os.write(fd, b"".join(parent_records(small_tree())))
    return fd


# The records' channel itself: the child maps only a memfd sealed against
# every change (else what it checked could change under C, or a page of it
# vanish), and its stdin holds only the limit.
HOSTILE_CHANNELS: list[tuple[str, Callable[[], int], list[bytes], str]] = [
    ("not-sealed", lambda: _unsealed(0), [], "not sealed"),
    ("writable", lambda: _unsealed(RECORDS_SEALS & ~fcntl.F_SEAL_WRITE), [], "not sealed"),
    ("may-shrink", lambda: _unsealed(RECORDS_SEALS & ~fcntl.F_SEAL_SHRINK), [], "not sealed"),
    ("may-grow", lambda: _unsealed(RECORDS_SEALS & ~fcntl.F_SEAL_GROW), [], "not sealed"),
    ("regular-file", _regular_file, [], "not a memfd"),
    ("stdin-after-limit", lambda: records_file(parent_records(small_tree())),
     [LIMIT_HEADER.pack(1 << 30), b"x"], "bytes follow the records' limit on stdin"),
    ("stdin-limit-cut", lambda: records_file(parent_records(small_tree())),
     [LIMIT_HEADER.pack(1 << 30)[:5]], "the records end early"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make_fd", "stdin", "reason"),
    [case[1:] for case in HOSTILE_CHANNELS],
    ids=[case[0] for case in HOSTILE_CHANNELS],
)
def test_child_refuses_a_hostile_records_channel(
    make_fd: Callable[[], int], stdin: list[bytes], reason: str, out: tuple[int, Path]
) -> None:
    with pytest.raises(ValidationError) as caught:
        spawn_writer(make_fd(), out, stdin, input_bytes=None if stdin else 1 << 20)
    assert reason in str(caught.value)
    assert out[1].stat().st_size == 0
    assert_child_gone()


# Well framed records against the Tree's rules, which libcomposefs takes:
# the child does not check the Tree's rules again (the parent proved them,
# the lockdown is the defence), and the parent's checks of the output
# (header, digest of what was written) still hold.
NOT_RECHECKED: list[tuple[str, list[bytes]]] = [
    ("dotdot", _records([b"/", b"/.."], [_ROOT, _FILE])),
    ("dir-size", _records([b"/", b"/a"], [_ROOT, Inode(stat.S_IFDIR | 0o755)],
                          ints=_lens([*(getattr(_ROOT, n) for n in INT_FIELDS),
                                      stat.S_IFDIR | 0o755, 1, 0, 0, 0, 0, 7, 0]))),
    ("uid-negative", _records([b"/", b"/a"], [_ROOT, _FILE],
                              ints=_lens([*(getattr(_ROOT, n) for n in INT_FIELDS),
                                          stat.S_IFREG | 0o644, 1, -1, 0, 0, 0, 3, 0]))),
    ("hardlink-to-dir", _records([b"/", b"/a", b"/b"],
                                 [_ROOT, Inode(stat.S_IFDIR | 0o755), _LINK_ROW], [2, 1])),
    ("hardlink-to-later", _records([b"/", b"/a", b"/b"], [_ROOT, _LINK_ROW, _FILE], [1, 2])),
    ("unsorted-xattrs", _records(*_TWO, extras=[(-1, 0, 0), (-1, 0, 2)],
                                 xattr_lens=_lens([6, 0, 6, 0]), extra=b"user.buser.a")),
]  # fmt: skip


@pytest.mark.parametrize(
    "pieces", [case[1] for case in NOT_RECHECKED], ids=[case[0] for case in NOT_RECHECKED]
)
def test_child_does_not_check_the_trees_rules_again(
    pieces: list[bytes], out: tuple[int, Path]
) -> None:
    record = run_writer(pieces, out)
    written = out[1].read_bytes()
    assert record["digest"] == fsverity_digest(written).hex()
    assert_child_gone()


def test_a_child_that_stops_reading_ends_the_exchange(out: tuple[int, Path]) -> None:
    # The parent makes its stdin pieces ahead while the pipe is full; a
    # child that refuses its records and exits must not leave it writing or
    # waiting.
    def stdin() -> Iterator[bytes]:
        yield LIMIT_HEADER.pack(1 << 30)
        for _ in range(256):
            yield bytes(1 << 20)

    empty = [RECORDS_HEADER.pack(0, *[0] * len(RECORD_PARTS))]
    with pytest.raises(ValidationError, match="the records hold no root"):
        spawn_writer(empty, out, stdin(), input_bytes=None)
    assert out[1].stat().st_size == 0
    assert_child_gone()


# ---------------------------------------------------------------------------
# faults: each ends as SandboxError (or blocked), with no output, nothing left
# ---------------------------------------------------------------------------

FAULTS: list[tuple[str, str, dict[str, Any]]] = [
    ("segv", "SIGSEGV", {}),
    ("abort", "SIGABRT", {}),
    ("loop", "SIGXCPU", {"cpu_seconds": 1}),
    ("alloc", "MemoryError", {"address_space": 1 << 30}),
    ("open", "PermissionError: [Errno 13] Permission denied: '/etc/passwd'", {}),
    ("socket", "SIGSYS", {}),
    ("exec", "SIGSYS", {}),
    ("bigwrite", "SIGXFSZ", {"file_size": 8 << 20}),
    ("leakfd", "blocked: no fd but 0, 1, 2 and", {}),
]


@pytest.mark.parametrize(("fault", "expected", "limits"), FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_in_child_becomes_sandbox_error(
    fault: str, expected: str, limits: dict[str, Any], out: tuple[int, Path]
) -> None:
    fd, path = out
    # An inheritable fd of ours: the child must not get it (leakfd checks).
    spare = os.open(path, os.O_RDONLY)
    os.set_inheritable(spare, True)
    try:
        with pytest.raises(SandboxError) as caught:
            write_image_sandboxed(
                small_tree(),
                fd,
                timeout=120,
                limits=SandboxLimits(timeout=120, **limits),
                _fault=fault,
            )
    finally:
        os.close(spare)
    assert expected in str(caught.value)
    assert path.stat().st_size == 0
    assert os.lseek(fd, 0, os.SEEK_CUR) == 0
    assert_child_gone()


@pytest.mark.parametrize("fault", ["rewind", "mmap"])
def test_child_cannot_touch_what_precedes_its_offset(fault: str, out: tuple[int, Path]) -> None:
    fd, path = out
    os.write(fd, b"caller's bytes")
    with pytest.raises(SandboxError, match="SIGSYS"):
        write_image_sandboxed(small_tree(), fd, _fault=fault)
    assert path.read_bytes() == b"caller's bytes"
    assert os.lseek(fd, 0, os.SEEK_CUR) == len(b"caller's bytes")
    assert_child_gone()


def test_wall_clock_timeout_kills_the_process_group(out: tuple[int, Path]) -> None:
    fd, path = out
    with pytest.raises(SandboxError, match=r"timed out after 1 s"):
        write_image_sandboxed(
            small_tree(), fd, timeout=1, limits=SandboxLimits(cpu_seconds=600), _fault="loop"
        )
    assert path.stat().st_size == 0
    assert_child_gone()


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("exec", "PermissionError: [Errno 13] Permission denied: '/bin/true'"),
        ("open", "PermissionError: [Errno 13] Permission denied: '/etc/passwd'"),
        ("socket", "SIGSYS"),
        ("segv", "SIGSEGV"),
    ],
)
def test_mkcomposefs_engine_keeps_the_lockdown(
    fault: str, expected: str, out: tuple[int, Path], mkcomposefs_tool: str
) -> None:
    # The exec policy lets the child run mkcomposefs and nothing else.
    fd, path = out
    with pytest.raises(SandboxError) as caught:
        write_image_sandboxed(
            small_tree(), fd, _engine="mkcomposefs", _mkcomposefs=mkcomposefs_tool, _fault=fault
        )
    assert expected in str(caught.value)
    assert path.stat().st_size == 0
    assert_child_gone()


def test_image_larger_than_the_file_size_limit_is_refused(out: tuple[int, Path]) -> None:
    fd, path = out
    with pytest.raises(SandboxError, match="SIGXFSZ"):
        write_image_sandboxed(synthetic_tree(3000), fd, limits=SandboxLimits(file_size=64 << 10))
    assert path.stat().st_size == 0
    assert_child_gone()


def test_default_memory_limit_sent_on_stdin_is_applied(out: tuple[int, Path]) -> None:
    # Without SandboxLimits.address_space the child learns its limit from
    # the first bytes on its stdin, 512 MiB plus 32 bytes per input byte
    # (bounded above), and reports what the kernel then says it is.
    _, path = out
    tree = synthetic_tree(3000)
    records_fd = sandbox._records_memfd()
    pieces = list(sandbox._child_input(tree, SandboxLimits(), "native", records_fd))
    made = os.fstat(records_fd).st_size
    argv_check = sandbox._worker_argv("write", SandboxLimits(), None, [])
    assert "--address-space=stdin" in argv_check
    outcome = spawn_writer(records_fd, out, pieces, input_bytes=None)
    record, _ = sandbox._first_line(outcome.stdout)
    limit = record["lockdown"]["address_space"]
    assert (512 << 20) + 32 * made <= limit < (512 << 20) + 32 * 4 * made
    assert pieces == [LIMIT_HEADER.pack(limit)]
    assert path.read_bytes() == native_image(tree, path.parent)[0]


def test_the_child_touches_its_heap_only_while_it_waits(
    tmp_path: Path, out: tuple[int, Path]
) -> None:
    # While the parent makes the records (here: a slow parent), the child
    # grows and touches its C heap, up to what the parent's --prefault says,
    # and stops at the first byte of its input.
    tree = small_tree()
    fd, path = out
    limits = SandboxLimits()

    records_fd = sandbox._records_memfd()

    def slow_parent() -> Iterator[Piece]:
        import time

        time.sleep(1.0)
        yield from sandbox._child_input(tree, limits, "native", records_fd)

    outcome = spawn_writer(
        records_fd,
        out,
        slow_parent(),
        limits=limits,
        input_bytes=None,
        extra=["--prefault=8388608"],
    )
    record, _ = sandbox._first_line(outcome.stdout)
    assert 0 < record["times"]["prefaulted"] <= 8  # MiB: what the parent said
    assert path.read_bytes() == native_image(tree, tmp_path)[0]
    # A limit in the argv: nothing to wait for, nothing touched ahead.
    quick = run_writer(parent_records(tree), (fd, path))
    assert "prefaulted" not in quick["times"]


def test_the_heap_touched_ahead_stays_below_the_limit_sent() -> None:
    # The parent's estimate (1 KiB an entry, at most 1 GiB) is below half
    # of any limit it sends: half a limit the caller set, and the default
    # (32 bytes per byte of records, over 100 bytes an entry) is far above.
    for entries in (1, 3000, 400_000, 10_000_000):
        default = SandboxLimits()
        assert (
            sandbox._prefault_bytes(entries, default)
            <= default.address_space_for(104 * entries) // 2
        )
        small = SandboxLimits(address_space=64 << 20)
        assert sandbox._prefault_bytes(entries, small) <= 32 << 20
    assert sandbox._prefault_bytes(10_000_000, SandboxLimits()) == 1 << 30


def test_memory_limit_hit_inside_libcomposefs_is_reported(out: tuple[int, Path]) -> None:
    fd, path = out
    tree = synthetic_tree(50_000)
    # Writing 50,000 entries takes about 85 MiB of address space (the frames'
    # columns, the Tree kept as columns, libcomposefs' own): libcomposefs'
    # malloc (ENOMEM) or Python's (MemoryError) fails first, depending on
    # the heap.
    with pytest.raises(
        SandboxError, match=r"(Cannot allocate memory|MemoryError).*address-space limit"
    ):
        write_image_sandboxed(tree, fd, limits=SandboxLimits(address_space=64 << 20))
    assert path.stat().st_size == 0
    assert_child_gone()


def test_child_failure_reports_the_tail_of_its_stderr(out: tuple[int, Path]) -> None:
    fd, path = out
    with pytest.raises(SandboxError, match=r"exit status 70: FileNotFoundError.*no-such-tool"):
        write_image_sandboxed(
            small_tree(), fd, _engine="mkcomposefs", _mkcomposefs="/nonexistent/no-such-tool"
        )
    assert path.stat().st_size == 0


def test_output_without_composefs_header_is_not_accepted(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"\0" * 8192)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(SandboxError, match="no composefs header"):
            sandbox._check_image(fd, 0, 8192, 0, 1)
        with pytest.raises(SandboxError, match="too short"):
            sandbox._check_image(fd, 0, 100, 0, 1)
    finally:
        os.close(fd)


def test_output_with_wrong_format_version_is_not_accepted(tmp_path: Path) -> None:
    image, _ = native_image(small_tree(), tmp_path, min_version=1, max_version=1)
    path = tmp_path / "v1.img"
    path.write_bytes(image)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(SandboxError, match=r"format version 1, outside 0\.\.0"):
            sandbox._check_image(fd, 0, len(image), 0, 0)
        assert sandbox._check_image(fd, 0, len(image), 0, 1) == fsverity_digest(image)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# reading untrusted images in the sandbox
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["config-with-hard-link.dump.gz", "special.dump"])
def test_read_image_sandboxed_equals_native_read(
    composefs_src: Path, name: str, tmp_path: Path
) -> None:
    image, _ = native_image(_asset_tree(composefs_src, name), tmp_path)
    try:
        expected = _native.read_image(image)
    except ValidationError as error:  # special.dump's trusted.overlay.redirect
        with pytest.raises(ValidationError, match=re.escape(error.reason)):
            read_image_sandboxed(image)
    else:
        assert read_image_sandboxed(image) == expected
    assert_child_gone()


def test_read_image_sandboxed_round_trips_a_tree(tmp_path: Path) -> None:
    tree = small_tree()
    image, _ = native_image(tree, tmp_path)
    got = read_image_sandboxed(image)
    assert dump_bytes(got) == dump_bytes(_native.read_image(image))


def _chain(depth: int) -> Tree:
    """Directories ``depth`` levels deep, a file at the bottom."""
    builder = TreeBuilder()
    builder.add(b"/", Inode(stat.S_IFDIR | 0o755))
    path = b""
    for _ in range(depth):
        path += b"/d"
        builder.add(path, Inode(stat.S_IFDIR | 0o755))
    builder.add(path + b"/f", Inode(stat.S_IFREG | 0o644, size=3, content=b"abc"))
    return builder.build()


def test_the_deepest_valid_tree_round_trips_through_the_sandbox(tmp_path: Path) -> None:
    # 2046 levels plus a file fill a 4095-byte path.  libcomposefs's loader
    # recurses per level: on the default 8 MiB stack the child died near
    # level 980 (SIGSEGV); it raises RLIMIT_STACK before the lockdown.
    tree = _chain(2046)
    out = tmp_path / "deep.cfs"
    digest = write_image(tree, out, backend="sandbox")
    image = out.read_bytes()
    assert digest == fsverity_digest(image)
    assert image == native_image(tree, tmp_path)[0]
    assert dump_bytes(read_image(image, sandbox=True)) == dump_bytes(tree)
    assert_child_gone()


def test_child_raises_its_stack_limit_before_the_lockdown(probe: dict[str, Any]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)  # what the child inherits
    if soft == resource.RLIM_INFINITY:
        expected = soft
    else:
        expected = max(soft, _lockdown.CHILD_STACK)
        if hard != resource.RLIM_INFINITY:
            expected = min(expected, hard)
    assert probe["lockdown"]["stack"] == expected
    assert probe["probe"]["rlimits"]["STACK"][0] == expected


def _outcome(read: Callable[[bytes], Tree], data: bytes) -> tuple[str, str]:
    try:
        tree = read(data)
    except ValidationError as exc:
        return "ValidationError", str(exc)
    return "Tree", dump_bytes(tree).decode("ascii")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda image: image[:2000],
        lambda image: image[:1024] + b"\xff" * (len(image) - 1024),
        lambda image: image[:4096] + bytes(len(image) - 4096),
        lambda image: image[:1024] + bytes(4096 - 1024),
    ],
    ids=["truncated", "garbage-superblock", "zeroed-metadata", "header-only"],
)
def test_read_image_sandboxed_answers_like_native_on_damaged_images(
    mutate: Callable[[bytes], bytes], tmp_path: Path
) -> None:
    image, _ = native_image(synthetic_tree(300), tmp_path)
    damaged = mutate(image)
    assert _outcome(read_image_sandboxed, damaged) == _outcome(_native.read_image, damaged)
    assert_child_gone()


def test_read_image_sandboxed_bounds_the_childs_answer(tmp_path: Path) -> None:
    image, _ = native_image(synthetic_tree(300), tmp_path)
    with pytest.raises(SandboxError, match="more than 1000 bytes to stdout"):
        read_image_sandboxed(image, limits=SandboxLimits(max_output=1000))
    assert_child_gone()


def test_syscall_tables_match_the_kernel_headers() -> None:
    import re

    headers = {
        "x86_64": (Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), _lockdown._X86_64),
        "aarch64": (Path("/usr/include/asm-generic/unistd.h"), _lockdown._AARCH64),
    }
    checked = 0
    for arch, (header, table) in headers.items():
        if not header.exists():
            continue
        text = header.read_text()
        for name, number in table.items():
            # asm-generic spells the 64-bit stat/lseek/mmap/fcntl as __NR3264_*.
            c_name = "fstatat" if (arch == "aarch64" and name == "newfstatat") else name
            found = re.search(rf"#define __NR(?:3264)?_{c_name}\s+(\d+)", text)
            assert found is not None, (arch, name)
            assert int(found.group(1)) == number, (arch, name)
            checked += 1
    if not checked:
        pytest.skip("kernel headers (linux-libc-dev) not installed")


_CALLER = """
import os, sys
from composefs_py import sandbox
from composefs_py.model import Inode, TreeBuilder
builder = TreeBuilder()
builder.add(b"/", Inode(0o40755))
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
sandbox.write_image_sandboxed(builder.build(), fd, timeout=600, _fault="loop")
"""


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat_line[stat_line.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def test_child_dies_with_its_caller(tmp_path: Path) -> None:
    import sys
    import time

    repo = Path(__file__).resolve().parent.parent
    caller = subprocess.Popen([sys.executable, "-c", _CALLER, str(tmp_path / "x.img")], cwd=repo)
    try:
        children: list[int] = []
        for _ in range(600):  # the caller starts its child within seconds
            children = _children_of(caller.pid)
            if children:
                break
            time.sleep(0.05)
        assert len(children) == 1
        worker = children[0]
    finally:
        caller.kill()
        caller.wait()
    for _ in range(600):
        if not Path(f"/proc/{worker}").exists():
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{worker}").exists()
