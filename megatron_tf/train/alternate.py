"""Side-by-side timing: one training job alternating the stock schedule with freeze plans.

Iteration by iteration, the job runs either the stock schedule (freeze runtime removed, nothing
frozen, no gradient rescale) or one of the plans (runtime installed, `set_ratios`), in a rotating
order, and records rank 0's iteration and forward-backward times. On a shared machine, separate
runs see different load; alternating single iterations inside one job lets the load hit every
configuration alike, so the ratio of medians is what freezing itself changes.

    TIMELYFREEZE_JOB=job.json python -m megatron_tf.train.alternate --plan 0.8=plan.json \\
        --out t.json

The job must carry a plan (its runtime is the one re-targeted). Used by the demo and by
`scripts/bench/bench_pretrain_speedup.py`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from megatron_tf.process.worker_errors import report_user_errors
from megatron_tf.train.job import load_job
from megatron_tf.train.plan_source import PlanSource, load_plan_source
from megatron_tf.train.trainer import Trainer

BASELINE = "baseline"


def alternate(
    trainer: Trainer, plans: dict[str, PlanSource], *, steps: int, warmup: int
) -> dict[str, list[tuple[float, float]]]:
    """{config: [(iteration seconds, forward-backward seconds), ...]} over the timed steps."""
    if trainer.plan is None:
        raise ValueError("the job needs a plan: its freeze runtime is re-targeted per iteration")
    configs = [BASELINE, *plans]
    times: dict[str, list[tuple[float, float]]] = {c: [] for c in configs}
    n = len(configs)
    for step in range(warmup + steps * n):
        # Rotate the order every round so no configuration always follows the same one.
        config = configs[(step + step // n) % n]
        trainer.set_plan(None if config == BASELINE else plans[config])
        metrics = trainer.train_step()
        if step >= warmup:
            times[config].append((metrics.seconds, metrics.schedule_seconds))
    return times


def medians(times: dict[str, list[list[float]]]) -> dict[str, tuple[float, float]]:
    """(median iteration seconds, median forward-backward seconds) per configuration."""
    return {
        name: (statistics.median(t for t, _ in rows), statistics.median(s for _, s in rows))
        for name, rows in times.items()
    }


@record
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megatron_tf.train.alternate")
    parser.add_argument("--plan", action="append", default=[], help="NAME=plan.json")
    parser.add_argument("--steps", type=int, default=30, help="timed iterations per config")
    parser.add_argument("--warmup", type=int, default=6, help="untimed iterations first")
    parser.add_argument("--out", required=True, help="timings JSON (written by rank 0)")
    args = parser.parse_args(argv)
    with report_user_errors():
        trainer = Trainer(load_job())
        try:
            plans = {}
            for item in args.plan:
                name, _, path = item.partition("=")
                plans[name] = load_plan_source(path, trainer.spec)
            times = alternate(trainer, plans, steps=args.steps, warmup=args.warmup)
            if dist.get_rank() == 0:
                Path(args.out).write_text(json.dumps(times))
        finally:
            trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
