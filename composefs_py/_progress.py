"""Progress of long work: a public callback protocol, and a status line on stderr.

``progress=`` of the importers and of :func:`~composefs_py.write_image` takes:

* ``None`` (the default): a status line on stderr only when it is a terminal;
* ``True``: always (``--progress``); ``False``: never;
* a callable taking a :class:`ProgressUpdate`: an embedding program's own
  UI.  It is called at most every 0.2 s while the work runs (from the thread
  doing it, which it blocks) and once more, with ``finished=True``, at the
  end; an exception it raises stops the work and propagates (nothing partial
  is published);
* a :class:`Progress` instance, used as given.

On a terminal the status line is redrawn in place (``\\r``); elsewhere (a log
file, a CI console) whole lines are written, at most every 5 s.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

__all__ = ["Progress", "ProgressArg", "ProgressCallback", "ProgressUpdate", "resolve_progress"]


@dataclass(frozen=True, slots=True)
class ProgressUpdate:
    """Where long work stands: what it does, and files and bytes done of the totals
    (None: not known)."""

    label: str
    files_done: int
    bytes_done: int
    total_files: int | None
    total_bytes: int | None
    finished: bool


ProgressCallback = Callable[[ProgressUpdate], None]


class Progress:
    """Counts files and bytes done and reports them, rate-limited.

    Reports go to ``callback`` when given, else to ``stream`` (stderr) as a
    status line: redrawn in place on a terminal, whole lines every
    ``line_interval`` seconds elsewhere.
    """

    __slots__ = (
        "_callback", "_interval", "_label", "_last", "_line_interval", "_lock", "_stream",
        "bytes_done", "files_done", "total_bytes", "total_files",
    )  # fmt: skip

    def __init__(
        self,
        label: str = "importing",
        *,
        stream: TextIO | None = None,
        callback: ProgressCallback | None = None,
        total_files: int | None = None,
        total_bytes: int | None = None,
        interval: float = 0.2,
        line_interval: float = 5.0,
    ) -> None:
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._callback = callback
        self._interval = interval
        self._line_interval = line_interval
        self._last = 0.0
        self._lock = threading.Lock()  # importers may advance from several threads
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files_done = 0
        self.bytes_done = 0

    def start(
        self, label: str, *, total_files: int | None = None, total_bytes: int | None = None
    ) -> None:
        """Set what is being counted (the work calls this once it knows)."""
        self._label = label
        self.total_files = total_files
        self.total_bytes = total_bytes

    def advance(self, *, nbytes: int = 0, files: int = 0) -> None:
        with self._lock:
            self.bytes_done += nbytes
            self.files_done += files
            now = time.monotonic()
            due = self._interval if self._callback or self._is_tty() else self._line_interval
            if now - self._last >= due:
                self._last = now
                self._report(finished=False)

    def close(self) -> None:
        """Report the final counts (and end the status line)."""
        with self._lock:
            self._report(finished=True)

    def update(self, finished: bool = False) -> ProgressUpdate:
        """The counts now."""
        return ProgressUpdate(
            self._label,
            self.files_done,
            self.bytes_done,
            self.total_files,
            self.total_bytes,
            finished,
        )

    def line(self) -> str:
        """The current status text."""
        files = f"{self.files_done}"
        if self.total_files is not None:
            files += f"/{self.total_files}"
        size = _mib(self.bytes_done)
        if self.total_bytes is not None:
            size += f"/{_mib(self.total_bytes)}"
        return f"{self._label}: {files} files, {size} MiB"

    def _report(self, finished: bool) -> None:
        if self._callback is not None:
            self._callback(self.update(finished))
            return
        if self._is_tty():
            self._stream.write("\r" + self.line() + "\x1b[K" + "\n" * finished)
        else:
            self._stream.write(self.line() + "\n")
        self._stream.flush()

    def _is_tty(self) -> bool:
        isatty = getattr(self._stream, "isatty", None)
        return bool(isatty and isatty())


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


ProgressArg = Progress | ProgressCallback | bool | None


def resolve_progress(progress: ProgressArg, label: str) -> Progress | None:
    """Turn a ``progress=`` argument into a reporter, or None for none."""
    if isinstance(progress, Progress):
        return progress
    if progress is None:
        progress = sys.stderr.isatty()
    if progress is True:
        return Progress(label)
    if progress is False:
        return None
    if callable(progress):
        return Progress(label, callback=progress)
    raise TypeError(f"progress must be a bool, a callable or a Progress, got {progress!r}")
