"""Settings of a profiling run and the job the CLI hands to the torchrun workers.

The job travels as every worker's does: a `profile` envelope (`formats/job.py`) whose path the
workers read from `$TIMELYFREEZE_JOB`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from megatron_tf.errors import ConfigError, FormatError
from megatron_tf.formats.job import JobEnvelope, job_from_env
from megatron_tf.formats.layout import ModelConfig, ParallelConfig
from megatron_tf.profile.rounds import round_orders

__all__ = [
    "FAULT_RANK_ENV",
    "LINEARITY_RATIOS",
    "PHASE_ORDERS",
    "ProfileConfig",
    "ProfileJob",
]

LINEARITY_RATIOS: tuple[float, ...] = (0.25, 0.5, 0.75)
"""Freeze ratios measured by `--linearity`, besides 0 (unfrozen) and 1 (frozen)."""

PHASE_ORDERS: tuple[str, ...] = ("interleaved", "sequential")
"""How the measured iterations of the phases are ordered (`ProfileConfig.phase_order`)."""

FAULT_RANK_ENV = "TIMELYFREEZE_PROFILE_FAULT_RANK"
"""For tests of failure handling: the global rank that raises right after building its model."""


@dataclass(kw_only=True, slots=True)
class ProfileConfig:
    """How many iterations of which kind a profile measures."""

    iters: int = 10
    """Measured iterations per phase (unfrozen, fully frozen, each linearity ratio); when
    interleaved, the number of rounds."""
    warmup_iters: int = 2
    """Unmeasured iterations first (allocator, caches, gloo connections)."""
    linearity: bool = False
    """Also measure at ratios 0.25, 0.5, 0.75 and fit backward time against the ratio."""
    outlier_mads: float = 5.0
    """A sample further than this many (scaled) MADs from its median is an outlier."""
    phase_order: str = "interleaved"
    """"interleaved": `iters` rounds of one iteration per phase, the order rotating (rounds.py);
    "sequential": each phase's `iters` iterations back to back (kept to measure what
    interleaving changes, side by side)."""

    def __post_init__(self) -> None:
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ConfigError(f"--iters must be a positive integer, got {self.iters!r}")
        if not isinstance(self.warmup_iters, int) or self.warmup_iters < 0:
            raise ConfigError(f"--warmup-iters must be an integer >= 0, got {self.warmup_iters!r}")
        if not self.outlier_mads > 0:
            raise ConfigError(f"outlier_mads must be > 0, got {self.outlier_mads!r}")
        if self.phase_order not in PHASE_ORDERS:
            raise ConfigError(
                f"--phase-order must be one of {', '.join(PHASE_ORDERS)}, got {self.phase_order!r}"
            )

    @property
    def phases(self) -> list[tuple[str, float]]:
        """(name, freeze ratio) of each measured phase; `rounds()` says in which order they run."""
        phases = [("unfrozen", 0.0), ("frozen", 1.0)]
        if self.linearity:
            phases += [(f"ratio_{r:g}", r) for r in LINEARITY_RATIOS]
        return phases

    def rounds(self) -> list[list[str]]:
        """Phase names of the measured iterations in run order, grouped in rounds.

        Interleaved: `iters` rounds, each every phase once (`rounds.round_orders`).
        Sequential: one round per phase, holding its `iters` iterations."""
        names = [name for name, _ in self.phases]
        if self.phase_order == "sequential":
            return [[name] * self.iters for name in names]
        return [[names[i] for i in order] for order in round_orders(len(names), self.iters)]

    def measurement_record(self) -> dict[str, Any]:
        """How the phases were scheduled, for a profile's provenance."""
        design = "williams" if self.phase_order == "interleaved" else "blocks"
        return {"order": self.phase_order, "design": design, "rounds": self.rounds()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(kw_only=True, slots=True)
class ProfileJob:
    """Everything a profiling worker needs; written by the CLI, read by every rank."""

    model: ModelConfig
    parallel: ParallelConfig
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    output: str
    """Path of the profile.json rank 0 writes."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "parallel": self.parallel.to_dict(),
            "profile": self.profile.to_dict(),
            "output": self.output,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileJob:
        return cls(
            model=ModelConfig.from_dict(data["model"]),
            parallel=ParallelConfig.from_dict(data["parallel"]),
            profile=ProfileConfig(**data["profile"]),
            output=data["output"],
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the `profile` envelope; return its absolute path (for `job_env`)."""
        return JobEnvelope(kind="profile", job=self.to_dict()).save(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> ProfileJob:
        """From `path`, else (in a worker) from the file `$TIMELYFREEZE_JOB` names."""
        data = job_from_env("profile") if path is None else JobEnvelope.load(path, "profile").job
        try:
            return cls.from_dict(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError(
                f"cannot read profile job {path or '$TIMELYFREEZE_JOB'}: {exc}"
            ) from None
