"""Megatron-core's data pipeline for a GPT: tokenizers, indexed datasets, the GPT dataset.

`train/data.py` decides what to read and checks the flags; this module makes the calls into
`megatron.core.datasets` and `megatron.core.tokenizers`. Everything is imported inside the
functions: the launching process runs `prepare_data` (tokenizer, token-id check) and writes the
embedded corpus without importing the model side of megatron-core.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from megatron_tf.megatron import guard

__all__ = [
    "build_gpt_datasets",
    "build_tokenizer",
    "max_token_id",
    "null_text_tokenizer",
    "split_sizes",
    "write_indexed_dataset",
]


def build_tokenizer(
    tokenizer_type: str,
    *,
    vocab_size: int,
    tokenizer_model: str | None = None,
    vocab_file: str | None = None,
    merge_file: str | None = None,
) -> Any:
    """A Megatron tokenizer through `megatron.core.tokenizers.utils.build_tokenizer`.

    Megatron's builder reads a Megatron-LM argument namespace; only the fields it reads for the
    supported types are filled in. NullTokenizer gets `vocab_size` (ids are used as they are).
    A tokenizer library's own error propagates; the caller names the flag.
    """
    from megatron.core.tokenizers.utils.build_tokenizer import (
        build_tokenizer as megatron_build_tokenizer,
    )

    args = SimpleNamespace(
        tokenizer_type=tokenizer_type,
        tokenizer_model=tokenizer_model,
        vocab_file=vocab_file,
        merge_file=merge_file,
        vocab_size=vocab_size,
        special_tokens=None,
        chat_template=None,
        tokenizer_hf_no_use_fast=False,
        tokenizer_hf_no_include_special_tokens=False,
        trust_remote_code=False,
        tokenizer_sentencepiece_ignore_extra_whitespaces=False,
        tokenizer_sentencepiece_legacy=False,
        tiktoken_pattern=None,
        tiktoken_num_special_tokens=1000,
        metadata_path=None,
        pad_vocab_size=False,
        rank=0,
    )
    return megatron_build_tokenizer(args)


def null_text_tokenizer(vocab_size: int) -> Any:
    """The tokenizer of token-id data (the embedded corpus, mock data): ids are the tokens."""
    from megatron.core.tokenizers import MegatronTokenizer

    return MegatronTokenizer.from_pretrained(
        metadata_path={"library": "null-text"}, vocab_size=vocab_size
    )


def max_token_id(prefix: str, chunk: int = 1 << 24) -> int:
    """Largest token id in `prefix.bin`, read in chunks through a memory map (one pass)."""
    index_reader = guard.private(guard.current().index_reader)  # private in megatron-core
    dtype = index_reader(prefix + ".idx", multimodal=False).dtype
    tokens = np.memmap(prefix + ".bin", dtype=dtype, mode="r")
    best = -1
    for start in range(0, len(tokens), chunk):
        best = max(best, int(tokens[start : start + chunk].max()))
    return best


def write_indexed_dataset(docs: np.ndarray, prefix: str) -> None:
    """Write `docs` (one row per document) as `prefix.bin` / `prefix.idx`."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    dtype = np.uint16 if docs.max() < 2**16 else np.int32
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in docs:
        builder.add_document(doc, lengths=[len(doc)])  # numpy in, numpy written
    builder.finalize(prefix + ".idx")


def split_sizes(prefix: str, split: str) -> list[tuple[int, int] | None]:
    """(documents, tokens) of the train, validation and test splits Megatron's builder cuts
    from `prefix` by `split` (None where the split's weight is 0).

    The cut is the builder's own (`BlendedMegatronDatasetBuilder._build_megatron_dataset_splits`):
    megatron-core's split vector and matrix, then documents `round(begin * n)` to
    `round(end * n)`, so what is checked before launch is what the ranks will read.
    """
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix)
    documents = dataset.document_indices  # sequence-index bounds of each document
    count = len(documents) - 1
    ends = np.concatenate([[0], np.cumsum(dataset.sequence_lengths, dtype=np.int64)])
    sizes: list[tuple[int, int] | None] = []
    for bounds in convert_split_vector_to_split_matrix(parse_and_normalize_split(split)):
        if bounds is None:
            sizes.append(None)
            continue
        first, last = round(bounds[0] * count), round(bounds[1] * count)
        tokens = int(ends[documents[last]] - ends[documents[first]])
        sizes.append((last - first, tokens))
    return sizes


def build_gpt_datasets(
    prefix: str | None,
    *,
    split: str = "100,0,0",
    valid_prefix: str | None = None,
    num_samples: int,
    seq_length: int,
    seed: int,
    tokenizer: Any,
    cache_dir: Path,
) -> tuple[Any, Any | None]:
    """The training and validation splits as Megatron's GPTDataset (MockGPTDataset when
    `prefix` is None): one dataset cut by `split` ("98,2,0": Megatron's `--split`), or, with
    `valid_prefix`, one file per split (Megatron's `--train-data-path` / `--valid-data-path`).

    The training dataset holds `num_samples` samples; the validation dataset one epoch of its
    documents in Megatron's shuffled order (None when its split is empty), so which samples it
    holds depends only on the data, the split, the sequence length and the seed. Must be called
    on every rank (Megatron's builder holds a barrier); index caches go under `cache_dir`.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    cache_dir.mkdir(parents=True, exist_ok=True)
    if prefix is not None and valid_prefix is not None:
        where: dict[str, Any] = {
            "blend_per_split": [([prefix], None), ([valid_prefix], None), None],
            "split": None,
        }
    else:
        where = {"blend": None if prefix is None else ([prefix], None), "split": split}
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        path_to_cache=str(cache_dir),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=True,
        **where,
    )
    cls = MockGPTDataset if prefix is None else GPTDataset
    sizes = [num_samples, None, None]
    train, valid, _ = BlendedMegatronDatasetBuilder(cls, sizes, lambda: True, config).build()
    return train, valid
