"""Nothing lost, nothing silent: the fast cases, through the real CLI entry point.

Every bad input below must end with exit code 2 and exactly one `error:` line naming the flag,
field or file, with no traceback; checkpoints are never overwritten or made unreachable; a large
layout is refused before anything is built. The CLI runs in this process (`main()` with its
argv), so these take milliseconds each. The fault cases that need a real torchrun job are in
tests/dist/test_reliability_dist.py; here the launcher is exercised with a stand-in torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from megatron_tf.cli._app import main
from megatron_tf.errors import ConfigError, FormatError
from megatron_tf.formats.layout import ModelConfig, ParallelConfig
from megatron_tf.formats.plan import load_plan
from megatron_tf.formats.profile import default_file_mode, load_profile
from megatron_tf.formats.schedule import DEFAULT_MAX_ACTIONS, MAX_ACTIONS_ENV, ScheduleSpec
from megatron_tf.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]
READ_ONLY = Path("/sys")
"""Nothing can be created in /sys, not even by root (chmod-based tests would pass as root)."""
NO_DIR = READ_ONLY / "timelyfreeze-test"
"""A folder that cannot be created."""

SCHEDULE = ["--schedule", "1f1b", "--pp", "2", "--microbatches", "4"]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `timelyfreeze ARGS` in-process; returns (exit code, stdout, stderr)."""
    saved = sys.argv
    sys.argv = ["timelyfreeze", *args]
    try:
        with pytest.raises(SystemExit) as stop:
            main()
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    code = stop.value.code
    return (code if isinstance(code, int) else 0), out, err


def refused(capsys: pytest.CaptureFixture[str], needle: str, *args: str) -> str:
    """Assert exit 2 with one `error:` line holding `needle`; return that line."""
    code, out, err = cli(capsys, *args)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, out + err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in out + err
    return lines[0]


def _profile(tmp: Path) -> Path:
    path = tmp / "p.json"
    code = main_ok(["profile", "--synthetic", *SCHEDULE, "--costs", "1,1,1", "-o", str(path)])
    assert code == 0
    return path


def main_ok(args: list[str]) -> int:
    saved = sys.argv
    sys.argv = ["timelyfreeze", *args]
    try:
        with pytest.raises(SystemExit) as stop:
            main()
    finally:
        sys.argv = saved
    return int(stop.value.code or 0)


# --- checkpoints -------------------------------------------------------------------------------

MODEL = ModelConfig().to_dict()
PARALLEL = ParallelConfig(pp=2, microbatches=8).to_dict()


def _save(root: Path, iteration: int, *, overwrite: bool = False) -> Path:
    return ckpt.save_checkpoint(
        root,
        iteration,
        {"w": torch.full((3,), float(iteration))},
        {"model": MODEL, "parallel": PARALLEL},
        rank=0,
        barrier=lambda: None,
        overwrite=overwrite,
    )


def _pretrain(tmp: Path, *args: str) -> list[str]:
    """Flags of a pretrain that stops before launch (`--dry-run`)."""
    return ["pretrain", "--out-dir", str(tmp / "out"), "--mock-data", "--dry-run", *args]


def test_damaged_latest_is_refused_naming_the_file(tmp_path: Path, capsys) -> None:
    _save(tmp_path / "ck", 4)
    (tmp_path / "ck" / "latest").write_bytes(b"\xffgarbage\n")
    line = refused(
        capsys, "ck/latest is damaged", *_pretrain(tmp_path, "--load", str(tmp_path / "ck"))
    )
    assert "--load " + str(tmp_path / "ck" / "iter_0000004") in line  # the way out


def test_missing_latest_beside_checkpoints_is_refused(tmp_path: Path, capsys) -> None:
    _save(tmp_path / "ck", 5)
    (tmp_path / "ck" / "latest").unlink()
    refused(
        capsys,
        f"ck/latest is missing but the folder holds checkpoints (iter_0000005); to resume from "
        f"one, pass --load {tmp_path / 'ck' / 'iter_0000005'}",
        *_pretrain(tmp_path, "--load", str(tmp_path / "ck")),
    )


