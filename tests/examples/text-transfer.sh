#!/bin/sh
# text-transfer: a missing corpus is refused with a clear message and a non-zero status;
# the --quick run on the machine's apt index completes and prints a result line with an
# accuracy in [0, 1] for each method at K = 16, the pretraining line, the contrastive phase
# and the table; --pretrained loads what --save wrote. At --quick scale (60 pretraining
# steps) which method wins is noise, so nothing here compares them: the full run's table
# (examples/text-transfer.md) does.
# Usage: text-transfer.sh PROGRAM
set -u
prog=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Bad input: a corpus file that does not exist.
"$prog" --corpus "$work/no-such-corpus.txt" >"$work/bad.out" 2>"$work/bad.err"
rc=$?
[ "$rc" -ne 0 ] || { echo "FAIL: a missing corpus exited 0"; exit 1; }
grep -q "cannot open the corpus '$work/no-such-corpus.txt'" "$work/bad.err" ||
    { cat "$work/bad.err"; echo "FAIL: no clear message for a missing corpus"; exit 1; }
# An empty corpus: no package records.
: >"$work/empty.txt"
"$prog" --corpus "$work/empty.txt" >/dev/null 2>"$work/empty.err" &&
    { echo "FAIL: an empty corpus exited 0"; exit 1; }
grep -q "no package records" "$work/empty.err" ||
    { cat "$work/empty.err"; echo "FAIL: no clear message for an empty corpus"; exit 1; }
echo "ok: bad corpora refused"

command -v apt-cache >/dev/null 2>&1 || { echo "SKIP: no apt-cache (not Debian)"; exit 77; }
(cd "$work" && "$prog" --quick --threads 1 --save "$work/mlm.tlm") >"$work/out" 2>"$work/err"
rc=$?
cat "$work/out"
[ "$rc" -eq 0 ] || { cat "$work/err"; echo "FAIL: --quick exited $rc"; exit 1; }
grep -q '^result protocol=text-pretrain steps=[0-9]* masked_accuracy=[01]\.[0-9]* ' "$work/out" ||
    { echo "FAIL: no pretraining result line"; exit 1; }
grep -q '^contrastive phase in ' "$work/out" || { echo "FAIL: no contrastive phase"; exit 1; }
for method in scratch frozen-mlm frozen full lora; do
    n=$(grep -c "^result protocol=text k=16 method=$method accuracy=[01]\.[0-9][0-9][0-9][0-9]\$" "$work/out")
    [ "$n" -eq 1 ] || { echo "FAIL: $n result lines for k=16 method=$method"; exit 1; }
    acc=$(sed -n "s/^result protocol=text k=16 method=$method accuracy=//p" "$work/out")
    awk -v a="$acc" 'BEGIN { exit !(a >= 0 && a <= 1) }' ||
        { echo "FAIL: accuracy $acc of $method outside [0, 1]"; exit 1; }
done
grep -Eq '^ +K +scratch +frozen-mlm +frozen +full +lora$' "$work/out" ||
    { echo "FAIL: no table header"; exit 1; }
grep -Eq '^ +16( +[01]\.[0-9]{4}){5}$' "$work/out" || { echo "FAIL: no table row for K = 16"; exit 1; }
grep -q '^done in ' "$work/out" || { echo "FAIL: the run did not finish"; exit 1; }
echo "ok: text-transfer --quick"

# --pretrained: the saved masked-token model comes back (the same held-out masked-token
# accuracy, no pretraining steps); a file that does not exist is refused.
pre=$(sed -n 's/^result protocol=text-pretrain steps=[0-9]* masked_accuracy=\([0-9.]*\) .*/\1/p' "$work/out")
(cd "$work" && "$prog" --quick --threads 1 --pretrained "$work/mlm.tlm" --k 1 \
    --contrastive-steps 0) >"$work/out2" 2>"$work/err2" ||
    { cat "$work/err2"; echo "FAIL: --pretrained run failed"; exit 1; }
grep -q "^loaded the pretrained model $work/mlm.tlm" "$work/out2" ||
    { echo "FAIL: --pretrained did not load"; exit 1; }
grep -q "^result protocol=text-pretrain steps=[0-9]* masked_accuracy=$pre " "$work/out2" ||
    { grep text-pretrain "$work/out2"; echo "FAIL: the loaded model's masked accuracy is not $pre"; exit 1; }
"$prog" --quick --pretrained "$work/no-such.tlm" >/dev/null 2>"$work/err3" &&
    { echo "FAIL: a missing pretrained model exited 0"; exit 1; }
grep -q "no-such.tlm" "$work/err3" || { cat "$work/err3"; echo "FAIL: no clear message"; exit 1; }
echo "ok: --pretrained"
