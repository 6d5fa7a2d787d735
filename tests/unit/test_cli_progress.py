"""Progress displays: the profile command's bars, and the step line of a long solve."""

from __future__ import annotations

import io
import sys
import time

from megatron_tf.cli._progress import phase_progress
from megatron_tf.solve.progress import solve_status


def test_progress_lines_update_bars_and_other_lines_pass_through() -> None:
    captured = io.StringIO()
    saved = sys.stdout
    sys.stdout = captured
    try:
        with phase_progress([("warm-up", 1), ("unfrozen", 2)]):
            sink = sys.stdout
            sink.write("[profile] warm-up: 1/1\n[profile] unfrozen: 1/2\n")
            sink.write("a rank's own li")
            sink.write("ne\n[profile] unfrozen: 2/2\n")
            progress = sink._progress  # type: ignore[attr-defined]
            done = {t.description: t.completed for t in progress.tasks}
    finally:
        sys.stdout = saved
    assert done == {"warm-up": 1, "unfrozen": 2}
    text = captured.getvalue()
    assert "a rank's own line" in text
    assert "[profile] unfrozen" not in text


def test_solve_status_names_long_steps_and_stays_quiet_on_short_ones() -> None:
    """Not a terminal (a log): one `[solve] N s: step` line per step once the solve has run
    `quiet_seconds`; a solve shorter than that prints nothing."""
    quiet = io.StringIO()
    with solve_status(quiet, quiet_seconds=60.0) as report:
        report("pass 1 of 2: shortest iteration")
        report("pass 2 of 2: least freezing")
    assert quiet.getvalue() == ""

    log = io.StringIO()
    with solve_status(log, quiet_seconds=0.3) as report:
        report("pass 1 of 2: shortest iteration")  # before the quiet period: not yet
        assert log.getvalue() == ""
        time.sleep(0.8)  # still running past it: the watcher names it
        report("pass 2 of 2: least freezing")  # after it: at once
    lines = log.getvalue().splitlines()
    assert [ln.split(": ", 1)[1] for ln in lines] == [
        "pass 1 of 2: shortest iteration",
        "pass 2 of 2: least freezing",
    ]
    assert all(ln.startswith("[solve] ") and " s: " in ln for ln in lines)
