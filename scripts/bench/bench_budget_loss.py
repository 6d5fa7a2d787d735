"""What each freeze budget costs in loss, at equal iterations and at equal wall time (CPU, pp 2).

Profiles the demo GPT once, solves one plan per `--ratios` budget, then trains on the embedded
corpus (same model, data, seed and LR schedule as `timelyfreeze demo`):

- a baseline of `--iters` iterations;
- per budget, a TimelyFreeze run of `--iters` iterations (equal iterations: is the loss within
  1% of the baseline's?);
- per budget, a TimelyFreeze run of `--iters` x its speedup iterations, the speedup taken from
  `--speedups` (measured side by side by `bench_pretrain_speedup.py`) or else the plan's
  prediction. It spends the baseline's wall time, so if its loss reaches the baseline's final
  loss before its end, that budget reached the baseline's loss in less wall time.

"Final loss" is the mean of the last 10% of iterations; "reached at" is the first iteration
where the mean of the trailing window of that length is at or below the baseline's final loss,
and its wall time is that iteration count over the speedup, relative to the baseline's run. Loss
is a deterministic function of the seed here, so the load of the machine changes only how long
the script takes (about 2.5 minutes per 1000 iterations on two cores).

    .venv/bin/python scripts/bench/bench_budget_loss.py [--iters 1000] [--ratios 0.3,0.5,0.8] \\
        [--speedups 0.3=1.09,0.5=1.105,0.8=1.17]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=1000, help="iterations of the baseline")
    parser.add_argument("--ratios", default="0.3,0.5,0.8", help="max freeze ratios to compare")
    parser.add_argument(
        "--speedups", default="", help="measured speedups, e.g. 0.3=1.09,0.8=1.17 (else predicted)"
    )
    parser.add_argument("--profile-iters", type=int, default=20, help="measured per phase")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_budget_loss"))
    return parser.parse_args()


def main() -> None:
    from megatron_tf.demo import (
        DemoConfig,
        RunSummary,
        iterations_to_loss,
        profile_model,
        run_summary,
        solve_plan,
        train_run,
    )

    args = parse()
    ratios = [float(x) for x in args.ratios.split(",")]
    pairs = (p.split("=") for p in args.speedups.split(",") if p)
    measured = {float(k): float(v) for k, v in pairs}
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base_cfg = DemoConfig(out_dir=out, profile_iters=args.profile_iters)
    print("profiling the demo GPT ...", flush=True)
    profile = profile_model(base_cfg, out)

    def run(name: str, iters: int, plan: Path | None) -> RunSummary:
        cfg = replace(base_cfg, iters=iters, freeze_warmup_iters=max(1, iters // 10))
        print(f"training {name}: {iters} iterations ...", flush=True)
        train_run(cfg, out / name, plan=plan)
        return run_summary(name, out / name, cfg.freeze_warmup_iters)

    target = run("baseline", args.iters, None).final_loss
    window = max(1, args.iters // 10)
    rows = []
    for r in ratios:
        plan, (pred_base, pred_plan) = solve_plan(
            replace(base_cfg, max_freeze_ratio=r), profile, out / f"plan_{r:g}.json"
        )
        speedup = measured.get(r, pred_base / pred_plan)
        equal_iters = run(f"max_{r:g}", args.iters, plan)
        equal_time_iters = round(args.iters * speedup)
        equal_time = run(f"max_{r:g}_equal_time", equal_time_iters, plan)
        k = iterations_to_loss(equal_time.losses, target, window)
        rows.append(
            {
                "max_freeze_ratio": r,
                "speedup": speedup,
                "speedup_source": "measured" if r in measured else "predicted",
                "final_loss_equal_iterations": equal_iters.final_loss,
                "equal_time_iterations": equal_time_iters,
                "final_loss_equal_time": equal_time.final_loss,
                "reached_at_iteration": k,
                "reached_at_wall_fraction": None if k is None else k / speedup / args.iters,
            }
        )
    summary = {"iters": args.iters, "baseline_final_loss": target, "budgets": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print(f"baseline: {args.iters} iterations, final loss {target:.5f}")
    print(
        f"{'max ratio':>9s} {'speedup':>13s} {'equal iterations':>17s} "
        f"{'equal wall time':>22s} {'reaches baseline loss at':>25s}"
    )
    for row in rows:
        eq = row["final_loss_equal_iterations"]
        et = row["final_loss_equal_time"]
        frac = row["reached_at_wall_fraction"]
        reach = "not reached" if frac is None else f"{frac:.3f} x baseline time"
        print(
            f"{row['max_freeze_ratio']:>9g} {row['speedup']:>6.3f} ({row['speedup_source'][:4]}) "
            f"{eq:.5f} ({eq / target - 1:+.2%}) "
            f"{et:.5f} ({et / target - 1:+.2%}, {row['equal_time_iterations']} it) {reach:>25s}"
        )


if __name__ == "__main__":
    sys.exit(main())
