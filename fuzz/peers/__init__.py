"""The peers the differential targets and tests run: podman's TOC path and mkcomposefs.

* containers/storage's ``unmarshalToc`` + ``GenerateDump`` (podman's TOC ->
  dumpfile code), built by ``../shared/peers/containers-storage/setup.sh``
  as ``.deps/cstorage/bin/cstorage-toc2dump`` (one TOC per process, ~10 ms
  a start) and by ``fuzz/peers/build-serve.sh`` as
  ``build/fuzz/peers/cstorage-toc2dump-serve`` (the same calls over many
  TOCs in one process: a pipe round trip per TOC).  :class:`TocPeer` uses
  the long-lived one when it is built, else a process per TOC.
* ``mkcomposefs --from-file - -`` (libcomposefs's own dumpfile parser, in
  the tool, not the library): the tool reads one input, so either a process
  per dumpfile or ``build/fuzz/peers/mkcomposefs-serve``
  (``fuzz/peers/build-mkcomposefs-serve.sh``): the tool's unmodified main
  compiled into a fork server, run in a forked child per dumpfile.
  :class:`MkcomposefsPeer` uses the fork server when it is built (for the
  libcomposefs it links, ``.deps/prefix``), else a process per dumpfile.

Each call returns a :class:`PeerResult`: the output (a dump or an image) or
the peer's refusal, and whether the peer crashed or hung (a finding).
Environment: ``COMPOSEFS_PY_CSTORAGE_PEER`` (the one-shot peer),
``COMPOSEFS_PY_CSTORAGE_SERVE`` and ``COMPOSEFS_PY_MKCOMPOSEFS_SERVE`` (the
long-lived ones, ``""`` to not use them), ``COMPOSEFS_PREFIX`` (where
``bin/mkcomposefs`` is looked for first).
"""

from __future__ import annotations

import atexit
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

__all__ = [
    "CSTORAGE_PEER",
    "CSTORAGE_SERVE",
    "MKCOMPOSEFS_SERVE",
    "MkcomposefsPeer",
    "PeerResult",
    "TocPeer",
    "find_mkcomposefs",
    "mkcomposefs_image",
    "peer_image",
]

_REPO = Path(__file__).resolve().parents[2]
#: The one-shot peer (``cstorage-toc2dump``).
CSTORAGE_PEER = Path(
    os.environ.get("COMPOSEFS_PY_CSTORAGE_PEER") or _REPO / ".deps/cstorage/bin/cstorage-toc2dump"
)
#: The long-lived peer (``cstorage-toc2dump-serve``; fuzz/peers/build-serve.sh).
CSTORAGE_SERVE = Path(
    os.environ.get("COMPOSEFS_PY_CSTORAGE_SERVE", "")
    or _REPO / "build/fuzz/peers/cstorage-toc2dump-serve"
)
_USE_SERVE = os.environ.get("COMPOSEFS_PY_CSTORAGE_SERVE") != ""
#: mkcomposefs's fork server (``mkcomposefs-serve``; fuzz/peers/build-mkcomposefs-serve.sh).
MKCOMPOSEFS_SERVE = Path(
    os.environ.get("COMPOSEFS_PY_MKCOMPOSEFS_SERVE", "")
    or _REPO / "build/fuzz/peers/mkcomposefs-serve"
)
#: The tool the fork server is built like (its libcomposefs, from the same source).
_BUNDLED_MKCOMPOSEFS = _REPO / ".deps/prefix/bin/mkcomposefs"
#: Seconds a peer may take on one input before it counts as hung.
TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class PeerResult:
    """What a peer made of one input."""

    #: The peer accepted the input; ``output`` holds what it made.
    ok: bool
    output: bytes = b""
    #: The refusal (or crash) text when not ``ok``.
    error: str = ""
    #: The peer crashed (a signal, a Go panic) or hung: a finding in the peer.
    crashed: bool = False


def find_mkcomposefs() -> Path | None:
    """mkcomposefs: ``$COMPOSEFS_PREFIX/bin``, then ``.deps/prefix/bin``, then ``$PATH``."""
    dirs = [Path(p) / "bin" for p in [os.environ.get("COMPOSEFS_PREFIX")] if p]
    for folder in [*dirs, _REPO / ".deps/prefix/bin"]:
        if os.access(folder / "mkcomposefs", os.X_OK):
            return folder / "mkcomposefs"
    found = shutil.which("mkcomposefs")
    return Path(found) if found else None


