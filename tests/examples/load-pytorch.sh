#!/bin/sh
# examples/load-pytorch.c end to end: PyTorch trains a CNN and writes its state_dict as
# safetensors (examples/python/torch_to_safetensors.py, Debian's torch); the C program
# imports it by name mapping and must reach PyTorch's test accuracy on the same 2,000 test
# images (within 2 images: float rounding may flip a near-tie).
# Usage: load-pytorch.sh PYTHON SCRIPT PROGRAM
set -eu
python=$1 script=$2 prog=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
torch_out=$(cd "$(dirname "$script")" && "$python" "$script" "$work/net.safetensors" --steps 200)
echo "$torch_out"
c_out=$("$prog" "$work/net.safetensors")
echo "$c_out"
t=$(echo "$torch_out" | sed -n 's/^torch accuracy=\([0-9.]*\).*/\1/p')
c=$(echo "$c_out" | sed -n 's/^tlearn accuracy=\([0-9.]*\).*/\1/p')
echo "$c_out" | grep -q '^imported 8 tensors' || { echo "FAIL: expected 8 tensors"; exit 1; }
[ -n "$t" ] && [ -n "$c" ] || { echo "FAIL: missing accuracy lines"; exit 1; }
awk -v t="$t" -v c="$c" 'BEGIN { d = t - c; if (d < 0) d = -d; exit !(d <= 0.001 && t > 0.5) }' ||
    { echo "FAIL: tlearn accuracy $c vs torch $t"; exit 1; }
echo "ok: tlearn $c, torch $t"
