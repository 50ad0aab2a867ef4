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


def read_source(
    data: object, cap: int, what: str, *, str_errors: str = "strict", wrap_os_errors: bool = False
) -> bytes:
    """The bytes of an input given as bytes, a ``str`` (its text, encoded as
    UTF-8 with ``str_errors``) or a path (read up to ``cap + 1`` bytes, never
    more), refused above ``cap`` bytes: the one reader of the TOC and
    dumpfile parsers.  ``what`` names the input in the errors; an
    :class:`OSError` reading a path is a :class:`ValidationError` when
    ``wrap_os_errors``."""
    import os

    if isinstance(data, bytes):
        raw = data
    elif isinstance(data, bytearray | memoryview):
        raw = bytes(data)
    elif isinstance(data, str):
        hint = text_that_names_a_file(data, f"{what} text")
        if hint is not None:
            raise hint
        try:
            raw = data.encode("utf-8", str_errors)
        except UnicodeEncodeError as err:
            raise ValidationError(
                f"the {what} text holds a character UTF-8 cannot encode at offset {err.start}"
            ) from None
    elif isinstance(data, os.PathLike):
        try:
            with open(data, "rb") as file:
                raw = file.read(cap + 1)
        except OSError as err:
            if not wrap_os_errors:
                raise
            raise ValidationError(f"cannot read the {what}: {err}") from None
    else:
        raise TypeError(f"expected bytes, str or a path, got {type(data).__name__}")
    if len(raw) > cap:
        raise ValidationError(f"the {what} is larger than {cap} bytes")
    return raw


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
