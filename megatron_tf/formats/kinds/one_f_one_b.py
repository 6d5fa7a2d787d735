"""`1f1b`: megatron-core's `forward_backward_pipelining_without_interleaving`.

The generator follows that function in `megatron/core/pipeline_parallel/schedules.py` (0.19.2,
0.20.x) line by line: rank r runs `pp - r - 1` warm-up forwards, then one forward and one
backward at a time, then the cool-down backwards; the P2P calls the first and last stage skip
are left out, as Megatron leaves them out.
"""

from __future__ import annotations

from collections import deque

from megatron_tf.errors import ConfigError
from megatron_tf.formats.kinds.program import ActionKind, Recorder
from megatron_tf.formats.kinds.registry import ScheduleKind, SpecFields, register

F, B = ActionKind.F, ActionKind.B


def check_one_chunk(spec: SpecFields, name: str) -> int:
    """The rules of a kind with one chunk per rank and no interleaved-only settings."""
    if spec.vpp != 1:
        raise ConfigError(
            f"the {name} schedule has one chunk per rank: --vpp must be 1, "
            f"got {spec.vpp} (use --schedule interleaved)"
        )
    if spec.group_size not in (0, spec.pp):
        raise ConfigError("--group-size applies to the interleaved schedule only")
    if spec.overlap_p2p_comm:
        raise ConfigError(
            f"--overlap-p2p-comm applies to the interleaved schedule only "
            f"(Megatron ignores it for {name})"
        )
    return spec.pp


def _check(spec: SpecFields) -> int:
    return check_one_chunk(spec, "1f1b")


def _program(spec: SpecFields, rank: int) -> Recorder:
    rec = Recorder(rank=rank, pp=spec.pp)
    first, last = rank == 0, rank == spec.pp - 1
    m_total = spec.microbatches
    warmup = min(spec.pp - rank - 1, m_total)
    remaining = m_total - warmup
    pending_backward: deque[int] = deque()
    stage = rank

    def recv_forward() -> None:
        if not first:
            rec.call("recv_forward", recv_prev="act")

    for i in range(warmup):
        recv_forward()
        rec.compute(F, 0, i)
        pending_backward.append(i)
        if not last:
            rec.call("send_forward", send_next=(stage, i))

    if remaining > 0:
        recv_forward()

    for i in range(remaining):
        mb = i + warmup
        rec.compute(F, 0, mb)
        pending_backward.append(mb)
        if not last:
            rec.call("send_forward_recv_backward", send_next=(stage, mb), recv_next="grad")
        b_mb = pending_backward.popleft()
        rec.compute(B, 0, b_mb)
        if not first:
            if i == remaining - 1:
                rec.call("send_backward", send_prev=(stage, b_mb))
            else:
                rec.call("send_backward_recv_forward", send_prev=(stage, b_mb), recv_prev="act")

    for _ in range(warmup):
        if not last:
            rec.call("recv_backward", recv_next="grad")
        b_mb = pending_backward.popleft()
        rec.compute(B, 0, b_mb)
        if not first:
            rec.call("send_backward", send_prev=(stage, b_mb))
    return rec


KIND = register(
    ScheduleKind(
        name="1f1b",
        summary="Megatron's 1F1B (forward_backward_pipelining_without_interleaving)",
        actions=(F, B),
        chunked=False,
        check=_check,
        program=_program,
    )
)
