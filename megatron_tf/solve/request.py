"""Everything `timelyfreeze solve` can be asked for, as one library call: `solve_request`.

A plan at a fixed cap, a Pareto sweep over caps, both, or the cap chosen from the loss-cost
model (`--max-freeze-ratio auto`). The command parses its flags into a `SolveRequest`, calls
`solve_request`, saves and renders what comes back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from megatron_tf.errors import ConfigError
from megatron_tf.formats.profile import Profile
from megatron_tf.freeze.config import DEFAULT_MIN_SAVING
from megatron_tf.schedule.dag import Dag
from megatron_tf.solve.budget import BudgetChoice, LossCost, choose_budget
from megatron_tf.solve.lp import Progress, SolverConfig
from megatron_tf.solve.planner import SolveOutcome, profile_dag, solve_profile, stage_param_weights
from megatron_tf.solve.sweep import SweepPoint, sweep

__all__ = ["SolveAnswer", "SolveRequest", "solve_request"]


@dataclass(frozen=True, slots=True)
class SolveRequest:
    """What to solve. `config.max_freeze_ratio` is ignored under `auto_budget`."""

    config: SolverConfig
    sweep: tuple[float, ...] | None = None
    """Caps of a Pareto sweep (solved before the plan, if a plan is wanted too)."""
    plan: bool = True
    """Whether to solve for a plan (a sweep alone needs none)."""
    auto_budget: bool = False
    """Choose the cap by the loss-cost model (needs `noise_scale` and `batch_samples`)."""
    noise_scale: float | None = None
    """The measured gradient noise scale B_noise in samples."""
    batch_samples: int | None = None
    """Samples per iteration (micro batch x microbatches x dp)."""
    min_saving: float = DEFAULT_MIN_SAVING
    """The least predicted time saving for which auto freezes (`--auto-min-saving`)."""
    threads: int | None = None
    """Caps the auto budget or the sweep solves at once (None: one per usable core)."""

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.threads is not None and not self.auto_budget and self.sweep is None:
            raise ConfigError("--threads applies to --max-freeze-ratio auto and --sweep (caps)")

    def loss_cost(self) -> LossCost:
        """The loss-cost model of `--max-freeze-ratio auto`; ConfigError names a missing flag."""
        if self.noise_scale is None:
            raise ConfigError(
                "--max-freeze-ratio auto needs --noise-scale (pretrain --noise-probe-at)"
            )
        if self.batch_samples is None or self.batch_samples < 1:
            raise ConfigError("--max-freeze-ratio auto needs --batch-samples >= 1")
        return LossCost(self.noise_scale, self.batch_samples, min_saving=self.min_saving)


@dataclass(frozen=True, slots=True)
class SolveAnswer:
    """What was solved: the sweep's points, the budget choice, the plan (each if asked for)."""

    dag: Dag
    synthetic: bool = False
    """The profile holds synthetic (what-if) costs: times are in their unit, not seconds."""
    points: list[SweepPoint] | None = None
    budget: BudgetChoice | None = None
    outcome: SolveOutcome | None = None
    """The plan; None when none was asked for. When the auto budget chooses cap 0 it is the
    plan at cap 0 (every ratio 0: training with it is the baseline)."""


def solve_request(
    profile: Profile, request: SolveRequest, *, progress: Progress | None = None
) -> SolveAnswer:
    """Solve what `request` asks for on `profile` (raises ConfigError / SolverError)."""
    config = request.config
    dag = profile_dag(profile, config.comm_model)
    synthetic = profile.provenance.get("source") == "synthetic"
    points = None
    if request.sweep is not None:
        weights = stage_param_weights(profile) if config.weighting == "params" else None
        points = sweep(
            dag,
            request.sweep,
            config,
            stage_weights=weights,
            threads=request.threads,
            progress=progress,
        )
    if not request.plan:
        return SolveAnswer(dag=dag, synthetic=synthetic, points=points)
    if request.auto_budget:
        budget = choose_budget(
            profile, request.loss_cost(), config, threads=request.threads, progress=progress
        )
        outcome = budget.outcome
        if outcome is None:  # cap 0: a plan that freezes nothing, so `pretrain --plan` runs
            unfrozen = dataclasses.replace(config, max_freeze_ratio=0.0)
            outcome = solve_profile(profile, unfrozen, progress=progress)
        return SolveAnswer(
            dag=dag, synthetic=synthetic, points=points, budget=budget, outcome=outcome
        )
    outcome = solve_profile(profile, config, progress=progress)
    return SolveAnswer(dag=dag, synthetic=synthetic, points=points, outcome=outcome)
