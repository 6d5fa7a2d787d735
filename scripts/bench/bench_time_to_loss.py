"""Time to the baseline's validation loss on deep pipelines (issue 11's acceptance layouts).

Drives `megatron_tf.compare.run_compare` (what `timelyfreeze compare` runs) for each layout in
`--layouts`, 3 seeds (weights and data order; one corpus), validation loss on the held-out set,
the auto budget from the measured gradient noise scale. Deep layouts use simulated time (ranks
share the two cores); pp 2 can use measured time with `--time measured`.

    .venv/bin/python scripts/bench/bench_time_to_loss.py --layouts pp4 [--iters 300]
    layouts: pp2 (8 mb), pp4 (8 mb), pp8 (16 mb), pp4v2 (interleaved, 8 mb),
             pp4big (pp4 with micro batch 8: 64 samples per iteration instead of 16)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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
    parser.add_argument("--time", default="simulated", choices=("simulated", "measured"))
    parser.add_argument("--costs", default="1,1,1")
    parser.add_argument("--eval-interval", type=int, default=10)
    parser.add_argument("--noise-from", default="warmup", choices=("warmup", "final"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_time_to_loss"))
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
            time=args.time,
            costs=args.costs,
            eval_interval=args.eval_interval,
            noise_from=args.noise_from,
        )
        start = time.monotonic()
        result = run_compare(cfg, lambda s: print(s, flush=True))
        print(f"\n{name}: {time.monotonic() - start:.0f} s")
        print("\n".join(format_table(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
