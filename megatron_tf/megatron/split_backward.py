"""Split each backward into B (input gradient) and W (weight gradient), exactly.

The zero-bubble schedules (`megatron/zero_bubble.py`) run a microbatch's backward in two
steps: B, on the pipeline's critical path, computes only what the previous stage waits for;
W, later and wherever the rank would otherwise idle, computes the weight gradients B skipped.
This module is the mechanism. Gradients stay bitwise those of stock megatron-core because W
runs the very operations stock backward runs for a weight, on the very same tensors, and
hands the result to the same autograd accumulator in the same microbatch order.

What is deferred (local layer spec, megatron-core 0.19.x / 0.20.x,
`tensor_parallel/layers.py`): the weight, and the bias when the same kernel adds it, of every
`ColumnParallelLinear` / `RowParallelLinear` whose weight trains in that microbatch (its
`_forward_impl` picks `linear_with_grad_accumulation_and_async_allreduce`): `linear_qkv`,
`linear_proj`, `linear_fc1`, `linear_fc2`, and the output layer (its tied copy of the word
embedding too, where it is that stage's own parameter). Everything else gets its gradient in
B as usual: the word and position embeddings, norms, biases added outside the GEMM
(`skip_bias_add`), and a linear fed another module's weight (the output layer on a stage that
also holds the tied word embedding, pp 1 only): that weight also gets a gradient in B, and
stock autograd sums both uses before accumulating once, which a split would not. A weight frozen for
the microbatch (`requires_grad=False` at forward time) takes Megatron's frozen-weight path
and has no W at all.

How. While a zero-bubble schedule runs, `_forward_impl` of both classes is wrapped: a
trainable weight goes into `SplitLinear`, a subclass of Megatron's own autograd function
(`LinearWithGradAccumulationAndAsyncCommunication`) that inherits its forward unchanged but
receives the weight (and bias) *detached*, so autograd has no edge to the parameter and B
accumulates nothing into it. Its backward computes the input gradient exactly as Megatron's
does (same GEMM, same tensor-parallel all-reduce or reduce-scatter) and keeps the layer's
input and output gradient for W. W then computes `grad_output^T @ input` (after the same
`prepare_input_tensors_for_wgrad_compute` reshaping, and the same sequence-parallel
all-gather of the input) and the in-kernel bias gradient `grad_output.sum(0)`, and calls
`torch.autograd.backward` on the parameters themselves: autograd's `AccumulateGrad` node of
each parameter runs with its hooks, i.e. `param.grad` without DDP, and with Megatron DDP its
backward post-hook (`main_grad.add_`, then `register_grad_ready` under
`overlap_grad_reduce`). Per parameter the contributions therefore arrive in the order the
microbatches' W run, which the schedules keep equal to stock's backward order, so the sums
are bitwise those of stock 1F1B. Several uses of one weight in one microbatch are summed in
the order their backward reached them, as autograd's input buffer sums them.

Refused (`check_split_supported`): `gradient_accumulation_fusion` (the fused wgrad GEMM into
`main_grad` runs on CUDA only: unverified here), TransformerEngine layers (their deferral is
TE's own `delay_wgrad_compute` / `backward_dw`, see docs/runtime.md), Megatron-FSDP and GTP
weight rematerialisation (other wgrad paths), and MTP (reuses the output weight).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from megatron_tf.errors import UnsupportedMegatronError
from megatron_tf.megatron import guard

__all__ = [
    "SplitBackward",
    "check_split_supported",
    "split_refusals",
]


@dataclass(frozen=True, slots=True)
class _Owner:
    """The parameters behind a split linear's detached weight and bias, and its microbatch."""

    weight: torch.nn.Parameter
    bias: torch.nn.Parameter | None  # in-kernel bias that trains, else None
    key: tuple[int, int] | None


