"""Fuzzing campaigns: ``python -m fuzz {list,run,merge,minimize,replay,seed}``.

``python -m fuzz list``
    the targets.
``python -m fuzz run --target NAME|all --seconds N [--jobs J] [-- libFuzzer options]``
    runs atheris (libFuzzer) on each target for N seconds in fork mode
    (``-fork=J``: J children, a crash is saved and the run goes on;
    ``--no-fork``: J plain processes) sharing one working corpus
    (``build/fuzz/<target>/corpus``, seeded from ``fuzz/corpus/<target>``),
    against the ASan+UBSan build of libcomposefs when
    ``scripts/build-asan.sh`` made it.  Prints, per target, executions,
    exec/s, coverage (libFuzzer's ``cov``/``ft``), new corpus entries and
    crashes; every crash is minimized into ``fuzz/crashes/<target>/``.
    Exits 1 if any target crashed.
``python -m fuzz merge --target NAME DIR... [--corpus C] [-- libFuzzer options]``
    libFuzzer ``-merge=1``: the inputs of the folders (corpora from other
    machines, ClusterFuzzLite or OSS-Fuzz downloads) that add coverage join
    the target's corpus (``build/fuzz/<target>/corpus`` unless ``--corpus``).
``python -m fuzz minimize --target NAME [--corpus C]``
    merges the corpus into a fresh folder (only inputs that add coverage)
    and swaps it in; the old corpus goes once the new one is in place.
``python -m fuzz replay FILE... [--target NAME]``
    runs files through their target in this process (the target is the
    name of the file's folder unless given); exits 1 on a finding.
``python -m fuzz seed``
    rewrites the seed corpus ``fuzz/corpus/`` from :mod:`fuzz.seeds`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FUZZ = REPO / "fuzz"
CORPUS = FUZZ / "corpus"
CRASHES = FUZZ / "crashes"
#: libFuzzer dictionaries, ``<target>.dict`` (.clusterfuzzlite/build.sh ships them too).
DICTS = FUZZ / "dicts"
WORK = REPO / "build" / "fuzz"
#: scripts/build-asan.sh's output: ``$CFSPY_ASAN_DIR`` (default .deps/asan).
ASAN_DIR = Path(os.environ.get("CFSPY_ASAN_DIR") or REPO / ".deps" / "asan")
ASAN_PYLIB = ASAN_DIR / "pylib" / "composefs_py"

#: Default -max_len per target (inputs longer than this are not generated).
MAX_LEN = {
    "toc": 16384,
    "dumpfile": 16384,
    "layer": 8192,
    "writer": 16384,
    "reader": 65536,
    "cost": 16,
    "toc_diff": 16384,
    "dumpfile_diff": 16384,
}
#: libFuzzer's -timeout per target (seconds); default 20.  A cost execution
#: runs three measuring children, each with a timeout and an address space
#: set from the size of its input (fuzz/cost/fast.py, budget), and for a
#: sample of executions a timed series at full scale (up to 90 s a child).
TIMEOUT = {"cost": 900}
#: Targets whose crashes are kept as they are: a cost input is a few bytes
#: that choose a family, and each run of it takes seconds.
_NOT_MINIMIZED = frozenset({"cost"})
_ARTIFACT = re.compile(r"^(crash|timeout|oom|leak|slow-unit)-[0-9a-f]+$")


@dataclass
class Stats:
    """What one target's run did, summed over its jobs."""

    target: str
    seconds: float = 0.0
    executions: int = 0
    exec_per_sec: int = 0
    cov: int = 0
    ft: int = 0
    new_entries: int = 0
    corpus_size: int = 0
    crashes: list[Path] = field(default_factory=list)
    sanitized: bool = False
    failed_jobs: int = 0
    #: Crash/timeout/oom inputs libFuzzer saved (only the first few are minimized).
    artifacts: int = 0


