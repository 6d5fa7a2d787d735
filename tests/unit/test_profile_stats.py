"""Aggregation of measured timings into a profile (torch-free part of `timelyfreeze profile`)."""

from __future__ import annotations

import json

import pytest

from megatron_tf.formats.profile import parse_profile
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.profile.stats import build_profile, fit_line, robust_stat
from megatron_tf.schedule.order import compute_order

SPEC = ScheduleSpec(kind="1f1b", pp=2, microbatches=4)


def _iteration(rank: int, f: float, b: float, wall: float, p2p: float, slow: bool = False):
    """One rank's actions laid end to end in Megatron's order, with a P2P call after each."""
    t, actions = 0.0, []
    for kind, chunk, mb in compute_order(SPEC)[rank]:
        d = f if kind == "F" else b
        if slow and (kind, mb) == ("F", 2):
            d = 100 * f  # one disturbed sample (another process took the core)
        actions.append((kind, chunk, mb, t, t + d))
        t += d
        name = "send_forward_recv_backward" if kind == "F" else "send_backward_recv_forward"
        actions.append((name, -1, -1, t, t + p2p))
        t += p2p
    return (wall, actions)


def _stretched(iteration, end: float):
    """The iteration with its last call (a P2P wait) lasting until `end`."""
    wall, actions = iteration
    *head, (kind, chunk, mb, start, stop) = actions
    return (wall, [*head, (kind, chunk, mb, start, max(stop, end))])


def _timings(walls=(1.0, 3.0, 2.0), finalization: float | None = None):
    """rank r: forward 2 + r, backward 3 + r, frozen backward 1 + r (seconds, made up). With
    `finalization`, every rank's calls end that long before its iteration does."""
    phases = {}
    for phase, bw in (("unfrozen", 3.0), ("frozen", 1.0)):
        phases[phase] = [
            [
                _iteration(r, 2.0 + r, bw + r, w + 0.1 * r, 0.5, slow=(r == 1 and i == 0))
                for i, w in enumerate(walls)
            ]
            for r in range(SPEC.pp)
        ]
        if finalization is not None:
            phases[phase] = [
                [_stretched(it, it[0] - finalization) for it in rank_its]
                for rank_its in phases[phase]
            ]
    return phases


def test_robust_stat_drops_outliers_and_reports_them() -> None:
    stat = robust_stat([1.0, 1.1, 0.9, 1.0, 50.0], outlier_mads=5.0)
    assert stat.median == 1.0
    assert stat.outliers == [50.0]
    assert stat.n == 4
    assert stat.mad == pytest.approx(0.05)


def test_robust_stat_keeps_identical_samples() -> None:
    stat = robust_stat([2.0, 2.0, 2.0])
    assert (stat.median, stat.mad, stat.outliers) == (2.0, 0.0, [])


def test_fit_line_exact_on_a_line() -> None:
    fit = fit_line([0.0, 0.25, 0.5, 1.0], [4.0, 3.5, 3.0, 2.0])
    assert fit["slope"] == pytest.approx(-2.0)
    assert fit["intercept"] == pytest.approx(4.0)
    assert fit["r2"] == pytest.approx(1.0)


def test_build_profile_medians_outliers_and_measured() -> None:
    profile = build_profile(_timings(), SPEC, outlier_mads=5.0, provenance={"device": "test"})
    for stage in profile.stages:
        r = stage.rank
        assert (stage.forward, stage.backward, stage.backward_frozen) == (2.0 + r, 3.0 + r, 1.0 + r)
    # The disturbed forward of rank 1 is dropped from the medians and listed.
    assert profile.measured.outliers == [
        {"rank": 1, "chunk": 0, "value": "forward", "dropped": [300.0]}
    ]
    # Iteration time: the slowest rank of each iteration (rank 1, +0.1), median over iterations.
    assert profile.measured.iteration_times == pytest.approx([1.1, 3.1, 2.1])
    assert profile.measured.iteration_time == pytest.approx(2.1)
    # The representative iteration is the median one (index 2): every action of every rank.
    assert len(profile.measured.actions) == 2 * SPEC.pp * 2 * SPEC.microbatches
    # Per-microbatch medians: microbatch 2 of rank 1 has 2 clean samples of 3 -> 3.0.
    mb = {(o.rank, o.chunk, o.microbatch): o for o in profile.microbatches}
    assert mb[(1, 0, 2)].forward == 3.0
    # Comm: the P2P calls after forwards send activations, after backwards gradients.
    assert {(c.rank, c.direction): c.seconds for c in profile.comm} == {
        (0, "forward"): 0.5,
        (0, "backward"): 0.5,
        (1, "forward"): 0.5,
        (1, "backward"): 0.5,
    }
    assert profile.provenance == {"device": "test"}
    assert profile.linearity is None


def test_built_profile_round_trips_through_the_validator() -> None:
    profile = build_profile(_timings(), SPEC)
    data = json.loads(json.dumps(profile.model_dump(mode="json", exclude_none=True)))
    again = parse_profile(data)
    assert again.stages == profile.stages
    assert again.measured.iteration_time == profile.measured.iteration_time


