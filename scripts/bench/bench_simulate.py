"""Time the schedule model on a large case: pp=16, vpp=4, M=256.

Prints, per comm model, the seconds for building the DAG (Megatron program + edges), for one
simulation, and their sum against the 2 s target (ratio < 1 meets it). Run:

    .venv/bin/python scripts/bench/bench_simulate.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.schedule.costs import CostModel, synthetic_profile
from megatron_tf.schedule.dag import build_dag
from megatron_tf.schedule.simulate import simulate

TARGET_S = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = parser.parse_args()
    spec = ScheduleSpec(kind="interleaved", pp=16, vpp=4, microbatches=256)
    costs = CostModel.from_profile(synthetic_profile(spec, [(1.0, 1.0, 1.0)], 0.01))
    ratios = [[[0.5] * spec.microbatches for _ in range(spec.vpp)] for _ in range(spec.pp)]
    print(f"{spec.describe()}: {2 * spec.pp * spec.vpp * spec.microbatches} compute actions")
    print(f"{'comm model':<10} {'nodes':>7} {'build s':>8} {'sim s':>7} {'total s':>8} {'/2s':>6}")
    for model in ("megatron", "dataflow"):
        best_build = best_sim = float("inf")
        nodes = 0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            dag = build_dag(spec, costs, model)
            t1 = time.perf_counter()
            simulate(dag, ratios)
            t2 = time.perf_counter()
            best_build, best_sim = min(best_build, t1 - t0), min(best_sim, t2 - t1)
            nodes = len(dag.nodes)
        total = best_build + best_sim
        print(
            f"{model:<10} {nodes:>7} {best_build:>8.3f} {best_sim:>7.3f} {total:>8.3f} "
            f"{total / TARGET_S:>6.2f}"
        )


if __name__ == "__main__":
    main()
