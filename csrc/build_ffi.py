"""cffi builder of ``composefs_py._lcfs`` (API mode, out of line).

``setup.py`` names ``csrc/build_ffi.py:ffibuilder`` in ``cffi_modules``.  The
declarations come from real header files, ``lcfs.cdef.h`` (the libcomposefs
API we bind) and ``shim.h`` (our ``cfspy_*`` helpers, compiled from
``shim.c`` into the same module).

libcomposefs (>= 1.0.6) is looked up, first hit wins:

1. ``COMPOSEFS_PREFIX``: a prefix with ``include/libcomposefs`` and ``lib``
   (its ``lib/pkgconfig/composefs.pc`` is used when present);
2. ``pkg-config composefs`` as the environment sets it up (``PKG_CONFIG_PATH``);
3. ``.deps/prefix`` in this checkout, where ``scripts/bootstrap.sh`` builds it.

A library outside the system's default directories is linked with an rpath,
so the module needs no ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MIN_VERSION = "1.0.6"
SYSTEM_LIBDIRS = {"/lib", "/lib64", "/usr/lib", "/usr/lib64"}


class LibraryLocation:
    """Where libcomposefs is: compiler and linker directories, its version."""

    # A plain class: cffi exec()s this file, which dataclasses cannot handle.
    def __init__(
        self,
        include_dirs: list[str],
        library_dirs: list[str],
        rpath: list[str] | None = None,
        version: str = "unknown",
    ) -> None:
        self.include_dirs = include_dirs
        self.library_dirs = library_dirs
        self.rpath = rpath if rpath is not None else []
        self.version = version


def _pkg_config(pkg_config_path: str | None) -> LibraryLocation | None:
    exe = shutil.which("pkg-config")
    if exe is None:
        return None
    env = dict(os.environ)
    if pkg_config_path is not None:
        env["PKG_CONFIG_PATH"] = pkg_config_path

    def query(*args: str) -> str | None:
        proc = subprocess.run([exe, *args, "composefs"], env=env, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None

    if query(f"--atleast-version={MIN_VERSION}") is None:
        return None
    libdir = query("--variable=libdir") or ""
    loc = LibraryLocation(
        include_dirs=[f[2:] for f in (query("--cflags-only-I") or "").split()],
        library_dirs=[f[2:] for f in (query("--libs-only-L") or "").split()],
        version=query("--modversion") or "unknown",
    )
    if libdir and not _is_system_libdir(libdir):
        loc.rpath.append(libdir)
    return loc


def _is_system_libdir(libdir: str) -> bool:
    path = os.path.normpath(libdir)
    return path in SYSTEM_LIBDIRS or os.path.dirname(path) in {"/usr/lib", "/lib"}


def _from_prefix(prefix: Path) -> LibraryLocation:
    pcdirs = [prefix / d / "pkgconfig" for d in ("lib", "lib64")]
    found = _pkg_config(os.pathsep.join(str(d) for d in pcdirs if d.is_dir()))
    if found is not None:
        return found
    header = prefix / "include" / "libcomposefs" / "lcfs-writer.h"
    if not header.is_file():
        raise RuntimeError(f"COMPOSEFS_PREFIX={prefix}: {header} does not exist")
    libdir = next(
        (str(prefix / d) for d in ("lib", "lib64") if (prefix / d).is_dir()),
        str(prefix / "lib"),
    )
    return LibraryLocation([str(prefix / "include")], [libdir], [libdir])


def find_libcomposefs() -> LibraryLocation:
    prefix = os.environ.get("COMPOSEFS_PREFIX")
    if prefix:
        return _from_prefix(Path(prefix))
    found = _pkg_config(None)
    if found is not None:
        return found
    local = REPO / ".deps" / "prefix"
    if (local / "lib" / "pkgconfig" / "composefs.pc").is_file():
        return _from_prefix(local)
    raise RuntimeError(
        f"libcomposefs >= {MIN_VERSION} not found: run scripts/bootstrap.sh "
        "(or set COMPOSEFS_PREFIX or PKG_CONFIG_PATH)"
    )


def _relative(path: Path) -> str:
    # setuptools wants sources relative to setup.py's folder (the cwd).
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def make_builder() -> FFI:
    lib = find_libcomposefs()
    builder = FFI()
    builder.cdef((HERE / "lcfs.cdef.h").read_text() + (HERE / "shim.h").read_text())
    builder.set_source(
        "composefs_py._lcfs",
        "#include <libcomposefs/lcfs-writer.h>\n"
        "#include <libcomposefs/lcfs-mount.h>\n"
        '#include "shim.h"\n',
        sources=[_relative(HERE / "shim.c")],
        include_dirs=[str(HERE), *lib.include_dirs],
        library_dirs=lib.library_dirs,
        runtime_library_dirs=lib.rpath,
        libraries=["composefs"],
        define_macros=[("CFSPY_LCFS_VERSION", f'"{lib.version}"')],
        extra_compile_args=["-Wall"],
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
