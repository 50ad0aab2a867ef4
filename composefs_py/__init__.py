"""composefs-py: make, read and mount composefs images in-process.

Untrusted input (a layer's TOC, a dumpfile, a tar, an image) becomes a
:class:`Tree` only through a validator; a ``Tree`` is written by
libcomposefs, linked in-process through CFFI, or by a sandboxed child.

The public names are imported on first use, so ``import composefs_py`` stays
cheap and does not load the compiled module until a writer needs it.  Type
checkers see every public name imported under ``TYPE_CHECKING`` with its real
type, and no module ``__getattr__``, so a misspelt name is an error there as
it is at run time (``AttributeError``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    BackendUnavailableError,
    ComposefsError,
    LibraryError,
    SandboxError,
    ValidationError,
)

# Imported eagerly: the submodule shares the function's name, and a lazy
# attribute would be shadowed by the module once ``composefs_py.mount`` is
# imported.  mount.py imports what a call needs (the compiled module, the
# model, ctypes) only when called.
from .mount import flatten, mount, mount_layers, unmount

if TYPE_CHECKING:
    from ._progress import ProgressUpdate
    from .dumpfile import dump, parse_dumpfile
    from .fsverity import fsverity_digest
    from .layers import Layer, open_layer
    from .limits import Limits
    from .model import Hardlink, Inode, Tree, TreeBuilder
    from .objects import ObjectStore
    from .scan import scan_directory
    from .toc import parse_toc
    from .writer import read_image, write_image

    #: The installed distribution's version (its metadata is the one source).
    __version__: str

__all__ = [
    "BackendUnavailableError",
    "ComposefsError",
    "Hardlink",
    "Inode",
    "Layer",
    "LibraryError",
    "Limits",
    "ObjectStore",
    "ProgressUpdate",
    "SandboxError",
    "Tree",
    "TreeBuilder",
    "ValidationError",
    "dump",
    "flatten",
    "fsverity_digest",
    "mount",
    "mount_layers",
    "open_layer",
    "parse_dumpfile",
    "parse_toc",
    "read_image",
    "scan_directory",
    "unmount",
    "write_image",
]

_LAZY = {
    "Limits": "limits",
    "Hardlink": "model",
    "Inode": "model",
    "Tree": "model",
    "TreeBuilder": "model",
    "dump": "dumpfile",
    "parse_dumpfile": "dumpfile",
    "fsverity_digest": "fsverity",
    "Layer": "layers",
    "open_layer": "layers",
    "ObjectStore": "objects",
    "ProgressUpdate": "_progress",
    "parse_toc": "toc",
    "scan_directory": "scan",
    "read_image": "writer",
    "write_image": "writer",
}


if not TYPE_CHECKING:
    # Hidden from type checkers: a module ``__getattr__`` would make every
    # name, misspelt ones included, an ``Any`` attribute of the package.
    # They see the imports above instead, each with its real type.

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is not None:
            from importlib import import_module

            value = getattr(import_module(f".{module}", __name__), name)
        elif name == "__version__":
            value = _version()
        else:
            raise AttributeError(f"module 'composefs_py' has no attribute {name!r}")
        globals()[name] = value
        return value


def _version() -> str:
    """The version in the package's metadata: pyproject.toml's, once installed
    (read on first use: importlib.metadata is not cheap to import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("composefs-py")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
