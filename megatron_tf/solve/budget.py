"""The freeze budget from a measured loss cost: minimise predicted time to a target loss.

The LP maximises iteration speed under a cap on each stage's mean freeze ratio; it knows nothing
of what freezing costs in loss. This module prices that cost with the gradient noise scale
(McCandlish et al. 2018, "An Empirical Model of Large-Batch Training") and picks the cap:

- A step on a batch of B samples makes, in expectation, a share 1 / (1 + B_noise / B) of the
  loss progress of a step on the exact gradient (their eq. 2.7-2.8 with the optimal step size).
- A tensor frozen for a share r of an iteration's microbatches learns from B (1 - r) samples,
  so its block of parameters progresses at 1 / (1 + B_noise / (B (1 - r))).
- Summing blocks weighted by their parameter counts (each block's share of |G|^2 taken
  proportional to its size, for want of a per-block measurement), one iteration with the plan
  makes `1 / iteration_factor` of a baseline iteration's progress: the target needs
  `iteration_factor` times the iterations.
- Predicted time to the target, relative to the baseline: iteration_factor / speedup.

The cap with the smallest predicted time wins; 0 (no freezing) when no cap predicts at least
`min_saving` (default 5%) less than the baseline's time, with the reason. The margin is the
model's measured error at the choice: on the runs of docs/results.md it over-promised by 1-17%
where freezing won (pp 4, pp 8, a larger batch, pp 2 at synthetic costs) and predicted 1-4%
savings where freezing lost (pp 2 at this machine's measured costs, pp 4 x vpp 2), so a smaller
predicted saving is no evidence that freezing pays.

A larger noise scale makes every lost sample dearer, so it can only lower (never raise) the
chosen cap; a larger batch makes them cheaper.

Torch-free: the trainer's noise probe (`train/trainer.py`) calls `noise_scale_estimate`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from megatron_tf.errors import ConfigError
from megatron_tf.formats.profile import Profile
from megatron_tf.freeze.config import DEFAULT_MIN_SAVING
from megatron_tf.solve.lp import LpResult, Progress, SolverConfig, solve_each_cap
from megatron_tf.solve.planner import SolveOutcome, make_plan, profile_dag, stage_param_weights
from megatron_tf.solve.reduce import reduce_dag

DEFAULT_CANDIDATES: tuple[float, ...] = (
    0.0,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.6,
)
"""Caps tried by `choose_budget` (a grid: the time model is not linear in the cap)."""


def noise_scale_estimate(
    b_small: int, b_big: int, g_small: Sequence[float], g_big: Sequence[float]
) -> dict[str, float]:
    """B_noise = tr(Sigma) / |G|^2 from squared gradient norms at two batch sizes.

    With E|G_B|^2 = |G|^2 + tr(Sigma) / B, the two sizes give unbiased estimates
    |G|^2 = (b_big |G_big|^2 - b_small |G_small|^2) / (b_big - b_small) and
    tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1 / b_small - 1 / b_big); the ratio of their means
    over rounds is the estimate (McCandlish et al., appendix A). inf when |G|^2 <= 0 (noise
    dominates the measurement: the batch is far below the noise scale); 0 when the tr(Sigma)
    estimate is negative (no noise measurable at these batch sizes).
    """
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small}, {b_big}")
    if not g_small or len(g_small) != len(g_big):
        raise ValueError("need equally many small- and big-batch measurements")
    gs, gb = float(np.mean(g_small)), float(np.mean(g_big))
    true_sq = (b_big * gb - b_small * gs) / (b_big - b_small)
    trace = (gs - gb) / (1.0 / b_small - 1.0 / b_big)
    # A negative tr(Sigma) estimate: no noise measurable at these sizes (0).
    noise = math.inf if true_sq <= 0 else max(0.0, trace) / true_sq
    return {
        "noise_scale": noise,
        "true_grad_sq": true_sq,
        "trace_sigma": trace,
        "b_small": float(b_small),
        "b_big": float(b_big),
        "rounds": float(len(g_small)),
        "small_batch_grad_sq": gs,
        "big_batch_grad_sq": gb,
    }


@dataclass(frozen=True, slots=True)
class LossCost:
    """The loss-cost model: the measured noise scale against the batch each tensor learns from."""

    noise_scale: float
    """B_noise in samples (sequences), measured during the warm-up."""
    batch: float
    """Samples per iteration (micro batch x microbatches x data-parallel replicas)."""
    min_saving: float = DEFAULT_MIN_SAVING
    """Freeze only when the best cap predicts at least this share less time (the model's
    measured error at the choice); 0 trusts every predicted saving."""

    def __post_init__(self) -> None:
        if not (self.noise_scale >= 0):  # also rejects NaN
            raise ConfigError(f"--noise-scale must be >= 0, got {self.noise_scale}")
        if not self.batch > 0:
            raise ConfigError(f"batch size must be > 0, got {self.batch}")
        if not 0.0 <= self.min_saving < 1.0:  # also rejects NaN
            raise ConfigError(f"--auto-min-saving must lie in [0, 1), got {self.min_saving}")

    def progress(self, share: float) -> float:
        """Loss progress per step of a block learning from `share` of the batch (1 = exact
        gradient): 1 / (1 + B_noise / (B share)); 0 for a block that never learns."""
        if share <= 0:
            return 0.0
        if math.isinf(self.noise_scale):
            return share  # the noise-dominated limit: progress proportional to samples
        return 1.0 / (1.0 + self.noise_scale / (self.batch * share))

    def iteration_factor(self, shares: Sequence[float], weights: Sequence[float]) -> float:
        """Iterations needed relative to the baseline: baseline progress / planned progress."""
        full = self.progress(1.0)
        if full == 0.0:
            return 1.0
        planned = sum(w * self.progress(s) / full for s, w in zip(shares, weights, strict=True))
        total = sum(weights)
        return math.inf if planned <= 0 else total / planned


@dataclass(frozen=True, slots=True)
class BudgetPoint:
    """One cap: its predicted speed, iterations and time to the target."""

    max_freeze_ratio: float
    speedup: float
    """Baseline iteration time / planned iteration time (the simulator's)."""
    iteration_factor: float
    """Iterations to the target relative to the baseline (the loss-cost model)."""

    @property
    def time_factor(self) -> float:
        """Predicted time to the target relative to the baseline's."""
        return self.iteration_factor / self.speedup


@dataclass(frozen=True, slots=True)
class BudgetChoice:
    """The chosen cap, every cap tried, and why."""

    max_freeze_ratio: float
    points: tuple[BudgetPoint, ...]
    reason: str
    cost: LossCost
    outcome: SolveOutcome | None
    """The plan at the chosen cap (None when the choice is 0: nothing to freeze)."""

    @property
    def chosen(self) -> BudgetPoint:
        return next(p for p in self.points if p.max_freeze_ratio == self.max_freeze_ratio)


def stage_shares(ratios: np.ndarray) -> list[float]:
    """Share of the batch each (rank, chunk) learns from: 1 - its mean ratio, rank-major."""
    return [1.0 - float(x) for x in ratios.reshape(-1, ratios.shape[-1]).mean(axis=1)]


@dataclass(frozen=True, slots=True)
class CapOption:
    """One cap's LP plan, reduced to what the loss-cost model reads."""

    max_freeze_ratio: float
    speedup: float
    shares: tuple[float, ...]
    """Share of the batch each (rank, chunk) learns from under the cap's plan, rank-major."""


@dataclass(slots=True)
class BudgetCurve:
    """The LP's speedup(cap) curve of one profile, solved once, priced at any noise scale.

    The speed of a cap does not depend on the noise scale, only its loss cost does, so a run
    that re-prices (`--reprice-every`) or a bound over a noise-scale trajectory
    (`best_time_factor`) solves the LPs once and re-reads them."""

    profile: Profile
    base: SolverConfig
    weights: tuple[float, ...]
    """Parameter count per (rank, chunk), rank-major (1 each when the profile has none)."""
    options: tuple[CapOption, ...]
    """Every candidate cap but 0, ascending."""
    results: dict[float, LpResult]

    def points(self, cost: LossCost) -> tuple[BudgetPoint, ...]:
        """Every cap (0 first) priced at `cost`."""
        points = [BudgetPoint(max_freeze_ratio=0.0, speedup=1.0, iteration_factor=1.0)]
        for o in self.options:
            factor = cost.iteration_factor(o.shares, self.weights)
            points.append(BudgetPoint(o.max_freeze_ratio, o.speedup, factor))
        return tuple(points)

    def best(self, cost: LossCost) -> BudgetPoint:
        """The point with the least predicted time; ties keep the smaller cap. Cap 0 when no
        cap predicts at least `cost.min_saving` less time than the baseline."""
        points = self.points(cost)
        best = points[0]
        for p in points[1:]:
            if p.time_factor < best.time_factor - 1e-9:
                best = p
        return best if best.time_factor <= 1.0 - cost.min_saving else points[0]

    def choose(self, cost: LossCost) -> BudgetChoice:
        """The chosen cap with its plan and the reason, at `cost`."""
        points = self.points(cost)
        best = self.best(cost)
        b_noise = f"B_noise {cost.noise_scale:.1f} samples vs batch {cost.batch:g}"
        if best.max_freeze_ratio == 0.0:
            runner = min(points[1:], key=lambda p: p.time_factor, default=None)
            detail = (
                ""
                if runner is None
                else f"; best cap {runner.max_freeze_ratio:g} predicts {runner.speedup:.3f}x "
                f"speed but {runner.iteration_factor:.3f}x iterations = "
                f"{runner.time_factor:.3f}x time"
            )
            why = (
                "freezing cannot pay"
                if runner is None or runner.time_factor >= 1.0
                else f"freezing does not pay by the {cost.min_saving:.0%} auto requires "
                "(--auto-min-saving)"
            )
            reason = f"{why} ({b_noise}){detail}"
            return BudgetChoice(0.0, points, reason, cost, outcome=None)
        result = self.results[best.max_freeze_ratio]
        config = dataclasses.replace(self.base, max_freeze_ratio=best.max_freeze_ratio)
        outcome = SolveOutcome(
            plan=make_plan(result, self.profile, config),
            result=result,
            dag=profile_dag(self.profile, self.base.comm_model),
        )
        reason = (
            f"cap {best.max_freeze_ratio:g}: {best.speedup:.3f}x iteration speed, "
            f"{best.iteration_factor:.3f}x iterations ({b_noise}) -> "
            f"{best.time_factor:.3f}x predicted time to the target loss"
        )
        return BudgetChoice(best.max_freeze_ratio, points, reason, cost, outcome)


def budget_curve(
    profile: Profile,
    base: SolverConfig | None = None,
    candidates: Sequence[float] = DEFAULT_CANDIDATES,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> BudgetCurve:
    """Solve the LP at every candidate cap (> 0) of `profile` once, `threads` caps at a time
    (None: one per usable core; `solve_each_cap`).

    Each cap is solved cold (`solve_lp`), not warm-started with `solve_caps`: a warm pass 2
    reaches the same T* and least total freezing but can end at another vertex of pass 2's
    optimal face, i.e. another placement of the freezing, and the time-to-loss results in
    docs/results.md were measured with the cold plans. The warm start (0.67x CPU on pp 16)
    waits for a time-to-loss measurement of its plans. Cold caps are independent, so they
    run in parallel with the same plans."""
    base = base or SolverConfig()
    dag = profile_dag(profile, base.comm_model)
    precedence = reduce_dag(dag)
    param_weights = stage_param_weights(profile)
    spec = profile.spec
    keys = [(r, c) for r in range(spec.pp) for c in range(spec.vpp)]
    weights = tuple(1.0 if param_weights is None else param_weights[k] for k in keys)
    caps = sorted({float(c) for c in candidates} - {0.0})
    results = solve_each_cap(
        dag,
        base,
        caps,
        stage_weights=param_weights if base.weighting == "params" else None,
        precedence=precedence,
        threads=threads,
        progress=progress,
    )
    options = [CapOption(c, r.speedup, tuple(stage_shares(r.ratios))) for c, r in results.items()]
    return BudgetCurve(profile, base, weights, tuple(options), results)


def choose_budget(
    profile: Profile,
    cost: LossCost,
    base: SolverConfig | None = None,
    candidates: Sequence[float] = DEFAULT_CANDIDATES,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> BudgetChoice:
    """The cap in `candidates` minimising predicted time to a target loss (0 if none beats 1)."""
    curve = budget_curve(profile, base, candidates, threads=threads, progress=progress)
    return curve.choose(cost)


# ------------------------------------------------------------------ over a noise trajectory


def noise_at(probes: Sequence[tuple[float, float]], iteration: float) -> float:
    """The noise scale at `iteration` from (iteration, B_noise) probes: log-linear between
    probes (it grows roughly geometrically over training), held flat outside them."""
    pts = sorted((float(i), float(b)) for i, b in probes)
    if not pts:
        raise ValueError("need at least one noise probe")
    if iteration <= pts[0][0]:
        return pts[0][1]
    for (i0, b0), (i1, b1) in zip(pts, pts[1:], strict=False):
        if iteration <= i1:
            w = (iteration - i0) / (i1 - i0) if i1 > i0 else 1.0
            if b0 <= 0 or b1 <= 0 or math.isinf(b0) or math.isinf(b1):
                return b0 + w * (b1 - b0)
            return math.exp(math.log(b0) + w * (math.log(b1) - math.log(b0)))
    return pts[-1][1]


@dataclass(frozen=True, slots=True)
class TrajectoryBound:
    """What the loss-cost model predicts for one run over a measured noise-scale trajectory,
    as time to the baseline's final loss relative to the baseline's time."""

    best: float
    """The best any cap schedule can do: at every baseline iteration the cap with the least
    time per unit of progress (re-pricing every iteration, free probes)."""
    once: float
    """One cap chosen at the warm-up's noise scale, kept to the end (today's auto)."""
    once_cap: float
    once_at_choice: float
    """What the choice itself predicts (the warm-up's noise scale held for the whole run)."""
    caps: tuple[float, ...]
    """The best cap per baseline iteration after the warm-up."""


def best_time_factor(
    curve: BudgetCurve,
    probes: Sequence[tuple[float, float]],
    batch: float,
    iters: int,
    warmup_iters: int,
    min_saving: float = DEFAULT_MIN_SAVING,
) -> TrajectoryBound:
    """The model's time ratio over a baseline of `iters` iterations whose noise scale follows
    `probes`. Progress is counted in baseline iterations: iteration i needs `time_factor` of a
    baseline iteration's time at the cap in force; the warm-up runs at the baseline's speed.
    The noise scale is a function of the loss reached, so choosing the fastest cap at every
    point of progress is the optimal schedule (greedy is exact for a separable cost). The
    one-time choice applies auto's `min_saving`; the bound is the model's own (no margin)."""
    if not 0 <= warmup_iters < iters:
        raise ValueError(f"need 0 <= warmup_iters < iters, got {warmup_iters}, {iters}")
    first = LossCost(noise_at(probes, warmup_iters), batch, min_saving=min_saving)
    once_cap = curve.best(first).max_freeze_ratio
    once_opt = next(
        (o for o in curve.options if o.max_freeze_ratio == once_cap), None
    )  # None: cap 0
    best_sum = once_sum = float(warmup_iters)
    caps = []
    for i in range(warmup_iters, iters):
        cost = LossCost(noise_at(probes, i), batch, min_saving=0.0)
        p = curve.best(cost)
        caps.append(p.max_freeze_ratio)
        best_sum += p.time_factor
        if once_opt is None:
            once_sum += 1.0
        else:
            once_sum += cost.iteration_factor(once_opt.shares, curve.weights) / once_opt.speedup
    once_at_choice = curve.best(first).time_factor
    once_at_choice = (warmup_iters + (iters - warmup_iters) * once_at_choice) / iters
    return TrajectoryBound(
        best=best_sum / iters,
        once=once_sum / iters,
        once_cap=once_cap,
        once_at_choice=once_at_choice,
        caps=tuple(caps),
    )
