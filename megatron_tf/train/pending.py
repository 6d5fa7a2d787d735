"""A re-plan's solve that runs beside training (`pretrain --replan-lag K`).

An in-job re-plan has two parts. The measurement needs the model, so every rank stops for it.
The solve needs only the profile, and at pipeline depths where planning pays most it takes
minutes (docs/lp.md), so rank 0 runs it on a thread while all ranks go on training under the
plan in force. The new plan takes effect at a fixed iteration, K after the measurement, on
every rank at once: the switch does not depend on how fast the solve was, so a run is
reproducible. If the solve is not done by then, rank 0 waits for it there, and says how long.

Pure Python: the plan's broadcast is the trainer's job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["PendingSolve"]


class PendingSolve[T]:
    """`work()` started at iteration `started` on a thread; its result is due at `due`.

    Ranks other than 0 hold one with `work=None`: they only need to know when the plan comes.
    """

    def __init__(self, work: Callable[[], T] | None, *, started: int, lag: int, what: str) -> None:
        if lag < 0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        self.started = started
        self.due = started + lag
        self.what = what
        """What is being solved, for the run's log (`re-plan 1`, `re-pricing`)."""
        self.solve_seconds = 0.0
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if work is not None:
            self._thread = threading.Thread(
                target=self._run, args=(work,), name=f"timelyfreeze {what}", daemon=True
            )
            self._thread.start()

    def _run(self, work: Callable[[], T]) -> None:
        began = time.perf_counter()
        try:
            self._value = work()
        except BaseException as exc:  # re-raised on the training thread by result()
            self._error = exc
        finally:
            self.solve_seconds = time.perf_counter() - began

    def is_due(self, iteration: int) -> bool:
        return iteration >= self.due

    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def result(self) -> tuple[T | None, float]:
        """The work's value (None without work) and the seconds spent waiting for it here.

        An exception the work raised is raised again here, on the caller's thread."""
        began = time.perf_counter()
        if self._thread is not None:
            self._thread.join()
        waited = time.perf_counter() - began
        if self._error is not None:
            raise self._error
        return self._value, waited
