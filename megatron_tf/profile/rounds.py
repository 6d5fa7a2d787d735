"""The order in which the profiler's phases run inside each measurement round (no torch).

A machine's speed drifts over seconds (shared CPUs, GPU clocks, other jobs). Measuring every
phase back to back in one round, K rounds, puts all phases under the same conditions; the order
inside a round changes from round to round so that no phase always runs first, or always right
after the same other phase (an iteration can leave caches, allocator or clocks in a state that
the next one inherits).

The rounds follow a Williams design: a Latin square whose rows are balanced for the phase that
runs just before. For an even number of phases n, over n rounds every phase runs once in each
position and every ordered pair (a, b) of different phases is adjacent exactly once; for an odd
n the n rows are followed by their reverses, and over 2n rounds each ordered pair is adjacent
exactly twice. Round k uses row k modulo the cycle.
"""

from __future__ import annotations

__all__ = ["round_orders", "williams_cycle"]


def williams_cycle(n: int) -> list[list[int]]:
    """The rows of the carryover-balanced design for n phases (n rows if n is even, else 2n)."""
    if n < 1:
        raise ValueError(f"need at least one phase, got {n}")
    # First row 0, 1, n-1, 2, n-2, ...: consecutive differences take every value mod n once.
    first = [0]
    low, high = 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    rows = [[(x + shift) % n for x in first] for shift in range(n)]
    if n % 2 and n > 1:
        rows += [row[::-1] for row in rows]
    return rows


def round_orders(n_phases: int, rounds: int) -> list[list[int]]:
    """Phase indices in run order for each of `rounds` rounds; round 0 starts with phase 0."""
    cycle = williams_cycle(n_phases)
    return [cycle[k % len(cycle)] for k in range(rounds)]
