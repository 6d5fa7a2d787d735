"""`interleaved`: megatron-core's `forward_backward_pipelining_with_interleaving`.

The generator follows that function in `megatron/core/pipeline_parallel/schedules.py` (0.19.2,
0.20.x) line by line: forwards in `get_schedule_table` order (groups of `group_size`
microbatches, chunk by chunk), `(pp - r - 1) * 2 + (vpp - 1) * group` warm-up forwards on rank
r, the backward of virtual id k on chunk `vpp - 1 - table_chunk[k]`,
`recv_tensor_from_previous_stage` for the first and last rank, and with `overlap_p2p_comm` the
non-blocking steady-state calls whose handles are waited on later (`pp_pre_forward`,
`pp_pre_backward`, the next `pp_post_*`, the cool-down).

Assumptions, as Megatron-LM's `argument_utils.py` configures core: `deallocate_pipeline_outputs`
is True (the forward send is waited for right after it is posted in steady state) and
`overlap_p2p_comm_warmup_flush` is False.
"""

from __future__ import annotations

from collections import deque

from megatron_tf.errors import ConfigError
from megatron_tf.formats.kinds.program import ActionKind, Pending, Recorder
from megatron_tf.formats.kinds.registry import ScheduleKind, SpecFields, register

F, B = ActionKind.F, ActionKind.B

DEALLOCATE_PIPELINE_OUTPUTS = True
"""Megatron-LM sets `deallocate_pipeline_outputs=True` (training/argument_utils.py)."""


def _check(spec: SpecFields) -> int:
    if spec.vpp < 2:
        raise ConfigError(f"the interleaved schedule needs --vpp >= 2, got {spec.vpp}")
    g = spec.group_size or spec.pp
    if isinstance(g, bool) or not isinstance(g, int) or g < 1:
        raise ConfigError(f"--group-size must be a positive integer, got {g!r} (group_size)")
    m, p = spec.microbatches, spec.pp
    # schedules.py, forward_backward_pipelining_with_interleaving: the group size must lie
    # in [PP, M] ...
    if g > m or g < p:
        raise ConfigError(
            f"Megatron requires the microbatch group size per virtual stage to lie in "
            f"[PP={p}, M={m}]: got --group-size {g} (with --microbatches {m})"
        )
    # ... and the last group must be empty or hold at least PP microbatches.
    remainder = m % g
    if 0 < remainder < p:
        raise ConfigError(
            f"Megatron requires M mod group size to be 0 or >= PP={p}: "
            f"--microbatches {m} mod --group-size {g} = {remainder}"
        )
    return g


def schedule_table(microbatches: int, chunks: int, group_size: int) -> list[tuple[int, int]]:
    """`get_schedule_table`: (microbatch, chunk) of each forward virtual-microbatch id.

    Groups of `group_size` microbatches run chunk by chunk; the last group takes the rest.
    """
    table: list[tuple[int, int]] = []
    for start in range(0, microbatches, group_size):
        stop = microbatches if start + group_size >= microbatches else start + group_size
        table.extend((m, c) for c in range(chunks) for m in range(start, stop))
    return table


def _warmup_count(spec: SpecFields, rank: int) -> tuple[int, bool]:
    """`get_pp_rank_microbatches` (interleaved): warm-up forwards and the all-in-warm-up flag."""
    total = spec.microbatches * spec.vpp
    warmup = (spec.pp - rank - 1) * 2 + (spec.vpp - 1) * spec.group_size
    if warmup >= total:
        return total, True
    return warmup, False


