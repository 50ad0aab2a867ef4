"""Fast cost measurement: deterministic counters in a forked child, at small ``n``.

:func:`fuzz.cost.measure` starts a fresh ``python -I`` per input and judges
CPU time, which is noise below a tenth of a second: its inputs must be large
and each series takes seconds.  This module measures what does not depend on
the machine's load, so that inputs a few hundred times smaller can be judged:

``events``
    Python's trace events during the operation (``sys.settrace``): one per
    line, call and return of Python code, so one per statement that calls a
    C function too.  Quadratic Python work has a quadratic count.
``alloc``
    the peak of the Python heap above its level before the call
    (``tracemalloc``: every object and buffer the interpreter allocates,
    ``bytes`` made by C functions included).
``written``
    bytes written (``wchar``), as in the children of :func:`fuzz.cost.measure`.

What the counters cannot see is work *inside* one C call: a regex that
backtracks, a scan that restarts from the start of a buffer on each call
(the call count is linear, the bytes touched are not), libcomposefs's own
loops, the kernel, and memory allocated by C libraries with ``malloc``.
For those the child also keeps the CPU time and the peak resident set, and
its limits follow the input's size (``RLIMIT_AS``, ``RLIMIT_CPU`` and a wall
clock timeout, :func:`budget`), so a blow-up at any scale is a finding; the
CPU-time series of :func:`fuzz.cost.measure_series` at the family's full
scale is the confirmation (:mod:`fuzz.targets` runs it for a sample of the
executions).

The child is forked from the calling process, which has imported the
package already: no interpreter start per input.  It runs the operation
once, with the cyclic collector off and pinned to one CPU (an import then
takes its one-thread path, whose counts do not depend on scheduling), and
sends its counters through a pipe; a signal, a timeout or a silent exit is
an outcome of its own, never the caller's death.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fuzz.cost import (
    _SCRATCH,
    FILE_LIMIT,
    FINDINGS,
    MAX_AMPLIFICATION,
    Judgement,
    Run,
    _metric,
)

__all__ = [
    "ALLOC_FLOOR",
    "EVENTS_FLOOR",
    "TOTALS_TOLERANCE",
    "budget",
    "judge_counts",
    "measure_counts",
    "measure_counts_series",
]

#: Growths between n and 4n below which a counter is not judged: a fixed
#: cost that appears once (a cache filled, a buffer rounded up) is not a
#: rate of growth.
EVENTS_FLOOR = 5000
ALLOC_FLOOR = 256 << 10
WRITE_FLOOR = 256 << 10
#: A counter's total growth may exceed the input's by this factor, wider
#: than the increments' (:data:`fuzz.cost.INCREMENT_TOLERANCE`): at a counted
#: series' small scale the input's fixed part (headers, a superblock) is a
#: larger share of its size.  Quadratic work grows 15 times its first cost
#: from n to 4n, linear work 3 times.
TOTALS_TOLERANCE = 2.0

#: A super-linear Python heap is a finding only where it also grows by more
#: than this many bytes per byte of input: the heap's peak is a maximum over
#: buffers, not a sum, and at a counted series' small scale one fixed buffer
#: (a read buffer, a resized table) makes its increments uneven.  A path
#: kept whole per entry is quadratic in a chain's depth but bounded by
#: ``Limits.max_path_bytes``: reading a 512-deep image keeps ~38 bytes of
#: heap per image byte.  (The timed mode bounds it at
#: :data:`fuzz.cost.MAX_AMPLIFICATION`.)
HEAP_AMPLIFICATION = 64

#: Address space a child may map beyond what it inherits: this much, plus
#: :data:`fuzz.cost.MAX_AMPLIFICATION` bytes per byte of input.
MEMORY_BASE = 256 << 20
#: Wall-clock seconds a child may take: this much, plus a rate per byte of
#: input far below what traced linear work costs.
TIMEOUT_BASE = 20.0
SECONDS_PER_BYTE = 20e-6

_CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT)


def budget(size: int) -> tuple[int, float]:
    """(extra address space in bytes, wall-clock seconds) of a child given ``size`` bytes."""
    return MEMORY_BASE + MAX_AMPLIFICATION * size, TIMEOUT_BASE + SECONDS_PER_BYTE * size


def measure_counts(op: str, data: bytes, *, options: dict[str, Any] | None = None) -> Run:
    """Run operation ``op`` on ``data`` once in a forked child; its counters as a :class:`Run`.

    ``tracemalloc`` must be tracing in this process (:func:`measure_counts_series`).
    """
    from fuzz.cost.families import OPERATIONS

    operation = OPERATIONS[op]
    operation.prepare(setup=False)  # imports in this process, so that forks are warm
    memory, timeout = budget(len(data))
    work = Path(tempfile.mkdtemp(prefix="cfspy-cost-", dir=_SCRATCH))
    try:
        source = work / "input"
        source.write_bytes(data)
        (work / "scratch").mkdir()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_end)
            _child(op, data, source, work / "scratch", options or {}, memory, write_end)
        os.close(write_end)
        return _collect(pid, read_end, len(data), timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _collect(pid: int, read_end: int, size: int, timeout: float) -> Run:
    """The child's answer, or what became of it."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([pipe], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return Run("timeout", size=size, detail=f"no answer after {timeout:.0f} s")
            chunk = pipe.read(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return Run("signal", size=size, detail=f"killed by {name}")
    if not chunks:
        return Run("error", size=size, detail=f"child exited {os.waitstatus_to_exitcode(status)}")
    got = json.loads(b"".join(chunks))
    return Run(size=size, **got)


def _child(  # pragma: no cover - runs in the forked child
    op: str,
    data: bytes,
    path: Path,
    scratch: Path,
    options: dict[str, Any],
    memory: int,
    answer: int,
) -> None:
    """Limits, then the operation under the counters; the result to ``answer``; exit."""
    try:
        for number in _CRASH_SIGNALS:  # the caller's handlers (libFuzzer's) are not ours
            signal.signal(number, signal.SIG_DFL)
        limit = _vm_size() + memory
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
        os.sched_setaffinity(0, {_current_cpu()})
        gc.disable()
        result = _counted(op, data, path, scratch, options)
        os.write(answer, json.dumps(result).encode())
    finally:
        os._exit(0)


def _counted(
    op: str, data: bytes, path: Path, scratch: Path, options: dict[str, Any]
) -> dict[str, Any]:  # pragma: no cover - runs in the forked child
    from fuzz.cost._child import cpu_seconds, reset_peak, run_operation, status, written_bytes
    from fuzz.cost.families import OPERATIONS

    operation = OPERATIONS[op]
    if operation.setup is not None:
        operation.setup()
    events = itertools.count()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        next(events)
        return tracer

    tracemalloc.reset_peak()  # started by the caller (measure_counts_series)
    base = tracemalloc.get_traced_memory()[0]
    rss = reset_peak()
    wrote = written_bytes()
    cpu = cpu_seconds()
    threading.settrace(tracer)
    sys.settrace(tracer)
    try:
        outcome, detail = run_operation(operation, data, path, scratch, options)
    finally:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]  # None removes it
    return {
        "outcome": outcome,
        "detail": detail,
        "events": next(events),
        "alloc": max(0, tracemalloc.get_traced_memory()[1] - base),
        "cpu": cpu_seconds() - cpu,
        "memory": max(0, status(b"VmHWM:") - rss),
        "written": written_bytes() - wrote,
    }


