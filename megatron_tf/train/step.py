"""Synthetic data and the forward-step function Megatron's schedules call for a GPT.

The data is a deterministic function of (seed, iteration, microbatch), so every rank of a
pipeline (and every re-run) sees the same tokens without a dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch

from megatron_tf.formats.layout import ModelConfig

__all__ = ["Batch", "gpt_forward_step", "loss_func", "synthetic_batches"]

Batch = dict[str, torch.Tensor]


def synthetic_batch(model: ModelConfig, *, iteration: int, microbatch: int) -> Batch:
    """One microbatch of random tokens; labels are the tokens shifted by one."""
    gen = torch.Generator().manual_seed(model.seed * 1_000_003 + iteration * 10_007 + microbatch)
    shape = (model.micro_batch_size, model.seq_length + 1)
    data = torch.randint(0, model.vocab_size, shape, generator=gen)
    positions = torch.arange(model.seq_length).unsqueeze(0).expand(model.micro_batch_size, -1)
    return {
        "tokens": data[:, :-1].contiguous(),
        "labels": data[:, 1:].contiguous(),
        "loss_mask": torch.ones(model.micro_batch_size, model.seq_length),
        "position_ids": positions.contiguous(),
    }


def synthetic_batches(model: ModelConfig, *, iteration: int, microbatches: int) -> Iterator[Batch]:
    """The microbatches of one iteration, in order (what Megatron's data iterator yields)."""
    for m in range(microbatches):
        yield synthetic_batch(model, iteration=iteration, microbatch=m)


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean token loss of the microbatch, in the (loss, reporting dict) form Megatron expects."""
    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.reshape(-1).float()
    loss = torch.sum(losses * mask) / mask.sum()
    return loss, {"lm loss": loss.detach().clone()}


def gpt_forward_step(
    data_iterator: Iterator[Batch] | None, model: torch.nn.Module
) -> tuple[torch.Tensor, Callable[..., Any]]:
    """Megatron's `forward_step_func`: run one microbatch through a model chunk.

    Every stage draws its batch (first stages need tokens, last stages labels); the middle
    stages ignore it, which keeps the iterators of all chunks in step.
    """
    batch = next(data_iterator) if data_iterator is not None else None
    device = _device_of(model)
    if batch is None:
        raise RuntimeError("gpt_forward_step needs a data iterator on every chunk")
    batch = {k: v.to(device) for k, v in batch.items()}
    output = model(
        batch["tokens"], batch["position_ids"], attention_mask=None, labels=batch["labels"]
    )
    return output, partial(loss_func, batch["loss_mask"])


def _device_of(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
