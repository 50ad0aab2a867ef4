"""Process lockdown for the sandboxed writer child: rlimits, no_new_privs,
namespaces, capabilities, Landlock and a seccomp allowlist.

Written directly against the kernel ABI with :mod:`ctypes` (``prctl``,
``unshare``, ``capset`` from libc; Landlock by syscall number; the seccomp
filter is classic BPF built here), so the sandbox needs no library beyond
libc.  Only :mod:`composefs_py._worker` calls it, in a fresh child process:
every function here changes the calling process for good.

Each step raises :class:`LockdownError` when it fails in a way that must not
be ignored, or returns a short reason string when the kernel does not offer
the feature (the caller degrades and reports it).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import signal
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "LockdownError",
    "Rlimits",
    "SeccompPolicy",
    "apply_landlock",
    "apply_seccomp",
    "die_with_parent",
    "drop_capabilities",
    "enter_empty_root",
    "landlock_abi",
    "raise_stack_limit",
    "set_no_new_privs",
    "set_rlimits",
    "unshare_namespaces",
]


class LockdownError(OSError):
    """A lockdown step that must succeed failed."""


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_libc.unshare.restype = ctypes.c_int
_libc.unshare.argtypes = [ctypes.c_int]


def _fail(what: str) -> LockdownError:
    err = ctypes.get_errno()
    return LockdownError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return int(_libc.prctl(option, arg2, arg3, arg4, arg5))


# ---------------------------------------------------------------------------
# rlimits
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rlimits:
    """The resource limits the child sets on itself (soft = hard, except CPU)."""

    address_space: int
    cpu_seconds: int
    file_size: int
    open_files: int


def set_rlimits(limits: Rlimits) -> None:
    """Lower RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE; RLIMIT_CORE to 0.

    The CPU soft limit sends SIGXCPU; the hard limit one second later
    SIGKILL, should SIGXCPU be caught.  Limits only go down: a value above
    the current hard limit keeps the current one.
    """

    def lower(which: int, soft: int, hard: int) -> None:
        _, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))

    lower(resource.RLIMIT_CORE, 0, 0)
    lower(resource.RLIMIT_NOFILE, limits.open_files, limits.open_files)
    lower(resource.RLIMIT_FSIZE, limits.file_size, limits.file_size)
    lower(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1)
    lower(resource.RLIMIT_AS, limits.address_space, limits.address_space)


#: The stack the child's main thread may grow to: as much as the in-process
#: image reader's thread gets (composefs_py.writer._READER_STACK).
#: libcomposefs's loader recurses once per directory level, and the 2048
#: levels the model allows overflow the default 8 MiB near level 950.
CHILD_STACK = 64 << 20


def raise_stack_limit(size: int = CHILD_STACK) -> int:
    """Raise RLIMIT_STACK's soft limit to ``size`` (at most the hard limit); return it.

    The kernel checks the limit each time the main thread's stack grows, so
    raising it in a running process takes effect at once (no thread, no
    clone(), which the seccomp allowlist does not grant).  Room is there:
    at exec the kernel placed the mmap area at least 128 MiB below the
    stack.  Address space the stack uses counts against RLIMIT_AS as before.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if hard != resource.RLIM_INFINITY:
        size = min(size, hard)
    if soft == resource.RLIM_INFINITY or soft >= size:
        return soft
    resource.setrlimit(resource.RLIMIT_STACK, (size, hard))
    return size


# ---------------------------------------------------------------------------
# no_new_privs, namespaces, capabilities
# ---------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECUREBITS = 28
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# SECBIT_NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE and KEEP_CAPS off,
# each locked: root gains nothing on exec, ever again.
_SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

NAMESPACES: dict[str, int] = {
    "user": CLONE_NEWUSER,
    "net": CLONE_NEWNET,
    "ipc": CLONE_NEWIPC,
    "mnt": CLONE_NEWNS,
}


