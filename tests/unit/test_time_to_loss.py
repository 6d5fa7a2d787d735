"""Time to a target loss on validation curves (megatron_tf/timetoloss.py), in closed form."""

from __future__ import annotations

import pytest

from megatron_tf.timetoloss import (
    Curve,
    Spread,
    compare,
    curve_from_records,
    simulated_charge,
)


def _records(losses: dict[int, float], n: int, phases: list[str] | None = None) -> list[dict]:
    return [
        {
            "iteration": i,
            "elapsed": 0.5 * i,
            "phase": (phases or ["train"] * n)[i - 1],
            "val_loss": losses.get(i),
        }
        for i in range(1, n + 1)
    ]


def test_curve_from_records_with_measured_and_simulated_time() -> None:
    recs = _records({2: 3.0, 4: 2.0}, 4, ["warmup", "warmup", "freeze", "freeze"])
    measured = curve_from_records(recs)
    assert measured.iterations == (2, 4) and measured.times == (1.0, 2.0)
    charge = simulated_charge([r["phase"] for r in recs], baseline=1.0, planned=0.8)
    assert charge == [1.0, 1.0, 0.8, 0.8]
    simulated = curve_from_records(recs, charge)
    assert simulated.times == pytest.approx((2.0, 3.6))
    with pytest.raises(ValueError, match="--eval-interval"):
        curve_from_records(_records({}, 3))


def test_time_to_and_loss_at_interpolate_linearly() -> None:
    c = Curve(iterations=(10, 20, 30), times=(1.0, 2.0, 3.0), losses=(3.0, 2.0, 1.5))
    assert c.time_to(2.5) == pytest.approx(1.5)
    assert c.time_to(2.0) == pytest.approx(2.0)
    assert c.time_to(1.75) == pytest.approx(2.5)
    assert c.time_to(3.5) == 1.0  # already below at the first evaluation
    assert c.time_to(1.0) is None
    assert c.loss_at(2.5) == pytest.approx(1.75)
    assert c.loss_at(3.0) == pytest.approx(1.5)
    assert c.loss_at(3.5) is None and c.loss_at(0.5) is None


def test_compare_against_a_baseline() -> None:
    base = Curve(iterations=(10, 20), times=(10.0, 20.0), losses=(2.0, 1.0))
    run = Curve(iterations=(10, 20, 25), times=(8.0, 16.0, 20.0), losses=(1.9, 0.98, 0.9))
    comp = compare(base, run)
    assert comp.target == 1.0
    # 1.9 at t=8 -> 0.98 at t=16: 1.0 is crossed at t = 8 + 8 * 0.9 / 0.92.
    assert comp.reach_fraction == pytest.approx((8 + 8 * 0.9 / 0.92) / 20)
    assert comp.loss_at_baseline_time == pytest.approx(0.9)
    assert comp.loss_gap_at_equal_time == pytest.approx(-0.1)


def test_spread_over_seeds() -> None:
    s = Spread.of([0.9, 1.0, None])
    assert s.mean == pytest.approx(0.95) and s.low == 0.9 and s.high == 1.0 and s.missing == 1
    assert s.std == pytest.approx(0.0707106781)
    assert Spread.of([None]).format() == "not reached"
