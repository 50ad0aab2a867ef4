"""The sandboxed child: locks itself down, then writes or reads one image.

Started by :mod:`composefs_py.sandbox` as ``python -I -S -c <bootstrap>``
with an empty environment, cwd ``/``, its own session, stdin/stdout/stderr
pipes and (when writing) one inherited output fd.  Everything it will ever
import is imported first (what only some runs use: :func:`_import_for`);
then (after reading only its address-space limit when the argv says
``--address-space=stdin``: the parent's number, sent first so the child can
start before the parent has measured the Tree), before reading a single byte
of input, it locks itself down in this order:

1. rlimits: address space, CPU seconds, file size (the largest image),
   open files, no core dumps; the stack limit goes *up* to 64 MiB
   (:data:`~composefs_py._lockdown.CHILD_STACK`: libcomposefs's image
   loader recurses per directory level, as deep as the model allows);
2. ``PR_SET_NO_NEW_PRIVS`` (and not dumpable);
3. new user, network, IPC and mount namespaces, where the kernel allows;
   in its own mount namespace the root becomes an empty read-only tmpfs;
4. every capability dropped (after 3: a new user namespace grants a full set
   inside it), bounding and ambient sets emptied, securebits locked;
5. Landlock: every filesystem right handled, none granted (TCP and, on newer
   kernels, abstract sockets and signals too);
6. seccomp: an allowlist of what the write and read paths need; anything
   else kills the process (SIGSYS).

Then it rebuilds the Tree from the parent's frames of records (each
:data:`FRAME_HEADER`, the frame's length, then ``marshal`` data of
``(paths, path_lens, ints, data, data_lens, links, extras)``: the frame's
entries as buffers and lengths, see :class:`_Rows`; a zero length ends
them), decoding each frame as it arrives, checks every invariant again
(defence in depth) with the bulk TreeBuilder
(:func:`~composefs_py._columns.tree_from_columns`), or with a TreeBuilder
entry by entry where that cannot vouch for them, and writes the image with
the native backend.  When the compiled module is unavailable (``--engine
mkcomposefs``) steps 5 and 6 also allow what exec'ing mkcomposefs needs:
Landlock grants read on the library directories and read+execute on the
mkcomposefs binary and its ELF interpreter only, seccomp allows execve and
the dynamic loader's syscalls.  The child validates and re-dumps the input
into a memfd and *replaces itself* with ``mkcomposefs --from-file - -``
(stdin the memfd, stdout the output fd), so mkcomposefs runs under every
restriction above, inherited across exec, without a fork.

Protocol: stdout carries one JSON line (``{"digest": ..., "lockdown":
..., "rebuild": "columns"|"builder", "times": ...}``: how the Tree was
rebuilt, and the CLOCK_MONOTONIC time at which each step ended); in read
mode it carries the image's dump after that line.  Exit 0 on success, 65
when the input is rejected (the last stderr line says why), 70 when a step
failed; a signal when something crashed or hit a limit.

``--fault NAME`` exists for the tests only (sandbox.py passes it when its
private ``_fault`` argument is set; the input can never reach it): it makes
the child misbehave after lockdown.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import marshal
import os
import resource
import signal
import stat
import struct
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from itertools import accumulate, pairwise, repeat
from typing import Any, NoReturn, cast

from . import _lockdown
from ._columns import INT_FIELDS, Extra, NodeColumns, tree_from_columns
from .errors import ValidationError
from .limits import Limits
from .model import S_IFREG, Tree, TreeBuilder

#: The parent proved the Tree with the caller's Limits: what those let in by
#: an opt-in (an input's overlay xattrs, foreign payloads) the child takes too.
_PROVEN = Limits(allow_overlay_xattrs=True, allow_foreign_payloads=True)

try:
    from . import _native
except ImportError:  # pragma: no cover - depends on the build
    _native = None  # type: ignore[assignment]

#: Each frame of records: its length in bytes (0 ends the records).
FRAME_HEADER = struct.Struct("<Q")
#: ``--address-space`` value: the limit is the first FRAME_HEADER on stdin
#: (the parent's number, read before the lockdown; the input follows it).
ADDRESS_SPACE_ON_STDIN = "stdin"
#: A frame longer than this is refused (the parent's are far smaller).
MAX_FRAME_BYTES = 1 << 30
#: Bytes of int columns a frame holds per entry (see :class:`_Rows`).
_INT_FRAME_BYTES = 8 * len(INT_FIELDS)
_NOT_A_FRAME = "a frame of records must be (paths, path_lens, ints, data, data_lens, links, extras)"

EXIT_OK = 0
EXIT_REJECTED = 65
EXIT_FAILED = 70

FAULTS = (
    "segv",
    "abort",
    "loop",
    "alloc",
    "open",
    "socket",
    "exec",
    "bigwrite",
    "leakfd",
    "rewind",
    "mmap",
)

# Where the dynamic loader may read libraries from (fallback engine only).
_SYSTEM_LIB_DIRS = (
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/local/lib64",
    "/etc/ld.so.cache",
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="composefs_py._worker")
    p.add_argument("--mode", choices=("write", "read", "info"), required=True)
    p.add_argument("--parent-pid", type=int, required=True)
    p.add_argument("--fd", type=int, default=-1)
    p.add_argument("--min-version", type=int, default=0)
    p.add_argument("--max-version", type=int, default=1)
    p.add_argument("--engine", choices=("native", "mkcomposefs"), default="native")
    p.add_argument("--mkcomposefs", default="")
    p.add_argument("--address-space", type=_address_space, required=True)
    p.add_argument("--cpu-seconds", type=int, required=True)
    p.add_argument("--file-size", type=int, required=True)
    p.add_argument("--open-files", type=int, required=True)
    p.add_argument("--fault", choices=FAULTS, default=None)
    return p


def _address_space(text: str) -> int:
    """``--address-space``: bytes, or ADDRESS_SPACE_ON_STDIN (-1: read it first)."""
    return -1 if text == ADDRESS_SPACE_ON_STDIN else int(text)


def _elf_interpreter(path: str) -> str | None:
    """PT_INTERP of the ELF file at ``path`` (its dynamic loader), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
                return None
            order = "<" if head[5] == 1 else ">"
            phoff = int.from_bytes(head[32:40], "little" if order == "<" else "big")
            phentsize = int.from_bytes(head[54:56], "little" if order == "<" else "big")
            phnum = int.from_bytes(head[56:58], "little" if order == "<" else "big")
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                entry = table[i * phentsize : (i + 1) * phentsize]
                if int.from_bytes(entry[0:4], "little" if order == "<" else "big") == 3:
                    offset = int.from_bytes(entry[8:16], "little" if order == "<" else "big")
                    size = int.from_bytes(entry[32:40], "little" if order == "<" else "big")
                    f.seek(offset)
                    return f.read(size).rstrip(b"\0").decode("utf-8", "surrogateescape")
    except OSError:
        return None
    return None


