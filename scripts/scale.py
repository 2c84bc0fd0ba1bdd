#!/usr/bin/python3
"""The measured scaling sweep behind scripts/scale (which installs matplotlib and builds first).

At each rank count it runs gpt_train for every (tp, pp, dp) with tp x pp x dp = ranks, with and
without sequence parallelism and TP comm overlap, 1F1B and interleaved where pp > 1, in strong
scaling (one model, one global batch) and weak scaling (hidden grows with tp, layers with pp, the
batch with dp). Before the sweep it calibrates the planner here (bench_gemm, bench_collectives ->
weft_plan --calibrate), and for every point it records the planner's prediction beside the
measurement. Writes OUT/scaling.jsonl, OUT/scaling.md and PNG plots.
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time


def sh(cmd, env=None, log=None, check=True):
    """Runs cmd (a list); returns its stdout. Appends the output to log when given."""
    start = time.time()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if log:
        with open(log, "a") as f:
            f.write("$ " + " ".join(cmd) + f"\n{proc.stdout}\n[{time.time() - start:.1f} s]\n")
    if check and proc.returncode != 0:
        sys.exit(f"scale: command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}")
    return proc.stdout


def rank_wrapper(args):
    """Runs one rank's command and writes its peak resident memory (bytes) to PREFIX.<rank>."""
    prefix, cmd = args[0], args[1:]
    rc = subprocess.call(cmd)
    rank = os.environ.get("OMPI_COMM_WORLD_RANK", "0")
    with open(f"{prefix}.{rank}", "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
    sys.exit(rc)


def model_for(mode, preset, tp, pp, dp, base):
    """The model and global batch of a point: fixed (strong) or grown with tp, pp, dp (weak)."""
    if mode == "strong":
        return dict(base), base["global_batch"]
    m = dict(base)
    # Parameters about proportional to tp: hidden x sqrt(tp), a multiple of 2 x heads.
    step = 2 * m["heads"]
    m["hidden"] = int(round(base["hidden"] * math.sqrt(tp) / step)) * step
    m["layers"] = base["layers"] * pp
    return m, base["global_batch"] * dp


def layouts(ranks):
    """Every (tp, pp, dp, schedule, v, sp, overlap) at this rank count."""
    out = []
    for tp in [t for t in (1, 2, 4, 8) if ranks % t == 0]:
        for pp in [p for p in (1, 2, 4, 8) if (ranks // tp) % p == 0]:
            dp = ranks // (tp * pp)
            tp_variants = [(False, False)] + ([(True, False), (True, True)] if tp > 1 else [])
            schedules = [("1f1b", 1)] + ([("interleaved", 2)] if pp > 1 else [])
            for sp, overlap in tp_variants:
                for schedule, v in schedules:
                    out.append(dict(tp=tp, pp=pp, dp=dp, schedule=schedule, v=v, sp=sp,
                                    overlap=overlap))
    return out


def family(p):
    parts = [n for n, k in (("tp", "tp"), ("pp", "pp"), ("dp", "dp")) if p[k] > 1]
    return "+".join(parts) if parts else "one rank"


def micro_batch_for(a, lay, global_batch):
    """--micro-batch, made smaller where needed for at least pp micro-batches per replica."""
    per_replica = global_batch // lay["dp"]
    return max(1, min(a.micro_batch, per_replica // lay["pp"]))


def run_point(a, mode, lay, base, build, out, peak_gflops, recompute):
    ranks = lay["tp"] * lay["pp"] * lay["dp"]
    m, global_batch = model_for(mode, a.preset, lay["tp"], lay["pp"], lay["dp"], base)
    mb = micro_batch_for(a, lay, global_batch)
    threads = max(1, a.cores // ranks)
    name = (f"{mode}-r{ranks}-tp{lay['tp']}pp{lay['pp']}dp{lay['dp']}-{lay['schedule']}"
            f"{'-sp' if lay['sp'] else ''}{'-overlap' if lay['overlap'] else ''}"
            f"{'' if recompute == 'none' else '-' + recompute}")
    log_json = os.path.join(out, "runs", name + ".jsonl")
    rss = os.path.join(out, "runs", name + ".rss")
    train = [os.path.join(build, "bin", "gpt_train"), "--preset", a.preset, "--tp", str(lay["tp"]),
             "--pp", str(lay["pp"]), "--schedule", lay["schedule"], "--virtual-stages",
             str(lay["v"]), "--layers", str(m["layers"]), "--hidden", str(m["hidden"]),
             "--heads", str(m["heads"]), "--seq-len", str(m["seq_len"]), "--micro-batch", str(mb),
             "--global-batch", str(global_batch), "--steps", str(a.steps), "--dtype", "f32",
             "--data", a.data, "--log-json", log_json, "--warmup", "1"]
    train += ["--recompute", recompute]
    if lay["sp"]:
        train.append("--sequence-parallel")
    if lay["overlap"]:
        train.append("--tp-comm-overlap")
    cmd = [a.mpirun, "-np", str(ranks), "--oversubscribe", "--bind-to", "none", sys.executable,
           os.path.abspath(__file__), "--rank-wrapper", rss] + train
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    stdout = sh(cmd, env=env, log=os.path.join(out, "scale.log"))
    steps = [json.loads(l) for l in open(log_json) if '"ms"' in l]
    ms = [s["ms"] for s in steps[1:]] or [s["ms"] for s in steps]  # the first step warms up
    step_s = min(ms) / 1e3  # the fastest: on a shared machine the slow steps are interrupted ones
    bubbles = [float(x) for x in re.findall(r"measured bubble ([0-9.]+)", stdout)]
    rss_bytes = [int(open(f"{rss}.{r}").read()) for r in range(ranks) if os.path.exists(f"{rss}.{r}")]

    plan = [os.path.join(build, "bin", "weft_plan"), "--cluster",
            os.path.join(out, "this-machine.json"), "--preset", a.preset, "--layers",
            str(m["layers"]), "--hidden", str(m["hidden"]), "--heads", str(m["heads"]),
            "--seq-len", str(m["seq_len"]), "--vocab", "256", "--global-batch", str(global_batch),
            "--gpus", str(ranks), "--dtype", "f32", "--tp", str(lay["tp"]), "--pp",
            str(lay["pp"]), "--micro-batch", str(mb), "--virtual-stages", str(lay["v"]),
            "--recompute", recompute, "--json"]
    if lay["sp"]:
        plan.append("--sequence-parallel")
    if lay["overlap"]:
        plan.append("--tp-comm-overlap")
    pred = json.loads(sh(plan).strip().splitlines()[-1])

    tokens = global_batch * m["seq_len"]
    # Narayanan et al. 2021 eq. 3 (counts 2 s^2 h attention per layer, no causal halving), with
    # vocab 256: 72 B s l h^2 (1 + s/6h + V/12lh); with full recomputation 96 (..V/16lh).
    B, s, l, h, V = global_batch, m["seq_len"], m["layers"], m["hidden"], 256
    f72 = 72 * B * s * l * h * h * (1 + s / (6 * h) + V / (12 * l * h))
    f96 = 96 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))
    comm = pred["time_s"]["tp_comm"] + pred["time_s"]["pp_comm"] + pred["time_s"]["dp_comm"]
    return {
        "mode": mode, "name": name, "family": family(lay), "ranks": ranks,
        "threads_per_rank": threads, "cores": a.cores,
        "oversubscribed": ranks * threads > a.cores,
        "tp": lay["tp"], "pp": lay["pp"], "dp": lay["dp"], "schedule": lay["schedule"],
        "virtual_stages": lay["v"], "sequence_parallel": lay["sp"],
        "tp_comm_overlap": lay["overlap"], "recompute": recompute, "micro_batch": mb,
        "global_batch": global_batch, "model": m, "steps_measured": len(ms),
        "step_time_s": step_s, "step_times_ms": ms, "tokens_per_s": tokens / step_s,
        "model_tflops_per_rank_no_recompute": f72 / step_s / ranks / 1e12,
        "model_tflops_per_rank_with_recompute": f96 / step_s / ranks / 1e12,
        "mfu": f72 / step_s / (peak_gflops * 1e9),
        "mfu_peak_gflops": peak_gflops,
        "measured_bubble_per_stage": bubbles,
        "peak_rss_bytes_per_rank": rss_bytes,
        "predicted": pred,
        "predicted_memory_gib": pred["memory_gib"],
        "predicted_comm_share": comm / pred["step_time_s"],
        "predicted_bubble": pred["bubble_fraction"],
        "prediction_error": pred["step_time_s"] / step_s - 1,
        "command": " ".join(cmd),
    }


def calibrate(a, build, out):
    """bench_gemm (weft rows, all cores), bench_gpt_layer's tiny layers (their attention, all
    cores) and bench_collectives (2 ranks) -> this-machine.json."""
    log = os.path.join(out, "scale.log")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.cores))
    sh([os.path.join(build, "bin", "bench_gemm"), "--benchmark_filter=BM_GemmCpu/weft/f32/",
        "--benchmark_min_time=0.05", "--benchmark_repetitions=2",
        f"--benchmark_out={out}/bench_gemm.json", "--benchmark_out_format=json"], env=env, log=log)
    sh([os.path.join(build, "bin", "bench_gpt_layer"), "--benchmark_filter=/f32/h(192|320)_s128_",
        "--layer_rounds=3", f"--benchmark_out={out}/bench_gpt_layer.json",
        "--benchmark_out_format=json"], env=env, log=log)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    sh([a.mpirun, "-np", "2", "--oversubscribe", "--bind-to", "none",
        os.path.join(build, "bin", "bench_collectives"), "--benchmark_filter=mpi/f32/",
        f"--benchmark_out={out}/bench_collectives.json", "--benchmark_out_format=json"],
       env=env, log=log)
    sh([os.path.join(build, "bin", "weft_plan"), "--cluster", "this-machine", "--calibrate", out,
        "--save-cluster", os.path.join(out, "this-machine.json"), "--dtype", "f32", "--gpus", "1",
        "--layers", "2", "--hidden", "128", "--heads", "4", "--seq-len", "64", "--vocab", "256",
        "--global-batch", "4", "--top", "1"], log=log)
    gemm = json.load(open(os.path.join(out, "bench_gemm.json")))
    best = max(b.get("GFLOP/s", 0) for b in gemm["benchmarks"] if "/f32/" in b["name"])
    return best, gemm.get("context", {})


def write_markdown(points, meta, path):
    with open(path, "w") as f:
        f.write(f"# weft scaling sweep\n\n{meta['date']}, {meta['cpu']}, {meta['cores']} cores; "
                f"ranks share the cores: each rank runs cores / ranks threads (at least 1; "
                f"oversubscribed where ranks > cores). MFU against this machine's best measured "
                f"f32 GEMM rate ({meta['peak_gflops']:.0f} GFLOP/s on all cores), divided among "
                f"the ranks. Model TFLOP/s: Narayanan et al. 2021 eq. 3, without recomputation "
                f"(72 B s l h^2 ...). Efficiency: against the one-rank point of the same mode; "
                f"the ranks share {meta['cores']} cores, so the ideal is 1.0, not the rank count."
                f"\n\nCommand: `{meta['command']}`\n")
        for mode in ("strong", "weak"):
            rows = [p for p in points if p["mode"] == mode]
            if not rows:
                continue
            f.write(f"\n## {mode} scaling\n\n| ranks | layout | threads/rank | step ms | "
                    f"predicted ms | error | tokens/s | GFLOP/s/rank | MFU | efficiency | "
                    f"bubble (measured / theory) | comm share (pred.) | RSS MiB/rank | "
                    f"pred. GiB (param/grad/opt/act) |\n|" + "---|" * 14 + "\n")
            for p in rows:
                mem = p["predicted_memory_gib"]
                bub = max(p["measured_bubble_per_stage"]) if p["measured_bubble_per_stage"] else 0
                rss = max(p["peak_rss_bytes_per_rank"] or [0]) / 2**20
                f.write(f"| {p['ranks']} | {p['name'].split('-', 2)[2]} | {p['threads_per_rank']}"
                        f" | {p['step_time_s'] * 1e3:.0f} | {p['predicted']['step_time_s'] * 1e3:.0f}"
                        f" | {100 * p['prediction_error']:+.0f}% | {p['tokens_per_s']:.0f} | "
                        f"{p['model_tflops_per_rank_no_recompute'] * 1e3:.1f} | "
                        f"{100 * p['mfu']:.0f}% | {p['efficiency']:.2f} | {bub:.2f} / "
                        f"{p['predicted_bubble']:.2f} | {100 * p['predicted_comm_share']:.0f}% | "
                        f"{rss:.0f} | {mem['parameters']:.3f}/{mem['gradients']:.3f}/"
                        f"{mem['optimizer']:.3f}/{mem['activations']:.3f} |\n")
        errs = [abs(p["prediction_error"]) for p in points]
        f.write(f"\nPlanner calibrated here against the measured step time, {len(errs)} points: "
                f"mean absolute error {100 * statistics.mean(errs):.1f}%, largest "
                f"{100 * max(errs):.1f}%, {sum(e > 0.3 for e in errs)} above 30%.\n")


def plot(points, meta, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    note = (f"{meta['cores']} cores shared by the ranks (cores/ranks threads each, at least 1); "
            f"filled: measured, hollow: planner")
    # 1. Throughput and efficiency against ranks, per layout family, strong and weak.
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    for col, mode in enumerate(("strong", "weak")):
        rows = [p for p in points if p["mode"] == mode]
        fams = sorted({p["family"] for p in rows if p["ranks"] > 1})
        for i, fam in enumerate(fams):
            color = f"C{i}"
            sel = [p for p in rows if p["family"] == fam or p["ranks"] == 1]
            best = {}
            for p in sel:  # the best variant of the family at each rank count
                if p["ranks"] not in best or p["tokens_per_s"] > best[p["ranks"]]["tokens_per_s"]:
                    best[p["ranks"]] = p
            xs = sorted(best)
            axes[0][col].plot(xs, [best[x]["tokens_per_s"] for x in xs], "o-", color=color,
                              label=fam)
            axes[0][col].plot(xs, [best[x]["predicted"]["tokens_per_s"] for x in xs], "o--",
                              color=color, mfc="none")
            axes[1][col].plot(xs, [best[x]["efficiency"] for x in xs], "o-", color=color,
                              label=fam)
        axes[0][col].set_title(f"{mode} scaling: best variant per layout family")
        axes[0][col].set_ylabel("tokens/s")
        axes[1][col].set_ylabel("efficiency vs 1 rank (ideal 1.0: same cores)")
        axes[1][col].axhline(1.0, color="gray", lw=0.5)
        axes[1][col].set_xlabel("ranks")
        axes[1][col].set_xticks(sorted({p["ranks"] for p in points}))
        axes[0][col].legend(fontsize=8)
    fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "throughput.png"), dpi=110)
    plt.close(fig)

    # 2. Time breakdown per layout (predicted parts, measured step time as a black mark).
    parts = ["gemm", "attention", "elementwise", "tp_comm", "pp_comm", "bubble", "dp_comm",
             "optimizer"]
    for mode in ("strong", "weak"):
        rows = [p for p in points if p["mode"] == mode]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows)), 5))
        bottom = [0.0] * len(rows)
        for j, part in enumerate(parts):
            vals = [p["predicted"]["time_s"][part] * 1e3 for p in rows]
            ax.bar(range(len(rows)), vals, bottom=bottom, color=f"C{j}", label=part)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.plot(range(len(rows)), [p["step_time_s"] * 1e3 for p in rows], "k_", ms=14, mew=2,
                label="measured step")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([p["name"].split("-", 2)[2] for p in rows], rotation=75, fontsize=7)
        ax.set_ylabel("ms per step")
        ax.set_title(f"{mode} scaling: predicted time breakdown per layout, measured step (black)")
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"time_breakdown_{mode}.png"), dpi=110)
        plt.close(fig)

    # 3. Memory per rank: predicted split, measured peak RSS per rank (process, not just tensors).
    rows = [p for p in points if p["mode"] == "strong"]
    if rows:
        fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows)), 5))
        bottom = [0.0] * len(rows)
        for j, part in enumerate(("parameters", "gradients", "optimizer", "activations")):
            vals = [p["predicted_memory_gib"][part] * 1024 for p in rows]
            ax.bar(range(len(rows)), vals, bottom=bottom, color=f"C{j}", label=part + " (pred.)")
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.plot(range(len(rows)), [max(p["peak_rss_bytes_per_rank"] or [0]) / 2**20 for p in rows],
                "k_", ms=14, mew=2, label="peak RSS of the largest rank (measured)")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([p["name"].split("-", 2)[2] for p in rows], rotation=75, fontsize=7)
        ax.set_ylabel("MiB per rank")
        ax.set_title("strong scaling: memory per rank")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "memory.png"), dpi=110)
        plt.close(fig)

    # 4. Predicted against measured step time.
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, mode in enumerate(("strong", "weak")):
        rows = [p for p in points if p["mode"] == mode]
        ax.scatter([p["step_time_s"] * 1e3 for p in rows],
                   [p["predicted"]["step_time_s"] * 1e3 for p in rows], color=f"C{i}", label=mode)
    lim = max([p["step_time_s"] * 1e3 for p in points] +
              [p["predicted"]["step_time_s"] * 1e3 for p in points]) * 1.1
    ax.plot([0, lim], [0, lim], "k-", lw=0.5)
    ax.plot([0, lim], [0, 1.3 * lim], "k:", lw=0.5)
    ax.plot([0, lim], [0, 0.7 * lim], "k:", lw=0.5)
    ax.set_xlabel("measured ms per step")
    ax.set_ylabel("predicted ms per step")
    ax.set_title("planner (calibrated here) vs measurement; dotted: +-30%", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "predicted_vs_measured.png"), dpi=110)
    plt.close(fig)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--rank-wrapper":
        rank_wrapper(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="gpt2", choices=["gpt2", "llama"])
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--out", default="scale-out")
    ap.add_argument("--build", required=True)
    ap.add_argument("--modes", default="strong,weak")
    ap.add_argument("--layers", type=int, default=8, help="strong model; weak: per pipeline stage x pp / 2")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="steps per point (the first is not timed)")
    ap.add_argument("--max-points", type=int, default=0, help="stop after this many (0: all)")
    ap.add_argument("--recompute", default="none",
                    help="activation recomputation policies to run at every layout, comma-separated "
                         "(none, selective, full)")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "README.md"))
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--skip-calibration", action="store_true",
                    help="reuse OUT's bench_gemm.json, bench_collectives.json, this-machine.json")
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    build = os.path.abspath(a.build)
    ranks = [int(r) for r in a.ranks.split(",")]
    policies = a.recompute.split(",")
    for r in policies:
        if r not in ("none", "selective", "full"):
            sys.exit(f"scale: --recompute takes none, selective and full, got '{r}'")

    start = time.time()
    if a.skip_calibration:
        gemm = json.load(open(os.path.join(out, "bench_gemm.json")))
        peak = max(b.get("GFLOP/s", 0) for b in gemm["benchmarks"] if "/f32/" in b["name"])
        context = gemm.get("context", {})
    else:
        print("scale: calibrating the planner here (bench_gemm, bench_collectives)", flush=True)
        peak, context = calibrate(a, build, out)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.processor())
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": cpu, "cores": a.cores, "host": platform.node(), "peak_gflops": peak,
        "onednn": context.get("onednn_version", "?"), "weft": context.get("weft_version", "?"),
        "mpi": sh([a.mpirun, "--version"], check=False).splitlines()[0],
        "load_average_start": open("/proc/loadavg").read().split()[:3],
        "command": " ".join(sys.argv),
        "commit": sh(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"],
                     check=False).strip(),
    }
    base = {"layers": a.layers, "hidden": a.hidden, "heads": a.heads, "seq_len": a.seq_len,
            "global_batch": a.global_batch}
    weak_base = dict(base, layers=max(1, a.layers // 2), hidden=a.hidden // 2,
                     global_batch=max(1, a.global_batch // 2))
    print(f"scale: ranks share {a.cores} cores; each rank runs max(1, cores / ranks) threads "
          f"(oversubscribed where ranks > cores)", flush=True)
    points = []
    with open(os.path.join(out, "scaling.jsonl"), "w") as jl:
        for mode in a.modes.split(","):
            for r in ranks:
                for lay in layouts(r):
                    if a.max_points and len(points) >= a.max_points:
                        break
                    m, gb = model_for(mode, a.preset, lay["tp"], lay["pp"], lay["dp"],
                                      base if mode == "strong" else weak_base)
                    mb = micro_batch_for(a, lay, gb)
                    micro_batches = gb // (lay["dp"] * mb)
                    if (m["layers"] % (lay["pp"] * lay["v"]) or m["heads"] % lay["tp"] or
                            gb % (lay["dp"] * mb) or (lay["v"] > 1 and micro_batches % lay["pp"])):
                        print(f"  skipped {mode} {lay}: layers {m['layers']}, heads {m['heads']}, "
                              f"{micro_batches} micro-batches do not divide", flush=True)
                        continue
                    for recompute in policies:
                        p = run_point(a, mode, lay, base if mode == "strong" else weak_base, build,
                                      out, peak, recompute)
                        one = next((q for q in points if q["mode"] == mode and q["ranks"] == 1), p)
                        if mode == "strong":
                            p["efficiency"] = p["tokens_per_s"] / one["tokens_per_s"]
                        else:  # per-rank work stays about constant: compare model FLOP/s
                            p["efficiency"] = (p["model_tflops_per_rank_no_recompute"] * p["ranks"] /
                                               one["model_tflops_per_rank_no_recompute"])
                        p["machine"] = meta
                        points.append(p)
                        jl.write(json.dumps(p) + "\n")
                        jl.flush()
                        print(f"  {p['name']:<46} {p['step_time_s'] * 1e3:8.0f} ms (planner "
                              f"{p['predicted']['step_time_s'] * 1e3:6.0f}, "
                              f"{100 * p['prediction_error']:+4.0f}%) {p['tokens_per_s']:8.0f} tok/s",
                              flush=True)
    meta["load_average_end"] = open("/proc/loadavg").read().split()[:3]
    meta["sweep_seconds"] = time.time() - start
    write_markdown(points, meta, os.path.join(out, "scaling.md"))
    plot(points, meta, out)
    errs = [abs(p["prediction_error"]) for p in points]
    print(f"scale: {len(points)} points in {meta['sweep_seconds']:.0f} s; planner error: mean "
          f"{100 * statistics.mean(errs):.1f}%, largest {100 * max(errs):.1f}%; results in {out} "
          f"(scaling.jsonl, scaling.md, *.png)")


if __name__ == "__main__":
    main()
