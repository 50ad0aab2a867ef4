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

While it waits for that number (the parent sends it once it has made,
written and sealed the records), a child that will write natively grows
and touches its C heap, up to ``--prefault`` bytes (the parent's estimate
of what libcomposefs will take, below the limit it will send; default
256 MiB), and stops at the first byte on stdin
(:func:`_prefault_heap_until_input`; nothing of the input is read): a fresh
process pays a page fault per new page of libcomposefs's tree, which a
process that wrote before does not; this takes that cost off the path
where the parent is still busy.

Then (write mode, native engine) it takes the parent's records: the
buffers libcomposefs's tree builder reads (``cfspy_build_tree``, see
csrc/shim.h), after :data:`RECORDS_HEADER` (the entry count and each
buffer's size), in a memfd (``--records-fd``) the parent sealed against
writing, shrinking and growing before it sent the limit.  Before the
lockdown the child checks the seals and maps the file read-only
(:func:`map_records`: seccomp maps anonymous memory only afterwards),
reading nothing of it; after, it checks the framing only, before taking
a buffer: every size agrees with the count, their sum is within the
address-space limit (:func:`check_sizes`), the file holds exactly the
padded buffers the header announces (:func:`read_records`); then the
lengths inside add up to the byte buffers, and the links' indices are in
bounds (:func:`check_records`), so C never reads past a buffer.  Its stdin
must end after the limit.  It does not check the Tree's rules again:
the parent proved them, the same code run twice adds no defence, and the
lockdown is the defence.  The checked buffers, read-only views of the
mapping (no copy), go straight to the native writer
(:func:`~composefs_py._native.write_records`: no Tree is rebuilt);
what libcomposefs refuses in them (an entry before its parent, a name
twice) is a rejection too.  When the compiled module is unavailable
(``--engine mkcomposefs``) steps 5 and 6 also allow what exec'ing
mkcomposefs needs: Landlock grants read on the library directories and
read+execute on the mkcomposefs binary and its ELF interpreter only,
seccomp allows execve and the dynamic loader's syscalls; the child then
*replaces itself* with ``mkcomposefs --from-file - -`` (stdin the rest of
the parent's pipe: the Tree's dumpfile; stdout the output fd), so
mkcomposefs runs under every restriction above, inherited across exec,
without a fork.

Cost: linear in the records' bytes: one read-only mapping of the file (no
copy), one pass in C over each length buffer
(:func:`~composefs_py._native.check_framing`; a binary search among the
links per hardlink target), no Python step per entry.  The address-space
limit (RLIMIT_AS, set before the input is read) bounds every allocation
and the mapping; the header's sizes are checked against it
(:func:`check_sizes`) and against the file's size (:func:`read_records`)
before any buffer is taken; RLIMIT_FSIZE bounds the image at each write.

Protocol: stdout carries one JSON line (``{"digest": ..., "lockdown":
..., "times": ...}``: the CLOCK_MONOTONIC time at which each step ended);
in read mode it carries the image's dump after that line.  Exit 0 on
success, 65 when the input is rejected (the last stderr line says why),
70 when a step failed; a signal when something crashed or hit a limit.

``--fault NAME`` exists for the tests only (sandbox.py passes it when its
private ``_fault`` argument is set; the input can never reach it): it makes
the child misbehave after lockdown.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import mmap
import os
import resource
import select
import signal
import stat
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from . import _lockdown
from .errors import ValidationError

try:
    from . import _native
except ImportError:  # pragma: no cover - depends on the build
    _native = None  # type: ignore[assignment]

#: The address-space limit in bytes, when the parent sends it first on stdin.
LIMIT_HEADER = struct.Struct("<Q")
#: ``--address-space`` value: the limit comes first on stdin (LIMIT_HEADER)
#: (the parent's number, read before the lockdown; the input follows it).
ADDRESS_SPACE_ON_STDIN = "stdin"
#: The buffers of the records, in the order they follow RECORDS_HEADER.
RECORD_PARTS = (
    "paths",
    "path_lens",
    "ints",
    "data",
    "data_lens",
    "links",
    "extra",
    "extra_lens",
    "xattr_lens",
)
#: The records' header: the entry count, then each buffer's size in bytes.
#: The records file (a memfd, ``--records-fd``) holds it, then each buffer
#: padded with zeros to a multiple of 8 bytes (:func:`padded`), nothing else.
RECORDS_HEADER = struct.Struct(f"<{1 + len(RECORD_PARTS)}Q")
#: The seals the records' memfd must carry before the child maps it.
RECORDS_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
#: A buffer of the records.
Buffer = bytes | bytearray | memoryview
#: The int fields of an entry, in the order of ``ints`` (shim.h's CFSPY_*).
_INT_FIELDS = ("mode", "nlink", "uid", "gid", "mtime", "mtime_nsec", "size", "rdev")
_INT_BYTES = 8 * len(_INT_FIELDS)
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


