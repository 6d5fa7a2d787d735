"""The demo's loss comparisons: when a run reaches a loss, and the equal-wall-time verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_tf.demo import DemoResult, RunSummary, iterations_to_loss


def _run(name: str, losses: list[float]) -> RunSummary:
    n = len(losses)
    return RunSummary(
        name=name,
        losses=losses,
        seconds=[0.1] * n,
        schedule_seconds=[0.09] * n,
        elapsed=[0.1 * (i + 1) for i in range(n)],
        freeze_from=0,
    )


def test_iterations_to_loss_uses_the_final_loss_window() -> None:
    losses = [5.0, 4.0, 3.0, 2.0, 1.0, 1.0]
    assert iterations_to_loss(losses, 3.0, 1) == 3  # one value: the first at or below
    assert iterations_to_loss(losses, 3.0, 2) == 4  # mean(3, 2) = 2.5; mean(4, 3) = 3.5
    assert iterations_to_loss(losses, 1.0, 2) == 6
    assert iterations_to_loss(losses, 0.5, 2) is None
    assert iterations_to_loss([1.0], 1.0, 2) is None  # shorter than the window


def test_equal_time_reach_counts_iterations_over_the_measured_speedup() -> None:
    baseline = _run("baseline", [4.0] * 5 + [2.0] * 5)  # final loss: mean of the last 1 = 2.0
    equal = _run("equal time", [4.0] * 7 + [2.0] * 5)  # reaches 2.0 at iteration 8
    result = DemoResult(
        predicted_baseline=1.0,
        predicted_makespan=0.9,
        baseline=baseline,
        frozen=baseline,
        loss_floor=None,
        report=Path("report.md"),
        profile=Path("profile.json"),
        plan=Path("plan.json"),
        side_by_side={"baseline": (0.12, 0.11), "plan": (0.1, 0.09)},
        equal_time=equal,
    )
    assert result.measured_speedup == pytest.approx(1.2)
    # 8 iterations at 1.2x the speed take 8 / 1.2 baseline iterations of time, of 10.
    assert result.equal_time_reach() == pytest.approx(8 / 1.2 / 10)
    never = _run("equal time", [4.0] * 12)
    result.equal_time = never
    assert result.equal_time_reach() is None
    result.equal_time = None
    assert result.equal_time_reach() is None
