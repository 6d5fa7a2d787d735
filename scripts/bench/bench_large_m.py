"""How pass 1's optimum T* grows with the number of microbatches M, and what a periodic plan
misses (docs/lp.md, section 8: the lead for large M).

    .venv/bin/python scripts/bench/bench_large_m.py                      # 1F1B pp 4, 1:1:1
    .venv/bin/python scripts/bench/bench_large_m.py --kind interleaved --vpp 2 --ms 8,16,24,32,40
    .venv/bin/python scripts/bench/bench_large_m.py --unbalanced --comm 0.05 --ms 8,16,24,32,40

For each M it solves the LP (GLOP, k_min 0) and prints T* and its increments per microbatch.
Then it splices each smaller M's plan: K = M_max - M microbatches frozen uniformly at the cap,
inserted at every position in turn (or every `--at-step`-th), evaluated on the M_max
schedule's DAG; the best splice is printed against T*(M_max). Rank r inserts its block `shift`
x r microbatches later than rank 0 (`--shifts`, default 0 and 1): at shift 0 the inserted
block's backwards are not a cut of the steady state (a path can hop ranks past them), at shift
1 on 1F1B they are. With `--unsolved-largest` the largest M is only evaluated, not solved
(GLOP does not finish at pp 64), and the splice is compared with T* extrapolated from the last
increment (not a bound) and with `--bound`, a proven lower bound such as `solve`'s dual bound.

    .venv/bin/python scripts/bench/bench_large_m.py --ms 16,32                 # shift 1 reaches T*
    .venv/bin/python scripts/bench/bench_large_m.py --pp 8 --unbalanced --comm 0.05 --cap 0.3 \
        --ms 32,48,64,80 --shifts=-2,-1,0,1,2
    .venv/bin/python scripts/bench/bench_large_m.py --pp 64 --ms 192,256,1024 --unsolved-largest \
        --shifts 1 --at-step 16 --bound 2991.535856       # the bound: PDLP's, docs/lp.md 3.1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.schedule.costs import CostModel, synthetic_profile
from megatron_tf.schedule.dag import Dag, build_dag
from megatron_tf.solve.critical_path import evaluate
from megatron_tf.solve.lp import SolverConfig, solve_lp


def plan_on(dag: Dag) -> Callable[[np.ndarray], np.ndarray]:
    """Per-node ratios of a (pp, vpp, M) plan on `dag`; the backward index is built once, since
    one DAG evaluates every insertion point."""
    nodes = dag.freezable_nodes()
    where = tuple(
        np.array([getattr(dag.nodes[i], f) for i in nodes]) for f in ("rank", "chunk", "microbatch")
    )

    def node_ratios(ratios: np.ndarray) -> np.ndarray:
        out = np.zeros(len(dag.nodes))
        out[nodes] = ratios[where]
        return out

    return node_ratios


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
    parser.add_argument("--at-step", type=int, help="insertion points tried (default 1; pp)")
    parser.add_argument(
        "--unsolved-largest",
        action="store_true",
        help="do not solve the largest M: splice against the extrapolated T*",
    )
    parser.add_argument("--bound", type=float, help="a proven lower bound on T*(largest M)")
    args = parser.parse_args()
    ms = [int(x) for x in args.ms.split(",")]
    if args.unsolved_largest and len(ms) < 3:
        parser.error("--unsolved-largest needs two solved M below the largest (--ms)")
    rng = np.random.default_rng(0)
    costs = (
        [tuple(float(x) for x in rng.uniform(0.5, 1.5, 3)) for _ in range(args.pp)]
        if args.unbalanced
        else [(1.0, 1.0, 1.0)]
    )

    def dag_for(m: int) -> Dag:
        spec = ScheduleSpec(kind=args.kind, pp=args.pp, vpp=args.vpp, microbatches=m)
        profile = synthetic_profile(spec, costs, comm=args.comm)
        return build_dag(spec, CostModel.from_profile(profile), "megatron")

    big = ms[-1]
    ratios: dict[int, np.ndarray] = {}
    t_star: dict[int, float] = {}
    for m in ms[:-1] if args.unsolved_largest else ms:
        cpu = time.process_time()
        config = SolverConfig(max_freeze_ratio=args.cap, min_trained_microbatches=0)
        result = solve_lp(dag_for(m), config)
        ratios[m], t_star[m] = result.ratios, result.lp_makespan
        print(
            f"M={m}: T* {result.lp_makespan:.6f} (nothing frozen: "
            f"{result.baseline_makespan:.6f}; {time.process_time() - cpu:.1f} s CPU)"
        )
    solved_ms = sorted(t_star)
    t = [t_star[m] for m in solved_ms]
    steps = [(t[i + 1] - t[i]) / (solved_ms[i + 1] - solved_ms[i]) for i in range(len(t) - 1)]
    print("T* increments per microbatch:", ", ".join(f"{x:.6f}" for x in steps))
    if args.unsolved_largest:
        # an extrapolation, not a bound: T* is affine in M only once M is large enough
        reference = t[-1] + steps[-1] * (big - solved_ms[-1])
        what = "the extrapolated T*"
        print(f"M={big}: not solved; T* extrapolated from the last increment: {reference:.6f}")
    else:
        reference, what = t_star[big], "T*"
    dag = dag_for(big)
    node_ratios = plan_on(dag)
    step = args.at_step or (args.pp if args.kind == "interleaved" else 1)  # groups whole
    for m in ms[:-1]:
        for shift in (int(x) for x in args.shifts.split(",")):
            spans = []
            reach = shift * (args.pp - 1)  # rank pp - 1 inserts `reach` after rank 0
            for at in range(max(0, -reach), m + 1 - max(0, reach), step):
                spliced = splice(ratios[m], big - m, args.cap, at, shift)
                spans.append((evaluate(dag, node_ratios(spliced)).makespan, at))
            span, at = min(spans)
            bound = "" if args.bound is None else f"; {span / args.bound - 1:+.2e} over the bound"
            print(
                f"M={m} plan spliced to M={big} at {at}, shift {shift}: {span:.6f} against {what} "
                f"{reference:.6f} ({span / reference - 1:+.2e}{bound})"
            )


if __name__ == "__main__":
    main()