class Args:
    """The child's command line: ``--name=value`` options (argparse costs
    every child 12 ms of imports)."""

    __slots__ = ("mode", "parent_pid", "fd", "records_fd", "prefault", "min_version",
                 "max_version", "engine", "mkcomposefs", "address_space", "cpu_seconds",
                 "file_size", "open_files", "fault")  # fmt: skip
    _CHOICES: dict[str, tuple[str, ...]] = {
        "mode": ("write", "read", "info"),
        "engine": ("native", "mkcomposefs"),
        "fault": FAULTS,
    }
    _REQUIRED = ("mode", "parent_pid", "address_space", "cpu_seconds", "file_size", "open_files")
    mode: str
    parent_pid: int
    address_space: int
    cpu_seconds: int
    file_size: int
    open_files: int

    def __init__(self, argv: list[str]) -> None:
        self.fd = -1
        self.records_fd = -1
        self.prefault = PREFAULT_DEFAULT
        self.min_version = 0
        self.max_version = 1
        self.engine = "native"
        self.mkcomposefs = ""
        self.fault: str | None = None
        for arg in argv:
            key, sep, value = arg.removeprefix("--").partition("=")
            name = key.replace("-", "_")
            if not (arg.startswith("--") and sep and name in self.__slots__):
                raise SystemExit(f"composefs_py._worker: unknown argument {arg!r}")
            if name in self._CHOICES:
                if value not in self._CHOICES[name]:
                    raise SystemExit(f"composefs_py._worker: {arg!r}: not a choice")
                setattr(self, name, value)
            elif name == "mkcomposefs":
                self.mkcomposefs = value
            elif name == "address_space":
                self.address_space = -1 if value == ADDRESS_SPACE_ON_STDIN else int(value)
            else:
                setattr(self, name, int(value))
        for name in self._REQUIRED:
            if not hasattr(self, name):
                raise SystemExit(f"composefs_py._worker: --{name.replace('_', '-')} is required")


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


def lockdown(args: Args, *, probe: dict[str, Any] | None = None) -> dict[str, Any]:
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


def _read_exact(size: int, what: str) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = os.readv(0, [view[got:]])
        if not count:
            raise ValidationError(f"the records end early ({got} of {size} bytes of {what})")
        got += count
    return buffer


def padded(size: int) -> int:
    """``size`` rounded up to a multiple of 8: where the next buffer starts."""
    return size + (-size % 8)


def map_records(fd: int) -> memoryview:
    """The parent's records file ``fd`` mapped read-only, then closed.

    Before the lockdown (seccomp maps anonymous memory only afterwards);
    nothing in it is read here.  The file must be a memfd sealed against
    writing, shrinking and growing (:data:`RECORDS_SEALS`): what is checked
    later cannot change under the checks, and no page of the mapping can
    vanish (SIGBUS).  Mapped by libc's mmap (Python's mmap keeps a
    duplicate of the fd open), for the life of the process.
    """
    try:
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError as exc:
            raise ValidationError(f"the records are not a memfd ({exc.strerror})") from None
        if seals & RECORDS_SEALS != RECORDS_SEALS:
            raise ValidationError(
                "the records' memfd is not sealed against writing, shrinking and growing"
            )
        size = os.fstat(fd).st_size
        if not size:
            return memoryview(b"")
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]  # fmt: skip
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of the records: {os.strerror(err)}")
        return memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")
    finally:
        os.close(fd)


