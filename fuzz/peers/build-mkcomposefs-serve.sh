#!/usr/bin/env bash
# Build mkcomposefs-serve (fuzz/peers/mkcomposefs_serve.c): mkcomposefs's own main,
# from Debian's unmodified tools/mkcomposefs.c, run in a forked child per dumpfile,
# for the dumpfile_diff fuzz target.
#
# Usage: fuzz/peers/build-mkcomposefs-serve.sh [SRC [PREFIX [OUT_DIR]]]
#   SRC      the composefs source scripts/bootstrap.sh unpacked (default .deps/src/composefs)
#   PREFIX   where bootstrap.sh installed libcomposefs from it (default .deps/prefix);
#            its version must be the source's
#   OUT_DIR  default build/fuzz/peers; the binary is OUT_DIR/mkcomposefs-serve
# mkcomposefs.c is compiled with the source's own meson build's command for it (its
# flags and config.h) plus -Dmain=mkcomposefs_main, then linked with the driver, the source's internal
# helpers (libcomposefs-internal.a) and PREFIX's libcomposefs.so, as the tool is.
# Idempotent: rebuilt only when this script, the driver or the library is newer.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/fuzz/peers"
say() { echo "build-mkcomposefs-serve: $*" >&2; }
SRC=$(cd "${1:-$ROOT/.deps/src/composefs}" 2>/dev/null && pwd -P) || {
    say "no composefs source (${1:-.deps/src/composefs}): run scripts/bootstrap.sh"; exit 1; }
PREFIX=$(cd "${2:-$ROOT/.deps/prefix}" 2>/dev/null && pwd) || {
    say "no libcomposefs prefix (${2:-.deps/prefix}): run scripts/bootstrap.sh"; exit 1; }
OUT=$(mkdir -p "${3:-$ROOT/build/fuzz/peers}" && cd "${3:-$ROOT/build/fuzz/peers}" && pwd)
BIN="$OUT/mkcomposefs-serve"
LIB="$PREFIX/lib/libcomposefs.so"
[ -f "$SRC/tools/mkcomposefs.c" ] || { say "no tools/mkcomposefs.c in $SRC"; exit 1; }
[ -e "$LIB" ] || { say "no $LIB (libcomposefs not built by bootstrap.sh)"; exit 1; }
src_version=$(sed -n "s/^ *version *: *'\([0-9.]*\)'.*/\1/p" "$SRC/meson.build" | head -n1)
lib_version=$(cat "$PREFIX/.version" 2>/dev/null || true)
[ "$src_version" = "$lib_version" ] || {
    say "$PREFIX holds libcomposefs ${lib_version:-of unknown version}, the source is $src_version"
    exit 1; }
if [ -x "$BIN" ] && [ "$BIN" -nt "$0" ] && [ "$BIN" -nt "$HERE/mkcomposefs_serve.c" ] \
    && [ "$BIN" -nt "$HERE/mkcomposefs_serve.h" ] && [ "$BIN" -nt "$LIB" ]; then
    say "ready: $BIN"; exit 0
fi
for tool in meson ninja cc; do
    command -v "$tool" >/dev/null || { say "$tool not found (scripts/bootstrap.sh installs it)"; exit 1; }
done
BUILD="$OUT/mkcomposefs-build"
LOG="$OUT/mkcomposefs-build.log"
rm -rf "$BUILD"
trap 'say "failed: see $LOG"; tail -n 20 "$LOG" >&2' ERR
say "building from $SRC (libcomposefs $src_version)"
meson setup "$BUILD" "$SRC" --buildtype=debugoptimized -Dfuse=disabled -Dman=disabled >"$LOG" 2>&1
ninja -C "$BUILD" libcomposefs/libcomposefs-internal.a >>"$LOG" 2>&1
# The tool's own compile command (ninja's), with its main renamed.
OBJ=tools/mkcomposefs.p/mkcomposefs.c.o
compile=$(ninja -C "$BUILD" -t commands "$OBJ" | tail -n1)
[[ "$compile" == *mkcomposefs.c* ]] || { echo "no compile command for $OBJ" >>"$LOG"; false; }
(cd "$BUILD" && eval "$compile -Dmain=mkcomposefs_main -include '$HERE/mkcomposefs_serve.h'") \
    >>"$LOG" 2>&1
cc -std=gnu11 -O2 -g -Wall -Wextra -Werror -I"$HERE" -c "$HERE/mkcomposefs_serve.c" \
    -o "$BUILD/mkcomposefs_serve.o" >>"$LOG" 2>&1
cc -pthread -o "$BIN.tmp" "$BUILD/mkcomposefs_serve.o" "$BUILD/$OBJ" \
    "$BUILD/libcomposefs/libcomposefs-internal.a" -L"$PREFIX/lib" -lcomposefs \
    "-Wl,-rpath,$PREFIX/lib" >>"$LOG" 2>&1
mv "$BIN.tmp" "$BIN"
say "ready: $BIN"
