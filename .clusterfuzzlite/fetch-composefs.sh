#!/usr/bin/env bash
# Fetch Debian's composefs source package (the libcomposefs that
# scripts/bootstrap.sh builds) and extract it into DEST: the .dsc, the
# upstream tarball and the Debian patches, each checked against the SHA-256
# pinned here, from deb.debian.org's pool or, once Debian has moved on, from
# snapshot.debian.org by SHA-1.  Used by the ClusterFuzzLite/OSS-Fuzz
# Dockerfile; `make fuzz-check` uses the source scripts/bootstrap.sh fetched.
set -euo pipefail
DEST=${1:?usage: fetch-composefs.sh DEST}
# COMPOSEFS_POOL: another mirror of the pool folder (file:// works too).
POOL=${COMPOSEFS_POOL:-https://deb.debian.org/debian/pool/main/c/composefs}
# file sha256 sha1
FILES="
composefs_1.0.8-3.dsc 661933d95788f8d23772c1006a0904a1c6c430540ce3ddd6a5d5ae52382cef9f 06e6f14f22c1b6f4cb6aa0557ac0a6cae626f4ee
composefs_1.0.8.orig.tar.gz 2b2b11f9a25744c82e9e12b098eefd0ab42d56ae6322634c15f966b3a64926ef cc71903dec05c82f8b5a24feda69677865b1af57
composefs_1.0.8-3.debian.tar.xz 01af30b60aa947d673d7ea6eeb3fc679be3737de093a43cb4564933a7e0537f7 a236d4c828fbf99067f226711cf49f6ebee80732
"
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
while read -r name sha256 sha1; do
    [ -n "$name" ] || continue
    curl -fsSL -o "$dl/$name" "$POOL/$name" \
        || curl -fsSL -o "$dl/$name" "https://snapshot.debian.org/file/$sha1"
    echo "$sha256  $dl/$name" | sha256sum -c --quiet -
done <<<"$FILES"
rm -rf "$DEST"
dpkg-source --no-check -x "$dl/composefs_1.0.8-3.dsc" "$DEST"
