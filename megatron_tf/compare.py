"""`timelyfreeze compare`: time to the baseline's validation loss, baseline vs TimelyFreeze.

Per seed (weights and data order; the corpus, i.e. the task, is fixed by `corpus_seed`):

1. a baseline of `iters` iterations, validation loss on the held-out set every `eval_interval`
   iterations, and the gradient noise probe at the end of the warm-up (noise_scale.json);
2. per budget (a cap, or `auto`: `solve/budget.py` picks the cap from the baseline's measured
   noise scale; the warm-up of a TimelyFreeze run is the baseline's, so this is exactly what the
   run itself would measure), the plan for the layout's profile;
3. a TimelyFreeze run for the baseline's time: the iterations the baseline's time buys at the
   plan's speed, with its own LR schedule over them (equal time), and optionally one of `iters`
   iterations (equal iterations).

Time is either measured (each run's wall time; only meaningful where the machine can run the
layout without ranks sharing cores) or simulated: each iteration is charged the simulator's
predicted iteration time for the plan in force (the baseline's during the warm-up), from a
synthetic profile (`--costs F,B,W`) or a profile file. Losses are exact either way: real
megatron-core pipelines under torchrun. Every table and plot says which time it shows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from megatron_tf.demo import demo_model
from megatron_tf.errors import ConfigError, FormatError
from megatron_tf.formats.job import JobEnvelope
from megatron_tf.formats.jsonio import read_json
from megatron_tf.formats.layout import ModelConfig, ParallelConfig
from megatron_tf.freeze.config import DEFAULT_MIN_SAVING
from megatron_tf.timetoloss import Comparison, Curve, Spread, compare, curve_from_records
from megatron_tf.train.data import DataConfig

Say = Callable[[str], None]
TIME_MODES = ("simulated", "measured")


def compare_model() -> ModelConfig:
    """The demo's GPT family with 8 layers (divisible by pp 2, 4, 8 and by pp 4 x vpp 2)."""
    return replace(demo_model(), num_layers=8)


@dataclass(kw_only=True, slots=True)
class CompareConfig:
    """What one comparison trains (every run shares model, data, corpus and LR schedule)."""

    out_dir: Path = Path("runs/compare")
    model: ModelConfig = field(default_factory=compare_model)
    parallel: ParallelConfig = field(default_factory=lambda: ParallelConfig(pp=4, microbatches=8))
    iters: int = 300
    """Baseline iterations."""
    warmup_iters: int = 30
    """LR warm-up and freeze warm-up (the noise probe runs at its end)."""
    seeds: tuple[int, ...] = (1, 2, 3)
    """Seeds of weights and data order (one baseline and one run per budget each)."""
    corpus_seed: int = 1234
    budgets: tuple[str, ...] = ("auto",)
    """Caps in [0, 1], `auto`, or `auto+reprice` (auto, re-priced every `reprice_every`)."""
    reprice_every: int = 30
    """Iterations between re-pricings of an `auto+reprice` run (its own noise probes)."""
    time: str = "simulated"
    costs: str = "1,1,1"
    """Synthetic F,B,W per rank for simulated time (ignored with `profile`)."""
    profile: Path | None = None
    """A profile of this layout to plan and charge time with, instead of synthetic costs."""
    eval_interval: int = 10
    eval_samples: int = 128
    noise_probe_rounds: int = 8
    noise_from: str = "warmup"
    """Which of the baseline's noise-scale probes prices freezing for `auto`: `warmup` (what a
    live run measures before its plan) or `final` (the last iteration's: the noise scale where
    the target loss is reached; needs a pilot run)."""
    auto_min_saving: float = DEFAULT_MIN_SAVING
    """The auto budget's least predicted time saving (`--auto-min-saving`)."""
    equal_iterations: bool = False
    """Also train each budget for `iters` iterations (loss at equal iterations)."""
    cache_dir: str | None = None
    data: DataConfig | None = None
    """A user's dataset with a held-out set (`--data-path` with a validation `--split`, or
    `--train-data-path` with `--valid-data-path`); None: the embedded corpus."""

    def __post_init__(self) -> None:
        if self.time not in TIME_MODES:
            raise ConfigError(f"--time must be one of {', '.join(TIME_MODES)}, got {self.time!r}")
        if not self.seeds:
            raise ConfigError("--seeds needs at least one seed")
        if not 1 <= self.warmup_iters < self.iters:
            raise ConfigError(
                f"--warmup-iters must lie in [1, --iters {self.iters}), got {self.warmup_iters}"
            )
        if self.eval_interval < 1:
            raise ConfigError(f"--eval-interval must be >= 1, got {self.eval_interval}")
        if self.reprice_every < 1:
            raise ConfigError(f"--reprice-every must be >= 1, got {self.reprice_every}")
        if self.noise_from not in ("warmup", "final"):
            raise ConfigError(f"--noise-from must be warmup or final, got {self.noise_from!r}")
        if not 0.0 <= self.auto_min_saving < 1.0:  # also rejects NaN
            raise ConfigError(f"--auto-min-saving must lie in [0, 1), got {self.auto_min_saving}")
        for b in self.budgets:
            parse_budget(b)
        self.parallel.check_model(self.model)
        if self.data is not None and not self.data.has_heldout:
            raise ConfigError(
                "compare measures time to the baseline's validation loss: give --data-path a "
                "validation share (--split 98,2,0) or use --train-data-path with "
                "--valid-data-path"
            )

    def data_config(self, seed: int | None = None) -> DataConfig:
        """What every run reads (the data order seeded by `seed`)."""
        if self.data is None:
            base = DataConfig(cache_dir=self.cache_dir, corpus_seed=self.corpus_seed)
        else:
            base = self.data
        return replace(base, data_seed=seed)


