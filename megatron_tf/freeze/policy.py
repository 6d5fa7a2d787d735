"""Which units to freeze for each (chunk, microbatch) of an iteration on one pipeline rank.

Rules (docs/runtime.md, "What is frozen, and what is skipped"):
- ratio r on (chunk, microbatch) freezes units whose cost adds up to about r of the chunk's
  total (a unit is taken when it brings the frozen cost closer to the target);
- the choice depends only on (seed, iteration, rank, chunk, microbatch) and the policy's
  state, which every data- and tensor-parallel replica shares, so replicas freeze alike;
- units are taken least-often-frozen first (counts kept across iterations), so over
  iterations each unit is frozen about equally often; ties are broken by a seeded shuffle;
- every unit is trained on at least one microbatch of every iteration (a repair pass
  unfreezes it on the microbatch that overshot its target most, and freezes a replacement
  there when one keeps the cost closer to the target).

The first virtual stage is different. Its backward ends at the embedding, so freezing a
weight in the middle of it saves only that weight's wgrad: autograd still carries the input
gradient down to every trainable norm and bias below. There the policy freezes a PREFIX in
forward order (embedding, then layer 0's units, ...), and the runtime freezes the prefix
whole, norms and biases included (`units.prefix_closure`), so autograd stops at the first
trainable unit and the backward shrinks about linearly with the ratio, as the LP assumes.
What changes on that stage:
- the choice ignores the balance counts: the same ratio freezes the same prefix in every
  iteration, so the lowest units are frozen most often. "Balanced across iterations" cannot
  hold for a prefix; it is the price of a saving the LP can predict;
- coverage: the embedding is trained only on a microbatch with nothing frozen, so the repair
  empties the prefix of one microbatch (the one whose prefix costs least; the LP's
  `min_trained_microbatches` floor means one with ratio < 1 exists) instead of unfreezing
  single units, which keeps every microbatch's frozen set a prefix;
- a microbatch with every unit frozen is "full": the whole chunk is frozen and the runtime
  runs no backward for it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from megatron_tf.errors import ConfigError
from megatron_tf.freeze.config import FreezeConfig
from megatron_tf.freeze.units import UnitSpec

Ratios = list[list[float]]  # [chunk][microbatch]

# 2: units in forward order (linear_qkv before linear_proj) and the first-stage prefix rule;
# a version-1 state's counts are in another unit order, so it is refused, not misread.
STATE_VERSION = 2

# 64-bit mixing constants (splitmix64) for the seeded tie-break.
_GOLDEN = 0x9E3779B97F4A7C15
_MIX = 0xBF58476D1CE4E5B9
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class IterationMasks:
    """The decision for one iteration on one rank."""

    iteration: int
    frozen: tuple[tuple[frozenset[int], ...], ...]
    """[chunk][microbatch] -> indices (into that chunk's unit list) of the frozen units."""
    full: tuple[tuple[bool, ...], ...]
    """[chunk][microbatch] -> first virtual stage, everything frozen, no backward."""
    ratios: tuple[tuple[float, ...], ...]
    """[chunk][microbatch] -> the effective ratio after warm-up and ramp."""

    def active_counts(self, chunk: int, num_units: int) -> list[int]:
        """Per unit of `chunk`: on how many microbatches it is trained."""
        counts = [0] * num_units
        for frozen in self.frozen[chunk]:
            for unit in range(num_units):
                if unit not in frozen:
                    counts[unit] += 1
        return counts

    def any_frozen(self) -> bool:
        return any(f for per_chunk in self.frozen for f in per_chunk)


def validate_ratios(ratios: Sequence[Sequence[float]], chunks: int, microbatches: int) -> Ratios:
    """A copy of `ratios` as floats, or a ConfigError naming what is wrong."""
    if len(ratios) != chunks:
        raise ConfigError(f"ratios: expected {chunks} chunk(s) on this rank, got {len(ratios)}")
    out = []
    for chunk, row in enumerate(ratios):
        if len(row) != microbatches:
            raise ConfigError(
                f"ratios[{chunk}]: expected {microbatches} microbatches, got {len(row)}"
            )
        values = [float(x) for x in row]
        for mb, value in enumerate(values):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"ratios[{chunk}][{mb}] must lie in [0, 1], got {value}")
        out.append(values)
    return out


