#!/bin/sh
# The installed static archive: every object of libtlearn linked into one relocatable
# object (ld -r), whose defined globals other than the exported tlearn_* names of
# tlearn.map are made local (objcopy), so that nothing internal (tl_*, ox_*, protobuf-c
# descriptors) can clash with a host's symbols. Calls between the library's own objects
# are resolved by the partial link, before the names become local. -d gives common symbols
# (clang's OpenMP reduction lock) their storage, so that they can be made local too.
# Usage: localize.sh OUT.a IN.a tlearn.map LD OBJCOPY AR
set -eu
out=$1 in=$2 map=$3 ld=$4 objcopy=$5 ar=$6
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tlearn-static.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$ld" -r -d --whole-archive "$in" -o "$tmp/tlearn.o"
sed -n 's/^[[:space:]]*\(tlearn_[A-Za-z0-9_]*\);.*/\1/p' "$map" | sort -u > "$tmp/keep"
[ -s "$tmp/keep" ] || { echo "localize.sh: no tlearn_ names in $map" >&2; exit 1; }
"$objcopy" --localize-hidden --keep-global-symbols="$tmp/keep" "$tmp/tlearn.o"
rm -f "$out"
"$ar" rcs "$out" "$tmp/tlearn.o"