def test_missing_meta_json_is_refused_and_names_the_previous_checkpoint(tmp_path, capsys) -> None:
    _save(tmp_path / "ck", 4)
    _save(tmp_path / "ck", 5)
    (tmp_path / "ck" / "iter_0000005" / "meta.json").unlink()
    line = refused(
        capsys,
        "iter_0000005/meta.json is missing",
        *_pretrain(tmp_path, "--load", str(tmp_path / "ck")),
    )
    assert (
        f"the previous complete checkpoint is iter_0000004: pass --load {tmp_path}/ck/iter_0000004"
        in line
    )


def test_garbage_meta_json_is_refused(tmp_path: Path, capsys) -> None:
    _save(tmp_path / "ck", 5)
    (tmp_path / "ck" / "iter_0000005" / "meta.json").write_text("{not json")
    refused(
        capsys,
        "iter_0000005/meta.json is not valid JSON",
        *_pretrain(tmp_path, "--load", str(tmp_path / "ck")),
    )


def test_truncated_rank_file_is_found_before_launch(tmp_path: Path, capsys) -> None:
    _save(tmp_path / "ck", 4)
    path = _save(tmp_path / "ck", 5)
    rank_file = path / "rank_00000.pt"
    data = rank_file.read_bytes()
    rank_file.write_bytes(data[: len(data) // 2])
    line = refused(
        capsys,
        f"rank_00000.pt is damaged: {len(data) // 2} bytes, meta.json says {len(data)}",
        *_pretrain(tmp_path, "--load", str(tmp_path / "ck")),
    )
    assert "pass --load" in line and "iter_0000004" in line
    assert "torch.distributed.run" not in line


def test_corrupted_rank_file_of_the_same_size_fails_its_checksum(tmp_path: Path) -> None:
    path = _save(tmp_path, 5)
    rank_file = path / "rank_00000.pt"
    data = bytearray(rank_file.read_bytes())
    data[-40] ^= 0xFF
    rank_file.write_bytes(bytes(data))
    assert ckpt.verify_checkpoint(path)["iteration"] == 5  # sizes agree
    with pytest.raises(ConfigError, match="rank_00000.pt is damaged: its sha256 differs"):
        ckpt.load_rank_state(path, 0)


def test_load_of_one_iteration_folder_resumes_from_it(tmp_path: Path, capsys) -> None:
    _save(tmp_path / "ck", 4)
    _save(tmp_path / "ck", 5)
    code, _, err = cli(
        capsys, *_pretrain(tmp_path, "--load", str(tmp_path / "ck" / "iter_0000004"))
    )
    assert code == 0, err
    assert f"resuming from {tmp_path}/ck/iter_0000004" in err
    job = json.loads((tmp_path / "out" / "job.json").read_text())["job"]
    assert job["train"]["resume_from"] == str(tmp_path / "ck" / "iter_0000004")


def test_empty_folder_starts_from_scratch_saying_so_in_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "ck").mkdir()
    code, _, err = cli(capsys, *_pretrain(tmp_path, "--load", str(tmp_path / "ck")))
    assert code == 0, err
    assert [x for x in err.splitlines() if "ck" in x] == [
        f"--load {tmp_path}/ck: no checkpoint there yet, starting from scratch"
    ]


def test_save_never_overwrites_a_newer_checkpoint(tmp_path: Path, capsys) -> None:
    _save(tmp_path / "ck", 5)
    refused(
        capsys,
        "already holds iter_0000005, newer than this run's start (iteration 0)",
        *_pretrain(tmp_path, "--save", str(tmp_path / "ck")),
    )
    # Resuming from it, or saying so explicitly, is allowed.
    assert (
        cli(
            capsys,
            *_pretrain(tmp_path, "--save", str(tmp_path / "ck"), "--load", str(tmp_path / "ck")),
        )[0]
        == 0
    )
    assert (
        cli(
            capsys, *_pretrain(tmp_path, "--save", str(tmp_path / "ck"), "--overwrite-checkpoints")
        )[0]
        == 0
    )


def test_latest_never_moves_back_without_the_flag(tmp_path: Path) -> None:
    _save(tmp_path, 5)
    with pytest.raises(ConfigError, match="refusing to write iter_0000002 beside a newer"):
        _save(tmp_path, 2)
    with pytest.raises(ConfigError, match="refusing to write iter_0000005"):
        _save(tmp_path, 5)
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "iter_0000005"
    assert torch.equal(
        ckpt.load_rank_state(tmp_path / "iter_0000005", 0)["w"], torch.full((3,), 5.0)
    )
    _save(tmp_path, 2, overwrite=True)
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "iter_0000002"


def test_latest_and_meta_get_normal_permissions(tmp_path: Path) -> None:
    path = _save(tmp_path, 3)
    for file in (tmp_path / "latest", path / "meta.json"):
        assert file.stat().st_mode & 0o777 == default_file_mode(), file
    meta = ckpt.read_meta(path)
    assert meta["files"]["rank_00000.pt"]["size"] == (path / "rank_00000.pt").stat().st_size
    assert not list(path.glob("*.json.tmp")) and not list(path.glob("rank_*.pt.json"))


# --- pre-flight: every output path is writable before any work ---------------------------------


def test_outputs_are_checked_before_any_work(tmp_path: Path, capsys) -> None:
    profile = _profile(tmp_path)
    gone = tmp_path / "gone.json"  # solve would fail on it; the output check must come first
    refused(
        capsys,
        f"-o/--output: cannot write '{READ_ONLY}/plan.json'",
        "solve",
        str(gone),
        "-o",
        str(READ_ONLY / "plan.json"),
    )
    refused(
        capsys,
        "--plot: cannot write",
        "solve",
        str(profile),
        "--sweep",
        "0,0.1",
        "--plot",
        str(READ_ONLY / "p.png"),
    )
    refused(
        capsys,
        "-o/--output: folder",
        "solve",
        str(profile),
        "-o",
        str(tmp_path / "nowhere" / "plan.json"),
    )
    refused(capsys, "is a folder, expected a file path", "solve", str(profile), "-o", str(tmp_path))
    refused(
        capsys,
        "--timeline: cannot write",
        "simulate",
        "--profile",
        str(profile),
        "--timeline",
        str(READ_ONLY / "t.png"),
    )
    refused(
        capsys,
        "--trace: cannot write",
        "simulate",
        "--profile",
        str(profile),
        "--trace",
        str(READ_ONLY / "t.json"),
    )
    refused(
        capsys,
        "-o/--output: cannot write",
        "profile",
        "--synthetic",
        *SCHEDULE,
        "--costs",
        "1,1,1",
        "-o",
        str(READ_ONLY / "p.json"),
    )
    refused(capsys, "-o/--output: cannot write", "profile", "-o", str(READ_ONLY / "p.json"))
    refused(capsys, "--save: cannot write", *_pretrain(tmp_path, "--save", str(NO_DIR / "ck")))
    refused(
        capsys,
        "--out-dir: cannot write",
        "pretrain",
        "--out-dir",
        str(NO_DIR / "run"),
        "--dry-run",
    )
    refused(capsys, "--out-dir: cannot write", "demo", "--out-dir", str(NO_DIR))
    (tmp_path / "file").write_text("x")
    refused(
        capsys, "is not a folder", *_pretrain(tmp_path, "--save", str(tmp_path / "file" / "ck"))
    )
    assert not (tmp_path / "out" / "job.json").exists()  # nothing was written


# --- size bound --------------------------------------------------------------------------------


def test_huge_layouts_are_refused_before_anything_is_built(tmp_path: Path, capsys) -> None:
    huge = ["--schedule", "1f1b", "--pp", "512", "--microbatches", "100000", "--costs", "1,1,1"]
    expected = (
        "the schedule --pp 512 --vpp 1 --microbatches 100000 has 102,400,000 forward/backward "
        f"actions, over the limit of {DEFAULT_MAX_ACTIONS:,}"
    )
    start = time.perf_counter()
    line = refused(capsys, expected, "simulate", *huge)
    assert f"set {MAX_ACTIONS_ENV} to raise it" in line
    refused(capsys, expected, "profile", "--synthetic", *huge, "-o", str(tmp_path / "p.json"))
    # A hand-written profile of that layout (what `profile --synthetic` once accepted).
    stages = [
        {"rank": r, "chunk": 0, "forward": 1.0, "backward": 2.0, "backward_frozen": 1.0}
        for r in range(512)
    ]
    schedule = {"kind": "1f1b", "pp": 512, "microbatches": 100000}
    doc = {"format": "timelyfreeze.profile/1", "schedule": schedule, "stages": stages}
    (tmp_path / "huge.json").write_text(json.dumps(doc))
    refused(capsys, "102,400,000 forward/backward actions", "solve", str(tmp_path / "huge.json"))
    assert time.perf_counter() - start < 10


def test_the_size_limit_can_be_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dict(kind="1f1b", pp=512, microbatches=1000)  # 1,024,000 actions
    with pytest.raises(ConfigError, match="over the limit of 500,000"):
        ScheduleSpec(**spec)
    monkeypatch.setenv(MAX_ACTIONS_ENV, "2000000")
    assert ScheduleSpec(**spec).actions == 1_024_000
    monkeypatch.setenv(MAX_ACTIONS_ENV, "lots")
    with pytest.raises(ConfigError, match=f"{MAX_ACTIONS_ENV} must be a positive integer"):
        ScheduleSpec(**spec)


# --- numbers, encodings and formats -------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--lr", "inf"], "--lr must be a finite number, got inf"),
        (["--clip-grad", "nan"], "--clip-grad must be a finite number"),
        (["--drift-threshold", "nan"], "--drift-threshold must be a finite number"),
        (["--max-freeze-ratio", "nan"], "--max-freeze-ratio must be a finite number"),
        (["--weight-decay", "-5"], "--weight-decay must be >= 0, got -5.0"),
        (["--vocab-size", "2"], "--vocab-size must be >= 3 for the embedded corpus"),
        (["--collective-timeout", "0"], "--collective-timeout must be a positive number"),
        (
            ["--plan", "auto", "--freeze-warmup-iters", "50", "--iters", "20"],
            "--freeze-warmup-iters 50 >= --iters 20: nothing would be frozen",
        ),
    ],
)
def test_pretrain_numbers(tmp_path: Path, capsys, flags: list[str], needle: str) -> None:
    args = _pretrain(tmp_path, *flags)
    if "--vocab-size" in flags:
        args.remove("--mock-data")  # the embedded corpus is what needs 3 tokens
    refused(capsys, needle, *args)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["simulate", *SCHEDULE, "--costs", "1,1,1", "--comm", "inf"],
            "--comm must be a finite number",
        ),
        (["simulate", *SCHEDULE, "--costs", "0,0,0"], "--costs: every cost is 0"),
        (["simulate", *SCHEDULE, "--costs", "1e308,1,1"], "must be at most 100000 seconds"),
        (["simulate", "--pp", "abc"], "Invalid value for '--pp'"),
        (["simulate", "--bogus"], "No such option: --bogus"),
        (["solve"], "Missing argument 'profile'"),
        (
            [
                "profile",
                "--synthetic",
                *SCHEDULE,
                "--costs",
                "1,1,1",
                "--num-layers",
                "3",
                "-o",
                "x.json",
            ],
            "--num-layers cannot be used with --synthetic",
        ),
    ],
)
def test_cli_inputs(capsys, args: list[str], needle: str) -> None:
    refused(capsys, needle, *args)


