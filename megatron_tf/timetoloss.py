"""Time to a target loss from validation curves: the measure `timelyfreeze compare` reports.

A curve is the validation loss at evaluated iterations with the (measured or simulated) training
time at each. Torch-free: the comparison's analysis, its tests and the bench read only
metrics.jsonl and a per-iteration time charge.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Curve:
    """Validation loss against training time (both in evaluation order, time increasing)."""

    iterations: tuple[int, ...]
    times: tuple[float, ...]
    """Seconds (measured or simulated) of training up to and including that iteration."""
    losses: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.iterations) == len(self.times) == len(self.losses)) or not self.times:
            raise ValueError("a curve needs equally many (>= 1) iterations, times and losses")

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    @property
    def total_time(self) -> float:
        return self.times[-1]

    def time_to(self, target: float) -> float | None:
        """First time the loss is at or below `target`, linear between evaluations; None if
        never. Before the first evaluation nothing is known, so a first point already below
        the target counts at its own time."""
        prev_t, prev_l = None, None
        for t, loss in zip(self.times, self.losses, strict=True):
            if loss <= target:
                if prev_t is None or prev_l is None or prev_l == loss:
                    return t
                return prev_t + (t - prev_t) * (prev_l - target) / (prev_l - loss)
            prev_t, prev_l = t, loss
        return None

    def loss_at(self, time: float) -> float | None:
        """Loss at `time`, linear between evaluations; None outside the evaluated span."""
        if time < self.times[0] - 1e-12 or time > self.times[-1] + 1e-9:
            return None
        for i in range(1, len(self.times)):
            t0, t1 = self.times[i - 1], self.times[i]
            if time <= t1:
                if t1 == t0:
                    return self.losses[i]
                w = (time - t0) / (t1 - t0)
                return self.losses[i - 1] + w * (self.losses[i] - self.losses[i - 1])
        return self.losses[-1]


def curve_from_records(records: Sequence[dict], charge: Sequence[float] | None = None) -> Curve:
    """The validation curve of a run's metrics.jsonl records.

    `charge`: seconds charged per iteration (index = iteration - 1), the simulated time; None:
    the measured `elapsed` of each record.
    """
    its, times, losses = [], [], []
    clock = 0.0
    for i, rec in enumerate(records):
        clock = clock + charge[i] if charge is not None else float(rec["elapsed"])
        if rec.get("val_loss") is not None:
            its.append(int(rec["iteration"]))
            times.append(clock)
            losses.append(float(rec["val_loss"]))
    if not its:
        raise ValueError("the run has no validation losses (train it with --eval-interval)")
    return Curve(iterations=tuple(its), times=tuple(times), losses=tuple(losses))


def simulated_charge(
    phases: Sequence[str],
    baseline: float,
    planned: float,
    predicted: Sequence[float | None] | None = None,
) -> list[float]:
    """Seconds per iteration: the plan's predicted time once freezing, the baseline's before.

    `predicted`: each iteration's own prediction for the plan in force (metrics.jsonl's
    `predicted_seconds`), which wins where given: a re-priced run switches plans mid-run."""
    out = []
    for i, phase in enumerate(phases):
        own = None if predicted is None else predicted[i]
        if phase != "freeze":
            out.append(baseline)
        else:
            out.append(planned if own is None else float(own))
    return out


@dataclass(frozen=True, slots=True)
class Comparison:
    """One run against its seed's baseline."""

    target: float
    """The baseline's final validation loss."""
    baseline_time: float
    reach_time: float | None
    """When the run first reaches `target` (None: not within the run)."""
    loss_at_baseline_time: float | None
    """The run's validation loss when the baseline's time is spent."""

    @property
    def reach_fraction(self) -> float | None:
        """Time to the baseline's final loss as a share of the baseline's time (< 1 wins)."""
        return None if self.reach_time is None else self.reach_time / self.baseline_time

    @property
    def loss_gap_at_equal_time(self) -> float | None:
        """(run - baseline) / baseline at the baseline's time (< 0: the run is ahead)."""
        if self.loss_at_baseline_time is None:
            return None
        return self.loss_at_baseline_time / self.target - 1.0


def compare(baseline: Curve, run: Curve) -> Comparison:
    target = baseline.final_loss
    return Comparison(
        target=target,
        baseline_time=baseline.total_time,
        reach_time=run.time_to(target),
        loss_at_baseline_time=run.loss_at(baseline.total_time),
    )


@dataclass(frozen=True, slots=True)
class Spread:
    """Mean, sample standard deviation and range over seeds (None entries count as missing)."""

    mean: float | None
    std: float | None
    low: float | None
    high: float | None
    missing: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread:
        have = [v for v in values if v is not None and math.isfinite(v)]
        missing = len(values) - len(have)
        if not have:
            return cls(mean=None, std=None, low=None, high=None, missing=missing)
        std = statistics.stdev(have) if len(have) > 1 else 0.0
        return cls(
            mean=statistics.fmean(have), std=std, low=min(have), high=max(have), missing=missing
        )

    def format(self, fmt: str = "{:.3f}") -> str:
        if self.mean is None:
            return "not reached"
        text = f"{fmt.format(self.mean)} (sd {fmt.replace('+', '').format(self.std)}; "
        text += f"{fmt.format(self.low)} to {fmt.format(self.high)})"
        return text + (f", {self.missing} not reached" if self.missing else "")
