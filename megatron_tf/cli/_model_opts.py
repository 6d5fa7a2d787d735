"""Model flags (and --tp/--dp) shared by `pretrain` and `profile`.

Both commands take the same GPT flags with the same help text but show them in different help
panels, so this module holds the text once and `model_option` makes the typer.Option for a
command's panel: `num_layers: Annotated[int, model_option("num_layers", _MODEL)] = 4`.
`model_kwargs` then picks the ModelConfig arguments out of the parsed values, so neither
command spells the nine names out again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import typer

MODEL_HELP: dict[str, str] = {
    "num_layers": "Transformer layers.",
    "hidden_size": "Hidden size.",
    "num_attention_heads": "Attention heads.",
    "ffn_hidden_size": "MLP hidden size; 0 = 4 x hidden.",
    "seq_length": "Tokens per sample.",
    "vocab_size": "Vocabulary size.",
    "micro_batch_size": "Samples per microbatch.",
    "recompute": "Activation recompute: none, full, selective.",
    "seed": "Seed of weights and data.",
}
"""Help text of each model flag, keyed by its ModelConfig field (the flag is the dashed name)."""

LAYOUT_HELP: dict[str, str] = {
    "tp": "Tensor-parallel size.",
    "dp": "Data-parallel size.",
}
"""The layout flags both commands describe alike (pp, vpp, ... differ between them)."""

MODEL_FLAGS: tuple[str, ...] = tuple(MODEL_HELP)
"""The ModelConfig fields that are CLI flags (tie_embeddings is not one)."""


def model_option(name: str, panel: str, *, help_text: str | None = None) -> Any:
    """The typer.Option of model or layout flag `name`, shown in help panel `panel`.

    `help_text` replaces the shared text where a command says more (pretrain's seed also seeds the
    freezing).
    """
    text = help_text if help_text is not None else {**MODEL_HELP, **LAYOUT_HELP}[name]
    return typer.Option(help=text, rich_help_panel=panel)


def model_kwargs(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ModelConfig keyword arguments among a command's parsed flag values."""
    return {name: values[name] for name in MODEL_FLAGS}
