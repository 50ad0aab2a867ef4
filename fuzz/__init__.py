"""Fuzzing for composefs-py: Hypothesis properties and a coverage-guided harness.

* :mod:`fuzz.targets` -- the targets (``bytes -> None``) over the validators
  and the native writer and reader;
* :mod:`fuzz.differential` -- the differential targets' comparisons and
  their tables of known one-sided acceptances; :mod:`fuzz.peers` -- the
  peers they run (podman's TOC parser and dump, mkcomposefs);
* :mod:`fuzz.harness` -- the atheris/libFuzzer entry point for one target;
* ``python -m fuzz`` (:mod:`fuzz.__main__`) -- campaigns, replays, seeds;
* ``fuzz/corpus/<target>/`` -- the seed corpus; ``fuzz/crashes/<target>/``
  -- minimized findings, replayed by ``tests/test_fuzz_crashes.py``;
* :func:`hypothesis_database` -- the example database the properties share.

The Hypothesis strategies themselves are public: :mod:`composefs_py.strategies`.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase
except ImportError as exc:
    raise ModuleNotFoundError(
        "fuzz/ needs Hypothesis: pip install -e '.[fuzz]' (or '.[test]')", name="hypothesis"
    ) from exc

__all__ = ["DATABASE_ENV", "hypothesis_database"]

#: Environment variable naming the Hypothesis example database directory; put
#: it on a shared filesystem (or sync it) to share found examples between
#: machines and CI runs.
DATABASE_ENV = "COMPOSEFS_PY_HYPOTHESIS_DB"
_DEFAULT_DATABASE = Path(__file__).resolve().parent.parent / ".hypothesis-db"


def hypothesis_database() -> ExampleDatabase:
    """The example database directory: ``$COMPOSEFS_PY_HYPOTHESIS_DB``, else ``.hypothesis-db``."""
    return DirectoryBasedExampleDatabase(os.environ.get(DATABASE_ENV) or _DEFAULT_DATABASE)
