"""What every writer backend shares: its protocol, the format-version rule, mkcomposefs.

A backend is a function that writes the image of a valid
:class:`~composefs_py.model.Tree` to an open file descriptor and returns its
fs-verity digest (:class:`Backend`).  :mod:`composefs_py.writer` picks one
in one place (``native``: :func:`composefs_py._native.write_tree`,
``sandbox``: :func:`composefs_py.sandbox.write_image_sandboxed`,
``mkcomposefs``: :func:`write_with_mkcomposefs` here) and checks the format
versions once, with :func:`check_versions`, before it calls the backend.
This module imports none of them: the backends and the writer import it,
and not each other.

Cost: :func:`write_with_mkcomposefs` holds the Tree's dumpfile and the
image in memory once each (both linear in the Tree, which its ``Limits``
bounded); finding the tool is a few ``stat`` calls.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Protocol

from .errors import BackendUnavailableError, LibraryError

if TYPE_CHECKING:
    from .model import Tree

#: Highest composefs format version (``LCFS_VERSION_MAX`` in libcomposefs 1.0.8).
VERSION_MAX = 1
#: Environment variable naming the ``mkcomposefs`` executable.
MKCOMPOSEFS_ENV = "COMPOSEFS_PY_MKCOMPOSEFS"

# os.path, not pathlib, and shutil and subprocess imported where used: the
# sandboxed child imports this module (through _native) and pays for each.
_REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_BUNDLED_MKCOMPOSEFS = os.path.join(_REPO, ".deps", "prefix", "bin", "mkcomposefs")
_STDERR_TAIL = 2000
_CHUNK = 1 << 20


class Backend(Protocol):
    """Write the image of ``tree`` to ``fd`` from its current position; return
    its fs-verity digest.  The versions were checked by :func:`check_versions`."""

    def __call__(self, tree: Tree, fd: int, *, min_version: int, max_version: int) -> bytes: ...


def check_versions(min_version: int, max_version: int) -> None:
    """The format versions' rule: ints with ``0 <= min <= max <= VERSION_MAX``."""
    for name, value in (("min_version", min_version), ("max_version", max_version)):
        if value.__class__ is not int:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= min_version <= max_version <= VERSION_MAX:
        raise ValueError(
            "format versions must satisfy 0 <= min_version <= max_version <= "
            f"{VERSION_MAX}, got min_version={min_version}, max_version={max_version}"
        )


def find_mkcomposefs() -> str | None:
    """Locate ``mkcomposefs``: ``$COMPOSEFS_PY_MKCOMPOSEFS``, .deps, then PATH."""
    configured = os.environ.get(MKCOMPOSEFS_ENV)
    if configured:
        return configured
    if os.access(_BUNDLED_MKCOMPOSEFS, os.X_OK):
        return _BUNDLED_MKCOMPOSEFS
    import shutil

    return shutil.which("mkcomposefs")


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (in 1 MiB pieces, retrying short writes)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:_CHUNK])
        view = view[written:]


def write_with_mkcomposefs(tree: Tree, fd: int, *, min_version: int, max_version: int) -> bytes:
    """The ``mkcomposefs`` backend: ``mkcomposefs --from-file -`` on ``dump(tree)``,
    the image copied to ``fd``."""
    import subprocess

    from .dumpfile import dump_bytes
    from .fsverity import fsverity_digest

    tool = find_mkcomposefs()
    if tool is None:
        raise BackendUnavailableError(
            f"mkcomposefs not found (set ${MKCOMPOSEFS_ENV}, run `make deps`, or install composefs)"
        )
    argv = [
        tool,
        f"--min-version={min_version}",
        f"--max-version={max_version}",
        "--from-file",
        "-",
        "-",
    ]
    try:
        proc = subprocess.run(
            argv, input=dump_bytes(tree), capture_output=True, check=False, env=_tool_env()
        )
    except OSError as exc:
        raise BackendUnavailableError(f"cannot run {tool}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        tail = proc.stderr[-_STDERR_TAIL:].decode("utf-8", "backslashreplace").strip()
        how = (
            f"killed by signal {-proc.returncode}"
            if proc.returncode < 0
            else f"exit status {proc.returncode}"
        )
        raise LibraryError(errno.EIO, f"mkcomposefs failed ({how}): {tail or 'no message'}")
    image = proc.stdout
    write_all(fd, image)
    return fsverity_digest(image)


def _tool_env() -> dict[str, str]:
    # The Tree is already valid; mkcomposefs's optional strict parsing
    # (CFS_PARSE_STRICT) would only add checks of its own dialect, so the
    # tool runs the same way whatever the caller's environment says.
    env = dict(os.environ)
    env.pop("CFS_PARSE_STRICT", None)
    return env
