#!/usr/bin/env bash
# Kills one rank of a 2-rank gpt_train (SIGKILL) at random moments while it saves a checkpoint
# every step, TRIES times. After every kill the checkpoint root must still load and train on; at
# the end a clean run leaves no partial save or temporary file behind.
#   kill_during_save.sh MPIEXEC GPT_TRAIN DATA WORKDIR [TRIES]
set -euo pipefail
mpiexec=$1 train=$2 data=$3 work=$4 tries=${5:-8}
rm -rf "$work" && mkdir -p "$work"
root=$work/checkpoints
model=(--layers 1 --hidden 32 --heads 4 --seq-len 16 --micro-batch 2 --data "$data")
run() { "$mpiexec" -np 2 --oversubscribe "$train" "${model[@]}" "$@"; }
latest_step() { sed -E 's/^step-0*([0-9]+).*/\1/' "$root/latest"; }

run --steps 1 --save "$root" >"$work/first.log" 2>&1
RANDOM=7
interrupted=0
for ((i = 1; i <= tries; i++)); do
  run --steps 1000000 --load "$root" --save "$root" --save-interval 1 >"$work/run$i.log" 2>&1 &
  launcher=$!
  sleep "$((RANDOM % 3 + 1)).$((RANDOM % 10))"  # 1.0 to 3.9 s: start-up, training or a save
  ranks=($(pgrep -P "$launcher" -f gpt_train || true))
  if ((${#ranks[@]} > 0)); then
    victim=${ranks[$((RANDOM % ${#ranks[@]}))]}
    kill -9 "$victim" 2>/dev/null || true
  fi
  # The surviving ranks may still rename a .partial directory while find reads the root.
  partial=$( (find "$root" -maxdepth 1 -name '*.partial' 2>/dev/null || true) | wc -l)
  wait "$launcher" && { echo "try $i: the job survived the kill of rank pid ${victim:-none}"; exit 1; }
  ((partial > 0)) && interrupted=$((interrupted + 1))
  step=$(latest_step)
  if ! run --steps "$((step + 1))" --load "$root" >"$work/check$i.log" 2>&1; then
    echo "try $i: the checkpoint root no longer loads after a kill (latest step $step):"
    cat "$work/check$i.log"
    exit 1
  fi
  echo "try $i: killed pid ${victim:-none} ($partial save(s) in progress); the latest complete" \
    "save is step $step and it resumes"
done

step=$(latest_step)
run --steps "$((step + 1))" --load "$root" --save "$root" >"$work/last.log" 2>&1
debris=$(find "$root" -name '*.partial' -o -name '*.tmp.*')
if [[ -n "$debris" ]]; then
  echo "a clean run left crash debris behind: $debris"
  exit 1
fi
echo "kill_during_save: $tries kills ($interrupted during a save), every one left a loadable" \
  "checkpoint"
