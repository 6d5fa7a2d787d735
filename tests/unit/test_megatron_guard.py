"""The version and flag guard refuses, in one sentence, what the hooks cannot carry."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from megatron_tf.errors import UnsupportedMegatronError
from megatron_tf.megatron import guard


def test_installed_megatron_is_supported() -> None:
    assert guard.check_version().startswith("0.19.")
    from megatron.core.pipeline_parallel import schedules

    guard.check_schedules(schedules)


@pytest.mark.parametrize("version", ["0.18.1", "0.20.0", "1.0.0rc1"])
def test_other_versions_are_refused(version: str) -> None:
    with pytest.raises(
        UnsupportedMegatronError, match=rf"support megatron-core 0\.19\.x, found {version}"
    ):
        guard.check_version(version)


@pytest.mark.parametrize(
    "flag",
    [
        "overlap_moe_expert_parallel_comm",
        "delay_wgrad_compute",
        "defer_embedding_wgrad_compute",
        "enable_cuda_graph",
        "external_cuda_graph",
        "calculate_per_token_loss",
    ],
)
def test_refused_flags(flag: str) -> None:
    with pytest.raises(UnsupportedMegatronError, match=rf"^{flag}=True is not supported") as info:
        guard.check_config(SimpleNamespace(**{flag: True}))
    assert "\n" not in str(info.value)


def test_cuda_graph_impl_is_refused_and_defaults_pass() -> None:
    with pytest.raises(UnsupportedMegatronError, match="cuda_graph_impl='local'"):
        guard.check_config(SimpleNamespace(cuda_graph_impl="local"))
    guard.check_config(SimpleNamespace(cuda_graph_impl="none", delay_wgrad_compute=False))


def test_changed_signatures_are_refused() -> None:
    def forward_step(a, b):  # no current_microbatch / vp_stage
        return None

    def backward_step(input_tensor, output_tensor, output_tensor_grad, config):
        return None

    fake = SimpleNamespace(
        forward_step=forward_step,
        backward_step=backward_step,
        **{name: (lambda: None) for name in guard.SCHEDULE_ENTRIES},
    )
    with pytest.raises(UnsupportedMegatronError, match="forward_step has no current_microbatch"):
        guard.check_schedules(fake)
    del fake.forward_backward_pipelining_with_interleaving
    with pytest.raises(UnsupportedMegatronError, match="lacks forward_backward_pipelining_with"):
        guard.check_schedules(fake)
