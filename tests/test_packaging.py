"""Packaging rules: only _native touches the compiled module; wheels build."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

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


# What the sdist must carry for ``pip install composefs_py-*.tar.gz`` to build.
SDIST_NEEDS = {
    "PKG-INFO",
    "pyproject.toml",
    "setup.py",
    "README.md",
    "csrc/build_ffi.py",
    "csrc/lcfs.cdef.h",
    "csrc/shim.c",
    "csrc/shim.h",
    "scripts/bootstrap.sh",
    "composefs_py/__init__.py",
    "composefs_py/py.typed",
}
# Local state an sdist must never carry (planted in the copy it is built from).
SDIST_DECOYS = [
    ".deps/prefix/lib/libcomposefs.so.1",
    ".venv/bin/python",
    "build/lib/composefs_py/_lcfs.abi3.so",
    "dist/old.tar.gz",
    "composefs_py/_lcfs.c",
    "composefs_py/_lcfs.abi3.so",
    "composefs_py/__pycache__/model.cpython-311.pyc",
    ".hypothesis/examples/x",
]
SMOKE_DUMPFILE = (
    "/ 0 40755 2 0 0 0 0.0 - - -\n"
    "/hello 5 100644 1 0 0 0 0.0 - hello -\n"
    "/link 5 120777 1 0 0 0 0.0 hello - -\n"
)
SMOKE_SCRIPT = """
import sys
from pathlib import Path
import composefs_py
assert Path(composefs_py.__file__).resolve().is_relative_to(Path(sys.prefix).resolve())
tree = composefs_py.parse_dumpfile(sys.argv[1].encode())
print(composefs_py.write_image(tree, Path(sys.argv[2]), backend="native").hex())
"""


def _libcomposefs_env() -> dict[str, str]:
    """The environment a build of the extension needs: where the bootstrap put libcomposefs."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    deps_prefix = REPO / ".deps" / "prefix"
    if "COMPOSEFS_PREFIX" not in env and (deps_prefix / "lib" / "pkgconfig").is_dir():
        env["COMPOSEFS_PREFIX"] = str(deps_prefix)
    if "COMPOSEFS_PREFIX" not in env:
        found = subprocess.run(
            ["pkg-config", "--exists", "composefs"], env=env, capture_output=True, check=False
        )
        if found.returncode != 0:
            pytest.skip("no libcomposefs to build against (run scripts/bootstrap.sh)")
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=300
    )


