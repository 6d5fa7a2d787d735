"""Durations of every action of an iteration, from a profile or from what-if numbers.

`CostModel` is what the DAG builder reads: forward, backward, backward_frozen and the
weight-gradient part of the backward per (rank, chunk, microbatch), and the transfer time of
each P2P message.

The weight gradient W (what a split-backward kind runs as its own action) is the profile's
`weight_grad` where it was timed on its own. Otherwise it is derived: `backward -
backward_frozen` (what freezing every freezable tensor removes) on every stage but the first
virtual one; there a fully frozen chunk runs no backward at all (`backward_frozen` is 0), so W
is `backward` times the mean W share of `backward` over the other stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from megatron_tf.errors import ConfigError
from megatron_tf.formats.kinds.program import ActionKind
from megatron_tf.formats.profile import (
    MAX_SECONDS,
    PROFILE_FORMAT,
    Profile,
    StageCost,
)
from megatron_tf.formats.schedule import ScheduleRecord, ScheduleSpec

__all__ = ["CostModel", "RankCosts", "parse_costs", "synthetic_profile"]

Grid = list[list[list[float]]]
"""grid[rank][chunk][microbatch], seconds."""


@dataclass(kw_only=True, slots=True)
class CostModel:
    """Seconds per action and per message for one schedule."""

    spec: ScheduleSpec
    forward: Grid
    backward: Grid
    """Full backward, nothing frozen."""
    backward_frozen: Grid
    """Backward with every freezable tensor frozen."""
    weight: Grid
    """The weight-gradient part of `backward` (W); a fused kind's B includes it."""
    comm_forward: list[float]
    """comm_forward[r]: time of one activation message sent by rank r."""
    comm_backward: list[float]
    """comm_backward[r]: time of one gradient message sent by rank r."""
    iteration_overhead: float = 0.0
    """Seconds added to every iteration after its last action (`Profile.iteration_overhead`)."""

    def message_time(self, kind: str, src: int) -> float:
        return self.comm_forward[src] if kind == "act" else self.comm_backward[src]

    @classmethod
    def from_profile(cls, profile: Profile) -> CostModel:
        spec = profile.spec
        m = spec.microbatches

        def grid(field: str) -> Grid:
            return [
                [[float(getattr(profile.stage(r, c), field))] * m for c in range(spec.vpp)]
                for r in range(spec.pp)
            ]

        fwd, bwd, frz = grid("forward"), grid("backward"), grid("backward_frozen")
        timed: dict[tuple[int, int, int], float] = {}
        for r in range(spec.pp):
            for c in range(spec.vpp):
                w = profile.stage(r, c).weight_grad
                if w is not None:
                    timed.update({(r, c, mb): float(w) for mb in range(m)})
        for o in profile.microbatches or []:
            if o.forward is not None:
                fwd[o.rank][o.chunk][o.microbatch] = o.forward
            if o.backward is not None:
                bwd[o.rank][o.chunk][o.microbatch] = o.backward
            if o.backward_frozen is not None:
                frz[o.rank][o.chunk][o.microbatch] = o.backward_frozen
            if o.weight_grad is not None:
                timed[(o.rank, o.chunk, o.microbatch)] = o.weight_grad
        for r in range(spec.pp):
            for c in range(spec.vpp):
                for mb in range(m):
                    if frz[r][c][mb] > bwd[r][c][mb]:
                        # An override may break what the stage entry guaranteed; never let a
                        # freeze make the backward slower.
                        frz[r][c][mb] = bwd[r][c][mb]
        wgt = _weight_grid(profile, bwd, frz, timed)
        if isinstance(profile.comm, list):
            links = {(ln.rank, ln.direction): ln.seconds for ln in profile.comm}
            cf = [links[(r, "forward")] for r in range(spec.pp)]
            cb = [links[(r, "backward")] for r in range(spec.pp)]
        else:
            cf = [float(profile.comm)] * spec.pp
            cb = [float(profile.comm)] * spec.pp
        return cls(
            spec=spec,
            forward=fwd,
            backward=bwd,
            backward_frozen=frz,
            weight=wgt,
            comm_forward=cf,
            comm_backward=cb,
            iteration_overhead=float(profile.iteration_overhead or 0.0),
        )


