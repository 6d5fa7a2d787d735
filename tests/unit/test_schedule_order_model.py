"""Megatron-Core 0.19.2's per-rank program: golden orders and structural properties.

Goldens are written out from Megatron's rules (schedules.py), rank by rank:
1F1B rank r warms up with pp-r-1 forwards, then alternates F/B, then drains the backwards.
Interleaved rank r warms up with (pp-r-1)*2 + (vpp-1)*group forwards taken from
get_schedule_table; the backward of virtual id k runs chunk vpp-1-table_chunk[k].
"""

from __future__ import annotations

import pytest

from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.schedule.order import (
    Compute,
    P2PCall,
    Wait,
    compute_order,
    format_order,
    parse_order,
    rank_programs,
    schedule_table,
)

GOLDEN = {
    ScheduleSpec(kind="1f1b", pp=4, microbatches=6): [
        # warm-up 3 forwards, steady 3 pairs, cool-down 3 backwards
        "0F0,0F1,0F2,0F3,0B0,0F4,0B1,0F5,0B2,0B3,0B4,0B5",
        "0F0,0F1,0F2,0B0,0F3,0B1,0F4,0B2,0F5,0B3,0B4,0B5",
        "0F0,0F1,0B0,0F2,0B1,0F3,0B2,0F4,0B3,0F5,0B4,0B5",
        "0F0,0B0,0F1,0B1,0F2,0B2,0F3,0B3,0F4,0B4,0F5,0B5",
    ],
    ScheduleSpec(kind="interleaved", pp=2, vpp=2, microbatches=4): [
        # rank 0: warm-up (2-0-1)*2 + 1*2 = 4 forwards
        "0F0,0F1,1F0,1F1,0F2,1B0,0F3,1B1,1F2,0B0,1F3,0B1,1B2,1B3,0B2,0B3",
        # rank 1: warm-up 2 forwards
        "0F0,0F1,1F0,1B0,1F1,1B1,0F2,0B0,0F3,0B1,1F2,1B2,1F3,1B3,0B2,0B3",
    ],
    ScheduleSpec(kind="interleaved", pp=4, vpp=2, microbatches=8): [
        "0F0,0F1,0F2,0F3,1F0,1F1,1F2,1F3,0F4,0F5,0F6,1B0,0F7,1B1,1F4,1B2,"
        "1F5,1B3,1F6,0B0,1F7,0B1,0B2,0B3,1B4,1B5,1B6,1B7,0B4,0B5,0B6,0B7",
        "0F0,0F1,0F2,0F3,1F0,1F1,1F2,1F3,0F4,1B0,0F5,1B1,0F6,1B2,0F7,1B3,"
        "1F4,0B0,1F5,0B1,1F6,0B2,1F7,0B3,1B4,1B5,1B6,1B7,0B4,0B5,0B6,0B7",
        "0F0,0F1,0F2,0F3,1F0,1F1,1F2,1B0,1F3,1B1,0F4,1B2,0F5,1B3,0F6,0B0,"
        "0F7,0B1,1F4,0B2,1F5,0B3,1F6,1B4,1F7,1B5,1B6,1B7,0B4,0B5,0B6,0B7",
        "0F0,0F1,0F2,0F3,1F0,1B0,1F1,1B1,1F2,1B2,1F3,1B3,0F4,0B0,0F5,0B1,"
        "0F6,0B2,0F7,0B3,1F4,1B4,1F5,1B5,1F6,1B6,1F7,1B7,0B4,0B5,0B6,0B7",
    ],
    # group 3 with M=5: the last group holds microbatches 3 and 4 (5 mod 3 = 2 >= pp)
    ScheduleSpec(kind="interleaved", pp=2, vpp=3, microbatches=5, group_size=3): [
        "0F0,0F1,0F2,1F0,1F1,1F2,2F0,2F1,2F2,2B0,0F3,2B1,0F4,2B2,1F3,"
        "1B0,1F4,1B1,2F3,1B2,2F4,0B0,0B1,0B2,2B3,2B4,1B3,1B4,0B3,0B4",
        "0F0,0F1,0F2,1F0,1F1,1F2,2F0,2B0,2F1,2B1,2F2,2B2,0F3,1B0,0F4,"
        "1B1,1F3,1B2,1F4,0B0,2F3,0B1,2F4,0B2,2B3,2B4,1B3,1B4,0B3,0B4",
    ],
    # every rank's warm-up covers all 12 forwards of rank 0 and 1 (all in warm-up)
    ScheduleSpec(kind="interleaved", pp=4, vpp=3, microbatches=4): [
        "0F0,0F1,0F2,0F3,1F0,1F1,1F2,1F3,2F0,2F1,2F2,2F3,2B0,2B1,2B2,2B3,1B0,1B1,1B2,1B3,0B0,0B1,0B2,0B3",
        "0F0,0F1,0F2,0F3,1F0,1F1,1F2,1F3,2F0,2F1,2F2,2F3,2B0,2B1,2B2,2B3,1B0,1B1,1B2,1B3,0B0,0B1,0B2,0B3",
        "0F0,0F1,0F2,0F3,1F0,1F1,1F2,1F3,2F0,2F1,2F2,2B0,2F3,2B1,2B2,2B3,1B0,1B1,1B2,1B3,0B0,0B1,0B2,0B3",
        "0F0,0F1,0F2,0F3,1F0,1F1,1F2,1F3,2F0,2B0,2F1,2B1,2F2,2B2,2F3,2B3,1B0,1B1,1B2,1B3,0B0,0B1,0B2,0B3",
    ],
}


