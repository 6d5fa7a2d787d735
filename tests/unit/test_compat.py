"""The CPU compatibility layer: megatron modules see a CPU torch; the rest sees the real one."""

from __future__ import annotations

import pytest
import torch

from megatron_tf.megatron import compat

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the layer is off on a GPU machine (by design)"
)


@pytest.fixture(scope="module", autouse=True)
def _enabled() -> None:
    assert compat.enable_cpu_compat() is True
    assert compat.enable_cpu_compat() is True  # idempotent
    assert compat.cpu_compat_enabled()


def test_patched_modules_create_cuda_tensors_on_the_cpu() -> None:
    from megatron.core.pipeline_parallel import p2p_communication, schedules
    from megatron.core.transformer.utils import get_default_causal_mask

    counter = schedules.torch.zeros([], dtype=torch.int, device="cuda")
    assert counter.device.type == "cpu"
    buffer = p2p_communication.torch.empty(
        (3,), device=p2p_communication.torch.cuda.current_device()
    )
    assert buffer.device.type == "cpu"
    p2p_communication.torch.cuda.synchronize()  # a no-op, not a CUDA error
    mask = get_default_causal_mask(4)
    assert mask.device.type == "cpu"
    assert mask.tolist() == torch.triu(torch.ones(4, 4), diagonal=1).bool().tolist()


def test_the_rest_of_the_process_keeps_the_real_torch() -> None:
    from megatron.core.pipeline_parallel import schedules

    assert schedules.torch is not torch
    assert torch.cuda.current_device is not schedules.torch.cuda.current_device
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(1, device="cuda")


def test_rng_tracker_keeps_cpu_states_and_recompute_restores_them() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    tracker = mrandom.get_cuda_rng_tracker()
    tracker.reset()
    tracker.add("model-parallel-rng", 1234)
    with tracker.fork():  # runs in place on CPU, without switching generators
        torch.rand(1)
    # CheckpointFunction saves and restores all RNG states around a recomputed forward.
    states = mrandom._get_all_rng_states()
    first = torch.rand(3)
    mrandom._set_all_rng_states(*states)
    assert torch.equal(torch.rand(3), first)
