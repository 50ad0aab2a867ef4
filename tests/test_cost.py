"""Cost properties: doubling a hostile input must not much more than double its cost.

The counted mode (:mod:`fuzz.cost.fast`, the cost fuzz target's default)
is tested at the end: test-only families whose cost is quadratic (in work,
in memory) are flagged, their linear twin passes, a crash is a finding.

Each property draws a family's shape (:mod:`fuzz.cost.families`), makes the
input at scale ``n``, ``2n`` and ``4n``, runs it through a public entry point
in a fresh child with ``RLIMIT_AS`` and a timeout (:func:`fuzz.cost.measure`)
and asserts, for CPU time, peak memory and bytes written, that the cost grows
no faster than the input (:func:`fuzz.cost.judge`: ratios of increments and
totals, never absolute times, nothing judged below a noise floor), and that
no run crashed, hung, ran out of memory or raised anything but
``ValidationError``.

The ``@example`` of each property is the shape that attacks its defect
class; Hypothesis then draws other shapes.  The ``ci`` profile runs those
examples and one drawn shape per family at the families' base scale, without
shrinking (a shrink step costs three children); ``HYPOTHESIS_PROFILE=long``
draws more shapes at twice the scale and shrinks.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from composefs_py.errors import ValidationError
from fuzz.cost import Judgement, root_available
from fuzz.cost.families import FAMILIES, OPERATIONS, Case, Family, Operation, check

_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
_LONG = _PROFILE == "long"
#: Drawn shapes per family (besides the explicit examples).
EXAMPLES = 12 if _LONG else 1
#: Multiplier of each family's base scale.
SCALE = 2 if _LONG else 1
_PHASES = (
    (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)
    if _LONG
    else (Phase.explicit, Phase.reuse, Phase.generate)
)

cost_settings = settings(max_examples=EXAMPLES, phases=_PHASES)


def _strategy(value: Any) -> st.SearchStrategy[Any]:
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def shapes(name: str, **fixed: Any) -> st.SearchStrategy[dict[str, Any]]:
    """The shape parameters of family ``name`` (some fixed)."""
    family = FAMILIES[name]
    return st.fixed_dictionaries(
        {
            key: _strategy(fixed[key]) if key in fixed else st.sampled_from(values)
            for key, values in family.choices.items()
        }
    )


def assert_linear(name: str, params: dict[str, Any]) -> Judgement:
    family: Family = FAMILIES[name]
    result = check(family, params, family.scale * SCALE)
    if isinstance(result, str):
        pytest.skip(result)
    assert result.ok, f"{name} {params}:\n{result.report()}"
    return result


@cost_settings
@given(shapes("hardlink-chains"))
@example({"shape": "forward", "via": "parse_toc"})
@example({"shape": "reverse", "via": "parse_dumpfile"})
@example({"shape": "fan-in", "via": "layer.tree"})
def test_hardlink_chains_resolve_in_linear_time(params: dict[str, Any]) -> None:
    assert_linear("hardlink-chains", params)


@cost_settings
@given(shapes("shared-dirents"))
@example({"via": "read_image", "version": 1})
@example({"via": "read_image+dump", "version": 0})
def test_shared_dirent_blocks_cost_what_the_image_holds(params: dict[str, Any]) -> None:
    assert_linear("shared-dirents", params)


@cost_settings
@given(shapes("long-names"))
@example({"kind": "gnu-longname", "compression": "zst", "via": "layer.import_objects"})
@example({"kind": "pax-linkpath", "compression": "gz", "via": "layer.tree"})
def test_long_names_in_a_compressed_tar_cost_what_the_tar_holds(params: dict[str, Any]) -> None:
    assert_linear("long-names", params)


@cost_settings
@given(shapes("zstd-chunked-no-endoffset"))
@example({"shape": "one-frame", "unit": 32 << 10})
def test_zstd_chunked_without_end_offset_reads_each_file_once(params: dict[str, Any]) -> None:
    assert_linear("zstd-chunked-no-endoffset", params)


@cost_settings
@given(shapes("sparse-members"))
@example({"format": "gnu", "compression": "none", "via": "layer.import_objects"})
@example({"format": "pax-1.0", "compression": "zst", "via": "layer.tree"})
def test_sparse_members_cost_what_the_tar_holds(params: dict[str, Any]) -> None:
    assert_linear("sparse-members", params)


@cost_settings
@given(shapes("estargz-inner-offset"))
@example({"order": "forward"})
def test_estargz_members_are_inflated_once(params: dict[str, Any]) -> None:
    assert_linear("estargz-inner-offset", params)


@cost_settings
@given(shapes("nesting", via=st.sampled_from(("read_image", "parse_toc", "parse_dumpfile"))))
@example({"via": "read_image", "depth": "beyond", "version": 1})
@example({"via": "parse_toc", "depth": "within", "version": 1})
def test_deep_trees_are_read_or_refused_without_a_crash(params: dict[str, Any]) -> None:
    assert_linear("nesting", params)


@pytest.mark.skipif(root_available() is not None, reason=str(root_available()))
def test_mount_with_try_verity_survives_deep_images() -> None:
    assert_linear("nesting", {"via": "mount(try_verity=True)", "depth": "within", "version": 1})
    assert_linear("nesting", {"via": "mount(try_verity=True)", "depth": "beyond", "version": 1})


@pytest.mark.parametrize(
    "name",
    [
        "many-xattrs",
        "duplicates",
        "deep-json",
        "dumpfile-escapes",
        "max-length-names",
        "chunk-rows",
        "pax-headers",
        "compressed-frames",
    ],
)
def test_other_hostile_families_cost_linear(name: str) -> None:
    @cost_settings
    @given(shapes(name))
    @example(FAMILIES[name].defaults())
    def prop(params: dict[str, Any]) -> None:
        assert_linear(name, params)

    prop()


# -- the counted mode (fuzz.cost.fast): small n, deterministic counters -------
#
# Test-only operations and families, registered for the duration of a test:
# the counted mode forks its children from this process, so they see them.
# Each regression family is the shape of a real defect class (a duplicate
# check that compares every pair, a buffer re-copied per row), not a finding.


def _names(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _op_pairwise_duplicates(data: bytes, *_: Any) -> None:
    """Quadratic Python work: each name compared with every earlier one."""
    names = _names(data)
    for i, name in enumerate(names):
        for other in names[:i]:
            if name == other:
                raise ValidationError(f"duplicate {name!r}")


def _op_set_duplicates(data: bytes, *_: Any) -> None:
    """The linear twin: one set."""
    seen: set[bytes] = set()
    for name in _names(data):
        if name in seen:
            raise ValidationError(f"duplicate {name!r}")
        seen.add(name)


def _op_prefix_copies(data: bytes, *_: Any) -> None:
    """Quadratic memory, linear work: every prefix of the input kept (one line each)."""
    names = _names(data)
    kept = [b"\n".join(names[:i]) for i in range(len(names))]
    assert len(kept) == len(names)


def _op_crash(data: bytes, *_: Any) -> None:
    os.abort()


def _make_names(n: int, params: dict[str, Any]) -> Case:
    return Case(b"\n".join(b"entry-%08d" % i for i in range(n)), params["op"])


_TEST_OPS = {
    name: Operation(name, run, (), warms=warms)
    for name, run, warms in (
        ("test.pairwise-duplicates", _op_pairwise_duplicates, True),
        ("test.set-duplicates", _op_set_duplicates, True),
        ("test.prefix-copies", _op_prefix_copies, True),
        # as an operation that reaches libcomposefs: never run in this process
        ("test.crash", _op_crash, False),
    )
}
_NAMES = Family(
    "test.names", "distinct names (test only)", {"op": tuple(_TEST_OPS)}, _make_names, 6400
)


@pytest.fixture
def test_operations(monkeypatch: pytest.MonkeyPatch) -> Family:
    for name, operation in _TEST_OPS.items():
        monkeypatch.setitem(OPERATIONS, name, operation)
    return _NAMES


def _counted(family: Family, op: str) -> Judgement:
    result = check(family, {"op": op}, counted=True)
    assert isinstance(result, Judgement)
    return result


def test_counted_mode_flags_quadratic_work(test_operations: Family) -> None:
    result = _counted(test_operations, "test.pairwise-duplicates")
    assert not result.ok
    assert any(problem.startswith("super-linear events") for problem in result.problems), (
        result.report()
    )


def test_counted_mode_flags_quadratic_memory(test_operations: Family) -> None:
    result = _counted(test_operations, "test.prefix-copies")
    assert [p for p in result.problems if "python heap" in p], result.report()
    assert not [p for p in result.problems if "events" in p], result.report()


def test_counted_mode_passes_linear_work(test_operations: Family) -> None:
    result = _counted(test_operations, "test.set-duplicates")
    assert result.ok, result.report()
    assert [run.outcome for run in result.runs] == ["ok"] * 3


def test_counted_mode_reports_a_crash_as_a_finding(test_operations: Family) -> None:
    result = _counted(test_operations, "test.crash")
    assert [run.outcome for run in result.runs] == ["signal"], result.report()
    assert "SIGABRT" in result.runs[0].detail


def test_counted_counters_are_deterministic(test_operations: Family) -> None:
    first, again = (_counted(test_operations, "test.set-duplicates") for _ in range(2))
    assert [r.events for r in first.runs] == [r.events for r in again.runs]


def test_counted_mode_passes_every_family_default() -> None:
    for name, family in FAMILIES.items():
        result = check(family, family.defaults(), counted=True)
        if isinstance(result, str):
            continue
        assert result.ok, f"{name}:\n{result.report()}"


def test_operations_reaching_libcomposefs_or_the_kernel_never_run_in_the_fuzzer() -> None:
    """The counted mode warms an operation in the measuring process first
    (:func:`fuzz.cost.families._warm`): never one whose crash would be libcomposefs's."""
    native = {
        name
        for name, operation in OPERATIONS.items()
        if "composefs_py._native" in operation.modules or operation.setup is not None
    }
    assert native == {"read_image", "read_image+dump", "mount(try_verity=True)"}
    assert not any(OPERATIONS[name].warms for name in native)


def test_the_cost_target_measures_counted_unless_told_timed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fuzz.targets import TIMED_SAMPLE, cost_mode, timed_sample

    monkeypatch.delenv("CFSPY_COST_MODE", raising=False)
    assert cost_mode() == "counted"
    monkeypatch.setenv("CFSPY_COST_MODE", "timed")
    assert cost_mode() == "timed"
    monkeypatch.setenv("CFSPY_COST_MODE", "fast")
    with pytest.raises(ValueError, match="CFSPY_COST_MODE"):
        cost_mode()
    sampled = [bytes([a, b]) for a in range(256) for b in range(256) if timed_sample(bytes([a, b]))]
    assert 0 < len(sampled) < 4 * (1 << 16) // TIMED_SAMPLE  # about one in TIMED_SAMPLE
    assert all(timed_sample(data) for data in sampled)  # a replay samples the same


def test_the_cost_mode_option_reaches_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    from fuzz.__main__ import main

    monkeypatch.setenv("CFSPY_COST_MODE", "counted")
    assert main(["replay", "--cost-mode", "timed", "--target", "toc", os.devnull]) == 0
    assert os.environ["CFSPY_COST_MODE"] == "timed"
