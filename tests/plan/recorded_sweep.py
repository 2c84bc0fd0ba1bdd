#!/usr/bin/python3
"""The planner against a recorded sweep: re-predicts every point of RESULTS/scaling.jsonl with the
cluster calibrated in that run (RESULTS/this-machine.json) and fails unless the error is at most
15% on average and 30% at any point (the goal on this machine). Guards the model against a change
that would break what it was checked on.
  recorded_sweep.py WEFT_PLAN RESULTS"""
import json
import os
import subprocess
import sys

weft_plan, results = sys.argv[1], sys.argv[2]
cluster = os.path.join(results, "this-machine.json")
errors = []
for line in open(os.path.join(results, "scaling.jsonl")):
    p = json.loads(line)
    m = p["model"]
    cmd = [weft_plan, "--cluster", cluster, "--preset", "gpt2", "--layers", str(m["layers"]),
           "--hidden", str(m["hidden"]), "--heads", str(m["heads"]), "--seq-len", str(m["seq_len"]),
           "--vocab", "256", "--global-batch", str(p["global_batch"]), "--gpus", str(p["ranks"]),
           "--dtype", "f32", "--tp", str(p["tp"]), "--pp", str(p["pp"]), "--micro-batch",
           str(p["micro_batch"]), "--virtual-stages", str(p["virtual_stages"]), "--recompute",
           p["recompute"], "--json"]
    cmd += ["--sequence-parallel"] if p["sequence_parallel"] else []
    cmd += ["--tp-comm-overlap"] if p["tp_comm_overlap"] else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    predicted = json.loads(out.strip().splitlines()[-1])["step_time_s"]
    errors.append(predicted / p["step_time_s"] - 1)
    print(f"{p['name']:45s} measured {p['step_time_s'] * 1e3:7.1f} ms  predicted "
          f"{predicted * 1e3:7.1f} ms  {errors[-1] * 100:+6.1f}%")
mean = sum(abs(e) for e in errors) / len(errors)
worst = max(abs(e) for e in errors)
print(f"{len(errors)} points: mean absolute error {mean * 100:.1f}%, largest {worst * 100:.1f}%")
sys.exit(0 if errors and mean <= 0.15 and worst <= 0.30 else 1)
