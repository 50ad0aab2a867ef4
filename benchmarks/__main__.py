"""``python -m benchmarks``: composefs-py against its peers, same run, alternating.

Every timing is the median of ``--repeat`` runs (default 5), and the runs of
the sides alternate, so load on the machine hits them alike.  Peak RSS is
measured per run (GNU time's ``%M``: the largest process of the run).

Measured:

* ``toc``: TOC JSON -> image, on the shared small zstd:chunked TOC (a real
  layer's, 44% chunk rows) replicated to ``--replicated`` entries and on
  generated TOCs of ``--sizes`` entries.  Three sides: ``composefs-py build
  --compat containers-storage TOC -o IMG`` as a fresh process; warm
  in-process ``parse_toc`` + ``write_image`` (after one call that pays the
  process's warm-up); podman's path, ``cstorage-toc2dump -exec mkcomposefs
  TOC IMG`` (containers/storage's ``unmarshalToc`` + ``GenerateDump`` piped
  into mkcomposefs; built on demand into ``.deps/cstorage`` by
  ``../shared/peers/containers-storage/setup.sh``, the column skipped with
  the reason when it cannot be built).  "same" says the images are
  byte-identical.  Also the cumulative time of ``python -X importtime -c
  "import composefs_py.cli"``.
* ``sandbox``: ``write_image(backend="sandbox")`` against ``backend="native"``
  on the same Tree.
* ``layer``: importing a real zstd:chunked layer (decompress, verify sha256,
  store objects, build the image) against the upstream way,
  ``zstd -dc layer | tar -x`` then ``mkcomposefs --digest-store``.

The table goes to stdout and, as JSON, to ``--json`` (default
``build/bench.json``) so commits can be compared.  ``--only`` picks sections.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    repeat: int, sides: dict[str, Callable[[], tuple[float, int]]], *, cpu: bool = False
) -> dict[str, dict[str, float]]:
    """Run the sides in turn ``repeat`` times: the median wall time and the
    largest peak RSS of each; ``cpu``: also the median user+system CPU time of
    each run's processes (on a loaded machine the wall times follow the load,
    the CPU times much less)."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    rss: dict[str, list[int]] = {name: [] for name in sides}
    cpus: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeat):
        for name, run in sides.items():
            before = _children_cpu()
            seconds, kib = run()
            cpus[name].append(_children_cpu() - before)
            times[name].append(seconds)
            rss[name].append(kib)
    return {
        name: {
            "seconds": _median(times[name]),
            "rss_mib": max(rss[name]) / 1024,
            "runs": len(times[name]),
            **({"cpu_s": _median(cpus[name])} if cpu else {}),
        }
        for name in sides
    }


