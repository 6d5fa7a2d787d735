"""Ctrl-C inside an LP pass: MathOpt solves that stop when the user asks.

A SIGINT that arrives while GLOP or PDLP runs on the main thread is never seen by Python
until the solve returns (the signal handler only sets a flag that the C++ solve does not
check), so a long solve ran to its end and wrote its plan. Here each solve runs in a worker
thread with an OR-Tools `PySolveInterrupter`; the main thread waits in short steps, where
Python does see the signal, and turns it into `interrupter.interrupt()`, which both solvers
poll between iterations. A solve in another thread (the multi-cap pool) cannot receive the
signal itself: the thread that does stops them all (`stopping()`) before it waits for them.

An interrupted solve still returns a result (GLOP reports FEASIBLE), so every caller must
treat `interrupted` as "raise KeyboardInterrupt", never as a plan.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["run_interruptible", "stopping"]

_WAIT_STEP = 0.1
"""seconds between two looks at a pending Ctrl-C while the worker solves."""

_lock = threading.Lock()
_running: set[Any] = set()
_stopping = 0
"""> 0 while some caller is stopping every solve: interrupters made then stop at once."""


def _new_interrupter() -> Any:
    from ortools.util.python.pybind_solve_interrupter import PySolveInterrupter

    interrupter = PySolveInterrupter()
    with _lock:
        _running.add(interrupter)
        if _stopping:
            interrupter.interrupt()
    return interrupter


def _forget(interrupter: Any) -> None:
    with _lock:
        _running.discard(interrupter)


@contextmanager
def stopping() -> Iterator[None]:
    """Every solve running now or started inside is interrupted at once (around a pool's
    shutdown after Ctrl-C, so that the shutdown does not wait for whole solves)."""
    global _stopping
    with _lock:
        _stopping += 1
        for interrupter in _running:
            interrupter.interrupt()
    try:
        yield
    finally:
        with _lock:
            _stopping -= 1


def run_interruptible[T](solve: Callable[[Any], T]) -> T:
    """`solve(interrupter)`, stoppable by Ctrl-C; raises KeyboardInterrupt if it was stopped.

    On the main thread the call runs in a worker thread and the main thread waits on an Event
    in `_WAIT_STEP` steps (a `Thread.join` with a timeout is not used: it can return before
    the worker's end). Elsewhere it runs in place: only `stopping()` can stop it there."""
    interrupter = _new_interrupter()
    try:
        if threading.current_thread() is not threading.main_thread():
            result = solve(interrupter)
        else:
            result = _on_worker(solve, interrupter)
        if interrupter.interrupted:
            raise KeyboardInterrupt
        return result
    finally:
        _forget(interrupter)


def _on_worker[T](solve: Callable[[Any], T], interrupter: Any) -> T:
    done = threading.Event()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = solve(interrupter)
        except BaseException as exc:  # handed to the waiting thread, raised there
            box["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=work, name="timelyfreeze-lp", daemon=True)
    worker.start()
    try:
        while not done.wait(_WAIT_STEP):
            pass
    except KeyboardInterrupt:
        interrupter.interrupt()
        _wait_through_interrupts(done)
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]


def _wait_through_interrupts(done: threading.Event) -> None:
    """Wait for the stopped worker even through more Ctrl-C: leaving it running while the
    interpreter exits aborts the process."""
    while True:
        try:
            while not done.wait(_WAIT_STEP):
                pass
            return
        except KeyboardInterrupt:
            continue
