"""The exception tree of composefs-py.

Every exception this package raises on purpose derives from
:class:`ComposefsError`.  Where a builtin exception has the same meaning the
class derives from it too (``ValidationError`` is a ``ValueError``,
``LibraryError`` an ``OSError``), so callers may catch either.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "ComposefsError",
    "LibraryError",
    "SandboxError",
    "ValidationError",
]


class ComposefsError(Exception):
    """Base class of every error raised by composefs-py."""


class ValidationError(ComposefsError, ValueError):
    """Untrusted input was rejected.

    ``entry`` is the index of the offending record in the input (TOC entry,
    dumpfile line, tar member) when known, ``path`` its path and ``field`` the
    field at fault.  ``str(err)`` reads
    ``entry 17 ("usr/bin/x"): uid: must be an integer in 0..4294967294, got -1``.
    ``problems`` holds every problem found when the validator collected them
    all (``collect=True``); otherwise it holds this one error only.
    """

    entry: int | None
    path: str | None
    field: str | None
    reason: str
    problems: tuple[ValidationError, ...]

    def __init__(
        self,
        reason: str,
        *,
        entry: int | None = None,
        path: str | bytes | None = None,
        field: str | None = None,
        problems: tuple[ValidationError, ...] = (),
    ) -> None:
        if isinstance(path, bytes):
            path = path.decode("utf-8", "backslashreplace")
        self.reason = reason
        self.entry = entry
        self.path = path
        self.field = field
        self.problems = problems or (self,)
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.entry is not None:
            where.append(f"entry {self.entry}")
        if self.path is not None:
            where.append(f'("{self.path}")')
        prefix = " ".join(where)
        text = f"{self.field}: {self.reason}" if self.field else self.reason
        return f"{prefix}: {text}" if prefix else text

    def located(
        self, *, entry: int | None = None, path: str | bytes | None = None
    ) -> ValidationError:
        """Return a copy with ``entry``/``path`` filled in where missing."""
        return ValidationError(
            self.reason,
            entry=self.entry if self.entry is not None else entry,
            path=self.path if self.path is not None else path,
            field=self.field,
        )


class LibraryError(ComposefsError, OSError):
    """A libcomposefs call failed; ``errno`` is what the library set."""


class SandboxError(ComposefsError):
    """The sandboxed writer child died, hit a limit, timed out or failed.

    ``errno`` is the child's own OSError number when that is what made it
    fail (ENOSPC writing the output, say), else None.
    """

    errno: int | None = None


class BackendUnavailableError(ComposefsError):
    """The requested writer backend cannot run here (not built, no tool)."""


def text_that_names_a_file(text: str, what: str) -> ValidationError | None:
    """The error for ``text`` given where the content itself is wanted, when it
    looks like a file's name and one exists: a ``str`` is the content (the
    JSON or dump text), a :class:`pathlib.Path` a file to read."""
    if len(text) > 4096 or "\n" in text or text.lstrip()[:1] in ("{", "["):
        return None
    import os

    try:
        exists = os.path.exists(text)
    except ValueError:  # NUL in the text
        return None
    if not exists:
        return None
    return ValidationError(
        f"got a str naming the file {text!r}: a str is the {what} itself; pass a "
        "pathlib.Path to read a file"
    )
