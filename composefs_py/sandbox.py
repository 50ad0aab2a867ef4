"""The sandboxed writer backend: libcomposefs in a locked-down child process.

A crash, hang or memory bomb inside libcomposefs must not take the caller
down.  :func:`write_image_sandboxed` starts a fresh ``python -I`` child
(:mod:`composefs_py._worker`) and, while it starts, makes the (already
validated) Tree's records: the very buffers the native backend hands
libcomposefs (``_native._Columns``), written after a header of their sizes
(:data:`~composefs_py._worker.RECORDS_HEADER`, see :func:`_records`) to a
memfd sealed against any change, which the child maps read-only (no copy
through a pipe; its stdin gets only its address-space limit).  The
child checks their framing only (sizes, lengths, indices: C never reads
past a buffer), not the Tree's rules again, and hands them to the same C
builder and writer.  Before reading any
input the child sets rlimits (its stack may grow to 64 MiB: libcomposefs
recurses once per directory level, as deep as the model allows),
no_new_privs, enters new user/net/IPC/mount namespaces, drops every
capability, applies Landlock (no filesystem access) and a seccomp allowlist
(and, in its own mount namespace, swaps the root for an empty tmpfs).
The child inherits nothing but stdin/stdout/stderr pipes and the output fd,
runs with an empty environment in ``/`` and in its own session (process
group).  Without the compiled module the child becomes ``mkcomposefs
--from-file - -`` under the same lockdown, reading the Tree's dumpfile.

The parent enforces a wall-clock timeout (then kills the whole process
group), turns every death or limit hit into :class:`SandboxError` naming the
signal, limit or timeout with the tail of the child's stderr, and accepts
the output only after a clean exit, a header check (composefs and EROFS
magic numbers, format version) and a match between the digest the child
reports and the fs-verity digest of the bytes it actually wrote.  On failure
the output fd is truncated back to where it started.

:func:`read_image_sandboxed` parses an untrusted image in the same kind of
child (libcomposefs 1.0.8 has a known heap use-after-free on images with
hardlinked whiteouts); the child's answer is a dumpfile, which the parent
re-validates with :func:`~composefs_py.dumpfile.parse_dumpfile`.

:func:`sandbox_info` runs a child that applies each step, checks it from
inside and reports which protections are active on this machine.

Cost: linear in the Tree, and bounded before anything is allocated.
The parent makes the records once (what the native backend makes anyway)
while the child starts, and writes them once, into the memfd; the child
maps them (no copy) and checks their framing in C, one pass per length
buffer.  The address-space limit the parent sends (``SandboxLimits``:
512 MiB plus 32 bytes per byte of the records file plus 160 per entry,
or ``address_space``) bounds every allocation of the child, the mapping
included, and the sizes the records' header announces are checked
against it, and against the file's size, before a buffer is taken;
``file_size`` bounds the image (RLIMIT_FSIZE, checked by the kernel at
each write), ``cpu_seconds`` and ``timeout`` the time, ``max_output``
what the parent reads back on stdout (checked as each chunk arrives).
The parent's fs-verity digest of the output is taken as the child writes
it (:class:`_Follower`), at most 4 MiB per turn of the exchange, so
after the exit only the tail and the header are left to check.

Measured (2 shared, busy cores, libcomposefs 1.0.8, generated TOCs,
whole ``write_image`` calls, medians of alternating runs): see the
commits; what is left over native is the child's start (about 45 ms:
interpreter, imports, lockdown; made while the parent makes the records),
a fresh process's page faults (touched ahead while the child waits for
the parent, see :mod:`composefs_py._worker`) and its exit (10 ms at
100,000 entries, 35 ms at 400,000).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import selectors
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ._backend import check_versions, find_mkcomposefs, write_all
from ._worker import (
    ADDRESS_SPACE_ON_STDIN,
    LIMIT_HEADER,
    RECORDS_HEADER,
    RECORDS_SEALS,
    padded,
)
from .dumpfile import parse_dumpfile
from .errors import BackendUnavailableError, SandboxError, ValidationError
from .fsverity import FsverityHasher
from .limits import Limits
from .model import Tree

try:
    from . import _native
except ImportError:  # pragma: no cover - depends on the build
    _native = None  # type: ignore[assignment]

__all__ = [
    "SandboxLimits",
    "read_image_sandboxed",
    "sandbox_info",
    "write_image_sandboxed",
]

#: Bytes an entry may take in the child beyond its records (its C node):
#: the address-space limit counts this much per entry.
_RECORD_OVERHEAD = 160
#: What the parent writes to a child's stdin.
Piece = bytes | memoryview
#: The child's stdin pipe: larger than the default 64 KiB, fewer wake-ups.
_PIPE_SIZE = 1 << 20
#: How far the parent makes the child's input ahead of the pipe (while the
#: child starts, it makes the frames the child will read next).
_AHEAD_BYTES = 32 << 20
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_PACKAGE_PARENT = str(Path(_PACKAGE_DIR).parent)
# The child's program: import from where this process imports (-I ignores
# PYTHONPATH and adds no directory to sys.path, -S skips site: the parent's
# sys.path already holds what .pth files add), with the package registered
# bare (its __init__ imports the whole public API; the worker needs only
# its own few modules, and every child pays for each import), then hand
# over to the worker.
_BOOTSTRAP = (
    "import sys; sys.path[:0] = sys.argv.pop(1).split('\\n'); "
    "package = type(sys)('composefs_py'); package.__path__ = [sys.argv.pop(1)]; "
    "sys.modules['composefs_py'] = package; "
    "from composefs_py._worker import main; main(sys.argv[1:])"
)


def _import_path() -> str:
    """This package's parent, then this process's absolute sys.path entries."""
    entries = [_PACKAGE_PARENT]
    for entry in sys.path:
        if os.path.isabs(entry) and "\n" not in entry and entry not in entries:
            entries.append(entry)
    return "\n".join(entries)


LCFS_EROFS_MAGIC = 0xD078629A
EROFS_SUPER_MAGIC_V1 = 0xE0F5E1E2
EROFS_SUPER_OFFSET = 1024
_EROFS_SUPER_SIZE = 128
_HEADER = struct.Struct("<IIII")  # magic, version, flags, composefs_version
_LCFS_VERSION = 1  # struct lcfs_erofs_header_s.version
_STDERR_TAIL = 2000
_EXIT_REJECTED = 65

_SIGNAL_MEANING: dict[int, str] = {
    signal.SIGKILL: "killed (SIGKILL): likely the memory (address-space) or hard CPU limit",
    signal.SIGXCPU: "CPU time limit exceeded (SIGXCPU)",
    signal.SIGXFSZ: "file size limit exceeded (SIGXFSZ): the image is larger than allowed",
    signal.SIGSYS: "blocked system call (SIGSYS): seccomp killed the child",
    signal.SIGSEGV: "crashed (SIGSEGV): segmentation fault in the child",
    signal.SIGABRT: "aborted (SIGABRT): libcomposefs or the interpreter called abort()",
    signal.SIGBUS: "crashed (SIGBUS): bus error in the child",
}


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """The limits the sandboxed child runs under.

    ``address_space`` (bytes, RLIMIT_AS) ``None`` means 512 MiB plus 32
    bytes per byte of input, at least twice what the child needs (measured:
    writing 100,000 entries, a 10.5 MB dumpfile, peaks at 179 MiB of address
    space; reading a 19 MB image of 112,000 entries at 194 MiB).
    ``file_size`` (RLIMIT_FSIZE) is the largest image the child may write.
    ``cpu_seconds`` is RLIMIT_CPU (SIGXCPU, then SIGKILL a second later).
    ``timeout`` is the parent's wall-clock limit in seconds.
    ``max_output`` bounds what the parent accepts on the child's stdout
    (read mode: the image's dump); more kills the child.
    """

    address_space: int | None = None
    cpu_seconds: int = 600
    file_size: int = 16 << 30
    open_files: int = 64
    timeout: float = 900.0
    max_output: int = 4 << 30

    def address_space_for(self, input_bytes: int) -> int:
        if self.address_space is not None:
            return self.address_space
        return (512 << 20) + 32 * input_bytes


def _worker_argv(
    mode: str,
    limits: SandboxLimits,
    input_bytes: int | None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The child's command line; ``input_bytes=None``: the address-space
    limit comes first on its stdin (:data:`~composefs_py._worker.LIMIT_HEADER`),
    so the child starts before the parent has made the input, and waits for it."""
    if input_bytes is None:
        address_space = ADDRESS_SPACE_ON_STDIN
    else:
        address_space = str(limits.address_space_for(input_bytes))
    return [
        sys.executable,
        "-I",
        "-S",
        "-c",
        _BOOTSTRAP,
        _import_path(),
        _PACKAGE_DIR,
        f"--mode={mode}",
        f"--parent-pid={os.getpid()}",
        f"--address-space={address_space}",
        f"--cpu-seconds={max(1, int(limits.cpu_seconds))}",
        f"--file-size={limits.file_size}",
        f"--open-files={limits.open_files}",
        *extra,
    ]


@dataclass(frozen=True, slots=True)
class _Outcome:
    stdout: bytes
    stderr: bytes
    pid: int


#: The pid (= process group) of the last child started; the tests check
#: that nothing of it is left.
_last_child_pid: int | None = None


def _stderr_tail(stderr: bytes | bytearray) -> str:
    text = stderr[-_STDERR_TAIL:].decode("utf-8", "replace").strip()
    return text


def _run_child(
    argv: list[str],
    data: bytes | Iterable[Piece],
    timeout: float,
    *,
    max_stdout: int,
    pass_fds: tuple[int, ...] = (),
    follow: Callable[[int], None] | None = None,
) -> _Outcome:
    """Run the worker to completion; raise SandboxError for any unclean end.

    Feeds ``data`` (bytes, or pieces of bytes made only as the pipe takes
    them: the child starts while the rest is being made) to its stdin and
    collects its stdout (at most ``max_stdout`` bytes: more kills it) and the
    tail of its stderr, all within ``timeout`` seconds of wall-clock time;
    ``follow(pid)`` is called at least every few milliseconds meanwhile.
    Whatever happens, the child's whole process group is killed before this
    returns.
    """
    global _last_child_pid
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={},
            cwd="/",
            start_new_session=True,
            close_fds=True,
            pass_fds=pass_fds,
        )
    except OSError as exc:
        raise SandboxError(f"cannot start the sandboxed child: {exc}") from exc
    _last_child_pid = proc.pid
    stderr = bytearray()
    try:
        pieces = iter((data,) if isinstance(data, bytes) else data)
        stdout = _exchange(proc, pieces, timeout, max_stdout, stderr, follow)
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    finally:
        # Anything the child left behind in its group goes with it.
        _kill_group(proc.pid)
    code = proc.returncode
    tail = _stderr_tail(stderr)
    if code < 0:
        signum = -code
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        meaning = _SIGNAL_MEANING.get(signum, f"killed by {name}")
        raise SandboxError(f"sandboxed child {meaning}" + (f"; stderr: {tail}" if tail else ""))
    if code == _EXIT_REJECTED:
        last = tail.splitlines()[-1] if tail else "input rejected"
        raise ValidationError(last.removeprefix("rejected: "))
    if code != 0:
        hint = ""
        if "MemoryError" in tail or "Cannot allocate memory" in tail:
            limit = next(
                (a.partition("=")[2] for a in argv if a.startswith("--address-space=")), ""
            )
            size = f" {limit} bytes" if limit.isdigit() else ""
            hint = f" [address-space limit{size}: see SandboxLimits.address_space]"
        failure = SandboxError(
            f"sandboxed child failed with exit status {code}" + (f": {tail}" if tail else "") + hint
        )
        # The child's own OSError, when that is what ended it (a full disk
        # under the output, say): its errno, for the caller to act on.
        found = _CHILD_ERRNO.search(tail.splitlines()[-1]) if tail else None
        failure.errno = int(found.group(1)) if found else None
        raise failure
    return _Outcome(stdout, bytes(stderr), proc.pid)


