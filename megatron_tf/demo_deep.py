"""The demo's deep-pipeline section: time to the baseline's loss on pp 4, in simulated time.

Two CPU cores cannot time a 4-rank pipeline (ranks share cores), so this section is the
`timelyfreeze compare` measurement at the demo's size: the 8-layer demo GPT on 1F1B pp 4 with
8 microbatches, one seed, a baseline and a TimelyFreeze run with the auto budget (the cap from
the gradient noise scale probed at the end of the warm-up), validation loss on the held-out
set, each iteration charged the simulator's predicted time for the plan in force (synthetic
costs 1:1:1). Losses are exact (real megatron-core pipelines under torchrun); the time is not
measured, and every line this section prints says so. At the demo's default length (300
iterations) it adds about 5 minutes on two idle cores.

Kept apart from `demo.py` (which `compare` builds on) so the demo's pp 2 story and this section
change independently; `cli/demo.py` runs it after the pp 2 report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from megatron_tf.compare import CompareConfig, CompareResult, run_compare
from megatron_tf.formats.layout import ParallelConfig

DEEP_SEED = 1
"""Seed of weights and data order: the bench's seed 1 (docs/results.md), so the demo's numbers
are that table's first row at 300 iterations."""


def deep_config(out_dir: Path, iters: int, cache_dir: str | None) -> CompareConfig:
    """pp 4, 8 microbatches, one seed, the auto budget, warm-up a tenth of the run."""
    return CompareConfig(
        out_dir=out_dir,
        parallel=ParallelConfig(pp=4, microbatches=8),
        iters=iters,
        warmup_iters=max(1, iters // 10),
        seeds=(DEEP_SEED,),
        budgets=("auto",),
        time="simulated",
        eval_interval=max(1, min(10, iters // 10)),
        cache_dir=cache_dir,
    )


def run_deep(
    out_dir: Path, iters: int, cache_dir: str | None, say: Callable[[str], None]
) -> CompareResult:
    """Train the section's baseline and auto-budget run and write its report under `out_dir`."""
    return run_compare(deep_config(out_dir, iters, cache_dir), say)


def deep_summary(result: CompareResult) -> str:
    """One line for the terminal: the auto budget's time to the baseline's final val loss."""
    run = result.runs[0]
    frac = run.comparison.reach_fraction
    reach = (
        "not reached within the baseline's simulated time"
        if frac is None
        else f"reached at {frac:.3f}x the baseline's simulated time"
    )
    return (
        f"deep pipeline (pp 4, SIMULATED time): auto budget cap {run.max_freeze_ratio:g} "
        f"({run.predicted_speedup:.3f}x predicted iteration speed); the baseline's final "
        f"validation loss {run.comparison.target:.4f} is {reach}"
    )


def deep_markdown(result: CompareResult, folder: str) -> list[str]:
    """The report's section (its table and plot live in `folder`, relative to report.md)."""
    from megatron_tf.compare import format_table

    run = result.runs[0]
    return [
        "## Deep pipeline: time to the baseline's loss (simulated time)",
        "",
        "Two CPU cores cannot time a 4-rank pipeline, so this section charges each iteration "
        "the simulator's predicted time for the plan in force (synthetic costs 1:1:1); losses "
        "are exact. 8-layer demo GPT, 1F1B pp 4, 8 microbatches, one seed, validation loss on "
        "the held-out set. Over 3 seeds and the model's bound: docs/results.md.",
        "",
        *format_table(result),
        "",
        f"- budget: {run.reason}",
        "",
        f"![validation loss against simulated time]({folder}/loss_vs_time.png)",
        "",
    ]
