"""Event simulation of a `Dag`: earliest start of every node, makespan, bubbles, critical path.

Every node starts as soon as all its predecessors ended (the rank programs are already edges
of the DAG), so one pass in topological order gives the exact schedule. The hot loop works on
flat lists; a pp=16, vpp=4, M=256 iteration simulates in a fraction of a second
(`scripts/bench/bench_simulate.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from megatron_tf.errors import ConfigError
from megatron_tf.schedule.costs import CostModel
from megatron_tf.schedule.dag import CommModel, Dag, NodeKind, build_dag

if TYPE_CHECKING:
    from megatron_tf.formats.profile import Profile

__all__ = ["RankStats", "SimResult", "Ratios", "simulate", "simulate_profile", "node_durations"]

Ratios = Mapping[tuple[int, int, int], float] | Sequence[Sequence[Sequence[float]]]
"""Freeze ratio per (rank, chunk, microbatch): {(rank, chunk, microbatch): r} or a plan's
ratios[rank][chunk][mb]; it applies to the node carrying the weight-gradient work
(`Dag.freezable_kind`: the backward, or the W of a split-backward kind)."""


@dataclass(kw_only=True, slots=True)
class RankStats:
    rank: int
    busy: float
    """Seconds of compute (forward, backward and weight-gradient actions)."""
    comm: float
    """Seconds of transfer inside blocking P2P calls (megatron comm model), not the waiting."""
    idle: float
    """Schedule span - busy: bubbles and communication (the iteration overhead excluded)."""


@dataclass(kw_only=True, slots=True)
class SimResult:
    dag: Dag
    makespan: float
    """The iteration's time: the last node's end plus `dag.iteration_overhead`."""
    start: list[float]
    end: list[float]
    duration: list[float]
    """Durations used (the freezable nodes shortened by the ratios)."""
    ratio: list[float]
    """Freeze ratio applied to each node (0 for nodes of other kinds than the freezable)."""
    per_rank: list[RankStats]
    bubble_fraction: float
    """Mean over ranks of idle / schedule span (the span is the makespan less the overhead)."""
    critical_path: list[int] = field(default_factory=list)

    @property
    def span(self) -> float:
        """First node's start to last node's end: the makespan less the iteration overhead."""
        return self.makespan - self.dag.iteration_overhead

    @property
    def critical_path_names(self) -> list[str]:
        return [self.dag.nodes[i].name for i in self.critical_path]

    def to_dict(self) -> dict[str, Any]:
        """The `simulate --json` object."""
        return {
            "schedule": self.dag.spec.to_dict(),
            "comm_model": self.dag.comm_model,
            "makespan": self.makespan,
            "iteration_overhead": self.dag.iteration_overhead,
            "bubble_fraction": self.bubble_fraction,
            "per_rank": [
                {"rank": s.rank, "busy": s.busy, "comm": s.comm, "idle": s.idle}
                for s in self.per_rank
            ],
            "critical_path": self.critical_path_names,
        }


def _ratio_lookup(dag: Dag, ratios: Ratios | None) -> list[float]:
    n = len(dag.nodes)
    out = [0.0] * n
    if ratios is None:
        return out
    spec = dag.spec
    nested = not isinstance(ratios, Mapping)
    if nested and (
        len(ratios) != spec.pp
        or any(len(rr) != spec.vpp for rr in ratios)
        or any(len(rc) != spec.microbatches for rr in ratios for rc in rr)
    ):
        raise ConfigError(
            f"ratios: expected shape [pp={spec.pp}][vpp={spec.vpp}][M={spec.microbatches}]"
        )
    freezable = dag.freezable_kind
    for i, node in enumerate(dag.nodes):
        if node.kind is not freezable:
            continue
        if nested:
            r = float(ratios[node.rank][node.chunk][node.microbatch])  # type: ignore[index]
        else:
            r = float(ratios.get((node.rank, node.chunk, node.microbatch), 0.0))  # type: ignore[union-attr]
        if not 0.0 <= r <= 1.0:  # also rejects NaN
            raise ConfigError(
                f"ratios: {node.name} has freeze ratio {r}, expected a value in [0, 1]"
            )
        out[i] = r
    return out


def node_durations(dag: Dag, ratios: Ratios | None = None) -> tuple[list[float], list[float]]:
    """(durations with the freeze ratios applied, the ratio of each node)."""
    rat = _ratio_lookup(dag, ratios)
    dur = [d - r * s for d, r, s in zip(dag.duration, rat, dag.saving, strict=True)]
    return dur, rat


def simulate(dag: Dag, ratios: Ratios | None = None) -> SimResult:
    """Earliest-start schedule of `dag` with the freezable nodes shortened by `ratios`."""
    dur, rat = node_durations(dag, ratios)
    n = len(dur)
    start = [0.0] * n
    end = [0.0] * n
    preds = dag.preds
    for i in dag.order:
        t = 0.0
        for p in preds[i]:
            e = end[p]
            if e > t:
                t = e
        start[i] = t
        end[i] = t + dur[i]
    span = max(end) if n else 0.0
    makespan = span + dag.iteration_overhead

    busy = [0.0] * dag.spec.pp
    comm = [0.0] * dag.spec.pp
    for prog_rank, program in enumerate(dag.rank_program):
        for i in program:
            if dag.nodes[i].kind is NodeKind.P2P:
                comm[prog_rank] += dur[i]
            else:
                busy[prog_rank] += dur[i]
    per_rank = [
        RankStats(rank=r, busy=busy[r], comm=comm[r], idle=span - busy[r])
        for r in range(dag.spec.pp)
    ]
    bubble = sum(s.idle for s in per_rank) / (len(per_rank) * span) if span > 0 else 0.0
    result = SimResult(
        dag=dag,
        makespan=makespan,
        start=start,
        end=end,
        duration=dur,
        ratio=rat,
        per_rank=per_rank,
        bubble_fraction=bubble,
    )
    result.critical_path = _critical_path(dag, start, end, dur)
    return result


def _critical_path(dag: Dag, start: list[float], end: list[float], dur: list[float]) -> list[int]:
    """Walk back from the last node to end through predecessors that end exactly at its start.

    Among tied predecessors, prefer one on the same rank (the rank was busy, not waiting).
    Zero-length P2P nodes are kept out of the returned names only if they carry no time.
    """
    if not end:
        return []
    cur = max(range(len(end)), key=lambda i: (end[i], -i))
    path = [cur]
    while True:
        s = start[cur]
        if s <= 0.0:
            break
        best = -1
        rank = dag.nodes[cur].rank
        tol = 1e-12 * max(1.0, s)
        for p in dag.preds[cur]:
            if abs(end[p] - s) <= tol and (best < 0 or dag.nodes[p].rank == rank):
                best = p
        if best < 0:
            break
        path.append(best)
        cur = best
    path.reverse()
    return [i for i in path if dag.nodes[i].kind is not NodeKind.P2P or dur[i] > 0]


def simulate_profile(
    profile: Profile, comm_model: CommModel = "megatron", ratios: Ratios | None = None
) -> SimResult:
    """Build the profile's DAG and simulate it (what `timelyfreeze simulate` runs)."""

    dag = build_dag(profile.spec, CostModel.from_profile(profile), comm_model)
    return simulate(dag, ratios)
