"""Measured vs predicted iteration-time reduction of TimelyFreeze pretraining (CPU, pp 2, 1F1B).

Profiles the demo GPT once with the real profiler, solves the LP at each `--ratios` budget, then
starts ONE training job (`megatron_tf.train.alternate`: the real Trainer with Megatron DDP,
optimizer and schedule) that alternates, iteration by iteration, between the stock schedule
(freeze runtime removed) and each plan (runtime installed, `set_ratios`), in a rotating order.
Alternating single iterations inside one job makes a shared machine's load hit every
configuration alike, which separate runs cannot do.

For each budget it prints the LP's predicted speedup, the measured one (median iteration time of
the baseline iterations over the median of that plan's iterations; also for the forward-backward
part alone, which is what the DAG model predicts), and the measured reduction as a share of the
predicted reduction (target >= 90%).

    .venv/bin/python scripts/bench/bench_pretrain_speedup.py [--steps 40] [--ratios 0.8,0.3]

Writes `<out>/summary.json` with every number printed. Timings are rank 0's (in 1F1B rank 0
runs the first forward and the last backward, so its step spans the whole iteration).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.8,0.3", help="max freeze ratios to compare")
    parser.add_argument("--steps", type=int, default=40, help="timed iterations per config")
    parser.add_argument("--warmup", type=int, default=6, help="untimed iterations first")
    parser.add_argument("--profile-iters", type=int, default=10, help="measured per phase")
    parser.add_argument("--hidden-size", type=int, default=128, help="demo GPT: 128")
    parser.add_argument("--seq-length", type=int, default=64, help="demo GPT: 64")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_pretrain"))
    return parser.parse_args()


def main() -> None:
    from megatron_tf.demo import DemoConfig, launch_job, profile_model, solve_plan
    from megatron_tf.train.data import DataConfig
    from megatron_tf.train.job import prepare_job, write_job
    from megatron_tf.train.train_config import FreezeOptions, TrainConfig

    args = parse()
    ratios = [float(x) for x in args.ratios.split(",")]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = DemoConfig(out_dir=out, profile_iters=args.profile_iters)
    cfg.model = replace(
        cfg.model, hidden_size=args.hidden_size, seq_length=args.seq_length, ffn_hidden_size=0
    )
    print(f"profiling {cfg.parallel.schedule_spec().describe()} ...", flush=True)
    profile = profile_model(cfg, out)
    plans = {
        r: solve_plan(replace(cfg, max_freeze_ratio=r), profile, out / f"plan_{r:g}.json")
        for r in ratios
    }
    iters = args.warmup + args.steps * (len(ratios) + 1)
    train = TrainConfig(
        iters=iters,
        lr_warmup_iters=1,
        log_interval=iters,
        out_dir=str(out / "run"),
        tensorboard=False,
        freeze=FreezeOptions(plan=str(plans[ratios[0]][0])),
    )
    job = prepare_job(cfg.model, cfg.parallel, DataConfig(), train)
    job_file = write_job(job, out / "run" / "job.json")
    print(f"alternating baseline and {args.ratios} for {args.steps} steps each ...", flush=True)
    plan_args = [f"--plan={r:g}={p}" for r, (p, _) in plans.items()]
    launch_job(
        "megatron_tf.train.alternate",
        [
            *("--job", str(job_file), *plan_args, "--steps", str(args.steps)),
            *("--warmup", str(args.warmup), "--out", str(out / "timings.json")),
        ],
        out / "bench.log",
    )
    timings = json.loads((out / "timings.json").read_text())
    summary = report(timings, {f"{r:g}": pred for r, (_, pred) in plans.items()})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, out / "speedup.png")


def report(
    timings: dict[str, list[list[float]]], predicted: dict[str, tuple[float, float]]
) -> dict[str, object]:
    base_it = statistics.median(t for t, _ in timings["baseline"])
    base_fb = statistics.median(s for _, s in timings["baseline"])
    rows = {}
    print()
    print(f"baseline: iteration {base_it * 1e3:.1f} ms, forward-backward {base_fb * 1e3:.1f} ms")
    print(
        f"{'max ratio':>9s} {'predicted':>9s} {'measured':>8s} {'fwd-bwd':>8s} "
        f"{'meas/pred reduction':>19s} {'fwd-bwd':>8s}"
    )
    for name, (pred_base, pred_plan) in predicted.items():
        it = statistics.median(t for t, _ in timings[name])
        fb = statistics.median(s for _, s in timings[name])
        pred_red = 1 - pred_plan / pred_base
        share_it = (1 - it / base_it) / pred_red if pred_red > 0 else float("nan")
        share_fb = (1 - fb / base_fb) / pred_red if pred_red > 0 else float("nan")
        rows[name] = {
            "predicted_baseline_s": pred_base,
            "predicted_plan_s": pred_plan,
            "predicted_speedup": pred_base / pred_plan,
            "measured_baseline_iteration_s": base_it,
            "measured_plan_iteration_s": it,
            "measured_speedup_iteration": base_it / it,
            "measured_baseline_fwd_bwd_s": base_fb,
            "measured_plan_fwd_bwd_s": fb,
            "measured_speedup_fwd_bwd": base_fb / fb,
            "reduction_share_iteration": share_it,
            "reduction_share_fwd_bwd": share_fb,
        }
        print(
            f"{name:>9s} {pred_base / pred_plan:>9.3f} {base_it / it:>8.3f} {base_fb / fb:>8.3f} "
            f"{share_it:>19.1%} {share_fb:>8.1%}"
        )
    return {"per_ratio": rows, "timings": timings}


def plot(summary: dict[str, object], target: Path) -> None:
    """Iteration times of every configuration (box plots) with the predicted medians."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timings: dict[str, list[list[float]]] = summary["timings"]  # type: ignore[assignment]
    rows: dict[str, dict[str, float]] = summary["per_ratio"]  # type: ignore[assignment]
    names = list(timings)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot([[t * 1e3 for t, _ in timings[n]] for n in names], showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), [n if n == "baseline" else f"max {n}" for n in names])
    base = statistics.median(t for t, _ in timings["baseline"]) * 1e3
    for i, name in enumerate(names[1:], start=2):
        row = rows[name]
        predicted = base / row["predicted_speedup"]
        ax.plot([i - 0.3, i + 0.3], [predicted] * 2, color="#E45756", lw=2)
        ax.annotate(
            f"pred x{row['predicted_speedup']:.3f}\nmeas x{row['measured_speedup_iteration']:.3f}",
            (i + 0.32, predicted),
            fontsize=8,
            va="center",
        )
    ax.set_ylabel("iteration time (ms)")
    ax.set_title("measured iteration time; red: baseline median / predicted speedup", fontsize=9)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