def read_records(view: memoryview, limit: int) -> list[memoryview]:
    """The parent's records (see :data:`RECORDS_HEADER`), their framing checked.

    ``view`` (the mapping) holds the header, then each buffer padded to a
    multiple of 8 bytes, and nothing else.  Every size is checked against the entry count
    and against ``limit`` (bytes), and the sizes against the mapping's
    before a buffer is taken; the buffers are read-only views of it (no
    copy), and :func:`check_records` checks what they say of each other.
    Anything malformed raises :class:`ValidationError`.
    """
    if len(view) < RECORDS_HEADER.size:
        raise ValidationError(
            f"the records end early ({len(view)} of {RECORDS_HEADER.size} bytes of the header)"
        )
    count, *sizes = RECORDS_HEADER.unpack_from(view)
    check_sizes(count, sizes, limit)
    end = RECORDS_HEADER.size + sum(map(padded, sizes))
    if len(view) < end:
        raise ValidationError(f"the records end early ({len(view)} of {end} bytes)")
    if len(view) > end:
        raise ValidationError("bytes follow the records")
    records = []
    start = RECORDS_HEADER.size
    for size in sizes:
        records.append(view[start : start + size])
        start += padded(size)
    check_records(records)
    return records


def check_sizes(count: int, sizes: list[int], limit: int) -> None:
    """Each buffer's size agrees with ``count`` entries; together at most ``limit`` bytes."""
    if count < 1:
        raise ValidationError("the records hold no root")
    _, path_lens, ints, _, data_lens, links, _, extra_lens, xattr_lens = sizes
    if not (
        path_lens == data_lens == 8 * count
        and ints == _INT_BYTES * count
        and extra_lens == 24 * count
        and links % 16 == 0
        and xattr_lens % 16 == 0
    ):
        raise ValidationError(
            f"the records must hold {len(_INT_FIELDS)} ints, 2 lengths and 3 extra lengths "
            "per entry, and pairs of links and xattr lengths"
        )
    if sum(sizes) > limit:
        raise ValidationError(f"the records announce {sum(sizes)} bytes, more than {limit}")


def check_records(records: Sequence[Buffer]) -> None:
    """What the buffers say of each other: lengths add up, indices are in bounds.

    The path, data and extra lengths add up to their byte buffers (none
    negative but -1, "none", where it may be); each entry's digest flag is 0
    or 1; the links are (entry, target) pairs by increasing entry, whose
    target is another entry that is not itself a link (no chain, no cycle).
    Checked in C (:func:`~composefs_py._native.check_framing`: one pass over
    each length buffer) after :func:`check_sizes`.  Not the Tree's rules:
    the parent proved those, and libcomposefs refuses what its own tree
    cannot hold (an entry before its parent, a name twice).
    """
    if _native is None:
        raise RuntimeError("the compiled module is unavailable: cannot check records")
    rule, entry = _native.check_framing(records)
    if rule:
        raise ValidationError(_FRAMING_ERRORS[rule], entry=None if entry < 0 else entry)


