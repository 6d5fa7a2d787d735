"""Time to the baseline's validation loss on deep pipelines, on the standard layouts.

Drives `megatron_tf.compare.run_compare` (what `timelyfreeze compare` runs) for each layout in
`--layouts`, 3 seeds (weights and data order; one corpus), validation loss on the held-out set,
the auto budget from the measured gradient noise scale. Deep layouts use simulated time (ranks
share the two cores); pp 2 can use measured time with `--time measured`.

After each layout it prints what the loss-cost model says about the same seeds, from each
baseline's measured noise-scale trajectory (`solve/budget.py`, `best_time_factor`): the time
ratio the auto choice predicts when it is made, what that cap gives over the whole trajectory,
and the best any cap schedule can give (the model's bound), next to the measured ratios.

    .venv/bin/python scripts/bench/bench_time_to_loss.py --layouts pp4 [--iters 300]
    .venv/bin/python scripts/bench/bench_time_to_loss.py --layouts pp4 --budgets auto,auto+reprice
    .venv/bin/python scripts/bench/bench_time_to_loss.py --layouts pp4 --bound-only   # no training
    layouts: pp2 (8 mb), pp4 (8 mb), pp8 (16 mb), pp4v2 (interleaved, 8 mb),
             pp4big (pp4 with micro batch 8: 64 samples per iteration instead of 16)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

LAYOUTS: dict[str, dict[str, int]] = {
    "pp2": {"pp": 2, "microbatches": 8},
    "pp4": {"pp": 4, "microbatches": 8},
    "pp8": {"pp": 8, "microbatches": 16},
    "pp4v2": {"pp": 4, "vpp": 2, "microbatches": 8},
    "pp4big": {"pp": 4, "microbatches": 8},
}
MICRO_BATCH: dict[str, int] = {"pp4big": 8}
"""Samples per microbatch where a layout differs from the demo GPT's 2: pp4big is pp4 with a
4x larger batch (same schedule and costs, so only the batch against the noise scale changes)."""


RECORDED: dict[str, dict[int, list[tuple[int, float]]]] = {
    "pp4": {
        1: [(30, 11.4), (150, 39.1), (299, 1210.1)],
        2: [(30, 7.5), (150, 41.2), (299, 284.4)],
        3: [(30, 11.4), (150, 55.6), (299, 1299.5)],
    },
    "pp8": {
        1: [(20, 5.9), (100, 39.3), (199, 379.1)],
        2: [(20, 8.4), (100, 53.3), (199, 223.5)],
        3: [(20, 8.6), (100, 59.8), (199, 180.3)],
    },
    "pp4v2": {
        1: [(30, 11.9), (150, 93.3), (299, 348.2)],
        2: [(30, 13.3), (150, 57.6), (299, 318.9)],
    },
    "pp4big": {1: [(15, 6.0), (75, 70.3), (149, 164.1)], 2: [(15, 4.3), (75, 62.8), (149, 217.9)]},
    "pp2": {
        1: [(30, 8.5), (150, 47.8), (299, 2333.5)],
        2: [(30, 12.0), (150, 48.7), (299, 421.0)],
        3: [(30, 13.2), (150, 41.8), (299, 1489.8)],
    },
}
"""Baselines' noise probes (iteration, B_noise) recorded in docs/results.md (same model, task and
seeds; pp8 at 200 and pp4big at 150 iterations): `--bound-only` falls back to them for seeds
without a baseline in `--out`, so the model's bound needs no training."""


