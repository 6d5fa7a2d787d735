"""Carry a worker's user error (a bad plan, a mismatched layout) back to the `timelyfreeze` CLI.

torchrun turns any failed rank into its own exit code 1 and a long report, so the CLI could not
tell "your plan is for another layout" from "a rank crashed". A worker entry point runs inside
`report_user_errors()`: a `TimelyFreezeError` is printed as one line, written to
`$TIMELYFREEZE_ERROR_DIR/rank<R>.txt`, and the rank exits with code 2. The CLI reads the folder
after a failed job (`first_worker_error`) and exits 2 with that line, as for its own errors.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from megatron_tf.console import rank_line
from megatron_tf.errors import TimelyFreezeError
from megatron_tf.process.lifeline import die_with_parent

__all__ = ["ERROR_DIR_ENV", "WorkerUserError", "first_worker_error", "report_user_errors"]

ERROR_DIR_ENV = "TIMELYFREEZE_ERROR_DIR"


class WorkerUserError(TimelyFreezeError):
    """A worker refused to run for a reason the user can fix; the message is the worker's."""


@contextlib.contextmanager
def report_user_errors() -> Iterator[None]:
    """Turn a TimelyFreezeError in this worker into one line, a note for the CLI, and exit 2.

    Under torchrun the worker also asks to die with its torchrun (`lifeline.die_with_parent`),
    so a killed launcher leaves no worker behind.
    """
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent()
    try:
        yield
    except TimelyFreezeError as exc:
        message = " ".join(str(exc).split())
        rank = os.environ.get("RANK", "0")
        rank_line(message, error=True)
        folder = os.environ.get(ERROR_DIR_ENV)
        if folder:
            with contextlib.suppress(OSError):
                Path(folder, f"rank{rank}.txt").write_text(message + "\n", encoding="utf-8")
        raise SystemExit(2) from None


def first_worker_error(folder: str | os.PathLike[str]) -> str | None:
    """The message of the lowest rank that reported a user error, or None."""
    notes = []
    for path in Path(folder).glob("rank*.txt"):
        rank = path.stem.removeprefix("rank")
        if rank.isdigit():
            notes.append((int(rank), path))
    for _, path in sorted(notes):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            return text
    return None