def test_linearity_fit_over_phases() -> None:
    timings = _timings()
    # Backward falls linearly with the ratio: 3 + r at 0, 1 + r at 1, in between on the line.
    for ratio in (0.25, 0.5, 0.75):
        timings[f"ratio_{ratio:g}"] = [
            [_iteration(r, 2.0 + r, 3.0 + r - 2.0 * ratio, 1.0, 0.5) for _ in range(3)]
            for r in range(SPEC.pp)
        ]
    phases = {
        "unfrozen": 0.0,
        "frozen": 1.0,
        "ratio_0.25": 0.25,
        "ratio_0.5": 0.5,
        "ratio_0.75": 0.75,
    }
    profile = build_profile(timings, SPEC, phase_ratios=phases)
    lin = profile.linearity
    assert lin["ratios"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for stage in lin["stages"]:
        assert stage["slope"] == pytest.approx(-2.0)
        assert stage["intercept"] == pytest.approx(3.0 + stage["rank"])
        assert stage["r2"] == pytest.approx(1.0)


def test_gaps_between_calls_go_to_the_compute_action_next_to_them() -> None:
    from megatron_tf.profile.samples import durations_with_gaps

    actions = [
        ("recv_forward", -1, -1, 0.0, 1.0),
        ("F", 0, 0, 1.5, 3.0),  # 0.5 s of bookkeeping before it: goes to F (P2P before it)
        ("send_forward", -1, -1, 3.25, 4.0),  # 0.25 s after F: goes to F
        ("recv_backward", -1, -1, 4.5, 5.0),  # between two P2P calls: nobody's
        ("B", 0, 0, 5.0, 7.0),
    ]
    assert durations_with_gaps(actions) == [1.0, 2.25, 0.75, 0.5, 2.0]


def test_gap_attribution_follows_the_p2p_mode() -> None:
    timings = _timings()
    # Shift every action after the first by 1 s on every iteration: a 1 s gap after it.
    for phase in timings.values():
        for iterations in phase:
            for i, (wall, actions) in enumerate(iterations):
                first, rest = actions[0], actions[1:]
                shifted = [(k, c, m, s + 1.0, e + 1.0) for k, c, m, s, e in rest]
                iterations[i] = (wall, [first, *shifted])
    blocking = build_profile(timings, SPEC)
    assert blocking.measured.gaps_attributed is True
    mb = {(o.rank, o.chunk, o.microbatch): o for o in blocking.microbatches}
    assert mb[(0, 0, 0)].forward == 3.0  # 2 s of compute + the 1 s gap after it
    assert mb[(0, 0, 1)].forward == 2.0
    raw = build_profile(timings, SPEC, attribute_gaps=False)
    assert {(o.rank, o.chunk, o.microbatch): o for o in raw.microbatches}[(0, 0, 0)].forward == 2.0


def test_replay_gives_each_action_its_representative_duration() -> None:
    from megatron_tf.profile.replay import replay_profile, replayed_iteration_time

    profile = build_profile(_timings(), SPEC)
    replayed = replay_profile(profile)
    # The representative iteration is index 2 (wall 2.1, the median): rank 1 is undisturbed.
    got = {(o.rank, o.chunk, o.microbatch): (o.forward, o.backward) for o in replayed.microbatches}
    assert got[(1, 0, 2)] == (3.0, 4.0)
    assert got[(0, 0, 0)] == (2.0, 3.0)
    assert replayed_iteration_time(profile) == pytest.approx(2.1)


def test_calibrated_comm_makes_the_replay_last_as_measured() -> None:
    from megatron_tf.profile.replay import (
        frozen_prediction_check,
        replay_profile,
        replayed_iteration_time,
    )
    from megatron_tf.schedule.simulate import simulate_profile

    # Iterations whose calls lasted longer than their compute and quiet transfers explain,
    # then 0.25 s of gradient finalization.
    profile = build_profile(_timings(walls=(60.0, 62.0, 61.0), finalization=0.25), SPEC)
    assert profile.iteration_overhead == pytest.approx(0.25)
    assert isinstance(profile.comm, float) and profile.comm > 0.5
    assert profile.measured.comm_transfer[0]["seconds"] == 0.5  # raw transfer times kept
    replayed = replay_profile(profile)
    target = replayed_iteration_time(profile)
    assert simulate_profile(replayed, "megatron").makespan == pytest.approx(target, rel=1e-3)
    check = frozen_prediction_check(profile)
    assert set(check) == {"frozen_measured", "frozen_predicted", "frozen_prediction_error"}
    assert check["frozen_predicted"] < simulate_profile(profile, "megatron").makespan


def test_p2p_calls_are_listed_per_rank_in_program_order() -> None:
    profile = build_profile(_timings(), SPEC)
    calls = [c for c in profile.measured.p2p_calls if c["rank"] == 0]
    assert [c["index"] for c in calls] == list(range(2 * SPEC.microbatches))
    assert calls[0]["call"] == "send_forward_recv_backward"
    assert all(c["median"] == 0.5 for c in calls)


def test_iteration_overhead_is_the_time_after_the_last_call_and_joins_the_makespan() -> None:
    from megatron_tf.schedule.simulate import simulate_profile

    profile = build_profile(_timings(walls=(60.0, 62.0, 61.0), finalization=0.25), SPEC)
    assert profile.iteration_overhead == pytest.approx(0.25)
    without = profile.model_copy(update={"iteration_overhead": None})
    gained = simulate_profile(profile).makespan - simulate_profile(without).makespan
    assert gained == pytest.approx(0.25)
    assert simulate_profile(profile).bubble_fraction == simulate_profile(without).bubble_fraction
