"""Measured vs predicted iteration-time reduction of TimelyFreeze pretraining (CPU, pp 2, 1F1B).

Profiles the demo GPT once with the real profiler, solves the LP at each `--ratios` budget, then
starts ONE training job (`megatron_tf.train.alternate`: the real Trainer with Megatron DDP,
optimizer and schedule) that alternates, iteration by iteration, between the stock schedule
(freeze runtime removed) and each plan (runtime installed, `set_ratios`), in a rotating order.
Alternating single iterations inside one job makes a shared machine's load hit every
configuration alike, which separate runs cannot do.

For each budget it prints the LP's predicted speedup of the forward-backward (the schedule call,
which the DAG model predicts) and of the whole iteration (the optimizer step, measured in the
baseline iterations, added to both predicted times), the measured ones (median of the baseline
iterations over the median of that plan's), and the measured reduction as a share of the
predicted reduction (target >= 90%).

    .venv/bin/python scripts/bench/bench_pretrain_speedup.py [--steps 80] [--ratios 0.8,0.3]

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
    parser.add_argument("--steps", type=int, default=80, help="timed iterations per config")
    parser.add_argument("--warmup", type=int, default=6, help="untimed iterations first")
    parser.add_argument("--profile-iters", type=int, default=20, help="measured per phase")
    parser.add_argument("--hidden-size", type=int, default=128, help="demo GPT: 128")
    parser.add_argument("--seq-length", type=int, default=64, help="demo GPT: 64")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_pretrain"))
    return parser.parse_args()


def main() -> None:
    from megatron_tf.demo import DemoConfig, profile_model, solve_plan
    from megatron_tf.formats.job import job_env
    from megatron_tf.launch.options import QUIET_WORKERS_ENV, LaunchOptions, job_log, launch_job
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
    with job_log(out / "bench.log", "the alternating run") as log:
        launch_job(
            LaunchOptions(),
            "megatron_tf.train.alternate",
            [
                *(*plan_args, "--steps", str(args.steps)),
                *("--warmup", str(args.warmup), "--out", str(out / "timings.json")),
            ],
            world_size=cfg.parallel.world_size,
            env={**QUIET_WORKERS_ENV, **job_env(job_file)},
            stdout=log,
            stderr=log,
        )
    timings = json.loads((out / "timings.json").read_text())
    summary = report(timings, {f"{r:g}": pred for r, (_, pred) in plans.items()})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, out / "speedup.png")


def report(
    timings: dict[str, list[list[float]]], predicted: dict[str, tuple[float, float]]
) -> dict[str, object]:
    """Measured against predicted, per budget, on two levels.

    - forward-backward: the pipeline schedule call (with Megatron's gradient finalization),
      which is exactly what the DAG model predicts;
    - iteration: the whole training step. Its optimizer step is outside the DAG and no plan
      changes it, so the predicted iteration adds the optimizer-step time measured in this
      run's baseline iterations (iteration minus forward-backward, median) to both predicted
      times; without that, the prediction would be a schedule time set against a step time.
    """
    base_it = statistics.median(t for t, _ in timings["baseline"])
    base_fb = statistics.median(s for _, s in timings["baseline"])
    optimizer = statistics.median(t - s for t, s in timings["baseline"])
    rows = {}
    print()
    print(
        f"baseline: iteration {base_it * 1e3:.1f} ms, forward-backward {base_fb * 1e3:.1f} ms, "
        f"optimizer step and bookkeeping {optimizer * 1e3:.1f} ms"
    )
    print(
        f"{'max ratio':>9s} {'predicted fwd-bwd':>17s} {'measured':>8s} {'share':>6s}   "
        f"{'predicted iteration':>19s} {'measured':>8s} {'share':>6s}"
    )
    for name, (pred_base, pred_plan) in predicted.items():
        it = statistics.median(t for t, _ in timings[name])
        fb = statistics.median(s for _, s in timings[name])
        pred_fb = pred_base / pred_plan
        pred_it = (pred_base + optimizer) / (pred_plan + optimizer)
        share_fb = (1 - fb / base_fb) / (1 - 1 / pred_fb) if pred_fb > 1 else float("nan")
        share_it = (1 - it / base_it) / (1 - 1 / pred_it) if pred_it > 1 else float("nan")
        rows[name] = {
            "predicted_baseline_s": pred_base,
            "predicted_plan_s": pred_plan,
            "predicted_speedup": pred_fb,
            "predicted_speedup_iteration": pred_it,
            "measured_optimizer_step_s": optimizer,
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
            f"{name:>9s} {pred_fb:>17.3f} {base_fb / fb:>8.3f} {share_fb:>6.1%}   "
            f"{pred_it:>19.3f} {base_it / it:>8.3f} {share_it:>6.1%}"
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
        predicted = base / row["predicted_speedup_iteration"]
        ax.plot([i - 0.3, i + 0.3], [predicted] * 2, color="#E45756", lw=2)
        ax.annotate(
            f"pred x{row['predicted_speedup_iteration']:.3f}\n"
            f"meas x{row['measured_speedup_iteration']:.3f}",
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
