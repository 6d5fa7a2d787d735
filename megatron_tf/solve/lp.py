"""The freeze-ratio LP (docs/lp.md) on OR-Tools GLOP or PDLP, built sparsely from the `Dag`.

Variables: a start time per merge point of the DAG (solve/reduce.py substitutes the rest),
the iteration time T, and a freeze ratio per backward node that can save time (saving > 0).
A backward's duration `duration - saving * r` is substituted into the rows, so there is one
row per (reduced) DAG edge and one budget row per (rank, chunk):

    t_b - t_a + sum_(i on the path a -> b) saving_i * r_i >= duration of that path
    T   - t_a + ...                                    >= ...     (paths into a sink)
    sum_m r_(rank,chunk,m) <= M * max_freeze_ratio     accuracy budget
    sum_m (1 - r_(rank,chunk,m)) >= k_min              keep-training floor (same row)

Pass 1 minimises T (T*). Pass 2 bounds T <= T* (1 + tolerance) and minimises sum w_i r_i:
among the fastest plans, the one that freezes least. Two passes instead of one weighted
objective, because a big-M mix of seconds and ratios is either inexact or badly scaled.

Seconds are rescaled to the mean node duration before solving: GLOP's tolerances are
absolute, and real profiles hold millisecond durations.

First virtual stage (rank 0, chunk 0): the runtime freezes a prefix there, so the embedding
trains only on microbatches with ratio exactly 0 (docs/runtime.md). "At least k_min zeros" is
not linear; after pass 2, if the plan has fewer, the k_min smallest ratios there (ties: the
earliest microbatch) get upper bound 0 and both passes run again, warm-started. A greedy
choice of which microbatches, not an enumeration (docs/lp.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from megatron_tf.errors import ConfigError, SolverError
from megatron_tf.freeze.config import DEFAULT_MAX_FREEZE_RATIO
from megatron_tf.schedule.dag import COMM_MODELS, Dag
from megatron_tf.solve import AUTO_GLOP_MAX_VARIABLES, DEFAULT_PDLP_EPS
from megatron_tf.solve.critical_path import evaluate
from megatron_tf.solve.reduce import Precedence, reduce_dag

Weighting = Literal["uniform", "params"]
WEIGHTINGS: tuple[str, ...] = ("uniform", "params")
SOLVERS: tuple[str, ...] = ("auto", "glop", "pdlp")
"""`--solver`: `glop` (exact simplex), `pdlp` (first-order, to `--pdlp-eps`), `auto` (by size)."""
Progress = Callable[[str], None]
"""Called with a short line before each step of a solve (the CLI shows it as a status)."""

_RATIO_NOISE = 1e-9
"""Solver values this close to 0 or 1 are snapped there (GLOP returns e.g. -3e-17)."""
_PREDICTION_SLACK = 1e-5
"""Largest relative gap allowed between the LP's T and the plan's evaluated makespan."""


@dataclass(kw_only=True, slots=True)
class SolverConfig:
    """Options of `timelyfreeze solve`; every field maps to the flag named in its error."""

    max_freeze_ratio: float = DEFAULT_MAX_FREEZE_RATIO
    """Cap on each (rank, chunk)'s mean freeze ratio over the iteration's microbatches, [0, 1]."""
    tolerance: float = 1e-6
    """Pass 2 may lengthen the iteration by this fraction of pass 1's optimum (relative)."""
    min_trained_microbatches: int = 1
    """Each (rank, chunk) keeps sum over microbatches of (1 - r) at least this (microbatches)."""
    comm_model: str = "megatron"
    """DAG comm model the plan was solved on: `megatron` (P2P rendezvous) or `dataflow`."""
    weighting: str = "uniform"
    """Pass-2 weights: `uniform` (each microbatch counts 1) or `params` (parameter share)."""
    solver: str = "auto"
    """`auto` (GLOP up to AUTO_GLOP_MAX_VARIABLES LP variables, PDLP above), `glop` or `pdlp`."""
    pdlp_eps: float = DEFAULT_PDLP_EPS
    """Relative accuracy of PDLP (both passes) when it is the solver."""

    def __post_init__(self) -> None:
        r = self.max_freeze_ratio
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0.0 <= r <= 1.0:
            raise ConfigError(f"--max-freeze-ratio must lie in [0, 1], got {r!r}")
        t = self.tolerance
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 <= t < 1.0:
            raise ConfigError(f"--tolerance must be a relative tolerance in [0, 1), got {t!r}")
        k = self.min_trained_microbatches
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(
                f"--min-trained-microbatches must be a non-negative integer, got {k!r}"
            )
        if self.comm_model not in COMM_MODELS:
            raise ConfigError(
                f"--comm-model must be one of {', '.join(COMM_MODELS)}, got {self.comm_model!r}"
            )
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(
                f"--weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}"
            )
        if self.solver not in SOLVERS:
            raise ConfigError(f"--solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        e = self.pdlp_eps
        if isinstance(e, bool) or not isinstance(e, int | float) or not 0.0 < e < 1.0:
            raise ConfigError(f"--pdlp-eps must be a relative accuracy in (0, 1), got {e!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class LpResult:
    """An optimal plan on one DAG: ratios, predicted times, and what the solver did."""

    node_ratios: np.ndarray
    """Freeze ratio per DAG node (0 for every node that is not a freezable backward)."""
    ratios: np.ndarray
    """Shape (pp, vpp, microbatches): ratio of backward (rank, chunk, microbatch)."""
    baseline_makespan: float
    """seconds, nothing frozen (evaluated on the DAG)."""
    makespan: float
    """seconds, with `ratios` (evaluated on the DAG, not the solver's T)."""
    lp_makespan: float
    """seconds: pass 1's optimum T*."""
    status: str
    """The solver's status of the last pass (OPTIMAL, or the call raised)."""
    seconds: float
    """Wall time: building both passes, solving, reading back."""
    pass_seconds: tuple[float, float] = (0.0, 0.0)
    """GLOP wall time of pass 1 and pass 2."""
    num_variables: int = 0
    num_constraints: int = 0
    first_stage_pinned: tuple[int, ...] = ()
    """Microbatches of (rank 0, chunk 0) whose ratio was fixed at 0 (pinned_zero and greedy)."""
    extras: dict[str, float] = field(default_factory=dict)
    solver: str = "GLOP"
    """Which solver made the plan: `GLOP` (exact) or `PDLP` (to its eps)."""

    @property
    def speedup(self) -> float:
        return self.baseline_makespan / self.makespan if self.makespan > 0 else 1.0

    @property
    def mean_freeze_ratio(self) -> float:
        """Mean over all backward actions (rank, chunk, microbatch)."""
        return float(self.ratios.mean()) if self.ratios.size else 0.0

    @property
    def per_rank_mean_freeze_ratio(self) -> list[float]:
        return [float(x) for x in self.ratios.reshape(self.ratios.shape[0], -1).mean(axis=1)]


def solve_lp(
    dag: Dag,
    config: SolverConfig,
    *,
    stage_weights: dict[tuple[int, int], float] | None = None,
    precedence: Precedence | None = None,
    pinned_zero: Sequence[int] = (),
    method: Literal["glop", "pdlp"] | None = None,
    pdlp_eps: float | None = None,
    progress: Progress | None = None,
) -> LpResult:
    """Optimal freeze ratios for `dag` under `config` (two passes, GLOP or PDLP by `config.solver`).

    `stage_weights[(rank, chunk)]` is that chunk's parameter share; needed for
    `weighting="params"`, ignored otherwise. `precedence` is `reduce_dag(dag)` when the
    caller solves the same DAG several times (the sweep). `pinned_zero` lists microbatches
    of the first virtual stage whose ratio is fixed at 0 from the start (the tests' enumeration
    of the greedy choice). Raises SolverError when a pass is not OPTIMAL.

    The solver is `method` when given, else `config.solver` (`auto`: GLOP up to
    AUTO_GLOP_MAX_VARIABLES LP variables, PDLP above). PDLP solves both passes with OR-Tools'
    first-order method to relative accuracy `pdlp_eps` (default `config.pdlp_eps`). Its T* is
    approximate, so the plan is not checked against it: `makespan` is still the DAG's longest
    path at the returned ratios, and `extras["lp_gap"]` is makespan / T* - 1. Whatever the
    solver, `extras["dual_bound"]` is a proven lower bound on the best iteration time (from
    pass 1's row duals, `_GlopLp.dual_bound`) and `extras["certified_gap"]` is makespan /
    bound - 1: how far the plan can at most be from the optimum. `progress` is
    called with one line before each step (for a status display on long solves).
    """
    started = time.perf_counter()
    _check_floor(dag, config)
    say = progress if progress is not None else _silent
    if precedence is None:
        say(f"series-reducing the DAG ({len(dag.nodes):,} actions)")
    prec = precedence if precedence is not None else reduce_dag(dag)
    eps = pdlp_eps if pdlp_eps is not None else config.pdlp_eps
    chosen = method if method is not None else pick_solver(config.solver, prec)
    lp = _GlopLp(dag, prec, config, stage_weights, method=chosen, pdlp_eps=eps)
    result, _ = _solve_built(lp, pinned_zero, say, started=started)
    return result


def solve_caps(
    dag: Dag,
    config: SolverConfig,
    caps: Sequence[float],
    *,
    stage_weights: dict[tuple[int, int], float] | None = None,
    precedence: Precedence | None = None,
    warm: bool = True,
    progress: Progress | None = None,
) -> dict[float, LpResult]:
    """`solve_lp` at every `max_freeze_ratio` in `caps` on one DAG (other options from `config`).

    The LP is built once and only the budget rows' bound changes between caps. With `warm`
    (and GLOP), caps are solved in descending order and pass 2 restarts from the previous
    cap's pass-2 basis with the dual simplex: a new cap changes only bounds (the budget rows,
    T's bound), so that basis stays dual feasible. On the auto grid of interleaved pp=16 it
    took 3.3 times fewer pass-2 pivots than starting from pass 1 with the megatron comm model,
    14% fewer with dataflow (docs/lp.md, section 3.2; descending beat ascending there). Pass 1
    still starts from the r = 0 schedule: the previous cap's pass-1 basis, by either simplex
    and in either order, took more pivots than that crash start.

    T* equals a cold solve's; pass 2 may end at another vertex of the same optimal face (the
    same least freezing). When that vertex lacks the first stage's exact zeros, pass 2 is
    redone from pass 1's basis, as a cold solve does, so the zeros fixed are the ones a cold
    solve fixes. `progress` hears each step, prefixed with the cap.
    """
    _check_floor(dag, config)
    unique = sorted({float(c) for c in caps}, reverse=True)
    results: dict[float, LpResult] = {}
    if not unique:
        return results
    say = progress if progress is not None else _silent
    if precedence is None:
        say(f"series-reducing the DAG ({len(dag.nodes):,} actions)")
    prec = precedence if precedence is not None else reduce_dag(dag)
    chosen = pick_solver(config.solver, prec)
    started = time.perf_counter()  # the first cap's seconds include building the LP
    first_config = dataclasses.replace(config, max_freeze_ratio=unique[0])
    lp = _GlopLp(dag, prec, first_config, stage_weights, method=chosen, pdlp_eps=config.pdlp_eps)
    baseline = evaluate(dag).makespan
    previous: Any = None
    for cap in unique:
        if cap != unique[0]:
            started = time.perf_counter()
        lp.set_cap(cap)
        step = functools.partial(_prefixed, say, f"--max-freeze-ratio {cap:g}: ")
        start = previous if warm and chosen == "glop" else None
        results[cap], previous = _solve_built(
            lp, (), step, started=started, pass_two_start=start, baseline=baseline
        )
    return results


def usable_cores() -> int:
    """CPU cores this process may run on (a Slurm allocation or taskset, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def solve_each_cap(
    dag: Dag,
    config: SolverConfig,
    caps: Sequence[float],
    *,
    stage_weights: dict[tuple[int, int], float] | None = None,
    precedence: Precedence | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> dict[float, LpResult]:
    """A cold `solve_lp` at every cap in `caps` (other options from `config`), `threads` at once.

    Each cap is its own LP and solve, exactly as one `solve_lp` call would do it, so the plans
    are the same whatever the number of threads; only the wall time changes. GLOP and PDLP
    run outside Python's lock, so the threads solve in parallel (the auto grid at pp 16 took
    0.52x the wall time on 2 cores, docs/lp.md section 3.3). `threads` None: one per usable
    core, at most one per cap. `progress` hears a line as each cap finishes. A cap that fails
    raises its error."""
    unique = sorted({float(c) for c in caps})
    if not unique:
        return {}
    _check_floor(dag, config)
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    say = progress if progress is not None else _silent
    prec = precedence if precedence is not None else reduce_dag(dag)
    workers = min(len(unique), threads or usable_cores())
    say(f"{len(unique)} caps, {workers} at a time")

    def one(cap: float) -> LpResult:
        capped = dataclasses.replace(config, max_freeze_ratio=cap)
        return solve_lp(dag, capped, stage_weights=stage_weights, precedence=prec)

    results: dict[float, LpResult] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="timelyfreeze-cap")
    try:
        futures = {pool.submit(one, cap): cap for cap in unique}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            say(f"{len(results)} of {len(unique)} caps solved ({workers} at a time)")
    finally:  # on an error, caps not yet started are dropped (running ones end on their own)
        pool.shutdown(wait=len(results) == len(unique), cancel_futures=True)
    return {cap: results[cap] for cap in unique}


def _check_floor(dag: Dag, config: SolverConfig) -> None:
    """k_min > M is infeasible whatever the cap: say so before any solver runs."""
    if config.min_trained_microbatches > dag.spec.microbatches:
        raise SolverError(
            f"infeasible budget: --min-trained-microbatches {config.min_trained_microbatches} "
            f"exceeds the {dag.spec.microbatches} microbatches of an iteration"
        )


def _prefixed(progress: Progress, prefix: str, step: str) -> None:
    progress(prefix + step)


def _solve_built(
    lp: _GlopLp,
    pinned_zero: Sequence[int],
    say: Progress,
    *,
    started: float,
    pass_two_start: Any = None,
    baseline: float | None = None,
) -> tuple[LpResult, Any]:
    """Both passes (and the first-stage re-solve) on the LP as it stands; the result and the
    unpinned pass 2's solution, a dual-feasible start for pass 2 at another cap.

    `pass_two_start`: such a solution from another cap; pass 2 then runs the dual simplex
    from it instead of the primal simplex from pass 1's basis."""
    dag, config, chosen = lp.dag, lp.config, lp.method
    spec = dag.spec
    m = spec.microbatches
    size = f"{chosen.upper()}, {lp.num_variables:,} variables, {lp.num_constraints:,} rows"
    k_min = config.min_trained_microbatches
    pinned = _stage_nodes(dag, pinned_zero)
    lp.pin_to_zero(pinned)
    say(f"pass 1 of 2: shortest iteration ({size})")
    first, t1 = lp.solve(pass_number=1)
    lp.minimise_freezing(first.solutions[0].primal_solution.objective_value)
    say(f"pass 2 of 2: least freezing at that iteration time ({size})")
    if pass_two_start is not None:
        second, t2 = lp.solve(pass_number=2, basis=pass_two_start, dual=True)
    else:
        second, t2 = lp.solve(pass_number=2, basis=first.solutions[0])
    node_ratios = lp.read_ratios(second)
    iterations = [_iterations(first), _iterations(second)]
    unpinned_second = second.solutions[0]
    pins = _first_stage_pins(dag, node_ratios, k_min)
    if pins and pass_two_start is not None:
        # Which zeros get fixed depends on pass 2's vertex: take the cold solve's vertex, so
        # the greedy choice (and T after it) is the cold solve's too.
        say(f"first-stage zeros missing: pass 2 from pass 1's basis ({size})")
        second, extra = lp.solve(pass_number=2, basis=first.solutions[0])
        node_ratios = lp.read_ratios(second)
        t2 += extra
        iterations[1] += _iterations(second)
        pins = _first_stage_pins(dag, node_ratios, k_min)
    if pins:
        # Re-solve with those ratios fixed at 0. Pass 1 starts from its own optimal basis:
        # tightening bounds keeps it dual feasible, so the dual simplex repairs it in few pivots.
        lp.pin_to_zero(pins)
        lp.minimise_time()
        say(f"first-stage zeros fixed: pass 1 again ({size})")
        first, r1 = lp.solve(pass_number=1, basis=first.solutions[0], dual=True)
        lp.minimise_freezing(first.solutions[0].primal_solution.objective_value)
        say(f"first-stage zeros fixed: pass 2 again ({size})")
        second, r2 = lp.solve(pass_number=2, basis=first.solutions[0])
        node_ratios = lp.read_ratios(second)
        t1, t2 = t1 + r1, t2 + r2
        iterations[0] += _iterations(first)
        iterations[1] += _iterations(second)
    # The iteration overhead (gradient finalization) follows the last node whatever the ratios:
    # a constant the LP leaves out and every evaluated makespan includes.
    t_star = first.solutions[0].primal_solution.objective_value * lp.scale
    t_star += dag.iteration_overhead
    # A lower bound on the true optimum from pass 1's row duals, whatever their accuracy.
    bound = lp.dual_bound(first) * lp.scale + dag.iteration_overhead

    ratios = np.zeros((spec.pp, spec.vpp, m))
    backward = dag.freezable_nodes()
    where = tuple(
        np.array([getattr(dag.nodes[i], f) for i in backward], dtype=np.int64)
        for f in ("rank", "chunk", "microbatch")
    )
    ratios[where] = node_ratios[backward]
    if baseline is None:
        baseline = evaluate(dag).makespan
    planned = evaluate(dag, node_ratios).makespan
    gap = planned / t_star - 1.0 if t_star > 0 else 0.0
    slack = config.tolerance + _PREDICTION_SLACK
    if chosen == "glop" and abs(planned - t_star) > slack * max(t_star, 1e-300):
        raise SolverError(
            f"GLOP's optimum ({t_star:.9g} s) and the plan's evaluated iteration time "
            f"({planned:.9g} s) disagree; the profile's durations may span too many orders "
            "of magnitude"
        )
    eps = lp.pdlp_eps
    result = LpResult(
        node_ratios=node_ratios,
        ratios=ratios,
        baseline_makespan=baseline,
        makespan=planned,
        lp_makespan=t_star,
        status="OPTIMAL" if chosen == "glop" else f"OPTIMAL (PDLP, eps {eps:g})",
        solver=chosen.upper(),
        seconds=time.perf_counter() - started,
        pass_seconds=(t1, t2),
        num_variables=lp.num_variables,
        num_constraints=lp.num_constraints,
        first_stage_pinned=tuple(sorted({dag.nodes[i].microbatch for i in (*pinned, *pins)})),
        extras={
            "time_variables": float(lp.prec.num_time_vars),
            "ratio_variables": float(lp.prec.freezable.size),
            "pass1_iterations": float(iterations[0]),
            "pass2_iterations": float(iterations[1]),
            "first_stage_pinned_zero": float(len(pins)),
            "lp_gap": gap,
            # only a finite, positive bound certifies anything (plan.json holds finite floats)
            **(
                {"dual_bound": bound, "certified_gap": planned / bound - 1.0}
                if math.isfinite(bound) and bound > 0
                else {}
            ),
        },
    )
    return result, unpinned_second


def pick_solver(solver: str, prec: Precedence) -> Literal["glop", "pdlp"]:
    """`glop` or `pdlp` for `--solver` on this LP: `auto` decides by the LP's variable count."""
    if solver == "glop" or solver == "pdlp":
        return solver
    variables = prec.num_time_vars + 1 + int(prec.freezable.size)
    return "glop" if variables <= AUTO_GLOP_MAX_VARIABLES else "pdlp"


def _silent(_: str) -> None:
    """The default progress callback: says nothing."""


def _iterations(result: Any) -> int:
    """Simplex pivots (GLOP) or first-order iterations (PDLP) of one solve."""
    stats = result.solve_stats
    return int(stats.simplex_iterations + stats.first_order_iterations)


def _stage_nodes(dag: Dag, microbatches: Sequence[int]) -> list[int]:
    """DAG node of the first virtual stage's freezable action of each microbatch given."""
    wanted = set(microbatches)
    kind = dag.freezable_kind
    return [
        i
        for i, nd in enumerate(dag.nodes)
        if nd.kind is kind and nd.rank == 0 and nd.chunk == 0 and nd.microbatch in wanted
    ]


def _first_stage_pins(dag: Dag, node_ratios: np.ndarray, k_min: int) -> list[int]:
    """Backward nodes of (rank 0, chunk 0) to fix at ratio 0; empty when k_min zeros exist.

    The greedy choice: the k_min smallest ratios, the earliest microbatch on a tie. Already
    zero ones are among them, so they stay zero in the re-solve.
    """
    if k_min <= 0:
        return []
    kind = dag.freezable_kind
    stage = [
        i for i, nd in enumerate(dag.nodes) if nd.kind is kind and nd.rank == 0 and nd.chunk == 0
    ]
    if int(np.count_nonzero(node_ratios[stage] == 0.0)) >= k_min:
        return []
    stage.sort(key=lambda i: (float(node_ratios[i]), dag.nodes[i].microbatch))
    return stage[:k_min]


class _GlopLp:
    """The LP as a MathOpt model proto solved by GLOP.

    The model is assembled from numpy arrays straight into the proto (no per-row Python
    calls into the solver). MathOpt is used rather than pywraplp or model_builder because it
    accepts a starting basis: pass 1 starts from the r = 0 schedule, pass 2 from pass 1's
    optimal basis, which cuts GLOP's pivots by a factor of five to ten on these LPs.

    Variable layout: [0, V) merge-point times, V the iteration time T, V + 1 + k the ratio
    of `prec.freezable[k]`.
    """

    def __init__(
        self,
        dag: Dag,
        prec: Precedence,
        config: SolverConfig,
        stage_weights: dict[tuple[int, int], float] | None,
        *,
        method: str = "glop",
        pdlp_eps: float = 1e-6,
    ) -> None:
        from ortools.math_opt import model_pb2

        self.method = method
        self.pdlp_eps = pdlp_eps
        self.dag = dag
        self.prec = prec
        self.config = config
        duration = np.asarray(dag.duration, dtype=np.float64)
        positive = duration[duration > 0]
        # seconds per LP time unit: GLOP's tolerances are absolute
        self.scale = float(positive.mean()) if positive.size else 1.0
        nt = prec.num_time_vars
        self.t_var = nt
        self.r0 = nt + 1
        nr = prec.freezable.size
        nv = nt + 1 + nr
        self.num_variables = nv

        model = model_pb2.ModelProto(name="timelyfreeze")
        upper = np.full(nv, math.inf)
        upper[self.r0 :] = 1.0
        model.variables.ids.extend(range(nv))
        model.variables.lower_bounds.extend([0.0] * nv)
        model.variables.upper_bounds.extend(upper.tolist())
        model.variables.integers.extend([False] * nv)

        rows, cols, vals = self._precedence_entries()
        self.groups = self._group_members()
        cap = self._budget_cap()
        r_rows = prec.num_rows
        group_rows = [np.full(len(g), r_rows + j) for j, g in enumerate(self.groups)]
        if group_rows:
            rows = np.concatenate([rows, *group_rows])
            cols = np.concatenate([cols, *(self.r0 + g for g in self.groups)])
            vals = np.concatenate([vals, np.ones(sum(len(g) for g in self.groups))])
        num_rows = r_rows + len(self.groups)
        self.num_constraints = num_rows
        order = np.lexsort((cols, rows))  # MathOpt wants row-major, sorted entries
        model.linear_constraints.ids.extend(range(num_rows))
        model.linear_constraints.lower_bounds.extend(
            (prec.const / self.scale).tolist() + [-math.inf] * len(self.groups)
        )
        model.linear_constraints.upper_bounds.extend([math.inf] * r_rows + [cap] * len(self.groups))
        matrix = model.linear_constraint_matrix
        matrix.row_ids.extend(rows[order].tolist())
        matrix.column_ids.extend(cols[order].tolist())
        matrix.coefficients.extend(vals[order].tolist())
        model.objective.linear_coefficients.ids.append(self.t_var)
        model.objective.linear_coefficients.values.append(1.0)
        self.model = model
        self.weights = self._pass_two_weights(stage_weights)

    def _precedence_entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row-wise entries of `t_dst - t_base + sum coef * r >= const` (scaled)."""
        p = self.prec
        ids = np.arange(p.num_rows, dtype=np.int64)
        has_base = p.base >= 0
        per_row = np.diff(p.term_ptr)
        rows = np.concatenate([ids, ids[has_base], np.repeat(ids, per_row)])
        cols = np.concatenate([p.dst, p.base[has_base], self.r0 + p.term_r])
        vals = np.concatenate(
            [np.ones(ids.size), -np.ones(int(has_base.sum())), p.term_coef / self.scale]
        )
        return rows, cols, vals

    def _group_members(self) -> list[np.ndarray]:
        """Ratio indices k per (rank, chunk), for the budget rows."""
        groups: dict[tuple[int, int], list[int]] = {}
        for k, node in enumerate(self.prec.freezable.tolist()):
            nd = self.dag.nodes[node]
            groups.setdefault((nd.rank, nd.chunk), []).append(k)
        self.group_keys = list(groups)
        return [np.asarray(v, dtype=np.int64) for v in groups.values()]

    def _budget_cap(self) -> float:
        """sum_m r <= M * r_max and sum_m (1 - r) >= k_min, merged into one upper bound."""
        m = self.dag.spec.microbatches
        self.cap = min(
            m * self.config.max_freeze_ratio, float(m - self.config.min_trained_microbatches)
        )
        return self.cap

    def _pass_two_weights(self, stage_weights: dict[tuple[int, int], float] | None) -> np.ndarray:
        count = self.prec.freezable.size
        if self.config.weighting == "uniform":
            return np.ones(count)
        if not stage_weights:
            raise ConfigError(
                "--weighting params needs each stage's parameter count, which this profile "
                "does not give (stages[].units[].params); use --weighting uniform"
            )
        weights = np.empty(count)
        for k, node in enumerate(self.prec.freezable.tolist()):
            nd = self.dag.nodes[node]
            share = stage_weights.get((nd.rank, nd.chunk))
            if share is None or not math.isfinite(share) or share < 0:
                raise ConfigError(
                    f"--weighting params: no valid parameter count for rank {nd.rank} "
                    f"chunk {nd.chunk}"
                )
            weights[k] = share
        total = weights.sum()
        # normalised so the objective is O(number of ratios), like the uniform case
        return weights * (count / total) if total > 0 else np.ones(count)

    def _crash_basis(self) -> Any:
        """The r = 0 schedule as a basis: each time variable basic on its tight row."""
        from ortools.math_opt import solution_pb2

        _, tight = self.prec.baseline_values()
        var_status = np.full(self.num_variables, solution_pb2.BASIS_STATUS_AT_LOWER_BOUND)
        var_status[: self.t_var + 1] = solution_pb2.BASIS_STATUS_BASIC
        row_status = np.full(self.num_constraints, solution_pb2.BASIS_STATUS_BASIC)
        row_status[tight] = solution_pb2.BASIS_STATUS_AT_LOWER_BOUND
        basis = solution_pb2.BasisProto()
        basis.variable_status.ids.extend(range(self.num_variables))
        basis.variable_status.values.extend(var_status.tolist())
        basis.constraint_status.ids.extend(range(self.num_constraints))
        basis.constraint_status.values.extend(row_status.tolist())
        return basis

    def set_cap(self, max_freeze_ratio: float) -> None:
        """Back to pass 1 at another `--max-freeze-ratio`: new budget bound, no ratio pinned.

        Only the budget rows' upper bound depends on the cap, so the model is not rebuilt."""
        self.config = dataclasses.replace(self.config, max_freeze_ratio=max_freeze_ratio)
        cap = self._budget_cap()
        bounds = self.model.linear_constraints.upper_bounds
        for j in range(self.prec.num_rows, self.num_constraints):
            bounds[j] = cap
        upper = self.model.variables.upper_bounds
        for k in range(self.r0, self.num_variables):
            upper[k] = 1.0
        self.minimise_time()

    def pin_to_zero(self, nodes: Sequence[int]) -> None:
        """Upper bound 0 on the ratio variables of `nodes` (those without one are 0 anyway)."""
        index = {int(node): k for k, node in enumerate(self.prec.freezable.tolist())}
        for node in nodes:
            k = index.get(int(node))
            if k is not None:
                self.model.variables.upper_bounds[self.r0 + k] = 0.0

    def minimise_time(self) -> None:
        """Back to pass 1: T unbounded above, objective T."""
        self.model.variables.upper_bounds[self.t_var] = math.inf
        objective = self.model.objective.linear_coefficients
        del objective.ids[:]
        del objective.values[:]
        objective.ids.append(self.t_var)
        objective.values.append(1.0)

    def minimise_freezing(self, t_star_scaled: float) -> None:
        """Pass 2: T <= T* (1 + tolerance); objective sum w_k r_k instead of T."""
        # PDLP's T* is only eps-accurate (it may lie a little below the true optimum)
        slack = (
            self.config.tolerance
            if self.method == "glop"
            else max(self.config.tolerance, 10 * self.pdlp_eps)
        )
        self.model.variables.upper_bounds[self.t_var] = t_star_scaled * (1.0 + slack)
        objective = self.model.objective.linear_coefficients
        del objective.ids[:]
        del objective.values[:]
        objective.ids.extend(range(self.r0, self.num_variables))
        objective.values.extend(self.weights.tolist())

    def solve(
        self, *, pass_number: int, basis: Any = None, dual: bool = False
    ) -> tuple[Any, float]:
        """Run GLOP (or PDLP); return (result proto, seconds). Anything but OPTIMAL raises."""
        from ortools.math_opt import (
            callback_pb2,
            model_parameters_pb2,
            parameters_pb2,
            result_pb2,
        )
        from ortools.math_opt.core.python import solver as mathopt_core

        params = parameters_pb2.SolveParametersProto()
        # The r = 0 basis and pass 1's optimal basis (for pass 2) are primal feasible: the
        # primal simplex continues from them. After pinning ratios to 0 only dual feasibility
        # of pass 1's basis survives, so that re-solve asks for the dual simplex.
        params.lp_algorithm = (
            parameters_pb2.LP_ALGORITHM_DUAL_SIMPLEX
            if dual
            else parameters_pb2.LP_ALGORITHM_PRIMAL_SIMPLEX
        )
        # Rows are already well scaled (coefficients +-1 and savings in units of the mean
        # action), and GLOP's own scaling made it pivot 30-40% more on pp=16 vpp=4 schedules.
        params.glop.use_scaling = False
        model_params = model_parameters_pb2.ModelSolveParametersProto()
        solver_type = parameters_pb2.SOLVER_TYPE_GLOP
        if self.method == "pdlp":
            solver_type = parameters_pb2.SOLVER_TYPE_PDLP
            params = parameters_pb2.SolveParametersProto()
            criteria = params.pdlp.termination_criteria.simple_optimality_criteria
            criteria.eps_optimal_absolute = self.pdlp_eps
            criteria.eps_optimal_relative = self.pdlp_eps
            params.pdlp.use_feasibility_polishing = True  # needs the next line (PDLP's rule)
            params.pdlp.handle_some_primal_gradients_on_finite_bounds_as_residuals = False
        elif basis is not None and basis.HasField("basis"):
            model_params.initial_basis.CopyFrom(basis.basis)
        elif pass_number == 1:
            model_params.initial_basis.CopyFrom(self._crash_basis())
        started = time.perf_counter()
        try:
            result = mathopt_core.solve(
                self.model,
                solver_type,
                parameters_pb2.SolverInitializerProto(),
                params,
                model_params,
                None,
                callback_pb2.CallbackRegistrationProto(),
                None,
                None,
            )
        except Exception as exc:  # MathOpt raises StatusNotOk for an invalid model
            name = self.method.upper()
            raise SolverError(f"{name} refused the LP (pass {pass_number}): {exc}") from None
        seconds = time.perf_counter() - started
        reason = result.termination.reason
        if reason != result_pb2.TERMINATION_REASON_OPTIMAL or not result.solutions:
            what = "minimise the iteration time" if pass_number == 1 else "minimise freezing"
            if reason == result_pb2.TERMINATION_REASON_INFEASIBLE:
                raise SolverError(
                    f"infeasible budget: no plan satisfies --max-freeze-ratio "
                    f"{self.config.max_freeze_ratio} with --min-trained-microbatches "
                    f"{self.config.min_trained_microbatches} "
                    f"({self.method.upper()}, pass {pass_number}: {what})"
                )
            name = result_pb2.TerminationReasonProto.Name(reason)
            raise SolverError(
                f"{self.method.upper()} did not find an optimal plan (pass {pass_number}, {what}): "
                f"{name.removeprefix('TERMINATION_REASON_')} {result.termination.detail}".strip()
            )
        return result, seconds

    def dual_bound(self, result: Any) -> float:
        """A proven lower bound on pass 1's optimum (LP time units) from the result's row duals.

        Weak duality with any y >= 0 on the precedence rows: T* >= sum_i y_i b_i minus, per
        (rank, chunk), the sum of its cap largest a_k = sum_i y_i coef_ik over unpinned ratios
        (the budget row's best multiplier, a fractional knapsack), provided y is a flow: into
        each time variable at most what leaves it, into T at most 1. The solver's duals are
        made one by a reverse topological sweep that scales inflows down, so the bound holds
        for approximate (PDLP) duals too, and equals T* for GLOP's optimal ones.
        """
        p = self.prec
        sol = result.solutions[0]
        if not sol.HasField("dual_solution"):
            return -math.inf
        duals = np.zeros(self.num_constraints)
        values = sol.dual_solution.dual_values
        duals[np.asarray(values.ids, dtype=np.int64)] = np.asarray(values.values)
        y = np.maximum(duals[: p.num_rows], 0.0)
        y[~np.isfinite(y)] = 0.0
        # Rows are sorted by dst, and a row's base precedes its dst in topological order, so
        # a time variable's outflow is final when the sweep reaches it.
        nt = p.num_time_vars
        starts = np.searchsorted(p.dst, np.arange(nt + 2)).tolist()
        has_base = p.base >= 0
        out_rows = np.nonzero(has_base)[0]
        by_base = out_rows[np.argsort(p.base[out_rows], kind="stable")]
        out_starts = np.searchsorted(p.base[by_base], np.arange(nt + 1)).tolist()
        by_base_list = by_base.tolist()
        flow = y.tolist()
        for j in range(nt, -1, -1):
            if j == nt:
                cap = 1.0
            else:
                cap = sum(flow[i] for i in by_base_list[out_starts[j] : out_starts[j + 1]])
            lo, hi = starts[j], starts[j + 1]
            inflow = sum(flow[lo:hi])
            if inflow > cap:
                factor = cap / inflow
                flow[lo:hi] = [f * factor for f in flow[lo:hi]]
        y = np.asarray(flow)
        rows_of_terms = np.repeat(np.arange(p.num_rows), np.diff(p.term_ptr))
        a = np.bincount(
            p.term_r,
            weights=y[rows_of_terms] * p.term_coef / self.scale,
            minlength=p.freezable.size,
        )
        upper = np.asarray(self.model.variables.upper_bounds)[self.r0 :]
        a[upper <= 0.0] = 0.0  # a pinned ratio cannot be spent
        budget = 0.0
        whole = int(math.floor(self.cap))
        part = self.cap - whole
        for members in self.groups:
            top = np.sort(a[members])[::-1]
            budget += float(top[:whole].sum())
            if part > 0 and whole < top.size:
                budget += part * float(top[whole])
        return float(y @ (p.const / self.scale)) - budget

    def read_ratios(self, result: Any) -> np.ndarray:
        """Per-node ratios, snapped to [0, 1] and kept inside each budget row."""
        primal = result.solutions[0].primal_solution.variable_values
        values = np.zeros(self.num_variables)
        values[np.asarray(primal.ids, dtype=np.int64)] = np.asarray(primal.values)
        r = np.clip(values[self.r0 :], 0.0, 1.0)
        r[r < _RATIO_NOISE] = 0.0
        r[r > 1.0 - _RATIO_NOISE] = 1.0
        # Snapping may overshoot a budget row by solver noise; shrink that row back to it.
        for members in self.groups:
            total = r[members].sum()
            if total > self.cap:
                r[members] *= self.cap / total
        node_ratios = np.zeros(len(self.dag.nodes))
        node_ratios[self.prec.freezable] = r
        return node_ratios
