"""Build the model chunks of this pipeline rank: one Megatron-Core GPTModel per virtual stage.

Call after `megatron_tf.megatron.distributed.init_distributed`. The layer spec is Megatron's
local spec on CPU (and whenever TransformerEngine is missing, or the layout runs `zb-h1`) and
the TransformerEngine spec on GPU when it is installed. Dropout is off: the freeze runtime's
tests compare gradients exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from megatron_tf.formats.layout import RUNTIME_SCHEDULES, ModelConfig, ParallelConfig

__all__ = [
    "build_model_chunks",
    "build_training_model",
    "transformer_config",
    "use_transformer_engine",
    "wrap_in_ddp",
]


def use_transformer_engine() -> bool:
    """TE layers only on GPU with transformer-engine importable."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def transformer_config(model: ModelConfig, parallel: ParallelConfig, **overrides: Any):
    """Megatron's TransformerConfig for this model and layout; `overrides` win over defaults."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    on_cpu = not torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        ffn_hidden_size=model.ffn_hidden_size,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp if parallel.vpp > 1 else None,
        pipeline_dtype=torch.float32,
        params_dtype=torch.float32,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        # CPU: the fused kernels and CUDA initialisation are unavailable (docs/megatron-notes.md).
        use_cpu_initialization=on_cpu,
        gradient_accumulation_fusion=False,
        masked_softmax_fusion=not on_cpu,
        bias_dropout_fusion=not on_cpu,
        bias_activation_fusion=not on_cpu,
        apply_rope_fusion=False,
        persist_layer_norm=not on_cpu,
        # The schedules' P2P settings. pp 2 with a virtual pipeline needs overlap_p2p_comm
        # (ParallelConfig enforces it), which in turn forbids batched P2P.
        overlap_p2p_comm=parallel.overlap_p2p_comm,
        # As Megatron-LM's arguments set it; the schedule model (schedule/order.py) assumes it.
        deallocate_pipeline_outputs=True,
        batch_p2p_comm=not parallel.overlap_p2p_comm,
        microbatch_group_size_per_vp_stage=(
            (parallel.group_size or parallel.pp) if parallel.vpp > 1 else None
        ),
    )
    if model.recompute == "full":
        kwargs.update(
            recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1
        )
    elif model.recompute == "selective":
        kwargs.update(recompute_granularity="selective")
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def build_model_chunks(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    *,
    wrap_ddp: bool,
    ddp_config: Any = None,
    config: Any = None,
) -> list[torch.nn.Module]:
    """The GPTModel chunks of this rank, in Megatron's order (chunk c = virtual stage c*pp+rank).

    With `wrap_ddp`, each chunk is wrapped in Megatron's DistributedDataParallel (bucketing only
    on the first chunk, as megatron/training/training.py does). `config` overrides the
    TransformerConfig built from the two configs.
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    parallel_cfg.check_model(model_cfg)
    config = config if config is not None else transformer_config(model_cfg, parallel_cfg)
    spec = _layer_spec(parallel_cfg)
    vpp = parallel_cfg.vpp
    chunks: list[torch.nn.Module] = []
    for chunk in range(vpp):
        vp_stage = chunk if vpp > 1 else None
        # Seed per chunk so chunk weights do not depend on how many chunks were built before.
        torch.manual_seed(
            model_cfg.seed + 1000 * parallel_state.get_pipeline_model_parallel_rank() + chunk
        )
        module = GPTModel(
            config=config,
            transformer_layer_spec=spec,
            vocab_size=model_cfg.vocab_size,
            max_sequence_length=model_cfg.seq_length,
            pre_process=parallel_state.is_pipeline_first_stage(
                ignore_virtual=False, vp_stage=vp_stage
            ),
            post_process=parallel_state.is_pipeline_last_stage(
                ignore_virtual=False, vp_stage=vp_stage
            ),
            share_embeddings_and_output_weights=model_cfg.tie_embeddings,
            vp_stage=vp_stage,
        )
        if torch.cuda.is_available():
            module = module.cuda(torch.cuda.current_device())
        chunks.append(module)
    if wrap_ddp:
        chunks = wrap_in_ddp(chunks, config, ddp_config)
    return chunks


def _layer_spec(parallel: ParallelConfig):
    """TE's spec on a GPU with TE, else the local one; a schedule TimelyFreeze runs itself
    (`--schedule zb-h1`) splits the local spec's linears only (megatron/split_backward.py)."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if use_transformer_engine() and parallel.schedule not in RUNTIME_SCHEDULES:
        return get_gpt_layer_with_transformer_engine_spec()
    return get_gpt_layer_local_spec()


def wrap_in_ddp(
    chunks: list[torch.nn.Module], config: Any, ddp_config: Any
) -> list[torch.nn.Module]:
    """Megatron DDP around each chunk (bucketing on the first only), and the gradient
    finalization Megatron-LM's training.py installs: the schedules call it after the last
    backward to all-reduce data-parallel grads and the tied embedding's grads between the
    first and last stage. The profiler wraps the same way, so it times what training runs."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads

    if ddp_config is None:
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=False
        )
    wrapped = [
        DistributedDataParallel(
            config=config, ddp_config=ddp_config, module=chunk, disable_bucketing=index > 0
        )
        for index, chunk in enumerate(chunks)
    ]
    config.finalize_model_grads_func = finalize_model_grads
    return wrapped


def build_training_model(model: ModelConfig, parallel: ParallelConfig) -> tuple[list[Any], Any]:
    """This rank's chunks wrapped as Megatron-LM's `get_model` wraps them, and their config.

    On GPU: bf16 (`Float16Module`, bf16 pipeline messages) and DDP buffers laid out for
    Megatron's distributed optimizer; on CPU: fp32 and the plain layout. Training and the
    profiler both build the model here, so a profile times the model that training runs.
    """
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.transformer.module import Float16Module

    on_gpu = torch.cuda.is_available()
    overrides: dict[str, Any] = {}
    if on_gpu:
        overrides = {"bf16": True, "pipeline_dtype": torch.bfloat16}
    config = transformer_config(model, parallel, **overrides)
    chunks = build_model_chunks(model, parallel, wrap_ddp=False, config=config)
    if on_gpu:
        chunks = [Float16Module(config, c) for c in chunks]
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=on_gpu,  # Megatron's distributed optimizer needs CUDA tensors
    )
    return wrap_in_ddp(chunks, config, ddp_config), config
