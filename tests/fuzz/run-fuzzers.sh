#!/bin/sh
# Run every libFuzzer target of BUILD_DIR (executables named fuzz-* under BUILD_DIR/tests/,
# fuzz-make-seeds excepted; fuzz-checkpoint, fuzz-safetensors and fuzz-load_buffer must be
# there) for SECONDS
# (default 60) each. A target starts from tests/fuzz/corpus/<name>/ when that exists, copied
# so the committed corpus is not modified. Exits non-zero on any finding (crash, leak,
# sanitizer report, timeout, out-of-memory) or a missing target.
# usage: tests/fuzz/run-fuzzers.sh BUILD_DIR [SECONDS]
set -eu
build=${1:?usage: run-fuzzers.sh BUILD_DIR [SECONDS]}
seconds=${2:-60}
here=$(cd "$(dirname "$0")" && pwd)
for required in checkpoint safetensors load_buffer; do
    if [ ! -x "$build/tests/fuzz/fuzz-$required" ]; then
        echo "run-fuzzers: $build/tests/fuzz/fuzz-$required is missing" \
             "(configure with CC=clang -Dfuzz=true)" >&2
        exit 2
    fi
done
work=$(mktemp -d "${TMPDIR:-/tmp}/tlearn-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
status=0
for exe in "$build"/tests/*/fuzz-*; do
    [ -x "$exe" ] && [ -f "$exe" ] || continue
    name=$(basename "$exe")
    name=${name#fuzz-}
    [ "$name" != make-seeds ] || continue
    mkdir -p "$work/$name" "$work/artifacts-$name"
    seeds=0
    corpus="$here/corpus/$name"
    [ -d "$corpus" ] || corpus="$here/../$name/corpus" # e.g. tests/onnx/corpus
    if [ -d "$corpus" ]; then
        cp "$corpus/"* "$work/$name/"
        seeds=$(ls "$work/$name" | wc -l)
    fi
    echo "== fuzz-$name: ${seconds}s from $seeds seeds"
    if ! ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}" \
         UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}" \
         "$exe" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
                -print_final_stats=1 -artifact_prefix="$work/artifacts-$name/" \
                "$work/$name" > "$work/$name.log" 2>&1; then
        echo "run-fuzzers: fuzz-$name found a problem:" >&2
        tail -n 60 "$work/$name.log" >&2
        for a in "$work/artifacts-$name/"*; do
            [ -e "$a" ] || continue
            echo "reproducer ($(basename "$a")), base64:" >&2
            base64 "$a" | head -c 4000 >&2
            echo >&2
        done
        status=1
    else
        grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$work/$name.log" || true
    fi
done
exit $status
