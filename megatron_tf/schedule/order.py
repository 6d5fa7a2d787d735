"""The exact per-rank program of one training iteration, for any registered schedule kind.

Each kind (`formats/kinds/`: `1f1b` and `interleaved` follow megatron-core's
`forward_backward_pipelining_without_interleaving` and `..._with_interleaving` line by line,
`zb-h1` is the zero-bubble schedule TimelyFreeze runs) records, per rank, its compute actions and
the P2P calls it issues; this module dispatches by the registry and pairs every receive with
its send.

P2P semantics (`p2p_communication.py`, `P2PCommunicator._communicate`): a call is a batch of
isend/irecv to the previous and next rank of the ring `(rank -+ 1) mod pp`. Without
`overlap_p2p_comm` the call waits on all its requests (blocking). With it, the steady-state calls
return handles that Megatron waits on later (`pp_pre_forward`, `pp_pre_backward`, the next
`pp_post_*`, the cool-down); those waits appear here as `Wait` ops. A call whose every tensor is
None and receives nothing issues no request, so it is left out.
"""

from __future__ import annotations

from megatron_tf.formats.kinds.interleaved import schedule_table
from megatron_tf.formats.kinds.program import (
    ActionKind,
    Compute,
    Message,
    Op,
    P2PCall,
    Pending,
    Recorder,
    Wait,
)
from megatron_tf.formats.schedule import ScheduleSpec

__all__ = [
    "ActionKind",
    "Compute",
    "Message",
    "P2PCall",
    "Wait",
    "Op",
    "Action",
    "compute_order",
    "rank_programs",
    "format_order",
    "parse_order",
    "schedule_table",
]

Action = tuple[ActionKind, int, int]
"""(kind, chunk, microbatch) of one compute action."""


def _raw_programs(spec: ScheduleSpec) -> list[Recorder]:
    program = spec.schedule_kind.program
    return [program(spec, rank) for rank in range(spec.pp)]


def compute_order(spec: ScheduleSpec) -> list[list[Action]]:
    """Per rank, the (kind, chunk, microbatch) actions in the order the schedule runs them."""
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

    def resolve(p: Pending) -> Message:
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
            elif isinstance(op, Pending):
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


def format_order(order: list[Action]) -> str:
    """Compact text of one rank's compute order: `0F0,0F1,0B0,...` (chunk, kind, microbatch)."""
    return ",".join(f"{c}{k}{m}" for k, c, m in order)


def parse_order(text: str) -> list[Action]:
    """Inverse of `format_order`."""
    out: list[Action] = []
    for token in text.split(","):
        token = token.strip()
        kind = next(k for k in ActionKind if k.value in token)
        chunk, mb = token.split(kind.value)
        out.append((kind, int(chunk), int(mb)))
    return out
