"""`timelyfreeze demo`: the whole story on a CPU-only machine, in a few minutes.

1. profile the demo GPT on pp 2 (1F1B) with the real profiler under torchrun;
2. solve the LP for `max_freeze_ratio`;
3. train a baseline and a TimelyFreeze run of the same length from the same seed on the
   embedded corpus (its entropy floor is the best loss any model can reach);
4. time baseline and plan side by side in one job (the load-robust speedup);
5. train TimelyFreeze once more for the iterations the baseline's wall time buys at that
   speedup: does it reach the baseline's final loss within the baseline's time?
6. return the numbers; `demo_report.write_report` turns them into `report.md` and PNGs
   (timeline before/after, loss curves, iteration times) in the output folder, and
   `demo_report.summary_rows` into the terminal's summary table.

Each worker job runs through the project's torchrun launcher with its output in a log file
under the output folder, so the terminal shows progress and the summary, not megatron's logs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from megatron_tf.formats.jsonio import read_json
from megatron_tf.formats.layout import ModelConfig, ParallelConfig
from megatron_tf.freeze.config import DEFAULT_MAX_FREEZE_RATIO

Say = Callable[[str], None]


def demo_model() -> ModelConfig:
    # Big enough that compute (not Python or gloo overhead) dominates an iteration on a CPU,
    # small enough that a few hundred iterations take a couple of minutes on two cores.
    return ModelConfig(
        num_layers=4,
        hidden_size=128,
        num_attention_heads=4,
        seq_length=64,
        vocab_size=256,
        micro_batch_size=2,
    )


@dataclass(kw_only=True, slots=True)
class DemoConfig:
    """What the demo runs; the defaults finish in about 2.5 minutes on two idle CPU cores."""

    out_dir: Path = Path("runs/demo")
    """Report, plots, plan, profile and the two runs' metrics go here."""
    iters: int = 300
    """Training iterations of each run."""
    max_freeze_ratio: float = DEFAULT_MAX_FREEZE_RATIO
    """The LP's cap on each stage's mean freeze ratio."""
    freeze_warmup_iters: int = 30
    """Iterations without freezing at the start of the TimelyFreeze run (the LR warm-up)."""
    profile_iters: int = 20
    """Measured iterations per profile phase."""
    timing_steps: int = 80
    """Iterations of each kind in the side-by-side timing job (baseline and plan alternating)."""
    cache_dir: str | None = None
    """Corpus cache (default ~/.cache/timelyfreeze)."""
    model: ModelConfig = field(default_factory=demo_model)
    parallel: ParallelConfig = field(default_factory=lambda: ParallelConfig(pp=2, microbatches=8))


