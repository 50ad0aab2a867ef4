"""The peers the differential targets and tests run: podman's TOC path and mkcomposefs.

* containers/storage's ``unmarshalToc`` + ``GenerateDump`` (podman's TOC ->
  dumpfile code), built by ``../shared/peers/containers-storage/setup.sh``
  as ``.deps/cstorage/bin/cstorage-toc2dump`` (one TOC per process, ~10 ms
  a start) and by ``fuzz/peers/build-serve.sh`` as
  ``build/fuzz/peers/cstorage-toc2dump-serve`` (the same calls over many
  TOCs in one process: a pipe round trip per TOC).  :class:`TocPeer` uses
  the long-lived one when it is built, else a process per TOC.
* ``mkcomposefs --from-file`` (libcomposefs's own dumpfile parser, in the
  tool, not the library): a process per dumpfile, it reads one input only
  (:func:`mkcomposefs_image`).

Each call returns a :class:`PeerResult`: the output (a dump or an image) or
the peer's refusal, and whether the peer crashed or hung (a finding).
Environment: ``COMPOSEFS_PY_CSTORAGE_PEER`` (the one-shot peer),
``COMPOSEFS_PY_CSTORAGE_SERVE`` (the long-lived one, ``""`` to not use it),
``COMPOSEFS_PREFIX`` (where ``bin/mkcomposefs`` is looked for first).
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

__all__ = [
    "CSTORAGE_PEER",
    "CSTORAGE_SERVE",
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


def _run(command: list[str], data: bytes) -> PeerResult:
    try:
        done = subprocess.run(command, input=data, capture_output=True, timeout=TIMEOUT, env=_env())
    except subprocess.TimeoutExpired:
        return PeerResult(False, error=f"timeout after {TIMEOUT:.0f} s", crashed=True)
    error = done.stderr.decode(errors="replace").strip()
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return PeerResult(False, error=f"killed by {name}: {error}", crashed=True)
    if done.returncode != 0:
        return PeerResult(False, error=error)
    return PeerResult(True, output=done.stdout)


def mkcomposefs_image(text: bytes, mkcomposefs: Path | None = None) -> PeerResult:
    """``mkcomposefs --from-file - -`` of the dumpfile ``text``: the image, or its refusal."""
    tool = mkcomposefs or find_mkcomposefs()
    if tool is None:
        raise FileNotFoundError("mkcomposefs not found: run scripts/bootstrap.sh (make deps)")
    return _run([str(tool), "--from-file", "-", "-"], text)


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
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        atexit.register(self.close)

    @staticmethod
    def available() -> bool:
        """Whether either peer is built."""
        return os.access(CSTORAGE_PEER, os.X_OK) or (
            _USE_SERVE and os.access(CSTORAGE_SERVE, os.X_OK)
        )

    def close(self) -> None:
        """Stop the long-lived peer, if running."""
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

    def __call__(self, data: bytes) -> PeerResult:
        if not self.serve:
            # os.ReadFile("/dev/stdin") reads the pipe.
            done = _run([str(CSTORAGE_PEER), "/dev/stdin"], data)
            # the same text as the long-lived peer's
            return replace(done, error=done.error.removeprefix("cstorage-toc2dump: "))
        return self._ask(data)

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives with the peer)
            self._proc = subprocess.Popen(
                [str(CSTORAGE_SERVE), "-serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=_env(),
            )
        return self._proc

    def _read(self, fd: int, size: int, deadline: float) -> bytes | None:
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

    def _ask(self, data: bytes) -> PeerResult:
        proc = self._start()
        if proc.stdin is None or proc.stdout is None:  # pragma: no cover - pipes were asked for
            raise RuntimeError("the peer has no pipes")
        deadline = time.monotonic() + TIMEOUT
        try:
            proc.stdin.write(len(data).to_bytes(8, "little") + data)
            proc.stdin.flush()
        except BrokenPipeError:
            return self._died(proc, "the peer's stdin closed")
        fd = proc.stdout.fileno()
        head = self._read(fd, 9, deadline)
        if head is None:
            return self._died(proc, "no answer")
        text = self._read(fd, int.from_bytes(head[1:], "little"), deadline)
        if text is None:
            return self._died(proc, "a truncated answer")
        if head[0] == 0:
            return PeerResult(True, output=text)
        return PeerResult(False, error=text.decode(errors="replace"), crashed=head[0] != 1)

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
        why = f"timeout after {TIMEOUT:.0f} s" if hung else f"exit {code}"
        return PeerResult(
            False, error=f"{what} ({why}): {stderr.decode(errors='replace')}", crashed=True
        )
