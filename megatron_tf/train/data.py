"""Training data: Megatron indexed datasets through Megatron's GPT dataset builder.

Three sources, one path through `BlendedMegatronDatasetBuilder` + `GPTDatasetConfig`:
- `synthetic` (the default): the embedded Markov-chain corpus of `corpus.py`, written on first
  use under the cache dir; its entropy rate is the loss floor reported with the metrics.
- `path`: a user's indexed dataset (`--data-path PREFIX` for `PREFIX.bin` / `PREFIX.idx`) with a
  tokenizer Megatron supports (`--tokenizer-type`, `--tokenizer-model`, `--vocab-file`, ...).
- `mock`: Megatron's `MockGPTDataset` (`--mock-data`), for throughput runs.

`prepare_data` runs once in the launching process, before any worker starts, so a missing file
or a tokenizer that does not match the data exits 2 with one line. The workers then build the
dataset; Megatron's builder writes its index caches on global rank 0 first and lets the other
ranks read them after a barrier (`build_generic_dataset`), so one process per rank is safe.

Sample order: iteration i, microbatch m, data-parallel rank d reads global samples
`((i * M + m) * dp + d) * mbs + [0, mbs)`. The data position in a checkpoint is therefore just the
number of iterations consumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from megatron_tf.errors import ConfigError
from megatron_tf.megatron import datasets
from megatron_tf.train.corpus import (
    CorpusConfig,
    CorpusInfo,
    default_cache_dir,
    ensure_corpus,
    heldout_samples,
)

if TYPE_CHECKING:
    import torch

    from megatron_tf.formats.layout import ModelConfig

DataSource = Literal["synthetic", "path", "mock"]
TOKENIZER_TYPES: tuple[str, ...] = (
    "NullTokenizer",
    "GPT2BPETokenizer",
    "HuggingFaceTokenizer",
    "SentencePieceTokenizer",
    "GPTSentencePieceTokenizer",
    "Llama2Tokenizer",
    "TikTokenizer",
)


@dataclass(kw_only=True, slots=True)
class DataConfig:
    """Where training tokens come from."""

    source: DataSource = "synthetic"
    """`synthetic` (embedded corpus), `path` (`--data-path`) or `mock` (`--mock-data`)."""
    data_path: str | None = None
    """Indexed-dataset prefix (without `.bin`/`.idx`) when `source` is `path`."""
    tokenizer_type: str = "NullTokenizer"
    """Megatron tokenizer type (`--tokenizer-type`); NullTokenizer uses ids as they are."""
    tokenizer_model: str | None = None
    """Tokenizer model file or HuggingFace name (`--tokenizer-model`)."""
    vocab_file: str | None = None
    """Vocabulary file (`--vocab-file`), for GPT2BPETokenizer."""
    merge_file: str | None = None
    """BPE merges file (`--merge-file`), for GPT2BPETokenizer."""
    cache_dir: str | None = None
    """Where the embedded corpus and Megatron's index caches live (`--cache-dir`)."""
    corpus_documents: int = 512
    """Documents in the embedded corpus (each 2048 tokens)."""
    corpus_seed: int = 1234
    """Seed of the embedded corpus (chain and text): the task itself (`--corpus-seed`)."""
    data_seed: int | None = None
    """Seed of the sample order (Megatron's dataset shuffle, `--data-seed`); None: the model's
    seed. Kept apart from the corpus seed so a seed study varies the order, not the task."""

    def __post_init__(self) -> None:
        if self.source not in ("synthetic", "path", "mock"):
            raise ConfigError(f"unknown data source {self.source!r}")
        if self.source == "path" and not self.data_path:
            raise ConfigError("--data-path is required for an indexed dataset")
        if self.source != "path" and self.data_path:
            raise ConfigError("--data-path and --mock-data exclude each other")
        if self.tokenizer_type not in TOKENIZER_TYPES:
            raise ConfigError(
                f"--tokenizer-type must be one of {', '.join(TOKENIZER_TYPES)}, "
                f"got {self.tokenizer_type!r}"
            )

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    def corpus_config(self, vocab_size: int) -> CorpusConfig:
        return CorpusConfig(
            vocab_size=vocab_size, documents=self.corpus_documents, seed=self.corpus_seed
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        return cls(**data)


@dataclass(kw_only=True, slots=True)
class PreparedData:
    """What the workers need, decided in the launching process."""

    prefix: str | None
    """Indexed-dataset prefix; None for mock data."""
    corpus: CorpusInfo | None
    """The embedded corpus (entropy rate, loss floor), when that is the source."""


def prepare_data(data: DataConfig, model: ModelConfig) -> PreparedData:
    """Check the data and tokenizer against the model, and write the embedded corpus if needed.

    Raises ConfigError naming the flag when a file is missing, the tokenizer's vocabulary does
    not fit `--vocab-size`, or the data holds ids the tokenizer (or the model) cannot represent.
    """
    if data.source == "mock":
        return PreparedData(prefix=None, corpus=None)
    if data.source == "synthetic":
        info = ensure_corpus(data.corpus_config(model.vocab_size), data.resolved_cache_dir())
        return PreparedData(prefix=info.path_prefix, corpus=info)
    prefix = _strip_suffix(str(data.data_path))
    for suffix in (".bin", ".idx"):
        if not Path(prefix + suffix).is_file():
            raise ConfigError(f"--data-path {data.data_path}: {prefix + suffix} does not exist")
    tokenizer = build_tokenizer(data, model)
    if tokenizer.vocab_size > model.vocab_size:
        raise ConfigError(
            f"--tokenizer-type {data.tokenizer_type} has {tokenizer.vocab_size} tokens but "
            f"--vocab-size is {model.vocab_size}: raise --vocab-size"
        )
    max_id = datasets.max_token_id(prefix)
    if max_id >= tokenizer.vocab_size:
        raise ConfigError(
            f"--data-path {data.data_path} holds token id {max_id} but --tokenizer-type "
            f"{data.tokenizer_type} has only {tokenizer.vocab_size} tokens: the data was "
            f"tokenized with another tokenizer"
        )
    return PreparedData(prefix=prefix, corpus=None)


def build_tokenizer(data: DataConfig, model: ModelConfig) -> Any:
    """A Megatron tokenizer for the `--tokenizer-*` flags (`megatron/datasets.py` builds it).

    Raises ConfigError naming the flag when one is missing or the library refuses the files.
    """
    if data.tokenizer_type in ("GPT2BPETokenizer",) and not (data.vocab_file and data.merge_file):
        raise ConfigError("--tokenizer-type GPT2BPETokenizer needs --vocab-file and --merge-file")
    if data.tokenizer_type not in ("NullTokenizer", "GPT2BPETokenizer") and not (
        data.tokenizer_model
    ):
        raise ConfigError(f"--tokenizer-type {data.tokenizer_type} needs --tokenizer-model")
    for flag, value in (
        ("--vocab-file", data.vocab_file),
        ("--merge-file", data.merge_file),
    ):
        if value and not Path(value).is_file():
            raise ConfigError(f"{flag} {value} does not exist")
    try:
        return datasets.build_tokenizer(
            data.tokenizer_type,
            vocab_size=model.vocab_size,
            tokenizer_model=data.tokenizer_model,
            vocab_file=data.vocab_file,
            merge_file=data.merge_file,
        )
    except ConfigError:
        raise
    except Exception as exc:  # a tokenizer library's own error: report it on one line
        raise ConfigError(
            f"--tokenizer-type {data.tokenizer_type} could not be loaded: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _strip_suffix(path: str) -> str:
    for suffix in (".bin", ".idx"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


# ----------------------------------------------------------------------------------------------
# Worker side (torch + megatron)


def build_train_dataset(
    data: DataConfig, prepared: PreparedData, model: ModelConfig, num_samples: int
) -> Any:
    """The training split as a Megatron GPTDataset (or MockGPTDataset) of `num_samples` samples.

    Must be called on every rank (Megatron's builder holds a barrier). Every rank builds it: the
    first and last pipeline stages read tokens and labels, and the cost on the others is a
    memory map.
    """
    if data.source == "path":
        tokenizer = build_tokenizer(data, model)
    else:
        tokenizer = datasets.null_text_tokenizer(model.vocab_size)
    return datasets.build_gpt_dataset(
        prepared.prefix,
        num_samples=num_samples,
        seq_length=model.seq_length,
        seed=model.seed if data.data_seed is None else data.data_seed,
        tokenizer=tokenizer,
        cache_dir=data.resolved_cache_dir() / "megatron_index",
    )


@dataclass(kw_only=True, slots=True)
class BatchPlan:
    """Which samples each microbatch of an iteration reads on this data-parallel rank."""

    micro_batch_size: int
    microbatches: int
    dp_rank: int
    dp_size: int

    @property
    def samples_per_iteration(self) -> int:
        """Global batch size: micro_batch_size * microbatches * dp."""
        return self.micro_batch_size * self.microbatches * self.dp_size

    def sample_ids(self, iteration: int, microbatch: int) -> range:
        first = (
            (iteration * self.microbatches + microbatch) * self.dp_size + self.dp_rank
        ) * self.micro_batch_size
        return range(first, first + self.micro_batch_size)


def collate(dataset: Any, ids: range) -> dict[str, torch.Tensor]:
    """Stack the GPT samples `ids` into one microbatch (tokens, labels, masks, positions)."""
    import torch

    samples = [dataset[i] for i in ids]
    batch = {
        key: torch.stack([s[key] for s in samples])
        for key in ("tokens", "labels", "loss_mask", "position_ids")
    }
    if samples[0].get("attention_mask") is not None:
        batch["attention_mask"] = torch.stack([s["attention_mask"] for s in samples])
    else:
        batch["attention_mask"] = None
    return batch


def iteration_iterators(
    dataset: Any, plan: BatchPlan, iteration: int, chunks: int
) -> list[Iterator[dict[str, torch.Tensor]]]:
    """One iterator per model chunk, each yielding this iteration's microbatches in order.

    Megatron's interleaved schedule calls `next()` on chunk c's iterator for each forward of
    chunk c, in microbatch order per chunk; giving each chunk its own iterator over the same
    microbatches keeps every chunk's microbatch ids aligned with the data.
    """
    return [_microbatches(dataset, plan, iteration) for _ in range(chunks)]


def heldout_microbatches(
    prepared: PreparedData, model: ModelConfig, samples: int, stream: str
) -> list[dict[str, torch.Tensor]]:
    """Microbatches of `samples` held-out samples of the embedded corpus (`corpus.py`), the same
    on every rank and in every run; the validation set and the noise probe read these."""
    import torch

    if prepared.corpus is None:
        raise ConfigError("a validation set needs the embedded corpus (no --data-path/--mock-data)")
    tokens = torch.from_numpy(
        heldout_samples(prepared.corpus.config, samples, model.seq_length + 1, stream)
    )
    mbs = model.micro_batch_size
    positions = torch.arange(model.seq_length).unsqueeze(0).expand(mbs, -1).contiguous()
    out = []
    for first in range(0, samples - mbs + 1, mbs):
        chunk = tokens[first : first + mbs]
        out.append(
            {
                "tokens": chunk[:, :-1].contiguous(),
                "labels": chunk[:, 1:].contiguous(),
                "loss_mask": torch.ones(mbs, model.seq_length),
                "position_ids": positions,
                "attention_mask": None,
            }
        )
    return out


def _microbatches(
    dataset: Any, plan: BatchPlan, iteration: int
) -> Iterator[dict[str, torch.Tensor]]:
    for m in range(plan.microbatches):
        yield collate(dataset, plan.sample_ids(iteration, m))
