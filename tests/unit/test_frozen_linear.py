"""The bias-gradient fix of LinearWithFrozenWeight is counted and undone by the last remover."""

from __future__ import annotations

from megatron_tf.megatron.frozen_linear import install_bias_grad_fix, remove_bias_grad_fix


def test_last_remove_restores_megatrons_backward_exactly() -> None:
    from megatron.core.tensor_parallel.layers import LinearWithFrozenWeight

    stock = vars(LinearWithFrozenWeight)["backward"]
    install_bias_grad_fix()
    install_bias_grad_fix()  # a second runtime (e.g. the in-job profiler's) at the same time
    fixed = vars(LinearWithFrozenWeight)["backward"]
    assert fixed is not stock
    remove_bias_grad_fix()
    assert vars(LinearWithFrozenWeight)["backward"] is fixed  # the other runtime still needs it
    remove_bias_grad_fix()
    assert vars(LinearWithFrozenWeight)["backward"] is stock
    remove_bias_grad_fix()  # one too many is harmless
    assert vars(LinearWithFrozenWeight)["backward"] is stock