_CHILD_ERRNO = re.compile(r"\[Errno (\d+)\]")


def _exchange(
    proc: subprocess.Popen[bytes],
    pieces: Iterator[Piece],
    timeout: float,
    max_stdout: int,
    stderr: bytearray,
    follow: Callable[[int], None] | None = None,
) -> bytes:
    """Write stdin, read stdout and stderr, wait for the exit; return stdout."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    stdout = bytearray()
    pending = memoryview(b"")
    ahead = _Ahead(pieces)
    stdin_fd = proc.stdin.fileno()
    streams = {proc.stdout.fileno(): stdout, proc.stderr.fileno(): stderr}
    with selectors.DefaultSelector() as selector:
        os.set_blocking(stdin_fd, False)
        try:
            fcntl.fcntl(stdin_fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # a lower /proc/sys/fs/pipe-max-size: the default size works too
        selector.register(stdin_fd, selectors.EVENT_WRITE)
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _timed_out(proc, timeout, stderr)
            # While the pipe is full (the child starting, or busy), make the
            # next pieces instead of waiting.
            wait = remaining if follow is None else min(remaining, _FOLLOW_TICK)
            ready = selector.select(0 if ahead.can_make() else wait)
            if not ready and ahead.can_make():
                ahead.make()
            if follow is not None:
                follow(proc.pid)
            for key, _ in ready:
                fd = key.fd
                if fd == stdin_fd:
                    if not pending:
                        piece = ahead.take()
                        if piece is None:  # all written
                            selector.unregister(fd)
                            proc.stdin.close()
                            continue
                        pending = memoryview(piece)
                    try:
                        pending = pending[os.write(fd, pending[:_PIPE_SIZE]) :]
                    except BlockingIOError:
                        pass
                    except BrokenPipeError:  # the child stopped reading
                        selector.unregister(fd)
                        proc.stdin.close()
                        ahead.stop()
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    selector.unregister(fd)
                    continue
                buffer = streams[fd]
                buffer += chunk
                if buffer is stderr and len(stderr) > 4 * _STDERR_TAIL:
                    del stderr[: -2 * _STDERR_TAIL]
                elif buffer is stdout and len(stdout) > max_stdout:
                    raise SandboxError(
                        f"sandboxed child wrote more than {max_stdout} bytes to stdout"
                    )
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise _timed_out(proc, timeout, stderr) from None
    proc.stdout.close()
    proc.stderr.close()
    return bytes(stdout)


class _Ahead:
    """The pieces for a child's stdin, made up to _AHEAD_BYTES ahead of the pipe."""

    __slots__ = ("pieces", "queue", "queued", "done")

    def __init__(self, pieces: Iterator[Piece]) -> None:
        self.pieces = pieces
        self.queue: deque[Piece] = deque()
        self.queued = 0
        self.done = False

    def can_make(self) -> bool:
        return not self.done and self.queued < _AHEAD_BYTES

    def make(self) -> None:
        piece = next(self.pieces, None)
        if piece is None:
            self.done = True
        else:
            self.queue.append(piece)
            self.queued += len(piece)

    def take(self) -> Piece | None:
        """The next piece (made now if none is ready), or None after the last."""
        if not self.queue and not self.done:
            self.make()
        if not self.queue:
            return None
        piece = self.queue.popleft()
        self.queued -= len(piece)
        return piece

    def stop(self) -> None:
        self.done = True
        self.queue.clear()


