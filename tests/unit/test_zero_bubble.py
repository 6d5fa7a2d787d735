"""The zb-h1 schedule kind: its order, its P2P calls, its closed forms and its memory bound.

Goldens are written out from the rule in `formats/kinds/zb_h1.py`, rank by rank: rank s warms
up with p-s-1 forwards as 1F1B does, then alternates F and B, deferring the W of its first s
rounds; every later round runs the W of the microbatch s rounds older; the s deferred W's end
the iteration.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from megatron_tf.errors import ConfigError
from megatron_tf.formats.kinds import ActionKind, get_kind, kind_names
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.schedule.costs import CostModel, synthetic_profile
from megatron_tf.schedule.dag import NodeKind, build_dag
from megatron_tf.schedule.order import (
    Compute,
    P2PCall,
    compute_order,
    format_order,
    parse_order,
    rank_programs,
)
from megatron_tf.schedule.simulate import simulate

F, B, W = ActionKind.F, ActionKind.B, ActionKind.W

GOLDEN = {
    ScheduleSpec(kind="zb-h1", pp=4, microbatches=6): [
        # warm-up 3, no W deferred: every steady round is F, B, W (1F1B's fused backward)
        "0F0,0F1,0F2,0F3,0B0,0W0,0F4,0B1,0W1,0F5,0B2,0W2,0B3,0W3,0B4,0W4,0B5,0W5",
        # warm-up 2, one W deferred to the end
        "0F0,0F1,0F2,0B0,0F3,0B1,0W0,0F4,0B2,0W1,0F5,0B3,0W2,0B4,0W3,0B5,0W4,0W5",
        "0F0,0F1,0B0,0F2,0B1,0F3,0B2,0W0,0F4,0B3,0W1,0F5,0B4,0W2,0B5,0W3,0W4,0W5",
        # no warm-up, three W's deferred
        "0F0,0B0,0F1,0B1,0F2,0B2,0F3,0B3,0W0,0F4,0B4,0W1,0F5,0B5,0W2,0W3,0W4,0W5",
    ],
    # fewer microbatches than stages: rank 0 forwards everything in its warm-up
    ScheduleSpec(kind="zb-h1", pp=3, microbatches=2): [
        "0F0,0F1,0B0,0W0,0B1,0W1",
        # one warm-up forward, one deferring round, the cool-down round's W is microbatch 0's
        "0F0,0F1,0B0,0B1,0W0,0W1",
        "0F0,0B0,0F1,0B1,0W0,0W1",
    ],
}


@pytest.mark.parametrize("spec", list(GOLDEN), ids=lambda s: s.describe())
def test_golden_compute_order(spec: ScheduleSpec) -> None:
    got = [format_order(rank) for rank in compute_order(spec)]
    assert got == GOLDEN[spec]
    assert parse_order(got[1]) == compute_order(spec)[1]


def test_calls_of_a_middle_rank() -> None:
    # pp 3, M 4, rank 1: warm-up 1, one deferring round (1F1B's calls), one round with its W
    # before the fused gradient send, the last steady round sends first (the previous rank
    # already waits in recv_backward), the cool-down, the deferred W.
    ops = rank_programs(ScheduleSpec(kind="zb-h1", pp=3, microbatches=4))[1]
    text = [op.name if isinstance(op, P2PCall) else f"{op.kind}{op.microbatch}" for op in ops]
    assert text == [
        "recv_forward", "F0", "send_forward",
        "recv_forward",
        "F1", "send_forward_recv_backward", "B0", "send_backward_recv_forward",
        "F2", "send_forward_recv_backward", "B1", "W0", "send_backward_recv_forward",
        "F3", "send_forward_recv_backward", "B2", "send_backward", "W1",
        "recv_backward", "B3", "send_backward", "W2",
        "W3",
    ]  # fmt: skip
    assert all(op.blocking for op in ops if isinstance(op, P2PCall))


def _specs() -> list[ScheduleSpec]:
    return [
        ScheduleSpec(kind="zb-h1", pp=pp, microbatches=m)
        for pp in (2, 3, 4, 5)
        for m in range(1, 11)
    ]


def test_every_input_arrives_before_it_is_used_and_w_follows_its_b() -> None:
    for spec in _specs():
        for rank, ops in enumerate(rank_programs(spec)):
            have: set[tuple[str, int, int]] = set()
            done: set[tuple[ActionKind, int]] = set()
            for op in ops:
                if isinstance(op, P2PCall):
                    have.update((m.kind, m.stage, m.microbatch) for m in op.recvs)
                    continue
                assert isinstance(op, Compute)
                v, mb = rank, op.microbatch
                if op.kind is F and v > 0:
                    assert ("act", v - 1, mb) in have, (spec, rank, op)
                if op.kind is B and v < spec.pp - 1:
                    assert ("grad", v + 1, mb) in have, (spec, rank, op)
                if op.kind is W:
                    assert (B, mb) in done, (spec, rank, op)
                done.add((op.kind, mb))
            assert done == {(k, m) for k in (F, B, W) for m in range(spec.microbatches)}
            # weight gradients run in microbatch order (they accumulate into one buffer)
            ws = [op.microbatch for op in ops if isinstance(op, Compute) and op.kind is W]
            assert ws == sorted(ws)


def _in_flight_peak(order: list[tuple[ActionKind, int, int]], release: ActionKind) -> int:
    live = peak = 0
    for kind, _, _ in order:
        if kind is F:
            live += 1
            peak = max(peak, live)
        elif kind is release:
            live -= 1
    return peak


def test_memory_bound_peak_over_ranks_is_1f1bs() -> None:
    """A microbatch holds activations from its F until its W (1F1B: until its B)."""
    for pp, m in itertools.product((2, 3, 4, 6, 8), (1, 2, 3, 5, 8, 16)):
        zb = compute_order(ScheduleSpec(kind="zb-h1", pp=pp, microbatches=m))
        ob = compute_order(ScheduleSpec(kind="1f1b", pp=pp, microbatches=m))
        zb_peaks = [_in_flight_peak(r, W) for r in zb]
        ob_peaks = [_in_flight_peak(r, B) for r in ob]
        assert zb_peaks == [min(pp, m)] * pp, (pp, m)
        assert ob_peaks == [min(pp - s, m) for s in range(pp)], (pp, m)
        assert max(zb_peaks) == max(ob_peaks)


def _makespan(kind: str, pp: int, m: int, costs: tuple[float, float, float], model: str) -> float:
    spec = ScheduleSpec(kind=kind, pp=pp, microbatches=m)
    dag = build_dag(spec, CostModel.from_profile(synthetic_profile(spec, [costs])), model)
    return simulate(dag).makespan


_COSTS = list(itertools.product((0.5, 1.0, 2.0), (0.5, 1.0, 1.274), (0.25, 0.76, 1.0, 2.0)))


@pytest.mark.parametrize(("pp", "m"), [(2, 2), (2, 5), (3, 3), (4, 8), (5, 11), (6, 9)])
def test_closed_form_makespan(pp: int, m: int) -> None:
    """M >= p, uniform costs, no transfer time.

    dataflow: M(F+B+W) + (p-1) max(F, B, F+B-W) for every F, B, W, i.e. the bubble
    (p-1)(F+B-W) when W <= min(F, B); megatron (blocking calls meet their peers): the same
    whenever W <= F. 1F1B: (M+p-1)(F+B+W) in both.
    """
    for f, b, w in _COSTS:
        closed = m * (f + b + w) + (pp - 1) * max(f, b, f + b - w)
        assert _makespan("zb-h1", pp, m, (f, b, w), "dataflow") == pytest.approx(closed, abs=1e-9)
        if w <= f:
            got = _makespan("zb-h1", pp, m, (f, b, w), "megatron")
            assert got == pytest.approx(closed, abs=1e-9), (f, b, w)
        for model in ("dataflow", "megatron"):
            got = _makespan("1f1b", pp, m, (f, b, w), model)
            assert got == pytest.approx((m + pp - 1) * (f + b + w), abs=1e-9)


def test_speed_over_1f1b_at_one_one_one() -> None:
    speed = {
        (pp, m): _makespan("1f1b", pp, m, (1, 1, 1), "megatron")
        / _makespan("zb-h1", pp, m, (1, 1, 1), "megatron")
        for pp, m in ((4, 8), (8, 16))
    }
    assert speed[(4, 8)] == pytest.approx(33 / 27)
    assert speed[(8, 16)] == pytest.approx(69 / 55)


def test_dag_has_w_nodes_and_is_acyclic() -> None:
    spec = ScheduleSpec(kind="zb-h1", pp=4, microbatches=8)
    cm = CostModel.from_profile(synthetic_profile(spec, [(1.0, 1.274, 0.76)]))
    for model in ("megatron", "dataflow"):
        dag = build_dag(spec, cm, model)  # topological_sort raises on a cycle
        assert len(dag.order) == len(dag.nodes)
        w = [i for i, n in enumerate(dag.nodes) if n.kind is NodeKind.WEIGHT]
        b = [i for i, n in enumerate(dag.nodes) if n.kind is NodeKind.BACKWARD]
        assert len(w) == len(b) == 4 * 8
        assert dag.freezable_kind is NodeKind.WEIGHT
        assert [dag.duration[i] for i in w] == pytest.approx([0.76] * len(w))
        assert [dag.duration[i] for i in b] == pytest.approx([1.274] * len(b))
        # freezing removes W work only, all of it at ratio 1
        assert all(dag.saving[i] == pytest.approx(0.76) for i in w)
        assert all(dag.saving[i] == 0 for i in b)


def test_registry() -> None:
    assert kind_names() == ("1f1b", "interleaved", "zb-h1")
    zb = get_kind("zb-h1")
    assert zb.splits_backward and zb.freezable_action is W and not zb.chunked
    assert not get_kind("1f1b").splits_backward and get_kind("interleaved").chunked
    spec = ScheduleSpec(kind="zb-h1", pp=4, microbatches=8)
    assert spec.actions == 3 * 4 * 8
    assert spec.describe() == "zb-h1 pp=4 M=8"
    assert spec.group_size == 4
    with pytest.raises(ConfigError, match="the zb-h1 schedule has one chunk per rank"):
        ScheduleSpec(kind="zb-h1", pp=4, vpp=2, microbatches=8)
    with pytest.raises(ConfigError, match="--overlap-p2p-comm applies to the interleaved"):
        ScheduleSpec(kind="zb-h1", pp=4, microbatches=8, overlap_p2p_comm=True)
    with pytest.raises(ConfigError, match="expected one of 1f1b, interleaved, zb-h1"):
        ScheduleSpec(kind="zb", pp=4, microbatches=8)


def _zb_iteration(spec: ScheduleSpec, rank: int, costs: dict[ActionKind, float], wall: float):
    t, actions = 0.0, []
    for kind, chunk, mb in compute_order(spec)[rank]:
        actions.append((kind, chunk, mb, t, t + costs[kind]))
        t += costs[kind]
    return (wall, actions)


def test_profile_of_a_split_backward_run_measures_w_on_its_own() -> None:
    from megatron_tf.profile.stats import build_profile

    spec = ScheduleSpec(kind="zb-h1", pp=2, microbatches=4)
    phases = {
        # frozen: W keeps only the weight gradients no freeze touches (norms, biases)
        phase: [[_zb_iteration(spec, r, {F: 2.0, B: 1.5, W: w}, 20.0)] * 3 for r in range(2)]
        for phase, w in (("unfrozen", 1.0), ("frozen", 0.1))
    }
    profile = build_profile(phases, spec, calibrate=False)
    for st in profile.stages:
        assert (st.forward, st.backward, st.weight_grad) == pytest.approx((2.0, 2.5, 1.0))
        assert st.backward_frozen == pytest.approx(1.6)
    dag = build_dag(spec, CostModel.from_profile(profile), "dataflow")
    for i, node in enumerate(dag.nodes):
        if node.kind is NodeKind.WEIGHT:
            # freezing removes what freezing every tensor removed: 0.9 of W's 1.0
            assert (dag.duration[i], dag.saving[i]) == pytest.approx((1.0, 0.9))
        elif node.kind is NodeKind.BACKWARD:
            assert (dag.duration[i], dag.saving[i]) == pytest.approx((1.5, 0.0))


def test_profiles_without_weight_grad_derive_w() -> None:
    """backward - backward_frozen, and on the first virtual stage (frozen backward 0) the W
    share of the other stages; a 1F1B profile planned as zb-h1 gets the same W's."""
    costs = [(1.0, 1.0, 0.5), (1.0, 2.0, 1.0), (1.0, 1.0, 1.0)]
    one_f_one_b = ScheduleSpec(kind="1f1b", pp=3, microbatches=3)
    profile = synthetic_profile(one_f_one_b, costs)
    assert all(st.weight_grad is None for st in profile.stages)  # 1F1B profiles as before
    weight = CostModel.from_profile(profile).weight
    share = (1 / 3 + 1 / 2) / 2
    assert [weight[r][0][0] for r in range(3)] == pytest.approx([1.5 * share, 1.0, 1.0])
    zb = synthetic_profile(ScheduleSpec(kind="zb-h1", pp=3, microbatches=3), costs)
    assert [st.weight_grad for st in zb.stages] == pytest.approx([0.5, 1.0, 1.0])


