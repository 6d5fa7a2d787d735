"""Trainer.set_plan: the one way to change what a running trainer freezes (train/alternate.py
switches between the stock schedule and plans every iteration through it)."""

from __future__ import annotations

from typing import Any

from megatron_tf.train.plan_source import PlanSource
from megatron_tf.train.trainer import Trainer


class _Runtime:
    """Records what the trainer asks of its freeze runtime."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def install(self) -> None:
        self.calls.append("install")

    def remove(self) -> None:
        self.calls.append("remove")

    def set_ratios(self, ratios: Any) -> None:
        self.calls.append(("ratios", ratios))


def _plan(ratio: float) -> PlanSource:
    return PlanSource(
        ratios=[[[ratio, ratio]]], baseline_makespan=1.0, makespan=0.9, source=f"r{ratio}"
    )


def _trainer(runtime: _Runtime, plan: PlanSource) -> Trainer:
    trainer = Trainer.__new__(Trainer)  # no process groups: set_plan needs none
    trainer.freezer, trainer._idle_freezer, trainer.plan = runtime, None, plan
    return trainer


def test_no_plan_removes_the_runtime_and_a_plan_brings_the_same_one_back() -> None:
    runtime = _Runtime()
    trainer = _trainer(runtime, _plan(0.5))
    trainer.set_plan(None)
    assert trainer.freezer is None and trainer.plan is None  # stock schedule, no prediction
    assert runtime.calls == ["remove"]
    plan = _plan(0.25)
    trainer.set_plan(plan)
    # The same runtime (its balance counts carry on), installed again with the new ratios.
    assert trainer.freezer is runtime and trainer.plan is plan
    assert runtime.calls == ["remove", "install", ("ratios", plan.ratios)]


def test_a_new_plan_retargets_the_installed_runtime() -> None:
    runtime = _Runtime()
    trainer = _trainer(runtime, _plan(0.5))
    plan = _plan(0.75)
    trainer.set_plan(plan)
    assert trainer.freezer is runtime and trainer.plan is plan
    assert runtime.calls == [("ratios", plan.ratios)]
    trainer.set_plan(None)
    trainer.set_plan(None)  # already stock: nothing more to remove
    assert runtime.calls == [("ratios", plan.ratios), "remove"]
