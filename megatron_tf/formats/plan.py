"""`plan.json` (`timelyfreeze.plan/1`): the solver's freeze ratios and what it predicted.

The runtime reads `ratios[rank][chunk][microbatch]`; everything else says where the plan
came from (schedule, profile fingerprint, solver options) so a plan is never applied to a
run it was not made for (`check_plan_matches`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from megatron_tf.errors import FormatError, ScheduleMismatchError
from megatron_tf.formats.jsonio import read_json
from megatron_tf.formats.profile import write_json_atomic
from megatron_tf.formats.schedule import ScheduleRecord, ScheduleSpec

PLAN_FORMAT = "timelyfreeze.plan/1"

Ratio = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class _Strict(BaseModel):
    # strict: "1.0" or true where a number belongs is refused, not coerced.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Predicted(_Strict):
    """What the DAG model predicts for one iteration (seconds, or unitless for synthetic costs)."""

    baseline_makespan: Seconds
    makespan: Seconds
    speedup: float = Field(gt=0.0, allow_inf_nan=False)
    """baseline_makespan / makespan."""
    synthetic: bool = False
    """Solved on synthetic (what-if) costs: the makespans are in the costs' own unit, not
    seconds, and only their ratio means anything for a real run."""


class SolverInfo(_Strict):
    name: str
    """`GLOP` (exact) or `PDLP` (first-order, to the eps in `status`)."""
    status: str
    """`OPTIMAL`, or `OPTIMAL (PDLP, eps E)` (anything else is never written)."""
    seconds: Seconds
    """Wall time of model building, both passes and reading back."""
    first_stage_pinned: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    """Microbatches of (rank 0, chunk 0) fixed at ratio 0 and re-solved (docs/lp.md): the
    runtime trains the embedding only where that ratio is exactly 0. Empty when the LP's
    plan already had `min_trained_microbatches` zeros there."""
    extras: dict[str, float] = Field(default_factory=dict)
    """Solver statistics (pivots per pass, LP size); informative only."""


class Plan(_Strict):
    """One `plan.json`."""

    format: Literal["timelyfreeze.plan/1"] = PLAN_FORMAT
    schedule: ScheduleRecord
    profile_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of the profile the plan was solved on (formats/profile.py's fingerprint)."""
    max_freeze_ratio: Ratio
    tolerance: float = Field(ge=0.0, lt=1.0)
    min_trained_microbatches: int = Field(ge=0)
    comm_model: Literal["megatron", "dataflow"]
    weighting: Literal["uniform", "params"] = "uniform"
    ratios: list[list[list[Ratio]]]
    """ratios[rank][chunk][microbatch]: freeze ratio of that backward, in [0, 1]."""
    predicted: Predicted
    solver: SolverInfo

    @model_validator(mode="after")
    def _ratio_shape(self) -> Plan:
        s = self.schedule
        if len(self.ratios) != s.pp:
            raise ValueError(f"ratios has {len(self.ratios)} ranks, schedule.pp is {s.pp}")
        for rank, chunks in enumerate(self.ratios):
            if len(chunks) != s.vpp:
                raise ValueError(
                    f"ratios[{rank}] has {len(chunks)} chunks, schedule.vpp is {s.vpp}"
                )
            for chunk, values in enumerate(chunks):
                if len(values) != s.microbatches:
                    raise ValueError(
                        f"ratios[{rank}][{chunk}] has {len(values)} microbatches, "
                        f"schedule.microbatches is {s.microbatches}"
                    )
        self._within_own_budget()
        return self

    def _within_own_budget(self) -> None:
        """The ratios obey the plan's own header: a hand-edited plan cannot exceed its cap."""
        slack = 1e-6
        for rank, chunks in enumerate(self.ratios):
            for chunk, values in enumerate(chunks):
                mean = sum(values) / len(values)
                if mean > self.max_freeze_ratio + slack:
                    raise ValueError(
                        f"ratios[{rank}][{chunk}] has mean {mean:.6g}, above the plan's own "
                        f"max_freeze_ratio {self.max_freeze_ratio:g}"
                    )
                trained = sum(1.0 - r for r in values)
                if trained < min(self.min_trained_microbatches, len(values)) - slack:
                    raise ValueError(
                        f"ratios[{rank}][{chunk}] trains {trained:.6g} microbatches, below the "
                        f"plan's own min_trained_microbatches {self.min_trained_microbatches}"
                    )

    def schedule_spec(self) -> ScheduleSpec:
        return self.schedule.to_spec()

    def ratio(self, rank: int, chunk: int, microbatch: int) -> float:
        return self.ratios[rank][chunk][microbatch]

    def mean_freeze_ratio(self) -> float:
        flat = [r for chunks in self.ratios for values in chunks for r in values]
        return sum(flat) / len(flat)


def load_plan(path: str | os.PathLike[str], *, flag: str = "") -> Plan:
    """Read and validate a plan; every problem is a one-line FormatError naming the field."""
    p = Path(path)
    data = read_json(p, "plan", flag=flag)
    return parse_plan(data, source=str(p))


def parse_plan(data: Any, *, source: str = "plan") -> Plan:
    if not isinstance(data, dict):
        raise FormatError(f"{source}: expected a JSON object with format {PLAN_FORMAT!r}")
    found = data.get("format")
    if found != PLAN_FORMAT:
        what = "has no 'format' field" if found is None else f"has format {found!r}"
        raise FormatError(f"{source} {what}; expected {PLAN_FORMAT!r} (a plan from `solve`)")
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        raise FormatError(f"{source}: {_describe(exc)}") from None


def save_plan(plan: Plan, path: str | os.PathLike[str]) -> None:
    """Write atomically: a temp file in the same folder, then `os.replace`."""
    write_json_atomic(plan.model_dump(mode="json"), path)


def check_plan_matches(plan: Plan, spec: ScheduleSpec) -> None:
    """Refuse a plan made for another schedule (P2P overlap alone may differ: same order)."""
    planned = plan.schedule_spec()
    if not planned.same_compute_order(spec):
        raise ScheduleMismatchError(
            f"the plan was solved for {planned.describe()} but this run is "
            f"{spec.describe()}; profile this run and solve again"
        )


def _describe(exc: ValidationError) -> str:
    """All problems on one line: `field.path: message; ...` (at most a few, then a count)."""
    parts = []
    errors = exc.errors(include_url=False)
    for err in errors[:4]:
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    if len(errors) > 4:
        parts.append(f"and {len(errors) - 4} more")
    return "; ".join(parts)
