#!/bin/sh
# The C tests again under AddressSanitizer + UndefinedBehaviorSanitizer (leaks included).
#
# Configures a separate build BUILD_DIR (default build-asan) with
# -Db_sanitize=address,undefined and runs every test whose program is a C executable built
# there, directly or through a shell wrapper: unit, headers, vision, transfer, io,
# onnx-import, the example programs... Tests that load libtlearn into another runtime
# (Python, cargo) or link it with a plain cc (out-of-tree) are left out: an ASan library
# cannot be loaded by an uninstrumented interpreter. Any sanitizer report fails
# the test (halt_on_error). Extra arguments go to `meson test`.
#
# Usage: tests/sanitize.sh [BUILD_DIR] [meson test args...]      (from the source root)
set -eu
cd "$(dirname "$0")/.."
dir=${1:-build-asan}
[ $# -gt 0 ] && shift
if [ ! -f "$dir/build.ninja" ]; then
    log=$(mktemp)
    meson setup "$dir" -Db_sanitize=address,undefined -Db_lundef=false \
        -Dbuildtype=debugoptimized -Dtests=true -Dexamples=true -Ddocs=disabled \
        >"$log" 2>&1 || { cat "$log"; rm -f "$log"; exit 1; }
    rm -f "$log"
fi
ninja -C "$dir" >/dev/null || { ninja -C "$dir"; exit 1; }

# Names of the tests whose command is an executable of this build (compiled C).
py=/usr/bin/python3
[ -x "$py" ] || py=python3
names=$(meson introspect "$dir" --tests | "$py" -c '
import json, os, sys
build = os.path.realpath(sys.argv[1])
def built_exe(path):  # meson runs tests in the build directory: relative paths are there
    p = os.path.realpath(os.path.join(build, path))
    return (p.startswith(build + os.sep) and os.path.isfile(p) and os.access(p, os.X_OK)
            and not p.endswith((".py", ".sh")) and ".so" not in os.path.basename(p))
for t in json.load(sys.stdin):
    cmd = t["cmd"]
    # mpirun starts uninstrumented Open MPI processes whose own allocations at exit read as
    # leaks: the mpi suite runs in the ordinary build only
    if any(s.endswith(":mpi") for s in t.get("suite", [])):
        continue
    # a C test program, or a shell wrapper that runs one (the examples suite)
    # a wrapper that also runs Python would load the instrumented library into it
    runs_python = any(a.endswith(".py") for a in cmd)
    if built_exe(cmd[0]) or (os.path.basename(cmd[0]) == "sh" and not runs_python
                             and any(map(built_exe, cmd[1:]))):
        print(t["name"])
' "$dir")
[ -n "$names" ] || { echo "sanitize.sh: no C tests found in $dir"; exit 1; }
echo "sanitize.sh: running under ASan+UBSan:" $names

export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# shellcheck disable=SC2086
meson test -C "$dir" --no-rebuild --print-errorlogs --num-processes 2 \
    --timeout-multiplier 3 "$@" $names
