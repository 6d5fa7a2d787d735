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


def layer_position(name: str, kind: UnitKind) -> tuple[int, int]:
    """Sort key from input to output: (section, layer index within the chunk)."""
    if kind == "embedding":
        return (0, 0)
    if kind == "output":
        return (2, 0)
    match = _LAYER_INDEX.search(name)
    return (1, int(match.group(2)) if match else 0)


def make_units(
    params: list[tuple[str, int]], costs: dict[str, float] | None = None
) -> list[UnitSpec]:
    """Units from (name, numel) pairs in model order; `costs` overrides numel by name."""
    found = []
    for index, (name, numel) in enumerate(params):
        kind = classify(name)
        if kind is None:
            continue
        cost = float(costs[name]) if costs and name in costs else float(numel)
        found.append((layer_position(name, kind), index, name, kind, cost))
    found.sort()
    return [
        UnitSpec(name=name, kind=kind, cost=cost, order=order)
        for order, (_, _, name, kind, cost) in enumerate(found)
    ]