def _lp_dag(spec: ScheduleSpec, costs: list[tuple[float, float, float]], model: str, comm: float):
    profile = synthetic_profile(spec, (costs * spec.pp)[: spec.pp], comm=comm)
    return build_dag(spec, CostModel.from_profile(profile), model)


_UNEVEN = [(1.0, 1.5, 0.8), (0.5, 1.0, 0.5), (1.2, 0.7, 0.6), (0.8, 2.0, 1.1)]


@pytest.mark.parametrize("model", ["megatron", "dataflow"])
@pytest.mark.parametrize(
    ("costs", "comm"), [([(1.0, 1.0, 1.0)], 0.0), (_UNEVEN, 0.05)], ids=["uniform", "uneven"]
)
def test_lp_freezes_only_w_on_the_critical_path_and_the_simulator_agrees(
    model: str, costs: list, comm: float
) -> None:
    from megatron_tf.solve.critical_path import evaluate
    from megatron_tf.solve.lp import SolverConfig, solve_lp

    dag = _lp_dag(ScheduleSpec(kind="zb-h1", pp=4, microbatches=8), costs, model, comm)
    zero = solve_lp(dag, SolverConfig(max_freeze_ratio=0.0, comm_model=model))
    assert zero.makespan == zero.baseline_makespan == simulate(dag).makespan
    assert not zero.ratios.any()
    result = solve_lp(dag, SolverConfig(max_freeze_ratio=0.3, comm_model=model))
    sim = simulate(dag, result.ratios.tolist())
    assert sim.makespan == pytest.approx(result.makespan, rel=1e-6)
    assert result.lp_makespan <= sim.makespan * (1 + 1e-9)
    assert result.makespan < result.baseline_makespan
    frozen = np.flatnonzero(result.node_ratios > 1e-7)
    assert frozen.size and all(dag.nodes[i].kind is NodeKind.WEIGHT for i in frozen)
    # each frozen W lies on the critical path: no slack to unfreeze it for free
    slack = evaluate(dag, result.node_ratios).slack(dag)
    assert np.all(slack[frozen] <= 1e-6 * result.makespan)
    assert result.ratios.mean(axis=2).max() <= 0.3 + 1e-9


