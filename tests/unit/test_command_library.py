"""The library functions behind the commands, called directly as the demo and scripts do."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from megatron_tf.cli._options import option_groups
from megatron_tf.errors import ConfigError, LaunchError
from megatron_tf.formats.plan import save_plan
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.launch import options as launch_options
from megatron_tf.launch.options import JobFailed, LaunchOptions, job_log, launch_job
from megatron_tf.launch.torchrun import JobResult
from megatron_tf.schedule.costs import synthetic_profile
from megatron_tf.schedule.iteration import simulate_iteration
from megatron_tf.solve.lp import SolverConfig
from megatron_tf.solve.request import SolveRequest, solve_request

SPEC = ScheduleSpec(kind="1f1b", pp=4, microbatches=8)


def _profile(w: float = 1.0):
    return synthetic_profile(SPEC, [(1.0, 1.0, w)] * 4)


def test_solve_request_sweep_alone_solves_no_plan() -> None:
    answer = solve_request(
        _profile(), SolveRequest(config=SolverConfig(), sweep=(0.0, 0.1), plan=False)
    )
    assert answer.outcome is None and answer.synthetic
    assert [p.max_freeze_ratio for p in answer.points or []] == [0.0, 0.1]
    assert answer.points[0].speed_gain == 0.0 < answer.points[1].speed_gain  # type: ignore[index]


def test_solve_request_auto_budget_names_the_missing_flag() -> None:
    request = SolveRequest(config=SolverConfig(), auto_budget=True, batch_samples=16)
    with pytest.raises(ConfigError, match="--noise-scale"):
        solve_request(_profile(), request)


def test_simulate_iteration_takes_the_plans_comm_model_and_notices_another_profile(
    tmp_path: Path,
) -> None:
    config = SolverConfig(max_freeze_ratio=0.2, comm_model="dataflow")
    plan = solve_request(_profile(), SolveRequest(config=config)).outcome
    assert plan is not None
    save_plan(plan.plan, tmp_path / "plan.json")
    same = simulate_iteration(_profile(), tmp_path / "plan.json")
    assert same.comm_model == "dataflow" and not same.other_profile
    assert same.speedup == pytest.approx(plan.plan.predicted.speedup, rel=1e-6)
    other = simulate_iteration(_profile(w=2.0), tmp_path / "plan.json", "megatron")
    assert other.comm_model == "megatron" and other.other_profile
    assert simulate_iteration(_profile()).baseline is None  # no plan: one simulation


def test_launch_job_failure_is_job_failed_and_job_log_quotes_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(launch, entry, args, **kwargs):
        kwargs["stdout"].write("Traceback: rank 1 fell over\n")
        return JobResult(code=1)

    monkeypatch.setattr(launch_options, "run_job", failing)
    with pytest.raises(JobFailed) as failed, open(tmp_path / "a.log", "w") as log:
        launch_job(LaunchOptions(), "m", world_size=1, stdout=log, stderr=log)
    assert failed.value.exit_code == 1
    quoted = r"(?s)training failed \(exit 1\).*rank 1 fell over"
    with pytest.raises(LaunchError, match=quoted), job_log(tmp_path / "b.log", "training") as log:
        launch_job(LaunchOptions(), "m", world_size=1, stdout=log, stderr=log)


def test_launch_job_dry_run_returns_the_command_and_the_variables() -> None:
    text = launch_job(
        LaunchOptions(dry_run=True), "m", world_size=2, env={"TIMELYFREEZE_JOB": "/j"}
    )
    assert text is not None
    assert text.splitlines()[0] == "export TIMELYFREEZE_JOB=/j"
    assert "--nproc-per-node=2" in text.splitlines()[1]


@dataclass(kw_only=True, slots=True)
class _Group:
    width: Annotated[int, typer.Option(help="A width.")] = 3
    name: Annotated[str, typer.Option(help="A name.")] = "x"


def test_option_groups_hand_the_command_one_typed_instance() -> None:
    seen = []
    app = typer.Typer()

    @app.command()
    @option_groups
    def cmd(*, group: _Group, loud: Annotated[bool, typer.Option()] = False) -> None:
        seen.append((group, loud))

    result = CliRunner().invoke(app, ["--width", "5", "--loud"])
    assert result.exit_code == 0, result.output
    assert seen == [(_Group(width=5, name="x"), True)]
    assert dataclasses.is_dataclass(seen[0][0])


def test_option_groups_refuse_a_flag_declared_twice() -> None:
    with pytest.raises(TypeError, match="declared twice"):

        @option_groups
        def cmd(*, group: _Group, width: int = 1) -> None: ...
