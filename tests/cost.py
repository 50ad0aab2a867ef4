"""Cost measurements for tests: what a call costs in a bounded child process.

A cost test compares ratios, never absolute times: the same work on an
input ``k`` times larger must cost about ``k`` times more, and a refused
input costs nothing of what lies beyond the limit that refuses it.  Each
measurement runs the call in a forked child with an address-space limit
(``RLIMIT_AS``) and a timeout, so code that is quadratic or explodes in
memory fails the test instead of hanging it or taking the machine down.
The child reports (:class:`Cost`) its CPU time (user + system, all
threads; the cyclic collector off, its passes over pytest's heap are
noise), its peak RSS above what it held when it started, and the bytes it
read and wrote (``/proc/self/io``).  On a shared machine the run of least
CPU time of a few is kept.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import multiprocessing
import resource
import time
from collections.abc import Callable
from typing import Any

from composefs_py.errors import ValidationError

MiB = 1 << 20
#: Extra address space the child may map on top of what it inherits.
DEFAULT_BUDGET = 1 << 30


@dataclasses.dataclass(frozen=True)
class Cost:
    """What one call cost in a child process."""

    cpu: float  # seconds, user + system, all threads
    peak: int  # bytes of peak RSS above the child's RSS when it started
    read: int  # bytes read by read/pread (rchar)
    written: int  # bytes written by write (wchar)
    outcome: str  # "ok: ...", "refused: <ValidationError>", or what went wrong

    @property
    def finished(self) -> bool:
        return self.outcome.startswith(("ok", "refused"))


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


def _io() -> tuple[int, int]:
    with open("/proc/self/io") as counters:
        values = dict(line.split(": ") for line in counters.read().splitlines())
    return int(values["rchar"]), int(values["wchar"])


def _child(work: Callable[[], object], send: Any, memory: int) -> None:  # pragma: no cover
    limit = _status("VmSize") + memory
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    gc.collect()
    gc.disable()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM := VmRSS
    base = _status("VmRSS")
    read0, written0 = _io()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        outcome = f"ok: {work()}"
    except ValidationError as exc:
        outcome = f"refused: {exc}"
    except MemoryError:
        outcome = "MemoryError"
    except BaseException as exc:  # reported, the parent fails the test
        outcome = f"{type(exc).__name__}: {exc}"[:500]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    read, written = _io()
    cpu = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
    cost = Cost(cpu, _status("VmHWM") - base, read - read0, written - written0, outcome)
    send.send(dataclasses.astuple(cost))


def _measure_once(work: Callable[[], object], memory: int, timeout: float) -> Cost:
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(work, send, memory), daemon=True)
    started = time.monotonic()
    child.start()
    send.close()
    try:
        if not receive.poll(timeout):
            child.kill()
            return Cost(time.monotonic() - started, 0, 0, 0, f"timeout after {timeout} s")
        try:
            return Cost(*receive.recv())
        except EOFError:
            return Cost(0, 0, 0, 0, f"child died (exit {child.exitcode})")
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
        receive.close()


def measure(
    work: Callable[[], object],
    *,
    memory: int = DEFAULT_BUDGET,
    timeout: float = 60,
    repeat: int = 3,
) -> Cost:
    """Run ``work`` in a forked child with ``memory`` bytes of address space to
    spare, up to ``repeat`` times while it finishes; the run of least CPU time
    (on a shared machine the others carry other processes' load, and file
    creation's system time varies with the file system's recent history)."""
    best = _measure_once(work, memory, timeout)
    for _ in range(repeat - 1):
        if not best.finished:
            break
        again = _measure_once(work, memory, timeout)
        if again.outcome == best.outcome and again.cpu < best.cpu:
            best = again
    return best


def assert_linear(small: Cost, big: Cost, *, what: str, slack: float = 1.4) -> None:
    """``big`` (the input doubled) costs at most about twice ``small``."""
    for name, floor in (("read", 1 << 16), ("written", 1 << 16), ("peak", 8 * MiB)):
        a, b = getattr(small, name), getattr(big, name)
        assert b <= 2 * slack * a + floor, f"{what}: {name} {a} -> {b} (ratio {b / max(a, 1):.1f})"
    if big.cpu > 0.2:  # below that the ratio is mostly noise on a shared machine
        assert big.cpu <= 2 * slack * small.cpu + 0.1, (
            f"{what}: cpu {small.cpu:.3f} -> {big.cpu:.3f} s"
        )


def assert_flat(small: Cost, big: Cost, *, what: str) -> None:
    """A refused input: what lies beyond the limit costs nothing (n and 2n alike)."""
    for name, floor in (("read", 1 << 16), ("written", 1 << 16), ("peak", 8 * MiB)):
        a, b = getattr(small, name), getattr(big, name)
        assert b <= 1.25 * a + floor, f"{what}: {name} {a} -> {b} (ratio {b / max(a, 1):.1f})"


def best_cpu_seconds(
    work: Callable[[Any], object],
    arg: Any,
    *,
    runs: int = 3,
    timeout: float = 60.0,
    budget: int = DEFAULT_BUDGET,
) -> float:
    """The least CPU seconds of ``runs`` calls ``work(arg)``, each in a child;
    inf on a timeout or a MemoryError.  Any other outcome fails the test
    (the measured call must finish)."""
    cost = measure(lambda: work(arg) and "", memory=budget, timeout=timeout, repeat=runs)
    if cost.outcome.startswith("ok"):
        return cost.cpu
    if cost.outcome.startswith(("timeout", "MemoryError")):
        return math.inf
    raise AssertionError(f"the measured call failed: {cost.outcome}")


def cpu_seconds(
    work: Callable[[Any], object],
    arg: Any,
    *,
    timeout: float = 60.0,
    budget: int = DEFAULT_BUDGET,
) -> float:
    """CPU seconds ``work(arg)`` takes in a child (one run; see :func:`best_cpu_seconds`)."""
    return best_cpu_seconds(work, arg, runs=1, timeout=timeout, budget=budget)


def growth(
    work: Callable[[Any], object],
    make: Callable[[int], Any],
    n: int,
    factor: int = 4,
    *,
    most: float = 8.0,
    runs: int = 3,
) -> tuple[float, float, float]:
    """``(small, large, ratio)``: CPU seconds of ``work(make(n))`` and of
    ``work(make(factor * n))``, and their ratio.

    ``most`` is the ratio a test allows (``factor`` is linear): the large
    input gets 1.5 times that much of the small one's time plus 1 s, and a
    timeout counts as inf, so a quadratic cost fails fast.
    """
    small_input = make(n)
    large_input = make(factor * n)
    small = best_cpu_seconds(work, small_input, runs=runs)
    large = best_cpu_seconds(work, large_input, runs=runs, timeout=1.5 * most * small + 1.0)
    return small, large, large / max(small, 1e-6)
