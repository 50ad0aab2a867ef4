#!/usr/bin/env bash
# `make fuzz-check`: run .clusterfuzzlite/build.sh as ClusterFuzzLite/OSS-Fuzz
# would, without their containers, then run every fuzzer it produced.
#
# In a scratch folder (build/fuzz-check, or $FUZZ_CHECK_DIR):
#   $SRC/composefs-py   a copy of the checkout's files (the Dockerfile's COPY)
#   $SRC/composefs      Debian's composefs source that scripts/bootstrap.sh
#                       extracted (the Dockerfile's fetch-composefs.sh)
#   $WORK, $OUT         empty folders
# and stand-ins for the base image's tools (fuzz/oss-fuzz-stand-ins/):
# python3 and pip3 (the checkout's .venv; pip3 installs into $WORK/site, not
# into the venv) and compile_python_fuzzer ($OUT/NAME, a wrapper that runs
# NAME.pkg under the preloaded sanitizer runtime; NAME.pkg is a copy of the
# script, or with FUZZ_CHECK_PYINSTALLER=DIR, a folder PyInstaller imports
# from, the real PyInstaller package)
# with CC=the clang scripts/build-asan.sh picks for this Debian release
# (14 on Debian 12, 19 on 13) and OSS-Fuzz's CFLAGS for $SANITIZER (address, or
# undefined).  Then each $OUT/fuzz_* runs $FUZZ_CHECK_SECONDS (default 5) on
# its unzipped seed corpus with its dictionary and options; it must exit 0
# after at least one execution.  Needs `make fuzz-deps` (clang, atheris).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${CFSPY_PYTHON:-$ROOT/.venv/bin/python} # as scripts/build-asan.sh
SCRATCH=${FUZZ_CHECK_DIR:-$ROOT/build/fuzz-check}
SECONDS_EACH=${FUZZ_CHECK_SECONDS:-5}
SANITIZER=${SANITIZER:-address}
CLANG=${CLANG:-$("$ROOT/scripts/build-asan.sh" --print-clang)}
say() { printf 'fuzz-check: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

command -v "$CLANG" >/dev/null || die "$CLANG missing: run \`make fuzz-deps\`"
ATHERIS=$("$PY" -c 'import atheris; print(atheris.path())' 2>/dev/null) \
    || die "atheris missing: run \`make fuzz-deps\`"
LCFS_SRC=$(cat "$ROOT/.deps/composefs-src-path" 2>/dev/null || true)
[ -f "$LCFS_SRC/meson.build" ] || die "no libcomposefs source: run \`make deps\`"

# OSS-Fuzz's flags (infra/base-images/base-clang: SANITIZER_FLAGS_*, COVERAGE_FLAGS).
common="-O1 -fno-omit-frame-pointer -gline-tables-only -fsanitize=fuzzer-no-link"
case $SANITIZER in
address)
    san="-fsanitize=address -fsanitize-address-use-after-scope"
    preload=$ATHERIS/asan_with_fuzzer.so ;;
undefined)
    san="-fsanitize=array-bounds,bool,builtin,enum,float-divide-by-zero,function,integer-divide-by-zero,null,object-size,return,returns-nonnull-attribute,shift,signed-integer-overflow,unsigned-integer-overflow,unreachable,vla-bound -fno-sanitize-recover=array-bounds,bool,builtin,enum,float-divide-by-zero,function,integer-divide-by-zero,null,object-size,return,returns-nonnull-attribute,shift,signed-integer-overflow,unreachable,vla-bound"
    preload=$ATHERIS/ubsan_with_fuzzer.so ;;
*) die "SANITIZER=$SANITIZER: address or undefined" ;;
esac
[ -f "$preload" ] || die "atheris has no $(basename "$preload")"

rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"/{src/composefs-py,work,out,corpus,logs}
export SRC=$SCRATCH/src WORK=$SCRATCH/work OUT=$SCRATCH/out SANITIZER
export CC=$CLANG CXX=${CLANG/clang/clang++} CFLAGS="$common $san" CXXFLAGS="$common $san"

# $SRC: the checkout's files (tracked and new, not ignored), as `COPY .` gives them.
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
    | xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _ \
    | tar --null -T - -cf -) | tar -xf - -C "$SRC/composefs-py"
