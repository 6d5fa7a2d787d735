"""Nothing lost, nothing silent: the cases that need a real torchrun job.

The real `timelyfreeze pretrain` in a subprocess, gloo on CPU, the embedded corpus:
- resume semantics: an explicit --no-freeze or --plan on resume replaces the checkpoint's plan
  with a line saying so; without either the checkpoint's plan continues and the phase says so;
- Ctrl-C: exit 130, one summary line, no traceback, no process of the job left;
- a SIGKILLed CLI leaves no torchrun or worker behind;
- a stopped rank (SIGSTOP) fails the job after --collective-timeout, naming that rank.
The fast cases (bad input, damaged checkpoints, pre-flight, size bound) are in
tests/unit/test_reliability.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import uniform_plan

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300


def _env(tmp: Path) -> dict[str, str]:
    # The marker finds this test's processes in /proc (workers inherit the environment).
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        TIMELYFREEZE_CACHE=str(tmp / "cache"),
        TF_RELIABILITY_MARK=str(tmp),
    )


def _cmd(tmp: Path, out: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "megatron_tf",
        "pretrain",
        "--out-dir",
        str(tmp / out),
        "--microbatches",
        "4",
        "--log-interval",
        "1",
        "--lr-warmup-iters",
        "1",
        *args,
    ]


def _run(tmp: Path, out: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        _cmd(tmp, out, *args),
        cwd=REPO,
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _records(tmp: Path, out: str) -> list[dict]:
    lines = (tmp / out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_resume_flags_win_and_the_phase_matches_what_runs(tmp_path: Path) -> None:
    plan = uniform_plan(tmp_path / "half.json", pp=2, vpp=1, microbatches=4, ratio=0.5)
    zeros = uniform_plan(tmp_path / "zeros.json", pp=2, vpp=1, microbatches=4, ratio=0.0)
    common = ["--iters", "4"]
    _run(
        tmp_path,
        "a",
        *common,
        "--plan",
        str(plan),
        "--save",
        str(tmp_path / "ck"),
        "--exit-after-iters",
        "2",
    )
    load = ["--load", str(tmp_path / "ck")]

    baseline = _run(tmp_path, "b", *common, *load, "--no-freeze")
    assert f"--no-freeze replaces the checkpoint's plan ({plan})" in baseline.stdout
    records = _records(tmp_path, "b")
    assert [r["iteration"] for r in records] == [3, 4]
    assert all(r["phase"] == "train" and r["freeze_ratio"] == [] for r in records)

    replanned = _run(tmp_path, "c", *common, *load, "--plan", str(zeros))
    assert f"--plan {zeros} replaces the checkpoint's plan ({plan})" in replanned.stdout
    records = _records(tmp_path, "c")
    assert all(r["phase"] == "freeze" and r["freeze_ratio"] == [0.0, 0.0] for r in records)

    continued = _run(tmp_path, "d", *common, *load)
    assert f"continuing the checkpoint's plan ({plan})" in continued.stdout
    records = _records(tmp_path, "d")
    # The console and metrics say "freeze" because the checkpoint's plan is what runs.
    assert all(r["phase"] == "freeze" and min(r["freeze_ratio"]) > 0.2 for r in records)


def _job_pids(tmp: Path) -> dict[int, int]:
    """pid -> RANK of this test's live workers and torchrun (RANK -1), found by the marker."""
    mark = f"TF_RELIABILITY_MARK={tmp}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if mark in env and state != "Z":
            rank = next((x[5:] for x in env if x.startswith(b"RANK=")), b"-1")
            found[int(entry)] = int(rank)
    return found


def _start(tmp: Path, *args: str) -> subprocess.Popen[str]:
    """A long job, returned once it has trained an iteration (so every rank is in the loop)."""
    proc = subprocess.Popen(
        _cmd(tmp, "run", "--iters", "100000", *args),
        cwd=REPO,
        env=_env(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp / "run" / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    return proc


def _none_left(tmp: Path, within: float) -> None:
    deadline = time.monotonic() + within
    while _job_pids(tmp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _job_pids(tmp) == {}, _job_pids(tmp)


def test_ctrl_c_stops_the_whole_job_with_one_line(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "Traceback" not in out + err
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: stopped by SIGINT (Ctrl-C)"), err
    _none_left(tmp_path, within=5)


def test_a_killed_cli_leaves_no_worker_behind(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    ranks = sorted(_job_pids(tmp_path).values())
    assert ranks == [-1, -1, 0, 1], ranks  # the CLI, torchrun, two workers
    proc.kill()
    proc.communicate(timeout=30)
    _none_left(tmp_path, within=60)


def test_a_stopped_rank_fails_the_job_after_the_collective_timeout(tmp_path: Path) -> None:
    proc = _start(tmp_path, "--collective-timeout", "5")
    [stuck] = [pid for pid, rank in _job_pids(tmp_path).items() if rank == 1]
    os.kill(stuck, signal.SIGSTOP)
    start = time.monotonic()
    out, err = proc.communicate(timeout=TIMEOUT)
    waited = time.monotonic() - start
    assert proc.returncode == 1, out[-2000:] + err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last == (
        f"error: the job failed (torchrun exit code 1): rank 1 (pid {stuck}) was stopped and "
        "never answered; the other ranks gave up after --collective-timeout 5 s"
    ), err[-3000:]
    assert waited < 5 + 60, waited  # the timeout, then torchrun's own shutdown of the group
    _none_left(tmp_path, within=30)
