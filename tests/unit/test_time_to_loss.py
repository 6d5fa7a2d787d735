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
    # A re-priced run: each freezing iteration is charged its own plan's prediction.
    own = simulated_charge(["warmup", "freeze", "freeze", "ramp"], 1.0, 0.8, [None, 0.9, None, 0.7])
    assert own == [1.0, 0.9, 0.8, 1.0]
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


def test_compare_report_labels_simulated_time(tmp_path) -> None:
    """The report's tables and plot come from the curves, and say which time they show."""
    from megatron_tf.compare import (
        CompareConfig,
        CompareResult,
        RunResult,
        _equal_time_iters,
        format_table,
        write_report,
    )

    cfg = CompareConfig(out_dir=tmp_path, iters=100, warmup_iters=10, seeds=(1, 2))
    # The warm-up at the baseline's speed, the rest at the plan's: 10 + ceil(90 * 1.25).
    assert _equal_time_iters(cfg, 1.25) == 123
    assert _equal_time_iters(cfg, 1.0) == 100
    base = Curve(iterations=(50, 100), times=(50.0, 100.0), losses=(1.2, 1.0))
    runs, curves = [], {}
    for seed, end_loss in ((1, 0.98), (2, 1.01)):
        run = Curve(iterations=(60, 123), times=(50.0, 100.0), losses=(1.1, end_loss))
        curves[f"seed{seed}/baseline"] = base
        curves[f"seed{seed}/auto"] = run
        runs.append(
            RunResult(
                seed=seed,
                budget="auto",
                max_freeze_ratio=0.2,
                predicted_speedup=1.25,
                iters=123,
                comparison=compare(base, run),
                reason="auto: test",
            )
        )
    result = CompareResult(config=cfg, time_label="simulated time (test)", runs=runs, curves=curves)
    table = "\n".join(format_table(result))
    assert "simulated time" in table
    assert "| auto | 1 | 0.2 | 1.250 | 123 | 1.0000 | " in table
    # Seed 1 reaches 1.0 between 1.1 at t=50 and 0.98 at t=100: t = 50 + 50 * 0.1 / 0.12.
    assert f"{(50 + 50 * 0.1 / 0.12) / 100:.3f}" in table
    assert "1 not reached" in table  # seed 2 ends above the target
    write_report(result, tmp_path)
    assert (tmp_path / "loss_vs_time.png").stat().st_size > 0
    assert "simulated time" in (tmp_path / "report.md").read_text()
    summary = result.summary()
    assert summary["budgets"]["auto"]["reach_fraction"]["missing"] == 1
