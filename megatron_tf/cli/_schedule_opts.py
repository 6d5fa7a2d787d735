"""Schedule and what-if cost flags shared by `simulate` and `profile --synthetic`.

Both commands take the option group `ScheduleFlags` (one "Schedule" help panel, see
`cli/_options.py`) and call its `synthetic()`, so the two accept exactly the same spelling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from megatron_tf.errors import ConfigError
from megatron_tf.formats.kinds import get_kind, kind_names

if TYPE_CHECKING:
    from megatron_tf.formats.profile import Profile
    from megatron_tf.formats.schedule import ScheduleSpec

_PANEL = "Schedule (what-if costs)"

SCHEDULE_HELP = "; ".join(f"{name}: {get_kind(name).summary}" for name in kind_names())
"""The registered schedule kinds, for `--schedule` help texts."""

ScheduleOption = Annotated[
    str | None,
    typer.Option(
        "--schedule",
        help=f"Schedule kind ({SCHEDULE_HELP}). With --profile: that profile's costs planned "
        "for this kind (same pp, vpp, microbatches).",
        rich_help_panel=_PANEL,
    ),
]
PpOption = Annotated[
    int | None, typer.Option("--pp", help="Pipeline-parallel size.", rich_help_panel=_PANEL)
]
VppOption = Annotated[
    int,
    typer.Option(
        "--vpp", help="Model chunks per rank (interleaved: >= 2).", rich_help_panel=_PANEL
    ),
]
MicrobatchesOption = Annotated[
    int | None,
    typer.Option("--microbatches", help="Microbatches per iteration.", rich_help_panel=_PANEL),
]
GroupSizeOption = Annotated[
    int,
    typer.Option(
        "--group-size",
        help="Megatron's microbatch_group_size_per_vp_stage (0: pp, Megatron's default).",
        rich_help_panel=_PANEL,
    ),
]
OverlapOption = Annotated[
    bool,
    typer.Option(
        "--overlap-p2p-comm",
        help="Interleaved only: Megatron's overlap_p2p_comm (asynchronous P2P).",
        rich_help_panel=_PANEL,
    ),
]
CostsOption = Annotated[
    str | None,
    typer.Option(
        "--costs",
        help="F,B,W seconds of one rank (forward, input grad, weight grad), or pp triples "
        "separated by ';'. Each chunk gets 1/vpp of them.",
        rich_help_panel=_PANEL,
    ),
]
CommOption = Annotated[
    float,
    typer.Option("--comm", help="Seconds per P2P message.", rich_help_panel=_PANEL),
]


def spec_from_flags(
    *,
    schedule: str | None,
    pp: int | None,
    vpp: int,
    microbatches: int | None,
    group_size: int,
    overlap_p2p_comm: bool,
) -> ScheduleSpec:
    from megatron_tf.formats.schedule import ScheduleSpec

    missing = [
        flag
        for flag, value in (
            ("--schedule", schedule),
            ("--pp", pp),
            ("--microbatches", microbatches),
        )
        if value is None
    ]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (needed to describe the schedule)")
    return ScheduleSpec(
        kind=schedule,  # type: ignore[arg-type]  # validated by ScheduleSpec
        pp=pp,  # type: ignore[arg-type]
        vpp=vpp,
        microbatches=microbatches,  # type: ignore[arg-type]
        group_size=group_size,
        overlap_p2p_comm=overlap_p2p_comm,
    )


def synthetic_from_flags(
    *,
    schedule: str | None,
    pp: int | None,
    vpp: int,
    microbatches: int | None,
    group_size: int,
    overlap_p2p_comm: bool,
    costs: str | None,
    comm: float,
) -> Profile:
    """The synthetic profile the flags describe (`profile --synthetic`, file-less `simulate`)."""
    from megatron_tf.schedule.costs import parse_costs, synthetic_profile

    spec = spec_from_flags(
        schedule=schedule,
        pp=pp,
        vpp=vpp,
        microbatches=microbatches,
        group_size=group_size,
        overlap_p2p_comm=overlap_p2p_comm,
    )
    if costs is None:
        raise ConfigError("missing --costs F,B,W (seconds of forward, input grad, weight grad)")
    return synthetic_profile(spec, parse_costs(costs, spec.pp), comm)


@dataclass(kw_only=True, slots=True)
class ScheduleFlags:
    """The schedule and what-if cost flags, as parsed (an option group)."""

    schedule: ScheduleOption = None
    pp: PpOption = None
    vpp: VppOption = 1
    microbatches: MicrobatchesOption = None
    group_size: GroupSizeOption = 0
    overlap_p2p_comm: OverlapOption = False
    costs: CostsOption = None
    comm: CommOption = 0.0

    def given(self) -> bool:
        """Whether any of the flags differs from its default (a what-if run was asked for)."""
        return self != ScheduleFlags()

    def costs_given(self) -> bool:
        """Whether any flag but `--schedule` was given (those describe what-if costs)."""
        return self != ScheduleFlags(schedule=self.schedule)

    def synthetic(self) -> Profile:
        """The synthetic profile the flags describe."""
        return synthetic_from_flags(
            schedule=self.schedule,
            pp=self.pp,
            vpp=self.vpp,
            microbatches=self.microbatches,
            group_size=self.group_size,
            overlap_p2p_comm=self.overlap_p2p_comm,
            costs=self.costs,
            comm=self.comm,
        )
