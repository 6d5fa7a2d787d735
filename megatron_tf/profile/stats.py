"""Turn the timings gathered from every rank into a `timelyfreeze.profile/1` (no torch).

Input: `timings[phase][rank]` = list of iterations, each `(wall, [(kind, chunk, mb, start,
end), ...])` in seconds (Python floats, i.e. float64). Per (rank, chunk) the forward comes
from the unfrozen phase, `backward` from the unfrozen phase and `backward_frozen` from the
fully frozen one. Each value is a median over iterations and microbatches after outliers
(further than `outlier_mads` scaled MADs from the median) are dropped; the dropped samples are
listed in `measured.outliers`, never silently kept.

A schedule that runs the weight gradient as its own action (`zb-h1`) reports B (the input
gradient) and W separately: `backward` is then B + W of the same microbatch and iteration, and
`weight_grad` the W alone, timed on its own.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from megatron_tf.formats.kinds.program import COMPUTE_KINDS, ActionKind
from megatron_tf.formats.profile import (
    WAIT_PREFIX,
    CommLink,
    Measured,
    MeasuredAction,
    MicrobatchCost,
    Profile,
    StageCost,
    UnitCost,
)
from megatron_tf.formats.schedule import ScheduleRecord, ScheduleSpec
from megatron_tf.linefit import fit_line
from megatron_tf.profile.replay import calibrate_comm
from megatron_tf.profile.samples import GatheredTimings, RawIteration, durations_with_gaps

__all__ = ["RobustStat", "build_profile", "fit_line", "robust_stat"]

F, B, W = ActionKind.F, ActionKind.B, ActionKind.W

_MAD_SCALE = 1.4826  # MAD of a normal distribution -> its standard deviation
_COMM_QUANTILE = 0.1  # a P2P call's transfer time: its fast calls (peer already waiting)


@dataclass(slots=True)
class RobustStat:
    """Median and MAD of the kept samples, and the samples dropped as outliers."""

    median: float
    mad: float
    n: int
    outliers: list[float]


def robust_stat(samples: Sequence[float], outlier_mads: float = 5.0) -> RobustStat:
    """Median and MAD after dropping samples more than `outlier_mads` scaled MADs away."""
    if not samples:
        return RobustStat(0.0, 0.0, 0, [])
    med = statistics.median(samples)
    mad = statistics.median(abs(x - med) for x in samples)
    # A floor of 1% of the median: with most samples equal the MAD is 0, and a tiny jitter
    # must not count as an outlier.
    limit = max(outlier_mads * _MAD_SCALE * mad, 0.01 * abs(med))
    kept = [x for x in samples if abs(x - med) <= limit]
    dropped = [x for x in samples if abs(x - med) > limit]
    med = statistics.median(kept)
    mad = statistics.median(abs(x - med) for x in kept)
    return RobustStat(med, mad, len(kept), dropped)


def _quantile(samples: Sequence[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _durations(
    iterations_by_rank: list[list[RawIteration]], kind: str, with_gaps: bool = False
) -> dict[tuple[int, int, int], list[float]]:
    """(rank, chunk, mb) -> durations of `kind` (an `ActionKind`) over the phase's iterations."""
    out: dict[tuple[int, int, int], list[float]] = defaultdict(list)
    for rank, iterations in enumerate(iterations_by_rank):
        for _, actions in iterations:
            lengths = durations_with_gaps(actions) if with_gaps else [a[4] - a[3] for a in actions]
            for (k, chunk, mb, _, _), length in zip(actions, lengths, strict=True):
                if k == kind:
                    out[(rank, chunk, mb)].append(length)
    return out


def _backward_durations(
    iterations_by_rank: list[list[RawIteration]], with_gaps: bool
) -> tuple[dict[tuple[int, int, int], list[float]], dict[tuple[int, int, int], list[float]]]:
    """(whole backward, W alone) durations per (rank, chunk, mb); the second is empty unless
    the schedule ran W as its own action, in which case the first is B + W pairwise."""
    backward = _durations(iterations_by_rank, B, with_gaps)
    weight = _durations(iterations_by_rank, W, with_gaps)
    if not weight:
        return backward, weight
    whole = {}
    for key, bs in backward.items():
        ws = weight.get(key, [])
        if len(ws) != len(bs):
            raise ValueError(f"(rank, chunk, microbatch) {key}: {len(bs)} B but {len(ws)} W timed")
        whole[key] = [b + w for b, w in zip(bs, ws, strict=True)]
    return whole, weight


def _per_stage(
    per_mb: dict[tuple[int, int, int], list[float]],
    spec: ScheduleSpec,
    outlier_mads: float,
    label: str,
    outliers: list[dict[str, Any]],
) -> tuple[dict[tuple[int, int], RobustStat], dict[tuple[int, int, int], float]]:
    stages: dict[tuple[int, int], RobustStat] = {}
    mbs: dict[tuple[int, int, int], float] = {}
    for r in range(spec.pp):
        for c in range(spec.vpp):
            pooled: list[float] = []
            for mb in range(spec.microbatches):
                samples = per_mb.get((r, c, mb), [])
                pooled += samples
                if samples:
                    mbs[(r, c, mb)] = robust_stat(samples, outlier_mads).median
            stat = robust_stat(pooled, outlier_mads)
            stages[(r, c)] = stat
            if stat.outliers:
                outliers.append({"rank": r, "chunk": c, "value": label, "dropped": stat.outliers})
    return stages, mbs


