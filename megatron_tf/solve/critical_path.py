"""Longest-path timing of a `Dag` for given freeze ratios: start, finish, slack, makespan.

The LP reports the makespan of the plan it returns by evaluating the plan's ratios on the
DAG here, not by trusting the solver's `T`: the simulator (schedule/simulate.py, separate
code) must then agree with it exactly, which the tests check. Slack (how much a node could
be delayed without delaying the iteration) lets the tests and the docs show that freezing
lands only on the critical path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_tf.schedule.dag import Dag


@dataclass(frozen=True, slots=True)
class Timing:
    """Earliest schedule of a DAG with fixed durations (arrays indexed by node id)."""

    durations: np.ndarray
    """seconds, per node, after freezing."""
    start: np.ndarray
    """earliest start, seconds."""
    finish: np.ndarray
    """start + duration, seconds."""
    span: float
    """latest finish, seconds."""
    makespan: float
    """The iteration's time: `span` plus the DAG's iteration overhead."""

    def slack(self, dag: Dag) -> np.ndarray:
        """Per node: seconds it could start later without moving the makespan."""
        latest_finish = np.full(len(dag.nodes), self.span)
        for node in reversed(dag.order):
            latest_start = latest_finish[node] - self.durations[node]
            for pred in dag.preds[node]:
                if latest_start < latest_finish[pred]:
                    latest_finish[pred] = latest_start
        return latest_finish - self.finish


def node_durations(dag: Dag, node_ratios: np.ndarray | None) -> np.ndarray:
    """Durations after freezing: `duration - ratio * saving` (ratios indexed by node id)."""
    durations = np.asarray(dag.duration, dtype=np.float64)
    if node_ratios is None:
        return durations.copy()
    return durations - np.asarray(node_ratios, dtype=np.float64) * np.asarray(
        dag.saving, dtype=np.float64
    )


def evaluate(dag: Dag, node_ratios: np.ndarray | None = None) -> Timing:
    """As-soon-as-possible schedule of the DAG; `node_ratios[i]` is node i's freeze ratio."""
    durations = node_durations(dag, node_ratios)
    # Python floats in the loop: numpy scalar arithmetic is several times slower per element.
    dur = durations.tolist()
    finish = [0.0] * len(dur)
    start = [0.0] * len(dur)
    preds = dag.preds
    for node in dag.order:
        ready = 0.0
        for pred in preds[node]:
            if finish[pred] > ready:
                ready = finish[pred]
        start[node] = ready
        finish[node] = ready + dur[node]
    finish_arr = np.asarray(finish)
    span = float(finish_arr.max()) if len(finish) else 0.0
    return Timing(
        durations=durations,
        start=np.asarray(start),
        finish=finish_arr,
        span=span,
        makespan=span + dag.iteration_overhead,
    )