def _fallback_paths(binary: str) -> tuple[list[str], list[str]]:
    """Landlock's read and read+execute paths for exec'ing ``binary``."""
    real = os.path.realpath(binary)
    prefix = os.path.dirname(os.path.dirname(real))
    read = [*_SYSTEM_LIB_DIRS, os.path.join(prefix, "lib"), os.path.join(prefix, "lib64")]
    execute = [real]
    interp = _elf_interpreter(real)
    if interp:
        execute.append(os.path.realpath(interp))
    return read, execute


def lockdown(args: argparse.Namespace, *, probe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply every step, in order; return what is active.

    With ``probe`` (sandbox-info mode) each step is checked from inside right
    after it is applied, and the observations go into ``probe``.
    """
    report: dict[str, Any] = {}
    exec_allowed = args.mode == "write" and args.engine == "mkcomposefs"
    read_paths: list[str] = []
    exec_paths: list[str] = []
    if exec_allowed:
        read_paths, exec_paths = _fallback_paths(args.mkcomposefs)
    status_fd = etc_fd = -1
    if probe is not None:
        # Opened now, read later: /proc is out of reach after Landlock.
        status_fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        # A handle on the real /etc, kept past the empty root: only Landlock
        # stands between it and /etc/passwd.
        etc_fd = os.open("/etc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        probe["parent_namespaces"] = _namespace_ids()

    _lockdown.die_with_parent(args.parent_pid)
    report["stack"] = _lockdown.raise_stack_limit()
    _lockdown.set_rlimits(
        _lockdown.Rlimits(
            address_space=args.address_space,
            cpu_seconds=args.cpu_seconds,
            file_size=args.file_size,
            open_files=args.open_files,
        )
    )
    report["rlimits"] = True
    report["address_space"] = resource.getrlimit(resource.RLIMIT_AS)[0]
    if probe is not None:
        probe["rlimits"] = _current_rlimits()
    _lockdown.set_no_new_privs()
    report["no_new_privs"] = True
    namespaces = _lockdown.unshare_namespaces()
    for name, state in namespaces.items():
        report[f"{name}_namespace"] = state
    if probe is not None:
        probe["namespaces"] = _namespace_ids()
    if exec_allowed:
        report["empty_root"] = "not used: mkcomposefs needs its binary and libraries"
    elif namespaces["mnt"] != "new":
        report["empty_root"] = "not used: no mount namespace of its own"
    else:
        report["empty_root"] = _lockdown.enter_empty_root()
    if probe is not None:
        probe["root_entries"] = sorted(os.listdir("/"))
        probe["stat_etc"] = _try_stat("/etc")
    _lockdown.drop_capabilities()
    report["capabilities_dropped"] = True
    if probe is not None:
        probe["status_after_capabilities"] = _read_status(status_fd)
        probe["before_landlock_open_passwd_in_etc_fd"] = _try_open("passwd", etc_fd)
    abi = _lockdown.apply_landlock(read_paths, exec_paths)
    report["landlock"] = abi if isinstance(abi, str) else f"abi {abi}"
    if probe is not None:
        probe["landlock_open_passwd_in_etc_fd"] = _try_open("passwd", etc_fd)
        probe["landlock_open_etc_passwd"] = _try_open("/etc/passwd")
    report["seccomp"] = _lockdown.apply_seccomp(_lockdown.SeccompPolicy(exec_allowed=exec_allowed))
    if probe is not None:
        probe["status_after_seccomp"] = _read_status(status_fd)
        probe["seccomp_open_etc_passwd"] = _try_open("/etc/passwd")
        os.close(status_fd)
        os.close(etc_fd)
    return report


def _namespace_ids() -> dict[str, str]:
    ids = {}
    for name in _lockdown.NAMESPACES:
        try:
            ids[name] = os.readlink(f"/proc/self/ns/{name}")
        except OSError as exc:
            ids[name] = f"error: {exc.strerror}"
    return ids


def _read_status(fd: int) -> dict[str, str]:
    lines = os.pread(fd, 1 << 16, 0).decode("ascii", "replace").splitlines()
    wanted = ("NoNewPrivs", "Seccomp", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
    return {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in lines)
        if key.strip() in wanted
    }


def _try_open(path: str, dir_fd: int | None = None) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        return f"denied: {exc.strerror}"
    os.close(fd)
    return "opened"


def _try_stat(path: str) -> str:
    try:
        os.stat(path)
    except OSError as exc:
        return f"denied: {exc.strerror}"
    return "found"


def _read_stdin() -> bytes:
    chunks = []
    while chunk := os.read(0, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_exact(size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = os.readv(0, [view[got:]])
        if not count:
            raise ValidationError(f"the records end early ({got} of {size} bytes of a frame)")
        got += count
    return buffer


def _read_frames() -> Iterator[object]:
    """The parent's frames, :mod:`marshal` loaded, as they arrive on stdin."""
    while size := FRAME_HEADER.unpack(_read_exact(FRAME_HEADER.size))[0]:
        if size > MAX_FRAME_BYTES:
            raise ValidationError(f"a frame of records is longer than {MAX_FRAME_BYTES} bytes")
        try:
            yield marshal.loads(_read_exact(size))
        except (EOFError, ValueError, TypeError) as exc:
            raise ValidationError(f"a frame of records is not marshal data: {exc}") from None


def tree_from_frames(frames: Iterable[object]) -> Tree:
    """Rebuild the Tree from the parent's frames: in bulk, else through a TreeBuilder.

    The frames' rows are collected into one :class:`NodeColumns` and handed
    to :func:`~composefs_py._columns.tree_from_columns` (parents first, no
    parent made, as a TreeBuilder() takes a dumpfile), which checks every
    invariant column-wise.  Where it cannot vouch for the rows (None),
    they go through :meth:`TreeBuilder.add` one by one, which says what is
    wrong: the records are untrusted input like any other, and anything
    malformed raises :class:`ValidationError`, the message a TreeBuilder
    (or, for the frames' shape, :class:`_Rows`) gives.  A frame that is
    not well formed is reported after any error in the entries before it,
    as when every entry went through the builder as it arrived.
    """
    return _rebuild(_collect(frames))


def _collect(frames: Iterable[object]) -> NodeColumns:
    """The rows of every frame as one NodeColumns (a malformed frame raises,
    after the error of any entry before it)."""
    rows = _Rows()
    try:
        for frame in frames:
            rows.add_frame(frame)
    except ValidationError:
        _add_rows(TreeBuilder(_PROVEN), rows.columns())  # an earlier entry's own error comes first
        raise
    return rows.columns()


def _rebuild(columns: NodeColumns) -> Tree:
    """The Tree of ``columns``: in bulk, else through a TreeBuilder (its error raises)."""
    tree = tree_from_columns(columns, _PROVEN)
    if tree is None:
        builder = TreeBuilder(_PROVEN)
        _add_rows(builder, columns)
        tree = builder.build()
    return tree


def _add_rows(builder: TreeBuilder, columns: NodeColumns) -> None:
    """Add every row of ``columns`` to ``builder``, in order (its first error raises)."""
    add = builder.add
    for entry, (path, node) in enumerate(columns.nodes()):
        add(path, node, entry=entry)


class _Rows:
    """The rows of the frames read so far, as columns (each frame checked whole first).

    A frame is the :mod:`marshal` data of ``(paths, path_lens, ints, data,
    data_lens, links, extras)`` for its ``count`` entries: ``paths`` the
    paths joined, ``path_lens`` their ``count`` lengths; ``ints`` ``8 *
    count`` values, entry by entry, in the order of
    :data:`~composefs_py._columns.INT_FIELDS` (``mode, nlink, uid, gid,
    mtime, mtime_nsec, size, rdev``); ``data`` the payloads (regular files)
    and targets (symlinks) joined, ``data_lens`` their ``count`` lengths, -1
    for an entry without; these lengths and ints int64 in this machine's
    byte order (``array("q")`` bytes); ``links`` ``(position, target)`` for
    each hardlink, ``extras`` ``(position, content, fsverity_digest,
    xattrs)`` for each entry that has any of those, both by increasing
    position in the frame.  A hardlink's row reads as an empty regular file
    (mode ``S_IFREG``, every other int 0, no data, no extras):
    :class:`NodeColumns`' rule.
    """

    __slots__ = ("paths", "ints", "data", "links", "extras")

    def __init__(self) -> None:
        # Each frame is decoded as it arrives (while the parent makes the next).
        self.paths: list[bytes] = []
        self.ints: list[list[int]] = [[] for _ in INT_FIELDS]
        self.data: list[bytes | None] = []
        self.links: dict[int, bytes] = {}
        self.extras: dict[int, Extra] = {}

    def add_frame(self, frame: object) -> None:
        first = len(self.paths)
        if not (frame.__class__ is tuple and len(frame) == 7):
            raise ValidationError(_NOT_A_FRAME, entry=first)
        paths, path_lens, ints, data, data_lens, links, extras = cast("tuple[object, ...]", frame)
        if not (
            paths.__class__ is bytes
            and path_lens.__class__ is bytes
            and ints.__class__ is bytes
            and data.__class__ is bytes
            and data_lens.__class__ is bytes
            and links.__class__ is tuple
            and extras.__class__ is tuple
        ):
            raise ValidationError(_NOT_A_FRAME, entry=first)
        count = len(path_lens) // 8
        if not (
            len(path_lens) == len(data_lens) == 8 * count and len(ints) == _INT_FRAME_BYTES * count
        ):
            raise ValidationError(
                f"a frame of records must hold {len(INT_FIELDS)} ints and 2 lengths per entry",
                entry=first,
            )
        path_sizes = memoryview(path_lens).cast("q")
        data_sizes = memoryview(data_lens).cast("q")
        if count and (
            min(path_sizes) < 0
            or sum(path_sizes) != len(paths)
            or min(data_sizes) < -1
            or sum(map(max, data_sizes, repeat(0))) != len(data)
        ):
            raise ValidationError(
                "a frame's lengths must add up to its paths' and its data's bytes", entry=first
            )
        values = memoryview(ints).cast("q")
        found_links = self._links(
            cast("tuple[object, ...]", links), count, values, data_sizes, first
        )
        found_extras = self._extras(cast("tuple[object, ...]", extras), count, found_links, first)
        self.paths += [
            paths[start:end] for start, end in pairwise(accumulate(path_sizes, initial=0))
        ]
        fields = len(INT_FIELDS)
        for k, column in enumerate(self.ints):
            column += values[k::fields].tolist()
        data_at = accumulate(map(max, data_sizes, repeat(0)), initial=0)
        self.data += [
            None if length < 0 else data[start : start + length]
            for start, length in zip(data_at, data_sizes, strict=False)
        ]
        for position, target in found_links.items():
            self.links[first + position] = target
        for position, extra in found_extras:
            self.extras[first + position] = extra

    @staticmethod
    def _links(
        links: tuple[object, ...],
        count: int,
        values: memoryview,
        data_sizes: memoryview,
        first: int,
    ) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        previous = -1
        fields = len(INT_FIELDS)
        for link in links:
            if not (link.__class__ is tuple and len(link) == 2 and link[1].__class__ is bytes):
                raise ValidationError("a hardlink must be (position, target bytes)", entry=first)
            position, target = cast("tuple[int, bytes]", link)
            if not (position.__class__ is int and previous < position < count):
                raise ValidationError(
                    "a hardlink's position is outside its frame or out of order", entry=first
                )
            row = fields * position
            if (
                values[row] != S_IFREG
                or any(values[row + 1 : row + fields].tolist())
                or data_sizes[position] != -1
            ):
                raise ValidationError(
                    "a hardlink's row must read as an empty regular file", entry=first + position
                )
            found[position] = target
            previous = position
        return found

    @staticmethod
    def _extras(
        extras: tuple[object, ...], count: int, links: dict[int, bytes], first: int
    ) -> list[tuple[int, Extra]]:
        found: list[tuple[int, Extra]] = []
        previous = -1
        for extra in extras:
            if not (extra.__class__ is tuple and len(extra) == 4):
                raise ValidationError(
                    "an entry's extras must be (position, content, digest, xattrs)", entry=first
                )
            position, content, digest, xattrs = cast("tuple[int, Any, Any, Any]", extra)
            if not (position.__class__ is int and previous < position < count):
                raise ValidationError(
                    "an entry's extras' position is outside its frame or out of order", entry=first
                )
            if position in links:
                raise ValidationError(
                    "a hardlink's row must read as an empty regular file", entry=first + position
                )
            found.append((position, (content, digest, xattrs)))
            previous = position
        return found

    def columns(self) -> NodeColumns:
        mode, nlink, uid, gid, mtime, mtime_nsec, size, rdev = self.ints
        return NodeColumns(
            paths=self.paths,
            mode=mode,
            uid=uid,
            gid=gid,
            mtime=mtime,
            mtime_nsec=mtime_nsec,
            size=size,
            data=self.data,
            nlink=nlink,
            rdev=rdev,
            links=self.links,
            extras=self.extras,
        )


def _fault(name: str, out_fd: int) -> None:
    """Misbehave as the tests ask, after lockdown; a blocked attempt raises."""
    if name == "segv":
        ctypes.string_at(0)
    elif name == "abort":
        os.abort()
    elif name == "loop":
        while True:
            pass
    elif name == "alloc":
        hog = []
        while True:
            hog.append(bytes(1 << 28))  # calloc: no page is touched
    elif name == "open":
        with open("/etc/passwd", "rb") as f:
            f.read()
        raise RuntimeError("fault open: /etc/passwd was readable")
    elif name == "socket":
        import socket  # loaded before the lockdown (_import_for)

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(("127.0.0.1", 22))
        raise RuntimeError("fault socket: connected to 127.0.0.1")
    elif name == "exec":
        _execv("/bin/true", ["true"])
    elif name == "bigwrite":
        block = bytes(1 << 20)
        while True:
            os.write(out_fd, block)
    elif name == "leakfd":
        _check_fds(out_fd)
    elif name == "rewind":  # overwrite what precedes the child's start offset
        os.lseek(out_fd, 0, os.SEEK_SET)
        os.write(out_fd, b"overwritten")
    elif name == "mmap":
        import mmap  # loaded before the lockdown (_import_for)

        os.write(out_fd, bytes(mmap.PAGESIZE))
        with mmap.mmap(out_fd, mmap.PAGESIZE, offset=0) as mapping:
            mapping[:11] = b"overwritten"


def _check_fds(out_fd: int) -> None:
    """Fail unless stdin/stdout/stderr and the output fd are the only open fds."""
    leaked = []
    for fd in range(3, 1024):
        if fd == out_fd:
            continue
        try:
            os.fstat(fd)
        except OSError:
            continue
        leaked.append(fd)
    if leaked:
        raise RuntimeError(f"fault leakfd: fds {leaked} are open in the child")
    raise PermissionError(
        f"fault leakfd: blocked: no fd but 0, 1, 2 and {out_fd} is open in the child"
    )


def _emit(record: dict[str, Any]) -> None:
    os.write(1, (json.dumps(record, sort_keys=True) + "\n").encode("ascii"))


def _run(args: argparse.Namespace, times: dict[str, float]) -> int:
    if args.mode == "info":
        probe: dict[str, Any] = {}
        report = lockdown(args, probe=probe)
        _emit({"lockdown": report, "probe": probe, "native": _native is not None})
        return EXIT_OK

    if args.address_space < 0:
        args.address_space = FRAME_HEADER.unpack(_read_exact(FRAME_HEADER.size))[0]
    report = lockdown(args)
    if args.fault is not None:
        _fault(args.fault, args.fd)

    if args.mode == "read":
        if _native is None:
            raise RuntimeError("the compiled module is unavailable: cannot read images")
        tree = _native.read_image(_read_stdin())
        _emit({"lockdown": report})
        from .dumpfile import dump_bytes  # loaded before the lockdown (_import_for)

        text = dump_bytes(tree)
        view = memoryview(text)
        while view:
            view = view[os.write(1, view) :]
        return EXIT_OK

    # Hundreds of thousands of acyclic objects: no collection can free any.
    gc.disable()
    times["lockdown"] = time.monotonic()
    columns = _collect(_read_frames())
    times["frames"] = time.monotonic()
    tree = _rebuild(columns)
    del columns
    times["rebuild"] = time.monotonic()
    if args.engine == "native":
        if _native is None:
            raise RuntimeError("the compiled module is unavailable: use --engine mkcomposefs")
        digest = _native.write_tree(
            tree, args.fd, min_version=args.min_version, max_version=args.max_version
        )
        times["write"] = time.monotonic()
        _emit(
            {
                "lockdown": report,
                "digest": digest.hex(),
                "engine": "native",
                # how the Tree was rebuilt: "columns" (in bulk) or "builder" (entry by entry)
                "rebuild": "builder" if tree._table is None else "columns",
                # CLOCK_MONOTONIC (shared with the parent) at each step's end
                "times": times,
            }
        )
        return EXIT_OK
    _exec_mkcomposefs(args, tree, report)


def _exec_mkcomposefs(args: argparse.Namespace, tree: Tree, report: dict[str, Any]) -> NoReturn:
    from .dumpfile import dump_bytes  # loaded before the lockdown (_import_for)

    text = dump_bytes(tree)
    memfd = os.memfd_create("composefs-py-dump", os.MFD_CLOEXEC)
    view = memoryview(text)
    while view:
        view = view[os.write(memfd, view) :]
    os.lseek(memfd, 0, os.SEEK_SET)
    _emit({"lockdown": report, "engine": "mkcomposefs"})
    os.dup2(memfd, 0)
    os.dup2(args.fd, 1)  # the image goes to stdout: the output fd
    os.close(memfd)
    if args.fd > 2:
        os.close(args.fd)
    # Python ignores these; an exec'd program must get the defaults.
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL)
    argv = [
        "mkcomposefs",
        f"--min-version={args.min_version}",
        f"--max-version={args.max_version}",
        "--from-file",
        "-",
        "-",
    ]
    _execv(args.mkcomposefs, argv)


