"""Pareto sweep: predicted iteration speed against mean freeze ratio, for several budgets.

The one measure of speed everywhere (tables, plots, JSON, docs) is the *iteration speed gain*,
speedup - 1 = baseline / makespan - 1, shown as "+13.5%": iterations per second go up by that
much. It is not the cut in iteration time (1 - makespan / baseline, 11.9% for +13.5%).

Each point solves the LP at one `max_freeze_ratio`. Next to it, the uniform baseline: every
backward frozen at the plan's mean ratio, evaluated on the same DAG. The gap between the two
is what critical-path placement buys; it is widest at small budgets, where users live.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_tf.errors import ConfigError
from megatron_tf.schedule.dag import Dag
from megatron_tf.solve.critical_path import evaluate
from megatron_tf.solve.lp import (
    LpResult,
    Progress,
    SolverConfig,
    solve_caps,
    solve_each_cap,
    usable_cores,
)


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One budget of the sweep (seconds for times, ratios in [0, 1])."""

    max_freeze_ratio: float
    mean_freeze_ratio: float
    """Mean over all backward actions of the LP plan."""
    baseline_makespan: float
    makespan: float
    uniform_makespan: float
    """Every backward frozen at `mean_freeze_ratio`."""
    solve_seconds: float

    @property
    def speed_gain(self) -> float:
        """Predicted iteration speed gain of the plan: baseline / makespan - 1 (speedup - 1)."""
        return self.baseline_makespan / self.makespan - 1.0

    @property
    def uniform_speed_gain(self) -> float:
        """The same for uniform freezing at the plan's mean ratio."""
        return self.baseline_makespan / self.uniform_makespan - 1.0

    @property
    def leverage(self) -> float | None:
        """speed gain / uniform speed gain (None where uniform gains nothing)."""
        if self.uniform_speed_gain <= 1e-12:
            return None
        return self.speed_gain / self.uniform_speed_gain


def parse_ratio_list(text: str) -> list[float]:
    """`"0,0.05,0.1"` -> [0.0, 0.05, 0.1]; errors name `--sweep`."""
    values: list[float] = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(
                f"--sweep expects comma-separated ratios in [0, 1], found {part!r}"
            ) from None
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"--sweep ratios must lie in [0, 1], found {value}")
        values.append(value)
    if not values:
        raise ConfigError("--sweep needs at least one ratio")
    return sorted(set(values))


def uniform_ratios(dag: Dag, ratio: float) -> np.ndarray:
    """Node ratios with every backward action at `ratio` (the comparison baseline)."""
    ratios = np.zeros(len(dag.nodes))
    backward = dag.freezable_nodes()
    ratios[backward] = ratio
    return ratios


def uniform_makespan(dag: Dag, ratio: float) -> float:
    return evaluate(dag, uniform_ratios(dag, ratio)).makespan


def sweep(
    dag: Dag,
    max_ratios: Sequence[float],
    base: SolverConfig,
    *,
    stage_weights: dict[tuple[int, int], float] | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> list[SweepPoint]:
    """Solve the LP at each `max_freeze_ratio` in `max_ratios` (other options from `base`).

    On one thread the caps share one LP and warm-start each other (`solve_caps`: 0.71x the
    CPU of cold solves at pp 16); with more (`threads`, None: one per usable core) they are
    solved cold side by side (`solve_each_cap`: 0.52x the wall time on 2 cores there). Either
    way each cap's T* and least total freezing are the same. `progress` hears each step."""
    workers = min(len(set(max_ratios)), threads or usable_cores())
    if workers > 1:
        results = solve_each_cap(
            dag, base, max_ratios, stage_weights=stage_weights, threads=workers, progress=progress
        )
    else:
        results = solve_caps(dag, base, max_ratios, stage_weights=stage_weights, progress=progress)
    points = []
    for r_max in max_ratios:
        result: LpResult = results[float(r_max)]
        mean = result.mean_freeze_ratio
        points.append(
            SweepPoint(
                max_freeze_ratio=r_max,
                mean_freeze_ratio=mean,
                baseline_makespan=result.baseline_makespan,
                makespan=result.makespan,
                uniform_makespan=uniform_makespan(dag, mean),
                solve_seconds=result.seconds,
            )
        )
    return points


def plot_sweep(
    points: Sequence[SweepPoint], dag: Dag, path: str | os.PathLike[str], *, title: str = ""
) -> None:
    """Iteration speed gain (%) against mean freeze ratio: LP plans and uniform freezing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max([p.mean_freeze_ratio for p in points] + [0.05])
    grid = np.linspace(0.0, top, 41)
    baseline = points[0].baseline_makespan
    uniform = [100 * (baseline / uniform_makespan(dag, r) - 1.0) for r in grid]

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(grid, uniform, "--", color="0.45", label="uniform freezing (same mean ratio)")
    xs = [p.mean_freeze_ratio for p in points]
    ys = [100 * p.speed_gain for p in points]
    ax.plot(xs, ys, "o-", color="tab:blue", label="TimelyFreeze LP")
    for p, x, y in zip(points, xs, ys, strict=True):
        ax.annotate(
            f"max {p.max_freeze_ratio:g}",
            (x, y),
            textcoords="offset points",
            xytext=(4, -11),
            fontsize=7,
            color="tab:blue",
        )
    ax.set_xlabel("mean freeze ratio (all backward actions)")
    ax.set_ylabel("predicted iteration speed gain (%, speedup - 1)")
    ax.set_title(title or f"Pareto front: {dag.spec.describe()}, {dag.comm_model} comm model")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def save_figure_atomic(fig: object, path: str | os.PathLike[str]) -> None:
    """savefig to a sibling temp file, then rename, so a failed plot leaves no partial image."""
    target = Path(path)
    suffix = target.suffix or ".png"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format=suffix.lstrip("."))  # type: ignore[attr-defined]
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
