"""The profile command's progress sink: worker progress lines move bars, other lines pass."""

from __future__ import annotations

import io
import sys

from megatron_tf.cli._progress import phase_progress


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
