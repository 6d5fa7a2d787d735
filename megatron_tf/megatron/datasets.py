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
    "build_gpt_dataset",
    "build_tokenizer",
    "max_token_id",
    "null_text_tokenizer",
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


def build_gpt_dataset(
    prefix: str | None,
    *,
    num_samples: int,
    seq_length: int,
    seed: int,
    tokenizer: Any,
    cache_dir: Path,
) -> Any:
    """The training split of `prefix` as Megatron's GPTDataset (MockGPTDataset when None).

    Must be called on every rank (Megatron's builder holds a barrier); index caches go under
    `cache_dir`.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    cache_dir.mkdir(parents=True, exist_ok=True)
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=None if prefix is None else ([prefix], None),
        split="100,0,0",
        path_to_cache=str(cache_dir),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=True,
    )
    cls = MockGPTDataset if prefix is None else GPTDataset
    train, _, _ = BlendedMegatronDatasetBuilder(
        cls, [num_samples, None, None], lambda: True, config
    ).build()
    return train
