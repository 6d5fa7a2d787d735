"""The demo's report: report.md with a summary table and three PNGs next to it.

- `timeline.png`: the simulated iteration before (nothing frozen) and after (the plan), drawn by
  the schedule's timeline module from the measured profile;
- `loss.png`: both loss curves against iterations and against wall time, with the corpus's
  entropy floor;
- `iteration_time.png`: measured time of every iteration of both runs, with the predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from megatron_tf.demo import DemoConfig, DemoResult


def write_report(result: DemoResult, cfg: DemoConfig) -> None:
    """report.md and its PNGs at `result.report` (the demo's step 6)."""
    out = result.report.parent
    _timeline(result.profile, result.plan, out / "timeline.png")
    _loss_plot(result, out / "loss.png")
    _time_plot(result, out / "iteration_time.png")
    result.report.write_text(render_markdown(result, cfg))


def summary_rows(result: DemoResult) -> list[tuple[str, str, str]]:
    """(quantity, baseline, TimelyFreeze) rows shared by the markdown and the terminal table."""
    b, f = result.baseline, result.frozen
    rows = [
        (
            "predicted iteration time (ms)",
            f"{result.predicted_baseline * 1e3:.1f}",
            f"{result.predicted_makespan * 1e3:.1f}",
        ),
        (
            "measured iteration time, median over the freezing phase (ms)",
            f"{b.steady_iteration_time * 1e3:.1f}",
            f"{f.steady_iteration_time * 1e3:.1f}",
        ),
        (
            "measured forward-backward time (the predicted part), median (ms)",
            f"{b.steady_schedule_time * 1e3:.1f}",
            f"{f.steady_schedule_time * 1e3:.1f}",
        ),
        (
            "side by side in one job: iteration / forward-backward median (ms)",
            f"{result.side_by_side['baseline'][0] * 1e3:.1f} / "
            f"{result.side_by_side['baseline'][1] * 1e3:.1f}",
            f"{result.side_by_side['plan'][0] * 1e3:.1f} / "
            f"{result.side_by_side['plan'][1] * 1e3:.1f}",
        ),
        (
            "speedup predicted / measured side by side / measured between runs",
            "1.000",
            f"{result.predicted_speedup:.3f} / {result.measured_speedup:.3f} / "
            f"{result.runs_speedup:.3f}",
        ),
        (
            "final loss (mean of last 10% of iterations)",
            f"{b.final_loss:.4f}",
            f"{f.final_loss:.4f}",
        ),
        ("total wall time of training (s)", f"{b.elapsed[-1]:.1f}", f"{f.elapsed[-1]:.1f}"),
    ]
    e = result.equal_time
    if e is not None:
        reach = result.equal_time_reach()
        rows += [
            (
                "in the baseline's wall time: iterations / final loss",
                f"{len(b.losses)} / {b.final_loss:.4f}",
                f"{len(e.losses)} / {e.final_loss:.4f}",
            ),
            (
                "reaches the baseline's final loss after (share of the baseline's wall time)",
                "1.000",
                "not reached" if reach is None else f"{reach:.3f}",
            ),
        ]
    if result.loss_floor is not None:
        rows.append(("entropy floor of the corpus (nats/token)", f"{result.loss_floor:.4f}", ""))
    return rows


def render_markdown(result: DemoResult, cfg: DemoConfig) -> str:
    m, p = cfg.model, cfg.parallel
    diff = (result.frozen.final_loss / result.baseline.final_loss - 1) * 100
    lines = [
        "# TimelyFreeze demo",
        "",
        f"GPT with {m.num_layers} layers, hidden {m.hidden_size}, sequence {m.seq_length}, "
        f"micro batch {m.micro_batch_size}, vocabulary {m.vocab_size}; "
        f"{p.schedule_spec().describe()}; {cfg.iters} iterations per run from seed {m.seed}; "
        f"max freeze ratio {cfg.max_freeze_ratio}; freezing starts after "
        f"{cfg.freeze_warmup_iters} iterations.",
        "",
        "| quantity | baseline | TimelyFreeze |",
        "|---|---|---|",
        *[f"| {q} | {b} | {f} |" for q, b, f in summary_rows(result)],
        "",
        f"Final loss difference: {diff:+.2f}% of the baseline.",
        "",
        "![timeline before and after](timeline.png)",
        "",
        "![loss curves](loss.png)",
        "",
        "![iteration times](iteration_time.png)",
        "",
        "The side-by-side timing alternates stock and planned iterations inside one job, so "
        "the machine's load affects both alike; the two training runs ran one after the other "
        "and their iteration times also carry any change of load between them.",
        "",
        "The last run trains TimelyFreeze for as many iterations as the baseline's wall time "
        "buys at the side-by-side speedup (its LR schedule spans them); its wall time is "
        "counted as iterations over that speedup, so the comparison does not depend on the "
        "load during the separate runs. The baseline's final loss is the mean of its last 10% "
        "of iterations, and the equal-time run reaches it when the mean of its last that many "
        "losses first does.",
        "",
        "Files: `profile.json` (measured costs), `plan.json` (the LP's ratios), "
        "`baseline/metrics.jsonl`, `timelyfreeze/metrics.jsonl` and "
        "`timelyfreeze_equal_time/metrics.jsonl` (one record per iteration).",
        "",
    ]
    return "\n".join(lines)


def _timeline(profile_path: Path, plan_path: Path, target: Path) -> None:
    from megatron_tf.formats.plan import load_plan
    from megatron_tf.formats.profile import load_profile
    from megatron_tf.schedule.simulate import simulate_profile
    from megatron_tf.schedule.timeline import draw_timelines, timeline_from_sim

    profile = load_profile(profile_path)
    plan = load_plan(plan_path)
    before = simulate_profile(profile, "megatron")
    after = simulate_profile(profile, "megatron", ratios=plan.ratios)
    draw_timelines(
        [
            timeline_from_sim(before, f"before: nothing frozen, {before.makespan * 1e3:.1f} ms"),
            timeline_from_sim(
                after,
                f"after: TimelyFreeze plan (max ratio {plan.max_freeze_ratio}), "
                f"{after.makespan * 1e3:.1f} ms",
            ),
        ],
        target,
    )


def _loss_plot(result: DemoResult, target: Path) -> None:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    for run, color in ((result.baseline, "#4C78A8"), (result.frozen, "#E45756")):
        a.plot(range(1, len(run.losses) + 1), run.losses, color=color, lw=1, label=run.name)
        b.plot(run.elapsed, run.losses, color=color, lw=1, label=run.name)
    if result.equal_time is not None:
        a.plot(
            range(1, len(result.equal_time.losses) + 1),
            result.equal_time.losses,
            color="#54A24B",
            lw=1,
            alpha=0.8,
            label=result.equal_time.name,
        )
    for ax, xlabel in ((a, "iteration"), (b, "wall time (s)")):
        if result.loss_floor is not None:
            ax.axhline(result.loss_floor, color="gray", ls="--", lw=1, label="entropy floor")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (nats/token)")
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def _time_plot(result: DemoResult, target: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for run, color in ((result.baseline, "#4C78A8"), (result.frozen, "#E45756")):
        ms = [s * 1e3 for s in run.seconds]
        ax.plot(range(1, len(ms) + 1), ms, color=color, lw=0.8, alpha=0.8, label=f"{run.name}")
    ax.axhline(
        result.predicted_baseline * 1e3, color="#4C78A8", ls="--", label="predicted baseline"
    )
    ax.axhline(result.predicted_makespan * 1e3, color="#E45756", ls="--", label="predicted plan")
    top = max(result.baseline.steady_iteration_time, result.frozen.steady_iteration_time) * 2e3
    ax.set_ylim(0, top)
    ax.set_xlabel("iteration")
    ax.set_ylabel("iteration time (ms)")
    ax.legend(ncol=2)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def _pyplot():  # noqa: ANN202  (matplotlib's pyplot module)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
