"""What a long solve is doing, on stderr: `solve_status()` gives `solve_lp` its `progress`.

Used by `timelyfreeze solve` and by the in-job re-plan (train/injob.py), so a solve that takes
more than a few seconds never looks like a hang. Pure Python (rich), no torch.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from rich.console import Console

__all__ = ["SOLVE_QUIET_SECONDS", "solve_status"]

SOLVE_QUIET_SECONDS = 3.0
"""A solve shorter than this shows nothing; a longer one shows which step it is in."""


@contextlib.contextmanager
def solve_status(
    stream: TextIO | None = None, *, quiet_seconds: float = SOLVE_QUIET_SECONDS
) -> Iterator[Callable[[str], None]]:
    """A progress callback for `solve_profile`/`solve_lp` that reports on stderr.

    On a terminal: a live status line (step and seconds so far) once the solve has run
    `quiet_seconds`. Elsewhere (a log, CI): one line per step, `[solve] 12 s: pass 2 of 2 ...`,
    for the steps that start or are still running after `quiet_seconds`. stdout stays clean
    for `--json`.
    """
    out = stream if stream is not None else sys.stderr
    console = Console(file=out)
    started = time.monotonic()
    state = {"step": "", "printed": ""}
    lock = threading.Lock()
    stop = threading.Event()

    def elapsed() -> float:
        return time.monotonic() - started

    def plain_line() -> None:
        if state["step"] and state["printed"] != state["step"] and elapsed() >= quiet_seconds:
            out.write(f"[solve] {elapsed():.0f} s: {state['step']}\n")
            out.flush()
            state["printed"] = state["step"]

    def report(step: str) -> None:
        with lock:
            state["step"] = step
            if not console.is_terminal:
                plain_line()

    def watch() -> None:
        status = None
        while not stop.wait(0.25):
            with lock:
                if elapsed() < quiet_seconds:
                    continue
                if not console.is_terminal:
                    plain_line()
                    continue
                text = f"{state['step']} ({elapsed():.0f} s)"
                if status is None:
                    status = console.status(text)
                    status.start()
                else:
                    status.update(text)
        if status is not None:
            status.stop()

    watcher = threading.Thread(target=watch, name="solve-status", daemon=True)
    watcher.start()
    try:
        yield report
    finally:
        stop.set()
        watcher.join()
