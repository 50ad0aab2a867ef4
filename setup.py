"""Build composefs-py's compiled binding ``composefs_py._lcfs``.

Metadata lives in pyproject.toml; this file wires the cffi builder in
``csrc/build_ffi.py`` (API mode, out of line) and makes the built module fit
for other machines.

Where libcomposefs (>= 1.0.6) comes from, first hit wins:

* ``COMPOSEFS_PREFIX=/some/prefix``: headers in ``include/libcomposefs``,
  library in ``lib``;
* ``pkg-config composefs``, honouring ``PKG_CONFIG_PATH``;
* ``.deps/prefix`` in this checkout, built by ``scripts/bootstrap.sh``.

A prefix built by the bootstrap is linked statically (its PIC
``libcomposefs.a``), so the module, and a wheel of it, needs no libcomposefs
on the machine that runs it; a system library or another prefix is linked
dynamically. ``COMPOSEFS_PY_LINK=static|shared`` overrides the choice (see
``csrc/build_ffi.py``).

What the module carries, checked by ``tests/test_packaging.py``:

* no path of the build machine: an interpreter built with
  ``-Wl,-rpath,<its lib dir>`` in its ``LDSHARED`` (pyenv's) would stamp that
  RUNPATH on every extension; it is dropped here (an extension module never
  needs its interpreter's lib dir);
* a truthful wheel tag: cffi compiles the module against the stable ABI
  (``Py_LIMITED_API``, an ``.abi3.so``) unless the interpreter is a debug or
  free-threaded build, and the wheel is tagged ``cp311-abi3`` only when every
  built module is such an ``.abi3.so``; otherwise ``cpXY-cpXY``. The platform
  tag stays ``linux_x86_64``: the module needs the glibc and libcrypto 3 of
  the build machine's generation (Debian 12 or later), not manylinux's.

``pip install .`` and ``pip install -e .`` both work once a libcomposefs
exists. Making an sdist needs none: cffi runs ``csrc/build_ffi.py`` (which
looks the library up) as soon as ``setup()`` sees ``cffi_modules``, so a run
that only makes an sdist leaves them out; MANIFEST.in names the build inputs
the sdist carries.
"""

import sys

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext

BUILDS = {"build", "build_ext", "bdist_wheel", "install", "develop", "editable_wheel"}
SDIST_ONLY = "sdist" in sys.argv[1:] and not BUILDS & set(sys.argv[1:])
#: The oldest Python the package supports (pyproject's requires-python): the
#: stable-ABI tag's version.
STABLE_ABI_TAG = "cp311"


def _is_rpath(arg: str) -> bool:
    if arg.startswith("-R"):
        return True
    if not arg.startswith("-Wl,"):
        return False
    flags = arg.split(",")[1:]
    return any(
        f in {"-rpath", "--rpath", "-R"} or f.startswith(("-rpath=", "--rpath=")) for f in flags
    )


class BuildExtWithoutInterpreterRpath(build_ext):
    """build_ext without the interpreter's own rpath in the link command."""

    def build_extensions(self) -> None:
        self.compiler.linker_so = [a for a in self.compiler.linker_so if not _is_rpath(a)]
        super().build_extensions()


class BdistWheelTaggedTruthfully(bdist_wheel):
    """bdist_wheel that claims abi3 exactly when every built module is an .abi3.so."""

    def get_tag(self) -> tuple[str, str, str]:
        if not self.root_is_pure and not self.py_limited_api:
            built = self.get_finalized_command("build_ext").get_outputs()
            if built and all(path.endswith(".abi3.so") for path in built):
                self.py_limited_api = STABLE_ABI_TAG
        return super().get_tag()


if __name__ == "__main__":  # as setuptools runs it; tests import the helpers
    setup(
        setup_requires=["cffi>=1.15"],
        cffi_modules=[] if SDIST_ONLY else ["csrc/build_ffi.py:ffibuilder"],
        cmdclass={
            "build_ext": BuildExtWithoutInterpreterRpath,
            "bdist_wheel": BdistWheelTaggedTruthfully,
        },
    )
