"""Packaging rules: only _native touches the compiled module; wheels build."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "composefs_py"
COMPILED = "composefs_py._lcfs"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def python_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_only_native_imports_the_compiled_module() -> None:
    offenders = [
        str(p.relative_to(REPO))
        for p in python_files()
        if p.name != "_native.py" and COMPILED in imported_modules(p)
    ]
    assert offenders == [], f"only composefs_py/_native.py may import {COMPILED}"


def test_no_module_takes_ffi_or_lib_from_native() -> None:
    offenders = [
        str(p.relative_to(REPO))
        for p in python_files()
        if {"composefs_py._native.ffi", "composefs_py._native.lib"} & imported_modules(p)
    ]
    assert offenders == []


def test_the_import_rule_sees_relative_imports(tmp_path: Path) -> None:
    native = PACKAGE / "_native.py"
    assert COMPILED in imported_modules(native)


@pytest.mark.slow
def test_wheel_builds_with_the_extension(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    if shutil.which("pkg-config") is None:
        pytest.skip("pkg-config missing")
    # Build from a copy so the working tree (and others' edits) stay untouched.
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            ".deps",
            "build",
            "*.so",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
            "*.egg-info",
        ),
    )
    env = None
    deps_prefix = REPO / ".deps" / "prefix"
    if (deps_prefix / "lib" / "pkgconfig" / "composefs.pc").is_file():
        import os

        env = {**os.environ, "COMPOSEFS_PREFIX": str(deps_prefix)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    (wheel,) = (tmp_path / "dist").glob("composefs_py-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("composefs_py/_lcfs") and n.endswith(".so") for n in names)
    assert "composefs_py/_native.py" in names