def die_with_parent(parent_pid: int) -> None:
    """Be killed (SIGKILL) when the parent exits, so no child outlives its caller.

    Safe here because the parent's calling thread waits for the child; a
    parent already gone (``getppid()`` changed) is an error.
    """
    if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise _fail("prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:
        raise LockdownError(errno.ESRCH, "the parent exited before the child started")


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: no exec can ever grant privileges again."""
    if _prctl(PR_SET_NO_NEW_PRIVS, 1) != 0:
        raise _fail("prctl(PR_SET_NO_NEW_PRIVS)")
    # Not dumpable: no ptrace attach from other processes of the same uid.
    _prctl(PR_SET_DUMPABLE, 0)


def unshare_namespaces() -> dict[str, str]:
    """Enter new user, network, IPC and mount namespaces where the kernel allows.

    Tries all four at once (an unprivileged user namespace makes the others
    possible), then each alone.  Returns ``{name: "new" | reason}``.
    """
    every = 0
    for flag in NAMESPACES.values():
        every |= flag
    if _libc.unshare(every) == 0:
        return {name: "new" for name in NAMESPACES}
    result: dict[str, str] = {}
    for name, flag in NAMESPACES.items():
        if _libc.unshare(flag) == 0:
            result[name] = "new"
        else:
            result[name] = f"unavailable: {os.strerror(ctypes.get_errno())}"
    return result


_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REC = 1 << 14
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# An existing directory to mount the empty root on (any will do).
_MOUNTPOINTS = ("/tmp", "/mnt", "/run", "/dev", "/proc")


def enter_empty_root() -> str:
    """Make the root directory an empty, read-only tmpfs; return "active" or why not.

    Only call this in a new mount namespace (it must not touch the caller's
    mounts) while still holding CAP_SYS_ADMIN in it: every mount is made
    private, a tmpfs is mounted, ``pivot_root`` makes it ``/`` and the old
    root is detached.  Path-based calls that Landlock does not govern
    (``stat``, ``access``, ``readlink``) then find nothing at all.
    """
    pivot_root = _SYS_PIVOT_ROOT.get(platform.machine())
    if pivot_root is None:
        return f"unavailable: no pivot_root number for {platform.machine()}"
    mountpoint = next((d for d in _MOUNTPOINTS if os.path.isdir(d)), None)
    if mountpoint is None:
        return "unavailable: no directory to mount on"
    if _libc.mount(None, b"/", None, ctypes.c_ulong(_MS_REC | _MS_PRIVATE), None) != 0:
        return f"unavailable: make mounts private: {os.strerror(ctypes.get_errno())}"
    flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if (
        _libc.mount(
            b"tmpfs", mountpoint.encode(), b"tmpfs", ctypes.c_ulong(flags), b"size=4k,mode=0555"
        )
        != 0
    ):
        return f"unavailable: mount tmpfs: {os.strerror(ctypes.get_errno())}"
    os.chdir(mountpoint)
    if _libc.syscall(ctypes.c_long(pivot_root), b".", b".") != 0:
        raise _fail("pivot_root")
    if _libc.umount2(b".", _MNT_DETACH) != 0:
        raise _fail("umount2(old root)")
    os.chdir("/")
    return "active"


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


def drop_capabilities() -> None:
    """Empty the bounding, ambient, inheritable, permitted and effective sets.

    Run after :func:`unshare_namespaces`: entering a new user namespace gives
    the process every capability inside it, which this removes again.
    """
    last = _last_cap()
    # Clearing the bounding set needs CAP_SETPCAP, so it comes first.
    for cap in range(last + 1):
        if _prctl(PR_CAPBSET_DROP, cap) != 0 and ctypes.get_errno() not in (
            errno.EINVAL,
            errno.EPERM,
        ):
            raise _fail(f"prctl(PR_CAPBSET_DROP, {cap})")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    _prctl(PR_SET_SECUREBITS, _SECUREBITS)  # needs CAP_SETPCAP; best effort
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise _fail("capset")


# ---------------------------------------------------------------------------
# Landlock
# ---------------------------------------------------------------------------

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
_LANDLOCK_RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
# Filesystem access rights each Landlock ABI version knows.
_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_NET_RIGHTS = (1 << 0) | (1 << 1)  # BIND_TCP, CONNECT_TCP (ABI 4)
_SCOPES = (1 << 0) | (1 << 1)  # ABSTRACT_UNIX_SOCKET, SIGNAL (ABI 6)
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (1 << 14) | (1 << 15)


def landlock_abi() -> int | str:
    """The kernel's Landlock ABI version, or why there is none."""
    abi = _libc.syscall(
        ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET),
        None,
        ctypes.c_long(0),
        ctypes.c_long(_LANDLOCK_CREATE_RULESET_VERSION),
    )
    if abi < 0:
        err = ctypes.get_errno()
        return f"unavailable: {os.strerror(err)}"
    return int(abi)


