#!/usr/bin/env bash
# Build what the coverage-guided fuzzing harness (fuzz/) needs, idempotently:
#
#   1. the clang the Debian release ships and its sanitizer runtimes (clang-N,
#      libclang-rt-N-dev): 14 on Debian 12, 19 on Debian 13 (see release_clang);
#   2. atheris in .venv (PyPI ships manylinux wheels with libFuzzer and the
#      sanitizer runtimes inside: asan_with_fuzzer.so, ubsan_with_fuzzer.so;
#      where pip must build it from source, it does so with that clang and its
#      libFuzzer);
#   3. libcomposefs built with clang -fsanitize=address,undefined (recover off,
#      so any undefined behaviour aborts) plus -fsanitize=fuzzer-no-link (coverage
#      counters libFuzzer reads), from the very Debian source scripts/bootstrap.sh
#      extracted, into $ASAN/prefix;
#   4. our CFFI extension composefs_py._lcfs compiled against that prefix, with the
#      same flags, into $ASAN/pylib/composefs_py/ (the regular build in the
#      source tree is left alone).
#
# `python -m fuzz run` puts .deps/asan/pylib first on the module path and starts
# itself under LD_PRELOAD of atheris' asan_with_fuzzer.so, so the sanitized
# library is what the harness exercises.  Nothing here touches the system's apt
# configuration beyond installing the two clang packages.
#
# Environment: CLANG (default: the release's, clang-N), CFSPY_ASAN_DIR (default
# .deps/asan: where the build goes; `python -m fuzz` reads the same variable),
# CFSPY_ATHERIS_PIP (extra pip options for atheris, e.g. `--no-binary atheris`
# to build it from source with that clang), CFSPY_ASAN_FORCE=1 rebuilds
# everything.  `build-asan.sh --print-clang` prints the clang and exits.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPS="$ROOT/.deps"
ASAN=${CFSPY_ASAN_DIR:-$DEPS/asan}
PY=${CFSPY_PYTHON:-$ROOT/.venv/bin/python}

# The clang major version the Debian release ships as its default: 14 on
# Debian 12 (bookworm), 19 on Debian 13 (trixie); elsewhere the newest clang-N
# apt knows with its libclang-rt-N-dev.  A clang-N already installed with its
# runtimes is used as is when CLANG names it.
release_clang() {
    local id="" version=""
    if [ -r /etc/os-release ]; then
        id=$(. /etc/os-release && echo "${ID:-}")
        version=$(. /etc/os-release && echo "${VERSION_ID:-}")
    fi
    case "$id:$version" in
        debian:12) echo 14; return ;;
        debian:13) echo 19; return ;;
    esac
    local n
    for n in $(seq 30 -1 14); do
        if apt-cache show "clang-$n" "libclang-rt-$n-dev" >/dev/null 2>&1; then
            echo "$n"; return
        fi
    done
    echo 14
}
CLANG=${CLANG:-clang-$(release_clang)}
CLANG_MAJOR=${CLANG##*-}
case $CLANG_MAJOR in
    '' | *[!0-9]*) CLANG_MAJOR=$("$CLANG" -dumpversion 2>/dev/null | cut -d. -f1) ;;
esac
LLVM="/usr/lib/llvm-$CLANG_MAJOR"
# `build-asan.sh --print-clang`: the clang this script builds with (fuzz/oss-fuzz-check.sh).
if [ "${1:-}" = --print-clang ]; then
    echo "$CLANG"
    exit 0
fi
# Every sanitizer check aborts, except shift-base, which is recoverable only so
# fuzz/ubsan.supp can silence libcomposefs 1.0.8's known left shift of a byte
# into the sign bit (get_unaligned_le32, lcfs-writer-erofs.c:83); any other
# shift-base report still halts (UBSAN_OPTIONS=halt_on_error=1).
SAN_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fsanitize-recover=shift-base -fsanitize=fuzzer-no-link -fno-omit-frame-pointer -g -O1"