def _atheris_dir(python: str) -> Path | None:
    proc = subprocess.run(
        [python, "-c", "import atheris; print(atheris.path())"],
        capture_output=True,
        text=True,
        check=False,
    )
    return Path(proc.stdout.strip()) if proc.returncode == 0 else None


def fuzz_env(python: str, *, sanitize: bool) -> tuple[dict[str, str], bool]:
    """The environment for a harness process; whether it uses the sanitized build."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONHASHSEED", "0")
    atheris = _atheris_dir(python)
    if atheris is None:
        raise SystemExit("atheris is not installed: run `make fuzz-deps` (scripts/build-asan.sh)")
    sanitized = False
    if sanitize and any(ASAN_PYLIB.glob("_lcfs*.so")):
        preload = atheris / "asan_with_fuzzer.so"
        env["LD_PRELOAD"] = " ".join(filter(None, [str(preload), env.get("LD_PRELOAD")]))
        env["CFSPY_ASAN_PYLIB"] = str(ASAN_PYLIB)
        # Python itself is not instrumented and keeps memory until exit.
        env.setdefault(
            "ASAN_OPTIONS",
            "detect_leaks=0:allocator_may_return_null=1:abort_on_error=0:"
            "handle_abort=1:symbolize=1",
        )
        env.setdefault(
            "UBSAN_OPTIONS",
            f"halt_on_error=1:print_stacktrace=1:suppressions={FUZZ / 'ubsan.supp'}",
        )
        sanitized = True
    elif sanitize:
        print(
            "fuzz: no sanitized build (.deps/asan): libcomposefs runs without ASan/UBSan; "
            "run `make fuzz-deps` for it",
            file=sys.stderr,
        )
    return env, sanitized


def _harness(python: str, target: str) -> list[str]:
    """The command that runs ``target``'s harness: a script libFuzzer can re-execute.

    libFuzzer's fork and crash-minimization modes start ``argv[0]`` again with
    new options, so argv[0] must be an executable that reaches the target.
    """
    script = WORK / target / "harness.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    text = f'#!/bin/sh\nexec "{python}" -m fuzz.harness {target} "$@"\n'
    if not script.exists() or script.read_text() != text:
        script.write_text(text)
        script.chmod(0o755)
    return [str(script)]


_FINAL = {
    "stat::number_of_executed_units": "executions",
    "stat::average_exec_per_sec": "exec_per_sec",
    "stat::new_units_added": "new_units",
}
_COV = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)")
# Fork mode: "#1234: cov: 10 ft: 20 corp: 5 exec/s: 100 oom/timeout/crash: 0/0/1 time: 9s ..."
_FORK = re.compile(
    r"#(\d+): cov: (\d+) ft: (\d+) corp: (\d+) exec/s:? (\d+) "
    r"oom/timeout/crash: (\d+)/(\d+)/(\d+) time: (\d+)s"
)


def parse_log(text: str) -> dict[str, int]:
    """libFuzzer's figures from one job's output (final stats and the last cov line)."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in _FINAL:
            try:
                found[_FINAL[key.strip()]] = int(value.strip())
            except ValueError:
                pass
        fork = _FORK.search(line)
        if fork:
            found["executions"] = int(fork.group(1))
            found["cov"] = int(fork.group(2))
            found["ft"] = int(fork.group(3))
            found["exec_per_sec"] = int(fork.group(5))
            found["crashes"] = sum(int(fork.group(i)) for i in (6, 7, 8))
            continue
        match = _COV.search(line)
        if match:
            found["last_run"] = int(match.group(1))
            found["cov"] = int(match.group(2))
            found["ft"] = int(match.group(3))
    return found


def _artifacts(folder: Path) -> set[Path]:
    return {p for p in folder.iterdir() if _ARTIFACT.match(p.name)} if folder.is_dir() else set()


