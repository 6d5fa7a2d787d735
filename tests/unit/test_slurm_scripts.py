"""The Slurm templates: valid bash, and rendered with example values under fake srun/sbatch.

The fake `srun` runs its command once per node of a 2-node job, with the per-task variables
real srun sets (SLURM_NODEID, SLURM_PROCID); the fake `timelyfreeze` prints its argv and the
Slurm view it got, so the test sees exactly what each node would run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SLURM_DIR = Path(__file__).resolve().parents[2] / "scripts" / "slurm"
TEMPLATES = ["profile.sbatch", "pretrain.sbatch", "submit_all.sh"]
MEGATRON_ARGS = [
    "--num-layers", "32", "--global-batch-size", "1024", "--data-path", "a b/c",
    "--disable-bias-linear",
]  # fmt: skip

FAKE_SRUN = """#!/bin/bash
# Drop srun's own options, then run the task once per node, as one-task-per-node srun does.
while [[ "$1" == --* ]]; do shift; done
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do
    SLURM_NODEID=$node SLURM_PROCID=$node "$@"
done
"""
FAKE_TIMELYFREEZE = f"""#!{sys.executable}
import json, os, sys
print(json.dumps({{"argv": sys.argv[1:], "node": os.environ["SLURM_NODEID"]}}))
"""
FAKE_SBATCH = f"""#!{sys.executable}
import json, os, sys
log = os.environ["SBATCH_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
print(100 + sum(1 for _ in open(log)))
"""


@pytest.mark.parametrize("name", TEMPLATES)
def test_templates_are_valid_bash(name: str) -> None:
    subprocess.run(["bash", "-n", str(SLURM_DIR / name)], check=True)


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, text in [
        ("srun", FAKE_SRUN),
        ("timelyfreeze", FAKE_TIMELYFREEZE),
        ("sbatch", FAKE_SBATCH),
    ]:
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def render(script: str, fake_bin: Path, env: dict[str, str], args: list[str]) -> list[dict]:
    full_env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "SLURM_JOB_ID": "5150",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu[01-02]",
        "SLURM_GPUS_ON_NODE": "8",
        **env,
    }
    done = subprocess.run(
        ["bash", str(SLURM_DIR / script), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_profile_template_renders(fake_bin: Path) -> None:
    env = {"MEGATRON_LM": "/src/Megatron-LM", "PROFILE": "/shared/p.json", "DRY_RUN": "1"}
    runs = render("profile.sbatch", fake_bin, env, MEGATRON_ARGS)
    assert [r["node"] for r in runs] == ["0", "1"]  # one task per node
    for run in runs:
        assert run["argv"] == [
            "profile",
            "--launcher", "slurm",
            "--megatron-lm", "/src/Megatron-LM",
            "--script", "pretrain_gpt.py",
            "--output", "/shared/p.json",
            "--dry-run",
            "--", *MEGATRON_ARGS,
        ]  # fmt: skip


def test_pretrain_template_renders(fake_bin: Path) -> None:
    env = {"MEGATRON_LM": "/src/Megatron-LM", "PLAN": "/shared/plan.json", "SCRIPT": "x.py"}
    runs = render("pretrain.sbatch", fake_bin, env, MEGATRON_ARGS)
    assert len(runs) == 2
    assert runs[1]["argv"] == [
        "pretrain",
        "--launcher", "slurm",
        "--megatron-lm", "/src/Megatron-LM",
        "--script", "x.py",
        "--plan", "/shared/plan.json",
        "--", *MEGATRON_ARGS,
    ]  # fmt: skip


def test_template_without_checkout_says_so(fake_bin: Path) -> None:
    done = subprocess.run(
        ["bash", str(SLURM_DIR / "pretrain.sbatch")],
        env={"PATH": f"{fake_bin}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "set MEGATRON_LM to your Megatron-LM checkout" in done.stderr


def test_submit_all_chains_the_three_jobs(fake_bin: Path, tmp_path: Path) -> None:
    log = tmp_path / "sbatch.log"
    env = {
        "MEGATRON_LM": "/src/Megatron-LM",
        "WORKDIR": "/shared/run",
        "MAX_FREEZE_RATIO": "0.3",
        "SBATCH": "--nodes 4",
        "SBATCH_LOG": str(log),
    }
    done = subprocess.run(
        ["bash", str(SLURM_DIR / "submit_all.sh"), *MEGATRON_ARGS],
        env={"PATH": f"{fake_bin}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "profile: 101  solve: 102  pretrain: 103"
    profile, solve, train = [json.loads(line) for line in log.read_text().splitlines()]
    assert profile == [
        "--parsable", "--nodes", "4", "--export=ALL",
        str(SLURM_DIR / "profile.sbatch"), *MEGATRON_ARGS,
    ]  # fmt: skip
    assert "--dependency=afterok:101" in solve
    assert solve[-1] == (
        '--wrap="timelyfreeze" solve "/shared/run/profile.json" --max-freeze-ratio 0.3 '
        '-o "/shared/run/plan.json"'
    )
    assert train == [
        "--parsable", "--nodes", "4", "--dependency=afterok:102", "--export=ALL",
        str(SLURM_DIR / "pretrain.sbatch"), *MEGATRON_ARGS,
    ]  # fmt: skip


def test_pretrain_template_with_the_real_cli(fake_bin: Path, tmp_path: Path) -> None:
    """DRY_RUN=1 with the real `timelyfreeze`: each node prints its own torchrun command."""
    from megatron_tf.formats.plan import Plan, Predicted, SolverInfo, save_plan
    from megatron_tf.formats.schedule import ScheduleRecord

    checkout = tmp_path / "Megatron-LM"
    checkout.mkdir()
    (checkout / "pretrain_gpt.py").write_text("")
    plan = Plan(
        schedule=ScheduleRecord(kind="1f1b", pp=4, vpp=1, microbatches=8, group_size=4),
        profile_sha256="b" * 64,
        max_freeze_ratio=0.5,
        tolerance=0.0,
        min_trained_microbatches=1,
        comm_model="megatron",
        ratios=[[[0.0] * 8]] * 4,
        predicted=Predicted(baseline_makespan=1.0, makespan=1.0, speedup=1.0),
        solver=SolverInfo(name="GLOP", status="OPTIMAL", seconds=0.0),
    )
    save_plan(plan, tmp_path / "plan.json")
    (fake_bin / "timelyfreeze").unlink()  # the real one, from this interpreter's environment
    env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "TIMELYFREEZE": str(Path(sys.executable).with_name("timelyfreeze")),
        "MEGATRON_LM": str(checkout),
        "PLAN": str(tmp_path / "plan.json"),
        "DRY_RUN": "1",
        # The code under test, where a checkout other than the installed one is on the path.
        **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
        "SLURM_JOB_ID": "5150",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu[01-02]",
        "SLURM_GPUS_ON_NODE": "8",
    }
    if "PYTHONPATH" in os.environ:  # the package under test, where it is not the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    done = subprocess.run(
        ["bash", str(SLURM_DIR / "pretrain.sbatch"), *MEGATRON_ARGS],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    commands = [line for line in done.stdout.splitlines() if "torch.distributed.run" in line]
    assert len(commands) == 2
    for node, command in enumerate(commands):
        assert (
            "--nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=gpu01:29550 "
            f"--rdzv-id=timelyfreeze-5150 --node-rank={node} --max-restarts=0 "
            "--module megatron_tf.train.lm_script "
            "--num-layers 32 --global-batch-size 1024 --data-path 'a b/c' --disable-bias-linear"
        ) in command
    from megatron_tf.train.lm_script import MegatronLMJob

    jobs = [x.split("=", 1)[1] for x in done.stdout.splitlines() if "TIMELYFREEZE_JOB=" in x]
    assert len(jobs) == 2  # one per node, each node's own file
    assert {MegatronLMJob.load(j).plan for j in jobs} == {tmp_path / "plan.json"}
