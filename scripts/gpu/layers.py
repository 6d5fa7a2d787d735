"""The layers the GPU acceptance kit measures, and the one freezing mechanism it applies to them.

Two implementations of a decoder layer stack:
- `megatron`: megatron-core's own `TransformerBlock` with the local spec (the layers this project
  trains when TransformerEngine is absent): Megatron's Column/RowParallelLinear, whose backward
  runs `linear_with_frozen_weight` (input gradient only) for a weight that does not require grad;
- `sdpa`: the same LLaMA-style layer in plain PyTorch with `scaled_dot_product_attention` (flash
  attention on Hopper), a stand-in for the attention cost of a TransformerEngine layer, where the
  local spec's unfused attention inflates the share of work that freezing cannot touch.

Freezing is what the runtime does (docs/runtime.md): a frozen unit's weight has
`requires_grad=False` during the forward and the backward of that microbatch. Units are the
linear weights (`linear_qkv`, `linear_proj`, `linear_fc1`, `linear_fc2` of each layer), their
cost is their element count, as in `megatron_tf.freeze.units`.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

UNIT_NAMES = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


@dataclass(frozen=True)
class LayerShape:
    """A LLaMA-style decoder layer: RMSNorm, GQA attention, SwiGLU MLP, no biases."""

    name: str
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    seq: int
    micro_batch: int
    layers: int

    def as_dict(self) -> dict[str, int | str]:
        return dict(self.__dict__)


LLAMA_8B = LayerShape("llama-8b", 4096, 14336, 32, 8, 4096, 1, 2)
SMALL = LayerShape("small-1b", 2048, 5632, 16, 4, 2048, 1, 4)
TINY = LayerShape("tiny", 64, 176, 4, 2, 32, 2, 2)  # exactness and the CPU check


def init_single_process(device: torch.device) -> None:
    """A one-process group and Megatron's parallel state (tp = pp = 1), seeded."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    if device.type == "cpu":
        from megatron_tf.megatron.compat import enable_cpu_compat

        enable_cpu_compat()
    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=0,
            world_size=1,
            timeout=datetime.timedelta(minutes=2),
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    torch.manual_seed(1234)
    model_parallel_cuda_manual_seed(1234)


class Stack(torch.nn.Module):
    """A decoder stack with a uniform interface: [s, b, h] in, [s, b, h] out."""

    def __init__(self, shape: LayerShape, impl: str, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.shape = shape
        self.impl = impl
        if impl == "megatron":
            self.body = _megatron_block(shape, dtype, device)
        elif impl == "sdpa":
            self.body = torch.nn.ModuleList(_SdpaLayer(shape) for _ in range(shape.layers))
            self.body.to(device=device, dtype=dtype)
        else:
            raise ValueError(f"unknown layer implementation {impl!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "megatron":
            return self.body(hidden_states=x, attention_mask=None)
        for layer in self.body:
            x = layer(x)
        return x

    def units(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The freezable weights in forward order, named as Megatron names them."""
        out = []
        for name, p in self.named_parameters():
            if name.rsplit(".", 2)[-2] in UNIT_NAMES and name.endswith("weight"):
                out.append((name, p))
        return sorted(out, key=lambda np_: _forward_key(np_[0]))


def _forward_key(name: str) -> tuple[int, int]:
    layer = next(int(part) for part in name.split(".") if part.isdigit())
    unit = next(i for i, u in enumerate(UNIT_NAMES) if f".{u}." in f".{name}")
    return layer, unit


def _megatron_block(shape: LayerShape, dtype: torch.dtype, device: torch.device):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_block import TransformerBlock
    from megatron.core.transformer.transformer_config import TransformerConfig

    on_gpu = device.type == "cuda"
    config = TransformerConfig(
        num_layers=shape.layers,
        hidden_size=shape.hidden,
        ffn_hidden_size=shape.ffn,
        num_attention_heads=shape.heads,
        num_query_groups=shape.kv_heads,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        normalization="RMSNorm",
        hidden_dropout=0.0,
        attention_dropout=0.0,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        pipeline_dtype=dtype,
        use_cpu_initialization=not on_gpu,
        perform_initialization=True,
        gradient_accumulation_fusion=False,
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
    )
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    block = TransformerBlock(config, spec, pre_process=True, post_process=True)
    return block.to(device)


class _SdpaLayer(torch.nn.Module):
    """One LLaMA-style layer in plain PyTorch; module names follow Megatron's."""

    def __init__(self, s: LayerShape):
        super().__init__()
        self.head_dim = s.hidden // s.heads
        self.heads, self.kv_heads = s.heads, s.kv_heads
        qkv = (s.heads + 2 * s.kv_heads) * self.head_dim
        self.input_layernorm = torch.nn.RMSNorm(s.hidden)
        self.linear_qkv = torch.nn.Linear(s.hidden, qkv, bias=False)
        self.linear_proj = torch.nn.Linear(s.hidden, s.hidden, bias=False)
        self.pre_mlp_layernorm = torch.nn.RMSNorm(s.hidden)
        self.linear_fc1 = torch.nn.Linear(s.hidden, 2 * s.ffn, bias=False)
        self.linear_fc2 = torch.nn.Linear(s.ffn, s.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, batch, hidden = x.shape
        q, k, v = self.linear_qkv(self.input_layernorm(x)).split(
            [hidden, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], dim=-1
        )

        def heads(t: torch.Tensor, n: int) -> torch.Tensor:  # [s, b, n*d] -> [b, n, s, d]
            return t.view(seq, batch, n, self.head_dim).permute(1, 2, 0, 3)

        attn = F.scaled_dot_product_attention(
            heads(q, self.heads),
            heads(k, self.kv_heads),
            heads(v, self.kv_heads),
            is_causal=True,
            enable_gqa=True,
        )
        x = x + self.linear_proj(attn.permute(2, 0, 1, 3).reshape(seq, batch, hidden))
        gate, up = self.linear_fc1(self.pre_mlp_layernorm(x)).chunk(2, dim=-1)
        return x + self.linear_fc2(F.silu(gate) * up)


@contextlib.contextmanager
def frozen(units: list[tuple[str, torch.nn.Parameter]], names: set[str]) -> Iterator[None]:
    """Freeze `names` for one microbatch's forward and backward, as the runtime does."""
    for name, p in units:
        if name in names:
            p.requires_grad_(False)
    try:
        yield
    finally:
        for _, p in units:
            p.requires_grad_(True)


def pick_share(units: list[tuple[str, torch.nn.Parameter]], target: float) -> set[str]:
    """Units whose element count adds up closest to `target` of the total (greedy, large first).

    The runtime's policy takes a unit when it brings the frozen cost closer to the target; here
    the order is fixed (largest first) so that every share point is reproducible.
    """
    total = sum(p.numel() for _, p in units)
    chosen: set[str] = set()
    cost = 0
    for name, p in sorted(units, key=lambda np_: -np_[1].numel()):
        if abs(cost + p.numel() - target * total) < abs(cost - target * total):
            chosen.add(name)
            cost += p.numel()
    return chosen


def frozen_share(units: list[tuple[str, torch.nn.Parameter]], names: set[str]) -> float:
    total = sum(p.numel() for _, p in units)
    return sum(p.numel() for n, p in units if n in names) / total
