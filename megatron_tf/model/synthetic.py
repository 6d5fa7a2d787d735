"""Synthetic microbatches for the profiler, benchmarks and tests.

The data is a deterministic function of (seed, iteration, microbatch), so every rank of a
pipeline (and every re-run) sees the same tokens without a dataset. Training reads its corpus
through `train/data.py`; both feed `model/step.forward_step` the same `Batch` shape.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from megatron_tf.formats.layout import ModelConfig
from megatron_tf.model.step import Batch

__all__ = ["synthetic_batch", "synthetic_batches"]


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
