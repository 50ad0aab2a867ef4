#!/usr/bin/env bash
# Build what the coverage-guided fuzzing harness (fuzz/) needs, idempotently:
#
#   1. clang-14 and its sanitizer runtimes (Debian: clang-14, libclang-rt-14-dev);
#   2. atheris in .venv (PyPI ships manylinux wheels with libFuzzer and the
#      sanitizer runtimes inside: asan_with_fuzzer.so, ubsan_with_fuzzer.so);
#   3. libcomposefs built with clang -fsanitize=address,undefined (recover off,
#      so any undefined behaviour aborts) plus -fsanitize=fuzzer-no-link (coverage
#      counters libFuzzer reads), from the very Debian source scripts/bootstrap.sh
#      extracted, into .deps/asan/prefix;
#   4. our CFFI extension composefs_py._lcfs compiled against that prefix, with the
#      same flags, into .deps/asan/pylib/composefs_py/ (the regular build in the
#      source tree is left alone).
#
# `python -m fuzz run` puts .deps/asan/pylib first on the module path and starts
# itself under LD_PRELOAD of atheris' asan_with_fuzzer.so, so the sanitized
# library is what the harness exercises.  Nothing here touches the system's apt
# configuration beyond installing the two clang packages.
#
# Environment: CLANG (default clang-14), CFSPY_ASAN_FORCE=1 rebuilds everything.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPS="$ROOT/.deps"
ASAN="$DEPS/asan"
PREFIX="$ASAN/prefix"
PYLIB="$ASAN/pylib"
BUILD="$ASAN/build"
LOG="$ASAN/build.log"
PY="$ROOT/.venv/bin/python"
CLANG=${CLANG:-clang-14}
# Every sanitizer check aborts, except shift-base, which is recoverable only so
# fuzz/ubsan.supp can silence libcomposefs 1.0.8's known left shift of a byte
# into the sign bit (get_unaligned_le32, lcfs-writer-erofs.c:83); any other
# shift-base report still halts (UBSAN_OPTIONS=halt_on_error=1).
SAN_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fsanitize-recover=shift-base -fsanitize=fuzzer-no-link -fno-omit-frame-pointer -g -O1"

mkdir -p "$ASAN"
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
    || ! ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.asan-x86_64.so >/dev/null 2>&1; then
    command -v apt-get >/dev/null || die "$CLANG missing and no apt-get: install clang and compiler-rt"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing clang-14 libclang-rt-14-dev"
    quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        clang-14 libclang-rt-14-dev
fi

# 2. atheris ------------------------------------------------------------------
if ! "$PY" -c "import atheris" 2>/dev/null; then
    say "installing atheris into .venv"
    # The wheel brings libFuzzer; building from an sdist would need these two.
    CLANG_BIN=$(command -v "$CLANG") \
    LIBFUZZER_LIB=$(ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a | head -n1) \
        quiet "$PY" -m pip install -q --disable-pip-version-check "atheris>=2.3"
fi
ATHERIS_DIR=$("$PY" -c "import atheris; print(atheris.path())")
[ -f "$ATHERIS_DIR/asan_with_fuzzer.so" ] || die "atheris has no asan_with_fuzzer.so in $ATHERIS_DIR"

# 3. sanitized libcomposefs ---------------------------------------------------
ver=$(sed -n "s/^ *version *: *'\([0-9.]*\)'.*/\1/p" "$SRC/meson.build" | head -n1)
stamp="$ver $CLANG $SAN_FLAGS"
if [ "${CFSPY_ASAN_FORCE:-0}" = 1 ] || [ "$(cat "$PREFIX/.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "building libcomposefs $ver with ASan+UBSan into .deps/asan/prefix"
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
    say "building composefs_py._lcfs against the sanitized library into .deps/asan/pylib"
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
say "ready: LD_PRELOAD=$ATHERIS_DIR/asan_with_fuzzer.so, extension in $PYLIB"
