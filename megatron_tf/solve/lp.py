"""The freeze-ratio LP (design: LP.md) on OR-Tools GLOP, built sparsely from the shared `Dag`.

Variables: a start time per DAG node, the iteration time T, and a freeze ratio per backward
node that can save time (saving > 0). A backward's duration `duration - saving * r` is
substituted into the rows, so the model has one row per DAG edge, one per sink, and two
budget rows per (rank, chunk):

    s_b - s_a + saving_a * r_a >= duration_a        every edge a -> b
    T   - s_a + saving_a * r_a >= duration_a        every sink a
    sum_m r_(rank,chunk,m) <= M * max_freeze_ratio   accuracy budget
    sum_m (1 - r_(rank,chunk,m)) >= k_min            keep-training floor

Pass 1 minimises T (T*). Pass 2 bounds T <= T* (1 + tolerance) and minimises sum w_i r_i:
among the fastest plans, the one that freezes least. Two passes instead of one weighted
objective, because a big-M mix of seconds and ratios is either inexact or badly scaled.

Seconds are rescaled to the mean node duration before solving: GLOP's tolerances are
absolute, and real profiles hold millisecond durations.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from megatron_tf.errors import ConfigError, SolverError
from megatron_tf.schedule.dag import COMM_MODELS, Dag, NodeKind
from megatron_tf.solve.timing import evaluate

Weighting = Literal["uniform", "params"]
WEIGHTINGS: tuple[str, ...] = ("uniform", "params")

_RATIO_NOISE = 1e-9
"""Solver values this close to 0 or 1 are snapped there (GLOP returns e.g. -3e-17)."""
_PREDICTION_SLACK = 1e-5
"""Largest relative gap allowed between the LP's T and the plan's evaluated makespan."""


@dataclass(kw_only=True, slots=True)
class SolverConfig:
    """Options of `timelyfreeze solve`; every field maps to the flag named in its error."""

    max_freeze_ratio: float = 0.8
    """Cap on each (rank, chunk)'s mean freeze ratio over the iteration's microbatches, [0, 1]."""
    tolerance: float = 1e-6
    """Pass 2 may lengthen the iteration by this fraction of pass 1's optimum (relative)."""
    min_trained_microbatches: int = 1
    """Each (rank, chunk) keeps sum over microbatches of (1 - r) at least this (microbatches)."""
    comm_model: str = "megatron"
    """DAG comm model the plan was solved on: `megatron` (P2P rendezvous) or `dataflow`."""
    weighting: str = "uniform"
    """Pass-2 weights: `uniform` (each microbatch counts 1) or `params` (parameter share)."""

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
    """GLOP's status of the last pass (OPTIMAL, or the call raised)."""
    seconds: float
    """Wall time: building both passes, solving, reading back."""
    pass_seconds: tuple[float, float] = (0.0, 0.0)
    """GLOP wall time of pass 1 and pass 2."""
    num_variables: int = 0
    num_constraints: int = 0
    extras: dict[str, float] = field(default_factory=dict)

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
) -> LpResult:
    """Optimal freeze ratios for `dag` under `config` (two GLOP passes).

    `stage_weights[(rank, chunk)]` is that chunk's parameter share; needed for
    `weighting="params"`, ignored otherwise. Raises SolverError when a pass is not OPTIMAL.
    """
    started = time.perf_counter()
    spec = dag.spec
    m = spec.microbatches
    if config.min_trained_microbatches > m:
        raise SolverError(
            f"infeasible budget: --min-trained-microbatches {config.min_trained_microbatches} "
            f"exceeds the {m} microbatches of an iteration"
        )
    model = _LpModel(dag, config, stage_weights)
    solver = _glop()
    t1 = model.solve_pass(solver, pass_number=1)
    t_star = model.objective_seconds(solver)
    model.pass_two(t_star)
    t2 = model.solve_pass(solver, pass_number=2)
    node_ratios = model.read_ratios(solver)

    ratios = np.zeros((spec.pp, spec.vpp, m))
    bw = model.backward_nodes
    ratios[model.bw_rank, model.bw_chunk, model.bw_microbatch] = node_ratios[bw]
    baseline = evaluate(dag).makespan
    planned = evaluate(dag, node_ratios).makespan
    if t_star > 0 and abs(planned - t_star) > (config.tolerance + _PREDICTION_SLACK) * t_star:
        raise SolverError(
            f"GLOP's optimum ({t_star:.9g} s) and the plan's evaluated iteration time "
            f"({planned:.9g} s) disagree; the profile's durations may span too many orders "
            "of magnitude"
        )
    return LpResult(
        node_ratios=node_ratios,
        ratios=ratios,
        baseline_makespan=baseline,
        makespan=planned,
        lp_makespan=t_star,
        status="OPTIMAL",
        seconds=time.perf_counter() - started,
        pass_seconds=(t1, t2),
        num_variables=model.num_variables,
        num_constraints=model.num_constraints,
    )


