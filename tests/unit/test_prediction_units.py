"""A plan solved on synthetic costs predicts in their unit, not seconds; the console says so."""

from __future__ import annotations

from megatron_tf.formats.plan import Plan
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.schedule.costs import synthetic_profile
from megatron_tf.solve.lp import SolverConfig
from megatron_tf.solve.planner import solve_profile
from megatron_tf.train.metrics import StepMetrics, format_line
from megatron_tf.train.plan_source import from_plan


def _plan() -> Plan:
    spec = ScheduleSpec(kind="1f1b", pp=2, microbatches=4)
    profile = synthetic_profile(spec, [(1.0, 1.0, 1.0)] * 2)
    return solve_profile(profile, SolverConfig(max_freeze_ratio=0.3)).plan


def test_a_plan_from_synthetic_costs_says_so() -> None:
    plan = _plan()
    assert plan.predicted.synthetic
    assert from_plan(plan, source="p.json").synthetic
    assert not Plan.model_validate(
        {
            **plan.model_dump(),
            "predicted": {"baseline_makespan": 1.0, "makespan": 0.9, "speedup": 1 / 0.9},
        }
    ).predicted.synthetic


def _line(predicted: float, unitless: bool) -> str:
    m = StepMetrics(
        iteration=10, loss=2.0, lr=1e-3, grad_norm=1.0, tokens=100, seconds=0.7,
        schedule_seconds=0.665, predicted_seconds=predicted, predicted_unitless=unitless,
    )  # fmt: skip
    return format_line(m)


def test_console_line_labels_the_prediction_by_its_unit() -> None:
    assert "(fwd-bwd 665 ms, pred 29.3 unitless: synthetic costs)" in _line(29.3, True)
    assert "(fwd-bwd 665 ms, pred 640 ms)" in _line(0.64, False)
