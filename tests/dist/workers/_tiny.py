"""The tiny GPT and layout several test workers run: one layer per virtual stage, CPU-sized."""

from __future__ import annotations

from megatron_tf.formats.layout import ModelConfig, ParallelConfig


def tiny_gpt(pp: int, vpp: int, microbatches: int) -> tuple[ParallelConfig, ModelConfig]:
    """Layout and model for (pp, vpp, M); pp 2 with a virtual pipeline needs overlap_p2p_comm."""
    parallel = ParallelConfig(
        pp=pp,
        vpp=vpp,
        microbatches=microbatches,
        overlap_p2p_comm=vpp > 1 and pp == 2,
    )
    model = ModelConfig(
        num_layers=pp * vpp,
        hidden_size=32,
        num_attention_heads=4,
        seq_length=16,
        vocab_size=128,
    )
    return parallel, model