REPRICE = "auto+reprice"


def parse_budget(text: str) -> float | None:
    """`auto` or `auto+reprice` -> None; a cap in [0, 1] -> float; else an error naming
    `--budgets`."""
    if text.strip() in ("auto", REPRICE):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(
            f"--budgets expects caps in [0, 1], `auto` or `{REPRICE}`, found {text!r}"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"--budgets caps must lie in [0, 1], found {value}")
    return value


@dataclass(kw_only=True, slots=True)
class RunResult:
    """One TimelyFreeze run against its seed's baseline."""

    seed: int
    budget: str
    max_freeze_ratio: float
    predicted_speedup: float
    iters: int
    comparison: Comparison
    reason: str = ""
    noise_scale: float | None = None
    loss_equal_iterations: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reach_fraction"] = self.comparison.reach_fraction
        data["loss_gap_at_equal_time"] = self.comparison.loss_gap_at_equal_time
        return data


@dataclass(kw_only=True, slots=True)
class CompareResult:
    config: CompareConfig
    time_label: str
    runs: list[RunResult]
    curves: dict[str, Curve]
    """`seed<s>/baseline`, `seed<s>/<budget>`: the validation curves."""

    def by_budget(self) -> dict[str, list[RunResult]]:
        out: dict[str, list[RunResult]] = {}
        for r in self.runs:
            out.setdefault(r.budget, []).append(r)
        return out

    def summary(self) -> dict[str, Any]:
        rows = {}
        for budget, runs in self.by_budget().items():
            rows[budget] = {
                "reach_fraction": asdict(Spread.of([r.comparison.reach_fraction for r in runs])),
                "loss_gap_at_equal_time": asdict(
                    Spread.of([r.comparison.loss_gap_at_equal_time for r in runs])
                ),
                "max_freeze_ratio": [r.max_freeze_ratio for r in runs],
                "predicted_speedup": [r.predicted_speedup for r in runs],
            }
        return {
            "time": self.time_label,
            "data": self.config.data_config().describe(),
            "layout": self.config.parallel.schedule_spec().describe(),
            "iters": self.config.iters,
            "seeds": list(self.config.seeds),
            "budgets": rows,
            "runs": [r.to_dict() for r in self.runs],
        }