@dataclass(kw_only=True, slots=True)
class RunSummary:
    """One training run as the report sees it."""

    name: str
    losses: list[float]
    seconds: list[float]
    """Wall time of each iteration."""
    schedule_seconds: list[float]
    """Wall time of each iteration's pipeline schedule (what the DAG model predicts)."""
    elapsed: list[float]
    """Cumulative wall time after each iteration."""
    freeze_from: int
    """First iteration (0-based) counted for the steady iteration time."""

    @property
    def steady_iteration_time(self) -> float:
        """Median iteration time over the freezing phase (same iterations for both runs)."""
        return statistics.median(self.seconds[self.freeze_from :])

    @property
    def steady_schedule_time(self) -> float:
        """Median forward-backward (schedule) time over the freezing phase."""
        return statistics.median(self.schedule_seconds[self.freeze_from :])

    @property
    def final_loss(self) -> float:
        """Mean loss of the last 10% of iterations."""
        tail = max(1, len(self.losses) // 10)
        return statistics.fmean(self.losses[-tail:])


@dataclass(kw_only=True, slots=True)
class DemoResult:
    predicted_baseline: float
    predicted_makespan: float
    baseline: RunSummary
    frozen: RunSummary
    loss_floor: float | None
    report: Path
    """Where `demo_report.write_report` writes report.md (its PNGs go next to it)."""
    profile: Path
    """The measured profile.json."""
    plan: Path
    """The solved plan.json."""
    side_by_side: dict[str, tuple[float, float]]
    """Median (iteration, forward-backward) seconds of `baseline` and `plan` iterations
    alternating in one job: the load-robust speed comparison."""
    equal_time: RunSummary | None = None
    """TimelyFreeze trained for the baseline's wall time: iterations x `measured_speedup`."""

    @property
    def predicted_speedup(self) -> float:
        return self.predicted_baseline / self.predicted_makespan

    @property
    def measured_speedup(self) -> float:
        return side_by_side_speedup(self.side_by_side)

    def equal_time_reach(self) -> float | None:
        """When the equal-time run's loss first reaches the baseline's final loss, as a share of
        the baseline's wall time (iterations over the side-by-side speedup); None if never."""
        if self.equal_time is None:
            return None
        window = max(1, len(self.baseline.losses) // 10)
        k = iterations_to_loss(self.equal_time.losses, self.baseline.final_loss, window)
        if k is None:
            return None
        return k / self.measured_speedup / len(self.baseline.losses)

    @property
    def runs_speedup(self) -> float:
        """From the two training runs' medians (sensitive to load changes between the runs)."""
        return self.baseline.steady_iteration_time / self.frozen.steady_iteration_time


def run_demo(cfg: DemoConfig, say: Say) -> DemoResult:
    """Profile, solve, train three times; the numbers for the report (`demo_report`, which
    renders them, is the caller's next step). Raises LaunchError if a worker job fails."""
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    say(f"1/6 profiling the demo GPT on {cfg.parallel.schedule_spec().describe()}")
    profile_path = profile_model(cfg, out)
    say("2/6 solving the freeze-ratio LP")
    plan_path, predicted = solve_plan(cfg, profile_path, out / "plan.json")
    say(
        f"    predicted iteration {predicted[0] * 1e3:.1f} -> {predicted[1] * 1e3:.1f} ms "
        f"(speedup {predicted[0] / predicted[1]:.3f})"
    )
    say(f"3/6 baseline run: {cfg.iters} iterations")
    job_base = train_run(cfg, out / "baseline", plan=None)
    say(f"3/6 TimelyFreeze run: {cfg.iters} iterations, plan {plan_path.name}")
    train_run(cfg, out / "timelyfreeze", plan=plan_path)
    say(f"4/6 timing baseline and plan side by side ({cfg.timing_steps} iterations each)")
    side = time_side_by_side(cfg, plan_path, out / "side_by_side")
    speedup = side_by_side_speedup(side)
    equal_iters = max(cfg.iters, round(cfg.iters * speedup))
    say(
        f"5/6 TimelyFreeze for the baseline's wall time: {equal_iters} iterations "
        f"(measured speedup {speedup:.3f})"
    )
    train_run(replace(cfg, iters=equal_iters), out / "timelyfreeze_equal_time", plan=plan_path)
    corpus = job_base.prepared.corpus
    result = DemoResult(
        predicted_baseline=predicted[0],
        predicted_makespan=predicted[1],
        baseline=run_summary("baseline", out / "baseline", cfg.freeze_warmup_iters),
        frozen=run_summary("timelyfreeze", out / "timelyfreeze", cfg.freeze_warmup_iters),
        loss_floor=None if corpus is None else corpus.loss_floor,
        report=out / "report.md",
        profile=profile_path,
        plan=plan_path,
        side_by_side=side,
        equal_time=run_summary(
            "timelyfreeze, baseline's wall time",
            out / "timelyfreeze_equal_time",
            cfg.freeze_warmup_iters,
        ),
    )
    return result


def profile_model(cfg: DemoConfig, out: Path) -> Path:
    """Measure the demo model's profile, as `timelyfreeze profile` does (`measure_profile`)."""
    from megatron_tf.profile.measure import measure_quietly

    return measure_quietly(cfg.model, cfg.parallel, cfg.profile_iters, out)


def solve_plan(cfg: DemoConfig, profile_path: Path, path: Path) -> tuple[Path, tuple[float, float]]:
    """Solve at `cfg.max_freeze_ratio` as `timelyfreeze solve` does (`solve_request`), write the
    plan to `path`; returns the predictions."""
    from megatron_tf.formats.plan import save_plan
    from megatron_tf.formats.profile import load_profile
    from megatron_tf.solve.lp import SolverConfig
    from megatron_tf.solve.request import SolveRequest, solve_request

    request = SolveRequest(config=SolverConfig(max_freeze_ratio=cfg.max_freeze_ratio))
    outcome = solve_request(load_profile(profile_path), request).outcome
    assert outcome is not None  # a fixed cap always gives a plan
    save_plan(outcome.plan, path)
    p = outcome.plan.predicted
    return path, (p.baseline_makespan, p.makespan)


def train_run(cfg: DemoConfig, run_dir: Path, *, plan: Path | None) -> Any:
    """Train one run as `timelyfreeze pretrain` does (`prepare_job`, `run_pretrain`)."""
    from megatron_tf.freeze.config import FreezeConfig
    from megatron_tf.launch.options import QUIET_WORKERS_ENV, LaunchOptions, job_log
    from megatron_tf.train.data import DataConfig
    from megatron_tf.train.job import prepare_job
    from megatron_tf.train.launch import run_pretrain
    from megatron_tf.train.train_config import FreezeOptions, TrainConfig

    if (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()  # a re-run replaces, never appends to, old metrics
    train = TrainConfig(
        iters=cfg.iters,
        lr_warmup_iters=cfg.freeze_warmup_iters,
        log_interval=max(1, cfg.iters // 10),
        out_dir=str(run_dir),
        tensorboard=False,
        freeze=FreezeOptions(
            plan=None if plan is None else str(plan),
            max_freeze_ratio=cfg.max_freeze_ratio,
            runtime=FreezeConfig(warmup_iters=cfg.freeze_warmup_iters, seed=cfg.model.seed),
        ),
    )
    job = prepare_job(cfg.model, cfg.parallel, DataConfig(cache_dir=cfg.cache_dir), train)
    with job_log(run_dir / "train.log", f"training {run_dir.name}") as log:
        run_pretrain(job, LaunchOptions(), env=QUIET_WORKERS_ENV, stdout=log, stderr=log)
    return job


def time_side_by_side(
    cfg: DemoConfig, plan: Path, out: Path, warmup: int = 6
) -> dict[str, tuple[float, float]]:
    """Alternate stock and planned iterations in one job (`train/alternate.py`); medians."""

    from megatron_tf.launch.options import QUIET_WORKERS_ENV, LaunchOptions, job_log, launch_job
    from megatron_tf.train.alternate import medians
    from megatron_tf.train.data import DataConfig
    from megatron_tf.train.job import prepare_job, write_job
    from megatron_tf.train.train_config import FreezeOptions, TrainConfig

    iters = warmup + 2 * cfg.timing_steps
    train = TrainConfig(
        iters=iters,
        lr_warmup_iters=1,
        log_interval=iters,
        out_dir=str(out),
        tensorboard=False,
        freeze=FreezeOptions(plan=str(plan)),
    )
    job = prepare_job(cfg.model, cfg.parallel, DataConfig(cache_dir=cfg.cache_dir), train)
    job_file = write_job(job, out / "job.json")
    args = [f"--plan=plan={plan}", "--steps", str(cfg.timing_steps)]
    args += ["--warmup", str(warmup), "--out", str(out / "timings.json")]
    with job_log(out / "timing.log", "side-by-side timing") as log:
        launch_job(
            LaunchOptions(),
            "megatron_tf.train.alternate",
            args,
            world_size=cfg.parallel.world_size,
            env=QUIET_WORKERS_ENV,
            job_file=job_file,
            stdout=log,
            stderr=log,
        )
    return medians(read_json(out / "timings.json", "timings file"))


def run_summary(name: str, run_dir: Path, freeze_from: int) -> RunSummary:
    from megatron_tf.train.metrics import read_metrics

    records = read_metrics(run_dir / "metrics.jsonl")
    return RunSummary(
        name=name,
        losses=[r["loss"] for r in records],
        seconds=[r["seconds"] for r in records],
        schedule_seconds=[r["schedule_seconds"] for r in records],
        elapsed=[r["elapsed"] for r in records],
        freeze_from=freeze_from,
    )


def side_by_side_speedup(side: dict[str, tuple[float, float]]) -> float:
    """Side by side in one job: baseline median / plan median iteration time."""
    return side["baseline"][0] / side["plan"][0]


def iterations_to_loss(losses: list[float], target: float, window: int) -> int | None:
    """The first iteration count after which the mean of the last `window` losses is at or
    below `target` (the "final loss" smoothing), or None if it never is."""
    for k in range(window, len(losses) + 1):
        if statistics.fmean(losses[k - window : k]) <= target:
            return k
    return None
