#!/bin/sh
# Run an example program and check an accuracy it prints.
# Usage: run-example.sh KEY MIN PROGRAM [ARGS...]
#   KEY  the text before "accuracy=" on the line to check ("nearest-centroid")
#   MIN  the smallest acceptable accuracy (chance on Fashion-MNIST is 0.1)
set -eu
key=$1 min=$2
shift 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prog=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
shift
out=$(cd "$work" && "$prog" "$@") || { echo "$out"; echo "FAIL: $prog exited $?"; exit 1; }
echo "$out"
acc=$(echo "$out" | sed -n "s/^$key[^=]*accuracy=\([0-9.]*\).*/\1/p" | tail -n 1)
[ -n "$acc" ] || { echo "FAIL: no '$key ... accuracy=' line"; exit 1; }
awk -v a="$acc" -v m="$min" 'BEGIN { exit !(a >= m) }' ||
    { echo "FAIL: accuracy $acc < $min"; exit 1; }
echo "ok: $key accuracy $acc >= $min"