def _fs_rights(abi: int) -> int:
    return _FS_RIGHTS_BY_ABI[max(v for v in _FS_RIGHTS_BY_ABI if v <= abi)]


def apply_landlock(read_paths: Iterable[str] = (), exec_paths: Iterable[str] = ()) -> int | str:
    """Restrict the process to no filesystem access at all, except as given.

    Every filesystem right the kernel knows is handled (ABI 4+: TCP bind and
    connect too; ABI 6+: abstract unix sockets and signals scoped), and no
    rule grants anything unless ``read_paths`` (read files beneath) or
    ``exec_paths`` (read and execute the file) are given.  Returns the ABI
    version applied, or why Landlock is unavailable.  Needs no_new_privs.
    """
    abi = landlock_abi()
    if isinstance(abi, str):
        return abi
    attr = struct.pack(
        "<QQQ",
        _fs_rights(abi),
        _NET_RIGHTS if abi >= 4 else 0,
        _SCOPES if abi >= 6 else 0,
    )
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _libc.syscall(
        ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), buf, ctypes.c_long(size), ctypes.c_long(0)
    )
    if ruleset < 0:
        raise _fail("landlock_create_ruleset")
    try:
        rights = _fs_rights(abi)
        for path, allowed in [
            *((p, FS_READ_FILE) for p in read_paths),
            *((p, FS_READ_FILE | FS_EXECUTE) for p in exec_paths),
        ]:
            _add_path_rule(int(ruleset), path, allowed & rights)
        if (
            _libc.syscall(
                ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_long(ruleset), ctypes.c_long(0)
            )
            != 0
        ):
            raise _fail("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _add_path_rule(ruleset: int, path: str, allowed: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            allowed &= _FILE_RIGHTS
        rule = ctypes.create_string_buffer(struct.pack("<Qi", allowed, fd), 12)
        if (
            _libc.syscall(
                ctypes.c_long(_SYS_LANDLOCK_ADD_RULE),
                ctypes.c_long(ruleset),
                ctypes.c_long(_LANDLOCK_RULE_PATH_BENEATH),
                rule,
                ctypes.c_long(0),
            )
            != 0
        ):
            raise _fail(f"landlock_add_rule({path})")
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# seccomp
# ---------------------------------------------------------------------------

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
_X32_SYSCALL_BIT = 0x40000000

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_JEQ_K = 0x05 | 0x10 | 0x00
_BPF_JGE_K = 0x05 | 0x30 | 0x00
_BPF_JSET_K = 0x05 | 0x40 | 0x00
_BPF_RET_K = 0x06 | 0x00

_OFF_NR = 0
_OFF_ARCH = 4


def _off_arg_low(index: int) -> int:
    return 16 + 8 * index  # little-endian: the low 32 bits come first


_PROT_EXEC = 0x4

# Syscall numbers: <asm/unistd_64.h> (x86_64) and <asm-generic/unistd.h> (aarch64).
_X86_64 = {
    "read": 0, "write": 1, "open": 2, "close": 3, "stat": 4, "fstat": 5, "lstat": 6,
    "lseek": 8, "mmap": 9, "mprotect": 10, "munmap": 11, "brk": 12, "rt_sigaction": 13,
    "rt_sigprocmask": 14, "rt_sigreturn": 15, "ioctl": 16, "pread64": 17, "pwrite64": 18,
    "readv": 19, "writev": 20, "access": 21, "sched_yield": 24, "mremap": 25, "madvise": 28,
    "dup": 32, "dup2": 33, "getpid": 39, "execve": 59, "exit": 60, "fcntl": 72,
    "sysinfo": 99, "getuid": 102, "getgid": 104, "geteuid": 107, "getegid": 108, "sigaltstack": 131,
    "arch_prctl": 158, "gettid": 186, "futex": 202, "sched_getaffinity": 204,
    "set_tid_address": 218, "restart_syscall": 219, "clock_gettime": 228,
    "clock_nanosleep": 230, "exit_group": 231, "tgkill": 234, "openat": 257,
    "newfstatat": 262, "faccessat": 269, "set_robust_list": 273, "dup3": 292,
    "prlimit64": 302, "getrandom": 318, "memfd_create": 319, "statx": 332, "rseq": 334,
    "faccessat2": 439,
}  # fmt: skip
_AARCH64 = {
    "read": 63, "write": 64, "close": 57, "fstat": 80, "newfstatat": 79, "lseek": 62,
    "mmap": 222, "mprotect": 226, "munmap": 215, "brk": 214, "rt_sigaction": 134,
    "rt_sigprocmask": 135, "rt_sigreturn": 139, "ioctl": 29, "pread64": 67, "pwrite64": 68,
    "readv": 65, "writev": 66, "sched_yield": 124, "mremap": 216, "madvise": 233,
    "dup": 23, "getpid": 172, "sysinfo": 179, "execve": 221, "exit": 93, "fcntl": 25, "getuid": 174,
    "getgid": 176, "geteuid": 175, "getegid": 177, "sigaltstack": 132, "gettid": 178,
    "futex": 98, "sched_getaffinity": 123, "set_tid_address": 96, "restart_syscall": 128,
    "clock_gettime": 113, "clock_nanosleep": 115, "exit_group": 94, "tgkill": 131,
    "openat": 56, "faccessat": 48, "set_robust_list": 99, "dup3": 24, "prlimit64": 261,
    "getrandom": 278, "memfd_create": 279, "statx": 291, "rseq": 293, "faccessat2": 439,
}  # fmt: skip

_ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (AUDIT_ARCH_X86_64, _X86_64),
    "aarch64": (AUDIT_ARCH_AARCH64, _AARCH64),
}

