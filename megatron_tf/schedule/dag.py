"""The one DAG of an iteration, shared by the simulator and the LP.

Nodes are compute actions (forward, backward, and for a split-backward kind the weight
gradient, of a (rank, chunk, microbatch)) and P2P calls (megatron comm model) or message
transfers (dataflow comm model). An edge a -> b means b may not start before a ends. Every node
has a fixed duration except the action that carries the freezable weight-gradient work (the
backward of a fused kind, the W of a split one), whose duration is `duration - ratio * saving`
for a freeze ratio in [0, 1].

Because the simulator and the LP both read this structure, a plan's predicted makespan and
the simulator's makespan for that plan can only differ by solver tolerance.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum

from megatron_tf.errors import ConfigError
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.schedule.costs import CostModel
from megatron_tf.schedule.order import (
    ActionKind,
    Compute,
    Message,
    Op,
    P2PCall,
    Wait,
    compute_order,
    rank_programs,
)


class NodeKind(StrEnum):
    FORWARD = ActionKind.F.value
    BACKWARD = ActionKind.B.value
    """The whole backward (fused kinds) or the input gradient alone (split kinds)."""
    WEIGHT = ActionKind.W.value
    """The weight gradient, as its own action (split kinds)."""
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


COMPUTE_NODE: dict[ActionKind, NodeKind] = {
    ActionKind.F: NodeKind.FORWARD,
    ActionKind.B: NodeKind.BACKWARD,
    ActionKind.W: NodeKind.WEIGHT,
}

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
    """Seconds saved at ratio 1 on the freezable nodes (`freezable_kind`); 0 elsewhere."""
    preds: list[list[int]] = field(default_factory=list)
    """preds[i]: nodes that must end before node i starts."""
    order: list[int] = field(default_factory=list)
    """A topological order of all nodes."""
    rank_program: list[list[int]] = field(default_factory=list)
    """rank_program[r]: the nodes rank r executes, in program order (compute and its P2P calls)."""
    iteration_overhead: float = 0.0
    """Seconds after the last node that every iteration spends and no ratio changes (the
    gradient finalization); part of the makespan, not a node."""

    def add(self, node: Node, duration: float, saving: float = 0.0) -> int:
        self.nodes.append(node)
        self.duration.append(duration)
        self.saving.append(saving)
        self.preds.append([])
        return len(self.nodes) - 1

    @property
    def freezable_kind(self) -> NodeKind:
        """The node kind whose work a freeze ratio removes: the backward of a fused kind, the
        W of a kind that runs the weight gradient on its own."""
        return COMPUTE_NODE[self.spec.schedule_kind.freezable_action]

    def backward_index(self) -> dict[tuple[int, int, int], int]:
        """(rank, chunk, microbatch) -> node id of that backward action."""
        return self.action_index(NodeKind.BACKWARD)

    def freezable_index(self) -> dict[tuple[int, int, int], int]:
        """(rank, chunk, microbatch) -> node id of the action a plan's ratio applies to."""
        return self.action_index(self.freezable_kind)

    def freezable_nodes(self) -> list[int]:
        """Node ids of `freezable_kind`, in node order."""
        kind = self.freezable_kind
        return [i for i, n in enumerate(self.nodes) if n.kind is kind]

    def action_index(self, kind: NodeKind) -> dict[tuple[int, int, int], int]:
        """(rank, chunk, microbatch) -> node id of that compute action of `kind`."""
        return {
            (n.rank, n.chunk, n.microbatch): i for i, n in enumerate(self.nodes) if n.kind is kind
        }

    def topological_sort(self) -> None:
        """Fill `order` (Kahn's algorithm); a cycle means the model deadlocks, a bug."""
        n = len(self.nodes)
        indeg = [len(p) for p in self.preds]
        succs: list[list[int]] = [[] for _ in range(n)]
        for i, ps in enumerate(self.preds):
            for p in ps:
                succs[p].append(i)
        ready = [i for i in range(n) if indeg[i] == 0]
        ready.reverse()
        order: list[int] = []
        while ready:
            i = ready.pop()
            order.append(i)
            for s in succs[i]:
                indeg[s] -= 1
                if indeg[s] == 0:
                    ready.append(s)
        if len(order) != n:
            raise AssertionError(f"the DAG of {self.spec.describe()} has a cycle (deadlock)")
        self.order = order


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Building allocates ~10 small objects per action and frees none of them; the cyclic
    collector would rescan them all many times over (about 2x the build time at pp=16, vpp=4,
    M=256), so it is paused while the DAG is built."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build_dag(spec: ScheduleSpec, costs: CostModel, comm_model: CommModel = "megatron") -> Dag:
    """The DAG of one iteration of `spec` (see `_build_dag`)."""
    with _gc_paused():
        return _build_dag(spec, costs, comm_model)