def _weight_grid(
    profile: Profile, bwd: Grid, frz: Grid, timed: dict[tuple[int, int, int], float]
) -> Grid:
    """W per (rank, chunk, microbatch): timed where the profile says, else derived (see the
    module docstring); never more than the backward it is part of."""
    spec = profile.spec
    shares = [
        (st.backward - st.backward_frozen) / st.backward
        for st in profile.stages
        if spec.virtual_stage(st.rank, st.chunk) != 0 and st.backward > 0
    ]
    first_share = sum(shares) / len(shares) if shares else 0.0
    out: Grid = []
    for r in range(spec.pp):
        rows = []
        for c in range(spec.vpp):
            first = spec.virtual_stage(r, c) == 0
            row = []
            for mb in range(spec.microbatches):
                b = bwd[r][c][mb]
                w = timed.get((r, c, mb))
                if w is None:
                    w = b * first_share if first else b - frz[r][c][mb]
                row.append(min(float(w), b))
            rows.append(row)
        out.append(rows)
    return out


RankCosts = tuple[float, float, float]
"""(F, B, W): forward, input-gradient and weight-gradient seconds of one rank (all chunks)."""


def parse_costs(text: str, pp: int) -> list[RankCosts]:
    """`--costs F,B,W` (every rank) or `F,B,W;F,B,W;...` (one triple per rank)."""
    groups = [g for g in text.replace(" ", "").split(";") if g]
    if len(groups) not in (1, pp):
        raise ConfigError(
            f"--costs: expected one F,B,W triple or {pp} triples separated by ';', "
            f"found {len(groups)}"
        )
    triples: list[RankCosts] = []
    for i, group in enumerate(groups):
        parts = group.split(",")
        if len(parts) != 3:
            raise ConfigError(f"--costs: triple {i + 1} {group!r} must be three numbers F,B,W")
        try:
            f, b, w = (float(x) for x in parts)
        except ValueError:
            raise ConfigError(f"--costs: triple {i + 1} {group!r} is not three numbers") from None
        for name, value in zip(ActionKind, (f, b, w), strict=True):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"--costs: {name} in triple {i + 1} must be a finite number >= 0, found {value}"
                )
            if value > MAX_SECONDS:
                raise ConfigError(
                    f"--costs: {name} in triple {i + 1} must be at most {MAX_SECONDS:g} seconds, "
                    f"found {value}"
                )
        triples.append((f, b, w))
    if not any(f + b + w for f, b, w in triples):
        raise ConfigError("--costs: every cost is 0, nothing to schedule (makespan 0)")
    return triples * pp if len(triples) == 1 else triples


def synthetic_profile(spec: ScheduleSpec, costs: list[RankCosts], comm: float = 0.0) -> Profile:
    """A what-if profile: each chunk gets 1/V of its rank's F, B, W.

    backward = B + W and backward_frozen = B, except on the first virtual stage (rank 0,
    chunk 0), where a fully frozen chunk needs no backward at all (Megatron's backward_step is
    skipped when the output does not require grad), so backward_frozen = 0. A kind that runs W
    as its own action also gets `weight_grad` = W (other kinds' profiles stay as they were).
    """
    if len(costs) == 1:
        costs = costs * spec.pp
    if len(costs) != spec.pp:
        raise ConfigError(f"--costs: expected 1 or {spec.pp} triples, found {len(costs)}")
    if not math.isfinite(comm) or comm < 0:
        raise ConfigError(f"--comm must be a finite number >= 0, found {comm}")
    if comm > MAX_SECONDS:
        raise ConfigError(f"--comm must be at most {MAX_SECONDS:g} seconds, found {comm}")
    v = spec.vpp
    split = spec.schedule_kind.splits_backward
    stages = []
    for r, (f, b, w) in enumerate(costs):
        for c in range(v):
            first_virtual = spec.virtual_stage(r, c) == 0
            stages.append(
                StageCost(
                    rank=r,
                    chunk=c,
                    forward=f / v,
                    backward=(b + w) / v,
                    backward_frozen=0.0 if first_virtual else b / v,
                    weight_grad=w / v if split else None,
                )
            )
    return Profile(
        format=PROFILE_FORMAT,
        schedule=ScheduleRecord.from_spec(spec),
        stages=stages,
        comm=float(comm),
        provenance={
            "source": "synthetic",
            "costs": [list(t) for t in costs],
            "comm": comm,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
