"""Measure a profile.json: the library functions behind `timelyfreeze profile` (parent side).

`prepare_profile_job` checks everything that can fail before torchrun starts; `measure_profile`
launches the profiler's workers (`profile/worker.py`) on every rank, where rank 0 gathers the
timings and writes the profile; `summary_line` is the one line the command prints after. The
demo and `compare` measure through the same functions.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

from megatron_tf.errors import ConfigError
from megatron_tf.formats.layout import ModelConfig, ParallelConfig
from megatron_tf.launch.options import QUIET_WORKERS_ENV, LaunchOptions, job_log, launch_job
from megatron_tf.profile.config import ProfileConfig, ProfileJob

__all__ = ["ENTRY_MODULE", "measure_profile", "prepare_profile_job", "summary_line"]

ENTRY_MODULE = "megatron_tf.profile.worker"
"""The workers' entry point; it reads the `profile` job envelope named by $TIMELYFREEZE_JOB."""

Watch = Callable[[list[tuple[str, int]]], AbstractContextManager[object]]
"""Shows the workers' progress while they run, given the phases and their step counts."""


def prepare_profile_job(
    model: ModelConfig, parallel: ParallelConfig, config: ProfileConfig, output: Path
) -> ProfileJob:
    """Check the flags together (layers vs stages, Megatron's microbatch rules, the output path).

    Raises ConfigError naming the flag; nothing is launched yet.
    """
    if parallel.pp < 2:
        raise ConfigError(
            f"profiling measures a pipeline: --pp must be at least 2, got {parallel.pp}"
        )
    parallel.schedule_spec()
    parallel.check_model(model)
    if output.suffix.lower() != ".json":
        raise ConfigError(f"-o/--output must end in .json, got {str(output)!r}")
    if output.exists() and output.is_dir():
        raise ConfigError(f"-o/--output {str(output)!r} is a folder")
    return ProfileJob(model=model, parallel=parallel, profile=config, output=str(output.resolve()))


def measure_profile(
    job: ProfileJob,
    launch: LaunchOptions,
    *,
    job_file: Path | None = None,
    watch: Watch | None = None,
    env: Mapping[str, str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> str | None:
    """Run the profiler on every rank; rank 0 writes `job.output`.

    Under --dry-run nothing runs: the job file is kept beside the output (or at `job_file`) so
    the returned command still works when pasted later. `watch` shows progress from the
    workers' `[profile] PHASE: DONE/TOTAL` lines. Raises as `launch.options.launch_job` does.
    """
    output = Path(job.output)
    with tempfile.TemporaryDirectory(prefix="timelyfreeze-profile-") as folder:
        if job_file is None:
            job_file = (
                output.with_name(output.stem + ".job.json")
                if launch.dry_run
                else Path(folder) / "profile_job.json"
            )
        job_file = job.save(job_file)
        # The worker reports warm-up iterations, then whole rounds (one iteration per phase).
        phases = [("warm-up", job.profile.warmup_iters), ("rounds", len(job.profile.rounds()))]
        display = watch(phases) if watch is not None and not launch.dry_run else None
        with display or contextlib.nullcontext():
            return launch_job(
                launch,
                ENTRY_MODULE,
                world_size=job.parallel.world_size,
                env=env,
                job_file=job_file,
                stdout=stdout,
                stderr=stderr,
            )


def measure_quietly(model: ModelConfig, parallel: ParallelConfig, iters: int, out: Path) -> Path:
    """Profile `model` on `parallel` into `out/profile.json`, the workers' output in
    `out/profile.log` (quoted if the job fails): for callers that show their own progress."""
    path = out / "profile.json"
    job = prepare_profile_job(model, parallel, ProfileConfig(iters=iters, warmup_iters=2), path)
    with job_log(out / "profile.log", "profiling") as log:
        measure_profile(
            job,
            LaunchOptions(),
            job_file=out / "profile_job.json",
            env=QUIET_WORKERS_ENV,
            stdout=log,
            stderr=log,
        )
    return path


def summary_line(path: Path) -> str:
    """One line: stages with F/B/W, bubble fraction, predicted vs measured iteration time."""
    from megatron_tf.formats.profile import load_profile
    from megatron_tf.profile.replay import frozen_prediction_check
    from megatron_tf.schedule.simulate import simulate_profile

    profile = load_profile(path)
    sim = simulate_profile(profile, "megatron")
    stages = " ".join(
        f"(r{s.rank}c{s.chunk} F={s.forward * 1e3:.2f} B={s.backward_frozen * 1e3:.2f} "
        f"W={(s.backward - s.backward_frozen) * 1e3:.2f})"
        for s in profile.stages
    )
    text = f"{profile.spec.describe()}: {stages} ms; bubble {sim.bubble_fraction:.3f}; "
    text += f"predicted {sim.makespan * 1e3:.2f} ms"
    if profile.iteration_overhead:
        text += f" (finalization {profile.iteration_overhead * 1e3:.2f} ms)"
    measured = profile.measured.iteration_time if profile.measured else None
    if measured:
        error = (sim.makespan - measured) / measured
        text += f" vs measured {measured * 1e3:.2f} ms ({error:+.1%})"
    frozen = frozen_prediction_check(profile, "megatron")
    if frozen:
        text += (
            f"; all frozen: predicted {frozen['frozen_predicted'] * 1e3:.2f} ms vs measured "
            f"{frozen['frozen_measured'] * 1e3:.2f} ms ({frozen['frozen_prediction_error']:+.1%})"
        )
    return text
