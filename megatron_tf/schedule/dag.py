"""The one DAG of an iteration, shared by the simulator and the LP.

Nodes are compute actions (forward or backward of a (rank, chunk, microbatch)) and P2P calls
(megatron comm model) or message transfers (dataflow comm model). An edge a -> b means b may
not start before a ends. Every node has a fixed duration except a backward action, whose
duration is `duration - ratio * saving` for a freeze ratio in [0, 1].

Because the simulator and the LP both read this structure, a plan's predicted makespan and
the simulator's makespan for that plan can only differ by solver tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from megatron_tf.schedule.spec import ScheduleSpec


class NodeKind(StrEnum):
    FORWARD = "F"
    BACKWARD = "B"
    P2P = "P2P"
    """A blocking P2P call on one rank (megatron model) or one message in flight (dataflow)."""


@dataclass(frozen=True, slots=True)
class Node:
    kind: NodeKind
    rank: int
    """Pipeline rank the node runs on (for a dataflow message: the sending rank)."""
    chunk: int = -1
    """Model chunk (compute nodes); -1 for P2P nodes."""
    microbatch: int = -1
    """Microbatch (compute nodes); -1 for P2P nodes."""
    label: str = ""
    """P2P nodes: the Megatron call, e.g. `send_forward_recv_backward`."""

    @property
    def name(self) -> str:
        """Stable, human-readable id, e.g. `B[r=3,c=0,m=5]` or `P2P[r=1,#4:recv_forward]`."""
        if self.kind is NodeKind.P2P:
            return f"P2P[r={self.rank},{self.label}]"
        return f"{self.kind.value}[r={self.rank},c={self.chunk},m={self.microbatch}]"


CommModel = str  # "megatron" | "dataflow"
COMM_MODELS: tuple[str, ...] = ("megatron", "dataflow")


@dataclass(slots=True)
class Dag:
    """An iteration as a DAG with node durations (seconds)."""

    spec: ScheduleSpec
    comm_model: CommModel
    nodes: list[Node] = field(default_factory=list)
    duration: list[float] = field(default_factory=list)
    """Seconds, with nothing frozen."""
    saving: list[float] = field(default_factory=list)
    """Seconds saved at ratio 1 (backward - backward_frozen) on backward nodes; 0 elsewhere."""
    preds: list[list[int]] = field(default_factory=list)
    """preds[i]: nodes that must end before node i starts."""
    order: list[int] = field(default_factory=list)
    """A topological order of all nodes."""
    rank_program: list[list[int]] = field(default_factory=list)
    """rank_program[r]: the nodes rank r executes, in program order (compute and its P2P calls)."""

    def add(self, node: Node, duration: float, saving: float = 0.0) -> int:
        self.nodes.append(node)
        self.duration.append(duration)
        self.saving.append(saving)
        self.preds.append([])
        return len(self.nodes) - 1

    def backward_index(self) -> dict[tuple[int, int, int], int]:
        """(rank, chunk, microbatch) -> node id of that backward action."""
        return {
            (n.rank, n.chunk, n.microbatch): i
            for i, n in enumerate(self.nodes)
            if n.kind is NodeKind.BACKWARD
        }