def test_non_utf8_files_are_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"format": "caf\xe9"}')
    refused(capsys, f"{bad}: not UTF-8 text (byte 0xe9 at offset 15)", "solve", str(bad))
    with pytest.raises(FormatError, match="not UTF-8 text"):
        load_plan(bad)


def _profile_doc(**stage: object) -> dict:
    base = {"forward": 1.0, "backward": 2.0, "backward_frozen": 1.0}
    stages = [{"rank": r, "chunk": 0, **base, **stage} for r in range(2)]
    schedule = {"kind": "1f1b", "pp": 2, "microbatches": 4}
    return {"format": "timelyfreeze.profile/1", "schedule": schedule, "stages": stages}


@pytest.mark.parametrize(
    ("stage", "needle"),
    [
        (
            {"forward": 1e308, "backward": 1e308},
            "stages.0.forward: Input should be less than or equal to 100000",
        ),
        (
            {"forward": 0.0, "backward": 0.0, "backward_frozen": 0.0},
            "every forward and backward cost is 0",
        ),
        ({"forward": "1.0"}, "stages.0.forward: Input should be a valid number"),
        ({"forward": True}, "stages.0.forward: Input should be a valid number"),
        ({"rank": 0.0}, "stages.0.rank: Input should be a valid integer"),
    ],
)
def test_profile_values_are_strict_and_bounded(
    tmp_path: Path, capsys, stage: dict, needle: str
) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(_profile_doc(**stage)))
    refused(capsys, needle, "solve", str(path))