@dataclass(slots=True)
class _Deferred:
    """What one linear's W needs: the parameters and the tensors its wgrad GEMM reads."""

    weight: torch.nn.Parameter
    bias: torch.nn.Parameter | None  # in-kernel bias that trains, else None
    input: torch.Tensor  # the layer's (local) input, as the forward saved it
    grad_output: torch.Tensor  # the output gradient B received
    sequence_parallel: bool
    tp_group: Any


class SplitBackward:
    """The deferred weight-gradient work of one rank's model chunks, by (chunk, microbatch).

    `capture(chunk, microbatch)` brackets a forward or a backward (B) whose trainable linear
    weights are split off; `weight_grad(chunk, microbatch)` is that microbatch's W. Install
    with `install()` (or `with`); removal restores megatron-core's classes exactly.
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[int, int], list[_Deferred]] = {}
        self._key: tuple[int, int] | None = None
        self._restore: list[tuple[Any, str, Any]] = []
        self._function: Any = None
        self._arg_names: tuple[str, ...] = ()
        self._defaults: dict[str, Any] = {}
        self._prepare: Callable[..., Any] | None = None
        self._casts_grad_output = False
        # A split linear whose input needs no gradient also takes this empty leaf: its output
        # then requires grad, and its backward (which records W's work) runs, as stock's does
        # for a trainable weight, e.g. the first trainable linear behind a frozen prefix. The
        # anchor itself never receives a gradient.
        self._anchor = torch.empty(0, requires_grad=True)

    # -- installation ---------------------------------------------------------------------

    def install(self) -> SplitBackward:
        """Wrap `_forward_impl` of megatron-core's tensor-parallel linears (idempotent)."""
        if self._restore:
            return self
        from megatron.core.tensor_parallel import layers

        entry = guard.current()
        self._casts_grad_output = entry.linear_backward_casts_grad_output
        self._prepare = guard.private(entry.wgrad_inputs)
        self._function = _split_function(layers, self)
        signature = inspect.signature(layers.linear_with_grad_accumulation_and_async_allreduce)
        self._arg_names = tuple(signature.parameters)
        self._defaults = {
            n: p.default
            for n, p in signature.parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        for cls in (layers.ColumnParallelLinear, layers.RowParallelLinear):
            original = cls.__dict__["_forward_impl"]
            self._restore.append((cls, "_forward_impl", original))
            cls._forward_impl = self._wrap(original)
        return self

    def remove(self) -> None:
        """Restore megatron-core's `_forward_impl`; pending W work is dropped."""
        for owner, name, old in reversed(self._restore):
            setattr(owner, name, old)
        self._restore.clear()
        self._pending.clear()
        self._key = None

    def __enter__(self) -> SplitBackward:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        store = self

        def _forward_impl(module: Any, input: Any, weight: Any, *args: Any, **kwargs: Any) -> Any:
            if (
                store._key is None
                or not weight.requires_grad
                or not torch.is_grad_enabled()
                or getattr(module, "weight", None) is not weight
            ):
                return original(module, input, weight, *args, **kwargs)
            return store._split(input, weight, *args, **kwargs)

        return _forward_impl

    # -- B ------------------------------------------------------------------------------------

    @contextmanager
    def capture(self, chunk: int, microbatch: int) -> Iterator[None]:
        """Split the trainable linears of the forward or backward running inside (B keeps
        their inputs and output gradients under (chunk, microbatch) for its W)."""
        previous, self._key = self._key, (chunk, microbatch)
        try:
            yield
        finally:
            self._key = previous

    def _split(self, input: Any, weight: Any, *args: Any, **kwargs: Any) -> Any:
        """Megatron's `linear_with_grad_accumulation_and_async_allreduce`, weight detached."""
        from megatron.core.utils import get_tensor_model_parallel_group_if_none

        bound = dict(zip(self._arg_names[2:], args, strict=False))
        bound.update(kwargs)
        values = {**self._defaults, **bound}
        if values.get("grad_output_buffer") is not None:
            raise UnsupportedMegatronError(
                "defer_embedding_wgrad_compute cannot be combined with a zero-bubble schedule"
            )
        if int(values.get("gtp_remat_size") or 1) > 1:
            raise UnsupportedMegatronError(
                "GTP weight rematerialisation cannot be combined with a zero-bubble schedule"
            )
        if values.get("gradient_accumulation_fusion"):
            raise UnsupportedMegatronError(
                "gradient_accumulation_fusion cannot be combined with a zero-bubble schedule "
                "yet (unverified on a GPU); turn it off (--no-gradient-accumulation-fusion)"
            )
        bias = values.get("bias")
        values["tp_group"] = get_tensor_model_parallel_group_if_none(values.get("tp_group"))
        values["input"] = input
        values["weight"] = weight.detach()
        values["bias"] = bias.detach() if bias is not None else None
        ordered = [values[name] for name in self._arg_names]
        owner = _Owner(weight, bias if bias is not None and bias.requires_grad else None, self._key)
        anchor = None if input.requires_grad else self._anchor
        return self._function.apply(owner, anchor, *ordered)

    def _keep(self, key: tuple[int, int], deferred: _Deferred) -> None:
        self._pending.setdefault(key, []).append(deferred)

    # -- W ------------------------------------------------------------------------------------

    def pending(self, chunk: int, microbatch: int) -> int:
        """How many linears wait for this microbatch's W."""
        return len(self._pending.get((chunk, microbatch), ()))

    def pending_keys(self) -> list[tuple[int, int]]:
        return sorted(self._pending)

    def weight_grad(self, chunk: int, microbatch: int) -> None:
        """W of (chunk, microbatch): the deferred weight and bias gradients, accumulated by
        autograd into `param.grad` / through Megatron DDP's hooks into `main_grad`."""
        work = self._pending.pop((chunk, microbatch), None)
        if not work:
            return
        sums: dict[torch.nn.Parameter, torch.Tensor] = {}
        with torch.no_grad():
            for d in work:
                for param, grad in self._wgrad(d):
                    previous = sums.get(param)
                    sums[param] = grad if previous is None else previous + grad
        params, grads = list(sums), list(sums.values())
        del sums, work
        torch.autograd.backward(params, grads)

    def _wgrad(self, d: _Deferred) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """The stock backward's wgrad part (layers.py, `LinearWithGradAccumulationAnd
        AsyncCommunication.backward`, without gradient-accumulation fusion)."""
        total_input = d.input
        if d.sequence_parallel:
            total_input = _all_gather(d.input, d.tp_group)
        assert self._prepare is not None
        grad_output, total_input = self._prepare(d.grad_output, total_input)
        out = [(d.weight, grad_output.t().matmul(total_input))]
        if d.bias is not None:
            out.append((d.bias, grad_output.sum(dim=0)))
        return out


def _all_gather(local: torch.Tensor, group: Any) -> torch.Tensor:
    """The sequence-parallel input as the forward and stock backward gather it (dim 0)."""
    from megatron.core.utils import dist_all_gather_func

    size = list(local.size())
    size[0] *= group.size()
    total = torch.empty(size, dtype=local.dtype, device=local.device)
    dist_all_gather_func(total, local.contiguous(), group=group)
    return total


def _split_function(layers: Any, store: SplitBackward) -> Any:
    """`SplitLinear`: Megatron's linear autograd function with a backward that stops at B."""
    base = layers.LinearWithGradAccumulationAndAsyncCommunication
    custom_bwd = layers.custom_bwd

    class SplitLinear(base):  # type: ignore[misc, valid-type]
        @staticmethod
        def forward(ctx: Any, owner: _Owner, anchor: torch.Tensor, *args: Any) -> Any:
            ctx.split_owner = owner
            return base.forward(ctx, *args)  # Megatron's forward, unchanged

        @staticmethod
        @custom_bwd
        def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
            input, weight = ctx.saved_tensors
            if store._casts_grad_output:
                grad_output = grad_output.to(ctx.input_dtype)
            tp_group = ctx.tp_group
            grad_input = grad_output.matmul(weight)
            handle = None
            if ctx.allreduce_dgrad:
                handle = torch.distributed.all_reduce(grad_input, group=tp_group, async_op=True)
            if ctx.sequence_parallel:
                assert not ctx.allreduce_dgrad
                sub_grad_input = torch.empty(
                    list(input.size()), dtype=input.dtype, device=grad_input.device
                )
                handle = layers.dist_reduce_scatter_func(
                    sub_grad_input, grad_input, group=tp_group, async_op=True
                )
                grad_input = sub_grad_input
            owner = ctx.split_owner
            store._keep(
                owner.key,
                _Deferred(
                    weight=owner.weight,
                    bias=owner.bias if ctx.use_bias else None,
                    input=input,
                    grad_output=grad_output,
                    sequence_parallel=ctx.sequence_parallel,
                    tp_group=tp_group,
                ),
            )
            if handle is not None:
                handle.wait()
            # (owner, anchor, input, weight, bias, ...): only the input gets a gradient here.
            return (None, None, grad_input) + (None,) * (len(ctx.needs_input_grad) - 3)

    return SplitLinear


def split_refusals(config: Any) -> list[str]:
    """One sentence per Megatron setting the split cannot carry exactly."""
    problems = []
    if getattr(config, "gradient_accumulation_fusion", False):
        problems.append(
            "gradient_accumulation_fusion=True: the fused wgrad GEMM into main_grad is "
            "unverified with the split backward (turn it off: --no-gradient-accumulation-fusion)"
        )
    for attr, why in (
        ("delay_wgrad_compute", "TransformerEngine's own wgrad deferral"),
        ("defer_embedding_wgrad_compute", "a second deferral of the output layer's wgrad"),
        ("overlap_moe_expert_parallel_comm", "its combined schedule bypasses the split"),
        ("use_custom_fsdp", "Megatron-FSDP's own wgrad path"),
        ("use_megatron_fsdp", "Megatron-FSDP's own wgrad path"),
        ("enable_cuda_graph", "CUDA graphs replay captured kernels"),
        ("external_cuda_graph", "CUDA graphs replay captured kernels"),
    ):
        if getattr(config, attr, False):
            problems.append(f"{attr}=True: {why}")
    if int(getattr(config, "gtp_weight_remat_size", 1) or 1) > 1:
        problems.append("gtp_weight_remat_size > 1: GTP rematerialises weights in the backward")
    if int(getattr(config, "mtp_num_layers", 0) or 0) > 0:
        problems.append("mtp_num_layers > 0: MTP reuses the output weight within a microbatch")
    impl = getattr(config, "cuda_graph_impl", "none")
    if impl not in (None, "none"):
        problems.append(f"cuda_graph_impl={impl!r}: CUDA graphs replay captured kernels")
    return problems


TE_REFUSAL = (
    "TransformerEngine layers: their split is TE's delay_wgrad_compute/backward_dw "
    "(TE >= 2.3), unverified until a GPU check runs it, and megatron-core accepts "
    "delay_wgrad_compute only with overlap_moe_expert_parallel_comm; use the local layer "
    "spec (--transformer-impl local)"
)
"""The one refusal of zero-bubble schedules on TransformerEngine layers."""


def check_split_supported(config: Any, model_chunks: Any = ()) -> None:
    """Raise `UnsupportedMegatronError` (one line) if the split cannot be exact here.

    Reads the Megatron config and, when given, the modules of the model chunks: a
    TransformerEngine module anywhere is refused (`config.transformer_impl` names the
    default, not the layer spec a model was built with)."""
    problems = split_refusals(config)
    if not problems:
        for chunk in model_chunks:
            if any(type(m).__module__.startswith(_TE_MODULES) for m in chunk.modules()):
                problems.append(TE_REFUSAL)
                break
    if problems:
        raise UnsupportedMegatronError(
            f"the zero-bubble schedule (--schedule zb-h1) cannot run with {problems[0]}"
        )


_TE_MODULES = ("transformer_engine", "megatron.core.extensions.transformer_engine")
