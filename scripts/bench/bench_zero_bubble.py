"""Simulated iteration speed of the zero-bubble zb-h1 schedule over 1F1B, with and without the LP.

For pp 4 M 8, pp 8 M 16 and pp 16 M 64, at F:B:W 1:1:1 and 1:1.274:0.760 (a LLaMA-8B layer's
forward, input gradient and weight gradient), no transfer time, megatron comm model, prints
side by side:

- `zb/1f1b`: the speed of zb-h1 over 1F1B (1F1B's makespan / zb-h1's), against the target
  where one is set (pp 4 M 8 >= 1.20x, pp 8 M 16 >= 1.24x at 1:1:1);
- `1f1b+lp c` and `zb+lp c`: the LP's plan at cap c on that schedule, as speed over the same
  schedule unfrozen (on zb-h1 only W work is frozen), and `zb+lp/1f1b` the combined speed over
  stock 1F1B.

Run: .venv/bin/python scripts/bench/bench_zero_bubble.py [--caps 0.1,0.3] [--comm 0]
"""

from __future__ import annotations

import argparse
import time

from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.schedule.costs import CostModel, synthetic_profile
from megatron_tf.schedule.dag import Dag, build_dag
from megatron_tf.schedule.simulate import simulate
from megatron_tf.solve.lp import SolverConfig, solve_lp

LAYOUTS = ((4, 8), (8, 16), (16, 64))
COSTS = {"1:1:1": (1.0, 1.0, 1.0), "1:1.274:0.760": (1.0, 1.274, 0.760)}
TARGETS = {("1:1:1", 4, 8): 1.20, ("1:1:1", 8, 16): 1.24}


def _dag(kind: str, pp: int, m: int, costs: tuple[float, float, float], comm: float) -> Dag:
    spec = ScheduleSpec(kind=kind, pp=pp, microbatches=m)
    return build_dag(spec, CostModel.from_profile(synthetic_profile(spec, [costs], comm)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caps", default="0.1,0.3", help="LP caps (max freeze ratio)")
    parser.add_argument("--comm", type=float, default=0.0, help="seconds per P2P message")
    args = parser.parse_args()
    caps = [float(c) for c in args.caps.split(",")]
    head = f"{'F:B:W':<14} {'layout':<10} {'1f1b':>8} {'zb-h1':>8} {'zb/1f1b':>8} {'target':>7}"
    for c in caps:
        head += f" {f'1f1b+lp{c:g}':>10} {f'zb+lp{c:g}':>9} {'zb+lp/1f1b':>10}"
    print(head + f" {'lp s':>6}")
    for name, costs in COSTS.items():
        for pp, m in LAYOUTS:
            started = time.perf_counter()
            dags = {k: _dag(k, pp, m, costs, args.comm) for k in ("1f1b", "zb-h1")}
            base = {k: simulate(d).makespan for k, d in dags.items()}
            target = TARGETS.get((name, pp, m))
            line = (
                f"{name:<14} {f'pp{pp} M{m}':<10} {base['1f1b']:>8.3f} {base['zb-h1']:>8.3f} "
                f"{base['1f1b'] / base['zb-h1']:>7.3f}x "
                f"{f'{target:.2f}x' if target else '-':>7}"
            )
            for c in caps:
                planned = {
                    k: solve_lp(d, SolverConfig(max_freeze_ratio=c)).makespan
                    for k, d in dags.items()
                }
                line += (
                    f" {base['1f1b'] / planned['1f1b']:>9.3f}x"
                    f" {base['zb-h1'] / planned['zb-h1']:>8.3f}x"
                    f" {base['1f1b'] / planned['zb-h1']:>9.3f}x"
                )
            print(line + f" {time.perf_counter() - started:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