#: What each broken rule of :func:`check_records` is called, by its number
#: (``CFSPY_FRAMING_*`` in csrc/shim.h; 0: none broken).
_FRAMING_ERRORS = (
    "",
    "the path lengths must add up to the paths' bytes",
    "the data lengths must add up to the data's bytes",
    "the extra lengths must add up to the extra bytes",
    "a hardlink's entry is outside the records or out of order",
    "a hardlink's target must be another entry that is not a hardlink",
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


#: mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks above this size come from mmap, not the heap the child touches.
_MMAP_THRESHOLD = 256 << 20
#: The most of its C heap the child touches ahead unless ``--prefault``
#: says (the parent's estimate of what libcomposefs will take).
PREFAULT_DEFAULT = 256 << 20
_PREFAULT_STEP = 4 << 20


def _prefault_heap_until_input(most: int) -> float:
    """Touch fresh C heap pages while the parent still makes the records.

    A fresh process pays a page fault per new 4 KiB page; libcomposefs's
    tree and writer take hundreds of MiB.  Until the first byte of stdin
    arrives (nothing of the input is read), the heap grows by 4 MiB blocks,
    each written once, up to ``most`` bytes; then they are freed,
    and with the trim and mmap thresholds raised the heap keeps them for
    what follows.  Returns the MiB touched.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    blocks: list[int] = []
    poller = select.poll()
    poller.register(0, select.POLLIN | select.POLLHUP)
    while len(blocks) * _PREFAULT_STEP < most and not poller.poll(0):
        block = libc.malloc(_PREFAULT_STEP)
        if not block:
            break
        ctypes.memset(block, 0, _PREFAULT_STEP)
        blocks.append(block)
    for block in reversed(blocks):
        libc.free(block)
    return len(blocks) * _PREFAULT_STEP / (1 << 20)


def _emit(record: dict[str, Any]) -> None:
    os.write(1, (json.dumps(record, sort_keys=True) + "\n").encode("ascii"))


def _run(args: Args, times: dict[str, float]) -> int:
    if args.mode == "info":
        probe: dict[str, Any] = {}
        report = lockdown(args, probe=probe)
        _emit({"lockdown": report, "probe": probe, "native": _native is not None})
        return EXIT_OK

    native_write = args.mode == "write" and args.engine == "native"
    if args.address_space < 0:
        if native_write:
            times["prefaulted"] = _prefault_heap_until_input(args.prefault)
        args.address_space = LIMIT_HEADER.unpack(_read_exact(LIMIT_HEADER.size, "a limit"))[0]
    # Mapped now, read after the lockdown (seccomp then maps anonymous
    # memory only); the parent sent the limit after it sealed the file.
    mapping = map_records(args.records_fd) if native_write else memoryview(b"")
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

    times["lockdown"] = time.monotonic()
    if args.engine == "mkcomposefs":
        _exec_mkcomposefs(args, report)
    if _native is None:
        raise RuntimeError("the compiled module is unavailable: use --engine mkcomposefs")
    limit = report["address_space"]
    records = read_records(mapping, limit if limit >= 0 else sys.maxsize)
    if os.read(0, 1):
        raise ValidationError("bytes follow the records' limit on stdin")
    times["records"] = time.monotonic()
    digest = _native.write_records(
        records, args.fd, min_version=args.min_version, max_version=args.max_version
    )
    times["write"] = time.monotonic()
    _emit(
        {
            "lockdown": report,
            "digest": digest.hex(),
            "engine": "native",
            # CLOCK_MONOTONIC (shared with the parent) at each step's end
            "times": times,
        }
    )
    return EXIT_OK


def _exec_mkcomposefs(args: Args, report: dict[str, Any]) -> NoReturn:
    """Become ``mkcomposefs --from-file - -``: the rest of stdin is the
    parent's dumpfile of the Tree, the output fd its stdout."""
    _emit({"lockdown": report, "engine": "mkcomposefs"})
    os.dup2(args.fd, 1)  # the image goes to stdout: the output fd
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


def _import_for(args: Args) -> None:
    """Import what only some runs use, now: after the lockdown no file opens.

    Every child pays for each import it makes; most write natively and need
    neither the dumpfile module nor the faults' modules.
    """
    if args.mode == "read":
        __import__(f"{__package__}.dumpfile")
    if args.fault in ("socket", "mmap"):
        __import__(args.fault)


def main(argv: list[str]) -> NoReturn:
    times = {"main": time.monotonic()}
    args = Args(argv)
    _import_for(args)
    # Default action for a file-size limit hit: die by SIGXFSZ (Python
    # ignores it, which would turn the hit into a write error).
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    if args.mode == "write" and not (args.fd > 2 and stat.S_ISREG(os.fstat(args.fd).st_mode)):
        sys.stderr.write("composefs-py worker: --fd must name an open regular file\n")
        os._exit(EXIT_FAILED)
    if args.mode == "write" and args.engine == "native" and not 2 < args.records_fd != args.fd:
        sys.stderr.write("composefs-py worker: --records-fd must name the records' memfd\n")
        os._exit(EXIT_FAILED)
    try:
        code = _run(args, times)
    except ValidationError as exc:
        _die(EXIT_REJECTED, f"rejected: {exc}")
    except MemoryError:
        _die(EXIT_FAILED, "MemoryError: out of memory (address-space limit)")
    except BaseException as exc:  # the child reports every failure
        kind = type(exc)
        name = kind.__qualname__
        if kind.__module__ not in ("builtins", "__main__"):
            name = f"{kind.__module__}.{name}"
        _die(EXIT_FAILED, f"{name}: {exc}" if str(exc) else name)
    os._exit(code)


def _die(code: int, message: str) -> NoReturn:
    try:
        os.write(2, (message.replace("\n", " ") + "\n").encode("utf-8", "replace"))
    finally:
        os._exit(code)


if __name__ == "__main__":  # pragma: no cover - run by sandbox.py
    main(sys.argv[1:])
