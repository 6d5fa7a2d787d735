"""From a profile to a plan: build the DAG, solve the LP, fill `plan.json`.

This is the library function behind `timelyfreeze solve`; tests and scripts call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megatron_tf.formats.plan import Plan, Predicted, SolverInfo
from megatron_tf.formats.profile import Profile, profile_sha256
from megatron_tf.formats.schedule import ScheduleRecord
from megatron_tf.schedule.costs import CostModel
from megatron_tf.schedule.dag import Dag, build_dag
from megatron_tf.solve.lp import LpResult, Progress, SolverConfig, solve_lp


@dataclass(frozen=True, slots=True)
class SolveOutcome:
    """A solved profile: the plan to save, the LP's details, and the DAG it was solved on."""

    plan: Plan
    result: LpResult
    dag: Dag

    def summary(self) -> dict[str, Any]:
        """What `solve --json` prints (times in seconds, ratios in [0, 1])."""
        r = self.result
        return {
            "baseline_makespan": r.baseline_makespan,
            "makespan": r.makespan,
            "predicted_speedup": r.speedup,
            "mean_freeze_ratio": r.mean_freeze_ratio,
            "per_stage_mean_freeze_ratio": r.per_rank_mean_freeze_ratio,
            "solve_seconds": r.seconds,
            "status": r.status,
            "solver": r.solver,
            "dual_bound": r.extras.get("dual_bound"),
            "certified_gap": r.extras.get("certified_gap"),
            "lp_makespan": r.lp_makespan,
            "max_freeze_ratio": self.plan.max_freeze_ratio,
            "comm_model": self.plan.comm_model,
            "schedule": self.plan.schedule.model_dump(),
            "num_variables": r.num_variables,
            "num_constraints": r.num_constraints,
            "first_stage_pinned": list(r.first_stage_pinned),
        }


def profile_dag(profile: Profile, comm_model: str) -> Dag:
    """The iteration DAG of a profile's schedule and costs (the same one `simulate` uses)."""

    return build_dag(profile.spec, CostModel.from_profile(profile), comm_model)


def stage_param_weights(profile: Profile) -> dict[tuple[int, int], float] | None:
    """Parameter count per (rank, chunk) from `stages[].units[].params`; None if incomplete."""
    weights: dict[tuple[int, int], float] = {}
    for stage in profile.stages:
        if not stage.units or any(unit.params is None for unit in stage.units):
            return None
        weights[(stage.rank, stage.chunk)] = float(sum(unit.params or 0 for unit in stage.units))
    return weights


def solve_profile(
    profile: Profile, config: SolverConfig, *, progress: Progress | None = None
) -> SolveOutcome:
    """Optimal plan for `profile` under `config` (raises SolverError / ConfigError).

    `progress` gets one line before each step (the CLI shows it while a long solve runs)."""
    if progress is not None:
        progress(f"building the DAG of {profile.spec.describe()}")
    dag = profile_dag(profile, config.comm_model)
    weights = stage_param_weights(profile) if config.weighting == "params" else None
    result = solve_lp(dag, config, stage_weights=weights, progress=progress)
    return SolveOutcome(plan=make_plan(result, profile, config), result=result, dag=dag)


def make_plan(result: LpResult, profile: Profile, config: SolverConfig) -> Plan:
    return Plan(
        schedule=ScheduleRecord.from_spec(profile.spec),
        profile_sha256=profile_sha256(profile),
        max_freeze_ratio=config.max_freeze_ratio,
        tolerance=config.tolerance,
        min_trained_microbatches=config.min_trained_microbatches,
        comm_model=config.comm_model,  # type: ignore[arg-type]
        weighting=config.weighting,  # type: ignore[arg-type]
        ratios=result.ratios.tolist(),
        predicted=Predicted(
            baseline_makespan=result.baseline_makespan,
            makespan=result.makespan,
            speedup=result.speedup,
            synthetic=profile.provenance.get("source") == "synthetic",
        ),
        solver=SolverInfo(
            name=result.solver,
            status=result.status,
            seconds=result.seconds,
            first_stage_pinned=list(result.first_stage_pinned),
            extras=dict(result.extras),
        ),
    )
