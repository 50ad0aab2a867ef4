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

How it is linked (``COMPOSEFS_PY_LINK``):

* ``static`` (the default for a prefix built by ``scripts/bootstrap.sh``,
  which stamps it with ``.version``): its position-independent
  ``libcomposefs.a`` goes into the module, with its symbols kept private
  (``--exclude-libs``: they neither leak out nor bind to another copy of the
  library in the process). What the archive needs itself (``pkg-config
  --static``: libcrypto, for fs-verity digests) stays a dynamic system
  library, present on Debian 12 and 13 alike. No rpath: the module carries no
  path of the build machine, which is what a wheel for other machines needs.
* ``shared`` (the default for a system library or any other prefix): linked
  against ``libcomposefs.so``; a library outside the system's default
  directories gets an rpath, so the module needs no ``LD_LIBRARY_PATH``.
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
LINK_ENV = "COMPOSEFS_PY_LINK"
LINK_MODES = ("auto", "static", "shared")
#: Written by scripts/bootstrap.sh into the prefix it built.
BOOTSTRAP_STAMP = ".version"
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
        # Set when the static archive is linked: its path, then the linker
        # arguments of what the archive itself needs.
        self.static_archive: str | None = None
        self.static_deps: list[str] = []


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


def _link_mode() -> str:
    mode = os.environ.get(LINK_ENV, "") or "auto"
    if mode not in LINK_MODES:
        raise RuntimeError(f"{LINK_ENV}={mode!r}: expected one of {', '.join(LINK_MODES)}")
    return mode


def _static_deps(prefix: Path) -> list[str]:
    """Linker arguments for what libcomposefs.a needs, from ``pkg-config --static``."""
    exe = shutil.which("pkg-config")
    pcdirs = [str(prefix / d / "pkgconfig") for d in ("lib", "lib64")]
    if exe is not None:
        env = {**os.environ, "PKG_CONFIG_PATH": os.pathsep.join(pcdirs)}
        proc = subprocess.run(
            [exe, "--static", "--libs", "composefs"], env=env, capture_output=True, text=True
        )
        if proc.returncode == 0:
            # -L stays (link time only); -lcomposefs is the archive itself
            return [a for a in proc.stdout.split() if a != "-lcomposefs"]
    return ["-lcrypto"]


def _link_statically(loc: LibraryLocation, prefix: Path, mode: str) -> LibraryLocation:
    archive = next(
        (
            prefix / d / "libcomposefs.a"
            for d in ("lib", "lib64")
            if (prefix / d / "libcomposefs.a").is_file()
        ),
        None,
    )
    built_here = archive is not None and (prefix / BOOTSTRAP_STAMP).is_file()
    if mode == "shared" or (mode == "auto" and not built_here):
        return loc
    if archive is None:
        raise RuntimeError(f"{LINK_ENV}=static: no libcomposefs.a in {prefix}/lib")
    loc.static_archive = str(archive)
    loc.static_deps = _static_deps(prefix)
    loc.rpath = []
    return loc


def find_libcomposefs() -> LibraryLocation:
    mode = _link_mode()
    prefix = os.environ.get("COMPOSEFS_PREFIX")
    if prefix:
        return _link_statically(_from_prefix(Path(prefix)), Path(prefix), mode)
    found = _pkg_config(None)
    if found is not None and mode != "static":
        return found
    local = REPO / ".deps" / "prefix"
    if (local / "lib" / "pkgconfig" / "composefs.pc").is_file():
        return _link_statically(_from_prefix(local), local, mode)
    if found is not None:
        raise RuntimeError(
            f"{LINK_ENV}=static: only a system libcomposefs was found; set COMPOSEFS_PREFIX "
            "to a prefix with libcomposefs.a (scripts/bootstrap.sh builds one)"
        )
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


def _link_kind(lib: LibraryLocation) -> str:
    return "shared" if lib.static_archive is None else "static"


def _link_arguments(lib: LibraryLocation) -> dict[str, list[str]]:
    if lib.static_archive is None:
        return {
            "library_dirs": lib.library_dirs,
            "runtime_library_dirs": lib.rpath,
            "libraries": ["composefs"],
        }
    # The archive follows the module's objects; --as-needed keeps only the
    # system libraries the archive really uses (NEEDED lists no spare one).
    return {
        "extra_objects": [lib.static_archive],
        # a rebuilt archive relinks the module
        "depends": [lib.static_archive],
        "extra_link_args": [
            "-Wl,--as-needed",
            *lib.static_deps,
            f"-Wl,--exclude-libs,{os.path.basename(lib.static_archive)}",
        ],
    }


def make_builder() -> FFI:
    lib = find_libcomposefs()
    builder = FFI()
    builder.cdef((HERE / "lcfs.cdef.h").read_text() + (HERE / "shim.h").read_text())
    builder.set_source(
        "composefs_py._lcfs",
        # The link kind is written into the generated C, so switching it
        # changes that file and an in-place rebuild relinks the module.
        f"/* libcomposefs {lib.version}, linked {_link_kind(lib)} */\n"
        "#include <libcomposefs/lcfs-writer.h>\n"
        "#include <libcomposefs/lcfs-mount.h>\n"
        '#include "shim.h"\n',
        sources=[_relative(HERE / "shim.c")],
        include_dirs=[str(HERE), *lib.include_dirs],
        define_macros=[("CFSPY_LCFS_VERSION", f'"{lib.version}"')],
        extra_compile_args=["-Wall"],
        **_link_arguments(lib),
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
