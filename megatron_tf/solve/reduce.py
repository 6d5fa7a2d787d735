"""Series reduction of a `Dag` into the precedence rows of the LP.

The LP needs a start-time variable only where paths merge. A node with one predecessor
starts when that predecessor ends, and a node with one successor can hand its incoming paths
straight on: neither needs a variable, and substituting it never adds rows. What is left is
one "time" variable per merge point that feeds several successors, and rows

    t_dst >= t_base + const - sum_k coef_k * r_k

(`t_base` absent for paths from the iteration's start; `dst` may be the makespan T). On
Megatron's interleaved schedule this drops about two thirds of the variables and half the
rows of the node-per-action LP, which matters more than anything else for GLOP's time: the
simplex does roughly one pivot per variable here.

The reduction is exact: every DAG path is a chain of rows, every row is a DAG path, so the
LP's optimum equals the DAG's longest path at the LP's ratios (the tests check this with the
independent simulator).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_tf.schedule.dag import Dag

Terms = tuple[tuple[int, float], ...]
"""((freezable index k, seconds saved at r_k = 1), ...) along a path."""
_Alt = tuple[int, float, Terms]
"""One incoming path: (time variable or -1 for the iteration start, seconds, terms)."""

START = -1


@dataclass(frozen=True, slots=True)
class Precedence:
    """Rows `t[dst] - t[base] + sum coef * r >= const` (times in seconds)."""

    num_time_vars: int
    """Time variables 0..num_time_vars-1; `makespan` is the index of T."""
    dst: np.ndarray
    base: np.ndarray
    """-1 where the path starts at time 0."""
    const: np.ndarray
    term_ptr: np.ndarray
    """Terms of row i: term_r[term_ptr[i]:term_ptr[i + 1]]."""
    term_r: np.ndarray
    """Index into `freezable` (not a node id)."""
    term_coef: np.ndarray
    freezable: np.ndarray
    """Node ids of the backward nodes with a ratio variable (saving > 0), in variable order."""

    @property
    def makespan(self) -> int:
        return self.num_time_vars

    @property
    def num_rows(self) -> int:
        return int(self.dst.size)

    def baseline_values(self) -> tuple[np.ndarray, np.ndarray]:
        """Time values at r = 0 and, per time variable (and T), the row that sets it.

        Rows come in topological order of `dst`, so one sweep suffices. The tight rows give
        GLOP a primal-feasible starting basis (the r = 0 schedule) and spare it the
        feasibility phase, which on these LPs costs one pivot per DAG node.
        """
        values = np.zeros(self.num_time_vars + 1)
        tight = np.full(self.num_time_vars + 1, -1, dtype=np.int64)
        best = np.full(self.num_time_vars + 1, -np.inf)
        for i, (d, b, c) in enumerate(
            zip(self.dst.tolist(), self.base.tolist(), self.const.tolist(), strict=True)
        ):
            x = c + (values[b] if b >= 0 else 0.0)
            if x > best[d]:
                best[d] = x
                tight[d] = i
                values[d] = x
        return values, tight


def reduce_dag(dag: Dag) -> Precedence:
    """Series-reduce `dag` to the merge-point rows of the LP (see the module docstring)."""
    n = len(dag.nodes)
    saving = dag.saving
    duration = dag.duration
    kind = dag.freezable_kind
    freezable = [i for i in range(n) if saving[i] > 0 and dag.nodes[i].kind is kind]
    r_index = dict(zip(freezable, range(len(freezable)), strict=True))
    out_degree = [0] * n
    for preds in dag.preds:
        for a in preds:
            out_degree[a] += 1

    var_of = [-1] * n
    alts: list[list[_Alt]] = [[] for _ in range(n)]
    dst: list[int] = []
    base: list[int] = []
    const: list[float] = []
    terms: list[Terms] = []
    num_vars = 0

    def finish(a: int) -> list[_Alt]:
        """Incoming paths extended through node a (its finish time)."""
        own: Terms = ((r_index[a], saving[a]),) if a in r_index else ()
        if var_of[a] >= 0:
            return [(var_of[a], duration[a], own)]
        return [(b, c + duration[a], t + own) for b, c, t in alts[a]]

    def emit(d: int, paths: list[_Alt]) -> None:
        for b, c, t in paths:
            dst.append(d)
            base.append(b)
            const.append(c)
            terms.append(t)

    for node in dag.order:
        paths: list[_Alt] = []
        for a in dag.preds[node]:
            paths.extend(finish(a))
        paths = _prune(paths) if paths else [(START, 0.0, ())]
        k = out_degree[node]
        # A variable costs len(paths) + k rows; substituting costs len(paths) * k.
        if k >= 2 and len(paths) >= 2 and len(paths) * k > len(paths) + k:
            var_of[node] = num_vars
            emit(num_vars, paths)
            num_vars += 1
        else:
            alts[node] = paths
    sink_rows: list[_Alt] = []
    for node in range(n):
        if out_degree[node] == 0:
            sink_rows.extend(finish(node))
    emit(num_vars, _prune(sink_rows) if sink_rows else [(START, 0.0, ())])

    lengths = [len(t) for t in terms]
    ptr = np.zeros(len(terms) + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    flat = [pair for t in terms for pair in t]
    return Precedence(
        num_time_vars=num_vars,
        dst=np.asarray(dst, dtype=np.int64),
        base=np.asarray(base, dtype=np.int64),
        const=np.asarray(const, dtype=np.float64),
        term_ptr=ptr,
        term_r=np.fromiter((p[0] for p in flat), dtype=np.int64, count=len(flat)),
        term_coef=np.fromiter((p[1] for p in flat), dtype=np.float64, count=len(flat)),
        freezable=np.asarray(freezable, dtype=np.int64),
    )


def _prune(paths: list[_Alt]) -> list[_Alt]:
    """Drop paths that can never be the longest: same origin and terms with a smaller
    constant, or a constant below another path's shortest possible length (all its
    ratios at 1)."""
    best: dict[tuple[int, Terms], float] = {}
    for b, c, t in paths:
        key = (b, t)
        if c > best.get(key, -np.inf):
            best[key] = c
    merged = [(b, c, t) for (b, t), c in best.items()]
    if len(merged) < 2:
        return merged
    floor: dict[int, float] = {}
    for b, c, t in merged:
        shortest = c - sum(coef for _, coef in t)
        if shortest > floor.get(b, -np.inf):
            floor[b] = shortest
    kept = []
    for b, c, t in merged:
        f = floor[b]
        # keep unless another path from the same origin is always at least as long
        if c > f or (c == f and c - sum(coef for _, coef in t) == f):
            kept.append((b, c, t))
    return kept
