"""In-job planning (`--plan auto`, drift re-profiling, re-pricing): measure, solve, broadcast.

The measurement reuses the profiler's loop (`profile/runner.py`, `measure_phases`): K rounds, each
one iteration with nothing frozen and one with every unit frozen (interleaved, so a load change
biases neither phase), forward and backward only. No optimizer step
runs and the trainer zeroes the gradient buffers at the start of every training step, so the
measurement iterations change neither the weights nor the optimizer, scheduler, data position or
RNG (the profiler feeds its own seeded batches). Rank 0 builds the profile and solves the LP
with the run's `--max-freeze-ratio`, writing profile.json and plan.json under `out_dir` for the
record; `broadcast_plan` hands the plan to every rank.

The three steps are separate calls because the solve may run on a thread beside training
(`--replan-lag`, train/pending.py): only the measurement and the broadcast involve every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_tf.formats.layout import ModelConfig, ParallelConfig
from megatron_tf.formats.plan import save_plan
from megatron_tf.formats.profile import Profile, load_profile, save_profile
from megatron_tf.profile.config import ProfileConfig
from megatron_tf.profile.runner import gather_profile, measure_phases
from megatron_tf.solve.budget import BudgetCurve, LossCost, budget_curve, choose_budget
from megatron_tf.solve.lp import SolverConfig
from megatron_tf.solve.planner import solve_profile
from megatron_tf.solve.progress import solve_status
from megatron_tf.train.pending import SolvedPlan
from megatron_tf.train.plan_source import PlanSource, from_plan

__all__ = ["broadcast_plan", "measure_profile", "reprice", "solve_in_job"]


def measure_profile(
    chunks: list[torch.nn.Module],
    model: ModelConfig,
    parallel: ParallelConfig,
    *,
    profile_iters: int,
    iteration: int,
    out_dir: Path,
) -> Profile | None:
    """Measure `chunks` on the current layout; rank 0 gets the profile (saved under `out_dir`),
    the other ranks None. Nothing may be frozen: the caller removes its freeze runtime first.
    `iteration` goes into the profile's provenance. Call on every rank."""
    config = ProfileConfig(iters=profile_iters, warmup_iters=1)
    timings = measure_phases(chunks, model, parallel, config)
    provenance = {
        "model": model.to_dict(),
        "parallel": parallel.to_dict(),
        "source": f"in-job profile at iteration {iteration}",
    }
    profile = gather_profile(
        timings, parallel.schedule_spec(), config, lambda: provenance, chunks=chunks
    )
    if profile is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_profile(profile, out_dir / "profile.json")
    return profile


def solve_in_job(
    profile: Profile, budget: float | LossCost, source: str, out_dir: Path
) -> SolvedPlan:
    """Rank 0: the optimal plan for `profile`, named `source`, saved as `out_dir`/plan.json.

    `budget` is the cap on the mean freeze ratio, or the loss cost `choose_budget` weighs
    against the speedup (`--max-freeze-ratio auto`); the reason it gives comes back with the
    plan (empty for a fixed cap)."""
    why = ""
    with solve_status() as progress:  # --solver auto; a long solve says what it is doing
        if isinstance(budget, LossCost):
            choice = choose_budget(profile, budget, progress=progress)
            why = choice.reason
            # Cap 0 when freezing cannot pay: an all-zero plan, nothing frozen.
            outcome = choice.outcome or solve_profile(
                profile, SolverConfig(max_freeze_ratio=0.0), progress=progress
            )
        else:
            outcome = solve_profile(
                profile, SolverConfig(max_freeze_ratio=float(budget)), progress=progress
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_plan(outcome.plan, out_dir / "plan.json")
    return from_plan(outcome.plan, source=source).to_dict(), why


def reprice(
    profile_path: Path,
    cost: LossCost,
    *,
    curves: dict[str, BudgetCurve],
    source: str,
    out_dir: Path,
) -> SolvedPlan:
    """Rank 0: choose the cap again at a new loss cost (`--reprice-every`) and solve its plan.

    Only the loss cost changed since the plan was solved, so the speed curve of
    `profile_path` (the in-job profile of `--plan auto`, or `--reprice-profile`) is re-read,
    not re-measured; it is solved once and kept in `curves`."""
    key = str(profile_path)
    if key not in curves:
        curves[key] = budget_curve(load_profile(profile_path))
    curve = curves[key]
    choice = curve.choose(cost)
    outcome = choice.outcome or solve_profile(curve.profile, SolverConfig(max_freeze_ratio=0.0))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_plan(outcome.plan, out_dir / "plan.json")
    return from_plan(outcome.plan, source=source).to_dict(), choice.reason


def broadcast_plan(solved: SolvedPlan | None) -> tuple[PlanSource, str]:
    """Rank 0's solved plan (None elsewhere) on every rank. Call on every rank."""
    box: list[Any] = [solved]
    dist.broadcast_object_list(box, src=0)
    plan, why = box[0]
    return PlanSource.from_dict(plan), why
