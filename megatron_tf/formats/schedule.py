"""What identifies a pipeline schedule: kind, pp, vpp, microbatches, group size.

The one schedule record: the formats (`ScheduleRecord`, the `schedule` object of profile.json and
plan.json), the layout (`ParallelConfig.schedule_spec`), the simulator, the runtime and the
trainer all hold a `ScheduleSpec`, and `megatron_schedule` is the only place that turns
Megatron's settings (pp, vpp, microbatches, group size, overlap) into one.
`ScheduleSpec.__post_init__` checks what every kind shares and hands the rest to the kind's own
rules in the registry (`formats/kinds/`), which follow megatron-core 0.19.2
(`pipeline_parallel/schedules.py`): a schedule this module accepts is one that runs, and a
rejected one carries the rule.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from megatron_tf.errors import ConfigError
from megatron_tf.formats.kinds import ScheduleKind, get_kind, kind_names

SCHEDULE_KINDS: tuple[str, ...] = kind_names()
"""The registered schedule kinds (`formats/kinds/`)."""

DEFAULT_MAX_ACTIONS = 500_000
"""Largest schedule (compute actions: 2 or, with W, 3 * pp * vpp * microbatches) any command
builds, unless `$TIMELYFREEZE_MAX_ACTIONS` raises it. The DAG and simulator take about 1.3 KB
and 50 us per action on a CPU (pp 32, M 4096: 262,144 actions, 13.6 s, 390 MB), so the default
bounds one command at about 0.7 GB and half a minute; the LP is several times that."""
MAX_ACTIONS_ENV = "TIMELYFREEZE_MAX_ACTIONS"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleSpec:
    """One iteration of a Megatron pipeline schedule, as Megatron itself parameterises it."""

    kind: str
    """A registered kind (`formats/kinds/`): `1f1b`, `interleaved` or `zb-h1`."""
    pp: int
    """Pipeline-parallel size (ranks)."""
    vpp: int = 1
    """Model chunks per rank (virtual pipeline size); >= 2 for interleaved, else 1."""
    microbatches: int
    """Microbatches per iteration (M = global batch / (micro batch * dp))."""
    group_size: int = 0
    """Megatron's `microbatch_group_size_per_vp_stage`; 0 means Megatron's default, pp."""
    overlap_p2p_comm: bool = False
    """Megatron's `overlap_p2p_comm` (interleaved only): changes P2P calls, not compute order."""

    def __post_init__(self) -> None:
        kind = get_kind(self.kind)
        _positive_int("pp", self.pp, "--pp")
        _positive_int("microbatches", self.microbatches, "--microbatches")
        _positive_int("vpp", self.vpp, "--vpp")
        if self.pp < 2:
            raise ConfigError(f"--pp must be at least 2 for a pipeline schedule, got {self.pp}")
        _check_size(self)
        # The kind's own rules (formats/kinds/): they also fill in the default group size.
        object.__setattr__(self, "group_size", kind.check(self))

    @property
    def schedule_kind(self) -> ScheduleKind:
        """The registered kind: its rules, program generator and metadata."""
        return get_kind(self.kind)

    @property
    def actions(self) -> int:
        """Compute actions of one iteration (the kind's actions per microbatch and chunk: F and
        B, or F, B and W); what the DAG, the simulator and the LP grow with."""
        return _actions(self)

    @property
    def stages(self) -> int:
        """Virtual pipeline stages: pp * vpp."""
        return self.pp * self.vpp

    def virtual_stage(self, rank: int, chunk: int) -> int:
        """Megatron's placement: chunk c of rank r holds virtual stage c * pp + r."""
        return chunk * self.pp + rank

    def same_compute_order(self, other: ScheduleSpec) -> bool:
        """True if both run the same (rank, chunk, microbatch) actions in the same order.

        `overlap_p2p_comm` changes only the P2P calls, so a plan made for one runs on the other.
        """
        return (self.kind, self.pp, self.vpp, self.microbatches, self.group_size) == (
            other.kind,
            other.pp,
            other.vpp,
            other.microbatches,
            other.group_size,
        )

    def describe(self) -> str:
        text = f"{self.kind} pp={self.pp}"
        if self.schedule_kind.chunked:
            text += f" vpp={self.vpp} group={self.group_size}"
        return f"{text} M={self.microbatches}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleSpec:
        return cls(**data)


