"""The fuzz targets: one function per attack surface, ``bytes -> None``.

Each target feeds untrusted bytes to a validator (or the native writer or
reader) and checks the contract; a *finding* is any exception other than
:class:`~composefs_py.errors.ValidationError`, a failed check (an
:class:`AssertionError`), or, under the sanitized build, a memory or
undefined-behaviour error in libcomposefs.

``toc``
    ``parse_toc``; an accepted TOC must give a Tree that dumps to a dumpfile
    the dumpfile parser accepts back unchanged.
``dumpfile``
    ``parse_dumpfile``; an accepted text is canonicalized:
    ``parse_dumpfile(dump(tree)) == tree``.
``layer``
    the bytes as a layer blob: ``open_layer`` (format sniffing, footer),
    ``toc_bytes``, ``tree`` and ``import_objects`` into a throw-away store
    (decompression of every file, digest checks).
``writer``
    the bytes as a dumpfile; an accepted Tree is written by the native
    backend (libcomposefs in-process) and read back; the read Tree must write
    an image that reads back as the same Tree (what an image cannot keep is
    lost once, not again), and writing is deterministic.
``reader``
    the bytes as a composefs image: ``read_image`` (the structural check of
    ``composefs_py._erofs``, libcomposefs's image loader, then the
    TreeBuilder); an accepted image's Tree must write.
``toc_diff``
    the bytes as a TOC through podman's path (containers/storage's parser
    and dump, then mkcomposefs) and through ``parse_toc(...,
    compat="containers-storage")`` + the native writer
    (:func:`fuzz.differential.compare_toc`): equal images where both
    accept; a one-sided acceptance must be a row of
    :data:`fuzz.differential.TOC_DIFFERENCES`, else it is a finding.
``dumpfile_diff``
    the bytes as a dumpfile through ``mkcomposefs --from-file`` and through
    ``parse_dumpfile`` + the native writer
    (:func:`fuzz.differential.compare_dumpfile`), the same rule with
    :data:`fuzz.differential.DUMPFILE_DIFFERENCES`.
``cost``
    the bytes choose a family of hostile inputs that scale
    (:mod:`fuzz.cost.families`), its shape parameters and a scale; the input
    is made at ``n``, ``2n`` and ``4n`` and each runs through its entry point
    in a child with ``RLIMIT_AS`` and a timeout.  By default (``counted``)
    ``n`` is small, the children are forked from the fuzzer and count trace
    events, Python heap and bytes written (:mod:`fuzz.cost.fast`); one
    execution in :data:`TIMED_SAMPLE` also runs the full-scale series of
    CPU time, peak RSS and bytes written in fresh interpreters
    (:mod:`fuzz.cost`), which ``CFSPY_COST_MODE=timed`` runs for every
    execution.  A finding is a crash, hang, ``MemoryError`` or exception
    other than ``ValidationError`` in a child, or a cost that grows faster
    than the input.

Run them with ``python -m fuzz run --target NAME`` (atheris, libFuzzer) or
replay a file with ``python -m fuzz replay FILE``.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from composefs_py.dumpfile import dump, parse_dumpfile
from composefs_py.errors import ValidationError
from composefs_py.limits import Limits
from composefs_py.model import Tree
from composefs_py.toc import parse_toc

if TYPE_CHECKING:
    from fuzz.differential import Verdict

__all__ = ["TARGETS", "Target", "cost_case", "replay"]

_T = TypeVar("_T")

#: Bounds for fuzzing: small enough that no input runs for long, large enough
#: for the real TOCs.  The validators' own defaults are tested by the
#: Hypothesis properties.
FUZZ_LIMITS = Limits(max_input_bytes=1 << 20, max_entries=20_000)


def _memfd(data: bytes, name: str) -> tuple[int, str]:
    fd = os.memfd_create(name, 0)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    return fd, f"/proc/self/fd/{fd}"


def _write_native(tree: Tree, max_version: int) -> bytes:
    from composefs_py import _native

    fd = os.memfd_create("cfspy-image", 0)
    try:
        _native.write_tree(tree, fd, min_version=0, max_version=max_version)
        size = os.lseek(fd, 0, os.SEEK_CUR)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def fuzz_toc(data: bytes) -> None:
    try:
        tree = parse_toc(data, limits=FUZZ_LIMITS)
    except ValidationError:
        return
    text = dump(tree)
    back = parse_dumpfile(text, limits=FUZZ_LIMITS)
    assert back == tree, "dump(parse_toc(x)) does not parse back"


def fuzz_dumpfile(data: bytes) -> None:
    try:
        tree = parse_dumpfile(data, limits=FUZZ_LIMITS)
    except ValidationError:
        return
    again = parse_dumpfile(dump(tree), limits=FUZZ_LIMITS)
    assert again == tree, "parse_dumpfile(dump(tree)) != tree"


_store_root: Path | None = None


def _scratch() -> Path:
    global _store_root
    if _store_root is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        _store_root = Path(tempfile.mkdtemp(prefix="cfspy-fuzz-", dir=base))
        atexit.register(shutil.rmtree, _store_root, ignore_errors=True)
    return _store_root


def fuzz_layer(data: bytes) -> None:
    from composefs_py.layers import open_layer
    from composefs_py.objects import ObjectStore

    fd, path = _memfd(data, "cfspy-layer")
    store_dir = _scratch() / "store"
    try:
        try:
            layer = open_layer(path, limits=FUZZ_LIMITS)
            layer.toc_bytes()
            tree = layer.tree()
            store = ObjectStore(store_dir, durable=False)
            imported = layer.import_objects(store)
        except ValidationError:
            return
        assert len(imported) == len(tree), "import_objects changed the tree"
    finally:
        os.close(fd)
        shutil.rmtree(store_dir, ignore_errors=True)


def fuzz_writer(data: bytes) -> None:
    try:
        tree = parse_dumpfile(data, limits=FUZZ_LIMITS)
    except ValidationError:
        return
    # The public reader: the structural check, then the loader on a thread
    # with a large stack (a dumpfile of 1 MiB reaches ~2,000 directories,
    # deeper than the loader's recursion fits in a default thread stack).
    from composefs_py.writer import read_image

    version = len(data) % 2
    image = _write_native(tree, version)
    back = read_image(image, limits=FUZZ_LIMITS)
    # What an image cannot keep is lost in the first round trip (see
    # EROFS_CANNOT_KEEP in tests/test_upstream_assets.py); from then on a
    # read Tree writes the same image again and reads back unchanged.
    for path in tree.paths:
        # A payload is kept, except by an empty file (EROFS_CANNOT_KEEP).
        inode = tree.inode(path)
        if inode.payload is not None and inode.size > 0:
            # (libcomposefs 1.0.8's loader over-reads a redirect; read_image
            # repairs the payload from what its structural check reads)
            got = back.inode(path).payload
            assert got == inode.payload, f"payload {inode.payload!r} read back as {got!r}"
    rewritten = _write_native(back, version)
    assert read_image(rewritten, limits=FUZZ_LIMITS) == back, (
        "read(write(read(image))) != read(image)"
    )
    assert _write_native(back, version) == rewritten, "the native writer is not deterministic"


def _differential(verdict: Verdict) -> None:
    if verdict.finding:
        raise AssertionError(verdict.detail)


def fuzz_toc_diff(data: bytes) -> None:
    from fuzz.differential import compare_toc

    _differential(compare_toc(data))


def fuzz_dumpfile_diff(data: bytes) -> None:
    from fuzz.differential import compare_dumpfile

    _differential(compare_dumpfile(data))


def fuzz_reader(data: bytes) -> None:
    # The public read_image: the magic-number gate, then (on a thread with a
    # large stack) the structural check of composefs_py._erofs, libcomposefs's
    # loader and the TreeBuilder.
    from composefs_py.writer import read_image

    try:
        tree = read_image(data)
    except ValidationError:
        return
    _write_native(tree, 1)


class _Choices:
    """Picks values with the fuzzer's bytes, one byte per choice (0 once they run out).

    The same bytes always pick the same values, with or without atheris, so
    that a finding replays anywhere (``python -m fuzz replay``).
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def pick(self, values: Sequence[_T]) -> _T:
        byte = self._data[self._pos] if self._pos < len(self._data) else 0
        self._pos += 1
        return values[byte % len(values)]


