"""Ctrl-C inside GLOP stops `timelyfreeze solve` at once: exit 130, the existing plan untouched.

The real CLI in a subprocess on a synthetic interleaved pp=16 vpp=4 M=128 profile (about
16,000 LP variables, several seconds per pass on 2 cores), SIGINT sent once the solve's
status line on stderr says an LP pass is running.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from megatron_tf.formats.profile import save_profile
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.schedule.costs import synthetic_profile

REPO = Path(__file__).resolve().parents[2]
PASS_LINE = " of 2: "
"""In the status line of an LP pass (`pass 1 of 2: shortest iteration ...`)."""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ctrl_c_inside_the_lp_exits_130_and_keeps_the_old_plan(tmp_path: Path) -> None:
    spec = ScheduleSpec(kind="interleaved", pp=16, vpp=4, microbatches=128)
    profile = tmp_path / "profile.json"
    save_profile(synthetic_profile(spec, [(1.0, 1.3, 0.9)]), profile)
    plan = tmp_path / "plan.json"
    plan.write_text('{"an earlier plan": true}\n')
    before = _sha(plan)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "megatron_tf", "solve", str(profile), "-o", str(plan)]
    with (tmp_path / "stderr.txt").open("w+") as err:
        proc = subprocess.Popen(
            [*args, "--max-freeze-ratio", "0.2"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + 120
        while PASS_LINE not in Path(err.name).read_text():
            assert proc.poll() is None, f"solve ended before its LP was seen: {proc.returncode}"
            assert time.monotonic() < deadline, "no LP pass reported on stderr"
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        stopped_after = time.monotonic() - sent
        stderr = Path(err.name).read_text()
    assert proc.returncode == 130, out + stderr
    assert "Freeze plan" not in out, out
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted"), stderr
    assert _sha(plan) == before
    assert stopped_after < 10, f"the LP took {stopped_after:.1f} s to stop"
