"""Training data: Megatron indexed datasets through Megatron's GPT dataset builder.

Three sources, one path through `BlendedMegatronDatasetBuilder` + `GPTDatasetConfig`:
- `synthetic` (the default): the embedded Markov-chain corpus of `corpus.py`, written on first
  use under the cache dir; its entropy rate is the loss floor reported with the metrics.
- `path`: a user's indexed dataset with a tokenizer Megatron supports (`--tokenizer-type`,
  `--tokenizer-model`, `--vocab-file`, ...), in Megatron-LM's two conventions: `--data-path
  PREFIX` (`PREFIX.bin` / `PREFIX.idx`) cut into train / validation / test documents by
  `--split` (default "100,0,0": every document trains), or one file per split
  (`--train-data-path`, `--valid-data-path`).
- `mock`: Megatron's `MockGPTDataset` (`--mock-data`), for throughput runs.

The held-out set that validation and the noise probe read (`heldout.py`) is the embedded
corpus's own held-out text, or the validation split of the user's data.

`prepare_data` runs once in the launching process, before any worker starts, so a missing file
or a tokenizer that does not match the data exits 2 with one line. The workers then build the
dataset; Megatron's builder writes its index caches on global rank 0 first and lets the other
ranks read them after a barrier (`build_generic_dataset`), so one process per rank is safe.

Sample order: iteration i, microbatch m, data-parallel rank d reads global samples
`((i * M + m) * dp + d) * mbs + [0, mbs)`. The data position in a checkpoint is therefore just the
number of iterations consumed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
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
    """Indexed-dataset prefix (without `.bin`/`.idx`) when `source` is `path`, cut by `split`."""
    split: str | None = None
    """Megatron's `--split` for `data_path`: train, validation, test weights of its documents
    ("98,2,0"); None: "100,0,0", every document trains and there is no validation split."""
    train_data_path: str | None = None
    """Prefix of the training file when each split has its own (`--train-data-path`)."""
    valid_data_path: str | None = None
    """Prefix of the validation file (`--valid-data-path`), with `train_data_path`."""
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
        given = [
            flag
            for flag, value in (
                ("--data-path", self.data_path),
                ("--train-data-path", self.train_data_path),
                ("--valid-data-path", self.valid_data_path),
            )
            if value
        ]
        if self.valid_data_path and not self.train_data_path:
            raise ConfigError(
                "--valid-data-path needs --train-data-path (or take the validation set from "
                "--data-path with --split)"
            )
        if self.source == "path" and not (self.data_path or self.train_data_path):
            raise ConfigError(
                "an indexed dataset needs --data-path (or --train-data-path with --valid-data-path)"
            )
        if self.source != "path" and given:
            raise ConfigError(f"{given[0]} and --mock-data exclude each other")
        if self.data_path and (self.train_data_path or self.valid_data_path):
            raise ConfigError(
                "--data-path excludes --train-data-path/--valid-data-path (Megatron's two "
                "conventions: one dataset cut by --split, or one file per split)"
            )
        if self.split is not None:
            if not self.data_path:
                raise ConfigError(
                    "--split cuts --data-path into train/validation/test documents: add "
                    "--data-path (with --train-data-path each split is its own file)"
                )
            parse_split(self.split)
        if self.tokenizer_type not in TOKENIZER_TYPES:
            raise ConfigError(
                f"--tokenizer-type must be one of {', '.join(TOKENIZER_TYPES)}, "
                f"got {self.tokenizer_type!r}"
            )

    @property
    def effective_split(self) -> str:
        """The split Megatron's builder gets for `data_path` ("100,0,0" unless `--split`)."""
        return self.split if self.split is not None else "100,0,0"

    @property
    def has_heldout(self) -> bool:
        """A held-out set exists: the embedded corpus's, a validation split, or a file."""
        if self.source == "synthetic":
            return True
        if self.source == "mock":
            return False
        return bool(self.valid_data_path) or parse_split(self.effective_split)[1] > 0

    def describe(self) -> str:
        """The data in one phrase, for reports: what trains and what validates."""
        if self.source == "synthetic":
            return f"embedded corpus (--corpus-seed {self.corpus_seed}), its held-out text"
        if self.source == "mock":
            return "Megatron's mock GPT data"
        if self.train_data_path:
            return (
                f"--train-data-path {self.train_data_path}, --valid-data-path "
                f"{self.valid_data_path} ({self.tokenizer_type})"
            )
        return (
            f"--data-path {self.data_path} --split {self.effective_split} ({self.tokenizer_type})"
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
    """Indexed-dataset prefix of the training data (cut by the split); None for mock data."""
    corpus: CorpusInfo | None
    """The embedded corpus (entropy rate, loss floor), when that is the source."""
    valid_prefix: str | None = None
    """Prefix of the validation file (`--valid-data-path`); None: the split cuts `prefix`."""


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
    tokenizer = None
    prefixes: dict[str, str] = {}
    for flag, path in (
        ("--data-path", data.data_path),
        ("--train-data-path", data.train_data_path),
        ("--valid-data-path", data.valid_data_path),
    ):
        if not path:
            continue
        prefix = prefixes[flag] = _strip_suffix(path)
        for suffix in (".bin", ".idx"):
            if not Path(prefix + suffix).is_file():
                raise ConfigError(f"{flag} {path}: {prefix + suffix} does not exist")
        if tokenizer is None:
            tokenizer = _tokenizer_within_model(data, model)
        _check_token_ids(data, model, flag, path, prefix, tokenizer.vocab_size)
    if data.data_path:
        _check_split(data, model, prefixes["--data-path"])
        return PreparedData(prefix=prefixes["--data-path"], corpus=None)
    for flag in ("--train-data-path", "--valid-data-path"):
        if flag in prefixes:
            _check_split(data, model, prefixes[flag], flag=flag)
    return PreparedData(
        prefix=prefixes["--train-data-path"],
        corpus=None,
        valid_prefix=prefixes.get("--valid-data-path"),
    )


def _tokenizer_within_model(data: DataConfig, model: ModelConfig) -> Any:
    tokenizer = build_tokenizer(data, model)
    if tokenizer.vocab_size > model.vocab_size:
        raise ConfigError(
            f"--tokenizer-type {data.tokenizer_type} has {tokenizer.vocab_size} tokens but "
            f"--vocab-size is {model.vocab_size}: raise --vocab-size"
        )
    return tokenizer


def _check_token_ids(
    data: DataConfig, model: ModelConfig, flag: str, path: str, prefix: str, vocab: int
) -> None:
    """Every token id of the file must be one the tokenizer (and so the model) knows."""
    max_id = datasets.max_token_id(prefix)
    if max_id < vocab:
        return
    if data.tokenizer_type == "NullTokenizer":
        # NullTokenizer takes ids as they are and puts its end-of-document id last.
        raise ConfigError(
            f"{flag} {path} holds token id {max_id} but NullTokenizer with --vocab-size "
            f"{model.vocab_size} knows ids 0..{vocab - 1} (its end-of-document id is "
            f"--vocab-size - 1 = {vocab - 1}): ids up to {max_id} need --vocab-size "
            f"{max_id + 1}"
            + (" (bytes 0..255 plus end-of-document id 256)" if max_id == 256 else "")
        )
    raise ConfigError(
        f"{flag} {path} holds token id {max_id} but --tokenizer-type {data.tokenizer_type} "
        f"has only {vocab} tokens (ids 0..{vocab - 1}): the data was tokenized with another "
        f"tokenizer"
    )


def _check_split(
    data: DataConfig, model: ModelConfig, prefix: str, *, flag: str | None = None
) -> None:
    """Each split that will be read holds at least one whole sample (--seq-length + 1 tokens),
    cut exactly as Megatron's builder cuts it; else a worker would fail deep in the builder."""
    split = "100,0,0" if flag else data.effective_split
    names = ("training", "validation")
    need = model.seq_length + 1
    for index, size in enumerate(datasets.split_sizes(prefix, split)[:2]):
        if size is None:
            continue
        documents, tokens = size
        if tokens >= need:
            continue
        where = (
            f"{flag} {prefix} holds"
            if flag
            else f"--split {split} gives the {names[index]} split of --data-path {prefix}"
        )
        raise ConfigError(
            f"{where} {documents} documents of {tokens} tokens, fewer than one sample of "
            f"--seq-length {model.seq_length} + 1 = {need} tokens: "
            + ("add data or lower --seq-length" if flag else "raise its share or add documents")
        )


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


def parse_split(text: str) -> tuple[float, float, float]:
    """Megatron's `--split` ("98,2,0", "969, 30, 1"): train, validation, test weights, as
    shares of the documents. Up to three non-negative numbers (missing ones are 0), not all 0."""
    if not re.fullmatch(r"[\s,/.0-9]*", text):
        raise ConfigError(
            f"--split expects up to three non-negative numbers such as 98,2,0, got {text!r}"
        )
    try:
        weights = [float(x) for x in re.findall(r"[.0-9]+", text)]  # Megatron's own reading
    except ValueError:
        raise ConfigError(f"--split expects numbers such as 98,2,0, got {text!r}") from None
    if not 1 <= len(weights) <= 3 or sum(weights) <= 0:
        raise ConfigError(
            f"--split expects up to three weights, not all 0, such as 98,2,0, got {text!r}"
        )
    weights += [0.0] * (3 - len(weights))
    total = sum(weights)
    return (weights[0] / total, weights[1] / total, weights[2] / total)


def _strip_suffix(path: str) -> str:
    for suffix in (".bin", ".idx"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


# ----------------------------------------------------------------------------------------------
# Worker side (torch + megatron)


def build_datasets(
    data: DataConfig, prepared: PreparedData, model: ModelConfig, num_samples: int
) -> tuple[Any, Any | None]:
    """The training split as a Megatron GPTDataset (or MockGPTDataset) of `num_samples`
    samples, and the validation split (one epoch; None when the data has none).

    Must be called on every rank (Megatron's builder holds a barrier). Every rank builds it: the
    first and last pipeline stages read tokens and labels, and the cost on the others is a
    memory map.
    """
    if data.source == "path":
        tokenizer = build_tokenizer(data, model)
    else:
        tokenizer = datasets.null_text_tokenizer(model.vocab_size)
    return datasets.build_gpt_datasets(
        prepared.prefix,
        split=data.effective_split if data.source == "path" else "100,0,0",
        valid_prefix=prepared.valid_prefix,
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


def collate(dataset: Any, ids: Sequence[int]) -> dict[str, torch.Tensor]:
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


def _microbatches(
    dataset: Any, plan: BatchPlan, iteration: int
) -> Iterator[dict[str, torch.Tensor]]:
    for m in range(plan.microbatches):
        yield collate(dataset, plan.sample_ids(iteration, m))
