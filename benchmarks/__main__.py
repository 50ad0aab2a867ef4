"""``python -m benchmarks``: composefs-py against mkcomposefs, same run, alternating.

Every timing is the median of ``--repeat`` runs (default 5), and the runs of
the two sides alternate, so load on the machine hits both alike.  Peak RSS is
measured in a child process per run (``ru_maxrss`` from ``wait4``).

Measured:

* ``toc``: TOC JSON bytes -> ``parse_toc`` -> ``write_image(native)`` against
  ``mkcomposefs --from-file`` on the equivalent dumpfile (``dump`` of the
  same Tree); both images must be byte-identical.
* ``sandbox``: ``write_image(backend="sandbox")`` against ``backend="native"``
  on the same Tree.
* ``layer``: importing a real zstd:chunked layer (decompress, verify sha256,
  store objects, build the image) against the upstream way,
  ``zstd -dc layer | tar -x`` then ``mkcomposefs --digest-store``.

The table goes to stdout and, as JSON, to ``--json`` (default
``build/bench.json``) so commits can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import generate

_REPO = Path(__file__).resolve().parent.parent
_CHILD = [sys.executable, "-m", "benchmarks.child"]


def _mkcomposefs() -> str:
    from composefs_py.writer import find_mkcomposefs

    return str(find_mkcomposefs())


_TIME = shutil.which("time", path="/usr/bin:/bin")


def _timed(argv: list[str], stdin: bytes | None = None) -> tuple[float, int, bytes]:
    """Run ``argv``; return (wall seconds, peak RSS KiB, stdout).

    The peak RSS comes from GNU time's ``%M`` (its child's ``ru_maxrss``):
    a child forked from this process would count this process's own RSS
    (Linux carries the old mm's high-water mark across exec), which made
    every measured side look as big as the benchmark itself.
    """
    with tempfile.NamedTemporaryFile(prefix="bench-rss-") as rss_file:
        wrapped = argv if _TIME is None else [_TIME, "-f", "%M", "-o", rss_file.name, *argv]
        start = time.perf_counter()
        proc = subprocess.Popen(
            wrapped,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=_REPO,
        )
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
        assert proc.stdout is not None and proc.stderr is not None
        out = proc.stdout.read()
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if proc.returncode:
            raise RuntimeError(f"{argv[:4]} failed: {err.decode(errors='replace')[-2000:]}")
        kib = usage.ru_maxrss
        if _TIME is not None:
            kib = int(Path(rss_file.name).read_text().split()[-1])
    return wall, kib, out


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _alternate(
    repeat: int, sides: dict[str, Callable[[], tuple[float, int]]]
) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {name: [] for name in sides}
    rss: dict[str, list[int]] = {name: [] for name in sides}
    for _ in range(repeat):
        for name, run in sides.items():
            seconds, kib = run()
            times[name].append(seconds)
            rss[name].append(kib)
    return {
        name: {
            "seconds": _median(times[name]),
            "rss_mib": max(rss[name]) / 1024,
            "runs": len(times[name]),
        }
        for name in sides
    }


def bench_toc(n: int, work: Path, repeat: int) -> dict[str, object]:
    from composefs_py import dump, parse_toc

    toc_path = work / f"toc-{n}.json"
    dump_path = work / f"toc-{n}.dump"
    if not toc_path.exists():
        toc_path.write_bytes(generate.toc_json(n))
    # Always from the code under test: a dumpfile kept from an older version
    # may spell the same tree differently (e.g. which path leads a hardlink).
    dump_path.write_text(dump(parse_toc(toc_path.read_bytes())))
    ours_img = work / f"ours-{n}.cfs"
    theirs_img = work / f"theirs-{n}.cfs"
    mk = _mkcomposefs()

    stages: dict[str, list[float]] = {"parse_s": [], "write_s": []}

    def ours() -> tuple[float, int]:
        _, kib, out = _timed([*_CHILD, "toc", str(toc_path), str(ours_img)])
        record = json.loads(out)
        for stage, values in stages.items():
            values.append(record[stage])
        return record["seconds"], kib

    def theirs() -> tuple[float, int]:
        wall, kib, _ = _timed([mk, "--from-file", str(dump_path), str(theirs_img)])
        return wall, kib

    result = _alternate(repeat, {"composefs-py": ours, "mkcomposefs": theirs})
    same = ours_img.read_bytes() == theirs_img.read_bytes()
    return {
        "entries": n,
        **result,
        "same_bytes": same,
        "time_ratio": result["composefs-py"]["seconds"] / result["mkcomposefs"]["seconds"],
        "rss_ratio": result["composefs-py"]["rss_mib"] / result["mkcomposefs"]["rss_mib"],
        **{stage: _median(values) for stage, values in stages.items()},
    }


def bench_sandbox(n: int, work: Path, repeat: int) -> dict[str, object]:
    from composefs_py import parse_toc, write_image

    toc_path = work / f"toc-{n}.json"
    if not toc_path.exists():
        toc_path.write_bytes(generate.toc_json(n))
    tree = parse_toc(toc_path.read_bytes())
    out = work / f"sandbox-{n}.cfs"

    def side(backend: str) -> Callable[[], tuple[float, int]]:
        def run() -> tuple[float, int]:
            start = time.perf_counter()
            write_image(tree, out, backend=backend)
            return time.perf_counter() - start, 0

        return run

    result = _alternate(repeat, {"native": side("native"), "sandbox": side("sandbox")})
    native = result["native"]["seconds"]
    sandbox = result["sandbox"]["seconds"]
    return {
        "entries": n,
        "native_s": native,
        "sandbox_s": sandbox,
        "ratio": sandbox / native,
        "overhead_s": sandbox - native,
        "per_entry_overhead_us": (sandbox - native) / n * 1e6,
    }


def bench_layer(n_files: int, work: Path, repeat: int) -> dict[str, object]:
    blob = work / f"layer-{n_files}.zstd"
    if not blob.exists():
        generate.zstd_chunked_layer(n_files, blob)
    mk = _mkcomposefs()
    zstd = shutil.which("zstd")
    tar = shutil.which("tar")
    if zstd is None or tar is None:
        raise RuntimeError("zstd and tar are needed for the layer benchmark")

    def fresh(name: str) -> Path:
        path = work / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def ours() -> tuple[float, int]:
        store = fresh("ours-objects")
        _, kib, out = _timed(
            [*_CHILD, "layer", str(blob), str(store), str(work / "ours-layer.cfs")]
        )
        return json.loads(out)["seconds"], kib

    def theirs() -> tuple[float, int]:
        root = fresh("theirs-root")
        store = fresh("theirs-objects")
        root.mkdir()
        start = time.perf_counter()
        script = (
            f"{zstd} -dc {blob} | {tar} -x -C {root} && "
            f"{mk} --digest-store={store} {root} {work / 'theirs-layer.cfs'}"
        )
        _, kib, _ = _timed(["sh", "-c", script])
        return time.perf_counter() - start, kib

    result = _alternate(repeat, {"composefs-py": ours, "upstream": theirs})
    return {
        "files": n_files,
        "blob_mib": blob.stat().st_size / 2**20,
        **result,
        "time_ratio": result["composefs-py"]["seconds"] / result["upstream"]["seconds"],
    }


def _table(results: dict[str, list[dict[str, object]]]) -> str:
    lines = []
    lines.append("TOC JSON -> image (composefs-py native) vs mkcomposefs --from-file (dumpfile)")
    lines.append(
        f"{'entries':>9} {'ours s':>8} {'mkcfs s':>8} {'ratio':>6} "
        f"{'ours MiB':>9} {'mkcfs MiB':>9} {'rss x':>6} same {'parse s':>8} {'write s':>8}"
    )
    for r in results.get("toc", []):
        o, t = r["composefs-py"], r["mkcomposefs"]
        assert isinstance(o, dict) and isinstance(t, dict)
        lines.append(
            f"{r['entries']:>9} {o['seconds']:>8.3f} {t['seconds']:>8.3f} "
            f"{r['time_ratio']:>6.2f} {o['rss_mib']:>9.1f} {t['rss_mib']:>9.1f} "
            f"{r['rss_ratio']:>6.2f} {r['same_bytes']!s:>4} {r['parse_s']:>8.3f} "
            f"{r['write_s']:>8.3f}"
        )
    if results.get("sandbox"):
        lines.append("")
        lines.append("sandbox backend vs native (same Tree)")
        lines.append(
            f"{'entries':>9} {'native s':>9} {'sandbox s':>9} {'ratio':>6} "
            f"{'fixed+var s':>11} {'us/entry':>9}"
        )
        for r in results["sandbox"]:
            lines.append(
                f"{r['entries']:>9} {r['native_s']:>9.3f} {r['sandbox_s']:>9.3f} "
                f"{r['ratio']:>6.2f} {r['overhead_s']:>11.3f} "
                f"{r['per_entry_overhead_us']:>9.2f}"
            )
    if results.get("layer"):
        lines.append("")
        lines.append("zstd:chunked layer import vs zstd -dc | tar -x + mkcomposefs --digest-store")
        lines.append(
            f"{'files':>9} {'blob MiB':>9} {'ours s':>8} {'upstream s':>10} {'ratio':>6} "
            f"{'ours MiB':>9} {'up MiB':>7}"
        )
        for r in results["layer"]:
            o, t = r["composefs-py"], r["upstream"]
            assert isinstance(o, dict) and isinstance(t, dict)
            lines.append(
                f"{r['files']:>9} {r['blob_mib']:>9.1f} {o['seconds']:>8.3f} "
                f"{t['seconds']:>10.3f} {r['time_ratio']:>6.2f} {o['rss_mib']:>9.1f} "
                f"{t['rss_mib']:>7.1f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sizes", default="10000,100000,400000", help="TOC sizes in entries (comma separated)"
    )
    parser.add_argument("--sandbox-sizes", default="1000,100000")
    parser.add_argument("--layer-files", default="20000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=("toc", "sandbox", "layer"), action="append")
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for generated inputs (kept between runs)"
    )
    parser.add_argument("--json", type=Path, default=_REPO / "build" / "bench.json")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.gettempdir()) / "composefs-py-bench"
    work.mkdir(parents=True, exist_ok=True)
    only = set(args.only or ("toc", "sandbox", "layer"))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: dict[str, list[dict[str, object]]] = {}
    if "toc" in only:
        results["toc"] = [bench_toc(n, work, args.repeat) for n in sizes]
    if "sandbox" in only:
        results["sandbox"] = [
            bench_sandbox(int(n), work, args.repeat) for n in args.sandbox_sizes.split(",") if n
        ]
    if "layer" in only:
        results["layer"] = [
            bench_layer(int(n), work, args.repeat) for n in args.layer_files.split(",") if n
        ]
    print(_table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
