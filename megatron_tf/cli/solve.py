"""`timelyfreeze solve`: the freeze-ratio LP on a profile; writes plan.json or a Pareto sweep."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from megatron_tf.cli._app import app, console, user_errors
from megatron_tf.cli._options import option_groups
from megatron_tf.cli._schedule_opts import SCHEDULE_HELP
from megatron_tf.errors import ConfigError
from megatron_tf.freeze.config import DEFAULT_MAX_FREEZE_RATIO, DEFAULT_MIN_SAVING
from megatron_tf.outputs import check_output_file
from megatron_tf.solve import AUTO_GLOP_MAX_VARIABLES, DEFAULT_PDLP_EPS
from megatron_tf.solve.progress import solve_status

if TYPE_CHECKING:
    from megatron_tf.solve.budget import BudgetChoice
    from megatron_tf.solve.lp import SolverConfig
    from megatron_tf.solve.planner import SolveOutcome
    from megatron_tf.solve.request import SolveAnswer, SolveRequest
    from megatron_tf.solve.sweep import SweepPoint


AutoMinSavingOption = Annotated[
    float,
    typer.Option(
        help="For auto: freeze only when the best cap predicts at least this share less "
        "time than the baseline (0 trusts any predicted saving)."
    ),
]
"""`--auto-min-saving`, shared by `solve` and `compare`."""


@dataclass(kw_only=True, slots=True)
class SolverFlags:
    """The LP's flags (and the auto budget's inputs), as parsed."""

    max_freeze_ratio: Annotated[
        str,
        typer.Option(
            help="Cap on each (rank, chunk)'s mean freeze ratio, in [0, 1], or `auto`: the cap "
            "with the least predicted time to a target loss (needs --noise-scale, --batch-samples)."
        ),
    ] = str(DEFAULT_MAX_FREEZE_RATIO)
    noise_scale: Annotated[
        float | None,
        typer.Option(help="For auto: gradient noise scale B_noise in samples (pretrain's probe)."),
    ] = None
    batch_samples: Annotated[
        int | None,
        typer.Option(help="For auto: samples per iteration (micro batch x microbatches x dp)."),
    ] = None
    auto_min_saving: AutoMinSavingOption = DEFAULT_MIN_SAVING
    threads: Annotated[
        int | None,
        typer.Option(
            help="For auto and --sweep: caps solved at once, each on its own core (default: one "
            "per core this process may use). Auto's plans do not depend on it; 1 lets --sweep "
            "warm-start its caps (less CPU, more wall time).",
            show_default=False,
        ),
    ] = None
    tolerance: Annotated[
        float,
        typer.Option(help="Relative slack on the best iteration time while minimising freezing."),
    ] = 1e-6
    min_trained_microbatches: Annotated[
        int,
        typer.Option(help="Each (rank, chunk) keeps sum of (1 - ratio) at least this."),
    ] = 1
    comm_model: Annotated[
        str, typer.Option(help="DAG comm model: megatron (P2P rendezvous) or dataflow.")
    ] = "megatron"
    weighting: Annotated[
        str,
        typer.Option(help="Pass-2 weights: uniform, or params (needs stages[].units[].params)."),
    ] = "uniform"
    solver: Annotated[
        str,
        typer.Option(
            help="glop (exact simplex), pdlp (first-order, to --pdlp-eps), or auto: GLOP up to "
            f"{AUTO_GLOP_MAX_VARIABLES:,} LP variables, PDLP above."
        ),
    ] = "auto"
    pdlp_eps: Annotated[
        float, typer.Option(help="Relative accuracy of PDLP when it is the solver.")
    ] = DEFAULT_PDLP_EPS

    def request(self, sweep: list[float] | None, plan: bool) -> SolveRequest:
        """What to solve (ConfigError names a bad flag)."""
        from megatron_tf.solve.lp import SolverConfig
        from megatron_tf.solve.request import SolveRequest

        auto = self.max_freeze_ratio.strip() == "auto"
        config = SolverConfig(
            max_freeze_ratio=0.0 if auto else _ratio(self.max_freeze_ratio),
            tolerance=self.tolerance,
            min_trained_microbatches=self.min_trained_microbatches,
            comm_model=self.comm_model,
            weighting=self.weighting,
            solver=self.solver,
            pdlp_eps=self.pdlp_eps,
        )
        return SolveRequest(
            config=config,
            sweep=None if sweep is None else tuple(sweep),
            plan=plan,
            auto_budget=auto,
            noise_scale=self.noise_scale,
            batch_samples=self.batch_samples,
            min_saving=self.auto_min_saving,
            threads=self.threads,
        )


@app.command("solve")
@user_errors
@option_groups
def solve(
    profile: Annotated[
        Path, typer.Argument(help="profile.json from `timelyfreeze profile`.", show_default=False)
    ],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Write the plan here (atomically).", metavar="PLAN"),
    ] = None,
    *,
    lp: SolverFlags,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    sweep: Annotated[
        str | None,
        typer.Option(help="Comma-separated max ratios for a Pareto sweep, e.g. 0,0.1,0.2,0.4."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="With --sweep: save the Pareto plot (.png or .svg).")
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            "--schedule",
            help=f"Plan the profile's costs for this schedule kind (same pp, vpp, microbatches) "
            f"instead of the one it was measured on ({SCHEDULE_HELP}).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Solve for the freeze ratios that shorten the iteration most, within a freezing budget.

    Example: [bold]timelyfreeze solve profile.json -o plan.json --max-freeze-ratio 0.1[/]

    With [bold]--sweep 0,0.05,0.1,0.2,0.4[/] it solves once per budget and prints the predicted
    iteration speed gain (speedup - 1) against mean freeze ratio, next to uniform freezing at the
    same ratio.
    """
    from megatron_tf.formats.plan import save_plan
    from megatron_tf.formats.profile import load_profile
    from megatron_tf.solve.request import solve_request
    from megatron_tf.solve.sweep import parse_ratio_list, plot_sweep

    ratios = parse_ratio_list(sweep) if sweep is not None else None
    if plot is not None and ratios is None:
        raise ConfigError("--plot draws the Pareto sweep: add --sweep, e.g. --sweep 0,0.1,0.2")
    if plot is not None:
        check_output_file(plot, "--plot", suffixes=(".png", ".svg"))
    if output is not None:
        check_output_file(output, "-o/--output")
    # A sweep alone writes no plan; otherwise a plan is solved (and shown) even without -o.
    request = lp.request(ratios, plan=ratios is None or output is not None)
    data = load_profile(profile)
    if schedule is not None:
        data = data.with_schedule_kind(schedule)
    # Long solves report their steps on stderr (solve_status); no second live display here.
    with solve_status() as progress:
        answer = solve_request(data, request, progress=progress)
    if answer.points is not None and plot is not None:
        plot_sweep(answer.points, answer.dag, plot)
    if answer.outcome is not None and output is not None:
        save_plan(answer.outcome.plan, output)
    _render(answer, request.config, output=output, plot=plot, as_json=as_json)