def _env() -> dict[str, str]:
    """The environment of a peer: a fuzzing run's sanitizer preload is not for it."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}


def _timed_out(timeout: float) -> PeerResult:
    return PeerResult(False, error=f"timeout after {timeout:.0f} s", crashed=True)


def _outcome(code: int, stdout: bytes, stderr: bytes) -> PeerResult:
    """A process's result from its exit code (negative: the signal that killed it)."""
    error = stderr.decode(errors="replace").strip()
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return PeerResult(False, error=f"killed by {name}: {error}", crashed=True)
    if code != 0:
        return PeerResult(False, error=error)
    return PeerResult(True, output=stdout)


def _run(command: list[str], data: bytes, timeout: float = TIMEOUT) -> PeerResult:
    try:
        done = subprocess.run(command, input=data, capture_output=True, timeout=timeout, env=_env())
    except subprocess.TimeoutExpired:
        return _timed_out(timeout)
    return _outcome(done.returncode, done.stdout, done.stderr)


class _Served:
    """A long-lived peer process answering length-prefixed requests on a pipe.

    A request is an 8-byte little-endian length and the input; an answer is
    a fixed-size head and a body whose size the head gives.  The process is
    started on first use and restarted after it died or hung.
    """

    def __init__(self, command: list[str], timeout: float) -> None:
        self.command = command
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        atexit.register(self.close)

    def close(self) -> None:
        """Stop the process, if running."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def ask(
        self, data: bytes, head_size: int, body_size: Callable[[bytes], int]
    ) -> tuple[bytes, bytes] | PeerResult:
        """The answer's head and body, or a crash result if the process died or hung."""
        proc = self._start()
        if proc.stdin is None or proc.stdout is None:  # pragma: no cover - pipes were asked for
            raise RuntimeError("the peer has no pipes")
        deadline = time.monotonic() + self.timeout
        try:
            proc.stdin.write(len(data).to_bytes(8, "little") + data)
            proc.stdin.flush()
        except BrokenPipeError:
            return self._died(proc, "the peer's stdin closed")
        fd = proc.stdout.fileno()
        head = self._read(fd, head_size, deadline)
        if head is None:
            return self._died(proc, "no answer")
        body = self._read(fd, body_size(head), deadline)
        if body is None:
            return self._died(proc, "a truncated answer")
        return head, body

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives with the peer)
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=_env(),
            )
        return self._proc

    @staticmethod
    def _read(fd: int, size: int, deadline: float) -> bytes | None:
        chunks: list[bytes] = []
        while size:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(fd, min(size, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _died(self, proc: subprocess.Popen[bytes], what: str) -> PeerResult:
        hung = proc.poll() is None
        if hung:
            proc.kill()
        code = proc.wait()
        stderr = b""
        if self._stderr is not None:
            self._stderr.seek(0)
            stderr = self._stderr.read()[-4000:]
        self.close()
        why = f"timeout after {self.timeout:.0f} s" if hung else f"exit {code}"
        return PeerResult(
            False, error=f"{what} ({why}): {stderr.decode(errors='replace')}", crashed=True
        )


#: mkcomposefs-serve's answer head: kind, value, stderr size, image size.
_FORK_HEAD = 21
_EXITED, _SIGNALED, _TIMED_OUT = 0, 1, 2


class MkcomposefsPeer:
    """``mkcomposefs --from-file - -``: ``peer(text)`` is a :class:`PeerResult` with the image.

    ``serve`` is mkcomposefs-serve (default: :data:`MKCOMPOSEFS_SERVE` when
    it is built and the tool found is the one it is built like), ``None``
    for a process of ``mkcomposefs`` (default :func:`find_mkcomposefs`) per
    dumpfile.  Both answer alike; ``serve_args`` are the fork server's own
    options (its ``--timeout`` is ``timeout``).
    """

    def __init__(
        self,
        serve: Path | bool | None = True,
        mkcomposefs: Path | None = None,
        *,
        timeout: float = TIMEOUT,
        serve_args: Sequence[str] = (),
    ) -> None:
        if serve is True:
            serve = self.default_server()
        self.timeout = timeout
        self.serve = serve or None
        self._served: _Served | None = None
        if self.serve is not None:
            command = [str(self.serve), "--timeout", f"{timeout:.0f}", *serve_args]
            # the process's own deadline is a margin beyond the child's
            self._served = _Served(command, timeout + 10)
            return
        tool = mkcomposefs or find_mkcomposefs()
        if tool is None:
            raise FileNotFoundError("mkcomposefs not found: run scripts/bootstrap.sh (make deps)")
        self.tool = tool

    @staticmethod
    def default_server() -> Path | None:
        """The fork server to use by default: :data:`MKCOMPOSEFS_SERVE` when it applies."""
        if os.environ.get("COMPOSEFS_PY_MKCOMPOSEFS_SERVE") == "":
            return None
        if not os.access(MKCOMPOSEFS_SERVE, os.X_OK):
            return None
        if "COMPOSEFS_PY_MKCOMPOSEFS_SERVE" in os.environ:
            return MKCOMPOSEFS_SERVE
        # built from .deps/src against .deps/prefix: only a stand-in for that tool
        return MKCOMPOSEFS_SERVE if find_mkcomposefs() == _BUNDLED_MKCOMPOSEFS else None

    def close(self) -> None:
        """Stop the fork server, if running."""
        if self._served is not None:
            self._served.close()

    def __call__(self, text: bytes) -> PeerResult:
        if self._served is None:
            return _run([str(self.tool), "--from-file", "-", "-"], text, self.timeout)
        answer = self._served.ask(text, _FORK_HEAD, _fork_body_size)
        if isinstance(answer, PeerResult):
            return answer
        head, body = answer
        kind, value = head[0], int.from_bytes(head[1:5], "little")
        if kind == _TIMED_OUT:
            return _timed_out(self.timeout)
        stderr_size = int.from_bytes(head[5:13], "little")
        code = -value if kind == _SIGNALED else value
        return _outcome(code, body[stderr_size:], body[:stderr_size])


def _fork_body_size(head: bytes) -> int:
    return int.from_bytes(head[5:13], "little") + int.from_bytes(head[13:21], "little")


_mkcomposefs: MkcomposefsPeer | None = None


def mkcomposefs_image(text: bytes, mkcomposefs: Path | None = None) -> PeerResult:
    """``mkcomposefs --from-file - -`` of the dumpfile ``text``: the image, or its refusal.

    Without ``mkcomposefs``, the process-wide :class:`MkcomposefsPeer` (the
    fork server when built); with it, a process of that tool.
    """
    global _mkcomposefs
    if mkcomposefs is not None:
        return MkcomposefsPeer(None, mkcomposefs)(text)
    if _mkcomposefs is None:
        _mkcomposefs = MkcomposefsPeer()
    return _mkcomposefs(text)


def peer_image(toc: Path, out: Path, mkcomposefs: Path) -> tuple[bool, str]:
    """podman's image of the TOC file ``toc`` in ``out`` (``-exec``: its dump piped into
    ``mkcomposefs --from-file - -``, as drivers/overlay/composefs.go does); (ok, stderr)."""
    try:
        done = subprocess.run(
            [str(CSTORAGE_PEER), "-exec", str(mkcomposefs), str(toc), str(out)],
            capture_output=True,
            timeout=TIMEOUT,
            env=_env(),
        )
    except subprocess.TimeoutExpired:  # pragma: no cover - the peer hung
        return False, "timeout"
    return done.returncode == 0, done.stderr.decode(errors="replace").strip()


class TocPeer:
    """podman's dump of a TOC: ``peer(data)`` is a :class:`PeerResult` with the dumpfile.

    The long-lived peer answers on a pipe (restarted after a crash or a hang);
    without it every TOC starts the one-shot peer.
    """

    def __init__(self) -> None:
        self.serve = _USE_SERVE and os.access(CSTORAGE_SERVE, os.X_OK)
        if not self.serve and not os.access(CSTORAGE_PEER, os.X_OK):
            raise FileNotFoundError(
                f"the containers/storage peer is not built ({CSTORAGE_PEER}): run "
                "../shared/peers/containers-storage/setup.sh .deps/cstorage"
            )
        self._served = _Served([str(CSTORAGE_SERVE), "-serve"], TIMEOUT)

    @staticmethod
    def available() -> bool:
        """Whether either peer is built."""
        return os.access(CSTORAGE_PEER, os.X_OK) or (
            _USE_SERVE and os.access(CSTORAGE_SERVE, os.X_OK)
        )

    def close(self) -> None:
        """Stop the long-lived peer, if running."""
        self._served.close()

    def __call__(self, data: bytes) -> PeerResult:
        if not self.serve:
            # os.ReadFile("/dev/stdin") reads the pipe.
            done = _run([str(CSTORAGE_PEER), "/dev/stdin"], data)
            # the same text as the long-lived peer's
            return replace(done, error=done.error.removeprefix("cstorage-toc2dump: "))
        answer = self._served.ask(data, 9, lambda head: int.from_bytes(head[1:], "little"))
        if isinstance(answer, PeerResult):
            return answer
        head, text = answer
        if head[0] == 0:
            return PeerResult(True, output=text)
        return PeerResult(False, error=text.decode(errors="replace"), crashed=head[0] != 1)
