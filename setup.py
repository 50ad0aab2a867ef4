"""Build composefs-py's compiled binding ``composefs_py._lcfs``.

Metadata lives in pyproject.toml; this file only wires the cffi builder in
``csrc/build_ffi.py`` (API mode, out of line).

Where libcomposefs (>= 1.0.6) comes from, first hit wins:

* ``COMPOSEFS_PREFIX=/some/prefix``: headers in ``include/libcomposefs``,
  library in ``lib`` (linked with an rpath);
* ``pkg-config composefs``, honouring ``PKG_CONFIG_PATH``;
* ``.deps/prefix`` in this checkout, built by ``scripts/bootstrap.sh``
  (linked with an rpath, so no ``LD_LIBRARY_PATH`` is needed).

``pip install .`` and ``pip install -e .`` both work once one of these exists.
Making an sdist needs none of them: cffi runs ``csrc/build_ffi.py`` (which
looks the library up) as soon as ``setup()`` sees ``cffi_modules``, so a run
that only makes an sdist leaves them out; MANIFEST.in names the build inputs
the sdist carries.
"""

import sys

from setuptools import setup

BUILDS = {"build", "build_ext", "bdist_wheel", "install", "develop", "editable_wheel"}
SDIST_ONLY = "sdist" in sys.argv[1:] and not BUILDS & set(sys.argv[1:])

setup(
    setup_requires=["cffi>=1.15"],
    cffi_modules=[] if SDIST_ONLY else ["csrc/build_ffi.py:ffibuilder"],
)
