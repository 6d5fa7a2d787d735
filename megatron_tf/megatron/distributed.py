"""Process-group set-up for workers launched by torchrun: gloo on CPU, nccl on GPU.

`init_distributed` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), turns on the CPU compatibility layer when there is no GPU, builds Megatron's
parallel groups, seeds every RNG Megatron uses, and installs the layout's own schedule when it
names one that TimelyFreeze runs in place of Megatron's (`megatron/zero_bubble.py`), so that
any worker (profile, pretrain, the tests) starts the same way.
"""

from __future__ import annotations

import datetime
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron_tf.errors import LaunchError
from megatron_tf.formats.layout import ParallelConfig
from megatron_tf.megatron.compat import enable_cpu_compat

__all__ = [
    "RankPlace",
    "collective_device",
    "destroy_distributed",
    "device_clock",
    "init_distributed",
    "rank_place",
    "rng_state",
    "set_rng_state",
]


def init_distributed(
    parallel: ParallelConfig, *, seed: int = 1234, timeout_minutes: float | None = None
) -> None:
    """Initialise torch.distributed and Megatron's model-parallel groups for `parallel`.

    `timeout_minutes` bounds every collective and P2P wait (a stuck rank fails the job instead
    of hanging it); default: $TIMELYFREEZE_COLLECTIVE_TIMEOUT seconds, which the CLI's
    `--collective-timeout` sets, else 10 minutes.

    Raises LaunchError when the process was not started by torchrun, or when the world size
    does not equal tp * pp * dp.
    """
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing and not dist.is_initialized():
        raise LaunchError(
            f"not started by torchrun: environment variable(s) {', '.join(missing)} missing"
        )
    if timeout_minutes is None:
        timeout_minutes = float(os.environ.get("TIMELYFREEZE_COLLECTIVE_TIMEOUT", "600")) / 60
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size != parallel.world_size:
        raise LaunchError(
            f"the job has {world_size} processes but --tp {parallel.tp} x --pp {parallel.pp} x "
            f"--dp {parallel.dp} = {parallel.world_size}"
        )
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        # One intra-op thread per rank: CPU ranks share the cores, and oversubscription makes
        # timings noisy. On a GPU node the host threads are left as torch sets them.
        torch.set_num_threads(1)
        enable_cpu_compat()
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if on_gpu else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )

    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp if parallel.vpp > 1 else None,
        distributed_timeout_minutes=timeout_minutes,
    )
    seed_everything(seed)
    model_parallel_cuda_manual_seed(seed)
    if parallel.schedule and parallel.pp >= 2:
        from megatron_tf.megatron.zero_bubble import install_for

        install_for(parallel.schedule_spec())


def collective_device() -> torch.device:
    """The device a tensor handed to a collective must live on: NCCL moves only CUDA tensors
    (the current device, which `init_distributed` set from LOCAL_RANK), gloo only CPU ones.
    Object collectives and barriers pick their own device and need no tensor from here."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def device_clock() -> float:
    """`time.perf_counter()` once the work queued on the GPU has finished.

    CUDA kernels run asynchronously, so a host clock read right after the schedule returns
    times only the launches; a time compared with a prediction is read after a synchronize.
    On CPU it is the host clock alone."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def seed_everything(seed: int) -> None:
    """Seed Python, torch (CPU and, lazily, CUDA) with the same value on every rank."""
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def destroy_distributed() -> None:
    """Tear down Megatron's groups and the default process group (safe to call twice)."""
    from megatron.core import parallel_state

    from megatron_tf.megatron.zero_bubble import remove_installed

    remove_installed()
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True, slots=True)
class RankPlace:
    """Where this rank sits in Megatron's parallel groups."""

    pp_rank: int
    tp_rank: int
    dp_rank: int
    dp_size: int
    last_stage: bool
    """Holds the last pipeline stage (computes the loss)."""


def rank_place() -> RankPlace:
    """This rank's place; call after `init_distributed`."""
    from megatron.core import parallel_state as ps

    return RankPlace(
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
        last_stage=ps.is_pipeline_last_stage(ignore_virtual=True),
    )


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from (Python, numpy, torch, and on GPU CUDA and
    Megatron's model-parallel tracker), for a checkpoint."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        state["cuda"] = torch.cuda.get_rng_state()
        state["tracker"] = get_cuda_rng_tracker().get_states()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        torch.cuda.set_rng_state(state["cuda"])
        get_cuda_rng_tracker().set_states(state["tracker"])