def _program(spec: SpecFields, rank: int) -> Recorder:
    rec = Recorder(rank=rank, pp=spec.pp)
    pp, vpp, overlap = spec.pp, spec.vpp, spec.overlap_p2p_comm
    first, last = rank == 0, rank == pp - 1
    total = spec.microbatches * vpp
    warmup, all_in_warmup = _warmup_count(spec, rank)
    remaining = total - warmup
    table = schedule_table(spec.microbatches, vpp, spec.group_size)
    mb_table = [m for m, _ in table]
    chunk_table = [c for _, c in table]
    forwarded: list[deque[int]] = [deque() for _ in range(vpp)]

    def chunk_of(k: int, forward: bool) -> int:
        c = chunk_table[k % total]
        return c if forward else vpp - 1 - c

    def recv_from_previous(k: int, forward: bool) -> bool:
        """`recv_tensor_from_previous_stage`: does the iteration after k receive a tensor?"""
        leading = first if forward else last
        if not leading:
            return True
        last_chunk = vpp - 1 if forward else 0
        if k < pp - 1:
            recv = False
            aligned = chunk_of(k + 1, forward)
        else:
            recv = True
            aligned = chunk_of(k - (pp - 1), forward)
        return recv and aligned != last_chunk

    def forward(k: int) -> tuple[int, int] | None:
        """Run F for virtual-microbatch k; return the (stage, mb) it sends on, None if none."""
        c, mb = chunk_of(k, True), mb_table[k]
        rec.compute(F, c, mb)
        forwarded[c].append(mb)
        if c == vpp - 1 and last:
            return None
        return (spec.virtual_stage(rank, c), mb)

    def backward(k: int) -> tuple[int, int] | None:
        c = chunk_of(k, False)
        mb = forwarded[c].popleft()
        rec.compute(B, c, mb)
        if c == 0 and first:
            return None
        return (spec.virtual_stage(rank, c), mb)

    recv_prev_handles: deque[Pending] = deque()
    recv_next_handles: deque[Pending] = deque()
    send_next_handle: Pending | None = None
    send_prev_handle: Pending | None = None

    # The first input of chunk 0 (every rank but the first).
    if not first:
        rec.call("recv_forward", recv_prev="act")

    # Warm-up forwards. Without overlap_p2p_comm_warmup_flush these calls block, also when
    # overlap_p2p_comm is on.
    for k in range(warmup):
        recv_prev = recv_from_previous(k, True)
        if k == total - 1:
            recv_prev = False
        out = forward(k)
        final_warmup = k == warmup - 1 and not all_in_warmup
        if final_warmup and not overlap:
            rec.call(
                "send_forward_backward_recv_forward_backward",
                send_next=out,
                recv_prev="act" if recv_prev else None,
                recv_next=None if last else "grad",
            )
        else:
            rec.call(
                "send_forward_recv_forward",
                send_next=out,
                recv_prev="act" if recv_prev else None,
            )
        if overlap and final_warmup:
            handles = rec.call(
                "send_backward_recv_backward",
                recv_next=None if last else "grad",
                blocking=False,
            )
            if "recv_next" in handles:
                recv_next_handles.append(handles["recv_next"])

    # Steady 1F1B.
    for k in range(remaining):
        fk, bk = k + warmup, k
        if overlap:
            # pp_pre_forward
            if not (chunk_of(fk, True) == 0 and first) and recv_prev_handles:
                rec.wait(recv_prev_handles.popleft())
            out = forward(fk)
            # pp_post_forward
            recv_prev = recv_from_previous(fk, True) and k != remaining - 1
            handles = rec.call(
                "send_forward_recv_forward",
                send_next=out,
                recv_prev="act" if recv_prev else None,
                blocking=False,
            )
            if send_next_handle is not None:
                rec.wait(send_next_handle)
            send_next_handle = handles.get("send_next")
            if "recv_prev" in handles:
                recv_prev_handles.append(handles["recv_prev"])
            if send_next_handle is not None and DEALLOCATE_PIPELINE_OUTPUTS:
                rec.wait(send_next_handle)
                send_next_handle = None
            # pp_pre_backward
            if not (chunk_of(bk, False) == vpp - 1 and last) and recv_next_handles:
                rec.wait(recv_next_handles.popleft())
            grad = backward(bk)
            # pp_post_backward
            recv_next = recv_from_previous(bk, False)
            handles = rec.call(
                "send_backward_recv_backward",
                send_prev=grad,
                recv_next="grad" if recv_next else None,
                blocking=False,
            )
            if send_prev_handle is not None:
                rec.wait(send_prev_handle)
            send_prev_handle = handles.get("send_prev")
            if "recv_next" in handles:
                recv_next_handles.append(handles["recv_next"])
        else:
            out = forward(fk)
            grad = backward(bk)
            recv_prev = recv_from_previous(fk, True) and k != remaining - 1
            recv_next = recv_from_previous(bk, False)
            rec.call(
                "send_forward_backward_recv_forward_backward",
                send_next=out,
                send_prev=grad,
                recv_prev="act" if recv_prev else None,
                recv_next="grad" if recv_next else None,
            )

    # Cool-down backwards.
    if all_in_warmup and not last:
        rec.call("recv_backward", recv_next="grad")
    for k in range(remaining, total):
        c = chunk_of(k, False)
        if not (c == vpp - 1 and last) and k != 0 and recv_next_handles:
            rec.wait(recv_next_handles.popleft())
        recv_next = recv_from_previous(k, False) and k != total - 1
        grad = backward(k)
        rec.call(
            "send_backward_recv_backward",
            send_prev=grad,
            recv_next="grad" if recv_next else None,
        )
    if send_prev_handle is not None:
        rec.wait(send_prev_handle)
    # Megatron asserts both handle lists are empty at the end of a step.
    assert not recv_prev_handles and not recv_next_handles, (rank, spec)
    return rec


KIND = register(
    ScheduleKind(
        name="interleaved",
        summary="Megatron's interleaved 1F1B, vpp >= 2",
        actions=(F, B),
        chunked=True,
        check=_check,
        program=_program,
    )
)
