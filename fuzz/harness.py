"""libFuzzer entry point for one target: ``python -m fuzz.harness TARGET [libFuzzer args]``.

``python -m fuzz run`` starts this module with the environment the sanitized
build needs (``LD_PRELOAD`` of atheris' ``asan_with_fuzzer.so``,
``CFSPY_ASAN_PYLIB`` naming the folder of the ASan+UBSan build of
``composefs_py._lcfs``); run it by hand only to pass libFuzzer options the
runner does not know.  composefs_py and the targets are imported under
atheris' instrumentation, so libFuzzer sees Python branch coverage as well as
the C coverage of the sanitized libcomposefs.  ``CFSPY_FUZZ_UNCHECKED=1``
skips read_image's structural check (to replay the libcomposefs loader bugs
it stops).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported at run time only under atheris' instrumentation
    from composefs_py._erofs import ImageSummary


def _unchecked(data: bytes | bytearray | memoryview, **_options: object) -> ImageSummary:
    """Stands in for composefs_py._erofs.check_image under CFSPY_FUZZ_UNCHECKED=1."""
    from composefs_py._erofs import ImageSummary

    return ImageSummary(version=0, inodes=0, directories=0, entries=0, depth=0)


def instrumented(target: str) -> Callable[[bytes], None]:
    """``target``'s function, with composefs_py and fuzz imported under atheris' instrumentation.

    Used by :func:`main` and by the standalone ``fuzz/fuzz_<target>.py``
    entry points (OSS-Fuzz, ClusterFuzzLite).  Under ``CFSPY_ASAN_PYLIB`` the
    sanitized ``composefs_py._lcfs`` found there shadows the regular one.
    """
    import atheris  # type: ignore[import-untyped]  # no stubs exist

    import composefs_py

    pylib = os.environ.get("CFSPY_ASAN_PYLIB")
    if pylib:
        # The sanitized _lcfs shadows the regular one; nothing else is there.
        composefs_py.__path__ = [pylib, *composefs_py.__path__]
    # The cost target measures the package in forked children, whose
    # coverage never reaches libFuzzer: instrumenting it there would only
    # slow the measured code down; its own choices (fuzz.*) are instrumented.
    include = ["fuzz"] if target == "cost" else ["composefs_py", "fuzz"]
    with atheris.instrument_imports(include=include):
        # Every module a target reaches is imported here, not lazily by the
        # target, or atheris would not instrument it.
        from composefs_py import _native, layers, objects, writer  # noqa: F401
        from fuzz import targets

        if target.endswith("_diff"):  # the differential targets' peers and tables
            from fuzz import differential, peers  # noqa: F401
    if pylib and not _native.__spec__:
        raise RuntimeError("composefs_py._native did not load")
    if os.environ.get("CFSPY_FUZZ_UNCHECKED") == "1":
        # Replays of the raw libcomposefs loader bugs (fuzz/crashes/README.md):
        # the bytes reach lcfs_load_node_from_image without the structural
        # check that read_image runs first.
        setattr(_native, "check_image", _unchecked)  # noqa: B010 (not exported)
    if target not in targets.TARGETS:
        sys.exit(f"unknown target {target!r}; choose one of {', '.join(targets.TARGETS)}")
    return targets.TARGETS[target].run


def standalone(argv: list[str], test_one_input: Callable[[bytes], None]) -> None:
    """Fuzz ``test_one_input`` with libFuzzer's options from ``argv``.

    The ``fuzz/fuzz_<target>.py`` scripts are the layout OSS-Fuzz and
    ClusterFuzzLite expect of a Python project: each defines
    ``TestOneInput`` (the target of :func:`instrumented`) and calls this;
    ``compile_python_fuzzer`` packages it (.clusterfuzzlite/build.sh).
    """
    import atheris

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit("usage: python -m fuzz.harness TARGET [libFuzzer options] [corpus dirs]")
    run = instrumented(argv[1])
    # libFuzzer re-executes argv[0] (fork mode, crash minimization, merge):
    # the runner passes a wrapper script that reaches this target.
    argv0 = os.environ.get("CFSPY_FUZZ_ARGV0", argv[0])
    standalone([argv0, *argv[2:]], run)


if __name__ == "__main__":
    main(sys.argv)