def megatron_schedule(
    *,
    pp: int,
    vpp: int,
    microbatches: int,
    group_size: int | None = 0,
    overlap_p2p_comm: bool = False,
    drop_interleaved_only: bool = False,
) -> ScheduleSpec:
    """The schedule Megatron runs for its settings: 1F1B when vpp is 1, interleaved otherwise.

    Megatron has no schedule switch: the virtual pipeline size picks it. `group_size` None or 0
    means Megatron's default (pp). With `drop_interleaved_only` (settings read from Megatron
    itself, which ignores them under 1F1B) the group size and `overlap_p2p_comm` are dropped
    for 1F1B; otherwise (a user's flags) setting them there is an error, raised by ScheduleSpec.
    """
    interleaved = vpp > 1
    if drop_interleaved_only and not interleaved:
        group_size, overlap_p2p_comm = 0, False
    return ScheduleSpec(
        kind="interleaved" if interleaved else "1f1b",
        pp=pp,
        vpp=vpp,
        microbatches=microbatches,
        group_size=group_size or 0,
        overlap_p2p_comm=overlap_p2p_comm,
    )


class ScheduleRecord(BaseModel):
    """`ScheduleSpec` as the `schedule` object of profile.json and plan.json.

    A view, not a second set of rules: the fields are stored as written (so a file's fingerprint
    does not move) and checked by building the `ScheduleSpec`.
    """

    # strict: "2" or true where a number belongs is refused, not coerced.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    kind: str
    """A registered schedule kind; checked by building the `ScheduleSpec`."""
    pp: int = Field(ge=2)
    vpp: int = Field(default=1, ge=1)
    microbatches: int = Field(ge=1)
    group_size: int = Field(default=0, ge=0)
    """0 means Megatron's default, pp."""
    overlap_p2p_comm: bool = False

    @model_validator(mode="after")
    def _megatron_accepts(self) -> ScheduleRecord:
        try:
            self.to_spec()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def to_spec(self) -> ScheduleSpec:
        """The validated spec (Megatron's default group size filled in)."""
        return ScheduleSpec(**self.model_dump())

    @classmethod
    def from_spec(cls, spec: ScheduleSpec) -> ScheduleRecord:
        return cls(**spec.to_dict())


def _positive_int(name: str, value: object, flag: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{flag} must be a positive integer, got {value!r} ({name})")


def max_actions() -> int:
    """The size bound in force: `$TIMELYFREEZE_MAX_ACTIONS`, else `DEFAULT_MAX_ACTIONS`."""
    text = os.environ.get(MAX_ACTIONS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_ACTIONS
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{MAX_ACTIONS_ENV} must be a positive integer, got {text!r}")
    return int(text)


def _check_size(spec: ScheduleSpec) -> None:
    """Refuse, before anything is built, a schedule whose model would not fit a shared machine."""
    limit = max_actions()
    actions = _actions(spec)
    if actions > limit:
        what = (
            "forward/backward/weight-gradient"
            if spec.schedule_kind.splits_backward
            else ("forward/backward")
        )
        raise ConfigError(
            f"the schedule --pp {spec.pp} --vpp {spec.vpp} --microbatches {spec.microbatches} has "
            f"{actions:,} {what} actions, over the limit of {limit:,} (about "
            f"{limit * 1.3e-6:.1f} GB to model); set {MAX_ACTIONS_ENV} to raise it"
        )


def _actions(spec: ScheduleSpec) -> int:
    return len(spec.schedule_kind.actions) * spec.pp * spec.vpp * spec.microbatches