def _children_cpu() -> float:
    """User+system CPU seconds of this process's waited-for children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: The shared small zstd:chunked TOC (a real layer's, with chunk rows).
_SHARED_TOC = _REPO / "tests" / "data" / "small.zstd-chunked.toc.json"
#: Builds the peer (podman's containers/storage TOC -> dump code) into a folder.
_PEER_SETUP = _REPO.parent / "shared" / "peers" / "containers-storage" / "setup.sh"
_PEER_DEST = _REPO / ".deps" / "cstorage"
_PEER_BIN = _PEER_DEST / "bin" / "cstorage-toc2dump"
#: The installed console script, as a user runs it.
_SCRIPT = Path(sys.executable).parent / "composefs-py"
_CLI = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "import sys; from composefs_py.cli import main; sys.exit(main())"]
)
_COMPAT = "containers-storage"  # podman's reading of .wh.* entries: the same image bytes


@functools.cache
def peer_tool() -> tuple[str | None, str]:
    """The peer's binary, built into .deps/cstorage when missing; (None, why) if it cannot be."""
    if os.access(_PEER_BIN, os.X_OK):
        return str(_PEER_BIN), "built"
    if not _PEER_SETUP.exists():
        return None, f"no peer: {_PEER_SETUP} not found"
    print(f"building the peer with {_PEER_SETUP} (once, about a minute)", file=sys.stderr)
    proc = subprocess.run(
        ["bash", str(_PEER_SETUP), str(_PEER_DEST)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not os.access(_PEER_BIN, os.X_OK):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no message"]
        return None, f"no peer: {_PEER_SETUP.name} failed ({tail[0]})"
    return str(_PEER_BIN), "built"


def replicated_toc(entries: int) -> bytes:
    """The shared small zstd:chunked TOC, copied under ``rNNN/`` folders up to
    about ``entries`` entries (its chunk rows, hardlinks and devices included)."""
    document = json.loads(_SHARED_TOC.read_bytes())
    rows = document["entries"]
    copies = max(1, round(entries / (len(rows) + 1)))
    out = []
    for k in range(copies):
        prefix = f"r{k:04d}/"
        out.append({"type": "dir", "name": prefix, "mode": 0o755})
        for row in rows:
            row = dict(row, name=prefix + row["name"].lstrip("./"))
            if row["type"] == "hardlink":
                row["linkName"] = prefix + row["linkName"].lstrip("./")
            out.append(row)
    document["entries"] = out
    return json.dumps(document, separators=(",", ":")).encode()


def _cumulative_import_ms(repeat: int = 5) -> float:
    """Median of ``python -X importtime -c "import composefs_py.cli"``'s cumulative ms."""
    found = []
    for _ in range(repeat):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import composefs_py.cli"],
            capture_output=True, text=True, check=True, cwd=_REPO,
        )  # fmt: skip
        for line in proc.stderr.splitlines():
            fields = [field.strip() for field in line.split("|")]
            if len(fields) == 3 and fields[2] == "composefs_py.cli":
                found.append(int(fields[1]) / 1000)
    return _median(found)


def bench_toc(name: str, toc_path: Path, work: Path, repeat: int) -> dict[str, object]:
    """One TOC: ``composefs-py build`` (fresh process), warm in-process
    ``parse_toc`` + ``write_image``, and the peer, alternating; medians."""
    from composefs_py import parse_toc, write_image

    peer, why = peer_tool()
    mk = _mkcomposefs()
    slug = name.replace(" ", "-")
    ours_img = work / f"ours-{slug}.cfs"
    warm_img = work / f"warm-{slug}.cfs"
    peer_img = work / f"peer-{slug}.cfs"
    stages: dict[str, list[float]] = {"parse_s": [], "write_s": []}

    def ours() -> tuple[float, int]:
        argv = [*_CLI, "build", "--compat", _COMPAT, str(toc_path), "-o", str(ours_img)]
        wall, kib, _ = _timed(argv)
        return wall, kib

    def warm() -> tuple[float, int]:
        start = time.perf_counter()
        tree = parse_toc(toc_path.read_bytes(), compat=_COMPAT)
        parsed = time.perf_counter()
        write_image(tree, warm_img, backend="native")
        done = time.perf_counter()
        stages["parse_s"].append(parsed - start)
        stages["write_s"].append(done - parsed)
        return done - start, 0

    def theirs() -> tuple[float, int]:
        assert peer is not None
        peer_img.unlink(missing_ok=True)  # it creates its output (O_EXCL)
        wall, kib, _ = _timed([peer, "-exec", mk, str(toc_path), str(peer_img)])
        return wall, kib

    warm()  # the first call of a process pays its warm-up; "warm" is what follows
    for values in stages.values():
        values.clear()
    sides = {"cli": ours, "warm": warm}
    if peer is not None:
        sides["peer"] = theirs
    result = _alternate(repeat, sides)
    row: dict[str, object] = {
        "toc": name,
        "entries": len(json.loads(toc_path.read_bytes())["entries"]),
        **result,
        **{stage: _median(values) for stage, values in stages.items()},
        "same_bytes_warm": ours_img.read_bytes() == warm_img.read_bytes(),
    }
    if peer is None:
        row["peer_skipped"] = why
        return row
    cli_s, warm_s, peer_s = (result[side]["seconds"] for side in ("cli", "warm", "peer"))
    row["cli_ratio"] = cli_s / peer_s
    row["warm_ratio"] = warm_s / peer_s
    row["rss_ratio"] = result["cli"]["rss_mib"] / result["peer"]["rss_mib"]
    row["same_bytes"] = ours_img.read_bytes() == peer_img.read_bytes()
    return row


def toc_inputs(sizes: list[int], replicated: int, work: Path) -> list[tuple[str, Path]]:
    """The TOCs measured: the shared one replicated, then the generated ones."""
    inputs = []
    if replicated:
        path = work / f"toc-real-{replicated}.json"
        if not path.exists():
            path.write_bytes(replicated_toc(replicated))
        inputs.append((f"real x{replicated // 1000}k", path))
    for n in sizes:
        path = work / f"toc-{n}.json"
        if not path.exists():
            path.write_bytes(generate.toc_json(n))
        inputs.append((f"generated {n // 1000}k", path))
    return inputs


def _with_key(toc: bytes, entry: str, key: bytes) -> bytes:
    """``toc`` with ``key`` (``"name":value,``) put first in its first or last entry."""
    at = toc.find(b'{"type"') if entry == "first" else toc.rfind(b'{"type"')
    return toc[: at + 1] + key + toc[at + 1 :]


def _bad_last_time(toc: bytes) -> bytes:
    """``toc`` with its last modtime replaced by text that is no time."""
    at = toc.rfind(b'"modtime":"') + len(b'"modtime":"')
    return toc[:at] + b"yesterday" + toc[toc.find(b'"', at) :]


#: Unusual or refused variants of a valid TOC.
_VARIANTS: tuple[tuple[str, Callable[[bytes], bytes]], ...] = (
    ("bad uid, first entry", lambda toc: _with_key(toc, "first", b'"uid":-1,')),
    ("bad uid, last entry", lambda toc: _with_key(toc, "last", b'"uid":-1,')),
    ("bad modtime, last entry", _bad_last_time),
    ("device on a file, last", lambda toc: _with_key(toc, "last", b'"devMajor":1,')),
    ("duplicate key, last entry", lambda toc: _with_key(toc, "last", b'"type":"reg",')),
    ("unknown key, last entry", lambda toc: _with_key(toc, "last", b'"comment":"x",')),
    ("eStargz userName, last", lambda toc: _with_key(toc, "last", b'"userName":"root",')),
)


def bench_refusal(n: int, work: Path, repeat: int) -> dict[str, object]:
    """CPU seconds of ``parse_toc`` on a valid generated TOC and on variants with
    one bad, unusual or unknown field: a refusal must cost no more than an
    acceptance (alternating, medians)."""
    from composefs_py import ValidationError, parse_toc

    toc_path = work / f"toc-{n}.json"
    if not toc_path.exists():
        toc_path.write_bytes(generate.toc_json(n))
    valid = toc_path.read_bytes()
    inputs = {"valid": valid}
    inputs.update((name, make(valid)) for name, make in _VARIANTS)
    outcomes: dict[str, str] = {}

    def side(name: str) -> Callable[[], tuple[float, int]]:
        def run() -> tuple[float, int]:
            start = time.process_time()
            try:
                parse_toc(inputs[name])
                outcomes[name] = "accepted"
            except ValidationError as err:
                outcomes[name] = "refused: " + str(err).split("\n")[0][:60]
            return time.process_time() - start, 0

        return run

    side("valid")()  # the process's warm-up
    result = _alternate(repeat, {name: side(name) for name in inputs})
    base = result["valid"]["seconds"]
    return {
        "entries": n,
        "rows": [
            {
                "input": name,
                "cpu_s": result[name]["seconds"],
                "vs_valid": result[name]["seconds"] / base,
                "outcome": outcomes[name],
            }
            for name in inputs
        ],
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


def make_tree(root: Path, n_files: int, total_mib: int) -> None:
    """A folder of ``n_files`` files (about ``total_mib`` MiB in all, sizes from
    empty to a few MiB, 100 to a folder, some small and some equal), made once."""
    if (root / ".complete").exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(15)
    mean = total_mib * 2**20 / n_files
    block = rng.randbytes(1 << 20)
    for i in range(n_files):
        folder = root / f"d{i // 100:04d}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        size = 0 if i % 50 == 0 else min(int(rng.expovariate(1 / mean)), 8 << 20)
        data = (block[i % 4096 :] + block)[:size] if size else b""
        if size and i % 10 == 3:
            data = block[:size]  # files of the same content share one object
        (folder / f"f{i}.dat").write_bytes(data)
    (root / ".complete").write_bytes(b"")  # (the marker is in both sides' image)


_DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_caches() -> str | None:
    """Empty the page cache, dentries and inodes (``sync; echo 3 >
    /proc/sys/vm/drop_caches``): None, or why it cannot be done here."""
    os.sync()
    try:
        with open(_DROP_CACHES, "w") as knob:
            knob.write("3\n")
    except OSError as exc:
        return f"cannot drop the page cache: {_DROP_CACHES}: {exc.strerror}"
    return None


#: The directory rows: (name, with a store, from a cold page cache).
DIR_MODES = (
    ("image only", False, False),
    ("digest store", True, False),
    ("image only, cold", False, True),
    ("digest store, cold", True, True),
)


def bench_directory(
    n_files: int, total_mib: int, work: Path, repeat: int, *, cold: bool = True
) -> dict[str, object]:
    """``composefs-py build DIR`` against ``mkcomposefs DIR`` (its --threads set to
    the cores), without and with a digest store, alternating; same image bytes.
    ``cold``: also from a cold cache, the page cache dropped before each run of
    either side (the machine's whole cache: other work on it is slowed too);
    where this machine does not allow it, the reason replaces those rows."""
    tree = work / f"tree-{n_files}-{total_mib}"
    make_tree(tree, n_files, total_mib)
    mk = _mkcomposefs()
    threads = str(os.cpu_count() or 1)
    rows: dict[str, object] = {"files": n_files, "mib": total_mib}
    cold_refused = drop_caches() if cold else "not asked (--no-dir-cold)"
    for mode, with_store, from_cold in DIR_MODES:
        if from_cold and cold_refused is not None:
            rows[mode] = {"skipped": cold_refused}
            continue
        images = {side: work / f"dir-{side}.cfs" for side in ("ours", "theirs")}

        def side(
            name: str,
            images: dict[str, Path] = images,
            with_store: bool = with_store,
            from_cold: bool = from_cold,
        ) -> Callable[[], tuple[float, int]]:
            def run() -> tuple[float, int]:
                store = work / f"dir-{name}-store"
                shutil.rmtree(store, ignore_errors=True)
                images[name].unlink(missing_ok=True)
                if from_cold:
                    refused = drop_caches()
                    if refused is not None:
                        raise RuntimeError(refused)
                given = [f"--digest-store={store}"] if with_store else []
                if name == "ours":
                    argv = [*_CLI, "build", *given, f"--threads={threads}", str(tree)]
                else:
                    argv = [mk, *given, f"--threads={threads}", str(tree)]
                wall, kib, _ = _timed([*argv, str(images[name])])
                return wall, kib

            return run

        result = _alternate(repeat, {"ours": side("ours"), "mkcomposefs": side("theirs")}, cpu=True)
        rows[mode] = {
            **result,
            "ratio": result["ours"]["seconds"] / result["mkcomposefs"]["seconds"],
            "cpu_ratio": result["ours"]["cpu_s"] / result["mkcomposefs"]["cpu_s"],
            "rss_ratio": result["ours"]["rss_mib"] / result["mkcomposefs"]["rss_mib"],
            "same_bytes": images["ours"].read_bytes() == images["theirs"].read_bytes(),
        }
    return rows


def _table(results: dict[str, Any]) -> str:
    lines = []
    if results.get("toc"):
        lines.append(
            "TOC JSON -> image: composefs-py build (fresh process), warm in-process "
            "parse_toc + write_image, and podman's path (cstorage-toc2dump -exec mkcomposefs)"
        )
        lines.append(
            f"{'TOC':<15} {'entries':>8} {'cli s':>7} {'warm s':>7} {'peer s':>7} {'cli x':>6} "
            f"{'warm x':>6} {'cli MiB':>8} {'peer MiB':>8} {'rss x':>6} same {'parse s':>8} "
            f"{'write s':>8}"
        )
    for r in results.get("toc", []):
        cli, warm = r["cli"], r["warm"]
        assert isinstance(cli, dict) and isinstance(warm, dict)
        peer = r.get("peer")
        if not isinstance(peer, dict):
            lines.append(
                f"{r['toc']!s:<15} {r['entries']:>8} {cli['seconds']:>7.3f} "
                f"{warm['seconds']:>7.3f}  ({r['peer_skipped']})"
            )
            continue
        lines.append(
            f"{r['toc']!s:<15} {r['entries']:>8} {cli['seconds']:>7.3f} {warm['seconds']:>7.3f} "
            f"{peer['seconds']:>7.3f} {r['cli_ratio']:>6.2f} {r['warm_ratio']:>6.2f} "
            f"{cli['rss_mib']:>8.1f} {peer['rss_mib']:>8.1f} {r['rss_ratio']:>6.2f} "
            f"{r['same_bytes']!s:>4} {r['parse_s']:>8.3f} {r['write_s']:>8.3f}"
        )
    if "import_ms" in results:
        lines.append(
            f"python -X importtime -c 'import composefs_py.cli': "
            f"{results['import_ms']:.1f} ms cumulative (median)"
        )
    if results.get("refusal"):
        r = results["refusal"]
        lines.append("")
        lines.append(
            f"parse_toc CPU on a generated {r['entries']}-entry TOC: valid vs one odd field"
        )
        lines.append(f"{'input':<30} {'cpu s':>7} {'x valid':>8}  outcome")
        for row in r["rows"]:
            lines.append(
                f"{row['input']:<30} {row['cpu_s']:>7.3f} {row['vs_valid']:>8.2f}  {row['outcome']}"
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
    if results.get("directory"):
        r = results["directory"]
        lines.append("")
        lines.append(
            f"build DIR vs mkcomposefs DIR ({r['files']} files, about {r['mib']} MiB; "
            "warm cache, then cold: caches dropped before each run)"
        )
        lines.append(
            f"{'mode':<18} {'ours s':>7} {'mkcfs s':>8} {'ratio':>6} {'cpu x':>6} {'MiB':>6} "
            f"{'mkcfs':>6} {'rss x':>6} same"
        )
        for mode, _store, _cold in DIR_MODES:
            row = r.get(mode)
            if row is None:
                continue
            if "skipped" in row:
                lines.append(f"{mode:<18} ({row['skipped']})")
                continue
            ours, theirs = row["ours"], row["mkcomposefs"]
            lines.append(
                f"{mode:<18} {ours['seconds']:>7.3f} {theirs['seconds']:>8.3f} "
                f"{row['ratio']:>6.2f} {row['cpu_ratio']:>6.2f} {ours['rss_mib']:>6.1f} "
                f"{theirs['rss_mib']:>6.1f} {row['rss_ratio']:>6.2f} {row['same_bytes']!s:>4}"
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
        "--sizes", default="10000,100000,400000", help="generated TOC sizes in entries"
    )
    parser.add_argument(
        "--replicated",
        type=int,
        default=20000,
        help="entries of the shared zstd:chunked TOC replicated (0: none)",
    )
    parser.add_argument("--sandbox-sizes", default="1000,100000,400000")
    parser.add_argument("--layer-files", default="20000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--only", choices=("toc", "refusal", "sandbox", "directory", "layer"), action="append"
    )
    parser.add_argument("--dir-files", type=int, default=20000)
    parser.add_argument("--dir-mib", type=int, default=500)
    parser.add_argument(
        "--no-dir-cold",
        dest="dir_cold",
        action="store_false",
        help="no cold-cache directory rows (they drop the whole machine's page cache)",
    )
    parser.add_argument("--refusal-size", type=int, default=100000)
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for generated inputs (kept between runs)"
    )
    parser.add_argument("--json", type=Path, default=_REPO / "build" / "bench.json")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.gettempdir()) / "composefs-py-bench"
    work.mkdir(parents=True, exist_ok=True)
    only = set(args.only or ("toc", "refusal", "sandbox", "directory", "layer"))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: dict[str, Any] = {}
    if "toc" in only:
        results["toc"] = [
            bench_toc(name, path, work, args.repeat)
            for name, path in toc_inputs(sizes, args.replicated, work)
        ]
        results["import_ms"] = _cumulative_import_ms()
    if "refusal" in only:
        results["refusal"] = bench_refusal(args.refusal_size, work, args.repeat)
    if "sandbox" in only:
        results["sandbox"] = [
            bench_sandbox(int(n), work, args.repeat) for n in args.sandbox_sizes.split(",") if n
        ]
    if "directory" in only:
        results["directory"] = bench_directory(
            args.dir_files, args.dir_mib, work, args.repeat, cold=args.dir_cold
        )
    if "layer" in only:
        results["layer"] = [
            # at most 3 rounds: the upstream side alone takes 20-25 s a round
            bench_layer(int(n), work, min(args.repeat, 3))
            for n in args.layer_files.split(",")
            if n
        ]
    print(_table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