def minimize(python: str, env: dict[str, str], target: str, crash: Path, seconds: int) -> Path:
    """Minimize ``crash`` into fuzz/crashes/<target>/; return the stored file."""
    kind = crash.name.split("-", 1)[0]
    folder = CRASHES / target
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(crash.read_bytes()).hexdigest()[:12]
    dest = folder / f"{kind}-{digest}"
    if kind == "crash" and target not in _NOT_MINIMIZED:
        out = WORK / target / f"minimize-{digest}.log"
        with out.open("wb") as log:
            subprocess.run(
                [
                    *_harness(python, target),
                    "-minimize_crash=1",
                    f"-max_total_time={seconds}",
                    f"-exact_artifact_path={dest}",
                    str(crash),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
                cwd=WORK / target,
            )
    if not dest.exists() or dest.stat().st_size == 0:
        shutil.copyfile(crash, dest)
    return dest


def _limits(target: str) -> list[str]:
    """The per-target libFuzzer limits every run, merge and minimization uses."""
    return [
        f"-timeout={TIMEOUT.get(target, 20)}",
        "-rss_limit_mb=3072",
        f"-max_len={MAX_LEN.get(target, 65536)}",
    ]


def libfuzzer_options(
    target: str, *, seconds: int, jobs: int, fork: bool, artifacts: Path
) -> list[str]:
    """libFuzzer's options for a campaign of ``target`` (``--jobs`` is ``-fork=N``)."""
    options = [
        f"-max_total_time={seconds}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        *_limits(target),
    ]
    dictionary = DICTS / f"{target}.dict"
    if dictionary.is_file():
        options.append(f"-dict={dictionary.resolve()}")
    if fork:
        # One parent, `jobs` children; a crash is saved and the campaign goes on.
        options += [f"-fork={jobs}", "-ignore_crashes=1", "-ignore_timeouts=1", "-ignore_ooms=1"]
    return options


def run_target(
    python: str,
    target: str,
    *,
    seconds: int,
    jobs: int,
    extra: list[str],
    sanitize: bool,
    minimize_seconds: int,
    fork: bool = True,
    max_minimize: int = 5,
) -> Stats:
    env, sanitized = fuzz_env(python, sanitize=sanitize)
    work = WORK / target
    corpus = work / "corpus"
    artifacts = work / "artifacts"
    for folder in (corpus, artifacts):
        folder.mkdir(parents=True, exist_ok=True)
    seeds = CORPUS / target
    before = {p.name for p in corpus.iterdir()}
    old_artifacts = _artifacts(artifacts)
    options = libfuzzer_options(target, seconds=seconds, jobs=jobs, fork=fork, artifacts=artifacts)
    options += extra
    dirs = [str(corpus)] + ([str(seeds)] if seeds.is_dir() else [])
    command = _harness(python, target)
    env["CFSPY_FUZZ_ARGV0"] = command[0]
    runs = 1 if fork else jobs
    procs = []
    logs = []
    start = time.monotonic()
    for job in range(runs):
        log_path = work / f"job-{job}.log"
        logs.append(log_path)
        log = log_path.open("wb")
        procs.append(
            (
                subprocess.Popen(
                    [*command, f"-seed={job + 1}", *options, *dirs],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=work,
                ),
                log,
            )
        )
    stats = Stats(target=target, sanitized=sanitized)
    for proc, log in procs:
        proc.wait()
        log.close()
    stats.seconds = time.monotonic() - start
    for (proc, _), log_path in zip(procs, logs, strict=True):
        found = parse_log(log_path.read_text(errors="replace"))
        stats.executions += found.get("executions", found.get("last_run", 0))
        stats.exec_per_sec += found.get("exec_per_sec", 0)
        stats.cov = max(stats.cov, found.get("cov", 0))
        stats.ft = max(stats.ft, found.get("ft", 0))
        if proc.returncode not in (0, 1, 70, 71, 77) or not found:
            stats.failed_jobs += 1
    if (fork or not stats.exec_per_sec) and stats.seconds:
        # Fork mode's exec/s is one child's; report the campaign's.
        stats.exec_per_sec = int(stats.executions / stats.seconds)
    after = {p.name for p in corpus.iterdir()}
    stats.new_entries = len(after - before)
    stats.corpus_size = len(after)
    new_artifacts = sorted(_artifacts(artifacts) - old_artifacts, key=lambda p: p.stat().st_mtime)
    stats.artifacts = len(new_artifacts)
    for crash in new_artifacts[:max_minimize]:
        stats.crashes.append(minimize(python, env, target, crash, minimize_seconds))
    return stats


def _print_table(results: list[Stats]) -> None:
    head = (
        f"{'target':10} {'seconds':>8} {'executions':>12} {'exec/s':>8} {'cov':>6} {'ft':>7} "
        f"{'new':>5} {'corpus':>7} {'crashes':>7}  sanitized"
    )
    print(head)
    for s in results:
        print(
            f"{s.target:10} {s.seconds:8.0f} {s.executions:12d} {s.exec_per_sec:8d} "
            f"{s.cov:6d} {s.ft:7d} {s.new_entries:5d} {s.corpus_size:7d} "
            f"{len(s.crashes):7d}  {'ASan+UBSan' if s.sanitized else 'no'}"
        )
        for crash in s.crashes:
            print(f"  minimized into {crash.relative_to(REPO)}")
        if s.artifacts > len(s.crashes):
            print(f"  {s.artifacts} failing inputs in all: build/fuzz/{s.target}/artifacts/")
        if s.failed_jobs:
            print(f"  {s.failed_jobs} job(s) ended abnormally: see build/fuzz/{s.target}/job-*.log")


def _build_serve_peer() -> None:
    """Build podman's long-lived TOC peer for toc_diff (fuzz/peers/build-serve.sh), if it can be.

    Without it (no .deps/cstorage, or the build fails) the target starts the
    one-shot peer per TOC, about ten times slower.
    """
    from fuzz import peers

    if (
        "COMPOSEFS_PY_CSTORAGE_SERVE" not in os.environ
        and (REPO / ".deps/cstorage/gopath").is_dir()
    ):
        # idempotent: rebuilt only when fuzz/peers/ changed
        subprocess.run([str(FUZZ / "peers" / "build-serve.sh")], check=False)
    if not os.access(peers.CSTORAGE_SERVE, os.X_OK):
        print(
            "fuzz: toc_diff: no long-lived peer (fuzz/peers/build-serve.sh): one process per TOC",
            file=sys.stderr,
        )


def _build_mkcomposefs_server() -> None:
    """Build mkcomposefs's fork server (fuzz/peers/build-mkcomposefs-serve.sh), if it can be.

    Without it (no libcomposefs source or prefix of the same version, no
    compiler, a failed build: the script says which) every dumpfile starts a
    mkcomposefs process: dumpfile_diff ran 100-175 executions a second so,
    about 420 with the server.
    """
    from fuzz import peers

    if "COMPOSEFS_PY_MKCOMPOSEFS_SERVE" not in os.environ:
        # idempotent: rebuilt only when fuzz/peers/ or the library changed
        subprocess.run([str(FUZZ / "peers" / "build-mkcomposefs-serve.sh")], check=False)
    if peers.MkcomposefsPeer.default_server() is None:
        print(
            "fuzz: no mkcomposefs fork server (fuzz/peers/build-mkcomposefs-serve.sh, or "
            "COMPOSEFS_PREFIX names another mkcomposefs): one mkcomposefs process per dumpfile",
            file=sys.stderr,
        )


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    from fuzz.targets import TARGETS

    names = list(TARGETS) if args.target == "all" else [args.target]
    for name in names:
        if name not in TARGETS:
            print(f"fuzz: unknown target {name!r}; see `python -m fuzz list`", file=sys.stderr)
            return 2
    if "toc_diff" in names:
        _build_serve_peer()
    if {"toc_diff", "dumpfile_diff"} & set(names):
        _build_mkcomposefs_server()
    results = []
    for name in names:
        print(f"fuzz: {name}: {args.seconds} s x {args.jobs} job(s)", file=sys.stderr, flush=True)
        results.append(
            run_target(
                args.python,
                name,
                seconds=args.seconds,
                jobs=args.jobs,
                extra=extra,
                sanitize=not args.no_sanitize,
                minimize_seconds=args.minimize_seconds,
                fork=not args.no_fork,
                max_minimize=args.max_minimize,
            )
        )
    _print_table(results)
    crashed = any(s.crashes for s in results)
    broken = any(s.failed_jobs and not s.executions for s in results)
    return 1 if crashed or broken else 0


@dataclass
class Merged:
    """What a merge did to a corpus folder."""

    before: int
    after: int
    size: int


def _count(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


def merge_into(
    python: str, target: str, corpus: Path, sources: list[Path], *, sanitize: bool, extra: list[str]
) -> Merged:
    """libFuzzer ``-merge=1``: the inputs of ``sources`` that add coverage join ``corpus``.

    libFuzzer runs the inputs in a child it restarts after a crash (the
    control file records where it was), so a crashing input is skipped, not
    fatal.  Raises SystemExit if libFuzzer fails.
    """
    env, _ = fuzz_env(python, sanitize=sanitize)
    command = _harness(python, target)
    env["CFSPY_FUZZ_ARGV0"] = command[0]
    # libFuzzer runs in the target's work folder: every path absolute.
    corpus = corpus.resolve()
    sources = [folder.resolve() for folder in sources]
    corpus.mkdir(parents=True, exist_ok=True)
    before, _ = _count(corpus)
    work = WORK / target
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "merge.log"
    with (
        tempfile.TemporaryDirectory(prefix="merge-", dir=work) as scratch,
        log_path.open("wb") as log,
    ):
        proc = subprocess.run(
            [
                *command,
                "-merge=1",
                f"-merge_control_file={scratch}/control",
                f"-artifact_prefix={scratch}/",
                *_limits(target),
                *extra,
                str(corpus),
                *map(str, sources),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work,
            check=False,
        )
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"fuzz: libFuzzer's merge failed (exit {proc.returncode}):\n{tail}")
    after, size = _count(corpus)
    return Merged(before=before, after=after, size=size)


def _corpus_arg(args: argparse.Namespace) -> Path:
    return Path(args.corpus) if args.corpus else WORK / args.target / "corpus"


def cmd_merge(args: argparse.Namespace, extra: list[str]) -> int:
    corpus = _corpus_arg(args)
    sources = [Path(d) for d in args.dirs]
    for folder in sources:
        if not folder.is_dir():
            print(f"fuzz: {folder}: not a folder", file=sys.stderr)
            return 2
    done = merge_into(
        args.python, args.target, corpus, sources, sanitize=not args.no_sanitize, extra=extra
    )
    print(
        f"merge {args.target}: {done.before} -> {done.after} files "
        f"(+{done.after - done.before}, {done.size} bytes) in {corpus}"
    )
    return 0


def cmd_minimize(args: argparse.Namespace, extra: list[str]) -> int:
    corpus = _corpus_arg(args)
    if not corpus.is_dir():
        print(f"fuzz: no corpus at {corpus}", file=sys.stderr)
        return 2
    before, before_size = _count(corpus)
    fresh = corpus.with_name(corpus.name + ".min")
    old = corpus.with_name(corpus.name + ".old")
    for leftover in (fresh, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        done = merge_into(
            args.python, args.target, fresh, [corpus], sanitize=not args.no_sanitize, extra=extra
        )
        if before and not done.after:
            raise SystemExit("fuzz: the minimized corpus is empty; the corpus is left as it was")
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    # Swap: the old folder goes only once the new one is in place.
    corpus.rename(old)
    fresh.rename(corpus)
    shutil.rmtree(old)
    print(
        f"minimize {args.target}: {before} -> {done.after} files, "
        f"{before_size} -> {done.size} bytes in {corpus}"
    )
    return 0


def cmd_list(_: argparse.Namespace) -> int:
    from fuzz.targets import TARGETS

    for target in TARGETS.values():
        seeds = CORPUS / target.name
        count = len(list(seeds.iterdir())) if seeds.is_dir() else 0
        native = "  (libcomposefs)" if target.native else ""
        print(f"{target.name:10} {target.summary}; {count} seeds{native}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from fuzz.targets import TARGETS, replay

    failures = 0
    for name in args.files:
        path = Path(name)
        target = args.target or path.parent.name
        if target not in TARGETS:
            print(f"{path}: no target (folder {target!r}); pass --target", file=sys.stderr)
            return 2
        try:
            replay(target, path.read_bytes())
        except Exception:  # a finding: report it whatever it is
            failures += 1
            print(f"{path}: FINDING in target {target}", file=sys.stderr)
            traceback.print_exc()
        else:
            print(f"{path}: ok ({target})")
    return 1 if failures else 0


def cmd_seed(_: argparse.Namespace) -> int:
    from fuzz.seeds import write_corpus

    for path in write_corpus(CORPUS):
        print(path.relative_to(REPO))
    return 0


def _cost_mode_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cost-mode",
        choices=("counted", "timed"),
        help="how the cost target measures: counted (default: deterministic counters at small "
        "n, CPU time for a sample) or timed (CPU time at full scale in fresh interpreters)",
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the targets")
    run = sub.add_parser("run", help="run a campaign (atheris/libFuzzer)")
    run.add_argument("--target", default="all", help="target name or 'all' (default)")
    run.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    run.add_argument("--jobs", type=int, default=1, help="parallel processes per target")
    run.add_argument("--no-sanitize", action="store_true", help="do not use the ASan build")
    run.add_argument("--minimize-seconds", type=int, default=60, help="per crash")
    run.add_argument("--max-minimize", type=int, default=5, help="crashes minimized per target")
    run.add_argument(
        "--no-fork", action="store_true", help="plain libFuzzer processes: stop at the first crash"
    )
    run.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    _cost_mode_option(run)
    for name, text in (
        ("merge", "merge folders of inputs into a target's corpus (libFuzzer -merge=1)"),
        ("minimize", "minimize a target's corpus (-merge=1 into a fresh folder, then swap)"),
    ):
        corp = sub.add_parser(name, help=text)
        corp.add_argument("--target", required=True, help="target name")
        corp.add_argument("--corpus", help="the corpus folder (default build/fuzz/TARGET/corpus)")
        corp.add_argument("--no-sanitize", action="store_true", help="do not use the ASan build")
        corp.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
        if name == "merge":
            corp.add_argument("dirs", nargs="+", help="folders of inputs (other machines' corpora)")
    replay = sub.add_parser("replay", help="run files through their target")
    replay.add_argument("files", nargs="+")
    replay.add_argument("--target")
    _cost_mode_option(replay)
    sub.add_parser("seed", help="rewrite fuzz/corpus from fuzz/seeds.py")
    args = parser.parse_args(argv)
    if getattr(args, "cost_mode", None):
        # read by fuzz.targets, in this process (replay) or in the harness (run)
        os.environ["CFSPY_COST_MODE"] = args.cost_mode
    if args.command in ("merge", "minimize"):
        from fuzz.targets import TARGETS

        if args.target not in TARGETS:
            print(f"fuzz: unknown target {args.target!r}", file=sys.stderr)
            return 2
        return (cmd_merge if args.command == "merge" else cmd_minimize)(args, extra)
    if args.command == "run":
        return cmd_run(args, extra)
    if extra:
        parser.error("libFuzzer options (after --) only apply to run, merge and minimize")
    if args.command == "list":
        return cmd_list(args)
    if args.command == "replay":
        return cmd_replay(args)
    return cmd_seed(args)


if __name__ == "__main__":
    sys.exit(main())
