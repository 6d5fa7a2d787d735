"""The profiler's measurement rounds: nothing changes the weights; frozen means frozen;
unfrozen means stock megatron-core, even right after a frozen iteration."""

from __future__ import annotations

import pytest
from harness import run_torchrun

from megatron_tf.schedule.order import compute_order
from megatron_tf.formats.schedule import ScheduleSpec


@pytest.mark.parametrize(
    ("pp", "vpp", "linearity", "phase_order"),
    [
        pytest.param(2, 1, True, "interleaved", id="1f1b-pp2-linearity"),
        pytest.param(2, 2, False, "interleaved", id="interleaved-pp2"),
        pytest.param(2, 1, False, "sequential", id="1f1b-pp2-sequential"),
    ],
)
def test_measure_rounds_interleave_phases_and_leave_the_model_stock(
    pp: int, vpp: int, linearity: bool, phase_order: str
) -> None:
    m = 4
    args = ["--pp", pp, "--vpp", vpp, "--microbatches", m, "--phase-order", phase_order]
    args += ["--linearity"] if linearity else []
    results = run_torchrun("profile_phases", pp, args, timeout=400)
    spec = ScheduleSpec(
        kind="1f1b" if vpp == 1 else "interleaved",
        pp=pp,
        vpp=vpp,
        microbatches=m,
        overlap_p2p_comm=vpp > 1,
    )
    order = compute_order(spec)
    phases = ["unfrozen", "frozen"] + (
        ["ratio_0.25", "ratio_0.5", "ratio_0.75"] if linearity else []
    )
    for rank, res in enumerate(results):
        rounds = res["rounds"]
        if phase_order == "interleaved":
            # Every round runs each phase once, and the order rotates.
            assert len(rounds) == 2 and all(sorted(r) == sorted(phases) for r in rounds)
            assert rounds[0] != rounds[1] and rounds[0][0] == "unfrozen", rounds
        else:
            assert rounds == [[name] * 2 for name in phases]
        assert res["order"] == [name for r in rounds for name in r], rank
        # No optimizer step: every parameter is bit-identical after all the rounds.
        assert res["weights_unchanged"], rank
        # Between iterations nothing of a freeze runtime is left behind.
        assert all(res["stock_after"]), (rank, res["stock_after"])
        # An unfrozen iteration (interleaved: one of them right after a frozen one) computed
        # exactly the gradients stock megatron-core computes on the same batches.
        assert res["unfrozen_equal_stock"] == [True, True], rank
        # A fully frozen iteration produced no weight gradient at all.
        assert res["frozen_max_unit_grad"] == [0.0, 0.0], rank
        # Each measured iteration timed exactly the schedule's forwards and backwards.
        for phase in phases:
            assert len(res["actions"][phase]) == 2, phase
            for timed in res["actions"][phase]:
                assert timed == sorted(order[rank]), (rank, phase)
            assert all(w > 0 for w in res["walls"][phase])
