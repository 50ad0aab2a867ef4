"""Cost measurements for tests: CPU time of a call in a bounded child process.

A cost test compares ratios, never absolute times: the same work on an
input ``k`` times larger must cost about ``k`` times more.  Each measurement
runs in a forked child with an address-space limit and a timeout, so code
that is quadratic (or explodes in memory) makes the test fail, not hang or
take the machine down.  The CPU time is the child's own (``process_time``
around the call, the cyclic collector off), so other processes on a loaded
machine matter little; the best of a few runs is kept.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import resource
import time
from collections.abc import Callable
from typing import Any

#: Extra address space the child may map on top of what it inherits.
DEFAULT_BUDGET = 1 << 30


def _child(
    work: Callable[[Any], object], arg: Any, budget: int, conn: Any
) -> None:  # pragma: no cover - runs in the child
    try:
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = mapped + budget
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        # the collector's passes over the inherited heap (pytest's) are noise
        gc.collect()
        gc.disable()
        started = time.process_time()
        work(arg)
        conn.send(("ok", time.process_time() - started))
    except MemoryError:
        conn.send(("memory", math.inf))
    except BaseException as error:  # reported to the parent
        conn.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        conn.close()


def cpu_seconds(
    work: Callable[[Any], object],
    arg: Any,
    *,
    timeout: float = 60.0,
    budget: int = DEFAULT_BUDGET,
) -> float:
    """CPU seconds ``work(arg)`` takes in a child; inf on timeout or MemoryError.

    Any other exception in the child fails the calling test.
    """
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(work, arg, budget, send), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(timeout):
            return math.inf
        status, value = receive.recv()
    except EOFError:
        status, value = "error", f"the child died (exit code {child.exitcode})"
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if status == "error":
        raise AssertionError(f"the measured call failed: {value}")
    return float(value)


def best_cpu_seconds(
    work: Callable[[Any], object], arg: Any, *, runs: int = 3, timeout: float = 60.0
) -> float:
    """The least of ``runs`` :func:`cpu_seconds` (stops early on inf)."""
    best = math.inf
    for _ in range(runs):
        spent = cpu_seconds(work, arg, timeout=timeout)
        best = min(best, spent)
        if spent == math.inf:
            break
    return best


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
