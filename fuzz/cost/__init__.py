"""Cost measurement of hostile inputs: one operation, one input, one fresh child.

This is the *timed* measurement: CPU time, peak RSS and bytes written at a
family's full scale, each input in a fresh interpreter.  The *counted* one
(:mod:`fuzz.cost.fast`) judges deterministic counters at a small scale in
children forked from the caller, some hundred times cheaper; the timed one
still sees what counters cannot (work inside one C call, C allocations,
costs that appear only at scale or in a fresh interpreter).

DESIGN rule 7 says every reader and validator is linear in its input, in time
and in memory.  The properties built on this module (``tests/test_cost.py``,
the ``cost`` fuzz target) check it from the outside: a *family* of hostile
inputs (:mod:`fuzz.cost.families`) makes an input of scale ``n``, ``2n`` and
``4n``; each is run through one public entry point in a fresh child process,
and the three costs are compared.

The child (:func:`measure`)
    ``python -I`` with this checkout first on ``sys.path``; it sets
    ``RLIMIT_AS`` (:data:`MEMORY_LIMIT`), ``RLIMIT_CPU``, ``RLIMIT_FSIZE``
    (:data:`FILE_LIMIT`) and no core dumps, imports the package and the
    operation's modules, reads the input, and only then measures the
    operation: CPU time (``ru_utime + ru_stime`` of every thread, delta
    around the call), peak memory growth (the peak resident set after the
    call minus the resident set before it: this sees C allocations,
    libcomposefs's included, which ``tracemalloc`` cannot; the peak is
    ``VmHWM``, reset to the current RSS just before the call through
    ``/proc/self/clear_refs``, because ``ru_maxrss`` keeps the parent's
    peak across fork and exec) and bytes written (``wchar`` of
    ``/proc/self/io``).  The operation runs up to :data:`REPEATS` times;
    CPU and bytes written are the minimum, memory is the first run's (peak
    RSS only grows).  The parent kills it after ``timeout`` seconds of wall
    clock.

The outcome (:class:`Run`)
    ``ok``, ``invalid`` (``ValidationError``: a refusal, the expected answer
    to most hostile inputs), or a *finding* in its own right: ``error``
    (any other exception, its type and message kept), ``memory``
    (``MemoryError``), ``signal`` (the child died of one: a crash),
    ``timeout``.

The judgement (:func:`judge`)
    Never an absolute time: for each metric (CPU, peak memory, bytes written)
    the costs ``c1, c2, c4`` at ``n, 2n, 4n`` are compared with each other
    and with the input sizes ``b1, b2, b4``:

    * *increments*: ``(c4 - c2) / (c2 - c1)`` is about 2 for linear work and
      about 4 for quadratic work, whatever the fixed cost of the call;
      super-linear when it exceeds :data:`INCREMENT_TOLERANCE` times the
      same ratio of input bytes (judged only where the input grows, and
      where ``c2 - c1`` is at least half the floor: below, the ratio is
      noise);
    * *totals*: ``c4 - c1`` may exceed ``c1 * (b4/b1 - 1)`` by the same
      tolerance, no more: this is what catches a cost that follows a
      *declared* size (a sparse member, a long name that compresses to
      nothing) while the input stays the same size;
    * *amplification* (memory only): peak memory may grow by at most
      :data:`MAX_AMPLIFICATION` bytes per byte of input growth.

    A super-linear verdict is confirmed by a second series, judged on the
    smaller cost of the two at each scale (a loaded machine only adds cost;
    threads contending for the GIL on two busy cores add it unevenly).
    Below a noise floor nothing is judged: :data:`CPU_FLOOR` seconds,
    :data:`MEMORY_FLOOR` and :data:`WRITE_FLOOR` bytes of growth between
    ``n`` and ``4n``.  The floors are not timing assertions: they only say
    that a difference smaller than the noise of a loaded 2-core machine is
    not evidence of anything; a family's scale is chosen so that
    super-linear work is far above them at ``4n``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "CPU_FLOOR",
    "FINDINGS",
    "INCREMENT_TOLERANCE",
    "MAX_AMPLIFICATION",
    "MEMORY_FLOOR",
    "MEMORY_LIMIT",
    "Judgement",
    "Run",
    "judge",
    "measure",
]

REPO = Path(__file__).resolve().parent.parent.parent

#: Address space of the child (RLIMIT_AS).
MEMORY_LIMIT = 2 << 30
#: Largest file the child may write (RLIMIT_FSIZE; Python ignores SIGXFSZ,
#: so a larger write fails with EFBIG: an ``error`` outcome).
FILE_LIMIT = 1 << 30
#: Default wall-clock timeout of one child, in seconds.
TIMEOUT = 60.0
#: Runs of the operation per child (the fastest counts for CPU and writes).
REPEATS = 3
#: A first run slower than this is not repeated (its noise is small anyway).
REPEAT_BELOW = 0.5

#: Below these growths between n and 4n nothing is judged (noise floor).
CPU_FLOOR = 0.08
MEMORY_FLOOR = 24 << 20
WRITE_FLOOR = 16 << 20
#: A ratio may exceed the linear expectation by this factor (1.5: a linear
#: increment ratio of 2 passes up to 3; a quadratic one, 4, fails).
INCREMENT_TOLERANCE = 1.5
#: Bytes of peak memory growth allowed per byte of input growth.
MAX_AMPLIFICATION = 1000

#: Where the input and the operation's files go: tmpfs when there is one, so
#: that a disk's journal and a busy block device add no system time (the
#: bytes written are counted all the same, as ``wchar``).
_SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

#: Outcomes that are findings whatever the costs.
FINDINGS = frozenset({"error", "memory", "signal", "timeout"})


@dataclass(frozen=True, slots=True)
class Run:
    """One operation on one input in one child."""

    outcome: str
    #: CPU seconds of the operation (fastest run).
    cpu: float = 0.0
    #: Peak memory growth in bytes (first run).
    memory: int = 0
    #: Bytes written by the operation (fastest run).
    written: int = 0
    #: Input size in bytes.
    size: int = 0
    #: Exception, signal or timeout, for a finding; the refusal for ``invalid``.
    detail: str = ""
    #: Trace and profile events of the operation (:mod:`fuzz.cost.fast` only).
    events: int = 0
    #: Peak Python heap growth in bytes (:mod:`fuzz.cost.fast` only).
    alloc: int = 0

    @property
    def finding(self) -> bool:
        return self.outcome in FINDINGS

    def show(self) -> str:
        text = (
            f"{self.outcome}: {self.size} B in, cpu {self.cpu:.3f} s, "
            f"peak +{self.memory / (1 << 20):.1f} MiB, wrote {self.written / (1 << 20):.1f} MiB"
        )
        if self.events:
            text += f", {self.events} events, heap +{self.alloc / (1 << 20):.2f} MiB"
        return text + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True, slots=True)
class Judgement:
    """What :func:`judge` concluded about a series of runs at growing scale."""

    runs: tuple[Run, ...]
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        lines = [f"  x{1 << i}: {run.show()}" for i, run in enumerate(self.runs)]
        return "\n".join([*self.problems, *lines])


_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from fuzz.cost._child import main; main(sys.argv[2])"
)


def measure(
    op: str,
    data: bytes,
    *,
    options: dict[str, Any] | None = None,
    timeout: float = TIMEOUT,
    repeats: int = REPEATS,
    memory_limit: int = MEMORY_LIMIT,
) -> Run:
    """Run operation ``op`` (:data:`fuzz.cost.families.OPERATIONS`) on ``data`` in a child."""
    work = Path(tempfile.mkdtemp(prefix="cfspy-cost-", dir=_SCRATCH))
    try:
        source = work / "input"
        source.write_bytes(data)
        result = work / "result.json"
        spec = {
            "op": op,
            "options": options or {},
            "input": str(source),
            "scratch": str(work / "scratch"),
            "result": str(result),
            "repeats": repeats,
            "repeat_below": REPEAT_BELOW,
            "memory_limit": memory_limit,
            "file_limit": FILE_LIMIT,
            "cpu_limit": int(timeout) + 5,
        }
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", _CHILD, str(REPO), json.dumps(spec)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=timeout,
                cwd=work,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Run("timeout", size=len(data), detail=f"no answer after {timeout:.0f} s")
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            return Run("signal", size=len(data), detail=f"killed by {name}")
        if not result.exists():
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            return Run(
                "error",
                size=len(data),
                detail=f"child exited {proc.returncode}: {' | '.join(tail)}",
            )
        got = json.loads(result.read_text())
        return Run(
            got["outcome"],
            cpu=got["cpu"],
            memory=got["memory"],
            written=got["written"],
            size=len(data),
            detail=got["detail"],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _metric(
    name: str,
    costs: Sequence[float],
    sizes: Sequence[int],
    floor: float,
    unit: str,
    *,
    first_increment: float = 0.5,
    totals_tolerance: float = INCREMENT_TOLERANCE,
    digits: str = ".3g",
) -> list[str]:
    """Problems of one metric at n, 2n, 4n (ratios of increments, then of totals).

    ``first_increment``: the fraction of ``floor`` the first increment must
    reach for its ratio to be judged; ``totals_tolerance``: how much faster
    than the input the total may grow.
    """
    c1, c2, c4 = costs
    b1, b2, b4 = (max(size, 1) for size in sizes)
    if c4 - c1 < floor:
        return []
    shown = (
        f"{name} {c1:{digits}} / {c2:{digits}} / {c4:{digits}} {unit} for {b1} / {b2} / {b4} B in"
    )
    problems = []
    # Increments, where the input itself grows and the first increment is
    # above the noise (a ratio of a noisy denominator means nothing):
    # linear work gives the input's ratio.
    if b2 - b1 >= 0.25 * b1 and b4 - b2 > 0 and c2 - c1 >= floor * first_increment:
        expected = (b4 - b2) / (b2 - b1)
        ratio = (c4 - c2) / (c2 - c1)
        if ratio > INCREMENT_TOLERANCE * expected:
            problems.append(
                f"super-linear {name}: increments ratio {ratio:.2f} "
                f"(linear ~{expected:.2f}): {shown}"
            )
    # Totals: the cost grows no faster than the input (fixed cost allowed).
    allowed = c1 * (b4 / b1 - 1) * totals_tolerance + floor
    if not problems and c4 - c1 > allowed:
        problems.append(
            f"{name} grows x{c4 / max(c1, floor / 8):.1f} while the input grows "
            f"x{b4 / b1:.2f}: {shown}"
        )
    return problems


def judge(runs: Sequence[Run]) -> Judgement:
    """Judge runs at scale ``n, 2n, 4n`` (fewer if a finding stopped the series)."""
    problems = [f"finding at x{1 << i}: {run.show()}" for i, run in enumerate(runs) if run.finding]
    if not problems and len(runs) == 3:
        sizes = [run.size for run in runs]
        problems += _metric("cpu", [r.cpu for r in runs], sizes, CPU_FLOOR, "s")
        mem = [r.memory / (1 << 20) for r in runs]
        problems += _metric("peak memory", mem, sizes, MEMORY_FLOOR / (1 << 20), "MiB")
        wrote = [r.written / (1 << 20) for r in runs]
        problems += _metric("bytes written", wrote, sizes, WRITE_FLOOR / (1 << 20), "MiB")
        grown_in = runs[2].size - runs[0].size
        grown_mem = runs[2].memory - runs[0].memory
        if grown_mem > MEMORY_FLOOR and grown_mem > MAX_AMPLIFICATION * max(grown_in, 1):
            problems.append(
                f"peak memory grows {grown_mem / max(grown_in, 1):.0f} bytes per byte of "
                f"input (at most {MAX_AMPLIFICATION}): +{grown_mem >> 20} MiB for "
                f"+{grown_in} B in"
            )
    return Judgement(tuple(runs), tuple(problems))


def measure_series(
    op: str,
    inputs: Sequence[bytes],
    *,
    options: dict[str, Any] | None = None,
    timeout: float = TIMEOUT,
    confirm: bool = True,
) -> Judgement:
    """Measure ``op`` on each input in turn (scale n, 2n, 4n); stop at a finding.

    A super-linear verdict without a finding is measured again (``confirm``)
    and judged on the smaller of the two costs at each scale: a loaded
    machine only ever adds cost, so the minimum is the better estimate, and
    a single noisy run does not make a verdict.
    """
    runs = _series(op, inputs, options, timeout)
    first = judge(runs)
    if first.ok or not confirm or any(run.finding for run in runs):
        return first
    again = _series(op, inputs, options, timeout)
    if any(run.finding for run in again):
        return judge(again)
    merged = [
        replace(
            a,
            cpu=min(a.cpu, b.cpu),
            memory=min(a.memory, b.memory),
            written=min(a.written, b.written),
        )
        for a, b in zip(runs, again, strict=True)
    ]
    return judge(merged)


def _series(
    op: str, inputs: Sequence[bytes], options: dict[str, Any] | None, timeout: float
) -> list[Run]:
    runs: list[Run] = []
    for data in inputs:
        run = measure(op, data, options=options, timeout=timeout)
        runs.append(run)
        if run.finding:
            break
    return runs


def root_available() -> str | None:
    """Why mounts cannot be measured here, or None if they can."""
    if os.geteuid() != 0:
        return "mounting needs root"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control)"
    return None