def _build_dag(spec: ScheduleSpec, costs: CostModel, comm_model: CommModel) -> Dag:
    """The DAG of one iteration of `spec` with durations from `costs`.

    `megatron`: each rank runs its exact program (schedule/order.py). A blocking P2P call is one
    node that starts once its own rank reached it and every peer it exchanges a message with
    has posted the matching call (the node before that call on the peer), and lasts the longest
    of its messages. A non-blocking call (overlap_p2p_comm) only posts; its message is one
    in-flight node (or, if the peer's side blocks, that blocking node) which the rank's later
    `wait()` depends on.

    `dataflow`: compute nodes in each rank's program order, plus one node per message between
    producer and consumer; no rendezvous. This is what the textbook closed forms describe.
    """
    if comm_model not in COMM_MODELS:
        raise ConfigError(
            f"--comm-model must be one of {', '.join(COMM_MODELS)}, got {comm_model!r}"
        )
    dag = Dag(spec=spec, comm_model=comm_model, iteration_overhead=costs.iteration_overhead)
    dag.rank_program = [[] for _ in range(spec.pp)]
    compute_id: dict[tuple[str, int, int, int], int] = {}
    split = spec.schedule_kind.splits_backward

    def add_compute(rank: int, op: Compute) -> int:
        c, m = op.chunk, op.microbatch
        kind = COMPUTE_NODE[op.kind]
        if kind is NodeKind.FORWARD:
            i = dag.add(Node(kind, rank, c, m), costs.forward[rank][c][m])
        else:
            full = costs.backward[rank][c][m]
            # What freezing every freezable tensor removes: all of W's work at most.
            saving = max(full - costs.backward_frozen[rank][c][m], 0.0)
            weight = costs.weight[rank][c][m]
            if kind is NodeKind.WEIGHT:
                i = dag.add(Node(kind, rank, c, m), weight, min(saving, weight))
            elif split:
                i = dag.add(Node(kind, rank, c, m), max(full - weight, 0.0))
            else:
                i = dag.add(Node(kind, rank, c, m), full, saving)
        compute_id[(op.kind, rank, c, m)] = i
        return i

    if comm_model == "dataflow":
        for rank, actions in enumerate(compute_order(spec)):
            prev = -1
            for kind, chunk, mb in actions:
                i = add_compute(rank, Compute(kind, chunk, mb))
                if prev >= 0:
                    dag.preds[i].append(prev)
                dag.rank_program[rank].append(i)
                prev = i
        _add_dataflow_messages(dag, costs, compute_id)
    else:
        _build_megatron(dag, rank_programs(spec), costs, add_compute)
    dag.topological_sort()
    return dag


