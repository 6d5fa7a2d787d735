"""Give Megatron's frozen-weight linear its missing bias gradient.

megatron-core 0.19.2 `tensor_parallel/layers.py`, `LinearWithFrozenWeight`: the forward adds
the bias inside the autograd function (layers that do not skip the bias add, e.g. GPT's
`linear_qkv` in the local spec), but the backward returns `None` for the bias. Stock Megatron
only takes that path for permanently frozen weights, where it goes unnoticed; TimelyFreeze
freezes a weight for some microbatches while its bias keeps training, so the bias would
silently lose those microbatches' gradient. The fix returns the bias gradient (the sum of
`grad_output` over all but the last dimension) whenever autograd asks for it.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["fix_frozen_linear_bias_grad"]

_FIXED_ATTR = "_timelyfreeze_bias_grad_fix"


def fix_frozen_linear_bias_grad() -> None:
    """Idempotent: replace `LinearWithFrozenWeight.backward` with one that returns dbias."""
    from megatron.core.tensor_parallel.layers import LinearWithFrozenWeight

    if getattr(LinearWithFrozenWeight, _FIXED_ATTR, False):
        return
    original = LinearWithFrozenWeight.backward

    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        grads = original(ctx, grad_output)
        if ctx.needs_input_grad[2] and grads[2] is None:
            grad_bias = grad_output.reshape(-1, grad_output.size(-1)).sum(dim=0)
            grads = (grads[0], grads[1], grad_bias, *grads[3:])
        return grads

    LinearWithFrozenWeight.backward = staticmethod(backward)
    setattr(LinearWithFrozenWeight, _FIXED_ATTR, True)
