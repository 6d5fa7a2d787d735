"""The exact per-rank program megatron-core 0.19.2 runs for one training iteration.

For every pipeline rank this module lists, in order, the compute actions (forward or backward
of a (chunk, microbatch)) and the P2P calls issued by
`forward_backward_pipelining_without_interleaving` (1F1B) and
`forward_backward_pipelining_with_interleaving` (interleaved) in
`megatron/core/pipeline_parallel/schedules.py`. The generators below follow those functions'
control flow line by line (warm-up, steady 1F1B, cool-down; `recv_tensor_from_previous_stage`;
the skipped calls on the first and last stage), without tensors.

P2P semantics (`p2p_communication.py`, `P2PCommunicator._communicate`): a call is a batch of
isend/irecv to the previous and next rank of the ring `(rank -+ 1) mod pp`. Without
`overlap_p2p_comm` the call waits on all its requests (blocking). With it, the steady-state calls
return handles that Megatron waits on later (`pp_pre_forward`, `pp_pre_backward`, the next
`pp_post_*`, the cool-down); those waits appear here as `Wait` ops. A call whose every tensor is
None and receives nothing issues no request, so it is left out.

Assumptions, as Megatron-LM's `argument_utils.py` configures core: `deallocate_pipeline_outputs`
is True (the forward send is waited for right after it is posted in steady state) and
`overlap_p2p_comm_warmup_flush` is False.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Literal

from megatron_tf.formats.schedule import ScheduleSpec

__all__ = [
    "Compute",
    "Message",
    "P2PCall",
    "Wait",
    "Op",
    "compute_order",
    "rank_programs",
    "format_order",
    "parse_order",
    "schedule_table",
]

DEALLOCATE_PIPELINE_OUTPUTS = True
"""Megatron-LM sets `deallocate_pipeline_outputs=True` (training/argument_utils.py)."""

MessageKind = Literal["act", "grad"]


@dataclass(frozen=True, slots=True)
class Message:
    """One tensor sent between neighbouring ranks.

    `stage` and `microbatch` name the compute action that produced it: an activation of
    F(stage, m) travels to virtual stage `stage + 1`; a gradient of B(stage, m) to `stage - 1`.
    """

    kind: MessageKind
    src: int
    dst: int
    stage: int
    microbatch: int
    seq: int
    """Position among the messages of this kind on the channel src -> dst (FIFO matching)."""
    uid: int = field(default=-1, compare=False)
    """Dense id within one `rank_programs` result (0..messages-1), for array-indexed lookups."""

    @property
    def key(self) -> tuple[str, int, int, int]:
        return (self.kind, self.src, self.dst, self.seq)

    @property
    def name(self) -> str:
        arrow = "act" if self.kind == "act" else "grad"
        return f"{arrow}[v={self.stage},m={self.microbatch}:{self.src}->{self.dst}]"


@dataclass(frozen=True, slots=True)
class Compute:
    """Forward ("F") or backward ("B") of one (chunk, microbatch) on this rank."""

    kind: Literal["F", "B"]
    chunk: int
    microbatch: int


@dataclass(frozen=True, slots=True)
class P2PCall:
    """One P2PCommunicator call that issues at least one request.

    `blocking`: the call waits for all its requests before returning. Otherwise its requests
    are waited on by later `Wait` ops (overlap_p2p_comm).
    """

    name: str
    sends: tuple[Message, ...]
    recvs: tuple[Message, ...]
    blocking: bool

    @property
    def messages(self) -> tuple[Message, ...]:
        return self.sends + self.recvs


@dataclass(frozen=True, slots=True)
class Wait:
    """`handle.wait()` on the request of one message posted by an earlier non-blocking call."""

    message: Message


Op = Compute | P2PCall | Wait


# --------------------------------------------------------------------------------------------
# Megatron's tables


def schedule_table(microbatches: int, chunks: int, group_size: int) -> list[tuple[int, int]]:
    """`get_schedule_table`: (microbatch, chunk) of each forward virtual-microbatch id.

    Groups of `group_size` microbatches run chunk by chunk; the last group takes the rest.
    """
    table: list[tuple[int, int]] = []
    for start in range(0, microbatches, group_size):
        stop = microbatches if start + group_size >= microbatches else start + group_size
        table.extend((m, c) for c in range(chunks) for m in range(start, stop))
    return table


def _warmup_count(spec: ScheduleSpec, rank: int) -> tuple[int, bool]:
    """`get_pp_rank_microbatches` (interleaved): warm-up forwards and the all-in-warm-up flag."""
    total = spec.microbatches * spec.vpp
    warmup = (spec.pp - rank - 1) * 2 + (spec.vpp - 1) * spec.group_size
    if warmup >= total:
        return total, True
    return warmup, False


# --------------------------------------------------------------------------------------------
# Recording one rank's program


@dataclass(slots=True)
class _Pending:
    """A message as one side sees it; the receiving side learns stage/mb only after matching."""

    kind: MessageKind
    src: int
    dst: int
    seq: int
    stage: int = -1
    microbatch: int = -1


@dataclass(slots=True)
class _Recorder:
    rank: int
    pp: int
    ops: list[object] = field(default_factory=list)
    counters: dict[tuple[str, int, int], int] = field(default_factory=lambda: defaultdict(int))

    @property
    def next_rank(self) -> int:
        return (self.rank + 1) % self.pp

    @property
    def prev_rank(self) -> int:
        return (self.rank - 1) % self.pp

    def compute(self, kind: Literal["F", "B"], chunk: int, microbatch: int) -> None:
        self.ops.append(Compute(kind, chunk, microbatch))

    def _msg(
        self, kind: MessageKind, src: int, dst: int, stage: int = -1, mb: int = -1
    ) -> _Pending:
        channel = (kind, src, dst)
        seq = self.counters[channel]
        self.counters[channel] = seq + 1
        return _Pending(kind, src, dst, seq, stage, mb)

    def call(
        self,
        name: str,
        *,
        send_next: tuple[int, int] | None = None,
        send_prev: tuple[int, int] | None = None,
        recv_prev: MessageKind | None = None,
        recv_next: MessageKind | None = None,
        blocking: bool = True,
    ) -> dict[str, _Pending]:
        """Record a call; send_* give (stage, microbatch) of the tensor, recv_* its kind.

        Returns the requests by Megatron's handle names (send_next, recv_prev, ...).
        """
        handles: dict[str, _Pending] = {}
        if send_next is not None:
            # Forward sends carry activations; in the ring, send_next always does.
            handles["send_next"] = self._msg("act", self.rank, self.next_rank, *send_next)
        if recv_prev is not None:
            handles["recv_prev"] = self._msg(recv_prev, self.prev_rank, self.rank)
        if send_prev is not None:
            handles["send_prev"] = self._msg("grad", self.rank, self.prev_rank, *send_prev)
        if recv_next is not None:
            handles["recv_next"] = self._msg(recv_next, self.next_rank, self.rank)
        if handles:
            self.ops.append((name, dict(handles), blocking))
        return handles

    def wait(self, pending: _Pending) -> None:
        self.ops.append(pending)


# --------------------------------------------------------------------------------------------
# 1F1B: forward_backward_pipelining_without_interleaving


def _program_1f1b(spec: ScheduleSpec, rank: int) -> _Recorder:
    rec = _Recorder(rank=rank, pp=spec.pp)
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
        rec.compute("F", 0, i)
        pending_backward.append(i)
        if not last:
            rec.call("send_forward", send_next=(stage, i))

    if remaining > 0:
        recv_forward()

    for i in range(remaining):
        mb = i + warmup
        rec.compute("F", 0, mb)
        pending_backward.append(mb)
        if not last:
            rec.call("send_forward_recv_backward", send_next=(stage, mb), recv_next="grad")
        b_mb = pending_backward.popleft()
        rec.compute("B", 0, b_mb)
        if not first:
            if i == remaining - 1:
                rec.call("send_backward", send_prev=(stage, b_mb))
            else:
                rec.call("send_backward_recv_forward", send_prev=(stage, b_mb), recv_prev="act")

    for _ in range(warmup):
        if not last:
            rec.call("recv_backward", recv_next="grad")
        b_mb = pending_backward.popleft()
        rec.compute("B", 0, b_mb)
        if not first:
            rec.call("send_backward", send_prev=(stage, b_mb))
    return rec


# --------------------------------------------------------------------------------------------
# Interleaved: forward_backward_pipelining_with_interleaving


def _program_interleaved(spec: ScheduleSpec, rank: int) -> _Recorder:
    rec = _Recorder(rank=rank, pp=spec.pp)
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
        rec.compute("F", c, mb)
        forwarded[c].append(mb)
        if c == vpp - 1 and last:
            return None
        return (spec.virtual_stage(rank, c), mb)

    def backward(k: int) -> tuple[int, int] | None:
        c = chunk_of(k, False)
        mb = forwarded[c].popleft()
        rec.compute("B", c, mb)
        if c == 0 and first:
            return None
        return (spec.virtual_stage(rank, c), mb)

    recv_prev_handles: deque[_Pending] = deque()
    recv_next_handles: deque[_Pending] = deque()
    send_next_handle: _Pending | None = None
    send_prev_handle: _Pending | None = None

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


# --------------------------------------------------------------------------------------------
# Public API


def _raw_programs(spec: ScheduleSpec) -> list[_Recorder]:
    build = _program_1f1b if spec.kind == "1f1b" else _program_interleaved
    return [build(spec, rank) for rank in range(spec.pp)]


def compute_order(spec: ScheduleSpec) -> list[list[tuple[str, int, int]]]:
    """Per rank, the ("F"|"B", chunk, microbatch) actions in the order Megatron runs them."""
    return [
        [(op.kind, op.chunk, op.microbatch) for op in rec.ops if isinstance(op, Compute)]
        for rec in _raw_programs(spec)
    ]


def rank_programs(spec: ScheduleSpec) -> list[list[Op]]:
    """Per rank, compute actions, P2P calls and handle waits, in Megatron's order.

    Receives are matched to sends first-in first-out per (kind, src, dst) channel, the way
    ordered point-to-point messages between two ranks pair up; every message then carries the
    (virtual stage, microbatch) of the action that produced it. Both sides of a message share
    one `Message` object.
    """
    raws = _raw_programs(spec)
    sent: dict[tuple[str, int, int, int], Message] = {}
    for rec in raws:
        for op in rec.ops:
            if isinstance(op, tuple):
                for handle, p in op[1].items():
                    if handle.startswith("send"):
                        key = (p.kind, p.src, p.dst, p.seq)
                        sent[key] = Message(
                            p.kind, p.src, p.dst, p.stage, p.microbatch, p.seq, uid=len(sent)
                        )

    received = 0

    def resolve(p: _Pending) -> Message:
        msg = sent.get((p.kind, p.src, p.dst, p.seq))
        if msg is None:
            raise AssertionError(f"unmatched receive {(p.kind, p.src, p.dst, p.seq)}")
        return msg

    programs: list[list[Op]] = []
    for rec in raws:
        ops: list[Op] = []
        append = ops.append
        for op in rec.ops:
            if isinstance(op, Compute):
                append(op)
            elif isinstance(op, _Pending):
                append(Wait(resolve(op)))
            else:
                name, handles, blocking = op
                sends: list[Message] = []
                recvs: list[Message] = []
                for handle, p in handles.items():
                    if handle[0] == "s":  # send_next / send_prev
                        sends.append(resolve(p))
                    else:
                        recvs.append(resolve(p))
                received += len(recvs)
                append(P2PCall(name, tuple(sends), tuple(recvs), blocking))
        programs.append(ops)
    if received != len(sent):
        raise AssertionError(
            f"{len(sent)} messages sent but {received} received in {spec.describe()}"
        )
    return programs


def format_order(order: list[tuple[str, int, int]]) -> str:
    """Compact text of one rank's compute order: `0F0,0F1,0B0,...` (chunk, kind, microbatch)."""
    return ",".join(f"{c}{k}{m}" for k, c, m in order)


def parse_order(text: str) -> list[tuple[str, int, int]]:
    """Inverse of `format_order`."""
    out: list[tuple[str, int, int]] = []
    for token in text.split(","):
        token = token.strip()
        kind = "F" if "F" in token else "B"
        chunk, mb = token.split(kind)
        out.append((kind, int(chunk), int(mb)))
    return out