def _glop() -> Any:
    from ortools.linear_solver.python import model_builder_helper as mbh

    solver = mbh.ModelSolverHelper("glop")
    if not solver.solver_is_supported():  # pragma: no cover - part of every OR-Tools wheel
        raise SolverError("this OR-Tools build has no GLOP solver")
    return solver


class _LpModel:
    """The sparse LP of one DAG in OR-Tools' model-builder helper (C++ storage, index API).

    Variable layout: [0, N) start times, N the iteration time T, N + 1 + k the ratio of the
    k-th freezable backward node.
    """

    def __init__(
        self,
        dag: Dag,
        config: SolverConfig,
        stage_weights: dict[tuple[int, int], float] | None,
    ) -> None:
        from ortools.linear_solver.python import model_builder_helper as mbh

        self.dag = dag
        self.config = config
        n = len(dag.nodes)
        self.n = n
        duration = np.asarray(dag.duration, dtype=np.float64)
        saving = np.asarray(dag.saving, dtype=np.float64)
        positive = duration[duration > 0]
        # seconds per LP time unit
        self.scale = float(positive.mean()) if positive.size else 1.0

        kinds = [node.kind is NodeKind.BACKWARD for node in dag.nodes]
        self.backward_nodes = np.flatnonzero(kinds)
        bw_nodes = [dag.nodes[i] for i in self.backward_nodes]
        self.bw_rank = np.array([nd.rank for nd in bw_nodes], dtype=np.int64)
        self.bw_chunk = np.array([nd.chunk for nd in bw_nodes], dtype=np.int64)
        self.bw_microbatch = np.array([nd.microbatch for nd in bw_nodes], dtype=np.int64)
        freezable = self.backward_nodes[saving[self.backward_nodes] > 0]
        self.freezable = freezable
        self.var_of_node = np.full(n, -1, dtype=np.int64)
        self.var_of_node[freezable] = n + 1 + np.arange(freezable.size)
        self.t_var = n

        h = mbh.ModelBuilderHelper()
        self.h = h
        num_vars = n + 1 + freezable.size
        lower = np.zeros(num_vars)
        upper = np.full(num_vars, math.inf)
        upper[n + 1 :] = 1.0
        h.add_var_array_with_bounds(lower, upper, np.zeros(num_vars, dtype=bool), "")
        self.num_variables = num_vars
        self._add_precedence_rows(duration / self.scale, saving / self.scale)
        self._add_budget_rows()
        self._weights = self._pass_two_weights(stage_weights)
        h.set_objective_coefficients([self.t_var], [1.0])
        h.set_maximize(False)

    def _add_precedence_rows(self, dur: np.ndarray, sav: np.ndarray) -> None:
        h = self.h
        var_of = self.var_of_node.tolist()
        dur_l = dur.tolist()
        sav_l = sav.tolist()
        has_successor = [False] * self.n
        rows = 0
        for b, preds in enumerate(self.dag.preds):
            for a in preds:
                has_successor[a] = True
                row = h.add_linear_constraint()
                h.set_constraint_lower_bound(row, dur_l[a])
                h.add_term_to_constraint(row, b, 1.0)
                h.add_term_to_constraint(row, a, -1.0)
                if var_of[a] >= 0:
                    h.add_term_to_constraint(row, var_of[a], sav_l[a])
                rows += 1
        for a in range(self.n):
            if not has_successor[a]:
                row = h.add_linear_constraint()
                h.set_constraint_lower_bound(row, dur_l[a])
                h.add_term_to_constraint(row, self.t_var, 1.0)
                h.add_term_to_constraint(row, a, -1.0)
                if var_of[a] >= 0:
                    h.add_term_to_constraint(row, var_of[a], sav_l[a])
                rows += 1
        self.num_constraints = rows

    def _add_budget_rows(self) -> None:
        """sum_m r <= min(M * r_max, M - k_min), per (rank, chunk), as one row."""
        spec = self.dag.spec
        m = spec.microbatches
        cap = min(m * self.config.max_freeze_ratio, float(m - self.config.min_trained_microbatches))
        groups: dict[tuple[int, int], list[int]] = {}
        for node in self.freezable.tolist():
            nd = self.dag.nodes[node]
            groups.setdefault((nd.rank, nd.chunk), []).append(int(self.var_of_node[node]))
        self.groups = groups
        self.cap = cap
        for members in groups.values():
            row = self.h.add_linear_constraint()
            self.h.set_constraint_upper_bound(row, cap)
            self.h.set_constraint_lower_bound(row, -math.inf)
            for var in members:
                self.h.add_term_to_constraint(row, var, 1.0)
            self.num_constraints += 1

    def _pass_two_weights(self, stage_weights: dict[tuple[int, int], float] | None) -> np.ndarray:
        count = self.freezable.size
        if self.config.weighting == "uniform":
            return np.ones(count)
        if not stage_weights:
            raise ConfigError(
                "--weighting params needs each stage's parameter count, which this profile "
                "does not give (stages[].units); use --weighting uniform"
            )
        weights = np.empty(count)
        for k, node in enumerate(self.freezable.tolist()):
            nd = self.dag.nodes[node]
            share = stage_weights.get((nd.rank, nd.chunk))
            if share is None or not math.isfinite(share) or share < 0:
                raise ConfigError(
                    f"--weighting params: no valid parameter share for rank {nd.rank} "
                    f"chunk {nd.chunk}"
                )
            weights[k] = share
        total = weights.sum()
        # normalise so the objective is O(number of ratios), like the uniform case
        return weights * (count / total) if total > 0 else np.ones(count)

    def solve_pass(self, solver: Any, *, pass_number: int) -> float:
        from ortools.linear_solver.python import model_builder_helper as mbh

        started = time.perf_counter()
        solver.solve(self.h)
        status = solver.status()
        if status != mbh.SolveStatus.OPTIMAL:
            what = "minimise the iteration time" if pass_number == 1 else "minimise freezing"
            if status == mbh.SolveStatus.INFEASIBLE:
                raise SolverError(
                    f"infeasible budget: no plan satisfies --max-freeze-ratio "
                    f"{self.config.max_freeze_ratio} with --min-trained-microbatches "
                    f"{self.config.min_trained_microbatches} (GLOP, pass {pass_number}: {what})"
                )
            raise SolverError(
                f"GLOP did not find an optimal plan (pass {pass_number}, {what}): status "
                f"{status.name}; check the profile's durations for extreme values"
            )
        return time.perf_counter() - started

    def objective_seconds(self, solver: Any) -> float:
        return float(solver.objective_value()) * self.scale

    def pass_two(self, t_star_seconds: float) -> None:
        """Fix T <= T* (1 + tolerance) and minimise weighted freezing instead of T."""
        h = self.h
        bound = t_star_seconds / self.scale * (1.0 + self.config.tolerance)
        h.set_var_upper_bound(self.t_var, bound)
        h.set_var_objective_coefficient(self.t_var, 0.0)
        if self.freezable.size:
            h.set_objective_coefficients(
                (self.n + 1 + np.arange(self.freezable.size)).tolist(), self._weights.tolist()
            )

    def read_ratios(self, solver: Any) -> np.ndarray:
        """Per-node ratios from pass 2, snapped to [0, 1] and kept inside each budget row."""
        values = np.asarray(solver.variable_values())
        r = np.clip(values[self.n + 1 :], 0.0, 1.0)
        r[r < _RATIO_NOISE] = 0.0
        r[r > 1.0 - _RATIO_NOISE] = 1.0
        # Snapping may overshoot a budget row by solver noise; shrink that row back to it.
        for members in self.groups.values():
            idx = np.asarray(members) - (self.n + 1)
            total = r[idx].sum()
            if total > self.cap:
                r[idx] *= self.cap / total
        node_ratios = np.zeros(self.n)
        node_ratios[self.freezable] = r
        return node_ratios
