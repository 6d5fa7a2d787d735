"""The plan a training run freezes by: from a plan.json, or solved in-job (`--plan auto`).

A small torch-free record of what the trainer needs (ratios and the two predicted makespans)
that also goes into checkpoints, so a resumed `--plan auto` run continues with the plan it had
solved instead of profiling again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from megatron_tf.formats.plan import check_plan_matches, load_plan
from megatron_tf.formats.schedule import ScheduleSpec


@dataclass(kw_only=True, slots=True)
class PlanSource:
    """Ratios[rank][chunk][microbatch] and what the DAG model predicted for them."""

    ratios: list[list[list[float]]]
    baseline_makespan: float
    """Predicted seconds per iteration with nothing frozen."""
    makespan: float
    """Predicted seconds per iteration with the plan."""
    source: str
    """Path of the plan.json, or `auto:<n>` for the n-th in-job plan."""
    synthetic: bool = False
    """The makespans come from synthetic costs: unitless, not seconds."""

    @property
    def speedup(self) -> float:
        return self.baseline_makespan / self.makespan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanSource:
        return cls(**data)


def load_plan_source(path: str, spec: ScheduleSpec) -> PlanSource:
    """Read plan.json, refusing (ScheduleMismatchError, exit 2) a plan for another schedule."""

    plan = load_plan(path, flag="--plan")
    check_plan_matches(plan, spec)
    return from_plan(plan, source=path)


def from_plan(plan: Any, *, source: str) -> PlanSource:
    return PlanSource(
        ratios=[[list(map(float, v)) for v in chunks] for chunks in plan.ratios],
        baseline_makespan=plan.predicted.baseline_makespan,
        makespan=plan.predicted.makespan,
        source=source,
        synthetic=plan.predicted.synthetic,
    )
