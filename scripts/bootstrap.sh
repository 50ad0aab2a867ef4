#!/usr/bin/env bash
# Bootstrap everything composefs-py needs to build and test, idempotently.
#
#   1. Debian build dependencies (only the missing ones; `apt-get update` runs
#      at most once, and only when something must be installed).
#   2. libcomposefs >= 1.0.6: the system's (`pkg-config composefs`) when it has
#      one; otherwise Debian's `composefs` *source* package, fetched with apt
#      through a private sources list and state directory (the system's apt
#      configuration is never touched) and built with meson into .deps/prefix:
#      the shared library and the tools (mkcomposefs, composefs-info: the test
#      oracles) and a position-independent static archive, libcomposefs.a,
#      which csrc/build_ffi.py links into the extension so that a wheel needs
#      no libcomposefs where it is installed (only libcrypto, as Debian 12/13
#      ship it). .deps/prefix/.version marks the prefix as built here.
#      The extracted source is always kept: the tests read its tests/assets.
#   3. A virtualenv .venv with `pip install -e .[test]`, redone only when the
#      build inputs changed (a hash stamp) or the extension is missing.
#
# Layout (all git-ignored):
#   .deps/src/composefs        symlink to the extracted upstream source
#   .deps/composefs-src-path   the same path, as one line of text
#   .deps/prefix               libcomposefs, mkcomposefs, composefs-info (when built)
#   .deps/bootstrap.log        everything the quiet steps printed
#
# Quiet when there is nothing to do.  Environment:
#   COMPOSEFS_PREFIX     use a libcomposefs installed under this prefix instead
#   CFSPY_FORCE_BUILD=1  build libcomposefs into .deps even if the system has one
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPS="$ROOT/.deps"
PREFIX="$DEPS/prefix"
VENV="$ROOT/.venv"
LOG="$DEPS/bootstrap.log"
MIN_VERSION=1.0.6
# Suites searched for the source package; apt picks the newest version.
SUITES="unstable testing"

mkdir -p "$DEPS"

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { say "error: $*"; say "see $LOG"; exit 1; }
# Run a command with its output going to the log; show the log tail on failure.
quiet() {
    if ! "$@" >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2 || true
        die "failed: $*"
    fi
}