def test_plan_is_checked_against_its_own_header(tmp_path: Path, capsys) -> None:
    profile = _profile(tmp_path)
    plan = tmp_path / "plan.json"
    assert main_ok(["solve", str(profile), "-o", str(plan), "--max-freeze-ratio", "0.3"]) == 0
    capsys.readouterr()
    load_plan(plan)  # the solver's own plan passes
    doc = json.loads(plan.read_text())
    doc["ratios"] = [[[1.0] * 4] for _ in range(2)]  # hand-edited: everything frozen
    plan.write_text(json.dumps(doc))
    refused(
        capsys,
        "ratios[0][0] has mean 1, above the plan's own max_freeze_ratio 0.3",
        "simulate",
        "--profile",
        str(profile),
        "--plan",
        str(plan),
    )
    doc["max_freeze_ratio"] = 1.0
    plan.write_text(json.dumps(doc))
    refused(
        capsys,
        "trains 0 microbatches, below the plan's own min_trained_microbatches 1",
        "simulate",
        "--profile",
        str(profile),
        "--plan",
        str(plan),
    )
    doc["ratios"] = [[["0.1"] * 4] for _ in range(2)]
    plan.write_text(json.dumps(doc))
    refused(
        capsys,
        "ratios.0.0.0: Input should be a valid number",
        "simulate",
        "--profile",
        str(profile),
        "--plan",
        str(plan),
    )