def test_lp_optimum_against_grid_search_with_the_simulator() -> None:
    """No LP: every ratio vector of the W's on a 1/2 grid, evaluated by the simulator."""
    from megatron_tf.solve.lp import SolverConfig, solve_lp

    spec = ScheduleSpec(kind="zb-h1", pp=2, microbatches=2)
    dag = _lp_dag(spec, [(1.0, 1.0, 1.5), (0.5, 1.5, 1.0)], "megatron", 0.1)
    best = np.inf
    for values in itertools.product((0.0, 0.5, 1.0), repeat=4):
        ratios = [[list(values[0:2])], [list(values[2:4])]]
        if any(sum(chunk) > 1.0 + 1e-12 for rank in ratios for chunk in rank):
            continue
        best = min(best, simulate(dag, ratios).makespan)
    result = solve_lp(dag, SolverConfig(max_freeze_ratio=0.5))
    assert result.lp_makespan <= best * (1 + 1e-9)


def test_cli_plans_a_1f1b_profile_for_zb_h1(tmp_path) -> None:
    """The real CLI: a 1F1B profile solved and simulated as zb-h1; a bad kind is one line."""
    import json
    import subprocess
    import sys

    from typer.testing import CliRunner

    from megatron_tf.cli import app

    runner = CliRunner()
    profile, plan = str(tmp_path / "p.json"), str(tmp_path / "plan.json")
    flags = ["--pp", "4", "--microbatches", "8", "--costs", "1,1,1"]
    made = runner.invoke(
        app, ["profile", "--synthetic", "--schedule", "1f1b", *flags, "-o", profile]
    )
    assert made.exit_code == 0, made.output
    solved = runner.invoke(app, ["solve", profile, "--schedule", "zb-h1", "-o", plan, "--json"])
    assert solved.exit_code == 0, solved.output
    shown = runner.invoke(
        app, ["simulate", "--profile", profile, "--schedule", "zb-h1", "--plan", plan, "--json"]
    )
    assert shown.exit_code == 0, shown.output
    out = json.loads(shown.stdout)
    assert out["schedule"]["kind"] == "zb-h1"
    assert out["baseline_makespan"] == pytest.approx(27.0)  # M(F+B+W) + (p-1)(F+B-W)
    assert out["makespan"] < 27.0
    cmd = [sys.executable, "-m", "megatron_tf", "solve", profile, "--schedule", "zb"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "expected one of 1f1b, interleaved, zb-h1" in lines[0], proc.stderr