class FreezePolicy:
    """Stateful chooser of frozen units for one pipeline rank (all its chunks)."""

    def __init__(
        self,
        *,
        units: Sequence[Sequence[UnitSpec]],
        ratios: Sequence[Sequence[float]],
        rank: int,
        first_stage_chunk: int | None,
        config: FreezeConfig,
    ) -> None:
        """`units[chunk]` in model order; `ratios[chunk][microbatch]`; `first_stage_chunk`
        is the chunk holding virtual stage 0 on this rank (None on other ranks)."""
        self.units = [list(u) for u in units]
        if not self.units:
            raise ConfigError("the freeze policy needs at least one model chunk")
        self.microbatches = len(ratios[0]) if ratios else 0
        self.ratios = validate_ratios(ratios, len(self.units), self.microbatches)
        self.rank = rank
        self.first_stage_chunk = first_stage_chunk
        self.config = config
        self.counts = [[0] * len(u) for u in self.units]  # times frozen, per unit
        self.next_iteration = 0
        self._last: IterationMasks | None = None

    def set_ratios(self, ratios: Sequence[Sequence[float]]) -> None:
        """Replace the planned ratios (in-job re-planning); counts carry over."""
        self.ratios = validate_ratios(ratios, len(self.units), self.microbatches)
        self._last = None

    def effective_ratios(self, iteration: int) -> Ratios:
        factor = self.config.ramp_factor(iteration)
        return [[r * factor for r in row] for row in self.ratios]

    def plan(self, iteration: int) -> IterationMasks:
        """The masks of `iteration`; advances the balance counts once per iteration."""
        if self._last is not None and self._last.iteration == iteration:
            return self._last
        ratios = self.effective_ratios(iteration)
        frozen, full = [], []
        for chunk, units in enumerate(self.units):
            sets = [
                self._choose(iteration, chunk, mb, ratios[chunk][mb])
                for mb in range(len(ratios[chunk]))
            ]
            if self.config.coverage:
                self._repair(iteration, chunk, sets, ratios[chunk])
            first = chunk == self.first_stage_chunk
            full.append(tuple(first and len(s) == len(units) > 0 for s in sets))
            frozen.append(tuple(frozenset(s) for s in sets))
        self.next_iteration = iteration + 1
        self._last = IterationMasks(
            iteration=iteration,
            frozen=tuple(frozen),
            full=tuple(full),
            ratios=tuple(tuple(row) for row in ratios),
        )
        return self._last

    # -- selection ------------------------------------------------------------------------

    def _tiebreak(self, iteration: int, chunk: int, mb: int) -> list[int]:
        """Per unit, a secondary sort key: a shuffle seeded by (seed, iteration, rank, chunk,
        microbatch)."""
        n = len(self.units[chunk])
        # str seeds are hashed with SHA-512 by `random`, so every process agrees; one draw per
        # (chunk, microbatch), then a cheap integer mix per unit (a shuffle costs 10x more).
        salt = random.Random(f"{self.config.seed}:{iteration}:{self.rank}:{chunk}:{mb}")
        bits = salt.getrandbits(64)
        return [(((i + 1) * _GOLDEN) ^ bits) * _MIX & _MASK64 for i in range(n)]

    def _choose(self, iteration: int, chunk: int, mb: int, ratio: float) -> set[int]:
        units, counts = self.units[chunk], self.counts[chunk]
        if ratio <= 0.0 or not units:
            return set()
        if ratio >= 1.0:
            chosen = set(range(len(units)))
        elif chunk == self.first_stage_chunk:
            chosen = self._prefix(units, ratio)
        else:
            target = ratio * sum(u.cost for u in units)
            tie = self._tiebreak(iteration, chunk, mb)
            chosen, cost = set(), 0.0
            for i in sorted(range(len(units)), key=lambda i: (counts[i], tie[i])):
                if cost + units[i].cost / 2 < target:  # taking it brings us closer
                    chosen.add(i)
                    cost += units[i].cost
        for i in chosen:
            counts[i] += 1
        return chosen

    @staticmethod
    def _prefix(units: list[UnitSpec], ratio: float) -> set[int]:
        """The forward-order prefix whose cost is closest to `ratio` of the chunk's."""
        target = ratio * sum(u.cost for u in units)
        chosen, cost = set(), 0.0
        for i in sorted(range(len(units)), key=lambda i: units[i].order):
            if cost + units[i].cost / 2 >= target:  # taking it would not bring us closer
                break
            chosen.add(i)
            cost += units[i].cost
        return chosen

    def _repair(
        self, iteration: int, chunk: int, sets: list[set[int]], ratios: list[float]
    ) -> None:
        """Make every unit trained on >= 1 microbatch, keeping costs near their targets."""
        if chunk == self.first_stage_chunk:
            self._repair_prefix(chunk, sets)
            return
        units, counts = self.units[chunk], self.counts[chunk]
        total = sum(u.cost for u in units)
        m = len(sets)
        trained = [sum(1 for s in sets if i not in s) for i in range(len(units))]
        frozen_cost = [sum(units[i].cost for i in s) for s in sets]
        for unit in range(len(units)):
            if trained[unit] > 0:
                continue
            # Unfreeze it where the frozen cost overshoots its target most (last such mb).
            mb = max(range(m), key=lambda k: (frozen_cost[k] - ratios[k] * total, -k))
            sets[mb].discard(unit)
            counts[unit] -= 1
            trained[unit] += 1
            frozen_cost[mb] -= units[unit].cost
            # Freeze a replacement there if it brings the cost closer to the target and stays
            # trained on another microbatch (it is trained on mb now, so needs >= 2).
            target, cost = ratios[mb] * total, frozen_cost[mb]
            candidates = [
                i
                for i in range(len(units))
                if i not in sets[mb] and trained[i] >= 2 and cost + units[i].cost / 2 < target
            ]
            if candidates:
                tie = self._tiebreak(iteration, chunk, mb)
                best = min(candidates, key=lambda i: (counts[i], tie[i]))
                sets[mb].add(best)
                counts[best] += 1
                trained[best] -= 1
                frozen_cost[mb] += units[best].cost

    def _repair_prefix(self, chunk: int, sets: list[set[int]]) -> None:
        """First virtual stage: if no microbatch trains everything, empty the cheapest prefix
        (the embedding is trained only where nothing is frozen); the later microbatch wins a
        tie. Every other frozen set stays the prefix it was."""
        units, counts = self.units[chunk], self.counts[chunk]
        if not units or any(not s for s in sets):
            return
        mb = min(range(len(sets)), key=lambda k: (sum(units[i].cost for i in sets[k]), -k))
        for i in sets[mb]:
            counts[i] -= 1
        sets[mb].clear()

    # -- checkpointing --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to freeze exactly as the uninterrupted one."""
        return {
            "version": STATE_VERSION,
            "rank": self.rank,
            "next_iteration": self.next_iteration,
            "counts": [list(c) for c in self.counts],
            "units": [[u.name for u in units] for units in self.units],
            "ratios": [list(r) for r in self.ratios],
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ConfigError(
                f"freezer state version {state.get('version')!r} is not {STATE_VERSION}; "
                "the checkpoint was written by another TimelyFreeze version"
            )
        names = [[u.name for u in units] for units in self.units]
        if state["units"] != names or state["rank"] != self.rank:
            raise ConfigError(
                "the freezer state in the checkpoint belongs to another model layout or "
                "pipeline rank; resume with the same --pp/--vpp and model"
            )
        self.counts = [list(c) for c in state["counts"]]
        self.next_iteration = int(state["next_iteration"])
        self.ratios = validate_ratios(state["ratios"], len(self.units), self.microbatches)
        self.config = FreezeConfig.from_dict(state["config"])
        self._last = None
