"""Shared pytest fixtures and Hypothesis profiles.

Fixtures (session scoped):

``mkcomposefs``, ``composefs_info``
    Path of the upstream tools, the test oracles: ``$COMPOSEFS_PREFIX/bin``,
    then ``.deps/prefix/bin`` (built by scripts/bootstrap.sh), then ``PATH``.
``composefs_src``
    Path of the extracted upstream composefs source (Debian's source
    package, fetched by the bootstrap); its ``tests/assets`` holds the
    upstream dumpfiles and checksums.  ``$COMPOSEFS_SRC`` overrides.
``fsck_erofs``
    Path of ``fsck.erofs`` (Debian's erofs-utils), or the test is skipped.
``run_mkcomposefs``
    ``run_mkcomposefs(dump_text: bytes, *args) -> bytes``: the image
    ``mkcomposefs --from-file`` writes for that dumpfile.

Hypothesis profiles: ``ci`` (default) and ``long``; pick one with
``HYPOTHESIS_PROFILE=long``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parent.parent
DEPS = REPO / ".deps"

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "long",
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _find_tool(name: str, *, sbin: bool = False) -> Path | None:
    dirs = []
    prefix = os.environ.get("COMPOSEFS_PREFIX")
    if prefix:
        dirs.append(Path(prefix) / ("sbin" if sbin else "bin"))
    dirs.append(DEPS / "prefix" / ("sbin" if sbin else "bin"))
    for directory in dirs:
        candidate = directory / name
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def _require_tool(name: str) -> Path:
    path = _find_tool(name)
    if path is None:
        pytest.skip(f"{name} not found: run scripts/bootstrap.sh (make deps)")
    return path


@pytest.fixture(scope="session")
def mkcomposefs() -> Path:
    return _require_tool("mkcomposefs")


@pytest.fixture(scope="session")
def composefs_info() -> Path:
    return _require_tool("composefs-info")


@pytest.fixture(scope="session")
def fsck_erofs() -> Path:
    path = _find_tool("fsck.erofs", sbin=True) or (
        Path("/usr/sbin/fsck.erofs") if os.access("/usr/sbin/fsck.erofs", os.X_OK) else None
    )
    if path is None:
        pytest.skip("fsck.erofs not found (Debian package erofs-utils)")
    return path


@pytest.fixture(scope="session")
def composefs_src() -> Path:
    candidates = []
    if os.environ.get("COMPOSEFS_SRC"):
        candidates.append(Path(os.environ["COMPOSEFS_SRC"]))
    recorded = DEPS / "composefs-src-path"
    if recorded.is_file():
        candidates.append(Path(recorded.read_text().strip()))
    candidates.append(DEPS / "src" / "composefs")
    for candidate in candidates:
        if (candidate / "tests" / "assets").is_dir():
            return candidate.resolve()
    pytest.skip("upstream composefs source not found: run scripts/bootstrap.sh (make deps)")


@pytest.fixture(scope="session")
def run_mkcomposefs(mkcomposefs: Path) -> Callable[..., bytes]:
    def run(dump_text: bytes, *args: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="cfspy-mkcomposefs-") as tmp:
            out = Path(tmp) / "image.cfs"
            subprocess.run(
                [str(mkcomposefs), *args, "--from-file", "-", str(out)],
                input=dump_text,
                check=True,
                capture_output=True,
            )
            return out.read_bytes()

    return run