def _build_sdist(tmp_path: Path, env: dict[str, str]) -> Path:
    """Build the sdist through the PEP 517 backend from a copy with local state planted."""
    src = tmp_path / "src"
    # The checkout's files as git sees them (tracked or new, not ignored).
    listing = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    tracked = subprocess.run(listing, cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    for decoy in SDIST_DECOYS:
        (src / decoy).parent.mkdir(parents=True, exist_ok=True)
        (src / decoy).write_bytes(b"local state")
    hook = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    proc = _run([sys.executable, "-c", hook, str(tmp_path / "dist")], src, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / "dist" / proc.stdout.strip().splitlines()[-1]


def test_sdist_carries_what_the_build_needs_and_no_local_state(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    sdist = _build_sdist(tmp_path, _libcomposefs_env())
    with tarfile.open(sdist) as tar:
        top = sdist.name.removesuffix(".tar.gz")
        names = {m.name.removeprefix(f"{top}/") for m in tar.getmembers() if m.isfile()}
    missing = SDIST_NEEDS - names
    assert not missing, f"the sdist lacks {sorted(missing)}"
    leaked = sorted(
        n
        for n in names
        if n.split("/")[0] in {".deps", ".venv", "build", "dist", ".hypothesis"}
        or n.endswith((".so", ".pyc", ".o"))
        or n == "composefs_py/_lcfs.c"
    )
    assert leaked == [], f"the sdist carries local state: {leaked}"


def test_sdist_builds_without_libcomposefs(tmp_path: Path) -> None:
    # Only building the extension needs the library; an sdist is source.
    pytest.importorskip("setuptools")
    env = {k: v for k, v in os.environ.items() if k not in {"COMPOSEFS_PREFIX", "PYTHONPATH"}}
    env["PKG_CONFIG_PATH"] = env["PKG_CONFIG_LIBDIR"] = str(tmp_path / "no-pkgconfig")
    sdist = _build_sdist(tmp_path, env)
    with tarfile.open(sdist) as tar:
        assert f"{sdist.name.removesuffix('.tar.gz')}/csrc/build_ffi.py" in tar.getnames()


@pytest.mark.slow
def test_sdist_installs_into_a_fresh_venv_and_writes_an_image(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    env = _libcomposefs_env()
    sdist = _build_sdist(tmp_path, env)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    # Build isolation as a user gets it: setuptools, wheel and cffi come from
    # pip's cache or PIP_FIND_LINKS, else from PyPI.
    proc = _run([str(python), "-m", "pip", "install", "-q", str(sdist)], tmp_path, env)
    offline = ("No matching distribution", "Could not find a version", "NewConnectionError")
    if proc.returncode != 0 and any(s in proc.stderr for s in offline):
        pytest.skip(
            f"the build requirements cannot be fetched (no network or wheels): "
            f"{proc.stderr.strip().splitlines()[-1]}"
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = tmp_path / "smoke.cfs"
    ran = _run([str(python), "-c", SMOKE_SCRIPT, SMOKE_DUMPFILE, str(image)], tmp_path, env)
    assert ran.returncode == 0, ran.stderr[-3000:]
    from composefs_py import parse_dumpfile, write_image

    expected = write_image(parse_dumpfile(SMOKE_DUMPFILE.encode()), tmp_path / "here.cfs")
    assert ran.stdout.strip() == expected.hex()
    assert image.read_bytes() == (tmp_path / "here.cfs").read_bytes()


# --- what an embedding program installs: the extras and the wheel ---------

#: The runtime dependencies an embedding program gets, and nothing else.
RUNTIME_DEPENDENCIES = {"cffi", "msgspec", "zstandard"}
#: Imported only by composefs_py.strategies (and fuzz/), installed by the extra.
FUZZ_ONLY = {"hypothesis", "sortedcontainers"}
SMOKE_TOC = REPO / "tests" / "data" / "small.zstd-chunked.toc.json"
# Run by a python that may lack Hypothesis: builds an image from a TOC and
# from a dumpfile with the native backend, then tries the strategies.
EMBED_SCRIPT = """
import sys
from pathlib import Path
import composefs_py
toc, dumpfile, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
for name, tree in (("toc", composefs_py.parse_toc(toc.read_bytes())),
                   ("dump", composefs_py.parse_dumpfile(dumpfile.encode()))):
    print(name, composefs_py.write_image(tree, out / (name + ".cfs"), backend="native").hex())
loaded = {m.split(".")[0] for m, mod in sys.modules.items() if mod is not None}
print("loaded", " ".join(sorted(loaded & {"hypothesis", "sortedcontainers"})) or "-")
try:
    import composefs_py.strategies
except ImportError as exc:
    print("strategies", type(exc).__name__, str(exc).replace(chr(10), " "))
else:
    print("strategies imported")
"""
#: Makes ``hypothesis`` and ``sortedcontainers`` unimportable, as in a venv without the extra.
WITHOUT_FUZZ_EXTRA = (
    "import sys\nfor _name in ('hypothesis', 'sortedcontainers'):\n    sys.modules[_name] = None\n"
)


def _pyproject() -> dict[str, Any]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_hypothesis_is_only_in_the_fuzz_extra() -> None:
    project = _pyproject()["project"]
    runtime = {_requirement_name(r) for r in project["dependencies"]}
    assert runtime == RUNTIME_DEPENDENCIES
    extras = project["optional-dependencies"]
    assert "hypothesis" in {_requirement_name(r) for r in extras["fuzz"]}
    # the suite needs the strategies: [test] pulls the fuzz extra in
    assert "composefs-py[fuzz]" in {r.replace(" ", "") for r in extras["test"]}


def test_only_strategies_imports_hypothesis() -> None:
    offenders = {
        str(p.relative_to(REPO)): sorted({n.split(".")[0] for n in imported_modules(p)} & FUZZ_ONLY)
        for p in python_files()
        if p.name != "strategies.py"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _embed_report(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.strip().splitlines())


def test_package_works_without_the_fuzz_extra(tmp_path: Path) -> None:
    # The checkout's package, with Hypothesis made unimportable: everything
    # but the strategies works, and those say which extra to install.
    script = WITHOUT_FUZZ_EXTRA + EMBED_SCRIPT
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = _run(
        [sys.executable, "-c", script, str(SMOKE_TOC), SMOKE_DUMPFILE, str(tmp_path)], REPO, env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = _embed_report(proc.stdout)
    assert report["loaded"] == "-"
    assert report["strategies"].startswith("ModuleNotFoundError")
    assert "composefs-py[fuzz]" in report["strategies"]
    assert "hypothesis" in report["strategies"].lower()
