"""A rich progress display for torchrun jobs whose rank 0 prints `[profile] BAR: DONE/TOTAL`.

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
from collections.abc import Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["phase_progress"]

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


BUSY_ACTIONS = 50_000
"""Schedules from this size on take seconds to model (about 50 us per action): show a spinner."""


def busy(what: str, actions: int) -> contextlib.AbstractContextManager[object]:
    """A spinner with elapsed time on stderr while a large schedule is modelled or solved."""
    if actions < BUSY_ACTIONS:
        return contextlib.nullcontext()
    return Console(stderr=True).status(f"{what} ({actions:,} actions)...")
