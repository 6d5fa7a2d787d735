"""Settings of a training run (`timelyfreeze pretrain`): schedule of the loop, optimizer, freezing.

The model and the parallel layout live in `formats/layout.py` (shared with `profile`); the data
source in `data.py`. Everything here is plain and torch-free, validated in `__post_init__` with
messages naming the CLI flag, so `pretrain` rejects bad flags before any process starts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from megatron_tf.errors import ConfigError
from megatron_tf.freeze.config import DEFAULT_MAX_FREEZE_RATIO, DEFAULT_MIN_SAVING, FreezeConfig

LR_DECAY_STYLES: tuple[str, ...] = ("constant", "linear", "cosine", "inverse-square-root")


@dataclass(kw_only=True, slots=True)
class FreezeOptions:
    """How the freeze runtime is fed (`--plan`, `--no-freeze`, `--max-freeze-ratio`, ...)."""

    plan: str | None = None
    """Path of a plan.json, `auto` (profile and solve in-job after the freeze warm-up), or None."""
    no_freeze: bool = False
    """`--no-freeze`: the baseline; on resume it also replaces the checkpoint's plan."""
    max_freeze_ratio: float | str = DEFAULT_MAX_FREEZE_RATIO
    """Cap of each stage's mean freeze ratio for `--plan auto` and re-planning, in [0, 1], or
    `auto`: the noise scale is probed at the end of the freeze warm-up and the cap with the
    least predicted time to a target loss is chosen (`solve/budget.py`)."""
    auto_min_saving: float = DEFAULT_MIN_SAVING
    """With `auto`: freeze only when the best cap predicts at least this share less time."""
    runtime: FreezeConfig = field(default_factory=FreezeConfig)
    """What the runtime does with a plan: seed, gradient rescale, freeze warm-up and ramp
    (`--seed`, `--freeze-rescale`, `--freeze-warmup-iters`, `--freeze-ramp-iters`)."""
    profile_iters: int = 10
    """Measured iterations per phase of the in-job profile (`--plan auto`, re-planning)."""
    drift_threshold: float = 0.0
    """Re-profile when |measured / predicted - 1| exceeds this for `drift_patience` iterations;
    0 turns drift re-profiling off (the default)."""
    drift_patience: int = 5
    """Consecutive drifting iterations that trigger a re-profile."""
    reprice_every: int = 0
    """With `--max-freeze-ratio auto`: every this many iterations after the freeze warm-up,
    probe the noise scale again, choose the cap again and switch to the re-solved plan (the
    noise scale grows over training, so freezing is cheap early and dear late); 0: price once."""
    reprice_profile: str | None = None
    """Profile to re-solve with when re-pricing (None: the in-job profile of `--plan auto`).
    `compare` passes its layout's profile so the plans match the time it charges."""
    replan_lag: int = 0
    """Iterations that train on while rank 0 solves an in-job plan (`--plan auto`, drift,
    re-pricing); the new plan is in force from the iteration after them. 0: training waits
    for the solve, as a stall of its length (train/pending.py)."""

    def __post_init__(self) -> None:
        r = self.max_freeze_ratio
        if isinstance(r, str) and r.strip() != "auto":
            try:
                r = self.max_freeze_ratio = float(r)
            except ValueError:
                raise ConfigError(
                    f"--max-freeze-ratio must be a number in [0, 1] or `auto`, got {r!r}"
                ) from None
        _finite(("--drift-threshold", self.drift_threshold))
        if not 0.0 <= self.auto_min_saving < 1.0:  # also rejects NaN
            raise ConfigError(f"--auto-min-saving must lie in [0, 1), got {self.auto_min_saving}")
        if not isinstance(r, str):
            _finite(("--max-freeze-ratio", r))
            if not 0.0 <= r <= 1.0:
                raise ConfigError(f"--max-freeze-ratio must lie in [0, 1], got {r}")
        if self.no_freeze:
            self.plan = None
        if self.profile_iters < 1:
            raise ConfigError(f"--profile-iters must be >= 1, got {self.profile_iters}")
        if self.drift_threshold < 0:
            raise ConfigError(f"--drift-threshold must be >= 0, got {self.drift_threshold}")
        if self.drift_patience < 1:
            raise ConfigError(f"--drift-patience must be >= 1, got {self.drift_patience}")
        if self.replan_lag < 0:
            raise ConfigError(f"--replan-lag must be >= 0, got {self.replan_lag}")
        if self.replan_lag and not (self.auto or self.drift_threshold or self.reprice_every):
            raise ConfigError(
                "--replan-lag applies to in-job plans: use it with --plan auto, "
                "--drift-threshold or --reprice-every"
            )
        if self.reprice_every < 0:
            raise ConfigError(f"--reprice-every must be >= 0, got {self.reprice_every}")
        if self.reprice_every and self.max_freeze_ratio != "auto":
            raise ConfigError(
                "--reprice-every needs --max-freeze-ratio auto (it re-chooses the cap)"
            )
        if self.reprice_every and self.plan is None:
            raise ConfigError("--reprice-every needs --plan (auto or a plan file) to re-price")
        if self.reprice_every and self.plan != "auto" and self.reprice_profile is None:
            raise ConfigError(
                "--reprice-every with a plan file needs --reprice-profile (the plan's profile)"
            )

    @property
    def enabled(self) -> bool:
        return self.plan is not None

    @property
    def auto(self) -> bool:
        return self.plan == "auto"

    @property
    def auto_budget(self) -> bool:
        """`--max-freeze-ratio auto`: the cap comes from the measured loss cost."""
        return self.max_freeze_ratio == "auto"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FreezeOptions:
        data = dict(data)
        data["runtime"] = FreezeConfig.from_dict(data.get("runtime", {}))
        return cls(**data)


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """The training loop: length, optimizer, LR schedule, logging, checkpoints."""

    iters: int = 100
    """Training iterations (optimizer steps)."""
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr: float = 3e-4
    """Learning rate at the end of the decay."""
    lr_warmup_iters: int = 10
    """Linear LR warm-up, in iterations."""
    lr_decay_style: str = "cosine"
    """`constant`, `linear`, `cosine` or `inverse-square-root` (Megatron's scheduler)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 turns clipping off."""
    log_interval: int = 10
    """Iterations between console lines (every iteration goes to the JSONL file)."""
    out_dir: str = "runs/pretrain"
    """Where metrics.jsonl, TensorBoard events and (by default) checkpoints go."""
    save: str | None = None
    """Checkpoint folder to write (`--save`); None: no checkpoints."""
    save_interval: int = 0
    """Iterations between checkpoints; 0: only at the end (when `save` is set)."""
    load: str | None = None
    """Checkpoint folder to resume from (`--load`): a `--save` folder (its latest) or one
    iteration folder."""
    resume_from: str | None = None
    """The iteration folder `load` resolved to before launch (None: start from scratch)."""
    overwrite_checkpoints: bool = False
    """Allow writing over a newer checkpoint in `save` and moving its `latest` back."""
    exit_after_iters: int = 0
    """Stop after this many iterations of this run (to test interruption); 0: run to the end."""
    tensorboard: bool = True
    """Write TensorBoard events to `<out_dir>/tensorboard` (`--no-tensorboard`: off)."""
    eval_interval: int = 0
    """Iterations between validation losses on the held-out set (and at the last iteration);
    0: no validation. The training-batch loss sees other batches in every run, so comparisons
    of runs read this instead."""
    eval_samples: int = 128
    """Held-out samples of the validation set (rounded down to whole iterations' batches)."""
    eval_iters: int = 0
    """Megatron's `--eval-iters`: the validation set as this many iterations' microbatches
    (`prepare_job` sets `eval_samples` from it); 0: `eval_samples` decides."""
    noise_probe_at: tuple[int, ...] = ()
    """Iterations (before their step) at which to measure the gradient noise scale."""
    noise_probe_rounds: int = 8
    """Independent small-batch / full-batch gradient pairs averaged by the noise probe."""
    freeze: FreezeOptions = field(default_factory=FreezeOptions)

    def __post_init__(self) -> None:
        _finite(
            ("--lr", self.lr),
            ("--min-lr", self.min_lr),
            ("--weight-decay", self.weight_decay),
            ("--clip-grad", self.clip_grad),
            ("--adam-beta1", self.adam_beta1),
            ("--adam-beta2", self.adam_beta2),
        )
        if self.iters < 1:
            raise ConfigError(f"--iters must be >= 1, got {self.iters}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(
                f"learning rates must satisfy 0 <= --min-lr <= --lr and --lr > 0, "
                f"got --lr {self.lr} --min-lr {self.min_lr}"
            )
        if not 0 <= self.lr_warmup_iters < self.iters:
            # Megatron's OptimizerParamScheduler asserts warm-up steps < decay steps.
            raise ConfigError(
                f"--lr-warmup-iters must lie in [0, --iters {self.iters}), "
                f"got {self.lr_warmup_iters}"
            )
        if self.lr_decay_style not in LR_DECAY_STYLES:
            raise ConfigError(
                f"--lr-decay-style must be one of {', '.join(LR_DECAY_STYLES)}, "
                f"got {self.lr_decay_style!r}"
            )
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        for flag, beta in (("--adam-beta1", self.adam_beta1), ("--adam-beta2", self.adam_beta2)):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"{flag} must lie in [0, 1), got {beta}")
        warmup = self.freeze.runtime.warmup_iters
        if self.freeze.enabled and warmup >= self.iters:
            raise ConfigError(
                f"--freeze-warmup-iters {warmup} >= --iters {self.iters}: "
                "nothing would be frozen; lower the warm-up or drop --plan"
            )
        if self.clip_grad < 0:
            raise ConfigError(f"--clip-grad must be >= 0, got {self.clip_grad}")
        if self.log_interval < 1:
            raise ConfigError(f"--log-interval must be >= 1, got {self.log_interval}")
        if self.save_interval < 0:
            raise ConfigError(f"--save-interval must be >= 0, got {self.save_interval}")
        if self.eval_interval < 0:
            raise ConfigError(f"--eval-interval must be >= 0, got {self.eval_interval}")
        if self.eval_iters < 0:
            raise ConfigError(f"--eval-iters must be >= 0, got {self.eval_iters}")
        if self.eval_samples < 1:
            raise ConfigError(f"--eval-samples must be >= 1, got {self.eval_samples}")
        self.noise_probe_at = tuple(self.noise_probe_at)
        for at in self.noise_probe_at:
            if not 0 <= at < self.iters:
                raise ConfigError(
                    f"--noise-probe-at must lie in [0, --iters {self.iters}), got {at}"
                )
        if self.noise_probe_rounds < 2:
            raise ConfigError(f"--noise-probe-rounds must be >= 2, got {self.noise_probe_rounds}")
        if self.exit_after_iters < 0:
            raise ConfigError(f"--exit-after-iters must be >= 0, got {self.exit_after_iters}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data["freeze"] = FreezeOptions.from_dict(data.get("freeze", {}))
        return cls(**data)


def _finite(*flags: tuple[str, float]) -> None:
    """NaN and infinity pass every `<`/`>` check, so they are refused first, by flag name."""
    for flag, value in flags:
        if not math.isfinite(value):
            raise ConfigError(f"{flag} must be a finite number, got {value}")
