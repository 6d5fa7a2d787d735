"""Replay one measured iteration through the schedule model (no torch).

A profile's stage costs are medians, so on a noisy machine the simulated iteration (a path of
medians) is shorter than the real one (a path of whatever each call happened to take). To
tell model error from noise, `replay_profile` takes the representative iteration kept in
`measured.actions` and gives every (rank, chunk, microbatch) exactly the durations it had in
that iteration; simulating the result should reproduce that iteration's time if the model of
the schedule is right.
"""

from __future__ import annotations

import statistics
from typing import Any

from megatron_tf.formats.kinds.program import ActionKind
from megatron_tf.formats.profile import MicrobatchCost, Profile
from megatron_tf.profile.samples import RawAction, durations_with_gaps
from megatron_tf.schedule.simulate import simulate_profile

__all__ = ["calibrate_comm", "frozen_prediction_check", "replay_profile", "replayed_iteration_time"]


def replay_profile(profile: Profile) -> Profile:
    """A copy of `profile` whose per-microbatch costs are the representative iteration's."""
    measured = profile.measured
    if measured is None or not measured.actions:
        raise ValueError("the profile holds no measured actions to replay")
    gaps = bool(getattr(measured, "gaps_attributed", False))
    overrides: dict[tuple[int, int, int], dict[str, float]] = {}
    for rank in range(profile.spec.pp):
        actions: list[RawAction] = [
            (a.kind, a.chunk, a.microbatch, a.start, a.end if a.end is not None else a.start)
            for a in measured.actions
            if a.rank == rank
        ]
        lengths = durations_with_gaps(actions) if gaps else [a[4] - a[3] for a in actions]
        for (kind, chunk, mb, _, _), length in zip(actions, lengths, strict=True):
            if kind == ActionKind.F:
                overrides.setdefault((rank, chunk, mb), {})["forward"] = length
            elif kind == ActionKind.B:
                overrides.setdefault((rank, chunk, mb), {})["backward"] = length
            elif kind == ActionKind.W:
                overrides.setdefault((rank, chunk, mb), {})["weight_grad"] = length
    for values in overrides.values():
        # A split backward timed B and W apart: the whole backward is their sum.
        if "weight_grad" in values and "backward" in values:
            values["backward"] += values["weight_grad"]
    microbatches = [
        MicrobatchCost(rank=r, chunk=c, microbatch=m, **values)
        for (r, c, m), values in sorted(overrides.items())
    ]
    return profile.model_copy(update={"microbatches": microbatches})


def replayed_iteration_time(profile: Profile) -> float:
    """The measured time of the representative iteration (the one closest to the median)."""
    times = profile.measured.iteration_times if profile.measured else None
    if not times:
        raise ValueError("the profile holds no measured iteration times")
    med = statistics.median(times)
    return min(times, key=lambda t: abs(t - med))


def _replay_makespan(replayed: Profile, comm: Any, comm_model: str) -> float:
    return simulate_profile(replayed.model_copy(update={"comm": comm}), comm_model).makespan


def calibrate_comm(profile: Profile, comm_model: str = "megatron") -> Profile:
    """Set `comm` to the per-message time that makes the replayed iteration last as measured.

    The transfer time of a quiet P2P call (what `stats` measures) misses the time a rank that
    waited in a blocking call needs to resume once its peer arrives (thread wake-up, a
    contended core). The replay of the representative iteration is the model with exactly the
    measured compute times, so the one remaining unknown, a per-message time, is found by
    bisection on its makespan (monotone in that time). The measured transfer times stay in
    `measured.comm_transfer`; the frozen phase, which the calibration does not see, is the
    independent check (`frozen_prediction_check`).
    """
    measured = profile.measured
    if measured is None or not measured.actions or not measured.iteration_times:
        return profile
    replayed = replay_profile(profile)
    target = replayed_iteration_time(profile)
    transfer = profile.comm
    floor = (
        max(link.seconds for link in transfer) if isinstance(transfer, list) else float(transfer)
    )
    if _replay_makespan(replayed, transfer, comm_model) >= target:
        # The transfer times alone already account for the iteration: nothing to add.
        seconds: float | None = None
    else:
        lo, hi = floor, max(target, floor)
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if _replay_makespan(replayed, mid, comm_model) < target:
                lo = mid
            else:
                hi = mid
            if hi - lo <= 1e-4 * target:
                break
        seconds = 0.5 * (lo + hi)
    extra = dict(measured.model_extra or {})
    extra.update(
        comm_transfer=[link.model_dump() for link in transfer]
        if isinstance(transfer, list)
        else transfer,
        comm_calibration={
            "method": "replay of the representative iteration",
            "comm_model": comm_model,
            "seconds": seconds,
            "iteration_time": target,
        },
    )
    new_measured = measured.model_copy(update=extra)
    comm = transfer if seconds is None else seconds
    return profile.model_copy(update={"comm": comm, "measured": new_measured})


def frozen_prediction_check(profile: Profile, comm_model: str = "megatron") -> dict[str, float]:
    """Predicted vs measured median iteration time of the fully frozen phase (ratio 1)."""

    measured = getattr(profile.measured, "frozen_iteration_time", None)
    if not measured:
        return {}
    spec = profile.spec
    ones = [[[1.0] * spec.microbatches for _ in range(spec.vpp)] for _ in range(spec.pp)]
    predicted = simulate_profile(profile, comm_model, ones).makespan
    return {
        "frozen_measured": measured,
        "frozen_predicted": predicted,
        "frozen_prediction_error": (predicted - measured) / measured,
    }
