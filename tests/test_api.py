"""The public API of ``composefs_py``: the names DESIGN.md fixes resolve."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import composefs_py

REPO = Path(__file__).resolve().parent.parent


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


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Run the project's mypy (strict) on one small program importing the package."""
    mypy = Path(sys.executable).with_name("mypy")
    if not mypy.is_file():
        pytest.skip(f"mypy is not installed beside {sys.executable}")
    program = tmp_path / "program.py"
    program.write_text(source)
    return subprocess.run(
        [
            str(mypy),
            "--strict",
            "--no-incremental",
            "--cache-dir=/dev/null",
            str(program),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_mypy_rejects_a_misspelt_public_name(tmp_path: Path) -> None:
    result = _mypy(tmp_path, "from composefs_py import wirte_image\n\nwirte_image\n")
    assert result.returncode == 1, result.stdout
    assert 'Module "composefs_py" has no attribute "wirte_image"' in result.stdout


def test_mypy_rejects_a_misspelt_attribute(tmp_path: Path) -> None:
    result = _mypy(tmp_path, "import composefs_py\n\ncomposefs_py.parse_tco(b'')\n")
    assert result.returncode == 1, result.stdout
    assert 'Module has no attribute "parse_tco"' in result.stdout


def test_mypy_accepts_every_public_name_with_its_type(tmp_path: Path) -> None:
    lines = [f"from composefs_py import {name}" for name in composefs_py.__all__]
    lines += [
        "from pathlib import Path",
        "digest: bytes = write_image(parse_dumpfile(b'/ 0 40755 2 0 0 0 0.0 - - -'), Path('x'))",
        "store: ObjectStore = ObjectStore(Path('objects'))",
    ]
    result = _mypy(tmp_path, "\n".join(lines) + "\n")
    assert result.returncode == 0, result.stdout


def test_the_readme_names_only_what_exists() -> None:
    readme = (REPO / "README.md").read_text()
    imported = {
        name.strip()
        for names in re.findall(r"^from composefs_py import (.+)$", readme, re.MULTILINE)
        for name in names.split(",")
    }
    called = set(re.findall(r"`([A-Za-z_]\w*)\(", readme)) - {"abort"}
    missing = sorted(n for n in imported | called if not hasattr(composefs_py, n))
    assert missing == [], f"README names what composefs_py does not export: {missing}"
    for module, name in re.findall(r"`(composefs_py(?:\.\w+)*)\.(\w+)\(", readme):
        assert hasattr(importlib.import_module(module), name), f"README names {module}.{name}"


def test_version_is_a_typed_public_name(tmp_path: Path) -> None:
    result = _mypy(
        tmp_path,
        "import composefs_py\nfrom composefs_py import __version__\n\n"
        "version: str = __version__\nsame: str = composefs_py.__version__\n",
    )
    assert result.returncode == 0, result.stdout


def test_a_str_naming_a_file_says_pass_a_path(tmp_path: Path) -> None:
    """A str is the content; one that names an existing file gets a hint, not a parse error."""
    from composefs_py import parse_dumpfile

    dump = tmp_path / "x.dump"
    dump.write_text("/ 0 40755 2 0 0 0 0.0 - - -\n")
    with pytest.raises(composefs_py.ValidationError, match=r"pass a pathlib\.Path"):
        parse_dumpfile(str(dump))
    assert len(parse_dumpfile(dump)) == 1
    with pytest.raises(composefs_py.ValidationError) as info:
        parse_dumpfile(str(tmp_path / "missing.dump"))
    assert "pathlib.Path" not in str(info.value)


def test_tree_lookups_take_str_paths() -> None:
    from composefs_py import parse_dumpfile

    tree = parse_dumpfile(b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n")
    assert "/a" in tree and b"/a" in tree and "/b" not in tree and 7 not in tree
    assert tree["/a"] == tree[b"/a"] and tree.get("/a") == tree[b"/a"]
    assert tree.get("/b") is None and tree.inode("/a") == tree.inode(b"/a")
    with pytest.raises(KeyError):
        tree["/b"]