def _timed_out(proc: subprocess.Popen[bytes], timeout: float, stderr: bytearray) -> SandboxError:
    _kill_group(proc.pid)
    proc.wait()
    tail = _stderr_tail(bytes(stderr))
    return SandboxError(
        f"sandboxed child timed out after {timeout:g} s and was killed"
        + (f"; stderr: {tail}" if tail else "")
    )


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _first_line(stdout: bytes) -> tuple[dict[str, Any], bytes]:
    line, sep, rest = stdout.partition(b"\n")
    if not sep:
        raise SandboxError("sandboxed child sent no report")
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise SandboxError(f"sandboxed child sent a malformed report: {exc}") from None
    if not isinstance(record, dict):
        raise SandboxError("sandboxed child sent a malformed report")
    return record, rest


def _check_image(
    fd: int,
    start: int,
    end: int,
    min_version: int,
    max_version: int,
    follower: _Follower | None = None,
) -> bytes:
    """Check the written image's headers; return its fs-verity digest (what
    ``follower`` hashed while the child wrote, then the rest)."""
    size = end - start
    if size < EROFS_SUPER_OFFSET + _EROFS_SUPER_SIZE:
        raise SandboxError(f"sandboxed child wrote {size} bytes: too short for an image")
    head = os.pread(fd, EROFS_SUPER_OFFSET + 4, start)
    magic, version, _flags, composefs_version = _HEADER.unpack_from(head, 0)
    if magic != LCFS_EROFS_MAGIC:
        raise SandboxError(f"sandboxed child wrote no composefs header (magic 0x{magic:08x})")
    if version != _LCFS_VERSION:
        raise SandboxError(f"sandboxed child wrote header version {version}")
    if not min_version <= composefs_version <= max_version:
        raise SandboxError(
            f"sandboxed child wrote format version {composefs_version}, "
            f"outside {min_version}..{max_version}"
        )
    (erofs_magic,) = struct.unpack_from("<I", head, EROFS_SUPER_OFFSET)
    if erofs_magic != EROFS_SUPER_MAGIC_V1:
        raise SandboxError("sandboxed child wrote no EROFS superblock")
    return (follower or _Follower(fd, start)).digest(end)


