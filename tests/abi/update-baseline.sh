#!/bin/sh
# Intentionally extend the ABI baseline (tests/abi/libtlearn.abi) from a build directory.
#
# When: after adding public functions (in a new version node of lib/tlearn.map, declared
# in include/tlearn/tlearn.h with @since). Never to paper over a failing abi test that
# reports Changed or Removed functions: within an API major that is a compatibility break;
# either revert it, or add a new function (_v2/_ex) instead (doc/abi.md).
#
# The check before writing refuses to record an incompatible library; the new baseline is
# then written from the library's DWARF, restricted to types of the public headers.
# Usage: tests/abi/update-baseline.sh [BUILD_DIR]   (default: build); then commit the file.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=${1:-build}
lib=$build/lib/libtlearn.so.1
[ -e "$lib" ] || { echo "no $lib: build first (ninja -C $build)"; exit 1; }
baseline=$here/libtlearn.abi
if [ -f "$baseline" ] && [ "${FORCE:-0}" != 1 ]; then
    sh "$here/check-abi.sh" "$baseline" "$lib" "$src/include/tlearn" >/dev/null || {
        echo "refusing: $lib is incompatible with the baseline (run tests/abi/check-abi.sh"
        echo "to see why). A new API major replaces the baseline: FORCE=1 $0 $build"
        exit 1; }
fi
abidw --headers-dir "$src/include/tlearn" --drop-private-types --no-corpus-path \
      --short-locs --type-id-style hash --out-file "$baseline.tmp" "$lib"
mv "$baseline.tmp" "$baseline"
echo "wrote $baseline ($(grep -c '<elf-symbol ' "$baseline") exported symbols); commit it"
