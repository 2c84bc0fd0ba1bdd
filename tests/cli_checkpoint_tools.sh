#!/usr/bin/env bash
# weft_ckpt and gpt_eval end to end: a checkpoint trained at tp 2 is inspected, resharded to
# pp 2 and loaded there; gpt_eval gives one loss at tp 1, tp 2, pp 2 and from the resharded copy,
# equal to gpt_train's training loss on the same window; bad input fails naming the file and the
# value. Usage: cli_checkpoint_tools.sh MPIEXEC BIN_DIR TEXT WORK_DIR
set -euo pipefail
mpiexec=$1 bin=$2 text=$3 work=$4
rm -rf "$work" && mkdir -p "$work"
run() { "$mpiexec" -np "$1" --oversubscribe "${@:2}"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# The loss field of a JSON line.
json_loss() { sed -n 's/.*"loss":\([-0-9.e+]*\).*/\1/p' | head -n 1; }
# |a - b| <= 1e-5 |b|
close() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; m = b < 0 ? -b : b;
                                            exit !(d <= 1e-5 * m) }'; }
# Runs a command that must fail (status != 0) with output matching the pattern.
expect_failure() {
  local pattern=$1 out status=0
  shift
  out=$("$@" 2>&1) || status=$?
  [ "$status" -ne 0 ] || fail "expected a failure: $*"
  echo "$out" | grep -Eq -- "$pattern" || fail "'$pattern' not in the output of $*: $out"
  echo "ok (status $status): $pattern"
}

ckpt=$work/ckpt
run 2 "$bin/gpt_train" --preset llama --tp 2 --steps 3 --layers 2 --hidden 32 --heads 4 \
  --seq-len 48 --micro-batch 2 --data "$text" --save "$ckpt" > "$work/train.log"

"$bin/weft_ckpt" inspect "$ckpt" > "$work/inspect.log"
grep -q "layout: tp 2, pp 1, virtual stages 1" "$work/inspect.log" || fail "inspect: layout"
grep -Eq "^layers.1.attention.qkv.weight +f32 +\[64, 32\] +dim 0 +2 " "$work/inspect.log" ||
  fail "inspect: the global QKV tensor"
grep -Eq "^embedding.weight +f32 +\[256, 32\] " "$work/inspect.log" || fail "inspect: embedding"
echo "ok: inspect"

"$bin/weft_ckpt" reshard "$ckpt" --tp 1 --pp 2 --out "$work/pp2"
[ -f "$work/pp2/tp0_pp1.safetensors" ] && [ ! -e "$work/pp2/tp1_pp0.safetensors" ] ||
  fail "reshard: files"
"$bin/weft_ckpt" inspect "$work/pp2" > "$work/inspect_pp2.log"
grep -q "layout: tp 1, pp 2" "$work/inspect_pp2.log" || fail "reshard: manifest"

# gpt_eval at every layout, and on the resharded copy: one loss.
head -c 3000 "$text" > "$work/eval.txt"
eval_loss() { run "$@" --data "$work/eval.txt" --seq-len 40 --batch 3 --log-json | json_loss; }
ref=$(eval_loss 1 "$bin/gpt_eval" --load "$ckpt")
run 1 "$bin/gpt_eval" --load "$ckpt" --data "$work/eval.txt" --seq-len 40 --batch 3 \
  > "$work/eval.log"
grep -q "74 windows of 40 tokens (39 of 3000 tokens dropped)" "$work/eval.log" ||
  fail "gpt_eval: window count"
check_eval() {
  local loss
  loss=$(eval_loss 2 "$bin/gpt_eval" "$@")
  close "$loss" "$ref" || fail "gpt_eval $*: loss $loss, at tp 1 $ref"
  echo "ok: gpt_eval $*: $loss (tp 1: $ref)"
}
check_eval --load "$ckpt" --tp 2
check_eval --load "$ckpt" --pp 2
check_eval --load "$work/pp2" --tp 2

# The same window by the training path: a file whose training split (95%) is exactly one window
# of 41 tokens, so every sequence of gpt_train's batch is that window; with --lr 0 the logged
# loss of the resumed step is the checkpoint's loss there. Loaded from the pp 2 copy at tp 2.
head -c 43 "$text" > "$work/window.txt"
run 2 "$bin/gpt_train" --load "$work/pp2" --tp 2 --data "$work/window.txt" --seq-len 40 \
  --micro-batch 2 --steps 4 --lr 0 --log-json "$work/window.jsonl" > /dev/null
trained=$(json_loss < "$work/window.jsonl")
evaluated=$(run 1 "$bin/gpt_eval" --load "$ckpt" --data "$work/window.txt" --seq-len 40 \
  --log-json | json_loss)
close "$evaluated" "$trained" || fail "gpt_eval $evaluated, gpt_train's training loss $trained"
echo "ok: gpt_eval $evaluated equals gpt_train's loss $trained on the same window"

# Bad input.
printf 'ten bytes.' > "$work/short.txt"
expect_failure "short.txt' gives 10 tokens \(bytes\), fewer than one window of --seq-len \+ 1 = 41" \
  run 2 "$bin/gpt_eval" --load "$ckpt" --data "$work/short.txt" --seq-len 40
expect_failure "no_such_checkpoint does not exist" \
  run 2 "$bin/gpt_eval" --load "$work/no_such_checkpoint" --data "$work/eval.txt"
expect_failure "--seq-len \(64\) must be at most the model's maximum sequence length \(48" \
  run 2 "$bin/gpt_eval" --load "$ckpt" --data "$work/eval.txt" --seq-len 64
expect_failure "exists already" "$bin/weft_ckpt" reshard "$ckpt" --tp 1 --pp 1 --out "$work/pp2"
expect_failure "ckpt.*tp 3.*heads \(4\) must be divisible by the tensor-parallel size \(3\)" \
  "$bin/weft_ckpt" reshard "$ckpt" --tp 3 --pp 1 --out "$work/tp3"
[ ! -e "$work/tp3" ] || fail "a failed reshard left $work/tp3"
expect_failure "no_such_checkpoint does not exist" "$bin/weft_ckpt" inspect "$work/no_such_checkpoint"
expect_failure "usage: weft_ckpt" "$bin/weft_ckpt" reshard "$ckpt" --pp 1 --out "$work/x"
echo PASS
