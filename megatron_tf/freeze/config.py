"""Settings of the freeze runtime (policy and gradient semantics)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from megatron_tf.errors import ConfigError

RESCALE_CHOICES: tuple[str, ...] = ("mean", "none")

DEFAULT_FREEZE_SEED = 1234
"""The seed of the unit choice unless told otherwise: `ModelConfig.seed`'s default, which
`pretrain --seed` sets for both."""

DEFAULT_MAX_FREEZE_RATIO = 0.3
"""The accuracy budget every command defaults to. On the embedded task (docs/results.md) a cap of
0.3 cost +0.32% of final loss at 1000 iterations (+0.8% to +1.3% at 300) and reached the
baseline's final loss in about the baseline's wall time at best; 0.8 cost +1.4% at 1000
iterations and never caught up. Check any budget on your own task before raising it."""

DEFAULT_MIN_SAVING = 0.05
"""`--auto-min-saving`: the auto budget freezes only when its best cap predicts at least this
share less time to the target loss than the baseline (`solve/budget.py` says why 5%)."""


@dataclass(kw_only=True, slots=True)
class FreezeConfig:
    """How the runtime turns freeze ratios into frozen tensors, and what gradients mean.

    The one home of these settings: `pretrain`'s `FreezeOptions.runtime`, the Megatron-LM route
    and the profiler all hand one of these to the runtime.
    """

    seed: int = DEFAULT_FREEZE_SEED
    """Seed of the unit choice; the same on every data- and tensor-parallel replica."""
    rescale: Literal["mean", "none"] = "mean"
    """`mean`: a parameter's gradient is the mean over the microbatches that trained it
    (scaled by M / n_active). `none`: the sum as it falls out (the paper code's behaviour)."""
    warmup_iters: int = 0
    """Iterations (from 0) with no freezing at all, e.g. the LR warm-up."""
    ramp_iters: int = 0
    """Iterations after the warm-up over which ratios grow linearly to their planned values."""
    coverage: bool = True
    """Train every unit on at least one microbatch of every iteration. Only measurement runs
    (profiling the all-frozen backward) turn this off; their gradients must not be applied."""

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"--seed must be an integer, got {self.seed!r}")
        if self.rescale not in RESCALE_CHOICES:
            raise ConfigError(
                f"--freeze-rescale must be one of {', '.join(RESCALE_CHOICES)}, "
                f"got {self.rescale!r}"
            )
        for flag, value in (
            ("--freeze-warmup-iters", self.warmup_iters),
            ("--freeze-ramp-iters", self.ramp_iters),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{flag} must be an integer >= 0, got {value!r}")

    def ramp_factor(self, iteration: int) -> float:
        """Multiplier on the planned ratios at `iteration` (0 in warm-up, then up to 1)."""
        if iteration < self.warmup_iters:
            return 0.0
        step = iteration - self.warmup_iters + 1
        return min(1.0, step / (self.ramp_iters + 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FreezeConfig:
        return cls(**data)
