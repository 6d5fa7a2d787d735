"""`timelyfreeze simulate` and `timelyfreeze profile --synthetic` through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from megatron_tf.cli import app

runner = CliRunner()


def _json(args: list[str]) -> dict:
    result = runner.invoke(app, ["simulate", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_readme_example_1f1b() -> None:
    out = _json(["--schedule", "1f1b", "--pp", "8", "--microbatches", "16", "--costs", "1,1,1"])
    assert out["makespan"] == pytest.approx(69, abs=1e-9)
    assert out["bubble_fraction"] == pytest.approx(7 / 23, abs=1e-9)
    assert [r["busy"] for r in out["per_rank"]] == [48.0] * 8
    assert [r["idle"] for r in out["per_rank"]] == pytest.approx([21.0] * 8)
    assert out["critical_path"][0] == "F[r=0,c=0,m=0]"


def test_example_interleaved_dataflow() -> None:
    args = ["--schedule", "interleaved", "--pp", "4", "--vpp", "2", "--microbatches", "8"]
    out = _json([*args, "--costs", "1,1,1", "--comm-model", "dataflow"])
    assert out["makespan"] == pytest.approx(28.5, abs=1e-9)
    assert out["bubble_fraction"] == pytest.approx(3 / 19, abs=1e-9)
    assert out["comm_model"] == "dataflow"


def test_profile_synthetic_then_simulate(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    args = ["--schedule", "interleaved", "--pp", "4", "--vpp", "2", "--microbatches", "8"]
    result = runner.invoke(
        app, ["profile", "--synthetic", *args, "--costs", "1,1,1", "-o", str(path)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(path.read_text())
    assert data["format"] == "timelyfreeze.profile/1"
    from_file = _json(["--profile", str(path), "--comm-model", "dataflow"])
    assert from_file["makespan"] == pytest.approx(28.5, abs=1e-9)


def test_timeline_and_trace(tmp_path: Path) -> None:
    png, svg, trace = tmp_path / "t.png", tmp_path / "t.svg", tmp_path / "t.json"
    args = ["--schedule", "1f1b", "--pp", "4", "--microbatches", "6", "--costs", "1,1,1"]
    result = runner.invoke(app, ["simulate", *args, "--comm", "0.1", "--timeline", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, ["simulate", *args, "--timeline", str(svg), "--trace", str(trace)])
    assert result.exit_code == 0, result.output
    assert b"<svg" in svg.read_bytes()[:400]
    events = json.loads(trace.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    # 4 ranks x 6 microbatches x (F + B); zero-time P2P calls are not drawn.
    assert len([e for e in spans if e["cat"] in ("F", "B")]) == 48
    assert {e["tid"] for e in spans} == {0, 1, 2, 3}
    names = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert names == {"rank 0", "rank 1", "rank 2", "rank 3"}
    assert max(e["ts"] + e["dur"] for e in spans) == pytest.approx(27e6)


def _one_line_error(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    assert needle in lines[0]
    assert "Traceback" not in result.output


BASE = ["simulate", "--pp", "4", "--microbatches", "8", "--costs", "1,1,1"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["simulate", "--schedule", "zigzag", "--pp", "4", "--microbatches", "8", "--costs",
          "1,1,1"], "unknown schedule 'zigzag'"),
        (["simulate", "--schedule", "interleaved", "--vpp", "2", "--pp", "4", "--microbatches",
          "6", "--costs", "1,1,1"], "M mod group size"),
        (["simulate", "--schedule", "interleaved", "--vpp", "2", "--pp", "4", "--microbatches",
          "8", "--group-size", "3", "--costs", "1,1,1"], "[PP=4, M=8]"),
        ([*BASE, "--schedule", "1f1b", "--costs", "1,-1,1"], "B in triple 1 must be"),
        ([*BASE, "--schedule", "1f1b", "--costs", "1,nan,1"], "found nan"),
        ([*BASE, "--schedule", "1f1b", "--comm", "-1"], "--comm must be"),
        ([*BASE, "--schedule", "1f1b", "--comm-model", "psychic"], "--comm-model must be"),
        ([*BASE, "--schedule", "1f1b", "--timeline", "t.gif"], "--timeline must end in"),
        (["simulate"], "nothing to simulate"),
        (["simulate", "--pp", "4"], "missing --schedule, --microbatches"),
        (["profile", "--synthetic", "--schedule", "1f1b", "--pp", "2", "--microbatches", "2",
          "-o", "x.json"], "missing --costs"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(args: list[str], needle: str) -> None:
    _one_line_error(args, needle)


def test_bad_profile_files(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "timelyfreeze.profile/9"}))
    _one_line_error(["simulate", "--profile", str(wrong)], "'format' must be")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    _one_line_error(["simulate", "--profile", str(broken)], "not valid JSON")
    _one_line_error(["simulate", "--profile", str(tmp_path / "nope.json")], "not found")
    _one_line_error(["simulate", "--profile", str(broken), "--pp", "2"], "either --profile FILE or")


def _plan(tmp_path: Path) -> tuple[Path, Path]:
    from megatron_tf.formats.plan import save_plan
    from megatron_tf.formats.profile import save_profile
    from megatron_tf.formats.schedule import ScheduleSpec
    from megatron_tf.schedule.costs import synthetic_profile
    from megatron_tf.solve.lp import SolverConfig
    from megatron_tf.solve.planner import solve_profile

    spec = ScheduleSpec(kind="interleaved", pp=4, vpp=2, microbatches=8)
    profile = synthetic_profile(spec, [(1.0, 1.0, 1.0)])
    ppath, plan_path = tmp_path / "profile.json", tmp_path / "plan.json"
    save_profile(profile, ppath)
    outcome = solve_profile(profile, SolverConfig(max_freeze_ratio=0.3))
    save_plan(outcome.plan, plan_path)
    return ppath, plan_path


def test_plan_reproduces_the_solver_prediction(tmp_path: Path) -> None:
    from megatron_tf.formats.plan import load_plan

    ppath, plan_path = _plan(tmp_path)
    out = _json(["--profile", str(ppath), "--plan", str(plan_path)])
    predicted = load_plan(plan_path).predicted
    assert out["baseline_makespan"] == pytest.approx(predicted.baseline_makespan, abs=1e-9)
    assert out["makespan"] == pytest.approx(predicted.makespan, rel=1e-5)
    assert out["makespan"] < out["baseline_makespan"]


def test_plan_for_another_schedule_is_refused(tmp_path: Path) -> None:
    _, plan_path = _plan(tmp_path)
    args = ["simulate", "--schedule", "interleaved", "--pp", "4", "--vpp", "2"]
    _one_line_error(
        [*args, "--microbatches", "16", "--costs", "1,1,1", "--plan", str(plan_path)],
        "the plan was solved for interleaved pp=4 vpp=2 group=4 M=8",
    )


def test_subprocess_error_is_one_line() -> None:
    cmd = [sys.executable, "-m", "megatron_tf", "simulate", "--schedule", "1f1b", "--pp", "4"]
    cmd += ["--microbatches", "8", "--costs", "1,1,nan"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--costs" in lines[0], proc.stderr


def test_measured_actions_get_their_own_tracks(tmp_path: Path) -> None:
    from megatron_tf.formats.profile import Measured, MeasuredAction, save_profile
    from megatron_tf.formats.schedule import ScheduleSpec
    from megatron_tf.schedule.costs import synthetic_profile

    spec = ScheduleSpec(kind="1f1b", pp=2, microbatches=1)
    profile = synthetic_profile(spec, [(1.0, 1.0, 1.0)])
    profile.measured = Measured(
        iteration_time=6.5,
        actions=[
            MeasuredAction(rank=0, kind="F", chunk=0, microbatch=0, start=0.0, end=1.1),
            MeasuredAction(rank=1, kind="F", chunk=0, microbatch=0, start=1.2, end=2.2),
            MeasuredAction(rank=1, kind="B", chunk=0, microbatch=0, start=2.2, end=4.3),
            MeasuredAction(rank=0, kind="B", chunk=0, microbatch=0, start=4.4, end=6.5),
        ],
    )
    path, trace = tmp_path / "measured.json", tmp_path / "trace.json"
    save_profile(profile, path)
    result = runner.invoke(app, ["simulate", "--profile", str(path), "--trace", str(trace)])
    assert result.exit_code == 0, result.output
    events = json.loads(trace.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {0, 1}
    measured = sorted((e["tid"], e["name"], e["ts"]) for e in spans if e["pid"] == 1)
    assert measured == [
        (0, "B c0 m0", pytest.approx(4.4e6)),
        (0, "F c0 m0", 0.0),
        (1, "B c0 m0", pytest.approx(2.2e6)),
        (1, "F c0 m0", pytest.approx(1.2e6)),
    ]


def test_plan_comm_model_is_the_default_and_a_flag_wins(tmp_path: Path) -> None:
    """A dataflow plan: `simulate --plan` reproduces it without --comm-model."""
    from megatron_tf.formats.plan import save_plan
    from megatron_tf.formats.profile import save_profile
    from megatron_tf.formats.schedule import ScheduleSpec
    from megatron_tf.schedule.costs import synthetic_profile
    from megatron_tf.solve.lp import SolverConfig
    from megatron_tf.solve.planner import solve_profile

    spec = ScheduleSpec(kind="interleaved", pp=4, vpp=2, microbatches=8)
    profile = synthetic_profile(spec, [(1.0, 1.0, 1.0)], comm=0.2)
    ppath, plan_path = tmp_path / "profile.json", tmp_path / "plan.json"
    save_profile(profile, ppath)
    plan = solve_profile(profile, SolverConfig(max_freeze_ratio=0.3, comm_model="dataflow")).plan
    save_plan(plan, plan_path)
    args = ["--profile", str(ppath), "--plan", str(plan_path)]

    default = _json(args)
    assert default["comm_model"] == "dataflow"
    assert default["makespan"] == pytest.approx(plan.predicted.makespan, rel=1e-9)
    assert default["baseline_makespan"] == pytest.approx(plan.predicted.baseline_makespan)

    explicit = _json([*args, "--comm-model", "megatron"])
    assert explicit["comm_model"] == "megatron"
    # the rendezvous model is slower on this schedule (30.3 s against 26.1 s)
    assert explicit["makespan"] > plan.predicted.makespan * 1.1
    assert _json([*args, "--comm-model", "dataflow"])["makespan"] == default["makespan"]
    # without a plan the default stays megatron
    assert _json(["--profile", str(ppath)])["comm_model"] == "megatron"
