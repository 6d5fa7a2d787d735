"""Progress displays: bars for torchrun jobs whose rank 0 prints `[profile] BAR: DONE/TOTAL`,
and `solve_status`, the step-and-seconds line of a long `solve`.

The profiler's worker reports `warm-up` per iteration and `rounds` per measured round (one
iteration of every phase); in-job and other callers may name their own bars.

The launcher copies the workers' stdout line by line to `sys.stdout`; while the display is
live, `sys.stdout` is a sink that turns those progress lines into bar updates and passes every
other line through (rich prints it above the bars).
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["phase_progress", "solve_status"]

_LINE = re.compile(r"^\[profile\] (?P<phase>[\w.\-]+): (?P<done>\d+)/(?P<total>\d+)$")


class _LineSink(io.TextIOBase):
    def __init__(self, passthrough: io.TextIOBase, progress: Progress, tasks: dict) -> None:
        self._out = passthrough
        self._progress = progress
        self._tasks = tasks
        self._buffer = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._buffer += text
            *lines, self._buffer = self._buffer.split("\n")
            for line in lines:
                self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        match = _LINE.match(line.strip())
        if match and match["phase"] in self._tasks:
            self._progress.update(self._tasks[match["phase"]], completed=int(match["done"]))
        else:
            self._out.write(line + "\n")

    def flush(self) -> None:
        self._out.flush()


@contextlib.contextmanager
def phase_progress(phases: Sequence[tuple[str, int]]) -> Iterator[None]:
    """Show one bar per (name, total) while the block runs; a total of 0 shows no bar."""
    real = sys.stdout
    progress = Progress(
        TextColumn("{task.description:>12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=real),
    )
    tasks = {name: progress.add_task(name, total=total) for name, total in phases if total > 0}
    with progress:
        # Live has replaced sys.stdout with a proxy that prints above the bars.
        sink = _LineSink(sys.stdout, progress, tasks)  # type: ignore[arg-type]
        with contextlib.redirect_stdout(sink):
            yield


SOLVE_QUIET_SECONDS = 3.0
"""A solve shorter than this shows nothing; a longer one shows which step it is in."""


@contextlib.contextmanager
def solve_status(
    stream: io.TextIOBase | None = None, *, quiet_seconds: float = SOLVE_QUIET_SECONDS
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