def _execv(path: str, argv: list[str]) -> NoReturn:
    try:
        os.execv(path, argv)
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, path) from None


def _current_rlimits() -> dict[str, list[int]]:
    return {
        name: list(resource.getrlimit(getattr(resource, f"RLIMIT_{name}")))
        for name in ("AS", "CPU", "FSIZE", "NOFILE", "CORE", "STACK")
    }


def _import_for(args: argparse.Namespace) -> None:
    """Import what only some runs use, now: after the lockdown no file opens.

    Every child pays for each import it makes; most write natively and need
    neither the dumpfile module nor the faults' modules.
    """
    if args.mode == "read" or (args.mode == "write" and args.engine == "mkcomposefs"):
        __import__(f"{__package__}.dumpfile")
    if args.fault in ("socket", "mmap"):
        __import__(args.fault)


def main(argv: list[str]) -> NoReturn:
    times = {"main": time.monotonic()}
    args = _parser().parse_args(argv)
    _import_for(args)
    # Default action for a file-size limit hit: die by SIGXFSZ (Python
    # ignores it, which would turn the hit into a write error).
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    if args.mode == "write" and not (args.fd > 2 and stat.S_ISREG(os.fstat(args.fd).st_mode)):
        sys.stderr.write("composefs-py worker: --fd must name an open regular file\n")
        os._exit(EXIT_FAILED)
    try:
        code = _run(args, times)
    except ValidationError as exc:
        _die(EXIT_REJECTED, f"rejected: {exc}")
    except MemoryError:
        _die(EXIT_FAILED, "MemoryError: out of memory (address-space limit)")
    except BaseException as exc:  # the child reports every failure
        lines = traceback.format_exception_only(type(exc), exc)
        _die(EXIT_FAILED, "".join(lines).strip())
    os._exit(code)


def _die(code: int, message: str) -> NoReturn:
    try:
        os.write(2, (message.replace("\n", " ") + "\n").encode("utf-8", "replace"))
    finally:
        os._exit(code)


if __name__ == "__main__":  # pragma: no cover - run by sandbox.py
    main(sys.argv[1:])
