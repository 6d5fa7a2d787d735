"""Starting bases for a sequence of caps, and a dual-simplex pass 1: the variants measured.

    .venv/bin/python scripts/bench/bench_warm_variants.py --case 8,2,64
    .venv/bin/python scripts/bench/bench_warm_variants.py --case 16,4,128 --comm-model dataflow

`solve_caps` (solve/lp.py) keeps one of these: caps descending, pass 1 from the r = 0 schedule,
pass 2 by the dual simplex from the previous cap's pass-2 basis. This script measures it next to
the others (docs/lp.md, section 3.2), on the auto budget's grid of caps and synthetic costs
1,1,1, and prints CPU seconds and GLOP pivots of every variant; T* is checked against the
first variant on every cap. First-stage zeros are left out (k_min 0): they are the same
extra step in every variant. `--single` also solves pass 1 of one cap by the dual simplex from a
dual-feasible start (the r = 0 schedule's basis with the ratios on its longest path at 1).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

# (name, order, pass-1 start, pass-1 by the dual simplex, pass-2 start, pass-2 by the dual simplex)
# starts: "crash" the r = 0 schedule, "prev1"/"prev2" the previous cap's pass-1/pass-2 basis,
# "new1" this cap's pass-1 basis
VARIANTS = [
    ("cold (each cap alone)", "desc", "crash", False, "new1", False),
    ("kept: desc, pass 2 dual from prev pass 2", "desc", "crash", False, "prev2", True),
    ("asc, pass 2 dual from prev pass 2", "asc", "crash", False, "prev2", True),
    ("asc, pass 2 primal from prev pass 2", "asc", "crash", False, "prev2", False),
    ("asc, pass 1 primal from prev pass 1", "asc", "prev1", False, "new1", False),
    ("desc, pass 1 dual from prev pass 1", "desc", "prev1", True, "new1", False),
    ("desc, both passes dual from prev", "desc", "prev1", True, "prev2", True),
    ("asc, pass 1 primal from prev pass 2", "asc", "prev2", False, "new1", False),
    ("asc, both passes primal from prev pass 2", "asc", "prev2", False, "prev2", False),
    ("asc, pass 1 primal, pass 2 dual, both from prev 2", "asc", "prev2", False, "prev2", True),
]


class _Start:
    """A bare basis in the shape `_GlopLp.solve` reads from a solution (`.basis`)."""

    def __init__(self, basis: Any) -> None:
        self.basis = basis

    def HasField(self, _: str) -> bool:  # noqa: N802 (the protobuf method it stands in for)
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="8,2,64", help="pp,vpp,M")
    parser.add_argument("--comm-model", default="megatron", choices=["megatron", "dataflow"])
    parser.add_argument("--single", type=float, default=0.2, help="cap of the pass-1 test")
    parser.add_argument(
        "--only", help="comma-separated indices into VARIANTS (0 = cold), or none; default all"
    )
    parser.add_argument("--no-single", action="store_true", help="skip the pass-1 test")
    args = parser.parse_args()

    import numpy as np
    from ortools.math_opt import solution_pb2

    from megatron_tf.formats.schedule import ScheduleSpec
    from megatron_tf.schedule.costs import CostModel, synthetic_profile
    from megatron_tf.schedule.dag import build_dag
    from megatron_tf.solve.budget import DEFAULT_CANDIDATES
    from megatron_tf.solve.lp import SolverConfig, _GlopLp, _iterations
    from megatron_tf.solve.reduce import reduce_dag

    pp, vpp, m = (int(x) for x in args.case.split(","))
    spec = ScheduleSpec(kind="1f1b" if vpp == 1 else "interleaved", pp=pp, vpp=vpp, microbatches=m)
    profile = synthetic_profile(spec, [(1.0, 1.0, 1.0)])
    dag = build_dag(spec, CostModel.from_profile(profile), args.comm_model)
    prec = reduce_dag(dag)
    config = SolverConfig(comm_model=args.comm_model, solver="glop", min_trained_microbatches=0)
    caps = sorted(c for c in DEFAULT_CANDIDATES if c > 0)
    print(f"{spec.describe()}, {args.comm_model}: {len(caps)} caps {caps[0]:g}-{caps[-1]:g}")
    reference: dict[float, float] = {}
    chosen = VARIANTS
    if args.only == "none":
        chosen = []
    elif args.only:
        chosen = [VARIANTS[int(i)] for i in args.only.split(",")]
    for name, order, p1, p1_dual, p2, p2_dual in chosen:
        lp = _GlopLp(dag, prec, config, None)
        lp.solve(pass_number=1)  # the first GLOP call of a model sets things up: off the clock
        prev1 = prev2 = None
        pivots = [0, 0]
        cpu0 = time.process_time()
        for cap in sorted(caps, reverse=order == "desc"):
            lp.set_cap(cap)
            start1 = {"crash": None, "prev1": prev1, "prev2": prev2}[p1]
            if start1 is None:
                first, _ = lp.solve(pass_number=1)
            else:
                first, _ = lp.solve(pass_number=1, basis=start1, dual=p1_dual)
            lp.minimise_freezing(first.solutions[0].primal_solution.objective_value)
            start2 = first.solutions[0] if p2 == "new1" or prev2 is None else prev2
            dual2 = p2_dual and start2 is prev2
            second, _ = lp.solve(pass_number=2, basis=start2, dual=dual2)
            pivots[0] += _iterations(first)
            pivots[1] += _iterations(second)
            prev1, prev2 = first.solutions[0], second.solutions[0]
            t_star = first.solutions[0].primal_solution.objective_value * lp.scale
            if cap in reference:
                assert abs(t_star - reference[cap]) <= 1e-9 * reference[cap], (name, cap)
            reference.setdefault(cap, t_star)
        cpu = time.process_time() - cpu0
        print(f"  {name:<44} {cpu:6.2f} s CPU, {pivots[0]:6d} + {pivots[1]:6d} pivots")

    if args.no_single:
        return
    # One cap, pass 1: primal simplex from the r = 0 schedule (today) against the dual simplex
    # from a dual-feasible start. In the r = 0 basis each time variable is basic on its tight
    # row, so the row duals are one unit of flow along the longest path back from T; a ratio on
    # that path has reduced cost -(its saving) < 0 at its lower bound, and at its upper bound
    # (1) it is dual feasible. Every other nonbasic column already is.
    lp = _GlopLp(
        dag, prec, SolverConfig(**{**config.to_dict(), "max_freeze_ratio": args.single}), None
    )
    lp.solve(pass_number=1)
    basis = lp._crash_basis()
    _, tight = prec.baseline_values()
    on_path = np.zeros(prec.num_rows)
    j = prec.num_time_vars
    while j >= 0:
        on_path[tight[j]] = 1.0
        j = int(prec.base[tight[j]])
    rows = np.repeat(np.arange(prec.num_rows), np.diff(prec.term_ptr))
    reduced = np.zeros(prec.freezable.size)
    np.add.at(reduced, prec.term_r, -on_path[rows] * prec.term_coef)
    flipped = np.nonzero(reduced < 0)[0]
    for k in flipped.tolist():
        basis.variable_status.values[lp.r0 + k] = solution_pb2.BASIS_STATUS_AT_UPPER_BOUND
    print(f"pass 1 alone at cap {args.single:g}:")
    for name, start, dual in (
        ("primal simplex from the r = 0 schedule", None, False),
        ("dual simplex from the r = 0 schedule (GLOP flips)", _Start(lp._crash_basis()), True),
        (f"dual simplex, longest-path ratios at 1 ({flipped.size})", _Start(basis), True),
    ):
        cpu0 = time.process_time()
        if start is None:
            result, _ = lp.solve(pass_number=1)
        else:
            result, _ = lp.solve(pass_number=1, basis=start, dual=dual)
        cpu = time.process_time() - cpu0
        t_star = result.solutions[0].primal_solution.objective_value * lp.scale
        print(f"  {name:<52} {cpu:6.2f} s CPU, {_iterations(result):6d} pivots, T* {t_star:.9g}")


if __name__ == "__main__":
    main()
