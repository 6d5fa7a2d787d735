"""Profile a user's Megatron-LM job from inside its own script (`profile --megatron-lm`).

The user's script builds its model, data and optimizer exactly as in training. Its first
training call of the pipeline schedule is taken over (`megatron_tf.megatron.lm_freezer`'s
`first_call`): with that call's own arguments (forward step, data iterator, model chunks,
microbatches) the schedule runs the warm-up and the measured rounds of `ProfileConfig` (each
round one iteration of every phase: nothing frozen, everything frozen, optionally the linearity
ratios, in a rotating order; `runner.measure_rounds`), gradients are thrown away
between calls, rank 0 writes profile.json, and every rank exits 0 before Megatron-LM's optimizer
ever steps, so no weight changes. The measured layout is the one Megatron parsed, so the plan
solved from this profile is accepted by the same job's `pretrain --megatron-lm`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from megatron_tf.console import progress_line, worker_line
from megatron_tf.errors import ConfigError
from megatron_tf.formats.profile import save_profile
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.megatron.lm_freezer import layout_from_call
from megatron_tf.profile.config import ProfileConfig
from megatron_tf.profile.runner import (
    gather_profile,
    measure_rounds,
    measurement_environment,
    zero_grads,
)
from megatron_tf.profile.samples import RankTimings
from megatron_tf.profile.timer import TimingObserver

__all__ = ["measure_and_stop"]


def measure_and_stop(
    fetch: Callable[[], Callable[..., Any]],
    kwargs: dict[str, Any],
    *,
    config: ProfileConfig,
    output: Path,
) -> NoReturn:
    """Measure with the schedule call's own arguments, write the profile, end the process."""
    spec = layout_from_call(kwargs)
    if spec is None:
        raise ConfigError(
            "profiling measures a pipeline: set Megatron-LM's --pipeline-model-parallel-size >= 2"
        )
    model = kwargs["model"]
    chunks = list(model) if isinstance(model, (list, tuple)) else [model]
    timings = _measure(fetch, kwargs, chunks, spec, config)
    _write(timings, spec, config, output, chunks)
    dist.barrier()
    if dist.get_rank() == 0:
        worker_line(f"[profile] wrote {output}; stopping before any optimizer step")
    dist.destroy_process_group()
    raise SystemExit(0)


def _measure(
    fetch: Callable[[], Callable[..., Any]],
    kwargs: dict[str, Any],
    chunks: list[torch.nn.Module],
    spec: ScheduleSpec,
    config: ProfileConfig,
) -> RankTimings:
    def one_call(iteration: int, timing: TimingObserver | None) -> None:
        # `iteration` is unused: the user's data iterator supplies each call's batches.
        zero_grads(chunks)
        dist.barrier()  # a common time origin for every rank
        if timing is not None:
            timing.begin()
        fetch()(**kwargs)  # fetched now: the hooks installed for this call wrap it

    def progress(bar: str, done: int, total: int) -> None:
        if dist.get_rank() == 0:
            progress_line(bar, done, total)

    out = measure_rounds(one_call, chunks, spec, config, progress)
    zero_grads(chunks)
    return out


def _write(
    timings: RankTimings,
    spec: ScheduleSpec,
    config: ProfileConfig,
    output: Path,
    chunks: list[torch.nn.Module],
) -> None:
    profile = gather_profile(timings, spec, config, lambda: _provenance(config), chunks=chunks)
    if profile is not None:
        save_profile(profile, output)


def _provenance(config: ProfileConfig) -> dict[str, Any]:
    return {
        "route": "megatron-lm",
        "script": sys.argv[0],
        "megatron_args": sys.argv[1:],
        "profile": config.to_dict(),
        "measurement": config.measurement_record(),
        **measurement_environment(),
    }