def test_a_profile_from_the_profiler_still_loads_strictly(tmp_path: Path) -> None:
    profile = _profile(tmp_path)
    assert load_profile(profile).spec.actions == 16


# --- faults: the launcher with a stand-in torchrun ----------------------------------------------


def _fake_torchrun(tmp: Path, body: str) -> str:
    """A stand-in interpreter for torchrun: starts one 'worker' (RANK=1) that runs `body`."""
    script = tmp / "fake_python"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, subprocess, sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        f"worker = subprocess.Popen([sys.executable, '-c', {_worker_code(body)!r}], "
        "env=dict(os.environ, RANK='1'))\n"
        f"open({str(tmp / 'pids')!r}, 'w').write(f'{{os.getpid()}} {{worker.pid}}')\n"
        "print('ready', flush=True)\n"
        "sys.exit(worker.wait())\n"
    )
    script.chmod(0o755)
    return str(script)


def _worker_code(body: str) -> str:
    return (
        f"import os, signal, sys, time\nsys.path.insert(0, {str(REPO)!r})\n"
        "from megatron_tf.process.lifeline import die_with_parent\ndie_with_parent()\n" + body
    )


def _cli_with_fake(tmp: Path, fake: str) -> subprocess.Popen[str]:
    """`launch_job` in a process of its own, as the CLI runs it, with the fake torchrun."""
    code = (
        "import sys\n"
        f"sys.executable = {fake!r}\n"
        "from megatron_tf.cli._app import print_error\n"
        "from megatron_tf.launch.options import JobFailed, LaunchOptions, launch_job\n"
        "try:\n"
        "    launch_job(LaunchOptions(collective_timeout=3), 'm', world_size=1)\n"
        "except JobFailed as stop:\n"
        "    print_error(str(stop))\n"
        "    sys.exit(stop.exit_code)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pids(tmp: Path) -> list[int]:
    for _ in range(200):
        if (tmp / "pids").exists() and (tmp / "pids").read_text():
            return [int(x) for x in (tmp / "pids").read_text().split()]
        time.sleep(0.05)
    raise AssertionError("the stand-in torchrun did not start")


@pytest.mark.parametrize(
    ("sig", "code", "name"),
    [
        (signal.SIGINT, 130, "SIGINT (Ctrl-C)"),
        (signal.SIGTERM, 143, "SIGTERM (terminated)"),
        (signal.SIGHUP, 129, "SIGHUP (terminal closed)"),
    ],
)
def test_signals_reach_the_whole_job_with_one_line(
    tmp_path: Path, sig: int, code: int, name: str
) -> None:
    # A worker that, like a real rank, prints a traceback when interrupted.
    body = (
        "def noisy(*a):\n"
        "    print('Traceback (most recent call last): worker interrupted', flush=True)\n"
        "    sys.exit(1)\n"
        "signal.signal(signal.SIGINT, noisy)\n"
        "time.sleep(60)\n"
    )
    proc = _cli_with_fake(tmp_path, _fake_torchrun(tmp_path, body))
    torchrun, worker = _pids(tmp_path)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, out + err
    assert err.strip().splitlines() == [err.strip()] and err.startswith(f"error: stopped by {name}")
    assert "Traceback" not in out + err  # the job's shutdown noise is dropped
    for pid in (torchrun, worker):
        assert not _alive(pid), pid


def test_a_killed_cli_leaves_no_process_behind(tmp_path: Path) -> None:
    proc = _cli_with_fake(tmp_path, _fake_torchrun(tmp_path, "time.sleep(60)\n"))
    torchrun, worker = _pids(tmp_path)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.kill()  # SIGKILL: no handler runs
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while (_alive(torchrun) or _alive(worker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(torchrun) and not _alive(worker)


def test_a_stopped_rank_is_named(tmp_path: Path) -> None:
    """The worker stops itself (as SIGSTOP would); the 'torchrun' gives up after 3 s."""
    script = tmp_path / "fake_python"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, signal, subprocess, sys, time\n"
        "w = subprocess.Popen([sys.executable, '-c', 'import os, signal; os.kill(os.getpid(), "
        "signal.SIGSTOP)'], env=dict(os.environ, RANK='1'))\n"
        f"open({str(tmp_path / 'pids')!r}, 'w').write(f'{{os.getpid()}} {{w.pid}}')\n"
        "time.sleep(3)\n"
        "os.kill(w.pid, signal.SIGKILL)\n"
        "sys.exit(1)\n"
    )
    script.chmod(0o755)
    proc = _cli_with_fake(tmp_path, str(script))
    out, err = proc.communicate(timeout=60)
    _, worker = _pids(tmp_path)
    assert proc.returncode == 1, out + err
    assert err.strip() == (
        f"error: the job failed (torchrun exit code 1): rank 1 (pid {worker}) was stopped and "
        "never answered; the other ranks gave up after --collective-timeout 3 s"
    )
