"""Packaging rules: only _native touches the compiled module; wheels build."""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Callable
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


# What the sdist must carry for ``pip install composefs_py-*.tar.gz`` to build.
SDIST_NEEDS = {
    "PKG-INFO",
    "pyproject.toml",
    "setup.py",
    "README.md",
    "LICENSE",
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


def _copy_checkout(src: Path) -> Path:
    """The checkout's files as git sees them (tracked or new, not ignored), copied to ``src``."""
    listing = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    tracked = subprocess.run(listing, cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    return src


def _build_sdist(tmp_path: Path, env: dict[str, str]) -> Path:
    """Build the sdist through the PEP 517 backend from a copy with local state planted."""
    src = _copy_checkout(tmp_path / "src")
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
print("module", composefs_py.__file__)
mapped = {f.split(None, 5)[-1].strip() for f in open("/proc/self/maps")}
print("libcomposefs", " ".join(sorted(m for m in mapped if "libcomposefs" in m)) or "-")
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


#: What the extension may need of the system: Debian 12 and 13 both have them.
SYSTEM_LIBRARIES = {"libc.so.6", "libcrypto.so.3"}
#: Debian 12's glibc; a symbol version above it would not load there.
OLDEST_GLIBC = (2, 36)
#: Run as ``sh -c HIDE_DEPS sh DIR CMD...`` in a new mount namespace: the
#: bootstrap's libcomposefs (DIR) disappears behind an empty tmpfs, as on a
#: machine that never had it, then CMD runs.
HIDE_DEPS = 'mount -t tmpfs cfspy-no-deps "$1" && shift && exec "$@"'
ISOLATED_ENV = {"LD_LIBRARY_PATH", "LD_PRELOAD", "COMPOSEFS_PREFIX", "PKG_CONFIG_PATH"}


def _build_wheel(tmp_path: Path, env: dict[str, str]) -> Path:
    src = _copy_checkout(tmp_path / "src")
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    proc = _run([*build, "-w", str(tmp_path / "dist"), str(src)], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("composefs_py-*.whl")
    return wheel


def _readelf(*args: str) -> str:
    return subprocess.run(
        ["readelf", "-W", *args], capture_output=True, text=True, check=True
    ).stdout


def _check_extension(so: Path) -> None:
    """The module needs no libcomposefs, no build-machine path, only old-enough system libs."""
    dynamic = _readelf("-d", str(so))
    assert not re.findall(r"\((?:RPATH|RUNPATH)\)\s+(.*)", dynamic)
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic))
    assert needed <= SYSTEM_LIBRARIES, f"needs {sorted(needed - SYSTEM_LIBRARIES)}"
    symbols = _readelf("--dyn-syms", str(so))
    # libcomposefs is inside, private: nothing of it undefined or exported
    assert not re.findall(r"\slcfs_\w+", symbols)
    glibc = {tuple(map(int, v.split("."))) for v in re.findall(r"@GLIBC_([0-9.]+)", symbols)}
    assert max(glibc) <= OLDEST_GLIBC
    assert set(re.findall(r"@(OPENSSL_[0-9.]+)", symbols)) <= {"OPENSSL_3.0.0"}


def _wheel_tags(wheel: zipfile.ZipFile, name: str) -> tuple[str, str, str]:
    python_tag, abi_tag, platform_tag = name.removesuffix(".whl").split("-")[-3:]
    (wheel_file,) = [n for n in wheel.namelist() if n.endswith(".dist-info/WHEEL")]
    assert f"Tag: {python_tag}-{abi_tag}-{platform_tag}" in wheel.read(wheel_file).decode()
    return python_tag, abi_tag, platform_tag


def _interpreters(abi_tag: str) -> list[Path]:
    """Pythons to install the wheel into: Debian's own, and a newer one for an abi3 wheel."""
    found = [Path(sys.executable)]
    debian = Path("/usr/bin/python3")
    probe = "import sys, venv, ensurepip; print(sys.version_info >= (3, 11))"
    checked = subprocess.run([debian, "-c", probe], capture_output=True, text=True, check=False)
    if checked.stdout.strip() == "True":
        found = [debian]
    if abi_tag == "abi3":
        # a newer CPython on PATH or installed beside this one (pyenv's layout)
        newer = [shutil.which(f"python3.{minor}") for minor in (14, 13, 12)]
        beside = sorted(Path(sys.base_prefix).parent.glob("3.1[2-9]*/bin/python3"), reverse=True)
        for exe in [*filter(None, newer), *beside]:
            ran = subprocess.run([exe, "-c", probe], capture_output=True, text=True, check=False)
            if ran.stdout.strip() == "True":
                found.append(Path(exe))
                break
    return found


def _fresh_venv(python: Path, path: Path) -> Path:
    subprocess.run([python, "-m", "venv", str(path)], check=True, capture_output=True)
    return path / "bin" / "python"


def _installed(python: Path, env: dict[str, str]) -> set[str]:
    listed = _run([str(python), "-m", "pip", "list", "--format", "json"], python.parent, env)
    return {d["name"].lower().replace("_", "-") for d in json.loads(listed.stdout)}


@pytest.mark.slow
def test_wheel_installs_elsewhere_without_libcomposefs_or_extras(
    tmp_path: Path, run_mkcomposefs: Callable[..., bytes]
) -> None:
    pytest.importorskip("setuptools")
    if shutil.which("readelf") is None:
        pytest.skip("readelf missing (Debian package binutils)")
    build_env = _libcomposefs_env()
    prefix = Path(build_env.get("COMPOSEFS_PREFIX", "/nonexistent"))
    if not (prefix / "lib" / "libcomposefs.a").is_file() or not (prefix / ".version").is_file():
        pytest.skip("no libcomposefs.a built by scripts/bootstrap.sh to link statically")
    wheel_path = _build_wheel(tmp_path, build_env)
    with zipfile.ZipFile(wheel_path) as wheel:
        python_tag, abi_tag, platform_tag = _wheel_tags(wheel, wheel_path.name)
        (so_name,) = [n for n in wheel.namelist() if re.match(r"composefs_py/_lcfs\..*so$", n)]
        so = Path(wheel.extract(so_name, tmp_path / "unpacked"))
        licence = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert licence, "the wheel ships no LICENSE"
        licence_text = wheel.read(licence[0]).decode()
        (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        requires = re.findall(r"^Requires-Dist: (.*)$", wheel.read(metadata).decode(), re.M)
    # tagged truthfully: a plain linux platform (no manylinux claim), abi3
    # only for a stable-ABI module
    assert platform_tag == f"linux_{os.uname().machine}"
    if abi_tag == "abi3":
        assert so_name.endswith(".abi3.so") and python_tag == "cp311"
    else:
        assert abi_tag == python_tag == f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert "Apache License" in licence_text and "libcomposefs" in licence_text
    assert [r for r in requires if "hypothesis" in r] == ['hypothesis>=6.80; extra == "fuzz"']
    _check_extension(so)

    toc = SMOKE_TOC.read_bytes()
    from composefs_py import dump, parse_toc

    expected = {
        "toc": run_mkcomposefs(dump(parse_toc(toc)).encode()),
        "dump": run_mkcomposefs(SMOKE_DUMPFILE.encode()),
    }
    env = {k: v for k, v in build_env.items() if k not in ISOLATED_ENV}
    hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c", HIDE_DEPS, "sh"]
    hide.append(str((REPO / ".deps").resolve()))
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        hide = []  # still checked: no libcomposefs mapped into the process
    for n, interpreter in enumerate(_interpreters(abi_tag)):
        python = _fresh_venv(interpreter, tmp_path / f"venv{n}")
        before = _installed(python, env)
        proc = _run([str(python), "-m", "pip", "install", "-q", str(wheel_path)], tmp_path, env)
        offline = ("No matching distribution", "Could not find a version", "NewConnectionError")
        if proc.returncode != 0 and any(s in proc.stderr for s in offline):
            pytest.skip(f"cffi, msgspec, zstandard cannot be fetched: {proc.stderr.strip()[-200:]}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        added = _installed(python, env) - before
        assert added <= {"composefs-py", "pycparser"} | RUNTIME_DEPENDENCIES, added
        out = tmp_path / f"out{n}"
        out.mkdir()
        args = [str(python), "-c", EMBED_SCRIPT, str(SMOKE_TOC), SMOKE_DUMPFILE, str(out)]
        ran = _run([*hide, *args], tmp_path, env)
        assert ran.returncode == 0, f"{interpreter}: {ran.stderr[-3000:]}"
        report = _embed_report(ran.stdout)
        assert Path(report["module"]).is_relative_to(python.parent.parent)
        assert report["libcomposefs"] == "-"
        assert report["loaded"] == "-"
        assert "composefs-py[fuzz]" in report["strategies"]
        for name, image in expected.items():
            assert (out / f"{name}.cfs").read_bytes() == image, f"{interpreter}: {name} image"


def _fake_prefix(root: Path, *, archive: bool, stamp: bool) -> Path:
    (root / "include" / "libcomposefs").mkdir(parents=True)
    (root / "include" / "libcomposefs" / "lcfs-writer.h").write_text("")
    (root / "lib").mkdir()
    if archive:
        (root / "lib" / "libcomposefs.a").write_bytes(b"!<arch>\n")
    if stamp:
        (root / ".version").write_text("1.0.8\n")
    return root


@pytest.mark.parametrize(
    ("archive", "stamp", "mode", "linked"),
    [
        (True, True, "", "static"),  # the bootstrap's prefix
        (True, False, "", "shared"),  # someone else's prefix: its archive may not be PIC
        (False, True, "", "shared"),
        (True, True, "shared", "shared"),
        (True, False, "static", "static"),
        (False, False, "static", "error"),
    ],
)
def test_build_links_the_bootstraps_archive_statically(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    archive: bool,
    stamp: bool,
    mode: str,
    linked: str,
) -> None:
    prefix = _fake_prefix(tmp_path / "prefix", archive=archive, stamp=stamp)
    monkeypatch.setenv("COMPOSEFS_PREFIX", str(prefix))
    monkeypatch.setenv("COMPOSEFS_PY_LINK", mode)
    monkeypatch.setenv("PKG_CONFIG_PATH", str(tmp_path / "none"))
    run = functools.partial(runpy.run_path, str(REPO / "csrc" / "build_ffi.py"))
    if linked == "error":  # the builder module itself looks the library up
        with pytest.raises(RuntimeError, match=r"static: no libcomposefs\.a in"):
            run()
        return
    builder = run()
    lib = builder["find_libcomposefs"]()
    args = builder["_link_arguments"](lib)
    if linked == "static":
        assert args["extra_objects"] == [str(prefix / "lib" / "libcomposefs.a")]
        assert "-lcrypto" in args["extra_link_args"]
        assert "libraries" not in args and "runtime_library_dirs" not in args
    else:
        assert args["libraries"] == ["composefs"]
        assert args["runtime_library_dirs"] == [str(prefix / "lib")]


def test_the_interpreters_rpath_is_dropped_from_the_link() -> None:
    is_rpath = runpy.run_path(str(REPO / "setup.py"))["_is_rpath"]
    dropped = [
        "-Wl,-rpath,/root/.pyenv/lib",
        "-Wl,-rpath=/x",
        "-Wl,-R,/x",
        "-R/x",
        "-Wl,--rpath,/x",
    ]
    kept = ["-shared", "-L/root/.pyenv/lib", "-Wl,--as-needed", "-Wl,-O1"]
    assert [a for a in dropped + kept if not is_rpath(a)] == kept