def _render(
    answer: SolveAnswer,
    config: SolverConfig,
    *,
    output: Path | None,
    plot: Path | None,
    as_json: bool,
) -> None:
    """Print the sweep's table, the auto budget's reason and the plan's table (or their JSON)."""
    if answer.points is not None:
        if as_json:
            typer.echo(json.dumps({"sweep": [_point_json(p) for p in answer.points]}))
        else:
            console.print(_sweep_table(answer, config.comm_model))
            if plot is not None:
                console.print(f"Pareto plot: {plot}")
    if answer.budget is not None:
        _render_budget(answer.budget, as_json)
        if answer.outcome is None:
            return
    if answer.outcome is None:
        return
    if as_json and answer.points is None and answer.budget is None:
        typer.echo(json.dumps(answer.outcome.summary()))
    elif not as_json:
        console.print(_plan_table(answer.outcome, output, answer.synthetic))


def _ratio(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(
            f"--max-freeze-ratio must be a number in [0, 1] or `auto`, got {text!r}"
        ) from None


def _render_budget(choice: BudgetChoice, as_json: bool) -> None:
    """`--max-freeze-ratio auto`: the cap from the loss-cost model (solve/budget.py) and why."""
    if as_json:
        candidates = [
            {
                "max_freeze_ratio": p.max_freeze_ratio,
                "speedup": p.speedup,
                "iteration_factor": p.iteration_factor,
                "time_factor": p.time_factor,
            }
            for p in choice.points
        ]
        typer.echo(
            json.dumps(
                {
                    "max_freeze_ratio": choice.max_freeze_ratio,
                    "reason": choice.reason,
                    "candidates": candidates,
                }
            )
        )
    else:
        console.print(f"auto budget: {choice.reason}", highlight=False, soft_wrap=True)
    if choice.outcome is None:
        console.print("no plan written: train without freezing", highlight=False)


def _point_json(p: SweepPoint) -> dict[str, float | None]:
    return {
        "max_freeze_ratio": p.max_freeze_ratio,
        "mean_freeze_ratio": p.mean_freeze_ratio,
        "baseline_makespan": p.baseline_makespan,
        "makespan": p.makespan,
        "speed_gain": p.speed_gain,
        "uniform_makespan": p.uniform_makespan,
        "uniform_speed_gain": p.uniform_speed_gain,
        "leverage": p.leverage,
        "solve_seconds": p.solve_seconds,
    }


def _sweep_table(answer: SolveAnswer, comm_model: str) -> Table:
    points = answer.points or []
    title = f"Pareto sweep: {answer.dag.spec.describe()}, {comm_model} comm model"
    table = Table(title=title)
    makespan = "makespan (unitless)" if answer.synthetic else "makespan (s)"
    columns = ("max ratio", "mean ratio", makespan, "iteration speed", "uniform", "leverage")
    for name in columns:
        table.add_column(name, justify="right")
    for p in points:
        leverage = "-" if p.leverage is None else f"{p.leverage:.2f}x"
        table.add_row(
            f"{p.max_freeze_ratio:g}",
            f"{p.mean_freeze_ratio:.4f}",
            f"{p.makespan:.6g}",
            f"{100 * p.speed_gain:+.2f}%",
            f"{100 * p.uniform_speed_gain:+.2f}%",
            leverage,
        )
    return table


def _plan_table(outcome: SolveOutcome, output: Path | None, synthetic: bool) -> Table:
    plan, r = outcome.plan, outcome.result
    table = Table(title=f"Freeze plan: {plan.schedule_spec().describe()}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("comm model", plan.comm_model)
    table.add_row("max freeze ratio", f"{plan.max_freeze_ratio:g}")
    unit = " (unitless: synthetic costs)" if synthetic else " s"
    table.add_row("baseline iteration", f"{r.baseline_makespan:.6g}{unit}")
    table.add_row("planned iteration", f"{r.makespan:.6g}{unit}")
    table.add_row("predicted speedup", f"{r.speedup:.4f}x (iteration speed {r.speedup - 1:+.2%})")
    table.add_row("mean freeze ratio", f"{r.mean_freeze_ratio:.4f}")
    per_rank = " ".join(f"{x:.3f}" for x in r.per_rank_mean_freeze_ratio)
    table.add_row("per rank", per_rank)
    if r.solver == "GLOP":
        table.add_row("solver", f"GLOP {r.status} in {r.seconds:.2f} s")
    else:  # status "OPTIMAL (PDLP, eps E)": optimal only to PDLP's accuracy
        first_order = r.status.removeprefix("OPTIMAL ").strip("()")
        gap = r.extras.get("certified_gap", math.inf)
        table.add_row(
            "solver",
            f"{first_order} in {r.seconds:.2f} s, at most {gap:.1e} above the optimum (dual bound)",
        )
    if r.first_stage_pinned:
        pinned = ", ".join(str(m) for m in r.first_stage_pinned)
        table.add_row("first stage", f"ratio fixed at 0 on microbatch {pinned} (embedding trains)")
    table.add_row("plan", str(output) if output is not None else "not saved (add -o plan.json)")
    return table