# What a Python interpreter that has finished importing needs to read
# stdin, run libcomposefs' writer or reader and write the result: memory,
# plain I/O on fds it already has, signals (abort()), time, exit.  Found with
# `strace -f` on the native write and read paths (tests/test_sandbox.py runs
# them all under the filter).
_BASE_ALLOW = (
    "read", "write", "readv", "writev", "pread64", "close",
    "fstat", "newfstatat", "statx", "fcntl", "dup", "brk", "munmap", "mremap", "madvise",
    "futex", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
    "clock_gettime", "clock_nanosleep", "sched_yield", "getrandom", "getpid", "gettid",
    "getuid", "getgid", "geteuid", "getegid", "restart_syscall", "exit", "exit_group",
    "sysinfo",  # glibc's qsort() asks for the amount of physical memory
)  # fmt: skip
# Called by Python's error paths (tracebacks read source files, isatty
# checks): answered with an errno rather than death.
_BASE_ERRNO = {"openat": errno.EACCES, "open": errno.EACCES, "stat": errno.EACCES,
               "lstat": errno.EACCES, "access": errno.EACCES, "faccessat": errno.EACCES,
               "faccessat2": errno.EACCES, "ioctl": errno.ENOTTY}  # fmt: skip
# Exec of mkcomposefs (the fallback engine): the dynamic loader's needs.
# Landlock, not seccomp, then limits what may be opened and executed.
_EXEC_ALLOW = (
    "execve", "openat", "access", "faccessat", "arch_prctl", "set_tid_address",
    "set_robust_list", "rseq", "prlimit64", "sched_getaffinity", "memfd_create", "dup2",
    "dup3", "ioctl", "lseek", "pwrite64",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SeccompPolicy:
    """A seccomp allowlist: ``exec_allowed`` adds what exec'ing mkcomposefs needs."""

    exec_allowed: bool = False


def _jump(code: int, k: int, jt: int, jf: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def _stmt(code: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, 0, 0, k)


def build_seccomp_filter(policy: SeccompPolicy, machine: str, pid: int) -> bytes:
    """The classic BPF program (``struct sock_filter[]``) for ``policy``.

    Wrong architecture (a 32-bit or x32 syscall): kill.  Allowed syscalls:
    allow; a few harmless ones Python's error paths make: an errno; anything
    else: kill the process (SIGSYS).  Without ``exec_allowed``, ``mmap`` may
    only map anonymous memory, neither it nor ``mprotect`` may make memory
    executable, there is no ``lseek`` or ``pwrite`` (the output fd is only
    appended to), and ``tgkill`` may only signal this process (``abort()``).
    """
    audit_arch, table = _ARCHES[machine]
    kill = SECCOMP_RET_KILL_PROCESS
    prog = [
        _stmt(_BPF_LD_W_ABS, _OFF_ARCH),
        _jump(_BPF_JEQ_K, audit_arch, 1, 0),
        _stmt(_BPF_RET_K, kill),
        _stmt(_BPF_LD_W_ABS, _OFF_NR),
    ]
    if machine == "x86_64":
        prog += [_jump(_BPF_JGE_K, _X32_SYSCALL_BIT, 0, 1), _stmt(_BPF_RET_K, kill)]

    def allow(name: str, action: int = SECCOMP_RET_ALLOW) -> None:
        nr = table.get(name)
        if nr is not None:
            prog.extend([_jump(_BPF_JEQ_K, nr, 0, 1), _stmt(_BPF_RET_K, action)])

    def guarded(name: str, checks: Sequence[tuple[int, int, int, bool]]) -> None:
        """Allow ``name`` only when every ``(arg, jump code, k, wanted)`` holds.

        Each check tests the low 32 bits of the argument; any failing one
        jumps to the kill at the end.  The block ends in returns, so the
        path that skips it still has the syscall number loaded.
        """
        nr = table.get(name)
        if nr is None:
            return
        body = []
        for i, (arg, code, k, wanted) in enumerate(checks):
            to_kill = 2 * (len(checks) - i - 1) + 1
            body.append(_stmt(_BPF_LD_W_ABS, _off_arg_low(arg)))
            body.append(_jump(code, k, 0, to_kill) if wanted else _jump(code, k, to_kill, 0))
        body += [_stmt(_BPF_RET_K, SECCOMP_RET_ALLOW), _stmt(_BPF_RET_K, kill)]
        prog.append(_jump(_BPF_JEQ_K, nr, 0, len(body)))
        prog.extend(body)

    for name in _BASE_ALLOW:
        allow(name)
    if policy.exec_allowed:
        for name in (*_EXEC_ALLOW, "mmap", "mprotect", "tgkill"):
            allow(name)
    else:
        # Anonymous, non-executable memory only: no mapping of the output
        # file (which would reach bytes before the child's start offset).
        guarded("mmap", [(2, _BPF_JSET_K, _PROT_EXEC, False), (4, _BPF_JEQ_K, 0xFFFFFFFF, True)])
        guarded("mprotect", [(2, _BPF_JSET_K, _PROT_EXEC, False)])
        guarded("tgkill", [(0, _BPF_JEQ_K, pid, True)])
    for name, err in _BASE_ERRNO.items():
        allow(name, SECCOMP_RET_ERRNO | err)
    prog.append(_stmt(_BPF_RET_K, kill))
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_machine() -> str | None:
    """The architecture name the filter supports here, or None."""
    machine = platform.machine()
    return machine if machine in _ARCHES else None


def apply_seccomp(policy: SeccompPolicy) -> str:
    """Install the allowlist filter; returns ``"active"`` or why it is unavailable.

    Needs no_new_privs.  Irreversible; inherited across exec.
    """
    machine = seccomp_machine()
    if machine is None:
        return f"unavailable: no syscall table for {platform.machine()}"
    code = build_seccomp_filter(policy, machine, os.getpid())
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        if err == errno.EINVAL:
            return f"unavailable: {os.strerror(err)}"
        raise _fail("prctl(PR_SET_SECCOMP)")
    return "active"
