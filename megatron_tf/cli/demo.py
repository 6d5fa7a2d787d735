"""`timelyfreeze demo`: profile, solve, baseline and TimelyFreeze runs, report (CPU, minutes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from megatron_tf.cli._app import app, console, user_errors
from megatron_tf.freeze.config import DEFAULT_MAX_FREEZE_RATIO
from megatron_tf.outputs import check_cache_dir, check_output_dir


@app.command("demo")
@user_errors
def demo(
    out_dir: Annotated[Path, typer.Option(help="Report, plots and runs go here.")] = Path(
        "runs/demo"
    ),
    iters: Annotated[int, typer.Option(min=10, help="Training iterations per run.")] = 300,
    max_freeze_ratio: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="The LP's cap on each stage's mean ratio.")
    ] = DEFAULT_MAX_FREEZE_RATIO,
    cache_dir: Annotated[
        str | None, typer.Option(help="Corpus cache (default ~/.cache/timelyfreeze).")
    ] = None,
    deep: Annotated[
        bool,
        typer.Option(
            help="Add the deep-pipeline section: pp 4 time to the baseline's loss with the "
            "auto budget, in simulated time (about 5 more minutes at 300 iterations)."
        ),
    ] = True,
) -> None:
    """Show the whole TimelyFreeze story on this machine, CPU only, in a few minutes.

    Example: [bold]timelyfreeze demo[/]  (then open runs/demo/report.md)

    Profiles a small GPT on 2 pipeline ranks, solves for freeze ratios, trains a baseline and a
    TimelyFreeze run from the same seed, times both side by side, trains TimelyFreeze again for
    the baseline's wall time, and compares iteration time and loss. Then (--deep) the deep
    pipeline this machine cannot time: pp 4, baseline vs the auto budget, time to the
    baseline's validation loss in simulated time (losses exact, time the simulator's).
    """
    check_output_dir(out_dir, "--out-dir")
    check_cache_dir(cache_dir)
    quiet_imports()
    from megatron_tf.demo import DemoConfig, run_demo
    from megatron_tf.demo_report import summary_rows, write_report

    cfg = DemoConfig(
        out_dir=out_dir,
        iters=iters,
        max_freeze_ratio=max_freeze_ratio,
        freeze_warmup_iters=max(1, iters // 10),
        timing_steps=min(80, max(10, iters // 4)),
        cache_dir=cache_dir,
    )

    def say(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)

    result = run_demo(cfg, say)
    say("6/6 writing the report")
    write_report(result, cfg)
    deep_result = None
    if deep:  # demo_deep.py: pp 4 in simulated time, appended to the report
        from megatron_tf.demo_deep import deep_markdown, run_deep

        say(f"deep pipeline section: pp 4, {iters} iterations, SIMULATED time")
        deep_result = run_deep(out_dir / "deep_pp4", iters, cache_dir, say)
        with open(result.report, "a") as handle:
            handle.write("\n" + "\n".join(deep_markdown(deep_result, "deep_pp4")) + "\n")
    table = Table(title="TimelyFreeze demo", title_justify="left")
    table.add_column("quantity")
    table.add_column("baseline", justify="right")
    table.add_column("TimelyFreeze", justify="right")
    for row in summary_rows(result):
        table.add_row(*row)
    console.print(table)
    if deep_result is not None:
        from megatron_tf.demo_deep import deep_summary

        console.print(deep_summary(deep_result), highlight=False, soft_wrap=True)
    console.print(f"report: {result.report}", highlight=False, soft_wrap=True)


def quiet_imports() -> None:
    """megatron-core warns at import about missing TransformerEngine/Apex and torch about CUDA;
    on a CPU demo both are expected, so keep them out of the terminal (workers log to files)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
