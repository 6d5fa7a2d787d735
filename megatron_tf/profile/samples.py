"""The raw timings a measuring loop produces, and the one rule for reading durations from them.

Torch-free: the measuring loops (`runner.py`, `lm_profiler.py`) produce these on every rank,
`stats.py` and `replay.py` read them on rank 0. Seconds from the iteration's start, Python floats.
"""

from __future__ import annotations

from megatron_tf.formats.kinds.program import COMPUTE_KINDS

__all__ = ["GatheredTimings", "RankTimings", "RawAction", "RawIteration", "durations_with_gaps"]

RawAction = tuple[str, int, int, float, float]
"""One timed call: (kind, chunk, microbatch, start, end); kind is an `ActionKind` ("F", "B",
"W"), a P2P call's name, or WAIT_PREFIX + the request waited on."""

RawIteration = tuple[float, list[RawAction]]
"""One iteration of one rank: (wall seconds, its timed calls)."""

RankTimings = dict[str, list[RawIteration]]
"""phase -> this rank's iterations: what a measuring loop returns on each rank."""

GatheredTimings = dict[str, list[list[RawIteration]]]
"""phase -> [pipeline rank] -> iterations: what rank 0 builds a profile from."""


def durations_with_gaps(actions: list[RawAction]) -> list[float]:
    """Each action's duration plus the idle gaps the schedule's own code spends around it.

    With blocking P2P every wait happens inside a P2P call, so the time between two timed calls
    is Megatron's bookkeeping (schedules.py: tensor lists, output deallocation, loss
    reduction). It lies on the rank's path as much as the compute does; each gap goes to the
    compute action before it, or else to the compute action after it.
    """
    ordered = sorted(range(len(actions)), key=lambda i: actions[i][3])
    extra = [0.0] * len(actions)
    for i, j in zip(ordered, ordered[1:], strict=False):
        gap = max(0.0, actions[j][3] - actions[i][4])
        if actions[i][0] in COMPUTE_KINDS:
            extra[i] += gap
        elif actions[j][0] in COMPUTE_KINDS:
            extra[j] += gap
    return [a[4] - a[3] + extra[k] for k, a in enumerate(actions)]
