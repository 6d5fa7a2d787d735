"""`timelyfreeze simulate`: predict one iteration of a schedule, optionally with a freeze plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from megatron_tf.cli._app import app, console, err_console, user_errors
from megatron_tf.cli._options import option_groups
from megatron_tf.cli._progress import busy
from megatron_tf.cli._schedule_opts import ScheduleFlags
from megatron_tf.errors import ConfigError
from megatron_tf.outputs import check_output_file

if TYPE_CHECKING:
    from megatron_tf.schedule.iteration import IterationSim
    from megatron_tf.schedule.simulate import SimResult


@app.command("simulate")
@user_errors
@option_groups
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
    *,
    what_if: ScheduleFlags,
) -> None:
    """Simulate one training iteration: makespan, bubbles, critical path, timelines.

    From a profile: [bold]timelyfreeze simulate --profile profile.json --plan plan.json
    --timeline t.png[/]

    What-if, no file: [bold]timelyfreeze simulate --schedule 1f1b --pp 8 --microbatches 16
    --costs 1,1,1 --json[/]
    """
    from megatron_tf.formats.profile import load_profile
    from megatron_tf.schedule.iteration import simulate_iteration

    if profile is not None and what_if.costs_given():
        raise ConfigError(
            "give either --profile FILE or the schedule flags (--pp, --costs, ...), not both "
            "(--schedule with --profile plans that profile's costs for another kind)"
        )
    if profile is None and not what_if.given():
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
        if what_if.schedule is not None:
            data = data.with_schedule_kind(what_if.schedule)
    else:
        data = what_if.synthetic()
    with busy(f"simulating {data.spec.describe()}", data.spec.actions):
        sim = simulate_iteration(data, plan, comm_model, compare_fingerprint=profile is not None)
    if sim.other_profile:
        err_console.print(
            f"[yellow]note:[/] {plan} was solved on another profile than {profile}",
            highlight=False,
        )
    sim.write_timelines(timeline, trace)
    if as_json:
        typer.echo(json.dumps(sim.to_dict()))
        return
    _render(sim, timeline, trace)


def _render(sim: IterationSim, timeline: Path | None, trace: Path | None) -> None:
    console.print(_table(sim.result))
    for line in _summary(sim.result, sim.baseline):
        console.print(escape(line), highlight=False)
    check = sim.prediction_check()
    if check:
        console.print(
            f"measured iteration {check['measured_iteration_time']:.6g} s, prediction error "
            f"{check['prediction_error']:+.2%} (unfrozen run)",
            highlight=False,
        )
    for path in (timeline, trace):
        if path is not None:
            console.print(f"wrote {path}")


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
