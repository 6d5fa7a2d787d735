"""DAG builder and simulator: closed forms, comm models, freeze ratios, critical path."""

from __future__ import annotations

import random

import pytest

from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.schedule.costs import CostModel, parse_costs, synthetic_profile
from megatron_tf.schedule.dag import NodeKind, build_dag
from megatron_tf.schedule.simulate import SimResult, simulate

TOL = 1e-9


def _sim(
    spec: ScheduleSpec,
    costs: str = "1,1,1",
    comm: float = 0.0,
    model: str = "megatron",
    ratios: object = None,
) -> SimResult:
    profile = synthetic_profile(spec, parse_costs(costs, spec.pp), comm)
    return simulate(build_dag(spec, CostModel.from_profile(profile), model), ratios)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["megatron", "dataflow"])
@pytest.mark.parametrize("pp", [2, 3, 4, 8])
@pytest.mark.parametrize("m", [1, 2, 3, 7, 16])
def test_1f1b_closed_form(model: str, pp: int, m: int) -> None:
    # F=1, B=1, W=1 per rank, no communication: (M+P-1)(F+B+W) and bubble (P-1)/(M+P-1).
    res = _sim(ScheduleSpec(kind="1f1b", pp=pp, microbatches=m), model=model)
    assert res.makespan == pytest.approx((m + pp - 1) * 3, abs=TOL)
    assert res.bubble_fraction == pytest.approx((pp - 1) / (m + pp - 1), abs=TOL)
    for stats in res.per_rank:
        assert stats.busy == pytest.approx(3 * m, abs=TOL)


@pytest.mark.parametrize("model", ["megatron", "dataflow"])
@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("pp", [2, 3, 4, 6])
@pytest.mark.parametrize("vpp", [2, 3, 4])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_interleaved_closed_form(model: str, overlap: bool, pp: int, vpp: int, k: int) -> None:
    """Group size P, M a multiple of P, equal costs and zero communication.

    dataflow: bubble (P-1)/(V*M+P-1), the textbook result. megatron: with zero-time messages
    the rendezvous of the blocking calls never delays a rank in these balanced cases, so the
    megatron model gives exactly the same makespan, with and without overlap_p2p_comm.
    """
    m = k * pp
    spec = ScheduleSpec(
        kind="interleaved", pp=pp, vpp=vpp, microbatches=m, overlap_p2p_comm=overlap
    )
    res = _sim(spec, model=model)
    assert res.bubble_fraction == pytest.approx((pp - 1) / (vpp * m + pp - 1), abs=TOL)
    # Each chunk runs 1/V of F+B+W: makespan = (V*M + P - 1) * 3 / V.
    assert res.makespan == pytest.approx((vpp * m + pp - 1) * 3 / vpp, abs=TOL)


def test_cli_example_values() -> None:
    assert _sim(ScheduleSpec(kind="1f1b", pp=8, microbatches=16)).makespan == pytest.approx(69)
    res = _sim(ScheduleSpec(kind="interleaved", pp=4, vpp=2, microbatches=8), model="dataflow")
    assert res.makespan == pytest.approx(28.5, abs=TOL)
    assert res.bubble_fraction == pytest.approx(3 / 19, abs=TOL)


def test_megatron_comm_model_with_transfer_time() -> None:
    """With 0.1 s per message the two models part: the blocking calls serialise transfers.

    dataflow puts 0.1 s on each data edge only; megatron makes each rank sit in every blocking
    call for the transfer and wait for its peer to post. Values for pp=4, vpp=2, M=8, F,B,W=1.
    """
    spec = ScheduleSpec(kind="interleaved", pp=4, vpp=2, microbatches=8)
    mega = _sim(spec, comm=0.1).makespan
    flow = _sim(spec, comm=0.1, model="dataflow").makespan
    assert flow == pytest.approx(29.9, abs=TOL)
    assert mega == pytest.approx(31.0, abs=TOL)
    one = ScheduleSpec(kind="1f1b", pp=4, microbatches=8)
    assert _sim(one, comm=0.1, model="dataflow").makespan == pytest.approx(34.6, abs=TOL)
    assert _sim(one, comm=0.1).makespan == pytest.approx(34.9, abs=TOL)


def test_megatron_never_faster_than_dataflow() -> None:
    """The megatron DAG contains every dataflow edge (through the calls), plus rendezvous."""
    rng = random.Random(7)
    for _ in range(40):
        pp = rng.choice([2, 3, 4])
        kind = rng.choice(["1f1b", "interleaved"])
        m = pp * rng.choice([1, 2]) + rng.choice([0, pp])
        vpp = 1 if kind == "1f1b" else rng.choice([2, 3])
        overlap = kind == "interleaved" and rng.random() < 0.5
        spec = ScheduleSpec(kind=kind, pp=pp, vpp=vpp, microbatches=m, overlap_p2p_comm=overlap)
        costs = ";".join(
            ",".join(f"{rng.uniform(0.2, 2):.3f}" for _ in range(3)) for _ in range(pp)
        )
        comm = rng.choice([0.0, 0.05])
        mega = _sim(spec, costs, comm).makespan
        flow = _sim(spec, costs, comm, "dataflow").makespan
        assert mega >= flow - TOL, (spec, costs, comm)


