"""User namespaces for ID-mapped mounts (``composefs-py mount --uidmap``).

Imported by the ``mount`` command only: ``import composefs_py.cli`` does not
pay for ctypes, dataclasses and contextlib.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .cli import CommandError

__all__ = ["IdRange", "process_userns", "user_namespace"]


_ID_LIMIT = 1 << 32  # ids are u32; the kernel keeps first + count below it
_MAX_RANGES = 340  # what the kernel accepts per map
_IDENTITY_MAP = "0 0 4294967295\n"  # the initial namespace's map
_CLONE_NEWUSER = 0x10000000


@dataclass(frozen=True, slots=True)
class IdRange:
    """One line of a uid or gid map: ``count`` ids from ``inside`` appear as
    the ids from ``outside`` (``C:H:N`` on the command line)."""

    inside: int
    outside: int
    count: int

    @classmethod
    def parse(cls, text: str) -> IdRange:
        """``"C:H:N"`` -> IdRange; ValueError for a malformed one."""
        parts = text.split(":")
        if len(parts) != 3 or not all(part.isdigit() and part.isascii() for part in parts):
            raise ValueError(f"{text!r}: expected C:H:N (container id, host id, count; decimal)")
        inside, outside, count = (int(part) for part in parts)
        return cls(inside, outside, count)

    def __str__(self) -> str:
        return f"{self.inside}:{self.outside}:{self.count}"


def _map_text(ranges: Sequence[IdRange], what: str) -> str:
    """The ``/proc/PID/{what}`` text for ``ranges``; CommandError when invalid."""
    if len(ranges) > _MAX_RANGES:
        raise CommandError(f"--{what}: at most {_MAX_RANGES} ranges, got {len(ranges)}")
    for id_range in ranges:
        if id_range.count == 0:
            raise CommandError(f"--{what} {id_range}: the count must be at least 1")
        for side, first in (("container", id_range.inside), ("host", id_range.outside)):
            if first + id_range.count >= _ID_LIMIT:
                raise CommandError(
                    f"--{what} {id_range}: {side} ids {first}..{first + id_range.count - 1} "
                    f"go beyond {_ID_LIMIT - 2}"
                )
    for side in ("inside", "outside"):
        spans = sorted(ranges, key=lambda id_range: int(getattr(id_range, side)))
        for low, high in itertools.pairwise(spans):
            if getattr(high, side) < getattr(low, side) + low.count:
                where = "container" if side == "inside" else "host"
                raise CommandError(f"--{what} {low} and {high}: their {where} ids overlap")
    return "".join(f"{r.inside} {r.outside} {r.count}\n" for r in ranges)


def _write_proc(pid: int, name: str, text: str, what: str) -> None:
    try:
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode("ascii"))  # one write: the kernel takes a map once
        finally:
            os.close(fd)
    except OSError as exc:
        reason = os.strerror(exc.errno or errno.EIO)
        if exc.errno == errno.EPERM:
            reason = "not permitted (mapping other ids needs CAP_SETUID/CAP_SETGID)"
        raise CommandError(f"{what}: the kernel refuses it: {reason}") from None


@contextlib.contextmanager
def user_namespace(
    uid_ranges: Sequence[IdRange] | None, gid_ranges: Sequence[IdRange] | None
) -> Iterator[int]:
    """A new user namespace with these maps; yields an fd of it (closed after).

    A forked child unshares ``CLONE_NEWUSER`` and waits; this process writes
    its ``uid_map`` and ``gid_map`` (a map not given is the identity), opens
    ``/proc/CHILD/ns/user`` and lets the child exit, reaping it before the
    namespace is used: the fd keeps the namespace alive, no process remains.
    """
    uid_text = _map_text(uid_ranges, "uidmap") if uid_ranges else _IDENTITY_MAP
    gid_text = _map_text(gid_ranges, "gidmap") if gid_ranges else _IDENTITY_MAP
    unshare = ctypes.CDLL(None, use_errno=True).unshare
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe work, then _exit
        status = 0
        try:
            os.close(ready_r)
            os.close(hold_w)
            if unshare(_CLONE_NEWUSER) != 0:
                os.write(ready_w, ctypes.get_errno().to_bytes(4, "little"))
                status = 1
            else:
                os.write(ready_w, b"\0\0\0\0")
                os.read(hold_r, 1)  # until the parent closes its end
        finally:
            os._exit(status)
    os.close(ready_w)
    os.close(hold_r)
    userns_fd = -1
    try:
        answer = os.read(ready_r, 4)
        code = int.from_bytes(answer, "little") if len(answer) == 4 else errno.ECHILD
        if code:
            raise CommandError(f"cannot create a user namespace: {os.strerror(code)}")
        _write_proc(pid, "uid_map", uid_text, f"uid map {uid_text.strip()!r}")
        _write_proc(pid, "setgroups", "deny", "setgroups")
        _write_proc(pid, "gid_map", gid_text, f"gid map {gid_text.strip()!r}")
        userns_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(hold_w)  # the child's read returns: it exits
        os.waitpid(pid, 0)
    try:
        yield userns_fd
    finally:
        os.close(userns_fd)


@contextlib.contextmanager
def process_userns(pid: int) -> Iterator[int]:
    """An fd of process ``pid``'s user namespace (closed after)."""
    try:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CommandError(f"--idmap-pid {pid}: no such process") from None
    except OSError as exc:
        raise CommandError(
            f"--idmap-pid {pid}: cannot open its user namespace: "
            f"{os.strerror(exc.errno or errno.EIO)}"
        ) from None
    try:
        yield fd
    finally:
        os.close(fd)
