"""Does running W on its own pay inside Megatron's interleaved order? A simulator study.

Takes Megatron's interleaved compute order (F and B per (chunk, microbatch), as the model's
`compute_order` gives it), splits each B into B (input gradient) and W (weight gradient), and
places the W's greedily, dataflow comm model, no transfer time:

- `eager`: whenever a rank's next F or B has no input yet, it runs its oldest pending W;
- `fit`: it runs a W only where the W ends before that input is known to arrive.

Both keep each rank's microbatch-chunks held from F to W within the most the interleaved order
holds on any rank from F to B (its peak activation memory), and flush the remaining W's at the
end. Printed side by side: makespans of 1F1B, zb-h1, interleaved (fused B), both placements,
and the placement's speed over interleaved and over zb-h1.

Run: .venv/bin/python scripts/bench/bench_interleaved_zero_bubble.py
"""

from __future__ import annotations

import math
from collections import deque

from megatron_tf.formats.kinds import ActionKind
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.schedule.costs import CostModel, synthetic_profile
from megatron_tf.schedule.dag import build_dag
from megatron_tf.schedule.order import compute_order
from megatron_tf.schedule.simulate import simulate

F, B, W = ActionKind.F, ActionKind.B, ActionKind.W
LAYOUTS = ((4, 2, 8), (4, 2, 16), (8, 2, 16), (4, 4, 16), (8, 4, 32))
COSTS = {"1:1:1": (1.0, 1.0, 1.0), "1:1.274:0.760": (1.0, 1.274, 0.760)}


def _peak(order: list[tuple[ActionKind, int, int]]) -> int:
    live = peak = 0
    for kind, _, _ in order:
        live += 1 if kind is F else -1
        peak = max(peak, live)
    return peak


def greedy_w(spec: ScheduleSpec, costs: tuple[float, float, float], policy: str) -> float:
    """Makespan of the interleaved order with W's placed by `policy` (see the docstring)."""
    f, b, w = (x / spec.vpp for x in costs)
    orders = compute_order(spec)
    cap = max(_peak(o) for o in orders)
    pp, stages = spec.pp, spec.stages
    end: dict[tuple[ActionKind, int, int], float] = {}  # (kind, virtual stage, mb) -> end
    pos = [0] * pp
    free = [0.0] * pp
    pending: list[deque[tuple[int, int]]] = [deque() for _ in range(pp)]
    live = [0] * pp

    def ready(rank: int) -> float | None:
        """When the next F/B's input is there (None: its producer is not scheduled yet)."""
        kind, chunk, mb = orders[rank][pos[rank]]
        v = spec.virtual_stage(rank, chunk)
        if kind is F:
            return 0.0 if v == 0 else end.get((F, v - 1, mb))
        return end.get((F, v, mb)) if v == stages - 1 else end.get((B, v + 1, mb))

    while True:
        best: tuple[float, int, str] | None = None
        for r in range(pp):
            has_next = pos[r] < len(orders[r])
            r_ready = ready(r) if has_next else None
            if has_next and orders[r][pos[r]][0] is F and live[r] >= cap:
                r_ready = None  # memory full: a W must run first
            choice: tuple[float, int, str] | None = None
            if r_ready is not None:
                choice = (max(free[r], r_ready), r, "op")
            if pending[r] and (r_ready is None or free[r] < r_ready):
                fits = r_ready is not None and free[r] + w <= r_ready
                full = has_next and orders[r][pos[r]][0] is F and live[r] >= cap
                if policy == "eager" or fits or full or not has_next:
                    choice = (free[r], r, "w")
            if choice is not None and (best is None or choice < best):
                best = choice
        if best is None:
            break
        start, r, what = best
        if what == "w":
            pending[r].popleft()
            live[r] -= 1
            free[r] = start + w
            continue
        kind, chunk, mb = orders[r][pos[r]]
        v = spec.virtual_stage(r, chunk)
        free[r] = start + (f if kind is F else b)
        end[(kind, v, mb)] = free[r]
        pos[r] += 1
        if kind is F:
            live[r] += 1
        else:
            pending[r].append((chunk, mb))
    assert all(p == len(o) for p, o in zip(pos, orders, strict=True)), "greedy deadlocked"
    return max(free)


def _makespan(kind: str, pp: int, vpp: int, m: int, costs: tuple[float, float, float]) -> float:
    spec = ScheduleSpec(kind=kind, pp=pp, vpp=vpp, microbatches=m)
    dag = build_dag(spec, CostModel.from_profile(synthetic_profile(spec, [costs])), "dataflow")
    return simulate(dag).makespan


def main() -> None:
    print(
        f"{'F:B:W':<14} {'layout':<14} {'1f1b':>8} {'zb-h1':>8} {'interl.':>8} {'eager':>8} "
        f"{'fit':>8} {'best/interl.':>12} {'best/zb-h1':>10}"
    )
    for name, costs in COSTS.items():
        for pp, vpp, m in LAYOUTS:
            spec = ScheduleSpec(kind="interleaved", pp=pp, vpp=vpp, microbatches=m)
            one = _makespan("1f1b", pp, 1, m, costs)
            zb = _makespan("zb-h1", pp, 1, m, costs)
            il = _makespan("interleaved", pp, vpp, m, costs)
            placed = {p: greedy_w(spec, costs, p) for p in ("eager", "fit")}
            best = min(placed.values())
            assert math.isfinite(best)
            print(
                f"{name:<14} {f'pp{pp} v{vpp} M{m}':<14} {one:>8.3f} {zb:>8.3f} {il:>8.3f} "
                f"{placed['eager']:>8.3f} {placed['fit']:>8.3f} {il / best:>11.3f}x "
                f"{zb / best:>9.3f}x"
            )


if __name__ == "__main__":
    main()