def model_bounds(cfg: Any, name: str = "") -> list[str]:
    """The loss-cost model's predictions per seed from the baselines' noise probes in
    `cfg.out_dir`, with the measured time ratios where the summary has them (markdown rows)."""
    from megatron_tf.formats.profile import load_profile
    from megatron_tf.schedule.costs import parse_costs, synthetic_profile
    from megatron_tf.solve.budget import best_time_factor, budget_curve

    out = cfg.out_dir
    if (out / "profile.json").exists():
        profile = load_profile(out / "profile.json")
    else:
        spec = cfg.parallel.schedule_spec()
        profile = synthetic_profile(spec, parse_costs(cfg.costs, spec.pp))
    curve = budget_curve(profile)
    batch = cfg.model.micro_batch_size * cfg.parallel.microbatches * cfg.parallel.dp
    measured: dict[tuple[int, str], float | None] = {}
    if (out / "summary.json").exists():
        for run in json.loads((out / "summary.json").read_text())["runs"]:
            measured[(run["seed"], run["budget"])] = run["reach_fraction"]
    budgets = sorted({b for _, b in measured})
    rows = [
        f"loss-cost model vs measured, {cfg.parallel.schedule_spec().describe()}, batch {batch}, "
        "simulated time (x the baseline's time to its final validation loss)",
        "",
        "| seed | B_noise probes (it: samples) | auto cap | model at the choice | "
        "model over the trajectory, that cap | model's best cap schedule (bound) |"
        + "".join(f" measured {b} |" for b in budgets),
        "|---|---|---|---|---|---|" + "---|" * len(budgets),
    ]
    for seed in cfg.seeds:
        path = out / f"seed{seed}" / "baseline" / "noise_scale.json"
        if path.exists():
            probes = [(p["iteration"], p["noise_scale"]) for p in json.loads(path.read_text())]
        elif seed in RECORDED.get(name, {}):
            probes = RECORDED[name][seed]  # recorded in docs/results.md
        else:
            continue
        b = best_time_factor(curve, probes, batch, cfg.iters, cfg.warmup_iters)
        trail = ", ".join(f"{i:.0f}: {n:.1f}" for i, n in probes)
        cells = []
        for budget in budgets:
            value = measured.get((seed, budget))
            cells.append("not reached" if value is None else f"{value:.3f}")
        rows.append(
            f"| {seed} | {trail} | {b.once_cap:g} | {b.once_at_choice:.3f} | {b.once:.3f} | "
            f"{b.best:.3f} |" + "".join(f" {c} |" for c in cells)
        )
    return rows


def main() -> int:
    from dataclasses import replace

    from megatron_tf.compare import CompareConfig, compare_model, format_table, run_compare
    from megatron_tf.formats.layout import ParallelConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", default="pp4", help=f"comma list of {', '.join(LAYOUTS)}")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--warmup-iters", type=int, default=30)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--budgets", default="auto")
    parser.add_argument("--reprice-every", type=int, default=30)
    parser.add_argument("--time", default="simulated", choices=("simulated", "measured"))
    parser.add_argument("--costs", default="1,1,1")
    parser.add_argument("--eval-interval", type=int, default=10)
    parser.add_argument("--noise-from", default="warmup", choices=("warmup", "final"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_time_to_loss"))
    parser.add_argument(
        "--bound-only",
        action="store_true",
        help="train nothing: print the model's predictions for the runs already in --out",
    )
    args = parser.parse_args()
    for name in args.layouts.split(","):
        cfg = CompareConfig(
            out_dir=args.out / name,
            model=replace(compare_model(), micro_batch_size=MICRO_BATCH.get(name, 2)),
            parallel=ParallelConfig(**LAYOUTS[name]),
            iters=args.iters,
            warmup_iters=args.warmup_iters,
            seeds=tuple(int(s) for s in args.seeds.split(",")),
            budgets=tuple(args.budgets.split(",")),
            reprice_every=args.reprice_every,
            time=args.time,
            costs=args.costs,
            eval_interval=args.eval_interval,
            noise_from=args.noise_from,
        )
        if not args.bound_only:
            start = time.monotonic()
            result = run_compare(cfg, lambda s: print(s, flush=True))
            print(f"\n{name}: {time.monotonic() - start:.0f} s")
            print("\n".join(format_table(result)), flush=True)
        if cfg.time == "simulated":
            print("\n" + "\n".join(model_bounds(cfg, name)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