# ---------------------------------------------------------------------------
# 1. system packages
# ---------------------------------------------------------------------------
APT_UPDATED=0
apt_install() {
    [ "$#" -gt 0 ] || return 0
    command -v apt-get >/dev/null || die "missing $* and no apt-get: install them by hand"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "missing $*: run as root or install them"
        sudo="sudo"
    fi
    say "installing system packages: $*"
    if [ "$APT_UPDATED" -eq 0 ]; then
        quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
        APT_UPDATED=1
    fi
    quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

system_packages() {
    # btrfs-progs: a loop btrfs for the reflink (FICLONE) test of the object store.
    local want=(make gcc libc6-dev pkg-config libssl-dev dpkg-dev meson ninja-build
                erofs-utils zstd xz-utils patch debian-archive-keyring ca-certificates
                btrfs-progs)
    local missing=()
    if command -v dpkg-query >/dev/null; then
        for p in "${want[@]}"; do
            pkg_installed "$p" || missing+=("$p")
        done
    fi
    # A Debian system python needs python3-venv (ensurepip) and python3-dev
    # (Python.h) to build the extension; other pythons (pyenv) bring their own.
    local py
    py=$(command -v python3 || true)
    if [ -z "$py" ]; then
        missing+=(python3 python3-venv python3-dev)
    elif [[ "$(readlink -f "$py")" == /usr/bin/* ]]; then
        pkg_installed python3-venv || missing+=(python3-venv)
        pkg_installed python3-dev || missing+=(python3-dev)
    fi
    apt_install "${missing[@]}"
}

# ---------------------------------------------------------------------------
# 2. libcomposefs and its source
# ---------------------------------------------------------------------------
version_ok() { dpkg --compare-versions "$1" ge "$MIN_VERSION"; }

# The upstream version of the source we have, from the extracted tree.
source_version() {
    sed -n "s/^ *version *: *'\([0-9.]*\)'.*/\1/p" "$DEPS/src/composefs/meson.build" | head -n1
}

fetch_source() {
    if [ -f "$DEPS/src/composefs/meson.build" ] && [ -d "$DEPS/src/composefs/tests/assets" ]; then
        return 0
    fi
    say "fetching Debian's composefs source package (private apt state in .deps/apt)"
    local apt="$DEPS/apt"
    rm -rf "$apt"
    mkdir -p "$apt/state/lists/partial" "$apt/cache/archives/partial" "$apt/etc" "$apt/dl"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -f "$keyring" ] || die "$keyring missing (package debian-archive-keyring)"
    : >"$apt/etc/sources.list"
    for s in $SUITES; do
        echo "deb-src [signed-by=$keyring] http://deb.debian.org/debian $s main" >>"$apt/etc/sources.list"
    done
    local opts=(-q
        -o "Dir::Etc::SourceList=$apt/etc/sources.list"
        -o "Dir::Etc::SourceParts=/nonexistent"
        -o "Dir::State=$apt/state"
        -o "Dir::State::Lists=$apt/state/lists"
        -o "Dir::Cache=$apt/cache"
        -o "Dir::State::status=/var/lib/dpkg/status"
        -o "APT::Sandbox::User=root")
    quiet apt-get "${opts[@]}" update
    (cd "$apt/dl" && quiet apt-get "${opts[@]}" source --download-only composefs)
    local dsc
    dsc=$(ls "$apt/dl"/composefs_*.dsc 2>/dev/null | sort -V | tail -n1)
    [ -n "$dsc" ] || die "no composefs .dsc downloaded"
    local upstream
    upstream=$(basename "$dsc" .dsc)
    upstream=${upstream#composefs_}
    upstream=${upstream%-*}
    upstream=${upstream#*:}
    version_ok "$upstream" || die "Debian's composefs is $upstream, need >= $MIN_VERSION"
    mkdir -p "$DEPS/src"
    rm -rf "$DEPS/src/composefs-$upstream"
    quiet dpkg-source --no-check -x "$dsc" "$DEPS/src/composefs-$upstream"
    ln -sfn "composefs-$upstream" "$DEPS/src/composefs"
    rm -rf "$apt"
}

build_library() {
    local ver
    ver=$(source_version)
    if [ -f "$PREFIX/lib/pkgconfig/composefs.pc" ] && [ -x "$PREFIX/bin/mkcomposefs" ] \
        && [ -f "$PREFIX/lib/libcomposefs.a" ] \
        && [ "$(cat "$PREFIX/.version" 2>/dev/null)" = "$ver" ]; then
        return 0
    fi
    say "building libcomposefs $ver into .deps/prefix"
    local build="$DEPS/build"
    rm -rf "$build" "$PREFIX"
    # The rpath lets the tools find the library without LD_LIBRARY_PATH. Both
    # library kinds; the static one compiled with -fPIC, as the extension (a
    # shared object) it is linked into needs.
    quiet meson setup "$build" "$DEPS/src/composefs" --prefix="$PREFIX" --libdir=lib \
        --buildtype=debugoptimized -Dfuse=disabled -Dman=disabled \
        -Ddefault_library=both -Db_staticpic=true \
        "-Dc_link_args=-Wl,-rpath,$PREFIX/lib"
    quiet ninja -C "$build" install
    [ -f "$PREFIX/lib/libcomposefs.a" ] || die "the build installed no lib/libcomposefs.a"
    echo "$ver" >"$PREFIX/.version"
    rm -rf "$build"
}

libcomposefs() {
    fetch_source
    echo "$DEPS/src/composefs" >"$DEPS/composefs-src-path.tmp"
    mv "$DEPS/composefs-src-path.tmp" "$DEPS/composefs-src-path"
    if [ -n "${COMPOSEFS_PREFIX:-}" ]; then
        [ -f "$COMPOSEFS_PREFIX/include/libcomposefs/lcfs-writer.h" ] \
            || die "COMPOSEFS_PREFIX=$COMPOSEFS_PREFIX has no include/libcomposefs/lcfs-writer.h"
    fi
    # Without a usable system library (or without the oracle tools), build
    # Debian's source; the extension links the system library when there is one.
    if [ "${CFSPY_FORCE_BUILD:-0}" = 1 ] \
        || ! PKG_CONFIG_PATH="" pkg-config --atleast-version="$MIN_VERSION" composefs 2>/dev/null \
        || ! command -v mkcomposefs >/dev/null || ! command -v composefs-info >/dev/null; then
        build_library
    fi
}

# ---------------------------------------------------------------------------
# 3. virtualenv and the package
# ---------------------------------------------------------------------------
build_env() {
    # What build_ffi.py sees; mirrors its own lookup so the stamp is honest.
    if [ -z "${COMPOSEFS_PREFIX:-}" ] && [ "${CFSPY_FORCE_BUILD:-0}" = 1 ]; then
        export COMPOSEFS_PREFIX="$PREFIX"
    fi
}

inputs_hash() {
    {
        cat "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT"/csrc/* 2>/dev/null
        echo "prefix=${COMPOSEFS_PREFIX:-} pcp=${PKG_CONFIG_PATH:-}"
        PKG_CONFIG_PATH="${PKG_CONFIG_PATH:-}" pkg-config --modversion composefs 2>/dev/null || true
        cat "$PREFIX/.version" 2>/dev/null || true
        python3 -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}

venv() {
    local stamp="$VENV/.cfspy-stamp" want
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating .venv"
        rm -rf "$VENV"
        quiet python3 -m venv "$VENV"
        quiet "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    want=$(inputs_hash)
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
        && "$VENV/bin/python" -c "import composefs_py._lcfs" 2>/dev/null; then
        return 0
    fi
    say "installing composefs-py into .venv (pip install -e .[test])"
    rm -f "$stamp"
    (cd "$ROOT" && quiet "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]")
    "$VENV/bin/python" -c "import composefs_py._lcfs" >>"$LOG" 2>&1 \
        || die "the extension composefs_py._lcfs does not import after install"
    echo "$want" >"$stamp"
}

main() {
    : >>"$LOG"
    local t0=$SECONDS
    system_packages
    libcomposefs
    build_env
    venv
    if [ $((SECONDS - t0)) -gt 2 ]; then
        say "done in $((SECONDS - t0)) s"
    fi
}

main "$@"
