"""The forward step and the loss of a GPT microbatch, and one call of Megatron's schedule.

The trainer (`train/trainer.py`), the in-job planner and the profiler (`profile/runner.py`) all
run an iteration through `run_schedule` with `forward_step`, so a profile times exactly the
step that trains: same batch transfer, same forward, same loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import torch

__all__ = ["Batch", "forward_step", "loss_func", "run_schedule"]

Batch = dict[str, torch.Tensor]
"""One microbatch: `tokens`, `labels`, `loss_mask` and `position_ids`, each [mbs, seq]."""


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean token loss of the microbatch, in the (loss, reporting dict) form Megatron expects."""
    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.reshape(-1).float()
    loss = torch.sum(losses * mask) / mask.sum()
    return loss, {"lm loss": loss.detach().clone()}


def forward_step(
    data_iterator: Iterator[Batch] | None, model: torch.nn.Module
) -> tuple[torch.Tensor, Callable[..., Any]]:
    """Megatron's `forward_step_func`: run one microbatch through a model chunk.

    Every chunk draws its microbatch (first stages need tokens, last stages labels, the middle
    ones neither), which keeps the iterators of all chunks in step. Causal attention comes
    from the layer spec: a batch's own `attention_mask` (the corpus may carry one) is not used.
    """
    if data_iterator is None:
        raise RuntimeError("forward_step needs a data iterator on every chunk")
    batch = next(data_iterator)
    device = _device_of(model)
    tokens, positions, labels, loss_mask = (
        batch[k].to(device) for k in ("tokens", "position_ids", "labels", "loss_mask")
    )
    output = model(tokens, positions, attention_mask=None, labels=labels)
    return output, partial(loss_func, loss_mask)


def run_schedule(
    chunks: list[torch.nn.Module],
    batches: Iterable[Iterator[Batch]],
    *,
    microbatches: int,
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """One call of megatron-core's pipeline schedule over this rank's `chunks`.

    `batches` holds one iterator per chunk, each yielding the same `microbatches` batches.
    Returns the loss dicts of the microbatches (non-empty on the last pipeline stage only).
    The schedule is fetched per call: the freeze runtime's hooks must already be installed.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    iterators = list(batches)
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iterators if len(iterators) > 1 else iterators[0],
        model=chunks,
        num_microbatches=microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def _device_of(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
