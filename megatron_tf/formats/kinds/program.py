"""The ops of a per-rank program and the recorder a kind's generator writes them with.

A kind's generator walks its schedule function's control flow for one rank and records compute
actions (`ActionKind` of a (chunk, microbatch)), P2P calls and handle waits, without tensors.
`schedule/order.py` then pairs every receive with its send and hands out `Op`s.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

__all__ = [
    "ActionKind",
    "COMPUTE_KINDS",
    "Compute",
    "Message",
    "MessageKind",
    "P2PCall",
    "Pending",
    "Recorder",
    "Wait",
    "Op",
]


class ActionKind(StrEnum):
    """What a compute action does to one (chunk, microbatch).

    A str enum, so `ActionKind.F == "F"` and the compact order text (`0F3`) stays as it was.
    """

    F = "F"
    """Forward."""
    B = "B"
    """Backward: input and weight gradients in one call (fused kinds), or the input gradient
    alone where the kind runs the weight gradient as its own W action."""
    W = "W"
    """Weight gradient alone (split-backward kinds); nothing downstream waits for it."""


COMPUTE_KINDS: frozenset[str] = frozenset(ActionKind)
"""The compute action names ("F", "B", "W"): what a timed call's kind is when it is no P2P
call or wait."""

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
        return f"{self.kind}[v={self.stage},m={self.microbatch}:{self.src}->{self.dst}]"


@dataclass(frozen=True, slots=True)
class Compute:
    """One compute action of one (chunk, microbatch) on this rank."""

    kind: ActionKind
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


@dataclass(slots=True)
class Pending:
    """A message as one side sees it; the receiving side learns stage/mb only after matching."""

    kind: MessageKind
    src: int
    dst: int
    seq: int
    stage: int = -1
    microbatch: int = -1


RecordedCall = tuple[str, dict[str, Pending], bool]
"""(call name, requests by Megatron's handle name, blocking)."""


@dataclass(slots=True)
class Recorder:
    """One rank's program as a generator records it: `Compute`, `RecordedCall` or `Pending`
    (a wait on that request)."""

    rank: int
    pp: int
    ops: list[Compute | RecordedCall | Pending] = field(default_factory=list)
    counters: dict[tuple[str, int, int], int] = field(default_factory=lambda: defaultdict(int))

    @property
    def next_rank(self) -> int:
        return (self.rank + 1) % self.pp

    @property
    def prev_rank(self) -> int:
        return (self.rank - 1) % self.pp

    def compute(self, kind: ActionKind, chunk: int, microbatch: int) -> None:
        self.ops.append(Compute(kind, chunk, microbatch))

    def _msg(self, kind: MessageKind, src: int, dst: int, stage: int = -1, mb: int = -1) -> Pending:
        channel = (kind, src, dst)
        seq = self.counters[channel]
        self.counters[channel] = seq + 1
        return Pending(kind, src, dst, seq, stage, mb)

    def call(
        self,
        name: str,
        *,
        send_next: tuple[int, int] | None = None,
        send_prev: tuple[int, int] | None = None,
        recv_prev: MessageKind | None = None,
        recv_next: MessageKind | None = None,
        blocking: bool = True,
    ) -> dict[str, Pending]:
        """Record a call; send_* give (stage, microbatch) of the tensor, recv_* its kind.

        Returns the requests by Megatron's handle names (send_next, recv_prev, ...).
        """
        handles: dict[str, Pending] = {}
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

    def wait(self, pending: Pending) -> None:
        self.ops.append(pending)
