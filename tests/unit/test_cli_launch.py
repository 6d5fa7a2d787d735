"""The shared launch flags (`--nnodes --nproc-per-node --rdzv-endpoint --launcher --dry-run`)
on a small typer app built the way `profile` and `pretrain` use them."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from megatron_tf.cli._app import user_errors
from megatron_tf.cli._launch import (
    DryRunOption,
    LauncherOption,
    LaunchOptions,
    NnodesOption,
    NprocPerNodeOption,
    RdzvEndpointOption,
    launch_or_print,
)
from megatron_tf.launch import options as launch_options
from megatron_tf.launch.torchrun import JobResult
from megatron_tf.process.worker_errors import ERROR_DIR_ENV

app = typer.Typer()


@app.command()
@user_errors
def job(
    *,
    world_size: Annotated[int, typer.Option()] = 4,
    nnodes: NnodesOption = 1,
    nproc_per_node: NprocPerNodeOption = None,
    rdzv_endpoint: RdzvEndpointOption = None,
    launcher: LauncherOption = "local",
    dry_run: DryRunOption = False,
) -> None:
    options = LaunchOptions(
        nnodes=nnodes,
        nproc_per_node=nproc_per_node,
        rdzv_endpoint=rdzv_endpoint,
        launcher=launcher,
        dry_run=dry_run,
    )
    launch_or_print(
        options,
        "megatron_tf.fake.worker",
        ["--world", str(world_size)],
        world_size=world_size,
        env={"TIMELYFREEZE_PLAN": "/plans/plan 1.json"},
    )


SLURM_ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NODELIST": "gpu-a[17-18]",
}
NO_SLURM = dict.fromkeys(
    ["SLURM_JOB_ID", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_NODELIST",
     "SLURM_NODELIST", "SLURM_GPUS_ON_NODE"]
)  # fmt: skip


def invoke(args: list[str], env: dict[str, str | None] | None = None):
    return CliRunner().invoke(app, args, env={**NO_SLURM, **(env or {})})


def dry_run_lines(args: list[str], env: dict[str, str | None] | None = None) -> list[str]:
    result = invoke([*args, "--dry-run"], env)
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def torchrun_flags(command_line: str) -> list[str]:
    argv = shlex.split(command_line)
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    return argv[3 : argv.index("--module")]


def test_dry_run_single_node() -> None:
    export, command = dry_run_lines([])
    assert export == "export TIMELYFREEZE_PLAN='/plans/plan 1.json'"
    assert torchrun_flags(command) == [
        "--nnodes=1",
        "--nproc-per-node=4",  # the world size, all on this node
        "--standalone",
        "--max-restarts=0",
    ]
    assert command.endswith("--module megatron_tf.fake.worker --world 4")


def test_dry_run_multi_node() -> None:
    _, command = dry_run_lines(["--nnodes", "2", "--rdzv-endpoint", "head:29501"])
    assert torchrun_flags(command) == [
        "--nnodes=2",
        "--nproc-per-node=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=head:29501",
        "--rdzv-id=timelyfreeze",
        "--max-restarts=0",
    ]


def test_dry_run_slurm() -> None:
    _, command = dry_run_lines(["--launcher", "slurm"], SLURM_ENV)
    assert torchrun_flags(command) == [
        "--nnodes=2",
        "--nproc-per-node=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu-a17:29642",  # first node; port 29400 + 4242 mod 1000
        "--rdzv-id=timelyfreeze-4242",
        "--node-rank=1",
        "--max-restarts=0",
    ]


def test_dry_run_slurm_with_explicit_endpoint_and_nproc() -> None:
    args = ["--launcher", "slurm", "--world-size", "16", "--nproc-per-node", "8"]
    _, command = dry_run_lines([*args, "--rdzv-endpoint", "10.1.0.5:6000"], SLURM_ENV)
    flags = torchrun_flags(command)
    assert "--rdzv-endpoint=10.1.0.5:6000" in flags
    assert "--nproc-per-node=8" in flags


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--launcher", "slurm"], {}, "needs the Slurm variable SLURM_JOB_NUM_NODES"),
        (
            ["--launcher", "slurm"],
            {k: v for k, v in SLURM_ENV.items() if k != "SLURM_NODEID"},
            "needs the Slurm variable SLURM_NODEID",
        ),
        (["--launcher", "slurm", "--nnodes", "3"], SLURM_ENV, "--nnodes 3 disagrees"),
        (["--nnodes", "2"], {}, "--nnodes 2 needs --rdzv-endpoint"),
        (["--nnodes", "3", "--rdzv-endpoint", "h:1"], {}, "which --nnodes 3 does not divide"),
        (["--nproc-per-node", "3"], {}, "needs 4 processes but --nnodes 1 x --nproc-per-node 3"),
        (["--rdzv-endpoint", "h:port"], {}, "port must be an integer"),
    ],
)
def test_bad_launch_flags_exit_2_with_one_line(args, env, message) -> None:
    result = invoke([*args, "--dry-run"], env)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_without_dry_run_the_job_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run(launch, entry_module, args, **kwargs):
        calls.append((launch, entry_module, list(args)))
        return JobResult(code=0)

    monkeypatch.setattr(launch_options, "run_job", fake_run)
    result = invoke(["--nproc-per-node", "4"])
    assert result.exit_code == 0, result.output
    [(launch, entry, args)] = calls
    assert (launch.nnodes, launch.nproc_per_node, launch.is_standalone) == (1, 4, True)
    assert launch.env["TIMELYFREEZE_PLAN"] == "/plans/plan 1.json"
    assert set(launch.env) == {"TIMELYFREEZE_PLAN", ERROR_DIR_ENV}
    assert (entry, args) == ("megatron_tf.fake.worker", ["--world", "4"])


def test_a_failed_job_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch_options, "run_job", lambda *a, **k: JobResult(code=1))
    result = invoke([])
    assert result.exit_code == 1
    assert "the job failed (torchrun exit code 1)" in result.output


def test_a_worker_user_error_exits_2_with_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(launch, entry_module, args, **kwargs):
        folder = Path(launch.env[ERROR_DIR_ENV])
        (folder / "rank3.txt").write_text("the plan was solved for 1f1b pp=4 M=8\n")
        (folder / "rank1.txt").write_text("the plan was solved for 1f1b pp=2 M=8\n")
        return JobResult(code=1)

    monkeypatch.setattr(launch_options, "run_job", fake_run)
    result = invoke([])
    assert result.exit_code == 2
    assert result.output == "error: the plan was solved for 1f1b pp=2 M=8\n"  # lowest rank
