#!/bin/sh
# domain-adapt: missing photographs are refused with a clear message; the PNG reader
# decodes the four photographs as PIL does (pixel sums); the target set is reproducible
# (two exports with one seed are identical, another seed differs); the --quick run prints
# a result line with accuracies in [0, 1] for every method, the source-only model has
# learnt the source task (>= 0.6 on the source test images after 300 steps; chance 0.1),
# CORAL, MMD and DANN beat source-only on the target test images by 0.10, and the table.
# Usage: domain-adapt.sh PYTHON PROGRAM
set -u
py=$1
prog=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$prog" --photos "$work/none" --export "$work" >"$work/bad.out" 2>"$work/bad.err" &&
    { echo "FAIL: missing photographs exited 0"; exit 1; }
grep -q "cannot read $work/none/astronaut.png (install python3-skimage)" "$work/bad.err" ||
    { cat "$work/bad.err"; echo "FAIL: no clear message for missing photographs"; exit 1; }
echo "ok: missing photographs refused"

mkdir "$work/a" "$work/b" "$work/c"
"$prog" --export "$work/a" --test-limit 500 >"$work/a.out" 2>&1 || { cat "$work/a.out"; exit 1; }
"$prog" --export "$work/b" --test-limit 500 >/dev/null 2>&1 || exit 1
"$prog" --export "$work/c" --test-limit 500 --seed 2 >/dev/null 2>&1 || exit 1
for f in target-train.u8 target-test.u8 target-test-labels.i32; do
    cmp -s "$work/a/$f" "$work/b/$f" || { echo "FAIL: $f differs between two runs"; exit 1; }
done
cmp -s "$work/a/target-train.u8" "$work/c/target-train.u8" &&
    { echo "FAIL: another seed gave the same target images"; exit 1; }
echo "ok: the target set is reproducible and follows the seed"

"$py" - "$work/a.out" <<'PY' || exit 1
import sys
try:
    import numpy as np
    from PIL import Image
except ImportError as e:
    sys.exit(f"FAIL: the PNG check needs python3-pil and python3-numpy: {e}")
d = "/usr/lib/python3/dist-packages/skimage/data/"
lines = [l.split() for l in open(sys.argv[1]) if l.startswith("photo ")]
assert len(lines) == 4, lines
for _, name, shape, total in lines:
    a = np.asarray(Image.open(d + name))
    h, w = a.shape[:2]
    want = f"{w}x{h}x{1 if a.ndim == 2 else a.shape[2]}"
    if shape != want or total != f"sum={int(a.astype(np.int64).sum())}":
        sys.exit(f"FAIL: {name}: the demo read {shape} {total}, PIL {want} "
                 f"sum={int(a.astype(np.int64).sum())}")
print("ok: the PNG reader agrees with PIL on", ", ".join(l[1] for l in lines))
PY

(cd "$work" && "$prog" --quick --threads 1) >"$work/out" 2>"$work/err"
rc=$?
cat "$work/out"
[ "$rc" -eq 0 ] || { cat "$work/err"; echo "FAIL: --quick exited $rc"; exit 1; }
for method in source-only adabn tent coral mmd dann; do
    line=$(grep "^result protocol=domain method=$method source_acc=[01]\.[0-9]\{4\} target_acc=[01]\.[0-9]\{4\} seconds=" "$work/out")
    [ "$(printf '%s\n' "$line" | grep -c .)" -eq 1 ] || { echo "FAIL: no single result line for $method"; exit 1; }
    for key in source_acc target_acc; do
        v=$(printf '%s\n' "$line" | sed "s/.* $key=\([0-9.]*\).*/\1/")
        awk -v a="$v" 'BEGIN { exit !(a >= 0 && a <= 1) }' ||
            { echo "FAIL: $method $key $v outside [0, 1]"; exit 1; }
    done
done
src=$(sed -n 's/^result protocol=domain method=source-only source_acc=\([0-9.]*\) .*/\1/p' "$work/out")
awk -v a="$src" 'BEGIN { exit !(a >= 0.6) }' ||
    { echo "FAIL: source-only reached $src on the source test images (< 0.6)"; exit 1; }
# The shift is large (source-only 0.2975 on the target at this scale). In --quick runs
# CORAL, MMD and DANN reached +0.16, +0.28 and +0.13 over it; with CORAL's term removed or
# DANN's lambda held at 0 (mixed batches alone, which already move BatchNorm's statistics)
# +0.08 and +0.06. A margin of 0.10 tells the two apart. AdaBN and TENT gained about 0.02:
# too little to assert at this scale.
tgt() { sed -n "s/^result protocol=domain method=$1 .* target_acc=\([0-9.]*\) .*/\1/p" "$work/out"; }
base=$(tgt source-only)
for method in coral mmd dann; do
    v=$(tgt $method)
    awk -v a="$v" -v b="$base" 'BEGIN { exit !(a >= b + 0.10) }' ||
        { echo "FAIL: $method reached $v on the target, source-only $base (+0.10 expected)"; exit 1; }
done
grep -Eq '^method +source +target +seconds$' "$work/out" || { echo "FAIL: no table header"; exit 1; }
[ "$(grep -Ec '^(source-only|adabn|tent|coral|mmd|dann) +[01]\.[0-9]{4} +[01]\.[0-9]{4} +[0-9.]+$' "$work/out")" -eq 6 ] ||
    { echo "FAIL: the table does not have six rows"; exit 1; }
grep -q '^done in ' "$work/out" || { echo "FAIL: the run did not finish"; exit 1; }
echo "ok: domain-adapt --quick"
