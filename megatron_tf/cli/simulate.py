"""`timelyfreeze simulate`: predict one iteration of a schedule, optionally with a freeze plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from megatron_tf.cli._app import app, console, err_console, user_errors
from megatron_tf.cli._progress import busy
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
from megatron_tf.outputs import check_output_file

if TYPE_CHECKING:
    from megatron_tf.formats.profile import Profile
    from megatron_tf.schedule.simulate import SimResult


@app.command("simulate")
@user_errors
def simulate(
    profile: Annotated[
        Path | None,
        typer.Option("--profile", help="profile.json to simulate (instead of the schedule flags)."),
    ] = None,
    plan: Annotated[
        Path | None,
        typer.Option("--plan", help="plan.json from `solve`: apply its freeze ratios."),
    ] = None,
    comm_model: Annotated[
        str | None,
        typer.Option(
            "--comm-model",
            help="megatron: blocking P2P calls meet their peers; dataflow: data edges only, "
            "the textbook model. Default: the plan's comm_model with --plan, else megatron.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    timeline: Annotated[
        Path | None,
        typer.Option("--timeline", help="Write a per-rank Gantt chart (.png or .svg)."),
    ] = None,
    trace: Annotated[
        Path | None,
        typer.Option("--trace", help="Write a Chrome trace (.json; opens in ui.perfetto.dev)."),
    ] = None,
    schedule: ScheduleOption = None,
    pp: PpOption = None,
    vpp: VppOption = 1,
    microbatches: MicrobatchesOption = None,
    group_size: GroupSizeOption = 0,
    overlap_p2p_comm: OverlapOption = False,
    costs: CostsOption = None,
    comm: CommOption = 0.0,
) -> None:
    """Simulate one training iteration: makespan, bubbles, critical path, timelines.

    From a profile: [bold]timelyfreeze simulate --profile profile.json --plan plan.json
    --timeline t.png[/]

    What-if, no file: [bold]timelyfreeze simulate --schedule 1f1b --pp 8 --microbatches 16
    --costs 1,1,1 --json[/]
    """
    from megatron_tf.formats.profile import load_profile
    from megatron_tf.schedule.simulate import simulate_profile
    from megatron_tf.schedule.timeline import (
        draw_timelines,
        timeline_from_measured,
        timeline_from_sim,
        write_chrome_trace,
    )

    flags_given = any(v is not None for v in (schedule, pp, microbatches, costs)) or (
        vpp,
        group_size,
        overlap_p2p_comm,
        comm,
    ) != (1, 0, False, 0.0)
    if profile is not None and flags_given:
        raise ConfigError(
            "give either --profile FILE or the schedule flags (--schedule, --pp, --costs, ...), "
            "not both"
        )
    if profile is None and not flags_given:
        raise ConfigError(
            "nothing to simulate: give --profile FILE, or --schedule, --pp, --microbatches "
            "and --costs F,B,W"
        )
    if timeline is not None:
        check_output_file(timeline, "--timeline", suffixes=(".png", ".svg"))
    if trace is not None:
        check_output_file(trace, "--trace", suffixes=(".json",))

    if profile is not None:
        data = load_profile(profile)
    else:
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
    spec = data.spec
    ratios = None
    if plan is not None:
        from megatron_tf.formats.plan import check_plan_matches, load_plan
        from megatron_tf.formats.profile import profile_sha256

        loaded = load_plan(plan)
        check_plan_matches(loaded, spec)
        ratios = loaded.ratios
        if profile is not None and loaded.profile_sha256 != profile_sha256(data):
            err_console.print(
                f"[yellow]note:[/] {plan} was solved on another profile than {profile}",
                highlight=False,
            )
        if comm_model is None:
            # The plan's prediction was made on its own DAG; an explicit flag still wins.
            comm_model = loaded.comm_model
    if comm_model is None:
        comm_model = "megatron"

    with busy(f"simulating {spec.describe()}", spec.actions):
        result = simulate_profile(data, comm_model, ratios)
        baseline = simulate_profile(data, comm_model) if ratios is not None else None

    if timeline is not None or trace is not None:
        panels = []
        if baseline is not None:
            panels.append(
                timeline_from_sim(baseline, _title("baseline (nothing frozen)", baseline))
            )
            panels.append(timeline_from_sim(result, _title(f"with plan {plan.name}", result)))  # type: ignore[union-attr]
        else:
            panels.append(timeline_from_sim(result))
        if data.measured is not None and data.measured.actions:
            # A measured profile: draw what the real run did under what the model predicts.
            panels.append(timeline_from_measured(data.measured, spec.pp, spec.vpp))
        if timeline is not None:
            draw_timelines(panels, timeline)
        if trace is not None:
            write_chrome_trace(panels, trace)

    check = _prediction_check(data, baseline or result)
    if as_json:
        out = result.to_dict()
        if baseline is not None:
            out["baseline_makespan"] = baseline.makespan
            out["speedup"] = baseline.makespan / result.makespan if result.makespan else 1.0
        out.update(check)
        typer.echo(json.dumps(out))
        return
    console.print(_table(result))
    for line in _summary(result, baseline):
        console.print(escape(line), highlight=False)
    if check:
        console.print(
            f"measured iteration {check['measured_iteration_time']:.6g} s, prediction error "
            f"{check['prediction_error']:+.2%} (unfrozen run)",
            highlight=False,
        )
    for path in (timeline, trace):
        if path is not None:
            console.print(f"wrote {path}")


def _prediction_check(data: Profile, unfrozen: SimResult) -> dict[str, float]:
    """A measured profile: the real median iteration time and the model's relative error.

    The measured iterations ran with nothing frozen, so the check uses the simulation without
    the plan's ratios.
    """
    measured = data.measured.iteration_time if data.measured is not None else None
    if not measured:
        return {}
    return {
        "measured_iteration_time": measured,
        "prediction_error": (unfrozen.makespan - measured) / measured,
    }


def _title(what: str, res: SimResult) -> str:
    return (
        f"{what}: {res.dag.spec.describe()}, comm model {res.dag.comm_model}, "
        f"makespan {res.makespan:.4g} s, bubble {res.bubble_fraction:.1%}"
    )


def _table(result: SimResult) -> Table:
    dag = result.dag
    table = Table(title=f"{dag.spec.describe()}, {dag.comm_model} comm model", title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("busy (s)", justify="right")
    table.add_column("comm (s)", justify="right")
    table.add_column("idle (s)", justify="right")
    table.add_column("idle %", justify="right")
    for s in result.per_rank:
        share = s.idle / result.span if result.span else 0.0
        table.add_row(
            str(s.rank), f"{s.busy:.6g}", f"{s.comm:.6g}", f"{s.idle:.6g}", f"{share:.1%}"
        )
    return table


def _summary(result: SimResult, baseline: SimResult | None) -> list[str]:
    lines = [f"makespan {result.makespan:.6g} s, bubble fraction {result.bubble_fraction:.4f}"]
    if result.dag.iteration_overhead:
        lines[0] += f" (includes {result.dag.iteration_overhead:.4g} s of gradient finalization)"
    if baseline is not None:
        lines.append(
            f"baseline (nothing frozen) {baseline.makespan:.6g} s, speedup "
            f"{baseline.makespan / result.makespan:.4f}x"
        )
    names = result.critical_path_names
    shown = " -> ".join(names[:4]) + (f" -> ... ({len(names)} actions)" if len(names) > 4 else "")
    lines.append(f"critical path: {shown}")
    return lines
