"""The schedule model's compute order equals what megatron-core really runs.

Each launch runs megatron-core's real schedule (and, in the 1F1B launches, TimelyFreeze's
zero-bubble zb-h1 schedule, W included) (0.19.2, installed; three of the layouts also on
Megatron-LM main's megatron/core 0.20.0, from the snapshot copy of tests/conftest.py) with a
tiny GPT, gloo on CPU, for several (microbatches, group size) cases and records, per rank, the
sequence of forward_step and backward_step calls twice: through TimelyFreeze's hook observers
and through an independent recorder in the test's forward_step_func. Both must equal
`compute_order(spec)` exactly. The P2P calls that issue requests, interleaved with the compute,
must equal `rank_programs(spec)` call for call (Megatron's method names; waits on handles
excluded).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import run_torchrun

from megatron_tf.schedule.order import Compute, Wait, compute_order, format_order, rank_programs
from megatron_tf.formats.schedule import ScheduleSpec

# (pp, vpp, overlap_p2p_comm, [(microbatches, group size)]); group size is pp for 1f1b.
CONFIGS = [
    pytest.param(2, 1, False, [(1, 2), (2, 2), (4, 2), (7, 2)], id="1f1b-pp2"),
    pytest.param(4, 1, False, [(2, 4), (4, 4), (5, 4), (8, 4)], id="1f1b-pp4"),
    pytest.param(
        2,
        2,
        True,
        [(2, 2), (4, 2), (4, 4), (6, 3), (6, 4), (8, 3)],
        id="interleaved-pp2-vpp2-overlap",
    ),
    pytest.param(
        4, 2, False, [(4, 4), (8, 4), (10, 6), (12, 8), (8, 8)], id="interleaved-pp4-vpp2"
    ),
    pytest.param(4, 3, True, [(4, 4), (8, 4), (10, 6)], id="interleaved-pp4-vpp3-overlap"),
]


# On megatron-core 0.20 (Megatron-LM main): 1F1B, and interleaved with and without overlapped
# P2P; the layouts that run on 2 ranks, plus one on 4, to keep the suite's time in bounds.
CONFIGS_MAIN = [CONFIGS[0], CONFIGS[2], CONFIGS[3]]


ZB_CASES = {2: [1, 2, 4, 7], 4: [2, 4, 5, 8]}
"""TimelyFreeze's zb-h1 schedule (megatron/zero_bubble.py), run in the 1F1B launches of the
same pp: what it really calls (forward_step, backward_step, its W, the P2PCommunicator
methods) must be the model's program, call for call. M below, at and above pp."""


@pytest.mark.parametrize(("pp", "vpp", "overlap", "cases"), CONFIGS)
def test_megatron_order_matches_model(
    pp: int, vpp: int, overlap: bool, cases: list[tuple[int, int]]
) -> None:
    check_order(pp, vpp, overlap, cases)


@pytest.mark.parametrize(("pp", "vpp", "overlap", "cases"), CONFIGS_MAIN)
def test_megatron_main_order_matches_model(
    pp: int, vpp: int, overlap: bool, cases: list[tuple[int, int]], megatron_lm_checkout
) -> None:
    check_order(pp, vpp, overlap, cases, megatron=megatron_lm_checkout("main"))


def check_order(
    pp: int, vpp: int, overlap: bool, cases: list[tuple[int, int]], megatron: Path | None = None
) -> None:
    args = ["--pp", pp, "--vpp", vpp, "--cases", ",".join(f"{m}:{g}" for m, g in cases)]
    if overlap:
        args.append("--overlap-p2p-comm")
    zb = ZB_CASES.get(pp, []) if vpp == 1 else []
    if zb:
        args += ["--zb-cases", ",".join(map(str, zb))]
    results = run_torchrun("order", pp, args, timeout=420, megatron=megatron)
    runs = [(f"{m}:{g}", "1f1b" if vpp == 1 else "interleaved", m, g) for m, g in cases]
    runs += [(f"zb-h1:{m}", "zb-h1", m, pp) for m in zb]
    for key, kind, m, g in runs:
        spec = ScheduleSpec(
            kind=kind,
            pp=pp,
            vpp=vpp,
            microbatches=m,
            group_size=g if vpp > 1 else 0,
            overlap_p2p_comm=overlap,
        )
        expected = compute_order(spec)
        programs = rank_programs(spec)
        for rank in range(pp):
            recorded = results[rank][key]
            where = f"{spec.describe()} rank {rank}"
            # The hooks report exactly what the schedule called ...
            assert recorded["hooks"] == recorded["independent"], where
            # ... and that is the order the model predicts, action for action.
            assert format_order(recorded["hooks"]) == format_order(expected[rank]), where
            assert len(expected[rank]) == len(spec.schedule_kind.actions) * vpp * m, where
            # The P2P calls between them, too: the model's program, call for call.
            model_program = [
                (op.kind, op.chunk, op.microbatch) if isinstance(op, Compute) else ("P2P", op.name)
                for op in programs[rank]
                if not isinstance(op, Wait)
            ]
            assert [tuple(x) for x in recorded["program"]] == model_program, where
