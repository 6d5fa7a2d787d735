"""Torchrun entry of `timelyfreeze profile`: `python -m megatron_tf.profile.worker`.

Reads the job file named by $TIMELYFREEZE_JOB (written by the CLI), measures on every
rank, gathers to global rank 0, which writes the profile atomically. Data-parallel and
tensor-parallel replicas measure too; the profile keeps the replica with data-parallel rank 0
and tensor-parallel rank 0 of each pipeline rank.
"""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from megatron_tf.console import progress_line, worker_line
from megatron_tf.formats.profile import save_profile
from megatron_tf.megatron.distributed import destroy_distributed, init_distributed
from megatron_tf.model.gpt import build_training_model, use_transformer_engine
from megatron_tf.process.worker_errors import report_user_errors
from megatron_tf.profile.config import FAULT_RANK_ENV, ProfileJob
from megatron_tf.profile.runner import gather_profile, measure_phases, measurement_environment


def _progress(rank: int) -> Any:
    def report(phase: str, done: int, total: int) -> None:
        if rank == 0:
            progress_line(phase, done, total)

    return report


def provenance(job: ProfileJob) -> dict[str, Any]:
    """Model and layout, device, versions and date: what a profile was measured on."""
    return {
        "model": job.model.to_dict(),
        "parallel": job.parallel.to_dict(),
        "profile": job.profile.to_dict(),
        "measurement": job.profile.measurement_record(),
        "layer_spec": "transformer_engine" if use_transformer_engine() else "local",
        **measurement_environment(),
    }


def run_job(job: ProfileJob) -> None:
    init_distributed(job.parallel, seed=job.model.seed)
    try:
        rank = dist.get_rank()
        chunks, _ = build_training_model(job.model, job.parallel)
        if os.environ.get(FAULT_RANK_ENV) == str(rank):
            # Tests: a rank that dies mid-job must fail the command, not hang it.
            raise RuntimeError(f"injected failure on rank {rank} ({FAULT_RANK_ENV})")
        timings = measure_phases(chunks, job.model, job.parallel, job.profile, _progress(rank))
        spec = job.parallel.schedule_spec()
        profile = gather_profile(timings, spec, job.profile, lambda: provenance(job), chunks=chunks)
        if profile is not None:
            save_profile(profile, job.output)
            worker_line(f"[profile] wrote {job.output}")
    finally:
        destroy_distributed()


@record
def main() -> None:
    with report_user_errors():
        run_job(ProfileJob.load())


if __name__ == "__main__":
    main()