#: How often (seconds) the parent looks at how far the child's output is.
_FOLLOW_TICK = 0.005
#: The least the child's output grows before the parent hashes more of it.
_FOLLOW_STEP = 1 << 20
#: The most the parent hashes at a time while the child runs (the exchange
#: with the child waits meanwhile).
_FOLLOW_MAX = 4 << 20


class _Follower:
    """The fs-verity digest of the child's output, hashed as it is written.

    Under the native engine's seccomp policy the child can only append to
    the output: it has ``write`` at the offset it shares with the parent,
    and no ``lseek``, ``pwrite``, ``ftruncate``, ``fallocate``, nor a
    mapping of the file.  A byte before that offset is then final once it
    is there, so while the child runs the parent hashes up to the offset
    (:meth:`follow`), and after its exit only the rest (:meth:`digest`).
    This holds only once the filter is in place: the child writes output
    only after its lockdown, so at its first output byte its
    ``/proc/PID/status`` must say ``Seccomp: 2``, else (seccomp unavailable
    on this kernel) nothing is hashed before the exit.  The mkcomposefs
    engine may seek: it never follows.
    """

    __slots__ = ("fd", "hashed", "hasher", "trusted")

    def __init__(self, fd: int, start: int) -> None:
        self.fd = fd
        self.hashed = start
        self.hasher = FsverityHasher()
        #: None until the child's first output byte, then whether it is filtered.
        self.trusted: bool | None = None

    def follow(self, pid: int, offset_fd: int) -> None:
        """Hash more of what lies before the shared offset of ``offset_fd``."""
        if self.trusted is False:
            return
        offset = os.lseek(offset_fd, 0, os.SEEK_CUR)
        if offset - self.hashed < _FOLLOW_STEP:
            return
        if self.trusted is None:
            self.trusted = _seccomp_filtered(pid)
            if not self.trusted:
                return
        self._feed(min(offset, self.hashed + _FOLLOW_MAX))

    def digest(self, end: int) -> bytes:
        """The digest of the output up to ``end``, hashing what is left."""
        if end < self.hashed:
            raise SandboxError("the output file shrank while it was checked")
        self._feed(end)
        return self.hasher.digest()

    def _feed(self, end: int) -> None:
        while self.hashed < end:
            chunk = os.pread(self.fd, min(1 << 20, end - self.hashed), self.hashed)
            if not chunk:
                raise SandboxError("the output file shrank while it was checked")
            self.hasher.update(chunk)
            self.hashed += len(chunk)


