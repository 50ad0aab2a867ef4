#!/bin/bash -eu
# Build composefs-py's fuzzers for ClusterFuzzLite or OSS-Fuzz (Python project
# layout: https://google.github.io/oss-fuzz/getting-started/new-project-guide/python-lang/).
#
# Inputs (the Dockerfile provides them): $SRC/composefs-py, this repository;
# $SRC/composefs, Debian's composefs source package, extracted.  The builder
# sets $CC, $CFLAGS (sanitizer flags and -fsanitize=fuzzer-no-link),
# $SANITIZER, $WORK and $OUT.  `make fuzz-check` (fuzz/oss-fuzz-check.sh) runs
# this very script locally with stand-ins for them and for pip3 and
# compile_python_fuzzer.
#
# Output in $OUT, per packaged target T of fuzz/targets.py: fuzz_T (the
# wrapper compile_python_fuzzer makes around the PyInstaller package of
# fuzz/fuzz_T.py), fuzz_T_seed_corpus.zip (fuzz/corpus/T), fuzz_T.dict
# (fuzz/dicts/T.dict, when there is one) and fuzz_T.options (max_len).

REPO=$SRC/composefs-py
LCFS_SRC=$SRC/composefs
PREFIX=$WORK/libcomposefs
# Not packaged: an execution of the cost target measures three `python -I`
# children started from a checkout (fuzz/cost), which a one-file PyInstaller
# package cannot start; run it with `python -m fuzz run --target cost`.  The
# differential targets need their peers beside the fuzzer: podman's Go code
# (fuzz/peers/build-serve.sh, from Debian's Go source packages) and
# mkcomposefs; run them with `python -m fuzz run --target toc_diff`.
NOT_PACKAGED=" cost toc_diff dumpfile_diff "

# 1. libcomposefs, instrumented like the extension: a shared library whose
#    sanitizer runtime is the one the fuzzer wrapper preloads.
lcfs_cflags=$CFLAGS
if [ "${SANITIZER:-}" = undefined ]; then
    # libcomposefs's known left shift into the sign bit of an int
    # (fuzz/findings/ubsan-shift-xattr-bloom-filter.md) would stop every
    # campaign that writes an xattr name with a byte >= 0x80.
    lcfs_cflags="$lcfs_cflags -fno-sanitize=shift-base"
fi
# The tools (mkcomposefs, composefs-info) are linked with the sanitizer
# runtime: only the -fsanitize= flags of $CFLAGS that are not libFuzzer's.
lcfs_ldflags=$(printf '%s\n' $lcfs_cflags | grep -e '^-fsanitize=' | grep -v fuzzer | tr '\n' ' ')
rm -rf "$WORK/libcomposefs-build" "$PREFIX"
CFLAGS="$lcfs_cflags" LDFLAGS="$lcfs_ldflags" meson setup "$WORK/libcomposefs-build" "$LCFS_SRC" \
    --prefix="$PREFIX" --libdir=lib --buildtype=plain -Dfuse=disabled -Dman=disabled \
    -Db_lundef=false "-Dc_link_args=-Wl,-rpath,$PREFIX/lib"
ninja -C "$WORK/libcomposefs-build" install

# 2. composefs_py, its CFFI extension compiled with $CC $CFLAGS against it.
COMPOSEFS_PREFIX=$PREFIX pip3 install "$REPO"

# 3. One fuzzer per target, with its seed corpus, dictionary and options.
# PyInstaller must find the fuzz package (targets, harness), which lives at
# the top of the checkout, but not the checkout's composefs_py, which has no
# compiled extension and would shadow the installed one: for a script inside
# a package it searches the package's parent folder first, and a
# `python -m PyInstaller` the current folder too.  So the scripts are
# packaged from a copy of fuzz/ in a folder of its own, from $WORK.
rm -rf "$WORK/fuzz-path"
mkdir -p "$WORK/fuzz-path"
cp -r "$REPO/fuzz" "$WORK/fuzz-path/"
for fuzzer in "$WORK/fuzz-path/fuzz"/fuzz_*.py; do
    name=$(basename -s .py "$fuzzer")
    target=${name#fuzz_}
    case $NOT_PACKAGED in *" $target "*) continue ;; esac
    # _cffi_backend: composefs_py._lcfs imports it from C, where PyInstaller
    # does not look.
    (cd "$WORK" && compile_python_fuzzer "$fuzzer" --paths "$WORK/fuzz-path" \
        --hidden-import _cffi_backend)
    rm -f "$OUT/${name}_seed_corpus.zip"
    zip -q -j "$OUT/${name}_seed_corpus.zip" "$REPO/fuzz/corpus/$target"/*
    if [ -f "$REPO/fuzz/dicts/$target.dict" ]; then
        cp -L "$REPO/fuzz/dicts/$target.dict" "$OUT/$name.dict"
    fi
    max_len=$(PYTHONPATH=$REPO python3 -c 'import sys; from fuzz.__main__ import MAX_LEN; print(MAX_LEN[sys.argv[1]])' "$target")
    printf '[libfuzzer]\nmax_len = %s\n' "$max_len" >"$OUT/$name.options"
done
