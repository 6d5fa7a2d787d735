"""Measured vs predicted iteration-time reduction of TimelyFreeze pretraining (CPU, pp 2, 1F1B).

Profiles the demo GPT once, solves at each `--ratios` budget, then trains the baseline and one
TimelyFreeze run per budget *alternately*, `--rounds` times, each run `--iters` iterations from
the same seed, so slow drifts of the machine's load hit every configuration alike. For each
budget it prints the predicted speedup (the LP's), the measured one from the median iteration
time over the freezing phase (full iteration, and the forward-backward part the model
predicts), and the measured reduction as a share of the predicted reduction (target >= 90%).

    .venv/bin/python scripts/bench/bench_pretrain_speedup.py [--rounds 3] [--iters 60]

Writes `--out` (default runs/bench_pretrain/summary.json) with every number printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

from megatron_tf.demo import DemoConfig, profile_model, run_summary, solve_plan, train_run


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.8,0.3", help="max freeze ratios to compare")
    parser.add_argument("--rounds", type=int, default=3, help="alternation rounds")
    parser.add_argument("--iters", type=int, default=60, help="iterations per run")
    parser.add_argument("--warmup", type=int, default=10, help="unfrozen, untimed iterations")
    parser.add_argument("--profile-iters", type=int, default=10, help="measured per phase")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_pretrain"))
    return parser.parse_args()


def main() -> None:
    args = parse()
    ratios = [float(x) for x in args.ratios.split(",")]
    base_cfg = DemoConfig(
        out_dir=args.out,
        iters=args.iters,
        freeze_warmup_iters=args.warmup,
        profile_iters=args.profile_iters,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"profiling {base_cfg.parallel.schedule_spec().describe()} ...", flush=True)
    profile = profile_model(base_cfg, args.out)
    plans = {}
    for r in ratios:
        cfg = replace(base_cfg, max_freeze_ratio=r)
        plans[r] = solve_plan(cfg, profile, args.out / f"plan_{r:g}.json")
    times: dict[str, list[tuple[float, float]]] = {"baseline": []}
    times.update({f"{r:g}": [] for r in ratios})
    for round_ in range(args.rounds):
        for name in times:
            plan = None if name == "baseline" else plans[float(name)][0]
            cfg = base_cfg if plan is None else replace(base_cfg, max_freeze_ratio=float(name))
            run_dir = args.out / f"round{round_}_{name}"
            train_run(cfg, run_dir, plan=plan)
            run = run_summary(name, run_dir, args.warmup)
            times[name].append((run.steady_iteration_time, run.steady_schedule_time))
            print(
                f"round {round_} {name:>8s}: iteration {run.steady_iteration_time * 1e3:.1f} ms, "
                f"fwd-bwd {run.steady_schedule_time * 1e3:.1f} ms",
                flush=True,
            )
    summary = report(times, plans, ratios)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def report(
    times: dict[str, list[tuple[float, float]]],
    plans: dict[float, tuple[Path, tuple[float, float]]],
    ratios: list[float],
) -> dict[str, object]:
    base_it = statistics.median(t for t, _ in times["baseline"])
    base_fb = statistics.median(s for _, s in times["baseline"])
    rows = {}
    print()
    print(
        f"{'max ratio':>9s} {'pred speedup':>12s} {'meas (iter)':>11s} {'meas (fwd-bwd)':>14s} "
        f"{'reduction meas/pred (iter)':>26s} {'(fwd-bwd)':>9s}"
    )
    for r in ratios:
        pred_base, pred_plan = plans[r][1]
        it = statistics.median(t for t, _ in times[f"{r:g}"])
        fb = statistics.median(s for _, s in times[f"{r:g}"])
        pred_red = 1 - pred_plan / pred_base
        share_it = (1 - it / base_it) / pred_red if pred_red > 0 else float("nan")
        share_fb = (1 - fb / base_fb) / pred_red if pred_red > 0 else float("nan")
        rows[f"{r:g}"] = {
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
            f"{r:>9g} {pred_base / pred_plan:>12.3f} {base_it / it:>11.3f} {base_fb / fb:>14.3f} "
            f"{share_it:>26.1%} {share_fb:>9.1%}"
        )
    return {"per_ratio": rows, "runs": times}


if __name__ == "__main__":
    main()
