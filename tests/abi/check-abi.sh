#!/bin/sh
# Compare the freshly built libtlearn.so.1 with the committed ABI baseline (abidw XML).
# Only the public API counts: types not defined in include/tlearn are dropped, so the
# layout of opaque handles and of every internal struct may change freely.
#
# Policy (doc/abi.md), from abidiff's exit status bits and its change summary:
#   bit 1/2 (abidiff error, usage error)                      -> FAIL
#   bit 8   (incompatible: a function or variable removed)    -> FAIL
#   bit 4   (ABI change) with any function/variable Changed
#           or Removed (a parameter, return or public type
#           changed, a symbol's version node changed)         -> FAIL
#   bit 4   with additions only (new functions)               -> pass; the report says to
#           record them with tests/abi/update-baseline.sh
#   0                                                         -> pass
# Usage: check-abi.sh BASELINE.abi LIBRARY HEADERS_DIR
set -u
base=$1 lib=$2 headers=$3
for tool in abidiff; do
    command -v $tool >/dev/null || { echo "FAIL: $tool not found (apt-get install abigail-tools)"; exit 1; }
done
[ -f "$base" ] || { echo "FAIL: no baseline $base (tests/abi/update-baseline.sh makes one)"; exit 1; }

report=$(abidiff --headers-dir2 "$headers" --drop-private-types "$base" "$lib" 2>&1)
rc=$?
echo "abidiff exit status $rc"
echo "$report"
if [ $((rc & 3)) -ne 0 ]; then
    echo "FAIL: abidiff could not compare (status $rc)"
    exit 1
fi
if [ $((rc & 8)) -ne 0 ]; then
    echo "FAIL: incompatible ABI change (something was removed): see above"
    exit 1
fi
if [ $((rc & 4)) -ne 0 ]; then
    # "Functions changes summary: 0 Removed, 1 Changed (2 filtered out), 3 Added functions"
    bad=$(echo "$report" | grep -E '^(Functions|Variables) changes summary' |
          grep -vE 'summary: 0 Removed, 0 Changed')
    soname=$(echo "$report" | grep -i 'SONAME')
    if [ -n "$bad" ] || [ -n "$soname" ]; then
        echo "FAIL: the ABI of existing functions changed (within a major only additions are"
        echo "allowed; see doc/abi.md): $bad $soname"
        exit 1
    fi
    echo "ok: only additions. Record them in the baseline: tests/abi/update-baseline.sh BUILD_DIR"
    exit 0
fi
echo "ok: the ABI matches the baseline"