def _comm_links(iterations_by_rank: list[list[RawIteration]]) -> list[CommLink]:
    """Per rank and direction, the transfer time of one message.

    A blocking P2P call lasts (wait for the peer) + (transfer); its fast calls are the ones
    whose peer was already waiting, so a low quantile of its durations is the transfer time.
    Calls that send activations count for `forward`, those that send gradients for `backward`.
    """
    samples: dict[tuple[int, str], list[float]] = defaultdict(list)
    for rank, iterations in enumerate(iterations_by_rank):
        for _, actions in iterations:
            for kind, _, _, start, end in actions:
                if kind in COMPUTE_KINDS or kind.startswith(WAIT_PREFIX):
                    continue
                if "send_forward" in kind:
                    samples[(rank, "forward")].append(end - start)
                if "send_backward" in kind:
                    samples[(rank, "backward")].append(end - start)
    pp = len(iterations_by_rank)
    # The last rank sends no activations and the first no gradients: reuse the other value.
    everything = [x for v in samples.values() for x in v]
    fallback = _quantile(everything, _COMM_QUANTILE)
    return [
        CommLink(
            rank=r,
            direction=d,
            seconds=_quantile(samples[(r, d)], _COMM_QUANTILE) if samples[(r, d)] else fallback,
        )
        for r in range(pp)
        for d in ("forward", "backward")
    ]


def _p2p_calls(iterations_by_rank: list[list[RawIteration]]) -> list[dict[str, Any]]:
    """Per rank and position in its program: the P2P call's name and median duration.

    A rank issues the same P2P calls in the same order every iteration, so the k-th call of
    one iteration is the k-th call of the others.
    """
    out = []
    for rank, iterations in enumerate(iterations_by_rank):
        per_iteration = [
            [a for a in actions if a[0] not in COMPUTE_KINDS and not a[0].startswith(WAIT_PREFIX)]
            for _, actions in iterations
        ]
        for k, calls in enumerate(zip(*per_iteration, strict=False)):
            durations = [end - start for _, _, _, start, end in calls]
            out.append(
                {
                    "rank": rank,
                    "index": k,
                    "call": calls[0][0],
                    "median": statistics.median(durations),
                    "min": min(durations),
                    "max": max(durations),
                }
            )
    return out


def _iteration_walls(iterations_by_rank: list[list[RawIteration]]) -> list[float]:
    """Each iteration's time: the slowest rank's (ranks start together after a barrier)."""
    count = min(len(its) for its in iterations_by_rank)
    return [max(its[i][0] for its in iterations_by_rank) for i in range(count)]


def _waits_timed(iterations_by_rank: list[list[RawIteration]]) -> bool:
    return any(
        kind.startswith(WAIT_PREFIX)
        for iterations in iterations_by_rank
        for _, actions in iterations
        for kind, *_ in actions
    )


def _iteration_overheads(iterations_by_rank: list[list[RawIteration]]) -> list[float]:
    """Per iteration: its time less the span of its timed calls (first start to last end, over
    all ranks), i.e. the schedule's set-up before the first call and Megatron's gradient
    finalization after the last one, which the DAG has no node for."""
    out = []
    for i, wall in enumerate(_iteration_walls(iterations_by_rank)):
        actions = [a for its in iterations_by_rank for a in its[i][1]]
        if not actions:
            continue
        span = max(a[4] for a in actions) - min(a[3] for a in actions)
        out.append(max(wall - span, 0.0))
    return out


def _representative_actions(
    iterations_by_rank: list[list[RawIteration]], walls: list[float]
) -> list[MeasuredAction]:
    """Every rank's actions of the iteration whose time is closest to the median."""
    med = statistics.median(walls)
    index = min(range(len(walls)), key=lambda i: abs(walls[i] - med))
    actions = []
    for rank, iterations in enumerate(iterations_by_rank):
        for kind, chunk, mb, start, end in iterations[index][1]:
            actions.append(
                MeasuredAction(
                    rank=rank, kind=kind, chunk=chunk, microbatch=mb, start=start, end=end
                )
            )
    return actions


