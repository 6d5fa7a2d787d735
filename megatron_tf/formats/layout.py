"""Model and parallel-layout settings shared by `profile`, `pretrain` and the tests.

Both are plain dataclasses validated in `__post_init__`; every message names the CLI flag to
change, so the commands can reject bad flags before any process starts. Nothing here imports
torch: the launcher validates in the parent process, the workers rebuild the same objects from
`to_dict()`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from megatron_tf.errors import ConfigError
from megatron_tf.formats.schedule import ScheduleSpec, megatron_schedule

RECOMPUTE_CHOICES: tuple[str, ...] = ("none", "full", "selective")

RUNTIME_SCHEDULES: tuple[str, ...] = ("zb-h1",)
"""Registered schedule kinds that TimelyFreeze itself runs in place of Megatron's 1F1B
(`megatron/zero_bubble.py`); the other kinds besides Megatron's own are planning models."""


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    """A Megatron-Core GPT. The defaults are a small GPT that trains on a CPU in seconds."""

    num_layers: int = 4
    """Transformer layers in the whole model (split evenly over pp * vpp virtual stages)."""
    hidden_size: int = 64
    """Hidden size."""
    num_attention_heads: int = 4
    """Attention heads; must divide --hidden-size and be divisible by --tp."""
    ffn_hidden_size: int = 0
    """MLP hidden size; 0 means 4 * hidden_size."""
    seq_length: int = 64
    """Tokens per sample."""
    vocab_size: int = 512
    """Vocabulary size (padded by nothing; must be divisible by --tp)."""
    micro_batch_size: int = 2
    """Samples per microbatch."""
    recompute: str = "none"
    """Activation recompute: `none`, `full` (every layer) or `selective` (core attention)."""
    tie_embeddings: bool = True
    """Share the word embedding with the output layer (Megatron's default)."""
    seed: int = 1234
    """Seed for weights and data."""

    def __post_init__(self) -> None:
        for flag, value in (
            ("--num-layers", self.num_layers),
            ("--hidden-size", self.hidden_size),
            ("--num-attention-heads", self.num_attention_heads),
            ("--seq-length", self.seq_length),
            ("--vocab-size", self.vocab_size),
            ("--micro-batch-size", self.micro_batch_size),
        ):
            _positive(flag, value)
        if self.ffn_hidden_size < 0:
            raise ConfigError(f"--ffn-hidden-size must be >= 0, got {self.ffn_hidden_size}")
        if self.ffn_hidden_size == 0:
            self.ffn_hidden_size = 4 * self.hidden_size
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"--num-attention-heads {self.num_attention_heads} must divide "
                f"--hidden-size {self.hidden_size}"
            )
        if self.recompute not in RECOMPUTE_CHOICES:
            raise ConfigError(
                f"--recompute must be one of {', '.join(RECOMPUTE_CHOICES)}, got {self.recompute!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**data)


@dataclass(kw_only=True, slots=True)
class ParallelConfig:
    """The parallel layout: world size = tp * pp * dp."""

    tp: int = 1
    """Tensor-parallel size."""
    pp: int = 2
    """Pipeline-parallel size (ranks per pipeline)."""
    vpp: int = 1
    """Model chunks per pipeline rank; > 1 selects Megatron's interleaved schedule."""
    dp: int = 1
    """Data-parallel size."""
    microbatches: int = 4
    """Microbatches per iteration, per data-parallel replica."""
    group_size: int = 0
    """Megatron's microbatch_group_size_per_vp_stage (interleaved only); 0 means pp."""
    overlap_p2p_comm: bool = False
    """Megatron's overlap_p2p_comm (interleaved only). Needed at pp 2 with vpp > 1."""
    schedule: str = ""
    """The pipeline schedule: "" for Megatron's own (1F1B, interleaved when vpp > 1), or a
    registered kind TimelyFreeze runs in its place, e.g. `zb-h1` (zero-bubble, vpp 1)."""

    def __post_init__(self) -> None:
        for flag, value in (
            ("--tp", self.tp),
            ("--pp", self.pp),
            ("--vpp", self.vpp),
            ("--dp", self.dp),
            ("--microbatches", self.microbatches),
        ):
            _positive(flag, value)
        if self.vpp > 1 and self.pp == 2 and not self.overlap_p2p_comm:
            # schedules.py: with pp 2 and a virtual pipeline, batched P2P talks to the same peer
            # twice in one batch and gives wrong gradients; Megatron's arguments forbid it.
            raise ConfigError(
                "--pp 2 with --vpp > 1 needs --overlap-p2p-comm (Megatron forbids batched P2P "
                "when both pipeline neighbours are the same rank)"
            )
        if self.vpp > 1 and self.pp < 2:
            raise ConfigError(f"--vpp {self.vpp} needs --pp >= 2")
        if self.schedule and self.schedule not in ("1f1b", "interleaved", *RUNTIME_SCHEDULES):
            raise ConfigError(
                f"--schedule {self.schedule} is not one training runs: leave it out for "
                f"Megatron's own (1f1b, interleaved with --vpp > 1) or use "
                f"{', '.join(RUNTIME_SCHEDULES)}"
            )
        if self.schedule and self.pp < 2:
            raise ConfigError(f"--schedule {self.schedule} needs --pp >= 2")
        if self.pp >= 2:  # pp 1 (no pipeline) is allowed for reference runs
            self.schedule_spec()  # raises ConfigError with Megatron's rule for M and group size

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    def schedule_spec(self) -> ScheduleSpec:
        """The schedule this layout runs: `schedule` when set, else Megatron's (1F1B when vpp
        is 1, interleaved otherwise)."""
        found = megatron_schedule(
            pp=self.pp,
            vpp=self.vpp,
            microbatches=self.microbatches,
            group_size=self.group_size,
            overlap_p2p_comm=self.overlap_p2p_comm,
        )
        if not self.schedule or self.schedule == found.kind:
            return found
        return ScheduleSpec(
            kind=self.schedule,
            pp=self.pp,
            vpp=self.vpp,
            microbatches=self.microbatches,
            group_size=self.group_size,
            overlap_p2p_comm=self.overlap_p2p_comm,
        )

    def check_model(self, model: ModelConfig) -> None:
        """Cross-checks between the layout and the model (each names the flags involved)."""
        stages = self.pp * self.vpp
        if model.num_layers % stages:
            raise ConfigError(
                f"--pp {self.pp} x --vpp {self.vpp} = {stages} virtual stages must divide "
                f"--num-layers {model.num_layers}"
            )
        if model.num_attention_heads % self.tp:
            raise ConfigError(
                f"--tp {self.tp} must divide --num-attention-heads {model.num_attention_heads}"
            )
        if model.vocab_size % self.tp:
            raise ConfigError(f"--tp {self.tp} must divide --vocab-size {model.vocab_size}")
        if model.ffn_hidden_size % self.tp:
            raise ConfigError(
                f"--tp {self.tp} must divide --ffn-hidden-size {model.ffn_hidden_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParallelConfig:
        return cls(**data)


def _positive(flag: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{flag} must be a positive integer, got {value!r}")
