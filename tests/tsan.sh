#!/bin/sh
# The host-thread tests again under ThreadSanitizer (suite 'threads': tests/unit/test_threads.c,
# tests/adapters/test_shared.c: handles sharing one base used from several threads).
#
# Configures a separate build BUILD_DIR (default build-tsan) with clang and
# -Db_sanitize=thread. clang's -fopenmp links LLVM's OpenMP runtime (libomp, package
# libomp-14-dev), whose OMPT tool libarcher tells TSan about OpenMP's barriers, locks and
# tasks: without it every parallel region would be reported as a race. BLIS (Debian's
# openmp flavour, linked to libgomp) is not instrumented either way; its parallel regions
# resolve to libomp's GOMP_* entry points in this process, which archer sees.
# Whatever is still reported in code that is not ours is listed, with the reason, in
# tests/tsan.supp. Any other report fails the test (halt_on_error). Extra arguments go to
# `meson test`.
#
# Usage: tests/tsan.sh [BUILD_DIR] [meson test args...]      (from the source root)
set -eu
cd "$(dirname "$0")/.."
dir=${1:-build-tsan}
[ $# -gt 0 ] && shift
if [ ! -f "$dir/build.ninja" ]; then
    log=$(mktemp)
    CC=clang meson setup "$dir" -Db_sanitize=thread -Db_lundef=false \
        -Dbuildtype=debugoptimized -Dtests=true -Dexamples=false -Ddocs=disabled \
        -Dbench=false >"$log" 2>&1 || { cat "$log"; rm -f "$log"; exit 1; }
    rm -f "$log"
fi
targets="tests/unit/unit-threads tests/adapters/adapters-shared"
ninja -C "$dir" $targets >/dev/null || { ninja -C "$dir" $targets; exit 1; }

archer=
for f in /usr/lib/llvm-14/lib/libarcher.so /usr/lib/llvm-*/lib/libarcher.so; do
    [ -f "$f" ] && { archer=$f; break; }
done
[ -n "$archer" ] || { echo "tsan.sh: libarcher.so not found (package libomp-14-dev)"; exit 1; }
export OMP_TOOL_LIBRARIES="$archer"
export TSAN_OPTIONS="halt_on_error=1:ignore_noninstrumented_modules=1:second_deadlock_stack=1:suppressions=$(pwd)/tests/tsan.supp"
echo "tsan.sh: running suite 'threads' under ThreadSanitizer (OpenMP tool $archer)"
meson test -C "$dir" --no-rebuild --print-errorlogs --suite threads \
    --timeout-multiplier 3 "$@"
