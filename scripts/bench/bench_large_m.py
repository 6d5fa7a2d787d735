"""How pass 1's optimum T* grows with the number of microbatches M, and what a periodic plan
misses (docs/lp.md, section 8: the lead for large M).

    .venv/bin/python scripts/bench/bench_large_m.py                      # 1F1B pp 4, 1:1:1
    .venv/bin/python scripts/bench/bench_large_m.py --kind interleaved --vpp 2 --ms 8,16,24,32,40
    .venv/bin/python scripts/bench/bench_large_m.py --unbalanced --comm 0.05 --ms 8,16,24,32,40

For each M it solves the LP (GLOP, k_min 0) and prints T* and its increments per microbatch.
Then it splices each smaller M's plan: K = M_max - M microbatches frozen uniformly at the cap,
inserted at every position in turn, evaluated on the M_max schedule's DAG; the best splice
is printed against T*(M_max). Rank r inserts its block `shift` x r microbatches later than
rank 0 (`--shifts`, default 0 and 1): at shift 0 the inserted block's backwards are not a cut
of the steady state (a path can hop ranks past them), at shift 1 on 1F1B they are.

    .venv/bin/python scripts/bench/bench_large_m.py --ms 16,32                 # shift 1 reaches T*
    .venv/bin/python scripts/bench/bench_large_m.py --pp 8 --unbalanced --comm 0.05 --cap 0.3 \
        --ms 32,48,64,80 --shifts=-2,-1,0,1,2
"""

from __future__ import annotations

import argparse

import numpy as np

from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.schedule.costs import CostModel, synthetic_profile
from megatron_tf.schedule.dag import Dag, NodeKind, build_dag
from megatron_tf.solve.critical_path import evaluate
from megatron_tf.solve.lp import SolverConfig, solve_lp


def node_ratios(dag: Dag, ratios: np.ndarray) -> np.ndarray:
    """Per-node ratios of a (pp, vpp, M) plan on `dag`."""
    out = np.zeros(len(dag.nodes))
    for i, nd in enumerate(dag.nodes):
        if nd.kind is NodeKind.BACKWARD:
            out[i] = ratios[nd.rank, nd.chunk, nd.microbatch]
    return out


def splice(ratios: np.ndarray, count: int, cap: float, at: int, shift: int) -> np.ndarray:
    """`ratios` with `count` microbatches at ratio `cap` inserted, on rank r before microbatch
    at + shift * r."""
    pp, vpp, m = ratios.shape
    out = np.empty((pp, vpp, m + count))
    for r in range(pp):
        p = at + shift * r
        out[r] = np.concatenate([ratios[r, :, :p], np.full((vpp, count), cap), ratios[r, :, p:]], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="1f1b", choices=("1f1b", "interleaved"))
    parser.add_argument("--pp", type=int, default=4)
    parser.add_argument("--vpp", type=int, default=1)
    parser.add_argument("--ms", default="8,16,24,32", help="microbatch counts, ascending")
    parser.add_argument("--cap", type=float, default=0.2)
    parser.add_argument("--comm", type=float, default=0.0)
    parser.add_argument("--unbalanced", action="store_true", help="per-rank costs in [0.5, 1.5]")
    parser.add_argument("--shifts", default="0,1", help="per-rank offsets of the spliced block")
    args = parser.parse_args()
    ms = [int(x) for x in args.ms.split(",")]
    rng = np.random.default_rng(0)
    costs = (
        [tuple(float(x) for x in rng.uniform(0.5, 1.5, 3)) for _ in range(args.pp)]
        if args.unbalanced
        else [(1.0, 1.0, 1.0)]
    )
    solved = {}
    for m in ms:
        spec = ScheduleSpec(kind=args.kind, pp=args.pp, vpp=args.vpp, microbatches=m)
        profile = synthetic_profile(spec, costs, comm=args.comm)
        dag = build_dag(spec, CostModel.from_profile(profile), "megatron")
        result = solve_lp(dag, SolverConfig(max_freeze_ratio=args.cap, min_trained_microbatches=0))
        solved[m] = (dag, result)
        base = result.baseline_makespan
        print(f"M={m}: T* {result.lp_makespan:.6f} (nothing frozen: {base:.6f})")
    t = [solved[m][1].lp_makespan for m in ms]
    steps = [(t[i + 1] - t[i]) / (ms[i + 1] - ms[i]) for i in range(len(ms) - 1)]
    print("T* increments per microbatch:", ", ".join(f"{x:.6f}" for x in steps))
    big = ms[-1]
    dag, best_big = solved[big]
    step = args.pp if args.kind == "interleaved" else 1  # keep microbatch groups whole
    for m in ms[:-1]:
        ratios = solved[m][1].ratios
        for shift in (int(x) for x in args.shifts.split(",")):
            spans = []
            reach = shift * (args.pp - 1)  # rank pp - 1 inserts `reach` after rank 0
            for at in range(max(0, -reach), m + 1 - max(0, reach), step):
                spliced = splice(ratios, big - m, args.cap, at, shift)
                spans.append((evaluate(dag, node_ratios(dag, spliced)).makespan, at))
            span, at = min(spans)
            gap = span / best_big.lp_makespan - 1
            print(
                f"M={m} plan spliced to M={big} at {at}, shift {shift}: {span:.6f} against T* "
                f"{best_big.lp_makespan:.6f} ({gap:+.2e})"
            )


if __name__ == "__main__":
    main()
