"""The dataset flags `pretrain` and `compare` share: a user's Megatron indexed dataset, how it is
split, and its tokenizer.

Megatron-LM's two conventions: `--data-path PREFIX --split 98,2,0` (one dataset, its documents
cut into train / validation / test), or one file per split (`--train-data-path`,
`--valid-data-path`). Without any of them a command trains on the embedded corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from megatron_tf.train.data import DataConfig

__all__ = ["DataFlags"]

_DATA = "Data"


@dataclass(kw_only=True, slots=True)
class DataFlags:
    """A user's dataset and tokenizer, as parsed."""

    data_path: Annotated[
        str | None,
        typer.Option(
            help="Megatron indexed dataset prefix (PREFIX.bin/.idx), cut into train/validation/"
            "test documents by --split. Default: the embedded synthetic corpus with a known "
            "entropy floor.",
            rich_help_panel=_DATA,
        ),
    ] = None
    split: Annotated[
        str | None,
        typer.Option(
            help="With --data-path: Megatron's train,validation,test weights of its documents, "
            "e.g. 98,2,0 (default 100,0,0: no validation split). A validation share is the "
            "held-out set that validation, the noise probe and the auto budget read.",
            rich_help_panel=_DATA,
        ),
    ] = None
    train_data_path: Annotated[
        str | None,
        typer.Option(
            help="Instead of --data-path: the training dataset prefix, one file per split "
            "(with --valid-data-path).",
            rich_help_panel=_DATA,
        ),
    ] = None
    valid_data_path: Annotated[
        str | None,
        typer.Option(
            help="With --train-data-path: the validation dataset prefix (the held-out set).",
            rich_help_panel=_DATA,
        ),
    ] = None
    tokenizer_type: Annotated[
        str,
        typer.Option(
            help="Megatron tokenizer type of --data-path/--train-data-path. NullTokenizer takes "
            "ids as they are, with end-of-document id --vocab-size - 1 (byte data with "
            "end-of-document 256: --vocab-size 257).",
            rich_help_panel=_DATA,
        ),
    ] = "NullTokenizer"
    tokenizer_model: Annotated[
        str | None,
        typer.Option(
            help="With --tokenizer-type HuggingFaceTokenizer, SentencePieceTokenizer, "
            "TikTokenizer, ...: the tokenizer model file or HF name.",
            rich_help_panel=_DATA,
        ),
    ] = None
    vocab_file: Annotated[
        str | None,
        typer.Option(help="Vocab file (--tokenizer-type GPT2BPETokenizer).", rich_help_panel=_DATA),
    ] = None
    merge_file: Annotated[
        str | None,
        typer.Option(
            help="Merges file (--tokenizer-type GPT2BPETokenizer).", rich_help_panel=_DATA
        ),
    ] = None

    @property
    def given(self) -> bool:
        """A user's dataset is named (else: the embedded corpus)."""
        return bool(self.data_path or self.train_data_path or self.valid_data_path)

    def config(self, *, mock: bool = False, **extra: Any) -> DataConfig:
        """The DataConfig for these flags (`extra`: cache dir, seeds); ConfigError names a bad
        flag or combination."""
        from megatron_tf.train.data import DataConfig

        return DataConfig(
            source="mock" if mock else ("path" if self.given else "synthetic"),
            data_path=self.data_path,
            split=self.split,
            train_data_path=self.train_data_path,
            valid_data_path=self.valid_data_path,
            tokenizer_type=self.tokenizer_type,
            tokenizer_model=self.tokenizer_model,
            vocab_file=self.vocab_file,
            merge_file=self.merge_file,
            **extra,
        )