def _seccomp_filtered(pid: int) -> bool:
    """Whether the process ``pid`` runs under a seccomp filter (mode 2)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            return b"\nSeccomp:\t2\n" in status.read()
    except OSError:
        return False


def write_image_sandboxed(
    tree: Tree,
    fd: int,
    *,
    min_version: int = 0,
    max_version: int = 1,
    timeout: float | None = None,
    limits: SandboxLimits | None = None,
    _engine: str = "auto",
    _mkcomposefs: str | None = None,
    _fault: str | None = None,
) -> bytes:
    """Write the image of ``tree`` to ``fd`` from a sandboxed child; return its digest.

    ``fd`` is written from its current position; it is left open.  On any
    failure it is truncated back to that position (for a regular file) and
    :class:`SandboxError` is raised.  ``timeout`` overrides
    ``limits.timeout``.  The returned digest is the image's fs-verity
    digest, checked by the parent against the bytes written.

    The child writes with the compiled module when it imports, else with
    ``mkcomposefs --from-file`` (the path from ``find_mkcomposefs()``).
    ``_engine``, ``_mkcomposefs`` and ``_fault`` are for the tests only.
    """
    check_versions(min_version, max_version)
    limits = limits or SandboxLimits()
    if timeout is not None:
        limits = replace(limits, timeout=timeout)
    engine = _choose_engine(_engine)
    if engine == "native" and _native is None:
        raise BackendUnavailableError(
            "the sandbox's native engine needs the compiled module composefs_py._lcfs"
        )
    extra = [f"--min-version={min_version}", f"--max-version={max_version}", f"--engine={engine}"]
    if engine == "mkcomposefs":
        tool = _mkcomposefs or find_mkcomposefs()
        if tool is None:
            raise BackendUnavailableError(
                "the sandbox needs the compiled module or mkcomposefs, and neither is available"
            )
        extra.append(f"--mkcomposefs={os.path.realpath(tool)}")
    if _fault is not None:
        extra.append(f"--fault={_fault}")

    if stat.S_ISREG(os.fstat(fd).st_mode):
        return _write_to_file(fd, tree, limits, extra, min_version, max_version, engine)
    # A pipe or socket: nothing may reach it before the checks pass, so the
    # child writes to an unlinked temporary file that is copied afterwards.
    with tempfile.TemporaryFile(prefix="composefs-py-sandbox-") as tmp:
        digest = _write_to_file(tmp.fileno(), tree, limits, extra, min_version, max_version, engine)
        size = os.lseek(tmp.fileno(), 0, os.SEEK_END)
        offset = 0
        while offset < size:
            chunk = os.pread(tmp.fileno(), min(1 << 20, size - offset), offset)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            offset += len(chunk)
    return digest


def _child_input(
    tree: Tree, limits: SandboxLimits, engine: str, records_fd: int
) -> Iterator[Piece]:
    """What the writing child reads on stdin, made as it takes it.

    Native engine: the records (:func:`_records`) go into the memfd
    ``records_fd``, framed (:func:`_framed`) and sealed, while the child
    starts; then its stdin gets only its address-space limit, the sign that
    it may map them.  mkcomposefs engine: the limit, then the Tree's
    dumpfile (the rest of stdin is mkcomposefs's).
    """
    if engine == "mkcomposefs":
        from .dumpfile import dump_bytes

        text = dump_bytes(tree)
        yield LIMIT_HEADER.pack(limits.address_space_for(len(text)))
        yield text
        return
    records = _records(tree)
    pieces = _framed(len(tree), records)
    del records
    _write_sealed(records_fd, pieces)
    # The child maps what it is told: the bound covers the file it maps.
    size = sum(map(len, pieces))
    del pieces
    yield LIMIT_HEADER.pack(limits.address_space_for(size + _RECORD_OVERHEAD * len(tree)))


def _framed(count: int, buffers: Sequence[Piece]) -> list[Piece]:
    """The records file's pieces: :data:`~composefs_py._worker.RECORDS_HEADER`,
    then each buffer followed by the zeros that pad it to a multiple of 8."""
    pieces: list[Piece] = [RECORDS_HEADER.pack(count, *map(len, buffers))]
    for buffer in buffers:
        pieces.append(buffer)
        if padded(len(buffer)) != len(buffer):
            pieces.append(bytes(padded(len(buffer)) - len(buffer)))
    return pieces


def _records_memfd() -> int:
    """An empty memfd for the records (close-on-exec: passed by pass_fds only)."""
    return os.memfd_create("composefs-py-records", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)


def _write_sealed(fd: int, pieces: Iterable[Piece]) -> None:
    """Write ``pieces`` to the memfd ``fd`` and seal it (RECORDS_SEALS): from
    then on neither side can change what the child checks and reads."""
    for piece in pieces:
        write_all(fd, piece)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, RECORDS_SEALS)


def _records(tree: Tree) -> list[memoryview]:
    """The buffers the native backend hands libcomposefs for ``tree``, in
    the order of :data:`~composefs_py._worker.RECORD_PARTS`, as bytes.

    Made once, by the native backend's own code (``_native._Columns``: a
    Tree built in bulk is gathered in Tree order by C, with no Python object
    per node); the child checks their framing and hands them to the same C
    builder.  ``extra_lens`` is always there ((-1, 0, 0) per entry without
    content, digest or xattrs).
    """
    columns = _native._Columns(tree)
    extra_lens = columns.extra_lens
    if extra_lens is None:
        extra_lens = array("q", (-1, 0, 0)) * len(tree)
    buffers = (
        columns.paths,
        columns.path_lens,
        columns.ints,
        columns.data,
        columns.data_lens,
        columns.links,
        columns.extra,
        extra_lens,
        columns.xattr_lens,
    )
    return [memoryview(buffer).cast("B") for buffer in buffers]


def _write_to_file(
    fd: int,
    tree: Tree,
    limits: SandboxLimits,
    extra: list[str],
    min_version: int,
    max_version: int,
    engine: str,
) -> bytes:
    start = os.lseek(fd, 0, os.SEEK_CUR)
    # The child gets its own number (>= 3) for the same open file: writes
    # through it move this offset too.
    child_fd = os.dup(fd)
    # The native engine's records go by a sealed memfd (the mkcomposefs
    # engine's dumpfile by stdin: nothing more reaches the tool).
    records_fd = _records_memfd() if engine == "native" else -1
    passed = (child_fd, records_fd) if engine == "native" else (child_fd,)
    reader = -1
    try:
        reader = _reader(fd)
        follower = _Follower(reader, start)
        argv = _worker_argv(
            "write",
            limits,
            None,
            [
                *extra,
                f"--fd={child_fd}",
                f"--records-fd={records_fd}",
                f"--prefault={_prefault_bytes(len(tree), limits)}",
            ],
        )
        try:
            outcome = _run_child(
                argv,
                _child_input(tree, limits, engine, records_fd),
                limits.timeout,
                max_stdout=1 << 16,
                pass_fds=passed,
                follow=(lambda pid: follower.follow(pid, fd)) if engine == "native" else None,
            )
            record, _ = _first_line(outcome.stdout)
            end = os.lseek(fd, 0, os.SEEK_CUR)
            actual = _check_image(reader, start, end, min_version, max_version, follower)
            reported = record.get("digest")
            if engine == "native" and reported != actual.hex():
                raise SandboxError(
                    f"sandboxed child reported digest {reported!r}, "
                    f"but the image written has {actual.hex()}"
                )
        except BaseException:
            _truncate(fd, start)
            raise
    finally:
        if reader not in (-1, fd):
            os.close(reader)
        if records_fd >= 0:
            os.close(records_fd)
        os.close(child_fd)
    return actual


#: What the child may touch of its heap ahead, per entry (measured: its
#: heap grows about 840 bytes per generated TOC entry; touching more than
#: it uses costs the zeroing and the exit) and at most.
_PREFAULT_PER_ENTRY = 768
_PREFAULT_MAX = 1 << 30


def _prefault_bytes(entries: int, limits: SandboxLimits) -> int:
    """How much of its heap the writing child touches while it waits: what
    the Tree is likely to take, at most 1 GiB, at most half a limit the
    caller set (the default limit is above it: 32 bytes per byte of the
    records, which take over 100 bytes per entry)."""
    most = _PREFAULT_MAX
    if limits.address_space is not None:
        most = min(most, limits.address_space // 2)
    return min(most, _PREFAULT_PER_ENTRY * entries)


def _reader(fd: int) -> int:
    """``fd`` if it can be read, else it reopened for reading (the caller closes that)."""
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY:
        return fd
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(
            f"cannot check the image: the output fd is write-only and cannot be reopened ({exc})"
        ) from exc


def _truncate(fd: int, start: int) -> None:
    try:
        os.ftruncate(fd, start)
        os.lseek(fd, start, os.SEEK_SET)
    except OSError:
        pass


def _choose_engine(engine: str) -> str:
    if engine == "auto":
        return "native" if _native is not None else "mkcomposefs"
    if engine not in ("native", "mkcomposefs"):
        raise ValueError(f"unknown sandbox engine {engine!r}")
    return engine


def read_image_sandboxed(
    data: bytes | bytearray | memoryview,
    *,
    timeout: float | None = None,
    limits: SandboxLimits | None = None,
    tree_limits: Limits | None = None,
) -> Tree:
    """Parse the untrusted composefs image ``data`` in a sandboxed child.

    The child answers with a dumpfile; the parent parses it with
    :func:`~composefs_py.dumpfile.parse_dumpfile` under ``tree_limits``
    (default ``Limits()``, as applied to images), so what comes back is
    validated like any other untrusted input.  An image libcomposefs or the
    validators reject raises :class:`ValidationError`; a crash, limit or
    timeout :class:`SandboxError`.
    """
    if not _native is not None:
        raise BackendUnavailableError(
            "reading an image in the sandbox needs the compiled module composefs_py._lcfs"
        )
    limits = limits or SandboxLimits()
    if timeout is not None:
        limits = replace(limits, timeout=timeout)
    raw = bytes(data)
    argv = _worker_argv("read", limits, len(raw))
    outcome = _run_child(argv, raw, limits.timeout, max_stdout=limits.max_output)
    _, text = _first_line(outcome.stdout)
    parse_limits = (tree_limits or Limits()).for_images()
    if len(text) > parse_limits.max_input_bytes:
        parse_limits = replace(parse_limits, max_input_bytes=len(text))
    return parse_dumpfile(text, limits=parse_limits)


def sandbox_info(*, limits: SandboxLimits | None = None) -> dict[str, bool | str]:
    """Which protections the sandboxed child gets on this machine.

    Runs a child that applies every lockdown step and checks each from
    inside (its rlimits, ``NoNewPrivs`` and capability sets from
    /proc/self/status, its namespace inodes against the parent's, that
    Landlock denies opening a file, seccomp mode 2).  Keys: ``rlimits``,
    ``no_new_privs``, ``capabilities_dropped``, ``user_namespace``,
    ``net_namespace``, ``ipc_namespace``, ``mnt_namespace``, ``empty_root``, ``landlock``,
    ``seccomp`` (True when active and verified), plus ``landlock_abi``,
    ``native_engine``, ``mkcomposefs`` and ``startup_seconds`` as strings.
    """
    limits = limits or SandboxLimits()
    details = _probe(limits)
    report = details["lockdown"]
    probe = details["probe"]
    status_caps = probe["status_after_capabilities"]
    status_final = probe["status_after_seccomp"]
    rlimits = probe["rlimits"]
    mine = _namespace_ids()
    info: dict[str, bool | str] = {
        "rlimits": rlimits["CORE"] == [0, 0]
        and rlimits["AS"][0] <= limits.address_space_for(0)
        and rlimits["CPU"][0] <= limits.cpu_seconds
        and rlimits["FSIZE"][0] <= limits.file_size
        and rlimits["NOFILE"][0] <= limits.open_files,
        "no_new_privs": status_final.get("NoNewPrivs") == "1",
        "capabilities_dropped": all(
            int(status_caps.get(key, "1"), 16) == 0
            for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
        ),
    }
    for name in ("user", "net", "ipc", "mnt"):
        child_ns = probe["namespaces"].get(name, "")
        info[f"{name}_namespace"] = (
            report.get(f"{name}_namespace") == "new"
            and bool(child_ns)
            and child_ns != mine.get(name)
        )
    info["empty_root"] = report.get("empty_root") == "active" and probe["root_entries"] == []
    info["landlock"] = probe["landlock_open_passwd_in_etc_fd"] == "denied: Permission denied"
    info["landlock_abi"] = str(report.get("landlock"))
    info["seccomp"] = report.get("seccomp") == "active" and status_final.get("Seccomp") == "2"
    info["native_engine"] = "yes" if details.get("native") else "no"
    info["mkcomposefs"] = find_mkcomposefs() or "not found"
    info["startup_seconds"] = f"{details['seconds']:.3f}"
    return info


def _probe(limits: SandboxLimits) -> dict[str, Any]:
    """Run the worker in info mode; return its raw report (tests read it)."""
    argv = _worker_argv("info", limits, 0)
    began = time.monotonic()
    outcome = _run_child(argv, b"", limits.timeout, max_stdout=1 << 20)
    record, _ = _first_line(outcome.stdout)
    record["seconds"] = time.monotonic() - began
    record["pid"] = outcome.pid
    return record


def _namespace_ids() -> dict[str, str]:
    ids = {}
    for name in ("user", "net", "ipc", "mnt"):
        try:
            ids[name] = os.readlink(f"/proc/self/ns/{name}")
        except OSError:
            ids[name] = ""
    return ids
