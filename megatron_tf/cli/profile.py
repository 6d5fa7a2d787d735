"""`timelyfreeze profile`: write a profile.json (what-if costs with --synthetic)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from megatron_tf.cli._app import app, console, user_errors
from megatron_tf.cli._schedule_opts import (
    CommOption,
    CostsOption,
    GroupSizeOption,
    MicrobatchesOption,
    OverlapOption,
    PpOption,
    ScheduleOption,
    VppOption,
    synthetic_from_flags,
)
from megatron_tf.errors import ConfigError


@app.command("profile")
@user_errors
def profile(
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="Where to write profile.json (atomically)."),
    ],
    synthetic: Annotated[
        bool,
        typer.Option(
            "--synthetic",
            help="Write what-if costs from --costs instead of measuring the model.",
        ),
    ] = False,
    schedule: ScheduleOption = None,
    pp: PpOption = None,
    vpp: VppOption = 1,
    microbatches: MicrobatchesOption = None,
    group_size: GroupSizeOption = 0,
    overlap_p2p_comm: OverlapOption = False,
    costs: CostsOption = None,
    comm: CommOption = 0.0,
) -> None:
    """Write a [bold]timelyfreeze.profile/1[/] file: per-stage forward/backward costs.

    What-if planning, no GPU: [bold]timelyfreeze profile --synthetic --schedule interleaved
    --pp 4 --vpp 2 --microbatches 8 --costs 1,1,1 -o profile.json[/]. F, B, W are one rank's
    forward, input-gradient and weight-gradient seconds; each chunk gets 1/vpp of them,
    backward = B+W and backward_frozen = B (0 on the first virtual stage).
    """
    if not synthetic:
        raise ConfigError(
            "measuring profiles needs the profiling runner (not available yet): "
            "use --synthetic with --costs F,B,W for a what-if profile"
        )
    write_synthetic_profile(
        output,
        schedule=schedule,
        pp=pp,
        vpp=vpp,
        microbatches=microbatches,
        group_size=group_size,
        overlap_p2p_comm=overlap_p2p_comm,
        costs=costs,
        comm=comm,
    )


def write_synthetic_profile(
    output: Path,
    *,
    schedule: str | None,
    pp: int | None,
    vpp: int,
    microbatches: int | None,
    group_size: int,
    overlap_p2p_comm: bool,
    costs: str | None,
    comm: float,
) -> None:
    """The `--synthetic` path: build the profile from the flags, save it, say what was written."""
    from megatron_tf.formats.profile import save_profile

    if output.suffix.lower() != ".json":
        raise ConfigError(f"-o/--output must end in .json, got {str(output)!r}")
    data = synthetic_from_flags(
        schedule=schedule,
        pp=pp,
        vpp=vpp,
        microbatches=microbatches,
        group_size=group_size,
        overlap_p2p_comm=overlap_p2p_comm,
        costs=costs,
        comm=comm,
    )
    save_profile(data, output)
    console.print(f"wrote {output}: synthetic profile of {data.spec.describe()}", highlight=False)
