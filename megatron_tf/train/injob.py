"""In-job planning (`--plan auto`, drift re-profiling): profile the live model, solve, broadcast.

The measurement reuses the profiler's loop (`profile/runner.py`, `measure_phases`): K rounds, each
one iteration with nothing frozen and one with every unit frozen (interleaved, so a load change
biases neither phase), forward and backward only. No optimizer step
runs and the trainer zeroes the gradient buffers at the start of every training step, so the
measurement iterations change neither the weights nor the optimizer, scheduler, data position or
RNG (the profiler feeds its own seeded batches). Rank 0 builds the profile, solves the LP with
the run's `--max-freeze-ratio`, writes profile.json and plan.json under `out_dir` for the record,
and broadcasts the plan to every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from megatron_tf.train.plan_source import PlanSource, from_plan

if TYPE_CHECKING:
    from megatron_tf.formats.profile import Profile
    from megatron_tf.train.trainer import Trainer


def profile_and_solve(trainer: Trainer, *, out_dir: Path) -> tuple[PlanSource, str]:
    """Measure the current model on the current layout and return the optimal plan for it,
    with the auto budget's reason (empty for a fixed cap)."""
    from megatron_tf.profile.config import ProfileConfig
    from megatron_tf.profile.runner import gather_profile, measure_phases

    job = trainer.job
    freezer = trainer.freezer
    if freezer is not None:  # the profiler installs its own all-frozen runtime
        freezer.remove()
    try:
        config = ProfileConfig(iters=trainer.cfg.freeze.profile_iters, warmup_iters=1)
        timings = measure_phases(trainer.chunks, job.model, job.parallel, config)
    finally:
        if freezer is not None:
            freezer.install()
    provenance = {
        "model": job.model.to_dict(),
        "parallel": job.parallel.to_dict(),
        "source": f"in-job profile at iteration {trainer.iteration}",
    }
    profile = gather_profile(
        timings, job.parallel.schedule_spec(), config, lambda: provenance, chunks=trainer.chunks
    )
    box: list[Any] = [None]
    if profile is not None:
        plan, why = _solve_on_rank0(trainer, profile, out_dir)
        box[0] = (plan.to_dict(), why)
    dist.broadcast_object_list(box, src=0)
    return PlanSource.from_dict(box[0][0]), box[0][1]


def _solve_on_rank0(trainer: Trainer, profile: Profile, out_dir: Path) -> tuple[PlanSource, str]:
    from megatron_tf.formats.plan import save_plan
    from megatron_tf.formats.profile import save_profile
    from megatron_tf.solve.budget import LossCost, choose_budget
    from megatron_tf.solve.lp import SolverConfig
    from megatron_tf.solve.planner import solve_profile
    from megatron_tf.solve.progress import solve_status

    cap = trainer.cfg.freeze.max_freeze_ratio
    why = ""
    with solve_status() as progress:  # --solver auto; a long solve says what it is doing
        if cap == "auto":
            noise = trainer.noise_estimates[-1]["noise_scale"]
            batch = trainer.batches.samples_per_iteration
            choice = choose_budget(profile, LossCost(noise_scale=noise, batch=batch))
            why = choice.reason
            # Cap 0 when freezing cannot pay: an all-zero plan, nothing frozen.
            outcome = choice.outcome or solve_profile(
                profile, SolverConfig(max_freeze_ratio=0.0), progress=progress
            )
        else:
            outcome = solve_profile(
                profile, SolverConfig(max_freeze_ratio=float(cap)), progress=progress
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_profile(profile, out_dir / "profile.json")
    save_plan(outcome.plan, out_dir / "plan.json")
    return from_plan(outcome.plan, source=f"auto:{trainer.replans}"), why
