"""The measuring loop that runs on every rank: warm-up, then timed phases, then a gather.

No optimizer exists here: measurement iterations compute gradients into DDP's buffers and
throw them away, so the weights are exactly what they were before profiling (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from megatron_tf.freeze.config import FreezeConfig
from megatron_tf.megatron.freeze_runtime import FreezeRuntime
from megatron_tf.megatron.hooks import install_hooks
from megatron_tf.profile.config import ProfileConfig
from megatron_tf.profile.timing import TimingObserver
from megatron_tf.train.config import ModelConfig, ParallelConfig
from megatron_tf.train.step import gpt_forward_step, synthetic_batches

__all__ = ["gather_to_rank0", "measure_phases", "run_iteration"]

Progress = Callable[[str, int, int], None]
"""progress(phase, done, total), called on every rank after each iteration."""


def run_iteration(
    chunks: list[torch.nn.Module],
    model: ModelConfig,
    parallel: ParallelConfig,
    iteration: int,
    timing: TimingObserver | None = None,
) -> None:
    """One training iteration's forward and backward with megatron-core's schedule.

    Ranks meet at a barrier first, so that every rank's time origin is the same moment.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in chunks:
        if hasattr(chunk, "zero_grad_buffer"):
            chunk.zero_grad_buffer()
        else:
            chunk.zero_grad(set_to_none=True)
    m = parallel.microbatches
    iterators = [synthetic_batches(model, iteration=iteration, microbatches=m) for _ in chunks]
    dist.barrier()
    if timing is not None:
        timing.begin()
    get_forward_backward_func()(
        forward_step_func=gpt_forward_step,
        data_iterator=iterators if len(chunks) > 1 else iterators[0],
        model=chunks,
        num_microbatches=m,
        seq_length=model.seq_length,
        micro_batch_size=model.micro_batch_size,
        forward_only=False,
    )


def _freeze_runtime(
    chunks: list[torch.nn.Module], parallel: ParallelConfig, ratio: float
) -> FreezeRuntime:
    """A runtime freezing `ratio` of every (chunk, microbatch); coverage off (measurement)."""
    spec = parallel.schedule_spec()
    ratios = [[[ratio] * spec.microbatches for _ in range(spec.vpp)] for _ in range(spec.pp)]
    return FreezeRuntime(chunks, ratios, spec, FreezeConfig(coverage=False, rescale="none"))


def measure_phases(
    chunks: list[torch.nn.Module],
    model: ModelConfig,
    parallel: ParallelConfig,
    config: ProfileConfig,
    progress: Progress | None = None,
) -> dict[str, list[tuple[float, list[tuple[str, int, int, float, float]]]]]:
    """Warm up, then time `config.iters` iterations per phase; returns this rank's timings."""
    iteration = 0
    for i in range(config.warmup_iters):
        run_iteration(chunks, model, parallel, iteration)
        iteration += 1
        if progress:
            progress("warm-up", i + 1, config.warmup_iters)
    out: dict[str, list[tuple[float, list[tuple[str, int, int, float, float]]]]] = {}
    for name, ratio in config.phases:
        runtime = _freeze_runtime(chunks, parallel, ratio).install() if ratio > 0 else None
        timing = TimingObserver()
        # Registered after the freeze runtime: its "before" hooks run after the runtime's and
        # its "after" hooks before, so toggling requires_grad is not part of the timed call.
        handle = install_hooks(timing)
        try:
            for i in range(config.iters):
                run_iteration(chunks, model, parallel, iteration, timing)
                iteration += 1
                if progress:
                    progress(name, i + 1, config.iters)
        finally:
            handle.remove()
            if runtime is not None:
                runtime.remove()
        out[name] = [(it.wall, [a.as_tuple() for a in it.actions]) for it in timing.take()]
    return out


def gather_to_rank0(obj: Any) -> list[Any] | None:
    """Every rank's `obj` on global rank 0 (pickled Python floats: float64), None elsewhere."""
    world = dist.get_world_size()
    received: list[Any] | None = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(obj, received, dst=0)
    return received