#: Multipliers of a family's base scale the cost target may pick.
COST_SCALES = (1, 1, 2)


def cost_case(data: bytes) -> tuple[str, dict[str, Any], int]:
    """The family name, shape parameters and multiple of the family's scale ``data`` picks."""
    from fuzz.cost.families import FAMILIES

    choices = _Choices(data)
    family = choices.pick(list(FAMILIES.values()))
    params = {key: choices.pick(values) for key, values in family.choices.items()}
    return family.name, params, choices.pick(COST_SCALES)


#: How the cost target measures (``CFSPY_COST_MODE``): ``counted`` (the
#: default: deterministic counters at small n in forked children, and CPU time
#: at full scale for one execution in :data:`TIMED_SAMPLE`) or ``timed`` (CPU
#: time, peak RSS and bytes written at full scale in fresh interpreters, for
#: every execution).
COST_MODES = ("counted", "timed")
#: In counted mode, one execution in this many (chosen by a digest of its
#: bytes, so that a replay does the same) is also measured the timed way.
TIMED_SAMPLE = 512


def cost_mode() -> str:
    mode = os.environ.get("CFSPY_COST_MODE", "counted")
    if mode not in COST_MODES:
        raise ValueError(f"CFSPY_COST_MODE={mode!r}: one of {', '.join(COST_MODES)}")
    return mode


