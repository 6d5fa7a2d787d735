"""`timelyfreeze demo` end to end at a tiny length: profile, solve, two runs, report.

The real command in a subprocess. Besides the files, it checks two properties of a fair
comparison: both runs start from the same seed (bit-identical losses until freezing starts),
and the report's predicted speedup is the plan's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "megatron_tf", "demo", "--iters", "20", "--out-dir", str(out)]
    proc = subprocess.run(
        [*cmd, "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("report.md", "timeline.png", "loss.png", "iteration_time.png", "plan.json"):
        assert (out / name).is_file(), name
    base = [json.loads(x) for x in (out / "baseline/metrics.jsonl").read_text().splitlines()]
    frozen = [json.loads(x) for x in (out / "timelyfreeze/metrics.jsonl").read_text().splitlines()]
    assert len(base) == len(frozen) == 20
    # The equal-wall-time run: 20 iterations x the side-by-side speedup (at least 20).
    equal = (out / "timelyfreeze_equal_time/metrics.jsonl").read_text().splitlines()
    assert len(equal) >= 20
    # --iters 20 gives a freeze warm-up of 2 iterations: identical runs until then.
    assert [r["loss"] for r in base[:2]] == [r["loss"] for r in frozen[:2]]
    assert [r["phase"] for r in frozen[:3]] == ["warmup", "warmup", "freeze"]
    predicted = json.loads((out / "plan.json").read_text())["predicted"]["speedup"]
    report = (out / "report.md").read_text()
    assert f"{predicted:.3f} / " in report
    assert "| reaches the baseline's final loss after" in report
    assert "speedup predicted" in proc.stdout
    # The side-by-side timing job alternated 10 stock and 10 planned iterations.
    timings = json.loads((out / "side_by_side/timings.json").read_text())
    assert {k: len(v) for k, v in timings.items()} == {"baseline": 10, "plan": 10}
    # The deep-pipeline section: pp 4 at the demo's length, labelled simulated everywhere.
    deep = out / "deep_pp4"
    assert (deep / "summary.json").is_file() and (deep / "loss_vs_time.png").is_file()
    summary = json.loads((deep / "summary.json").read_text())
    assert summary["time"].startswith("simulated time") and summary["seeds"] == [1]
    assert len((deep / "seed1/baseline/metrics.jsonl").read_text().splitlines()) == 20
    assert "## Deep pipeline: time to the baseline's loss (simulated time)" in report
    assert "deep pipeline (pp 4, SIMULATED time): auto budget cap" in proc.stdout
