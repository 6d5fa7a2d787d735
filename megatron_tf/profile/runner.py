"""The measuring loop that runs on every rank: warm-up, then interleaved timed rounds, a gather.

No optimizer exists here: measurement iterations compute gradients into DDP's buffers and
throw them away, so the weights are exactly what they were before profiling (tested).
"""

from __future__ import annotations

import datetime
import platform
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from megatron_tf.formats.layout import ModelConfig, ParallelConfig
from megatron_tf.formats.profile import Profile
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.freeze.config import FreezeConfig
from megatron_tf.megatron.distributed import rank_place
from megatron_tf.megatron.freeze_runtime import FreezeRuntime, chunk_units
from megatron_tf.megatron.guard import megatron_version
from megatron_tf.megatron.hooks import install_hooks
from megatron_tf.model.step import run_schedule
from megatron_tf.model.synthetic import synthetic_batches
from megatron_tf.profile.config import ProfileConfig
from megatron_tf.profile.samples import RankTimings
from megatron_tf.profile.stats import build_profile
from megatron_tf.profile.timer import TimingObserver

__all__ = [
    "gather_profile",
    "gather_to_rank0",
    "measure_phases",
    "measure_rounds",
    "measurement_environment",
    "run_iteration",
    "zero_grads",
]

Progress = Callable[[str, int, int], None]
"""progress(bar, done, total), called on every rank: "warm-up" per iteration, "rounds" per round."""

IterationCall = Callable[[int, TimingObserver | None], None]
"""one_call(iteration, timing): one forward-backward with the schedule, on every rank."""

AfterIteration = Callable[[str, int], None]
"""after_iteration(phase, iteration), called after each measured iteration."""


def run_iteration(
    chunks: list[torch.nn.Module],
    model: ModelConfig,
    parallel: ParallelConfig,
    iteration: int,
    timing: TimingObserver | None = None,
) -> None:
    """One training iteration's forward and backward with megatron-core's schedule: the step
    training runs (`model.step.run_schedule`), on this iteration's synthetic batches.

    Ranks meet at a barrier first, so that every rank's time origin is the same moment.
    """
    zero_grads(chunks)
    m = parallel.microbatches
    iterators = [synthetic_batches(model, iteration=iteration, microbatches=m) for _ in chunks]
    dist.barrier()
    if timing is not None:
        timing.begin()
    run_schedule(
        chunks,
        iterators,
        microbatches=m,
        seq_length=model.seq_length,
        micro_batch_size=model.micro_batch_size,
    )


def _freeze_runtime(
    chunks: list[torch.nn.Module], spec: ScheduleSpec, ratio: float
) -> FreezeRuntime:
    """A runtime freezing `ratio` of every (chunk, microbatch); coverage off (measurement)."""
    ratios = [[[ratio] * spec.microbatches for _ in range(spec.vpp)] for _ in range(spec.pp)]
    return FreezeRuntime(chunks, ratios, spec, FreezeConfig(coverage=False, rescale="none"))


def measure_rounds(
    one_call: IterationCall,
    chunks: list[torch.nn.Module],
    spec: ScheduleSpec,
    config: ProfileConfig,
    progress: Progress | None = None,
    after_iteration: AfterIteration | None = None,
) -> RankTimings:
    """Warm up, then the measured iterations in the rounds of `config.rounds()`; this rank's
    timings, grouped per phase.

    Interleaved (the default), each round runs every phase once, in an order that rotates and
    is balanced for the phase that runs just before, so every phase samples the same stretch
    of time and a drifting machine biases none of them (see rounds.py).

    A phase with a freeze ratio has its own `FreezeRuntime`, built before anything runs (all
    parameters trainable) and installed for that phase's iterations only: an unfrozen
    iteration runs on stock megatron-core with the timing observer alone. The timing observer
    is registered after the runtime, so its "before" hooks run after the runtime's and its
    "after" hooks before them: toggling `requires_grad` is not part of a timed call.

    `one_call(iteration, timing)` runs one forward-backward on every rank (the timing's
    `begin()` right after a barrier); `after_iteration(phase, iteration)` is called after each
    measured iteration, with its runtime already removed.
    """
    iteration = 0
    for i in range(config.warmup_iters):
        one_call(iteration, None)
        iteration += 1
        if progress:
            progress("warm-up", i + 1, config.warmup_iters)
    phases = config.phases
    runtimes = {name: _freeze_runtime(chunks, spec, ratio) for name, ratio in phases if ratio > 0}
    timing = TimingObserver()
    out: RankTimings = {name: [] for name, _ in phases}
    rounds = config.rounds()
    for k, order in enumerate(rounds):
        for name in order:
            runtime = runtimes.get(name)
            if runtime is not None:
                runtime.install()
            try:
                handle = install_hooks(timing)
                try:
                    one_call(iteration, timing)
                finally:
                    handle.remove()
            finally:
                if runtime is not None:
                    runtime.remove()
            out[name] += [(it.wall, [a.as_tuple() for a in it.actions]) for it in timing.take()]
            if after_iteration:
                after_iteration(name, iteration)
            iteration += 1
        if progress:
            progress("rounds", k + 1, len(rounds))
    return out


