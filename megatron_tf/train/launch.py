"""Start a prepared pretraining job: write job.json and run `megatron_tf.train.main` per rank.

The library function behind `timelyfreeze pretrain` (after `train.job.prepare_job`), also used by
the demo and `compare`, so every training run is started the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import IO

from megatron_tf.launch.options import LaunchOptions, launch_job
from megatron_tf.train.job import Job, write_job

__all__ = ["ENTRY_MODULE", "run_pretrain"]

ENTRY_MODULE = "megatron_tf.train.main"
"""The workers' entry point; it reads the `pretrain` job envelope named by $TIMELYFREEZE_JOB."""


def run_pretrain(
    job: Job,
    launch: LaunchOptions,
    *,
    env: Mapping[str, str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> str | None:
    """Write `<out_dir>/job.json` and train on tp * pp * dp ranks; under --dry-run return the
    command to print instead. Raises as `launch.options.launch_job` does."""
    job_file = write_job(job, Path(job.train.out_dir) / "job.json")
    return launch_job(
        launch,
        ENTRY_MODULE,
        world_size=job.parallel.world_size,
        env=env,
        job_file=job_file,
        stdout=stdout,
        stderr=stderr,
    )
