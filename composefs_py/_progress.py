"""A one-line progress report on stderr for long imports (no dependency).

``progress=None`` (the default of the importers) shows it only when stderr is
a terminal; ``True`` always (``--progress``); ``False`` never; a
:class:`Progress` instance is used as given (tests pass one writing to a
``StringIO``).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

__all__ = ["Progress", "ProgressArg", "resolve_progress"]


class Progress:
    """Counts files and bytes done and redraws one status line.

    Redraws at most every ``interval`` seconds (and once at :meth:`close`),
    so a million small files do not flood the terminal.
    """

    __slots__ = (
        "_interval",
        "_label",
        "_last",
        "_lock",
        "_shown",
        "_stream",
        "bytes_done",
        "files_done",
        "total_bytes",
        "total_files",
    )

    def __init__(
        self,
        label: str = "importing",
        *,
        stream: TextIO | None = None,
        total_files: int | None = None,
        total_bytes: int | None = None,
        interval: float = 0.2,
    ) -> None:
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._interval = interval
        self._last = 0.0
        self._lock = threading.Lock()  # importers may advance from several threads
        self._shown = False
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files_done = 0
        self.bytes_done = 0

    def start(
        self, label: str, *, total_files: int | None = None, total_bytes: int | None = None
    ) -> None:
        """Set what is being counted (an importer calls this once it knows)."""
        self._label = label
        self.total_files = total_files
        self.total_bytes = total_bytes

    def advance(self, *, nbytes: int = 0, files: int = 0) -> None:
        with self._lock:
            self.bytes_done += nbytes
            self.files_done += files
            now = time.monotonic()
            if now - self._last >= self._interval:
                self._last = now
                self._draw()

    def close(self) -> None:
        """Draw the final counts and end the line."""
        self._draw()
        self._stream.write("\n")
        self._stream.flush()

    def line(self) -> str:
        """The current status text."""
        files = f"{self.files_done}"
        if self.total_files is not None:
            files += f"/{self.total_files}"
        size = _mib(self.bytes_done)
        if self.total_bytes is not None:
            size += f"/{_mib(self.total_bytes)}"
        return f"{self._label}: {files} files, {size} MiB"

    def _draw(self) -> None:
        self._stream.write("\r" + self.line() + "\x1b[K" * self._is_tty())
        self._stream.flush()
        self._shown = True

    def _is_tty(self) -> bool:
        isatty = getattr(self._stream, "isatty", None)
        return bool(isatty and isatty())


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


ProgressArg = Progress | bool | None


def resolve_progress(progress: ProgressArg, label: str) -> Progress | None:
    """Turn an importer's ``progress=`` argument into a reporter or None."""
    if isinstance(progress, Progress):
        return progress
    if progress is None:
        progress = sys.stderr.isatty()
    return Progress(label) if progress else None
