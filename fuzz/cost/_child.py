"""The measuring child of :func:`fuzz.cost.measure` (``python -I``, one operation).

Limits first, then the imports, then the input; only the operation itself
is measured.  The result goes to the file the spec names (nothing is written
there if the child dies: the parent reads the signal or the timeout).
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fuzz.cost.families import Operation


def status(key: bytes) -> int:
    """A ``kB`` field of ``/proc/self/status``, in bytes."""
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> int:
    """Reset the peak resident set to the current one (``clear_refs`` 5); return it.

    ``ru_maxrss`` would not do: it keeps the parent's peak across fork and
    exec.  ``VmHWM`` is this address space's own, and can be reset.
    """
    try:
        with open("/proc/self/clear_refs", "wb") as clear:
            clear.write(b"5")
    except OSError:  # pragma: no cover - kernels before 4.0
        pass
    return status(b"VmRSS:")


def written_bytes() -> int:
    with open("/proc/self/io", "rb") as io:
        for line in io:
            if line.startswith(b"wchar:"):
                return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_operation(
    operation: Operation, data: bytes, path: Path, scratch: Path, options: dict[str, Any]
) -> tuple[str, str]:
    """Run ``operation`` once: its outcome (ok, invalid, memory, error) and detail."""
    from composefs_py.errors import ValidationError

    try:
        operation.run(data, path, scratch, options)
    except ValidationError as exc:
        return "invalid", str(exc)[:300]
    except MemoryError:
        return "memory", "MemoryError"
    except BaseException as exc:  # any other exception is a finding
        return "error", f"{type(exc).__name__}: {str(exc)[:300]}"
    return "ok", ""


def main(raw: str) -> None:
    spec: dict[str, Any] = json.loads(raw)
    memory = int(spec["memory_limit"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (spec["file_limit"], spec["file_limit"]))
    cpu_limit = int(spec["cpu_limit"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, cpu_limit + 5))

    from fuzz.cost.families import OPERATIONS

    operation = OPERATIONS[spec["op"]]
    operation.prepare()
    path = Path(spec["input"])
    data = path.read_bytes()
    options = spec["options"]
    scratch_root = Path(spec["scratch"])
    best_cpu = best_written = float("inf")
    peak = 0
    outcome, detail = "ok", ""
    for attempt in range(int(spec["repeats"])):
        scratch = scratch_root / str(attempt)
        scratch.mkdir(parents=True)
        rss = reset_peak() if attempt == 0 else 0
        written = written_bytes()
        cpu = cpu_seconds()
        outcome, detail = run_operation(operation, data, path, scratch, options)
        used = cpu_seconds() - cpu
        wrote = written_bytes() - written
        if attempt == 0:
            peak = max(0, status(b"VmHWM:") - rss)
        shutil.rmtree(scratch, ignore_errors=True)
        best_cpu = min(best_cpu, used)
        best_written = min(best_written, wrote)
        if outcome in ("error", "memory") or used > float(spec["repeat_below"]):
            break
    result = {
        "outcome": outcome,
        "cpu": best_cpu,
        "memory": peak,
        "written": int(best_written),
        "detail": detail,
        "time": time.time(),
    }
    Path(spec["result"]).write_text(json.dumps(result))