mkdir -p "$ASAN"
ASAN=$(cd "$ASAN" && pwd) # absolute: meson and the rpath need it
PREFIX="$ASAN/prefix"
PYLIB="$ASAN/pylib"
BUILD="$ASAN/build"
LOG="$ASAN/build.log"
: >>"$LOG"
say() { printf 'build-asan: %s\n' "$*" >&2; }
die() { say "error: $*"; say "see $LOG"; exit 1; }
quiet() {
    if ! "$@" >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2 || true
        die "failed: $*"
    fi
}

[ -x "$PY" ] || "$ROOT/scripts/bootstrap.sh"
SRC=$(cat "$DEPS/composefs-src-path" 2>/dev/null || echo "$DEPS/src/composefs")
[ -f "$SRC/meson.build" ] || "$ROOT/scripts/bootstrap.sh"
SRC=$(cat "$DEPS/composefs-src-path")
[ -f "$SRC/meson.build" ] || die "no libcomposefs source at $SRC (scripts/bootstrap.sh fetches it)"

# 1. clang --------------------------------------------------------------------
if ! command -v "$CLANG" >/dev/null \
    || ! ls "$LLVM"/lib/clang/*/lib/linux/libclang_rt.asan-x86_64.so >/dev/null 2>&1; then
    command -v apt-get >/dev/null || die "$CLANG missing and no apt-get: install clang and compiler-rt"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing clang-$CLANG_MAJOR libclang-rt-$CLANG_MAJOR-dev"
    quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "clang-$CLANG_MAJOR" "libclang-rt-$CLANG_MAJOR-dev"
fi
command -v "$CLANG" >/dev/null || die "no $CLANG after installing it"

# 2. atheris ------------------------------------------------------------------
# The wheel brings libFuzzer and sanitizer runtimes of its own LLVM; built from
# source (no wheel for this Python, or step 5) it takes the release's clang and
# its libFuzzer, so its runtimes match what that clang instruments.
pip_atheris() {
    CLANG_BIN=$(command -v "$CLANG") \
    LIBFUZZER_LIB=$(ls "$LLVM"/lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a | head -n1) \
        quiet "$PY" -m pip install -q --disable-pip-version-check "$@" "atheris>=2.3"
}
if ! "$PY" -c "import atheris" 2>/dev/null; then
    say "installing atheris into $("$PY" -c 'import sys; print(sys.prefix)')"
    # shellcheck disable=SC2086 # CFSPY_ATHERIS_PIP holds pip options
    pip_atheris ${CFSPY_ATHERIS_PIP:-}
fi
ATHERIS_DIR=$("$PY" -c "import atheris; print(atheris.path())")
[ -f "$ATHERIS_DIR/asan_with_fuzzer.so" ] || die "atheris has no asan_with_fuzzer.so in $ATHERIS_DIR"

# 3. sanitized libcomposefs ---------------------------------------------------
ver=$(sed -n "s/^ *version *: *'\([0-9.]*\)'.*/\1/p" "$SRC/meson.build" | head -n1)
stamp="$ver $CLANG $SAN_FLAGS"
if [ "${CFSPY_ASAN_FORCE:-0}" = 1 ] || [ "$(cat "$PREFIX/.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "building libcomposefs $ver with ASan+UBSan ($CLANG) into $PREFIX"
    rm -rf "$BUILD" "$PREFIX"
    # Shared objects get no sanitizer runtime linked in (it is preloaded); the
    # tools (mkcomposefs, composefs-info) are linked with clang's own runtime.
    CC="$CLANG" CFLAGS="$SAN_FLAGS" LDFLAGS="-fsanitize=address,undefined" \
        quiet meson setup "$BUILD" "$SRC" --prefix="$PREFIX" --libdir=lib \
        --buildtype=plain -Dfuse=disabled -Dman=disabled -Db_lundef=false \
        "-Dc_link_args=-Wl,-rpath,$PREFIX/lib"
    quiet ninja -C "$BUILD" install
    echo "$stamp" >"$PREFIX/.stamp"
    rm -rf "$BUILD"
fi

# 4. the CFFI extension against it ----------------------------------------------
ext_stamp=$( { echo "$stamp"; cat "$ROOT"/csrc/*; } | sha256sum | cut -d' ' -f1)
if [ "${CFSPY_ASAN_FORCE:-0}" = 1 ] || [ "$(cat "$PYLIB/.stamp" 2>/dev/null)" != "$ext_stamp" ] \
    || ! ls "$PYLIB"/composefs_py/_lcfs*.so >/dev/null 2>&1; then
    say "building composefs_py._lcfs against the sanitized library into $PYLIB"
    rm -rf "$PYLIB" "$ASAN/ext-tmp"
    mkdir -p "$PYLIB/composefs_py" "$ASAN/ext-tmp"
    # Run outside the checkout: build_ffi then names csrc/shim.c by its absolute
    # path, which cffi's compile() (it changes into tmpdir) still finds.
    (cd "$ASAN" && COMPOSEFS_PREFIX="$PREFIX" CC="$CLANG" LDSHARED="$CLANG -shared" \
        CFLAGS="$SAN_FLAGS" LDFLAGS="-fsanitize=address,undefined" \
        quiet "$PY" -c '
import sys
sys.path.insert(0, sys.argv[2])
import build_ffi
build_ffi.ffibuilder.compile(tmpdir=sys.argv[1], verbose=False)
' "$ASAN/ext-tmp" "$ROOT/csrc")
    so=$(ls "$ASAN"/ext-tmp/composefs_py/_lcfs*.so 2>/dev/null | head -n1)
    [ -n "$so" ] || die "the extension was not built (see $LOG)"
    cp "$so" "$PYLIB/composefs_py/"
    rm -rf "$ASAN/ext-tmp"
    echo "$ext_stamp" >"$PYLIB/.stamp"
fi
# The sanitized extension must resolve libcomposefs from the asan prefix.
if ! ldd "$PYLIB"/composefs_py/_lcfs*.so | grep -q "$PREFIX/lib/libcomposefs"; then
    die "the sanitized extension does not link $PREFIX/lib/libcomposefs"
fi

# 5. the runtime atheris preloads must define every sanitizer entry point ------
# that $CLANG's instrumentation calls.  atheris 3.0's wheel does for clang-14;
# clang 17 and later also instrument C with -fsanitize=function
# (__ubsan_handle_function_type_mismatch_abort), which that wheel's runtime
# lacks, so the library would not even load: atheris is then rebuilt from
# source with $CLANG and its compiler-rt (a few minutes, once).
runtime_lacks() {
    comm -23 \
        <(nm -D --undefined-only "$PREFIX"/lib/libcomposefs.so.* "$PYLIB"/composefs_py/_lcfs*.so \
            | awk '$1 == "U" {print $2}' | grep -E '^__(asan|ubsan|sanitizer|sancov)_' | sort -u) \
        <(nm -D --defined-only "$ATHERIS_DIR/asan_with_fuzzer.so" | awk '{print $3}' | sort -u)
}
lacks=$(runtime_lacks)
if [ -n "$lacks" ]; then
    say "atheris's runtime lacks $(echo "$lacks" | wc -l) symbol(s) $CLANG emits" \
        "($(echo "$lacks" | head -n3 | tr '\n' ' ')...): building atheris from source with $CLANG"
    pip_atheris --force-reinstall --no-deps --no-binary atheris
    ATHERIS_DIR=$("$PY" -c "import atheris; print(atheris.path())")
    lacks=$(runtime_lacks)
    [ -z "$lacks" ] || die "atheris built with $CLANG still lacks: $(echo "$lacks" | tr '\n' ' ')"
fi
say "ready ($CLANG): LD_PRELOAD=$ATHERIS_DIR/asan_with_fuzzer.so, extension in $PYLIB"
