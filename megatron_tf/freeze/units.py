"""Freezable units: which parameter tensors may be frozen, and what freezing one saves.

Framework-light on purpose: the policy sees names, costs and layer order only; the Megatron
side (`megatron_tf.megatron.freeze_runtime`) finds the tensors in a model chunk and passes in
the megatron-core version's parameter names (`ParamNames`, from the guard's table).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

UnitKind = Literal["linear", "embedding", "output"]

Position = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class ParamNames:
    """How a megatron-core GPT names its parameters: which weights are freezable, and where each
    parameter is used in a layer's forward.

    Plain data, because the names are a fact of the megatron-core version: the table of
    supported versions (`megatron_tf.megatron.guard.SUPPORTED_VERSIONS`) holds one per series
    and the runtime passes it in; this package never imports megatron.
    """

    embedding: str
    """Regex of the word embedding's weight."""
    output: str
    """Regex of the output layer's weight."""
    linears: tuple[str, ...]
    """Module names whose `.weight` is a freezable linear (local and TE specs, MLA included)."""
    layer_slots: tuple[tuple[str, int], ...]
    """(regex, slot): where a parameter is used inside a transformer layer, input to output.
    Norms (`*layernorm*`), biases and position embeddings are never frozen."""
    _compiled: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        linear = r"(^|\.)(" + "|".join(self.linears) + r")\.weight$"
        slots = tuple((re.compile(pattern), slot) for pattern, slot in self.layer_slots)
        compiled = (re.compile(self.embedding), re.compile(self.output), re.compile(linear), slots)
        object.__setattr__(self, "_compiled", compiled)  # once per table; the record is frozen

    def classify(self, name: str) -> UnitKind | None:
        """The unit kind of a parameter name, or None when it is never frozen (norms, biases)."""
        embedding, output, linear, _ = self._compiled
        if embedding.search(name):
            return "embedding"
        if output.search(name):
            return "output"
        if linear.search(name):
            return "linear"
        return None

    def forward_position(self, name: str) -> Position:
        """Where parameter `name` is used in a GPT chunk's forward: (section, layer, slot, part).

        Sections: embeddings 0, decoder layers 1, final norm and anything unknown 2, output
        layer 3. Parts within a module: fused norm 0, weight 1, bias 2 (a bias is added after
        its weight's GEMM). A name the table does not know sits at the start of its layer: it
        is then frozen whenever a prefix reaches into that layer, which is never wrong, only
        cautious.
        """
        embedding, output, _, slots = self._compiled
        part = 0 if ".layer_norm_" in name else 2 if name.endswith("bias") else 1
        if embedding.search(name):
            return (0, 0, 0, part)
        if re.search(r"(^|\.)embedding\.", name):  # position / tokentype embeddings: added after
            return (0, 0, 1, part)
        if output.search(name):
            return (3, 0, 0, part)
        match = _LAYER_INDEX.search(name)
        if match is None:
            return (2, 0, 0, part)
        layer = int(match.group(2))
        for pattern, slot in slots:
            if pattern.search(name):
                return (1, layer, slot, part)
        return (1, layer, 0, 0)


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


def make_units(
    params: list[tuple[str, int]], table: ParamNames, costs: dict[str, float] | None = None
) -> list[UnitSpec]:
    """Units from (name, numel) pairs, sorted in forward order (`table.forward_position`:
    Megatron registers a layer's attention output projection before its QKV projection);
    `costs` overrides numel by name."""
    found = []
    for index, (name, numel) in enumerate(params):
        kind = table.classify(name)
        if kind is None:
            continue
        cost = float(costs[name]) if costs and name in costs else float(numel)
        found.append((table.forward_position(name), index, name, kind, cost))
    found.sort()
    return [
        UnitSpec(name=name, kind=kind, cost=cost, order=order)
        for order, (_, _, name, kind, cost) in enumerate(found)
    ]


def prefix_closure(
    names: list[str], units: list[UnitSpec], frozen: frozenset[int], table: ParamNames
) -> list[str]:
    """Every parameter to freeze with `frozen` units on the first virtual stage.

    The frozen units there form a prefix in forward order. To make autograd stop at the first
    trainable unit (no weight AND no input gradient below it), every parameter used before
    that unit is frozen too: norms, biases and position embeddings included. All units
    frozen means the whole chunk, whatever comes after the last unit (final norm).
    """
    trainable = [u for i, u in enumerate(units) if i not in frozen]
    if not trainable:
        return list(names)
    boundary = table.forward_position(min(trainable, key=lambda u: u.order).name)
    unit_names = {u.name for u in units}
    frozen_units = {units[i].name for i in frozen}
    return [
        n
        for n in names
        if n in frozen_units or (n not in unit_names and table.forward_position(n) < boundary)
    ]