def timed_sample(data: bytes) -> bool:
    """Whether a counted execution of ``data`` is also measured the timed way."""
    return int.from_bytes(hashlib.sha256(data).digest()[:4], "big") % TIMED_SAMPLE == 0


def fuzz_cost(data: bytes) -> None:
    from fuzz.cost.families import FAMILIES, check

    name, params, multiple = cost_case(data)
    family = FAMILIES[name]
    timed = cost_mode() == "timed"
    checks = [(False, family.scale * multiple)] if timed else [(True, family.fast_scale * multiple)]
    if not timed and timed_sample(data):
        checks.append((False, family.scale * multiple))
    for counted, scale in checks:
        result = check(family, params, scale, counted=counted)
        if isinstance(result, str):  # the entry point cannot run here (e.g. mount without root)
            return
        if not result.ok:
            how = "counted" if counted else "timed"
            raise AssertionError(
                f"cost of {name} {params} at n={scale} ({how}):\n{result.report()}"
            )


@dataclass(frozen=True, slots=True)
class Target:
    """A fuzz target: its name, what it exercises, and the function."""

    name: str
    summary: str
    run: Callable[[bytes], None]
    #: Uses libcomposefs (so the sanitized build matters).
    native: bool


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("toc", "parse_toc on TOC JSON", fuzz_toc, False),
        Target("dumpfile", "parse_dumpfile and dump on dumpfile text", fuzz_dumpfile, False),
        Target("layer", "open_layer/tree/import_objects on layer blobs", fuzz_layer, False),
        Target("writer", "dumpfile -> native writer -> reader -> writer", fuzz_writer, True),
        Target("reader", "read_image (libcomposefs loader) on image bytes", fuzz_reader, True),
        Target(
            "toc_diff",
            "TOC through podman's parser+dump+mkcomposefs and compat+writer: same image",
            fuzz_toc_diff,
            True,
        ),
        Target(
            "dumpfile_diff",
            "dumpfile through mkcomposefs and parse_dumpfile+writer: same image",
            fuzz_dumpfile_diff,
            True,
        ),
        Target("cost", "hostile families at n/2n/4n: cost must grow linearly", fuzz_cost, True),
    )
}


def replay(target: str, data: bytes) -> None:
    """Run ``data`` through ``target`` once (raises what the target raises)."""
    TARGETS[target].run(data)