def test_rendezvous_couples_unbalanced_ranks() -> None:
    # A slow backward on rank 2 with zero-time messages: the blocking calls make its neighbours
    # wait where dataflow lets them run ahead.
    spec = ScheduleSpec(kind="interleaved", pp=4, vpp=2, microbatches=8)
    costs = "1,1,1;1,1,1;1,2,1;1,1,1"
    assert _sim(spec, costs).makespan == pytest.approx(36.0, abs=TOL)
    assert _sim(spec, costs, model="dataflow").makespan == pytest.approx(35.5, abs=TOL)


def test_full_freeze_equals_frozen_costs() -> None:
    """Ratio 1 everywhere = a profile whose backward is backward_frozen."""
    spec = ScheduleSpec(kind="interleaved", pp=3, vpp=2, microbatches=6)
    profile = synthetic_profile(spec, parse_costs("1,2,3", 3), 0.01)
    cm = CostModel.from_profile(profile)
    dag = build_dag(spec, cm)
    ones = [[[1.0] * 6 for _ in range(2)] for _ in range(3)]
    frozen = CostModel.from_profile(profile)
    frozen.backward = frozen.backward_frozen
    assert simulate(dag, ones).makespan == pytest.approx(
        simulate(build_dag(spec, frozen)).makespan, abs=TOL
    )
    # The keyed form of the ratios is the same thing.
    keyed = {(r, c, m): 1.0 for r in range(3) for c in range(2) for m in range(6)}
    assert simulate(dag, keyed).makespan == pytest.approx(simulate(dag, ones).makespan, abs=TOL)


def test_freezing_one_backward_shortens_only_that_node() -> None:
    spec = ScheduleSpec(kind="1f1b", pp=2, microbatches=2)
    dag = build_dag(spec, CostModel.from_profile(synthetic_profile(spec, [(1, 1, 2)])))
    res = simulate(dag, {(1, 0, 0): 0.5})
    b = dag.backward_index()[(1, 0, 0)]
    assert res.duration[b] == pytest.approx(3 - 0.5 * 2)
    assert sum(res.duration) == pytest.approx(sum(dag.duration) - 1.0)


def test_ratio_out_of_range_is_a_user_error() -> None:
    from megatron_tf.errors import ConfigError

    spec = ScheduleSpec(kind="1f1b", pp=2, microbatches=2)
    dag = build_dag(spec, CostModel.from_profile(synthetic_profile(spec, [(1, 1, 1)])))
    with pytest.raises(ConfigError, match=r"B\[r=0,c=0,m=1\] has freeze ratio 1.5"):
        simulate(dag, {(0, 0, 1): 1.5})
    with pytest.raises(ConfigError, match="expected shape"):
        simulate(dag, [[[0.0, 0.0]]])


@pytest.mark.parametrize("model", ["megatron", "dataflow"])
def test_critical_path_is_tight(model: str) -> None:
    spec = ScheduleSpec(kind="interleaved", pp=4, vpp=2, microbatches=8)
    res = _sim(spec, "1,1,1;1,2,1;1,1,1;1,1,2", comm=0.05, model=model)
    path = res.critical_path
    assert sum(res.duration[i] for i in path) == pytest.approx(res.makespan, abs=1e-9)
    assert res.start[path[0]] == 0.0
    assert res.end[path[-1]] == pytest.approx(res.makespan)
    for a, b in zip(path, path[1:], strict=False):
        assert res.end[a] <= res.start[b] + 1e-12
    assert res.critical_path_names[0] == "F[r=0,c=0,m=0]"


def test_every_node_respects_its_predecessors() -> None:
    spec = ScheduleSpec(kind="interleaved", pp=3, vpp=3, microbatches=6, overlap_p2p_comm=True)
    res = _sim(spec, comm=0.2)
    dag = res.dag
    for i, preds in enumerate(dag.preds):
        for p in preds:
            assert res.start[i] >= res.end[p] - 1e-12
    # Each rank's program runs one node at a time.
    for program in dag.rank_program:
        for a, b in zip(program, program[1:], strict=False):
            assert res.start[b] >= res.end[a] - 1e-12
    kinds = {n.kind for n in dag.nodes}
    assert kinds == {NodeKind.FORWARD, NodeKind.BACKWARD, NodeKind.P2P}


def test_node_names() -> None:
    spec = ScheduleSpec(kind="1f1b", pp=2, microbatches=1)
    dag = build_dag(spec, CostModel.from_profile(synthetic_profile(spec, [(1, 1, 1)])))
    names = [dag.nodes[i].name for i in dag.rank_program[1]]
    assert names == ["P2P[r=1,#0:recv_forward]", "F[r=1,c=0,m=0]", "B[r=1,c=0,m=0]",
                     "P2P[r=1,#3:send_backward]"]  # fmt: skip
