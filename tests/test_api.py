"""The public API of ``composefs_py``: the names DESIGN.md fixes resolve."""

from __future__ import annotations

import importlib
import subprocess
import sys

import composefs_py


def test_every_public_name_resolves() -> None:
    for name in composefs_py.__all__:
        assert getattr(composefs_py, name) is not None, name


def test_mount_is_the_function_even_after_importing_the_submodule() -> None:
    # `import composefs_py.mount as m` would give the function: the module is
    # reached through sys.modules.
    mount_module = importlib.import_module("composefs_py.mount")

    assert callable(composefs_py.mount)
    assert composefs_py.mount is mount_module.mount
    assert composefs_py.unmount is mount_module.unmount


def test_unknown_name_raises_attribute_error() -> None:
    try:
        composefs_py.no_such_name  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_package_does_not_load_the_compiled_module() -> None:
    code = "import sys, composefs_py; print('composefs_py._lcfs' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
