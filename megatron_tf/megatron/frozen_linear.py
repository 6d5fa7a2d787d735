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

__all__ = ["install_bias_grad_fix", "remove_bias_grad_fix"]

_MISSING = object()
_installed: list[Any] = []
"""One entry per runtime that installed the fix; the first holds Megatron's own `backward`
(as found in the class's __dict__, or _MISSING when inherited)."""


def install_bias_grad_fix() -> None:
    """Replace `LinearWithFrozenWeight.backward` with one that also returns dbias.

    Counted: every call needs one `remove_bias_grad_fix`; the last one puts Megatron's own
    backward back, so a process that stops freezing runs stock megatron-core again.
    """
    from megatron.core.tensor_parallel.layers import LinearWithFrozenWeight

    if _installed:
        _installed.append(None)
        return
    stored = vars(LinearWithFrozenWeight).get("backward", _MISSING)
    original = LinearWithFrozenWeight.backward

    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        grads = original(ctx, grad_output)
        if ctx.needs_input_grad[2] and grads[2] is None:
            grad_bias = grad_output.reshape(-1, grad_output.size(-1)).sum(dim=0)
            grads = (grads[0], grads[1], grad_bias, *grads[3:])
        return grads

    LinearWithFrozenWeight.backward = staticmethod(backward)
    _installed.append(stored)


def remove_bias_grad_fix() -> None:
    """Undo one `install_bias_grad_fix`; the last undo restores Megatron's backward exactly."""
    from megatron.core.tensor_parallel.layers import LinearWithFrozenWeight

    if not _installed:
        return
    stored = _installed.pop()
    if _installed:
        return
    if stored is _MISSING:
        del LinearWithFrozenWeight.backward
    else:
        LinearWithFrozenWeight.backward = stored
