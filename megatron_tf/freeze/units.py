"""Freezable units: which parameter tensors may be frozen, and what freezing one saves.

Framework-light on purpose: the policy sees names, costs and layer order only; the Megatron
side (`megatron_tf.megatron.freeze_runtime`) finds the tensors in a model chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

UnitKind = Literal["linear", "embedding", "output"]

# Megatron GPT parameter names (local and TE specs). Weights of these modules are freezable;
# norms (`*layernorm*`, `final_layernorm`), biases and position embeddings never are.
_EMBEDDING = re.compile(r"(^|\.)embedding\.word_embeddings\.weight$")
_OUTPUT = re.compile(r"(^|\.)output_layer\.weight$")
_LINEAR = re.compile(
    r"(^|\.)(linear_qkv|linear_proj|linear_fc1|linear_fc2|linear_q|linear_kv|"
    r"linear_q_proj|linear_kv_down_proj|linear_kv_up_proj|linear_q_down_proj|linear_q_up_proj)"
    r"\.weight$"
)
_LAYER_INDEX = re.compile(r"(^|\.)layers\.(\d+)\.")

# Where a parameter is used inside a transformer layer, from input to output (megatron-core
# 0.19 TransformerLayer.forward: input norm, attention, post/cross attention, pre-MLP norm,
# MLP). MLA runs its down projections, their norms, then the up projections. TE's fused
# `layer_norm_*` parameters of linear_qkv / linear_fc1 are used before that linear's weight.
_LAYER_SLOTS: tuple[tuple[re.Pattern[str], int], ...] = tuple(
    (re.compile(pattern), slot)
    for pattern, slot in (
        (r"\.input_layernorm\.", 0),
        (
            r"\.(linear_qkv|linear_q|linear_kv|linear_q_proj|linear_q_down_proj|"
            r"linear_kv_down_proj)\.",
            1,
        ),
        (r"\.(q_layernorm|k_layernorm|kv_layernorm)\.", 2),
        (r"\.(linear_q_up_proj|linear_kv_up_proj)\.", 3),
        (r"\.self_attention\.linear_proj\.", 4),
        (r"\.(post_self_attn_layernorm|pre_cross_attn_layernorm|cross_attention)\.", 5),
        (r"\.pre_mlp_layernorm\.", 6),
        (r"\.mlp\.router\.", 7),
        (r"\.linear_fc1\.", 8),
        (r"\.linear_fc2\.", 9),
        (r"\.post_mlp_layernorm\.", 10),
    )
)

Position = tuple[int, int, int, int]


def forward_position(name: str) -> Position:
    """Where parameter `name` is used in a GPT chunk's forward: (section, layer, slot, part).

    Sections: embeddings 0, decoder layers 1, final norm and anything unknown 2, output
    layer 3. Parts within a module: fused norm 0, weight 1, bias 2 (a bias is added after its
    weight's GEMM). A name the table does not know sits at the start of its layer: it is then
    frozen whenever a prefix reaches into that layer, which is never wrong, only cautious.
    """
    part = 0 if ".layer_norm_" in name else 2 if name.endswith("bias") else 1
    if _EMBEDDING.search(name):
        return (0, 0, 0, part)
    if re.search(r"(^|\.)embedding\.", name):  # position / tokentype embeddings: added after
        return (0, 0, 1, part)
    if _OUTPUT.search(name):
        return (3, 0, 0, part)
    match = _LAYER_INDEX.search(name)
    if match is None:
        return (2, 0, 0, part)
    layer = int(match.group(2))
    for pattern, slot in _LAYER_SLOTS:
        if pattern.search(name):
            return (1, layer, slot, part)
    return (1, layer, 0, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitSpec:
    """One freezable weight tensor of a model chunk."""

    name: str
    """Parameter name within its chunk (as `named_parameters()` gives it)."""
    kind: UnitKind
    """`linear`, `embedding` (word embedding) or `output` (output layer)."""
    cost: float
    """Relative wgrad cost (numel or a measured share); only ratios between units matter."""
    order: int
    """Position from the chunk's input to its output (embedding first, output layer last)."""


def classify(name: str) -> UnitKind | None:
    """The unit kind of a parameter name, or None when it is never frozen (norms, biases)."""
    if _EMBEDDING.search(name):
        return "embedding"
    if _OUTPUT.search(name):
        return "output"
    if _LINEAR.search(name):
        return "linear"
    return None


def make_units(
    params: list[tuple[str, int]], costs: dict[str, float] | None = None
) -> list[UnitSpec]:
    """Units from (name, numel) pairs, sorted in forward order (`forward_position`; Megatron
    registers linear_proj before linear_qkv); `costs` overrides numel by name."""
    found = []
    for index, (name, numel) in enumerate(params):
        kind = classify(name)
        if kind is None:
            continue
        cost = float(costs[name]) if costs and name in costs else float(numel)
        found.append((forward_position(name), index, name, kind, cost))
    found.sort()
    return [
        UnitSpec(name=name, kind=kind, cost=cost, order=order)
        for order, (_, _, name, kind, cost) in enumerate(found)
    ]


def prefix_closure(names: list[str], units: list[UnitSpec], frozen: frozenset[int]) -> list[str]:
    """Every parameter to freeze with `frozen` units on the first virtual stage.

    The frozen units there form a prefix in forward order. To make autograd stop at the first
    trainable unit (no weight AND no input gradient below it), every parameter used before
    that unit is frozen too: norms, biases and position embeddings included. All units
    frozen means the whole chunk, whatever comes after the last unit (final norm).
    """
    trainable = [u for i, u in enumerate(units) if i not in frozen]
    if not trainable:
        return list(names)
    boundary = forward_position(min(trainable, key=lambda u: u.order).name)
    unit_names = {u.name for u in units}
    frozen_units = {units[i].name for i in frozen}
    return [
        n
        for n in names
        if n in frozen_units or (n not in unit_names and forward_position(n) < boundary)
    ]