ln -s "$LCFS_SRC" "$SRC/composefs"

# The base image's tools: stand-ins (fuzz/oss-fuzz-stand-ins/).
export CHECK_PY=$PY CHECK_PRELOAD=$preload
export PATH=$ROOT/fuzz/oss-fuzz-stand-ins:$PATH

say "build.sh (SANITIZER=$SANITIZER, CC=$CC) in $SCRATCH"
start=$(date +%s)
if ! (cd "$SRC/composefs-py" && bash -eu "$ROOT/.clusterfuzzlite/build.sh") >"$SCRATCH/logs/build.log" 2>&1; then
    tail -n 40 "$SCRATCH/logs/build.log" >&2
    die "build.sh failed (log: $SCRATCH/logs/build.log)"
fi
say "build.sh: $(($(date +%s) - start)) s"
# (ldd's whole output first: grep -q would close the pipe early, and pipefail.)
linked=$(ldd "$WORK"/site/composefs_py/_lcfs*.so)
grep -q "$WORK/libcomposefs/lib/libcomposefs" <<<"$linked" \
    || die "the extension build.sh installed does not use the libcomposefs it built"

# Every fuzzer must load the extension build.sh installed (instrumented,
# against its libcomposefs), not another composefs_py on the import path.
for wrapper in "$OUT"/fuzz_*; do
    case $wrapper in *.*) continue ;; esac # NAME.pkg, .dict, .options, .zip
    [ -x "$wrapper" ] && [ -f "$wrapper" ] && [ -z "${FUZZ_CHECK_PYINSTALLER:-}" ] || continue
    path=$(sed -n 's/^PYTHONPATH=\([^ ]*\) .*/\1/p' "$wrapper")
    loaded=$(cd "$OUT" && LD_PRELOAD=$preload ASAN_OPTIONS=detect_leaks=0 PYTHONPATH=$path \
        "$PY" -c 'import composefs_py._lcfs as m; print(m.__file__)' 2>&1 | tail -n1)
    case $loaded in
    "$WORK/site/composefs_py/"*) ;;
    *) die "$(basename "$wrapper") loads composefs_py._lcfs from ${loaded}, not from \$WORK/site" ;;
    esac
done

failed=0
count=0
for wrapper in "$OUT"/fuzz_*; do
    case $wrapper in *.*) continue ;; esac # NAME.pkg, .dict, .options, .zip
    [ -x "$wrapper" ] && [ -f "$wrapper" ] || continue
    name=$(basename "$wrapper")
    count=$((count + 1))
    corpus=$SCRATCH/corpus/$name
    mkdir -p "$corpus"
    [ -f "$OUT/${name}_seed_corpus.zip" ] || { say "$name: no seed corpus zip"; failed=1; continue; }
    unzip -q -o "$OUT/${name}_seed_corpus.zip" -d "$corpus"
    opts=()
    [ -f "$OUT/$name.dict" ] && opts+=("-dict=$OUT/$name.dict")
    if [ -f "$OUT/$name.options" ]; then
        while IFS=' =' read -r key value; do
            case $key in '' | '['*) continue ;; esac
            opts+=("-$key=$value")
        done <"$OUT/$name.options"
    fi
    log=$SCRATCH/logs/$name.log
    rc=0
    (cd "$SCRATCH" && timeout $((SECONDS_EACH + 240)) "$wrapper" -max_total_time="$SECONDS_EACH" \
        -print_final_stats=1 -timeout=60 "${opts[@]}" "$corpus") >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    if [ "$rc" -ne 0 ] || [ "${runs:-0}" -le 0 ]; then
        tail -n 30 "$log" >&2
        say "$name: FAILED (exit $rc, ${runs:-0} executions; log: $log)"
        failed=1
    else
        say "$name: ok, ${runs} executions in ${SECONDS_EACH} s (${opts[*]})"
    fi
done
[ "$count" -gt 0 ] || die "build.sh produced no fuzzer"
[ "$failed" -eq 0 ] || die "some fuzzers failed"
say "all $count fuzzers ran ($(($(date +%s) - start)) s in all)"