def run_compare(cfg: CompareConfig, say: Say) -> CompareResult:
    """Train every run, compare, write summary.json, report.md and the plots."""
    from megatron_tf.formats.profile import load_profile
    from megatron_tf.train.metrics import read_metrics

    if cfg.data is not None:  # a user's files: checked before anything is written
        from megatron_tf.train.data import prepare_data

        prepare_data(cfg.data, cfg.model)
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    profile_path = _profile(cfg, out, say)
    profile = load_profile(profile_path)
    time_label = _time_label(cfg, profile)
    say(f"time: {time_label}")
    runs: list[RunResult] = []
    curves: dict[str, Curve] = {}
    batch = cfg.model.micro_batch_size * cfg.parallel.microbatches * cfg.parallel.dp
    for seed in cfg.seeds:
        base_dir = out / f"seed{seed}" / "baseline"
        say(f"seed {seed}: baseline, {cfg.iters} iterations")
        _train(cfg, seed, base_dir, cfg.iters, plan=None, probe=True)
        base_records = read_metrics(base_dir / "metrics.jsonl")
        plan0 = _baseline_time(profile)
        base_curve = _curve(cfg, base_records, plan0, plan0)
        curves[f"seed{seed}/baseline"] = base_curve
        probes = read_json(base_dir / "noise_scale.json", "noise-scale file")
        noise = probes[0] if cfg.noise_from == "warmup" else probes[-1]
        trail = ", ".join(f"{p['noise_scale']:.1f} at it {p['iteration']:.0f}" for p in probes)
        say(f"seed {seed}: B_noise {trail} (batch {batch}); auto uses it {noise['iteration']:.0f}")
        for budget in cfg.budgets:
            cap, plan_path, speed, reason = _plan_for(
                cfg, profile, budget, noise["noise_scale"], batch, out / f"seed{seed}"
            )
            say(f"seed {seed}: budget {budget}: {reason}")
            planned = plan0 / speed
            iters = _equal_time_iters(cfg, speed)
            run_dir = out / f"seed{seed}" / f"budget_{budget}"
            reprice = budget.strip() == REPRICE
            if reprice:
                iters = _reprice_iters(cfg, profile, probes, batch)
            if plan_path is None and not reprice:
                records = base_records  # no freezing: the run is the baseline
            else:
                say(f"seed {seed}: budget {budget}: {iters} iterations (equal time)")
                _train(
                    cfg,
                    seed,
                    run_dir,
                    iters,
                    plan=plan_path or _zero_plan(profile, out / f"seed{seed}"),
                    probe=False,
                    reprice_profile=profile_path if reprice else None,
                )
                records = read_metrics(run_dir / "metrics.jsonl")
                if reprice:
                    reason += "; re-priced: " + _reprice_trail(run_dir)
            curve = _curve(cfg, records, plan0, planned)
            curves[f"seed{seed}/{budget}"] = curve
            eq_loss = None
            if cfg.equal_iterations and plan_path is not None:
                eq_dir = out / f"seed{seed}" / f"budget_{budget}_equal_iters"
                say(f"seed {seed}: budget {budget}: {cfg.iters} iterations (equal iterations)")
                _train(cfg, seed, eq_dir, cfg.iters, plan=plan_path, probe=False)
                eq_loss = _curve(
                    cfg, read_metrics(eq_dir / "metrics.jsonl"), plan0, planned
                ).final_loss
            elif plan_path is None:
                eq_loss = base_curve.final_loss
            comp = compare(base_curve, curve)
            runs.append(
                RunResult(
                    seed=seed,
                    budget=budget,
                    max_freeze_ratio=cap,
                    predicted_speedup=speed,
                    iters=iters if plan_path is not None or reprice else cfg.iters,
                    comparison=comp,
                    reason=reason,
                    noise_scale=noise["noise_scale"],
                    loss_equal_iterations=eq_loss,
                )
            )
            frac = comp.reach_fraction
            reach = "is not reached" if frac is None else f"is reached at {frac:.3f}x its time"
            say(f"seed {seed}: budget {budget}: the baseline's {comp.target:.4f} {reach}")
    result = CompareResult(config=cfg, time_label=time_label, runs=runs, curves=curves)
    (out / "summary.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
    write_report(result, out)
    return result


def _time_label(cfg: CompareConfig, profile: Any) -> str:
    if cfg.time == "measured":
        return "measured wall time (separate runs on this machine)"
    source = "synthetic costs " + cfg.costs if cfg.profile is None else f"profile {cfg.profile}"
    return f"simulated time (each iteration charged the simulator's prediction; {source})"


def _profile(cfg: CompareConfig, out: Path, say: Say) -> Path:
    """The profile that plans (and, for simulated time, charges) every run."""
    from megatron_tf.formats.profile import load_profile, save_profile
    from megatron_tf.schedule.costs import parse_costs, synthetic_profile

    spec = cfg.parallel.schedule_spec()
    if cfg.profile is not None:
        profile = load_profile(cfg.profile, flag="--profile")
        if profile.spec != spec:
            raise ConfigError(
                f"--profile {cfg.profile} is for {profile.spec.describe()}, not {spec.describe()}"
            )
        return cfg.profile
    if cfg.time == "measured":
        from megatron_tf.profile.measure import measure_quietly

        say(f"profiling {spec.describe()} on this machine")
        return measure_quietly(cfg.model, cfg.parallel, 20, out)
    path = out / "profile.json"
    save_profile(synthetic_profile(spec, parse_costs(cfg.costs, spec.pp)), path)
    return path


def _baseline_time(profile: Any) -> float:
    """The simulator's iteration time with nothing frozen."""
    from megatron_tf.solve.critical_path import evaluate
    from megatron_tf.solve.planner import profile_dag

    return float(evaluate(profile_dag(profile, "megatron")).makespan)


def _plan_for(
    cfg: CompareConfig, profile: Any, budget: str, noise: float, batch: int, out: Path
) -> tuple[float, Path | None, float, str]:
    """(cap, plan path or None for no freezing, predicted speedup, why)."""
    from megatron_tf.formats.plan import save_plan
    from megatron_tf.solve.budget import LossCost, choose_budget
    from megatron_tf.solve.lp import SolverConfig
    from megatron_tf.solve.planner import solve_profile

    cap = parse_budget(budget)
    if cap is None:
        choice = choose_budget(profile, LossCost(noise, batch, min_saving=cfg.auto_min_saving))
        if choice.outcome is None:
            return 0.0, None, 1.0, "auto: " + choice.reason
        outcome, reason = choice.outcome, "auto: " + choice.reason
    elif cap == 0.0:
        return 0.0, None, 1.0, "cap 0: no freezing"
    else:
        outcome = solve_profile(profile, SolverConfig(max_freeze_ratio=cap))
        reason = f"cap {cap:g}: predicted {outcome.result.speedup:.3f}x iteration speed"
    path = out / f"plan_{budget}.json"
    out.mkdir(parents=True, exist_ok=True)
    save_plan(outcome.plan, path)
    return outcome.plan.max_freeze_ratio, path, outcome.result.speedup, reason


def _reprice_iters(cfg: CompareConfig, profile: Any, probes: list[dict], batch: int) -> int:
    """Equal-time iterations of an `auto+reprice` run: its plan changes every `reprice_every`
    iterations, so the time it buys is predicted from the baseline's noise probes (log-linear
    between them, at the baseline iteration the run's time has reached). The run prices with
    its own probes; the report charges what it actually ran."""
    from megatron_tf.solve.budget import LossCost, budget_curve, noise_at

    curve = budget_curve(profile)
    trail = [(p["iteration"], p["noise_scale"]) for p in probes]
    w, k = cfg.warmup_iters, cfg.reprice_every
    spent, n, speed = 0.0, 0, 1.0
    while spent < cfg.iters - w - 1e-9:
        if n % k == 0:
            cost = LossCost(noise_at(trail, w + spent), batch, min_saving=cfg.auto_min_saving)
            speed = curve.best(cost).speedup
        spent += 1.0 / speed
        n += 1
    return w + n


def _zero_plan(profile: Any, out: Path) -> Path:
    """A plan that freezes nothing (an `auto+reprice` run whose first price is 0 starts here)."""
    from megatron_tf.formats.plan import save_plan
    from megatron_tf.solve.lp import SolverConfig
    from megatron_tf.solve.planner import solve_profile

    path = out / "plan_zero.json"
    out.mkdir(parents=True, exist_ok=True)
    save_plan(solve_profile(profile, SolverConfig(max_freeze_ratio=0.0)).plan, path)
    return path


def _reprice_trail(run_dir: Path) -> str:
    """`cap@iteration` for every re-pricing of a run (from its reprice_<it>/plan.json)."""
    from megatron_tf.formats.plan import load_plan

    found = sorted(
        (int(d.name.split("_")[1]), load_plan(d / "plan.json").max_freeze_ratio)
        for d in run_dir.glob("reprice_*")
        if (d / "plan.json").exists()
    )
    return ", ".join(f"{cap:g}@{it}" for it, cap in found) or "none"


def _equal_time_iters(cfg: CompareConfig, speedup: float) -> int:
    """Fewest iterations whose (predicted) time covers the baseline's: the warm-up at the
    baseline's speed, the rest at the plan's."""
    w = cfg.warmup_iters
    return w + math.ceil((cfg.iters - w) * speedup - 1e-9)


def _curve(cfg: CompareConfig, records: list[dict], baseline: float, planned: float) -> Curve:
    from megatron_tf.timetoloss import simulated_charge

    if cfg.time == "measured":
        return curve_from_records(records)
    charge = simulated_charge(
        [r["phase"] for r in records],
        baseline,
        planned,
        [r.get("predicted_seconds") for r in records],
    )
    return curve_from_records(records, charge)


def _train(
    cfg: CompareConfig,
    seed: int,
    run_dir: Path,
    iters: int,
    *,
    plan: Path | None,
    probe: bool,
    reprice_profile: Path | None = None,
) -> None:
    from megatron_tf.freeze.config import FreezeConfig
    from megatron_tf.launch.options import QUIET_WORKERS_ENV, LaunchOptions, job_log
    from megatron_tf.train.job import prepare_job
    from megatron_tf.train.launch import run_pretrain
    from megatron_tf.train.train_config import FreezeOptions, TrainConfig

    train = TrainConfig(
        iters=iters,
        lr_warmup_iters=cfg.warmup_iters,
        log_interval=max(1, iters // 10),
        out_dir=str(run_dir),
        tensorboard=False,
        eval_interval=cfg.eval_interval,
        eval_samples=cfg.eval_samples,
        noise_probe_at=(cfg.warmup_iters, cfg.iters // 2, cfg.iters - 1) if probe else (),
        noise_probe_rounds=cfg.noise_probe_rounds,
        freeze=FreezeOptions(
            plan=None if plan is None else str(plan),
            runtime=FreezeConfig(warmup_iters=cfg.warmup_iters, seed=seed),
            **(
                {}
                if reprice_profile is None
                else {
                    "max_freeze_ratio": "auto",
                    "auto_min_saving": cfg.auto_min_saving,
                    "reprice_every": cfg.reprice_every,
                    "reprice_profile": str(reprice_profile),
                }
            ),
        ),
    )
    model = replace(cfg.model, seed=seed)
    data = cfg.data_config(seed)
    job = prepare_job(model, cfg.parallel, data, train)
    if _complete(run_dir, job.to_dict(), iters):
        return  # the same job already ran to the end here: reuse it (losses are deterministic)
    if (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()  # a re-run replaces, never appends to, old metrics
    with job_log(run_dir / "train.log", f"training {run_dir.name}") as log:
        run_pretrain(job, LaunchOptions(), env=QUIET_WORKERS_ENV, stdout=log, stderr=log)


def _complete(run_dir: Path, job: dict[str, Any], iters: int) -> bool:
    """True when `run_dir` holds this very job, trained for all `iters` iterations."""
    try:
        written = JobEnvelope.load(run_dir / "job.json", "pretrain").job
        same = written == json.loads(json.dumps(job))
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except (OSError, ValueError, FormatError):
        return False
    return same and len(lines) == iters


# ---------------------------------------------------------------------------------- report


def format_table(result: CompareResult) -> list[str]:
    """The console and report table: one row per budget, spread over seeds."""
    lines = [
        f"{result.config.parallel.schedule_spec().describe()}, {result.config.iters} baseline "
        f"iterations, seeds {', '.join(map(str, result.config.seeds))}; {result.time_label}",
        f"data: {result.config.data_config().describe()}",
        "",
        "| budget | seed | cap | predicted speedup | iterations | baseline final val loss | "
        "time to it (x baseline) | val loss at the baseline's time | equal iterations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.runs:
        c = r.comparison
        frac = "not reached" if c.reach_fraction is None else f"{c.reach_fraction:.3f}"
        at = (
            "-"
            if c.loss_at_baseline_time is None
            else (f"{c.loss_at_baseline_time:.4f} ({c.loss_gap_at_equal_time:+.2%})")
        )
        eq = (
            "-"
            if r.loss_equal_iterations is None
            else (f"{r.loss_equal_iterations:.4f} ({r.loss_equal_iterations / c.target - 1:+.2%})")
        )
        lines.append(
            f"| {r.budget} | {r.seed} | {r.max_freeze_ratio:g} | {r.predicted_speedup:.3f} | "
            f"{r.iters} | {c.target:.4f} | {frac} | {at} | {eq} |"
        )
    lines += [
        "",
        "| budget | time to the baseline's final val loss, mean (sd; range) | "
        "val loss gap at the baseline's time |",
        "|---|---|---|",
    ]
    for budget, runs in result.by_budget().items():
        reach = Spread.of([r.comparison.reach_fraction for r in runs])
        gap = Spread.of([r.comparison.loss_gap_at_equal_time for r in runs])
        lines.append(f"| {budget} | {reach.format()} | {gap.format('{:+.2%}')} |")
    return lines


def write_report(result: CompareResult, out: Path) -> None:
    lines = ["# Time to the baseline's loss", "", *format_table(result), ""]
    for r in result.runs:
        lines.append(f"- seed {r.seed}, budget {r.budget}: {r.reason}")
    lines += ["", "![validation loss against time](loss_vs_time.png)", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    plot_curves(result, out / "loss_vs_time.png")


def plot_curves(result: CompareResult, path: Path) -> None:
    """Validation loss against time (linear scale) and the gap to the baseline, per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megatron_tf.solve.sweep import save_figure_atomic

    fig, (ax, gap) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    budgets = list(result.by_budget())
    lows, tops, late = [], [], []
    # Time as a share of each seed's baseline time: where a curve crosses the baseline's final
    # loss (grey line) is the reported "time to it"; 1.0 is the baseline's end.
    for si, seed in enumerate(result.config.seeds):
        base = result.curves[f"seed{seed}/baseline"]
        end = base.total_time
        style = ["-", "--", ":", "-."][si % 4]
        ax.plot(
            [t / end for t in base.times],
            base.losses,
            style,
            color="black",
            lw=1,
            label=f"baseline s{seed}",
        )
        tops.append(base.loss_at(end / 4) or base.losses[0])
        lows.append(min(base.losses))
        for bi, budget in enumerate(budgets):
            cur = result.curves.get(f"seed{seed}/{budget}")
            if cur is None:
                continue
            color = colors[(bi + 1) % len(colors)] if len(budgets) > 1 else colors[0]
            ax.plot(
                [t / end for t in cur.times],
                cur.losses,
                style,
                color=color,
                lw=1,
                label=f"{budget} s{seed}",
            )
            lows.append(min(cur.losses))
            ts = [t for t in cur.times if base.loss_at(t) is not None]
            rel = [100 * (cur.loss_at(t) / base.loss_at(t) - 1) for t in ts]  # type: ignore[operator]
            gap.plot(
                [t / end for t in ts], rel, style, color=color, lw=1, label=f"{budget} s{seed}"
            )
            late += [g for t, g in zip(ts, rel, strict=True) if t >= end / 4]
        ax.axhline(base.final_loss, color="0.7", lw=0.6)
    gap.axhline(0, color="black", lw=0.8)
    unit = "simulated" if result.config.time == "simulated" else "measured"
    for a in (ax, gap):
        a.set_xlabel(f"{unit} time / the baseline's {unit} time")
        a.set_xlim(0.2, None)
        a.grid(True, alpha=0.3)
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_ylim(min(lows) - 0.005, max(tops))  # where the runs differ: after a quarter
    if late:
        pad = 0.1 * (max(late) - min(late) + 0.1)
        gap.set_ylim(min(min(late), 0) - pad, max(max(late), 0) + pad)
    gap.set_ylabel("val loss vs baseline at equal time (%)")
    ax.set_title(f"{result.config.parallel.schedule_spec().describe()} ({unit} time)", fontsize=9)
    gap.set_title("gap to the baseline (< 0: ahead)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
