"""The profiler's measurement iterations: nothing changes the weights; frozen means frozen."""

from __future__ import annotations

import pytest
from harness import run_torchrun

from megatron_tf.schedule.order import compute_order
from megatron_tf.schedule.spec import ScheduleSpec


@pytest.mark.parametrize(
    ("pp", "vpp"), [pytest.param(2, 1, id="1f1b-pp2"), pytest.param(2, 2, id="interleaved-pp2")]
)
def test_measure_phases_leave_weights_untouched(pp: int, vpp: int) -> None:
    m = 4
    results = run_torchrun(
        "profile_phases", pp, ["--pp", pp, "--vpp", vpp, "--microbatches", m], timeout=300
    )
    spec = ScheduleSpec(
        kind="1f1b" if vpp == 1 else "interleaved",
        pp=pp,
        vpp=vpp,
        microbatches=m,
        overlap_p2p_comm=vpp > 1,
    )
    order = compute_order(spec)
    for rank, res in enumerate(results):
        # No optimizer step: every parameter is bit-identical after all the phases.
        assert res["weights_unchanged"], rank
        # The fully frozen phase (the last one) produced no weight gradient at all.
        assert res["max_unit_grad_after_frozen"] == 0.0, rank
        # The freeze runtime was removed: everything is trainable again.
        assert res["all_trainable"], rank
        # Each measured iteration timed exactly the schedule's forwards and backwards.
        for phase in ("unfrozen", "frozen"):
            assert len(res["actions"][phase]) == 2, phase
            for timed in res["actions"][phase]:
                assert timed == sorted(order[rank]), (rank, phase)
            assert all(w > 0 for w in res["walls"][phase])
