"""The CPU trial mode's stand-in for torch.cuda: what megatron modules see, what the rest of the
process sees, and that it never turns on where CUDA is available.

Each case runs in a fresh interpreter: the mode changes process-wide state (three Tensor and
Module methods, an import hook) that must not leak into the other tests.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def run(code: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_megatron_modules_see_one_cuda_device_that_is_the_cpu() -> None:
    run(
        """
        import torch
        assert not torch.cuda.is_available()
        import megatron.core.timers as imported_before  # imported before the mode: patched too
        from megatron_tf.megatron.cpu_trial import enable_cpu_trial, cpu_trial_enabled
        assert enable_cpu_trial() and cpu_trial_enabled() and enable_cpu_trial()  # idempotent
        import megatron.training.initialize as init  # imported after: the import hook
        for module in (imported_before, init):
            t = module.torch
            assert t is not torch
            assert t.cuda.is_available() and t.cuda.device_count() == 1
            t.cuda.set_device(0); t.cuda.synchronize(); t.cuda.empty_cache()
            x = t.tensor([1.0, 2.0], device="cuda")
            assert x.device.type == "cpu"
            assert t.zeros(2, device=t.cuda.current_device()).device.type == "cpu"
            assert t.device(f"cuda:{0}") == torch.device("cpu")
            assert isinstance(torch.device("cpu"), t.device)
            # the "CUDA" RNG state is a CPU generator's: set, draw, restore, same draw
            state = t.cuda.get_rng_state()
            t.cuda.set_rng_state(state)
            assert torch.equal(t.cuda.get_rng_state(), state)
        # Everyone else keeps the real torch: no CUDA here.
        assert not torch.cuda.is_available() and torch.cuda.device_count() == 0
        # The three process-wide changes, each one a call that would raise without CUDA.
        y = torch.ones(3)
        assert y.cuda() is y and y.cuda(non_blocking=True) is y
        m = torch.nn.Linear(2, 2)
        assert m.cuda() is m
        assert y.type() == "torch.cuda.FloatTensor"
        assert y.type(torch.float64).dtype == torch.float64  # with arguments: unchanged
        assert torch.ones(2, dtype=torch.int64).type() == "torch.cuda.LongTensor"
        """
    )


def test_never_active_where_cuda_is_available() -> None:
    run(
        """
        import torch
        torch.cuda.is_available = lambda: True  # as on a GPU node
        import sys
        real_cuda, real_type = torch.Tensor.cuda, torch.Tensor.type
        hooks = list(sys.meta_path)
        from megatron_tf.megatron.cpu_trial import enable_cpu_trial, cpu_trial_enabled
        assert enable_cpu_trial() is False and not cpu_trial_enabled()
        assert torch.Tensor.cuda is real_cuda and torch.Tensor.type is real_type
        assert sys.meta_path == hooks  # no import hook: megatron modules keep the real torch
        """
    )


@pytest.mark.parametrize("flag", [True, False])
def test_the_worker_entry_reads_the_mode_from_its_job(flag: bool, tmp_path) -> None:
    from megatron_tf.formats.job import job_env
    from megatron_tf.train.lm_script import MegatronLMJob

    path = MegatronLMJob(script=Path("/x/pretrain_gpt.py"), cpu_trial=flag).save(tmp_path / "j")
    assert MegatronLMJob.load(env=job_env(path)).cpu_trial is flag