def build_profile(
    timings: GatheredTimings,
    spec: ScheduleSpec,
    *,
    outlier_mads: float = 5.0,
    phase_ratios: dict[str, float] | None = None,
    provenance: dict[str, Any] | None = None,
    attribute_gaps: bool | None = None,
    calibrate: bool = True,
    units: dict[tuple[int, int], list[tuple[str, int]]] | None = None,
) -> Profile:
    """The profile these timings describe (see the module docstring).

    `units`: per (rank, chunk), the freezable weights' (name, parameter count), written as
    `stages[].units` (what `solve --weighting params` needs).

    `attribute_gaps` adds the schedule's own time between timed calls to the compute actions
    (`samples.durations_with_gaps`). By default it does so when no wait can hide in a gap:
    with blocking P2P (not overlap_p2p_comm), or when the waits on posted transfers were timed
    themselves (actions named WAIT_PREFIX + request, which the hooks report). With
    overlap_p2p_comm and untimed waits (older recordings), the compute times are the hooks'
    alone.

    `calibrate` sets `comm` from a replay of the representative iteration
    (`replay.calibrate_comm`); the raw transfer times stay in `measured.comm_transfer`.
    """
    if attribute_gaps is None:
        attribute_gaps = not spec.overlap_p2p_comm or _waits_timed(timings["unfrozen"])
    outliers: list[dict[str, Any]] = []
    unfrozen, frozen = timings["unfrozen"], timings["frozen"]
    g = attribute_gaps
    fwd, fwd_mb = _per_stage(_durations(unfrozen, F, g), spec, outlier_mads, "forward", outliers)
    whole, weight = _backward_durations(unfrozen, g)
    bwd, bwd_mb = _per_stage(whole, spec, outlier_mads, "backward", outliers)
    frz, frz_mb = _per_stage(
        _backward_durations(frozen, g)[0], spec, outlier_mads, "backward_frozen", outliers
    )
    wgt, wgt_mb = (
        _per_stage(weight, spec, outlier_mads, "weight_grad", outliers) if weight else ({}, {})
    )
    stages = []
    for r in range(spec.pp):
        for c in range(spec.vpp):
            b = bwd[(r, c)].median
            stages.append(
                StageCost(
                    rank=r,
                    chunk=c,
                    forward=fwd[(r, c)].median,
                    backward=b,
                    # Noise can make the frozen median exceed the full one on a tiny chunk.
                    backward_frozen=min(frz[(r, c)].median, b),
                    weight_grad=min(wgt[(r, c)].median, b) if wgt else None,
                    units=None
                    if units is None
                    else [UnitCost(name=n, params=count) for n, count in units[(r, c)]],
                )
            )
    microbatches = []
    for key in sorted(fwd_mb):
        r, c, mb = key
        b = bwd_mb.get(key)
        f_b = frz_mb.get(key)
        w = wgt_mb.get(key)
        if b is not None and f_b is not None:
            f_b = min(f_b, b)
        if b is not None and w is not None:
            w = min(w, b)
        microbatches.append(
            MicrobatchCost(
                rank=r,
                chunk=c,
                microbatch=mb,
                forward=fwd_mb[key],
                backward=b,
                backward_frozen=f_b,
                weight_grad=w,
            )
        )
    walls = _iteration_walls(unfrozen)
    wall_stat = robust_stat(walls, outlier_mads)
    frozen_walls = _iteration_walls(frozen)
    measured = Measured(
        iteration_time=wall_stat.median,
        iteration_times=walls,
        actions=_representative_actions(unfrozen, walls),
        iteration_time_mad=wall_stat.mad,
        frozen_iteration_time=statistics.median(frozen_walls),
        frozen_iteration_times=frozen_walls,
        spread={
            f"{name}[r={r},c={c}]": {"median": s.median, "mad": s.mad, "n": s.n}
            for name, table in (
                ("forward", fwd),
                ("backward", bwd),
                ("backward_frozen", frz),
                ("weight_grad", wgt),
            )
            for (r, c), s in table.items()
        },
        outliers=outliers,
        gaps_attributed=attribute_gaps,
        p2p_calls=_p2p_calls(unfrozen),
    )
    linearity = _linearity(timings, spec, phase_ratios or {}, outlier_mads, attribute_gaps)
    # Freezing does not change the finalization, so every phase's iterations measure it.
    overheads = [x for phase in timings.values() for x in _iteration_overheads(phase)]
    profile = Profile(
        schedule=ScheduleRecord.from_spec(spec),
        stages=stages,
        microbatches=microbatches,
        comm=_comm_links(unfrozen),
        iteration_overhead=robust_stat(overheads, outlier_mads).median if overheads else None,
        measured=measured,
        linearity=linearity,
        provenance=provenance or {},
    )
    if calibrate:
        profile = calibrate_comm(profile)
    return profile


def _linearity(
    timings: GatheredTimings,
    spec: ScheduleSpec,
    phase_ratios: dict[str, float],
    outlier_mads: float,
    attribute_gaps: bool,
) -> dict[str, Any] | None:
    """Per (rank, chunk): backward median at each measured ratio, the fitted line and R^2."""
    phases = sorted((ratio, name) for name, ratio in phase_ratios.items() if name in timings)
    if len(phases) <= 2:
        return None
    stages = []
    for r in range(spec.pp):
        for c in range(spec.vpp):
            ys = []
            for _, name in phases:
                per_mb = _backward_durations(timings[name], attribute_gaps)[0]
                pooled = [x for (rr, cc, _), v in per_mb.items() if (rr, cc) == (r, c) for x in v]
                ys.append(robust_stat(pooled, outlier_mads).median)
            xs = [ratio for ratio, _ in phases]
            stages.append({"rank": r, "chunk": c, "backward": ys, **fit_line(xs, ys)})
    return {"ratios": [ratio for ratio, _ in phases], "stages": stages}