@pytest.mark.parametrize("spec", list(GOLDEN), ids=lambda s: s.describe())
def test_golden_compute_order(spec: ScheduleSpec) -> None:
    got = [format_order(rank) for rank in compute_order(spec)]
    assert got == GOLDEN[spec]


def test_overlap_changes_calls_not_compute_order() -> None:
    base = ScheduleSpec(kind="interleaved", pp=4, vpp=2, microbatches=8)
    over = ScheduleSpec(kind="interleaved", pp=4, vpp=2, microbatches=8, overlap_p2p_comm=True)
    assert compute_order(base) == compute_order(over)
    calls = {op.name for ops in rank_programs(over) for op in ops if isinstance(op, P2PCall)}
    assert "send_forward_backward_recv_forward_backward" not in calls
    assert any(isinstance(op, Wait) for ops in rank_programs(over) for op in ops)
    assert not any(isinstance(op, Wait) for ops in rank_programs(base) for op in ops)


def test_megatron_schedule_table_example() -> None:
    # The example in Megatron's own comment: PP2 N3M5 with VP2.
    table = schedule_table(5, 2, 3)
    assert [m for m, _ in table] == [0, 1, 2, 0, 1, 2, 3, 4, 3, 4]
    assert [c for _, c in table] == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]


def test_format_parse_round_trip() -> None:
    order = compute_order(ScheduleSpec(kind="interleaved", pp=2, vpp=2, microbatches=4))[0]
    assert parse_order(format_order(order)) == order


def test_1f1b_calls_of_middle_rank() -> None:
    # pp=3, M=3, rank 1: warm-up 1 forward, steady 2 pairs, cool-down 1 backward.
    ops = rank_programs(ScheduleSpec(kind="1f1b", pp=3, microbatches=3))[1]
    text = [
        op.name if isinstance(op, P2PCall) else f"{op.kind}{op.microbatch}"
        for op in ops
        if not isinstance(op, Wait)
    ]
    assert text == [
        "recv_forward", "F0", "send_forward",
        "recv_forward",
        "F1", "send_forward_recv_backward", "B0", "send_backward_recv_forward",
        "F2", "send_forward_recv_backward", "B1", "send_backward",
        "recv_backward", "B2", "send_backward",
    ]  # fmt: skip


def _specs() -> list[ScheduleSpec]:
    out = []
    for pp in (2, 3, 4, 5):
        for m in range(1, 11):
            out.append(ScheduleSpec(kind="1f1b", pp=pp, microbatches=m))
            for v in (2, 3):
                for g in range(pp, m + 1):
                    rem = m % g
                    if 0 < rem < pp:
                        continue
                    for ov in (False, True):
                        out.append(
                            ScheduleSpec(
                                kind="interleaved",
                                pp=pp,
                                vpp=v,
                                microbatches=m,
                                group_size=g,
                                overlap_p2p_comm=ov,
                            )
                        )
    return out


def test_every_input_arrives_before_it_is_used() -> None:
    """Across many schedules: each F/B on a rank has received exactly the tensor it consumes.

    The message's (stage, microbatch) comes from the sender's program and the receive is
    matched FIFO per channel, so this checks both programs against each other.
    """
    for spec in _specs():
        programs = rank_programs(spec)
        every = sorted(
            (k, c, m) for k in "FB" for c in range(spec.vpp) for m in range(spec.microbatches)
        )
        for rank, ops in enumerate(programs):
            have: set[tuple[str, int, int]] = set()
            computes = []
            for op in ops:
                if isinstance(op, P2PCall) and op.blocking:
                    have.update((m.kind, m.stage, m.microbatch) for m in op.recvs)
                elif isinstance(op, Wait) and op.message.dst == rank:
                    have.add((op.message.kind, op.message.stage, op.message.microbatch))
                elif isinstance(op, Compute):
                    computes.append((op.kind, op.chunk, op.microbatch))
                    v = spec.virtual_stage(rank, op.chunk)
                    if op.kind == "F" and v > 0:
                        assert ("act", v - 1, op.microbatch) in have, (spec, rank, op)
                    if op.kind == "B" and v < spec.stages - 1:
                        assert ("grad", v + 1, op.microbatch) in have, (spec, rank, op)
            assert sorted(computes) == every
