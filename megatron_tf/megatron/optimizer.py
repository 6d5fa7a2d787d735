"""Megatron's optimizer and learning-rate schedule for the trainer.

The step itself, on CPU with the clip done outside Megatron, is `compat.optimizer_step`.

The trainer hands in its own config; anything with the fields of `OptimizerSettings` will do
(`train.train_config.TrainConfig` has them), so this layer needs nothing from `train/`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

__all__ = ["OptimizerSettings", "build_optimizer", "build_scheduler"]


class OptimizerSettings(Protocol):
    """What the optimizer and its schedule read (the fields of `--lr`, `--clip-grad`, ...)."""

    lr: float
    min_lr: float
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    clip_grad: float
    lr_warmup_iters: int
    lr_decay_style: str
    iters: int


def build_optimizer(cfg: OptimizerSettings, chunks: list[Any]) -> Any:
    """Megatron's optimizer over the chunks: Adam, with the distributed optimizer and bf16 on
    GPU; on CPU Megatron's FP32 optimizer around torch's AdamW (made to run by `compat.py`)."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    on_gpu = torch.cuda.is_available()
    config = OptimizerConfig(
        optimizer="adam",
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        # On CPU the clip happens in `compat.optimizer_step` (Megatron's clip asserts CUDA).
        clip_grad=cfg.clip_grad if on_gpu else 0.0,
        bf16=on_gpu,
        params_dtype=torch.float32,
        use_distributed_optimizer=on_gpu,
    )
    return get_megatron_optimizer(config, chunks)


def build_scheduler(cfg: OptimizerSettings, optimizer: Any) -> Any:
    """Megatron's learning-rate schedule: linear warm-up from 0, then decay to `min_lr`."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr,
        lr_warmup_steps=cfg.lr_warmup_iters,
        lr_decay_steps=cfg.iters,
        lr_decay_style=cfg.lr_decay_style,
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=cfg.iters,
        wd_incr_style="constant",
    )
