"""The held-out samples that validation and the noise probe read, whichever data trains.

One source per run, two streams: `validation` (the set `--eval-interval` evaluates) and
`noise_probe` (the gradients `--noise-probe-at`, the auto budget and re-pricing measure). The
trainer asks for microbatches of a stream and never learns where they come from:

- the embedded corpus: fresh text of its Markov chain, drawn with a seed of its own per stream,
  never in the training files (`corpus.heldout_samples`);
- a user's dataset: the validation split Megatron's builder cut from it (`--split`) or the
  `--valid-data-path` file, one epoch of it in Megatron's shuffled order. Validation reads its
  samples from the first on, the probe from the last one backwards, so a validation split with
  room for both keeps them apart; a smaller one wraps around (samples then repeat).

Either way a stream gives the same tokens on every rank and in every run on the same data
(and, for a user's dataset, the same `--data-seed`, which seeds Megatron's shuffle), so two
runs' validation losses differ only by what the runs learned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from megatron_tf.errors import ConfigError
from megatron_tf.train.corpus import CorpusInfo, heldout_samples
from megatron_tf.train.data import PreparedData, collate

if TYPE_CHECKING:
    from megatron_tf.formats.layout import ModelConfig

__all__ = ["CorpusHeldOut", "HeldOut", "SplitHeldOut", "Stream", "heldout_source"]

Stream = Literal["validation", "noise_probe"]
Batch = dict[str, Any]  # tokens, labels, loss_mask, position_ids: tensors; attention_mask


class HeldOut(Protocol):
    """Microbatches of held-out samples, in a fixed order per stream."""

    def microbatches(self, stream: Stream, samples: int) -> list[Batch]:
        """`samples // micro_batch_size` microbatches of the stream, the same on every call."""
        ...


@dataclass(frozen=True, slots=True)
class CorpusHeldOut:
    """The embedded corpus: text of its chain drawn apart from the training files."""

    corpus: CorpusInfo
    model: ModelConfig

    def microbatches(self, stream: Stream, samples: int) -> list[Batch]:
        import torch

        tokens = torch.from_numpy(
            heldout_samples(self.corpus.config, samples, self.model.seq_length + 1, stream)
        )
        mbs, length = self.model.micro_batch_size, self.model.seq_length
        positions = torch.arange(length).unsqueeze(0).expand(mbs, -1).contiguous()
        out: list[Batch] = []
        for first in range(0, samples - mbs + 1, mbs):
            chunk = tokens[first : first + mbs]
            out.append(
                {
                    "tokens": chunk[:, :-1].contiguous(),
                    "labels": chunk[:, 1:].contiguous(),
                    "loss_mask": torch.ones(mbs, length),
                    "position_ids": positions,
                    "attention_mask": None,
                }
            )
        return out


@dataclass(frozen=True, slots=True)
class SplitHeldOut:
    """The validation split of a user's dataset (a Megatron GPTDataset of one epoch)."""

    dataset: Any
    model: ModelConfig

    def microbatches(self, stream: Stream, samples: int) -> list[Batch]:
        size = len(self.dataset)
        mbs = self.model.micro_batch_size
        order = sample_order(stream, samples - samples % mbs, size)
        return [collate(self.dataset, order[i : i + mbs]) for i in range(0, len(order), mbs)]


def sample_order(stream: Stream, samples: int, size: int) -> list[int]:
    """Which of the `size` validation samples a stream reads: validation from the first on,
    the noise probe from the last backwards, wrapping around when `samples` exceeds `size`."""
    if stream == "validation":
        return [i % size for i in range(samples)]
    return [size - 1 - i % size for i in range(samples)]


def heldout_source(prepared: PreparedData, model: ModelConfig, valid: Any | None) -> HeldOut:
    """The run's held-out source: the embedded corpus's, else the validation dataset `valid`.

    Raises ConfigError when there is neither (the launcher refuses such flags before this)."""
    if prepared.corpus is not None:
        return CorpusHeldOut(prepared.corpus, model)
    if valid is not None and len(valid) > 0:
        return SplitHeldOut(valid, model)
    raise ConfigError(
        "no held-out set: with --data-path give a validation split (--split 98,2,0) or "
        "--train-data-path with --valid-data-path"
    )