def _current_cpu() -> int:  # pragma: no cover - runs in the forked child
    """The CPU this process runs on (``/proc/self/stat``, field 39)."""
    with open("/proc/self/stat", "rb") as stat:
        return int(stat.read().rsplit(b")", 1)[1].split()[36])


def _vm_size() -> int:
    from fuzz.cost._child import status

    return status(b"VmSize:")


def _counter(
    name: str, costs: Sequence[int], sizes: Sequence[int], floor: int, unit: str
) -> list[str]:
    """:func:`fuzz.cost._metric` with the counters' tolerances (no noise to allow for)."""
    return _metric(
        name,
        costs,
        sizes,
        floor,
        unit,
        first_increment=0.25,
        totals_tolerance=TOTALS_TOLERANCE,
        digits=".0f",
    )


def judge_counts(runs: Sequence[Run]) -> Judgement:
    """Judge counted runs at scale ``n, 2n, 4n`` (fewer if a finding stopped the series)."""
    problems = [f"finding at x{1 << i}: {run.show()}" for i, run in enumerate(runs) if run.finding]
    if not problems and len(runs) == 3:
        sizes = [run.size for run in runs]
        problems += _counter("events", [r.events for r in runs], sizes, EVENTS_FLOOR, "")
        heap = _counter("python heap", [r.alloc for r in runs], sizes, ALLOC_FLOOR, "B")
        grown = (runs[2].alloc - runs[0].alloc) / max(sizes[2] - sizes[0], 1)
        if heap and grown > HEAP_AMPLIFICATION:
            problems += [f"{heap[0]} ({grown:.0f} bytes of heap per byte of input)"]
        problems += _counter("bytes written", [r.written for r in runs], sizes, WRITE_FLOOR, "B")
    return Judgement(tuple(runs), tuple(problems))


def measure_counts_series(
    op: str, inputs: Sequence[bytes], *, options: dict[str, Any] | None = None
) -> Judgement:
    """Count ``op`` on each input in turn (scale n, 2n, 4n); stop at a finding."""
    runs: list[Run] = []
    started = not tracemalloc.is_tracing()
    if started:
        # Here, not in each child: a child that starts tracing pays for it at
        # every later allocation and free of what it inherited (twice the
        # time of a small run).
        tracemalloc.start()
    try:
        for data in inputs:
            run = measure_counts(op, data, options=options)
            runs.append(run)
            if run.outcome in FINDINGS:
                break
    finally:
        if started:
            tracemalloc.stop()
    return judge_counts(runs)