def measure_phases(
    chunks: list[torch.nn.Module],
    model: ModelConfig,
    parallel: ParallelConfig,
    config: ProfileConfig,
    progress: Progress | None = None,
    after_iteration: AfterIteration | None = None,
) -> RankTimings:
    """`measure_rounds` on the built-in GPT: each iteration feeds its own seeded batches."""

    def one_call(iteration: int, timing: TimingObserver | None) -> None:
        run_iteration(chunks, model, parallel, iteration, timing)

    return measure_rounds(
        one_call, chunks, parallel.schedule_spec(), config, progress, after_iteration
    )


def zero_grads(chunks: list[torch.nn.Module]) -> None:
    """Throw measured gradients away (Megatron DDP keeps them in its grad buffers)."""
    for chunk in chunks:
        if hasattr(chunk, "zero_grad_buffer"):
            chunk.zero_grad_buffer()
        else:
            chunk.zero_grad(set_to_none=True)


def gather_profile(
    timings: RankTimings,
    spec: ScheduleSpec,
    config: ProfileConfig,
    provenance: Callable[[], dict[str, Any]],
    *,
    chunks: list[torch.nn.Module],
) -> Profile | None:
    """Call on every rank: global rank 0 gathers all ranks' timings and builds the profile
    from one replica per pipeline rank (data- and tensor-parallel rank 0); None elsewhere.

    `chunks` (this rank's model chunks) give each stage's freezable units and their parameter
    counts (`stages[].units[].params`, read by `solve --weighting params`)."""
    place = rank_place()
    ids = (place.pp_rank, place.dp_rank, place.tp_rank)
    units = []
    for chunk in chunks:
        found, params, _ = chunk_units(chunk)
        units.append([(u.name, p.numel()) for u, p in zip(found, params, strict=True)])
    gathered = gather_to_rank0((ids, timings, units))
    if gathered is None:
        return None
    by_pp = {pp: (t, u) for (pp, dp, tp), t, u in gathered if dp == 0 and tp == 0}
    phases = {name: [by_pp[r][0][name] for r in range(spec.pp)] for name, _ in config.phases}
    return build_profile(
        phases,
        spec,
        outlier_mads=config.outlier_mads,
        phase_ratios=dict(config.phases),
        provenance=provenance(),
        units={(r, c): by_pp[r][1][c] for r in range(spec.pp) for c in range(spec.vpp)},
    )


def measurement_environment() -> dict[str, Any]:
    """Device, software versions, timer and date: what any profile was measured on."""
    world = dist.get_world_size()
    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name()} x {world} (nccl)"
    else:
        device = f"CPU {platform.processor() or platform.machine()} x {world} (gloo)"
    return {
        "device": device,
        "hostname": platform.node(),
        "torch": torch.__version__,
        "megatron_core": megatron_version(),
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "timer": "cuda events" if torch.cuda.is_available() else "time.perf_counter",
    }


def gather_to_rank0(obj: Any) -> list[Any] | None:
    """Every rank's `obj` on global rank 0 (pickled Python floats: float64), None elsewhere."""
    world = dist.get_world_size()
    received: list[Any] | None = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(obj, received, dst=0)
    return received
