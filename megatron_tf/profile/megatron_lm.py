"""Profile a user's Megatron-LM job from inside its own script (`profile --megatron-lm`).

The user's script builds its model, data and optimizer exactly as in training. Its first
training call of the pipeline schedule is taken over (`megatron_tf.megatron.megatron_lm`'s
`first_call`): with that call's own arguments (forward step, data iterator, model chunks,
microbatches) the schedule runs the warm-up and the measured rounds of `ProfileConfig` (each
round one iteration of every phase: nothing frozen, everything frozen, optionally the linearity
ratios, in a rotating order; `runner.measure_rounds`), gradients are thrown away
between calls, rank 0 writes profile.json, and every rank exits 0 before Megatron-LM's optimizer
ever steps, so no weight changes. The measured layout is the one Megatron parsed, so the plan
solved from this profile is accepted by the same job's `pretrain --megatron-lm`.
"""

from __future__ import annotations

import datetime
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from megatron_tf.errors import ConfigError
from megatron_tf.megatron.megatron_lm import layout_from_call
from megatron_tf.profile.config import ProfileConfig
from megatron_tf.profile.runner import Timings, gather_to_rank0, measure_rounds
from megatron_tf.profile.timing import TimingObserver
from megatron_tf.schedule.spec import ScheduleSpec

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
    _write(timings, spec, config, output)
    dist.barrier()
    if dist.get_rank() == 0:
        print(f"[profile] wrote {output}; stopping before any optimizer step", flush=True)
    dist.destroy_process_group()
    raise SystemExit(0)


def _measure(
    fetch: Callable[[], Callable[..., Any]],
    kwargs: dict[str, Any],
    chunks: list[torch.nn.Module],
    spec: ScheduleSpec,
    config: ProfileConfig,
) -> Timings:
    def one_call(iteration: int, timing: TimingObserver | None) -> None:
        # `iteration` is unused: the user's data iterator supplies each call's batches.
        _zero_grads(chunks)
        dist.barrier()  # a common time origin for every rank
        if timing is not None:
            timing.begin()
        fetch()(**kwargs)  # fetched now: the hooks installed for this call wrap it

    def progress(bar: str, done: int, total: int) -> None:
        if dist.get_rank() == 0:
            print(f"[profile] {bar}: {done}/{total}", flush=True)

    out = measure_rounds(one_call, chunks, spec, config, progress)
    _zero_grads(chunks)
    return out


def _write(timings: Timings, spec: ScheduleSpec, config: ProfileConfig, output: Path) -> None:
    from megatron.core import parallel_state

    from megatron_tf.formats.profile import save_profile
    from megatron_tf.profile.stats import build_profile

    ids = (
        parallel_state.get_pipeline_model_parallel_rank(),
        parallel_state.get_data_parallel_rank(),
        parallel_state.get_tensor_model_parallel_rank(),
    )
    gathered = gather_to_rank0((ids, timings))
    if gathered is None:
        return
    # One replica per pipeline rank: data-parallel rank 0, tensor-parallel rank 0.
    by_pp = {pp: t for (pp, dp, tp), t in gathered if dp == 0 and tp == 0}
    phases = {name: [by_pp[r][name] for r in range(spec.pp)] for name, _ in config.phases}
    profile = build_profile(
        phases,
        spec,
        outlier_mads=config.outlier_mads,
        phase_ratios=dict(config.phases),
        provenance=_provenance(config),
    )
    save_profile(profile, output)


def _provenance(config: ProfileConfig) -> dict[str, Any]:
    from megatron.core import package_info

    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name()} x {dist.get_world_size()} (nccl)"
    else:
        device = f"CPU {platform.machine()} x {dist.get_world_size()} (gloo)"
    return {
        "route": "megatron-lm",
        "script": sys.argv[0],
        "megatron_args": sys.argv[1:],
        "profile": config.to_dict(),
        "measurement": config.measurement_record(),
        "device": device,
        "hostname": platform.node(),
        "torch": torch.__version__,
        "megatron_core": package_info.__version__,
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "timer": "cuda events" if torch.cuda.is_available() else "time.perf_counter",
    }


def _zero_grads(chunks: list[torch.nn.Module]) -> None:
    """Throw measured gradients away (Megatron DDP keeps them in its grad buffers)."""
    for chunk in chunks:
        if hasattr(chunk, "zero_grad_buffer"):
            chunk.zero_grad_buffer()
        else:
            chunk.zero_grad(set_to_none=True)
