"""The ``dumpfile_diff`` target as a standalone atheris script (see fuzz/harness.py, standalone)."""

import sys

from fuzz.harness import instrumented, standalone

_run = instrumented("dumpfile_diff")


def TestOneInput(data: bytes) -> None:
    _run(data)


if __name__ == "__main__":
    standalone(sys.argv, TestOneInput)
