"""The sandboxed child's framing checks of the parent's records (``_worker``).

The parent sends the native backend's own buffers (``_native._Columns``)
in a sealed memfd; the child maps it and checks the framing only
(:func:`~composefs_py._worker.read_records`: the header's sizes, then
:func:`~composefs_py._worker.check_records`) and hands read-only views of
the mapping to libcomposefs (:func:`~composefs_py._native.write_records`).
Proved here, in this process, through the same memfd, mapping and checks,
on the records the parent really makes:

* for any Tree, the records pass the checks and make the very image the
  native backend makes;
* for hostile records (a length, an index or a count changed, a buffer cut
  or grown), the outcome is a clean refusal (ValidationError) or an image
  whose digest is that of the bytes written: never a crash (C never reads
  past a buffer: a crash here ends the test run), never another exception.
"""

from __future__ import annotations

import os
import tempfile
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from composefs_py import sandbox
from composefs_py._worker import RECORD_PARTS, check_sizes, map_records, read_records
from composefs_py.errors import ValidationError
from composefs_py.fsverity import fsverity_digest
from composefs_py.model import Tree
from composefs_py.strategies import trees

_native = pytest.importorskip("composefs_py._native")

_LIMIT = 1 << 30


def records_of(tree: Tree) -> tuple[int, list[bytearray]]:
    """The parent's records for ``tree``: the entry count and the buffers."""
    return len(tree), [bytearray(buffer) for buffer in sandbox._records(tree)]


def child(count: int, buffers: list[bytearray]) -> tuple[str, bytes]:
    """What the child does with the parent's records file made of these
    buffers: ("rejected", message) or ("written", image)."""
    with tempfile.TemporaryFile() as out:
        try:
            fd = sandbox._records_memfd()
            sandbox._write_sealed(fd, sandbox._framed(count, buffers))
            records = read_records(map_records(fd), _LIMIT)
            digest = _native.write_records(records, out.fileno())
        except ValidationError as exc:
            return "rejected", str(exc).encode()
        out.seek(0)
        image = out.read()
    assert digest == fsverity_digest(image)
    return "written", image


def native(tree: Tree) -> bytes:
    with tempfile.TemporaryFile() as out:
        _native.write_tree(tree, out.fileno())
        out.seek(0)
        return out.read()


@given(tree=trees(max_entries=30))
def test_the_records_of_any_tree_make_the_native_image(tree: Tree) -> None:
    assert child(*records_of(tree)) == ("written", native(tree))


_INT_PARTS = ("path_lens", "data_lens", "links", "extra_lens", "xattr_lens", "ints")
_BYTE_PARTS = ("paths", "data", "extra")
_HOSTILE_INTS = st.sampled_from(
    [-(1 << 63), -(1 << 31), -2, -1, 0, 1, 2, 3, 31, 32, 33, 255, 256, 4096, 5000, 8192,
     (1 << 31) - 1, 1 << 32, (1 << 63) - 1, 0o170644, 0o40755, 0o100644, 0o120777]
)  # fmt: skip


@st.composite
def hostile_records(draw: st.DrawFn) -> tuple[int, list[bytearray]]:
    """The parent's records of a valid Tree, then one thing in them changed."""
    tree = draw(trees(max_entries=20))
    count, buffers = records_of(tree)
    kind = draw(st.sampled_from(["int", "count", "cut", "grow", "near"]))
    if kind == "count":
        count = draw(st.sampled_from([0, count - 1, count + 1]))
        return count, buffers
    if kind in ("int", "near"):
        part = draw(st.sampled_from(_INT_PARTS))
        values = array("q", buffers[RECORD_PARTS.index(part)])
        if not values:
            return count, buffers
        at = draw(st.integers(0, len(values) - 1))
        if kind == "near":  # off by a little: the likeliest slip
            values[at] += draw(st.sampled_from([-2, -1, 1, 2, count]))
        else:
            values[at] = draw(_HOSTILE_INTS)
        buffers[RECORD_PARTS.index(part)] = bytearray(values.tobytes())
        return count, buffers
    part = draw(st.sampled_from([*_BYTE_PARTS, *_INT_PARTS]))
    buffer = buffers[RECORD_PARTS.index(part)]
    size = draw(st.sampled_from([1, 7, 8, 16, 32]))
    if kind == "cut":
        del buffer[max(0, len(buffer) - size) :]
    else:
        buffer += os.urandom(size) if part in _BYTE_PARTS else bytes(size)
    return count, buffers


@given(records=hostile_records())
def test_hostile_records_are_refused_or_written_cleanly(
    records: tuple[int, list[bytearray]],
) -> None:
    outcome, _ = child(*records)
    assert outcome in ("rejected", "written")


def test_sizes_are_checked_before_any_buffer_is_allocated() -> None:
    count, buffers = records_of_small()
    sizes = list(map(len, buffers))
    sizes[RECORD_PARTS.index("data")] = _LIMIT
    with pytest.raises(ValidationError, match="more than"):
        check_sizes(count, sizes, _LIMIT)


def records_of_small() -> tuple[int, list[bytearray]]:
    from test_sandbox import small_tree

    return records_of(small_tree())
