"""`zb-h1`: 1F1B with the backward split into B (input gradient) and W (weight gradient).

The handcrafted ZB-H1 schedule of Qi et al., "Zero Bubble Pipeline Parallelism" (ICLR 2024),
in the order its authors' DeepSpeed schedule `ZeroBubbleH1Pipeline` runs with exact semantics
(read in sail-sg/zero-bubble-pipeline-parallelism). Megatron-Core has no such schedule: the
runtime executes `schedule.order.rank_programs(spec)[rank]` op by op, so this generator is the
one definition of the order and of the P2P calls, for the model and the runtime alike.

Compute order of rank s (0-based) of p, with M microbatches:

1. warm-up: `w = min(p - s - 1, M)` forwards, as in 1F1B;
2. `M - w` steady rounds of one forward and the B of the oldest forwarded microbatch; the
   first `d = min(s, M - w)` rounds defer their W, every later round runs one W after its B;
3. cool-down: `w` rounds of a B and one W;
4. the `d` deferred W's.

W's run in microbatch order (a FIFO of the microbatches whose B ran), so rank s keeps d
weight gradients pending through the steady state: the last rank defers p - 1, the first
none (its B and W run back to back, like 1F1B's backward).

Closed forms (F, B, W the same on every rank, no transfer time, M >= p): the makespan is
`M (F+B+W) + (p-1) max(F, B, F+B-W)` in the dataflow comm model for any F, B, W, and in the
megatron comm model (blocking calls meet their peers) whenever W <= F; so the bubble is
`(p-1)(F+B-W)` when W <= min(F, B), against 1F1B's `(p-1)(F+B+W)`.

Memory: a microbatch holds its activations from its F to its W. Rank s holds at most
`min(p, M)` such microbatches (1F1B: `min(p - s, M)` until its B), so the peak over ranks
equals 1F1B's (rank 0's), which here every rank reaches.

P2P calls (`P2PCommunicator` methods, all blocking, Megatron's names, ring peers as in 1F1B),
for rank s with `first = s == 0`, `last = s == p - 1`. A call the first or last stage has
nothing for is skipped, as in Megatron's 1F1B (`not first` / `not last` below):

- warm-up round i: `recv_forward` (not first), F(i), `send_forward` (not last);
- before the steady rounds, if any: `recv_forward` (not first);
- steady round k, forward of microbatch mb, B of microbatch b:
  F(mb), `send_forward_recv_backward` (not last), B(b), then
  - a deferring round (k < d): `send_backward_recv_forward` (not first), or in the last
    steady round `send_backward` (not first): exactly 1F1B's calls;
  - a round with a W, not the last steady round: W, then `send_backward_recv_forward` (not
    first). The previous rank takes this gradient in its own `send_forward_recv_backward`,
    which it issues only after its next forward, so a W no longer than F delays no one, and
    the exchange pairs the two fused calls as in 1F1B;
  - the last steady round with a W: `send_backward` (not first), then W. The previous rank
    already waits for this gradient in its cool-down `recv_backward`, so the gradient goes out
    first and the W fills this rank's own wait for its next gradient;
- cool-down round: `recv_backward` (not last), B, `send_backward` (not first), W (the same
  reasoning: the previous rank waits in `recv_backward`);
- the deferred W's: no calls.
"""

from __future__ import annotations

from collections import deque

from megatron_tf.formats.kinds.one_f_one_b import check_one_chunk
from megatron_tf.formats.kinds.program import ActionKind, Recorder
from megatron_tf.formats.kinds.registry import ScheduleKind, SpecFields, register

F, B, W = ActionKind.F, ActionKind.B, ActionKind.W

NAME = "zb-h1"


def _check(spec: SpecFields) -> int:
    return check_one_chunk(spec, NAME)


def deferred_weight_gradients(pp: int, microbatches: int, rank: int) -> int:
    """W's rank `rank` defers to the end of the iteration: min(rank, M - warm-up)."""
    warmup = min(pp - rank - 1, microbatches)
    return min(rank, microbatches - warmup)


def _program(spec: SpecFields, rank: int) -> Recorder:
    rec = Recorder(rank=rank, pp=spec.pp)
    first, last = rank == 0, rank == spec.pp - 1
    m_total = spec.microbatches
    warmup = min(spec.pp - rank - 1, m_total)
    remaining = m_total - warmup
    deferring = deferred_weight_gradients(spec.pp, m_total, rank)
    forwarded: deque[int] = deque()  # F done, B not yet
    weight_due: deque[int] = deque()  # B done, W not yet
    stage = rank

    def recv_forward() -> None:
        if not first:
            rec.call("recv_forward", recv_prev="act")

    def weight() -> None:
        rec.compute(W, 0, weight_due.popleft())

    for i in range(warmup):
        recv_forward()
        rec.compute(F, 0, i)
        forwarded.append(i)
        if not last:
            rec.call("send_forward", send_next=(stage, i))

    if remaining > 0:
        recv_forward()

    for k in range(remaining):
        mb = k + warmup
        final = k == remaining - 1
        rec.compute(F, 0, mb)
        forwarded.append(mb)
        if not last:
            rec.call("send_forward_recv_backward", send_next=(stage, mb), recv_next="grad")
        b_mb = forwarded.popleft()
        rec.compute(B, 0, b_mb)
        weight_due.append(b_mb)
        if k < deferring:
            if not first:
                if final:
                    rec.call("send_backward", send_prev=(stage, b_mb))
                else:
                    rec.call("send_backward_recv_forward", send_prev=(stage, b_mb), recv_prev="act")
            continue
        if final:
            # The previous rank waits in its cool-down `recv_backward` for this gradient: send
            # it first, then the W fills this rank's wait for its next gradient.
            if not first:
                rec.call("send_backward", send_prev=(stage, b_mb))
            weight()
        else:
            # The previous rank takes this gradient in its `send_forward_recv_backward`, after
            # its next forward: the W runs first, and with W <= F delays nobody.
            weight()
            if not first:
                rec.call("send_backward_recv_forward", send_prev=(stage, b_mb), recv_prev="act")

    for _ in range(warmup):
        if not last:
            rec.call("recv_backward", recv_next="grad")
        b_mb = forwarded.popleft()
        rec.compute(B, 0, b_mb)
        weight_due.append(b_mb)
        if not first:
            rec.call("send_backward", send_prev=(stage, b_mb))
        weight()

    while weight_due:
        weight()
    return rec


KIND = register(
    ScheduleKind(
        name=NAME,
        summary="zero bubble ZB-H1, 1F1B with the weight gradients run in the bubbles",
        actions=(F, B, W),
        chunked=False,
        check=_check,
        program=_program,
    )
)
