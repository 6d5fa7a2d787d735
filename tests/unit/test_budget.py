"""The loss-cost model and the automatic budget (solve/budget.py): properties that must hold.

- the noise-scale estimator is exact on exact expectations;
- the iteration factor is the closed form of McCandlish et al.'s step model;
- the choice is 0, with a reason, when the model says freezing cannot pay, and when the best
  predicted saving is below `min_saving` (the model's measured error); at 0 it trusts any;
- a larger measured noise scale never raises the chosen cap (each lost sample costs more), a
  larger batch never lowers it;
- the chosen plan satisfies every LP constraint and the simulator reproduces its makespan.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from megatron_tf.errors import ConfigError
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.schedule.costs import synthetic_profile
from megatron_tf.schedule.simulate import simulate
from megatron_tf.solve.budget import (
    LossCost,
    best_time_factor,
    budget_curve,
    choose_budget,
    noise_at,
    noise_scale_estimate,
    stage_shares,
)
from megatron_tf.solve.lp import SolverConfig
from megatron_tf.solve.planner import profile_dag

LAYOUTS = {
    "pp2-m8": ScheduleSpec(kind="1f1b", pp=2, microbatches=8),
    "pp4-m8": ScheduleSpec(kind="1f1b", pp=4, microbatches=8),
    "pp8-m16": ScheduleSpec(kind="1f1b", pp=8, microbatches=16),
    "pp4-v2-m8": ScheduleSpec(kind="interleaved", pp=4, vpp=2, microbatches=8),
}
CANDIDATES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


def test_noise_scale_estimator_is_exact_on_expectations() -> None:
    g2, trace = 3.0, 48.0  # B_noise = 16 samples
    sizes = (2, 16)
    expected = [g2 + trace / b for b in sizes]
    est = noise_scale_estimate(sizes[0], sizes[1], [expected[0]] * 3, [expected[1]] * 3)
    assert est["true_grad_sq"] == pytest.approx(g2)
    assert est["trace_sigma"] == pytest.approx(trace)
    assert est["noise_scale"] == pytest.approx(16.0)
    # Noise so large that the |G|^2 estimate is not positive: reported as infinite.
    assert math.isinf(noise_scale_estimate(2, 16, [10.0], [1.0])["noise_scale"])
    # The big batch's norm above the small one's: no noise measurable.
    assert noise_scale_estimate(2, 16, [1.0], [1.0 + 1e-3])["noise_scale"] == 0.0
    with pytest.raises(ValueError):
        noise_scale_estimate(16, 2, [1.0], [1.0])


@pytest.mark.parametrize("noise", [0.0, 3.0, 40.0])
def test_iteration_factor_closed_form(noise: float) -> None:
    cost = LossCost(noise_scale=noise, batch=16)
    # One block learning from 75% of the batch: (1 + Bn / (0.75 B)) / (1 + Bn / B).
    assert cost.iteration_factor([0.75], [1.0]) == pytest.approx(
        (1 + noise / 12) / (1 + noise / 16)
    )
    # Two equal blocks, one unfrozen: progress adds block by block.
    p = 1 / (1 + noise / 8) * (1 + noise / 16)
    assert cost.iteration_factor([1.0, 0.5], [1.0, 1.0]) == pytest.approx(2 / (1 + p))
    assert cost.iteration_factor([1.0, 1.0], [1.0, 3.0]) == pytest.approx(1.0)
    # The noise-dominated limit: progress proportional to samples.
    assert LossCost(noise_scale=math.inf, batch=16).iteration_factor([0.5], [1]) == 2.0


def test_loss_cost_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="--noise-scale"):
        LossCost(noise_scale=-1.0, batch=16)
    with pytest.raises(ConfigError, match="--noise-scale"):
        LossCost(noise_scale=math.nan, batch=16)
    for bad in (-0.1, 1.0, math.nan):
        with pytest.raises(ConfigError, match="--auto-min-saving"):
            LossCost(noise_scale=1.0, batch=16, min_saving=bad)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_min_saving_only_decides_whether_to_freeze(name: str) -> None:
    # The margin never changes which cap wins, only whether its predicted saving is enough:
    # cap 0 exactly when the best cap's predicted time is above 1 - min_saving.
    curve = budget_curve(synthetic_profile(LAYOUTS[name], [(1.0, 1.0, 1.0)]), candidates=CANDIDATES)
    for noise in (0.0, 4.0, 16.0, 64.0):
        trusting = curve.best(LossCost(noise, 16, min_saving=0.0))
        for margin in (0.0, 0.02, 0.05, 0.1, 0.3):
            choice = curve.choose(LossCost(noise, 16, min_saving=margin))
            enough = trusting.time_factor <= 1.0 - margin
            expected = trusting.max_freeze_ratio if enough else 0.0
            assert choice.max_freeze_ratio == expected, (noise, margin)
            assert (choice.outcome is None) == (expected == 0.0)
            if not enough and trusting.time_factor < 1.0:
                assert "--auto-min-saving" in choice.reason


def test_zero_when_freezing_buys_no_time() -> None:
    # A frozen backward that takes as long as a trained one: no cap can shorten the iteration.
    profile = synthetic_profile(LAYOUTS["pp4-m8"], [(1.0, 1.0, 1.0)])
    stages = [s.model_copy(update={"backward_frozen": s.backward}) for s in profile.stages]
    profile = profile.model_copy(update={"stages": stages})
    choice = choose_budget(profile, LossCost(noise_scale=1.0, batch=16), candidates=CANDIDATES)
    assert choice.max_freeze_ratio == 0.0 and choice.outcome is None
    assert "cannot pay" in choice.reason


def test_zero_when_samples_cost_more_than_the_speed_buys() -> None:
    # pp 2: the speed comes from cutting the critical stage's own work, one sample per unit of
    # time saved; in the noise-dominated limit that never pays.
    profile = synthetic_profile(LAYOUTS["pp2-m8"], [(1.0, 1.0, 1.0)])
    choice = choose_budget(profile, LossCost(noise_scale=math.inf, batch=16), candidates=CANDIDATES)
    assert choice.max_freeze_ratio == 0.0
    assert all(p.time_factor >= 1.0 for p in choice.points)
    assert "cannot pay" in choice.reason


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_noise_scale_never_raises_the_cap_and_batch_never_lowers_it(name: str) -> None:
    profile = synthetic_profile(LAYOUTS[name], [(1.0, 1.0, 1.0)])
    noises = [0.0, 1.0, 4.0, 16.0, 64.0, 256.0, math.inf]
    caps = [
        choose_budget(profile, LossCost(noise_scale=n, batch=16), candidates=CANDIDATES)
        for n in noises
    ]
    chosen = [c.max_freeze_ratio for c in caps]
    assert chosen == sorted(chosen, reverse=True), chosen
    assert chosen[0] > chosen[-1]  # the noise scale does move the choice
    batches = [4, 16, 64, 256]
    by_batch = [
        choose_budget(profile, LossCost(noise_scale=32.0, batch=b), candidates=CANDIDATES)
        for b in batches
    ]
    assert [c.max_freeze_ratio for c in by_batch] == sorted(c.max_freeze_ratio for c in by_batch)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_chosen_plan_satisfies_every_lp_constraint(name: str) -> None:
    spec = LAYOUTS[name]
    profile = synthetic_profile(spec, [(1.0, 1.2, 0.9)])
    config = SolverConfig(min_trained_microbatches=2)
    cost = LossCost(noise_scale=8.0, batch=16, min_saving=0.0)
    choice = choose_budget(profile, cost, config, CANDIDATES)
    assert choice.outcome is not None
    cap = choice.max_freeze_ratio
    ratios = np.asarray(choice.outcome.plan.ratios)
    assert ratios.shape == (spec.pp, spec.vpp, spec.microbatches)
    assert ratios.min() >= 0.0 and ratios.max() <= 1.0
    assert ratios.mean(axis=2).max() <= cap + 1e-9  # the budget row
    assert (1.0 - ratios).sum(axis=2).min() >= 2 - 1e-9  # the keep-training floor
    first = ratios[0, 0]
    assert (first == 0.0).sum() >= 2  # first stage: k_min microbatches exactly unfrozen
    dag = profile_dag(profile, config.comm_model)
    sim = simulate(dag, ratios.tolist())
    assert sim.makespan == pytest.approx(choice.outcome.result.makespan, rel=1e-6)
    point = choice.chosen
    assert point.speedup == pytest.approx(choice.outcome.result.speedup)
    assert point.time_factor == min(p.time_factor for p in choice.points)
    weights = [1.0] * (spec.pp * spec.vpp)
    assert point.iteration_factor == pytest.approx(
        choice.cost.iteration_factor(stage_shares(ratios), weights)
    )
    assert choice.outcome.plan.max_freeze_ratio == cap


# ---------------------------------------------------------------- re-pricing and the bound


def test_curve_prices_like_a_fresh_choice() -> None:
    """The speed curve solved once and re-priced gives what a fresh solve at that noise gives."""
    profile = synthetic_profile(LAYOUTS["pp4-m8"], [(1.0, 1.0, 1.0)])
    curve = budget_curve(profile, candidates=CANDIDATES)
    for noise in (0.0, 8.0, 64.0, math.inf):
        cost = LossCost(noise_scale=noise, batch=16)
        fresh = choose_budget(profile, cost, candidates=CANDIDATES)
        again = curve.choose(cost)
        assert again.max_freeze_ratio == fresh.max_freeze_ratio
        assert again.points == fresh.points
        assert curve.best(cost) == fresh.chosen
        if fresh.outcome is not None:
            assert again.outcome is not None
            assert again.outcome.plan.ratios == fresh.outcome.plan.ratios


def test_noise_at_interpolates_log_linearly() -> None:
    probes = [(30, 10.0), (150, 40.0), (299, 1000.0)]
    assert noise_at(probes, 0) == 10.0 and noise_at(probes, 400) == 1000.0
    assert noise_at(probes, 90) == pytest.approx(20.0)  # geometric mean half-way
    assert noise_at(probes, 150) == pytest.approx(40.0)
    with pytest.raises(ValueError):
        noise_at([], 3)


@pytest.mark.parametrize("name", ["pp2-m8", "pp4-m8", "pp8-m16"])
def test_trajectory_bound(name: str) -> None:
    """The best cap schedule is never worse than one cap (nor than no freezing), its caps never
    rise while the noise scale grows, and a flat trajectory makes the bound the choice's own
    prediction."""
    profile = synthetic_profile(LAYOUTS[name], [(1.0, 1.0, 1.0)])
    curve = budget_curve(profile, candidates=CANDIDATES)
    growing = [(30, 8.0), (150, 40.0), (299, 1200.0)]
    bound = best_time_factor(curve, growing, batch=16, iters=300, warmup_iters=30)
    assert bound.best <= bound.once + 1e-12 and bound.best <= 1.0
    assert list(bound.caps) == sorted(bound.caps, reverse=True)
    assert bound.caps[0] == bound.once_cap
    flat = best_time_factor(curve, [(30, 8.0)], batch=16, iters=300, warmup_iters=30)
    assert flat.best == pytest.approx(flat.once) == pytest.approx(flat.once_at_choice)
    # Freezing that cannot pay at any point: the bound is the baseline's time.
    hopeless = best_time_factor(curve, [(30, math.inf)], batch=16, iters=300, warmup_iters=30)
    if name == "pp2-m8":
        assert hopeless.best == 1.0 and set(hopeless.caps) == {0.0}


@pytest.mark.parametrize("threads", [1, 3, None])
def test_caps_solved_in_parallel_are_the_one_by_one_solves(threads: int | None) -> None:
    """`budget_curve` solves its caps on a thread pool: every cap's result equals a lone cold
    `solve_lp` at that cap bit for bit (ratios, T*, makespan), whatever the thread count, and
    the progress callback hears one line per cap."""
    from megatron_tf.solve.lp import solve_lp

    spec = ScheduleSpec(kind="interleaved", pp=4, vpp=2, microbatches=8)
    costs = [(1.0, 1.3, 0.6), (0.9, 1.1, 0.5), (1.2, 1.0, 0.8), (1.0, 0.9, 0.4)]
    profile = synthetic_profile(spec, costs, comm=0.05)
    lines: list[str] = []
    curve = budget_curve(profile, threads=threads, progress=lines.append)
    dag = profile_dag(profile, "megatron")
    assert sorted(curve.results) == [0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6]
    for cap, got in curve.results.items():
        alone = solve_lp(dag, SolverConfig(max_freeze_ratio=cap))
        assert np.array_equal(got.ratios, alone.ratios), cap
        assert (got.lp_makespan, got.makespan) == (alone.lp_makespan, alone.makespan)
    assert sum("caps solved" in line for line in lines) == 11


def test_a_cap_that_fails_in_a_thread_raises_its_error() -> None:
    from megatron_tf.solve.lp import solve_each_cap

    dag = profile_dag(synthetic_profile(LAYOUTS["pp4-m8"], [(1.0, 1.0, 1.0)]), "megatron")
    with pytest.raises(ConfigError, match="--weighting params needs"):
        solve_each_cap(dag, SolverConfig(weighting="params"), [0.1, 0.2, 0.3], threads=2)
    with pytest.raises(ConfigError, match="--threads must be >= 1, got 0"):
        solve_each_cap(dag, SolverConfig(), [0.1], threads=0)


def test_params_weighting_reaches_every_cap() -> None:
    """`--weighting params` with auto: every cap is solved with the profile's parameter counts
    (it used to fail, claiming the profile had none), equal to a lone solve given them."""
    from megatron_tf.solve.lp import solve_lp
    from megatron_tf.solve.planner import stage_param_weights

    profile = synthetic_profile(LAYOUTS["pp4-m8"], [(1.0, 1.0, 1.0)])
    data = profile.model_dump(mode="json")
    for stage in data["stages"]:
        params = 10_000 if stage["rank"] == 3 else 1_000
        stage["units"] = [{"name": "linear.weight", "share": 1.0, "params": params}]
    profile = type(profile).model_validate(data)
    base = SolverConfig(weighting="params")
    curve = budget_curve(profile, base, (0.0, 0.1, 0.3), threads=2)
    weights = stage_param_weights(profile)
    dag = profile_dag(profile, "megatron")
    for cap, got in curve.results.items():
        alone = solve_lp(
            dag, SolverConfig(max_freeze_ratio=cap, weighting="params"), stage_weights=weights
        )
        assert np.array_equal(got.ratios, alone.ratios), cap
    uniform = budget_curve(profile, SolverConfig(), (0.0, 0.1))
    assert not np.array_equal(uniform.results[0.1].ratios, curve.results[0.1].ratios)  # reached
    bare = synthetic_profile(LAYOUTS["pp4-m8"], [(1.0, 1.0, 1.0)])
    with pytest.raises(ConfigError, match="--weighting params needs each stage's parameter count"):
        budget_curve(bare, base, (0.0, 0.1))


def test_sweep_on_one_thread_or_several_gives_the_same_points() -> None:
    """One thread: warm-started caps (`solve_caps`); more: cold caps side by side. Each cap's
    makespan and mean freeze ratio (pass 2's least freezing) agree within the tolerance."""
    from megatron_tf.solve.sweep import sweep

    spec = ScheduleSpec(kind="interleaved", pp=4, vpp=2, microbatches=8)
    costs = [(1.0, 1.3, 0.6), (0.9, 1.1, 0.5), (1.2, 1.0, 0.8), (1.0, 0.9, 0.4)]
    dag = profile_dag(synthetic_profile(spec, costs, comm=0.05), "megatron")
    caps = [0.0, 0.05, 0.1, 0.2, 0.4, 0.8]
    warm = sweep(dag, caps, SolverConfig(), threads=1)
    side = sweep(dag, caps, SolverConfig(), threads=2)
    for a, b in zip(warm, side, strict=True):
        assert a.max_freeze_ratio == b.max_freeze_ratio
        assert a.makespan == pytest.approx(b.makespan, rel=2e-6)
        assert a.mean_freeze_ratio == pytest.approx(b.mean_freeze_ratio, rel=1e-6, abs=1e-9)
