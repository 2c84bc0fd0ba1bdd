#!/usr/bin/env bash
# gpt_train --backend cuda --tp 2 on 2 ranks: on a one-GPU machine both ranks share the GPU and
# make_runtime picks the staged communicator. Without a GPU the run must stop at the engine choice
# with a clear message; that is reported as skipped (exit 77), or as a failure under
# WEFT_REQUIRE_GPU=1.
# usage: cli_cuda_train.sh MPIEXEC GPT_TRAIN DATA_FILE
set -u
mpiexec=$1 train=$2 data=$3
out=$("$mpiexec" -np 2 --oversubscribe "$train" --backend cuda --tp 2 --preset llama --steps 4 \
  --layers 1 --hidden 32 --heads 4 --seq-len 16 --micro-batch 2 --data "$data" 2>&1)
rc=$?
printf '%s\n' "$out"
if [ "$rc" -ne 0 ] && grep -q "needs a GPU on every rank" <<<"$out"; then
  if [ "${WEFT_REQUIRE_GPU:-0}" = 1 ]; then
    echo "FAIL: WEFT_REQUIRE_GPU=1 but no GPU is visible"
    exit 1
  fi
  echo "no GPU visible: skipped"
  exit 77
fi
[ "$rc" -eq 0 ] || { echo "FAIL: gpt_train exited with $rc"; exit 1; }
grep -q "backend cuda:[0-9]* + \(mpi-staged\|nccl\)" <<<"$out" ||
  { echo "FAIL: the run did not report its engine"; exit 1; }
grep -q "^step *4 | loss" <<<"$out" || { echo "FAIL: no loss at step 4"; exit 1; }
echo "PASS"