def _add_dataflow_messages(
    dag: Dag, costs: CostModel, compute_id: dict[tuple[str, int, int, int], int]
) -> None:
    """F(v, m) -> message -> F(v+1, m) and B(v, m) -> message -> B(v-1, m) (B is the input
    gradient; a split kind's W sends nothing)."""
    spec = dag.spec
    pp, stages = spec.pp, spec.stages
    for v in range(stages):
        rank, chunk = v % pp, v // pp
        for m in range(spec.microbatches):
            if v + 1 < stages:
                dst = (v + 1) % pp
                src_node = compute_id[(ActionKind.F, rank, chunk, m)]
                dst_node = compute_id[(ActionKind.F, dst, (v + 1) // pp, m)]
                label = f"act[v={v},m={m}:{rank}->{dst}]"
                msg = dag.add(
                    Node(NodeKind.P2P, rank, label=label), costs.message_time("act", rank)
                )
                dag.preds[msg].append(src_node)
                dag.preds[dst_node].append(msg)
            if v > 0:
                dst = (v - 1) % pp
                src_node = compute_id[(ActionKind.B, rank, chunk, m)]
                dst_node = compute_id[(ActionKind.B, dst, (v - 1) // pp, m)]
                label = f"grad[v={v},m={m}:{rank}->{dst}]"
                msg = dag.add(
                    Node(NodeKind.P2P, rank, label=label), costs.message_time("grad", rank)
                )
                dag.preds[msg].append(src_node)
                dag.preds[dst_node].append(msg)


def _build_megatron(
    dag: Dag,
    programs: list[list[Op]],
    costs: CostModel,
    add_compute: Callable[[int, Compute], int],
) -> None:
    # Pass 1: program nodes of every rank, program-order edges, and for every message (by its
    # dense uid) the "posted" point of each side (the node before the call; -1 at the start)
    # and the blocking node of each side, if any. Pass 2 adds the rendezvous edges and the
    # in-flight nodes of non-blocking messages.
    n_msgs = 1 + max(
        (m.uid for ops in programs for op in ops if isinstance(op, P2PCall) for m in op.sends),
        default=-1,
    )
    posted: list[list[int]] = [[] for _ in range(n_msgs)]
    blocking_node: list[int] = [-1] * n_msgs
    waits: list[tuple[int, Message]] = []  # (node that waits, or -1 at the end; message)
    call_nodes: list[tuple[P2PCall, int]] = []
    preds = dag.preds
    for rank, ops in enumerate(programs):
        prev = -1
        pending_waits: list[Message] = []
        program = dag.rank_program[rank]
        for index, op in enumerate(ops):
            if isinstance(op, Wait):
                pending_waits.append(op.message)
                continue
            if isinstance(op, P2PCall):
                msgs = op.messages
                for msg in msgs:
                    posted[msg.uid].append(prev)
                if not op.blocking:
                    continue
                duration = max(costs.message_time(m.kind, m.src) for m in msgs)
                i = dag.add(Node(NodeKind.P2P, rank, label=f"#{index}:{op.name}"), duration)
                for msg in msgs:
                    if blocking_node[msg.uid] < 0:
                        blocking_node[msg.uid] = i
                call_nodes.append((op, i))
            else:
                i = add_compute(rank, op)
            if prev >= 0:
                preds[i].append(prev)
            if pending_waits:
                waits.extend((i, msg) for msg in pending_waits)
                pending_waits = []
            program.append(i)
            prev = i
        # Waits after the last node only end the iteration (their message node is a sink).
        waits.extend((-1, msg) for msg in pending_waits)

    # Rendezvous: a blocking call also waits until each peer posted its side of each message.
    for op, i in call_nodes:
        mine = preds[i]
        for msg in op.messages:
            for p in posted[msg.uid]:
                if p >= 0 and p != i and p not in mine:
                    mine.append(p)

    # Completion of each message that some rank waits on.
    done: dict[int, int] = {}
    for i, msg in waits:
        j = done.get(msg.uid)
        if j is None:
            j = blocking_node[msg.uid]
            if j < 0:
                j = dag.add(
                    Node(NodeKind.P2P, msg.src, label=f"msg:{msg.name}"),
                    costs.message_time(msg.kind, msg.src),
                )
                preds[j].extend(p for p in posted[msg.uid] if p >= 0)
            done[msg.uid] = j
        if i >= 0 and j not in preds[i]:
            preds[i].append(j)
