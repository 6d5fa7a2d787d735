"""How TimelyFreeze prints for the user: the CLI's consoles and the worker processes' lines.

Every module that speaks to the user goes through here (no bare `print()`), so output takes one
way: the CLI renders with rich on `console` / `err_console`; a worker under torchrun writes
plain lines (`worker_line`), flushed at once, because the launcher copies worker output line by
line and the CLI's progress display reads `[profile] BAR: DONE/TOTAL` lines (`progress_line`).
"""

from __future__ import annotations

import os

from rich.console import Console

__all__ = [
    "console",
    "err_console",
    "progress_line",
    "rank_line",
    "worker_line",
]

console = Console()
"""The CLI's stdout (rich markup)."""
err_console = Console(stderr=True)
"""The CLI's stderr: errors, notes, progress."""

# Workers: no markup (a path may hold brackets), no highlighting, no wrapping at 80 columns.
_plain = {"markup": False, "highlight": False, "emoji": False, "soft_wrap": True}
_worker_out = Console(**_plain)  # type: ignore[arg-type]
_worker_err = Console(stderr=True, **_plain)  # type: ignore[arg-type]


def worker_line(text: str, *, err: bool = False) -> None:
    """One plain line from a worker process, on stdout (or stderr), flushed at once."""
    (_worker_err if err else _worker_out).print(text)
    (_worker_err if err else _worker_out).file.flush()


def rank_line(message: str, *, error: bool = False) -> None:
    """`timelyfreeze[rank R]: message` (errors: `timelyfreeze[rank R] error: ...` on stderr)."""
    rank = os.environ.get("RANK", "0")
    if error:
        worker_line(f"timelyfreeze[rank {rank}] error: {message}", err=True)
    else:
        worker_line(f"timelyfreeze[rank {rank}]: {message}")


def progress_line(bar: str, done: int, total: int) -> None:
    """A progress report the CLI turns into a bar (`cli/_progress.py`); rank 0 calls it."""
    worker_line(f"[profile] {bar}: {done}/{total}")
