"""An in-job plan on its way: rank 0's solve runs beside training (`pretrain --replan-lag K`).

An in-job re-plan has two parts. The measurement needs the model, so every rank stops for it.
The solve needs only the profile, and at pipeline depths where planning pays most it takes
minutes (docs/lp.md), so rank 0 runs it on a thread while all ranks go on training under the
plan in force. The new plan takes effect at a fixed iteration, K after the measurement, on
every rank at once: the switch does not depend on how fast the solve was, so a run is
reproducible. If the solve is not done by then, rank 0 waits for it there, and says how long.

A checkpoint taken while a plan is on its way waits for the solve and stores the plan with
the iteration it is due at, so a resumed run switches where the uninterrupted one does.

Pure Python: the plan's broadcast is passed in by the trainer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from megatron_tf.train.plan_source import PlanSource

__all__ = ["PendingPlan", "PendingSolve", "SolvedPlan"]

SolvedPlan = tuple[dict[str, Any], str]
"""What rank 0's solve returns: the plan (`PlanSource.to_dict()`) and the auto budget's reason."""


class PendingSolve[T]:
    """`work()` on a thread, started now; `result()` waits for it on the caller's thread."""

    def __init__(self, work: Callable[[], T], *, name: str = "timelyfreeze solve") -> None:
        self.seconds = 0.0
        """How long the work ran (once it is done)."""
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], T]) -> None:
        began = time.perf_counter()
        try:
            self._value = work()
        except BaseException as exc:  # re-raised on the training thread by result()
            self._error = exc
        finally:
            self.seconds = time.perf_counter() - began

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> tuple[T | None, float]:
        """The work's value and the seconds spent waiting for it here.

        An exception the work raised is raised again here, on the caller's thread."""
        began = time.perf_counter()
        self._thread.join()
        waited = time.perf_counter() - began
        if self._error is not None:
            raise self._error
        return self._value, waited


@dataclass(kw_only=True, slots=True)
class PendingPlan:
    """A plan started at iteration `started` (measured then) and in force from `due` on."""

    started: int
    due: int
    what: str
    """For the run's log: `re-plan auto:1`, `re-pricing`."""
    then: tuple[str, str]
    """What every rank does with the plan: (`replan`, its folder) or (`reprice`, iteration)."""
    solve: PendingSolve[SolvedPlan] | None = None
    """Rank 0's solve (None on the other ranks and on a resumed run)."""
    solved: tuple[PlanSource, str] | None = None
    """The plan and the auto budget's reason, on every rank, once collected."""
    waited: float = 0.0
    """Seconds training waited for the solve (rank 0)."""

    @classmethod
    def start(
        cls,
        work: Callable[[], SolvedPlan] | None,
        *,
        iteration: int,
        lag: int,
        what: str,
        then: tuple[str, str],
    ) -> PendingPlan:
        if lag < 0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        solve = None if work is None else PendingSolve(work, name=f"timelyfreeze {what}")
        return cls(started=iteration, due=iteration + lag, what=what, then=then, solve=solve)

    def is_due(self, iteration: int) -> bool:
        return iteration >= self.due

    def collect(
        self, broadcast: Callable[[SolvedPlan | None], tuple[PlanSource, str]]
    ) -> tuple[PlanSource, str]:
        """The plan on every rank: rank 0 waits for its solve, `broadcast` shares it. Call on
        every rank at the same point; a second call returns the same plan, no collective."""
        if self.solved is None:
            value: SolvedPlan | None = None
            if self.solve is not None:
                value, self.waited = self.solve.result()
            self.solved = broadcast(value)
        return self.solved

    def to_dict(self) -> dict[str, Any]:
        """For a checkpoint; `collect` first (a plan still being solved cannot be stored)."""
        assert self.solved is not None, "collect() the plan before checkpointing it"
        plan, why = self.solved
        return {
            "started": self.started,
            "due": self.due,
            "what": self.what,
            "then": list(self.then),
            "plan": plan.to_dict(),
            "why": why,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PendingPlan:
        kind, arg = data["then"]
        return cls(
            started=int(data["started"]),
            due=int(data["due"]),
            what=str(data["what"]),
            then=(str(kind), str(arg)),
            solved=(PlanSource.from_dict(data["plan"]), str(data["why"])),
        )
