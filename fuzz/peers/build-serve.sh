#!/usr/bin/env bash
# Build cstorage-toc2dump-serve (fuzz/peers/toc2dump_serve_test.go): podman's TOC
# parser and dump in a long-lived process, for the toc-diff fuzz target.
#
# Usage: fuzz/peers/build-serve.sh [PEER_DEST [OUT_DIR]]
#   PEER_DEST  where ../shared/peers/containers-storage/setup.sh built the one-shot
#              peer (default .deps/cstorage); only read: its Go toolchain (root/),
#              its storage tree (gopath/) and its build cache (gocache/, copied once)
#   OUT_DIR    default build/fuzz/peers; the binary is OUT_DIR/cstorage-toc2dump-serve
# Idempotent: rebuilt only when this script or the Go file is newer than the binary.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/fuzz/peers"
DEST=$(cd "${1:-$ROOT/.deps/cstorage}" && pwd)
OUT=$(mkdir -p "${2:-$ROOT/build/fuzz/peers}" && cd "${2:-$ROOT/build/fuzz/peers}" && pwd)
BIN="$OUT/cstorage-toc2dump-serve"
say() { echo "build-serve: $*" >&2; }
if [ -x "$BIN" ] && [ "$BIN" -nt "$HERE/toc2dump_serve_test.go" ] && [ "$BIN" -nt "$0" ]; then
    say "ready: $BIN"; exit 0
fi
GOROOT_BIN=$(ls -d "$DEST"/root/usr/lib/go-1.*/bin 2>/dev/null | sort -V | tail -n1)
PKG_SRC=$(ls -d "$DEST"/gopath/src/*/storage/pkg/chunked 2>/dev/null | head -n1)
[ -n "$GOROOT_BIN" ] && [ -n "$PKG_SRC" ] || {
    say "no peer build in $DEST: run ../shared/peers/containers-storage/setup.sh $DEST first"; exit 1; }
STORAGE=${PKG_SRC%/pkg/chunked}
MOD=${STORAGE#"$DEST/gopath/src/"}
WORK="$OUT/work"
rm -rf "$WORK/gopath"
mkdir -p "$WORK/gopath/src/$(dirname "$MOD")"
cp -r "$STORAGE" "$WORK/gopath/src/$MOD"
chmod -R u+w "$WORK/gopath"
PKG="$WORK/gopath/src/$MOD/pkg/chunked"
rm -f "$PKG"/*_test.go
sed "s#go.podman.io/storage/pkg/chunked/dump#$MOD/pkg/chunked/dump#" "$HERE/toc2dump_serve_test.go" \
    >"$PKG/zz_toc2dump_serve_test.go"
# The peer's build cache spares recompiling the standard library and the dependencies.
if [ ! -d "$WORK/gocache" ] && [ -d "$DEST/gocache" ]; then
    cp -r "$DEST/gocache" "$WORK/gocache"
    chmod -R u+w "$WORK/gocache"
fi
export PATH="$GOROOT_BIN:$PATH" GOTOOLCHAIN=local GOPROXY=off GO111MODULE=off GOFLAGS= \
    GOCACHE="$WORK/gocache" GOPATH="$WORK/gopath:$DEST/root/usr/share/gocode"
say "building with $(go version | awk '{print $3}')"
(cd "$PKG" && go test -c -vet=off -tags exclude_graphdriver_btrfs -o "$BIN" .)
say "ready: $BIN"
