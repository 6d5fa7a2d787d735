"""`timelyfreeze solve` through the real CLI: plans, JSON, sweeps, and every user error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from megatron_tf.cli import app
from megatron_tf.formats.plan import load_plan
from megatron_tf.formats.profile import profile_sha256
from megatron_tf.freeze.config import DEFAULT_MAX_FREEZE_RATIO

runner = CliRunner()

PP8_CASE = ["--schedule", "1f1b", "--pp", "8", "--microbatches", "16", "--costs", "1,1,1"]
INTERLEAVED = ["--schedule", "interleaved", "--pp", "4", "--vpp", "2", "--microbatches", "8"]


def synthetic(tmp_path: Path, args: list[str], name: str = "profile.json") -> Path:
    path = tmp_path / name
    result = runner.invoke(app, ["profile", "--synthetic", *args, "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert lines[0].startswith("error:")
    return lines[0]


def test_solve_writes_a_plan_the_simulator_reproduces(tmp_path: Path) -> None:
    profile = synthetic(tmp_path, [*INTERLEAVED, "--costs", "1,2,1.5", "--comm", "0.05"])
    plan_path = tmp_path / "plan.json"
    result = runner.invoke(
        app, ["solve", str(profile), "-o", str(plan_path), "--max-freeze-ratio", "0.2", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for key in (
        "baseline_makespan",
        "makespan",
        "predicted_speedup",
        "mean_freeze_ratio",
        "per_stage_mean_freeze_ratio",
        "solve_seconds",
        "status",
    ):
        assert key in summary
    assert summary["status"] == "OPTIMAL"
    assert summary["predicted_speedup"] == pytest.approx(
        summary["baseline_makespan"] / summary["makespan"]
    )
    assert len(summary["per_stage_mean_freeze_ratio"]) == 4

    plan = load_plan(plan_path)
    assert plan.profile_sha256 == profile_sha256(profile)
    assert plan.max_freeze_ratio == 0.2 and plan.comm_model == "megatron"
    assert plan.predicted.makespan == pytest.approx(summary["makespan"], rel=1e-12)
    flat = [r for rank in plan.ratios for chunk in rank for r in chunk]
    assert sum(flat) / len(flat) == pytest.approx(summary["mean_freeze_ratio"], rel=1e-9)
    per_rank = [sum(sum(c) for c in rank) / (2 * 8) for rank in plan.ratios]
    assert per_rank == pytest.approx(summary["per_stage_mean_freeze_ratio"], rel=1e-9)

    sim = runner.invoke(
        app, ["simulate", "--profile", str(profile), "--plan", str(plan_path), "--json"]
    )
    assert sim.exit_code == 0, sim.output
    assert json.loads(sim.stdout)["makespan"] == pytest.approx(plan.predicted.makespan, rel=1e-6)


def test_pp8_leverage_case_through_the_cli(tmp_path: Path) -> None:
    profile = synthetic(tmp_path, PP8_CASE)
    result = runner.invoke(app, ["solve", str(profile), "--max-freeze-ratio", "0.1", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["baseline_makespan"] == pytest.approx(69.0)
    cut = 1 - out["makespan"] / out["baseline_makespan"]
    assert cut >= 2.5 * (0.1 * 1 / 3)  # uniform freezing: r * W / (F + B + W)


def test_table_output(tmp_path: Path) -> None:
    profile = synthetic(tmp_path, PP8_CASE)
    result = runner.invoke(app, ["solve", str(profile), "--comm-model", "dataflow"])
    assert result.exit_code == 0, result.output
    for text in ("predicted speedup", "mean freeze ratio", "GLOP OPTIMAL", "dataflow"):
        assert text in result.stdout
    assert "not saved" in result.stdout


def test_sweep_table_json_and_plot(tmp_path: Path) -> None:
    profile = synthetic(tmp_path, PP8_CASE)
    png = tmp_path / "pareto.png"
    ratios = "0,0.05,0.1,0.2,0.4,0.6,0.8"
    result = runner.invoke(app, ["solve", str(profile), "--sweep", ratios, "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "Pareto sweep" in result.stdout and "leverage" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = runner.invoke(app, ["solve", str(profile), "--sweep", ratios, "--json"])
    assert result.exit_code == 0, result.output
    points = json.loads(result.stdout)["sweep"]
    assert [p["max_freeze_ratio"] for p in points] == [float(x) for x in ratios.split(",")]
    gains = [p["speed_gain"] for p in points]
    assert gains[0] == 0.0
    assert all(b >= a - 1e-9 for a, b in zip(gains, gains[1:], strict=False))
    for p in points[1:]:
        assert p["mean_freeze_ratio"] <= p["max_freeze_ratio"] + 1e-9
        assert (
            p["speed_gain"] >= p["uniform_speed_gain"] - 1e-9
        )  # uniform at the same ratio is feasible
    assert points[2]["leverage"] >= 2.5  # max 0.1: the LP gets >= 2.5x uniform's gain


def test_sweep_and_output_together(tmp_path: Path) -> None:
    profile = synthetic(tmp_path, PP8_CASE)
    plan_path = tmp_path / "plan.json"
    result = runner.invoke(
        app,
        ["solve", str(profile), "--sweep", "0.1,0.2", "-o", str(plan_path)],
    )
    assert result.exit_code == 0, result.output
    # the plan is at --max-freeze-ratio (its default)
    assert load_plan(plan_path).max_freeze_ratio == DEFAULT_MAX_FREEZE_RATIO


# ------------------------------------------------------------------------ user errors


def _profile_dict(tmp_path: Path) -> dict:
    return json.loads(
        synthetic(tmp_path, [*INTERLEAVED, "--costs", "1,1,1"], "p0.json").read_text()
    )


def _break_nan(d: dict) -> None:
    d["stages"][1]["forward"] = "NaN_PLACEHOLDER"


BROKEN = {
    "nan": (_break_nan, "stages.1.forward: must be a finite number"),
    "negative": (lambda d: d["stages"][2].update(backward=-1.0), "stages.2.backward"),
    "missing": (lambda d: d["stages"][3].pop("backward"), "stages.3.backward"),
    "frozen-slower": (
        lambda d: d["stages"][4].update(backward_frozen=9.0),
        "backward_frozen (9.0) exceeds backward",
    ),
    "missing-stage": (lambda d: d["stages"].pop(5), "missing"),
    "version": (lambda d: d.update(format="timelyfreeze.profile/9"), "timelyfreeze.profile/1"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_bad_profiles_exit_2_with_one_line(tmp_path: Path, case: str) -> None:
    data = _profile_dict(tmp_path)
    mutate, expected = BROKEN[case]
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data).replace('"NaN_PLACEHOLDER"', "NaN"))
    out = tmp_path / "plan.json"
    line = one_error_line(runner.invoke(app, ["solve", str(path), "-o", str(out)]))
    assert expected in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--max-freeze-ratio", "1.5"], "--max-freeze-ratio must lie in [0, 1], got 1.5"),
        (["--max-freeze-ratio", "-0.2"], "--max-freeze-ratio"),
        (["--tolerance", "2"], "--tolerance"),
        (["--comm-model", "ring"], "--comm-model must be one of megatron, dataflow"),
        (["--plot", "x.png"], "--plot draws the Pareto sweep: add --sweep"),
        (["--sweep", "0,abc"], "--sweep expects comma-separated ratios"),
        (["--sweep", "0,1.2"], "--sweep ratios must lie in [0, 1]"),
        (["--sweep", "0.1", "--plot", "x.gif"], "--plot must end in .png or .svg"),
        (["-o", "nowhere/plan.json"], "-o/--output: folder 'nowhere' does not exist"),
        (["--weighting", "params"], "--weighting params needs each stage's parameter count"),
        (["--solver", "simplex"], "--solver must be one of auto, glop, pdlp, got 'simplex'"),
        (["--pdlp-eps", "0"], "--pdlp-eps must be a relative accuracy in (0, 1)"),
        (["--threads", "2"], "--threads applies to --max-freeze-ratio auto and --sweep"),
        (
            ["--max-freeze-ratio", "auto", "--noise-scale", "4", "--batch-samples", "8"]
            + ["--threads", "0"],
            "--threads must be >= 1, got 0",
        ),
    ],
)
def test_bad_flags_exit_2_with_one_line(tmp_path: Path, extra: list[str], expected: str) -> None:
    profile = synthetic(tmp_path, PP8_CASE)
    line = one_error_line(runner.invoke(app, ["solve", str(profile), *extra]))
    assert expected in line


def test_parameter_weighting_from_profile_units(tmp_path: Path) -> None:
    data = json.loads(synthetic(tmp_path, PP8_CASE).read_text())
    for st in data["stages"]:
        # rank 3 holds ten times the parameters of the others
        params = 10_000 if st["rank"] == 3 else 1_000
        st["units"] = [{"name": "linear.weight", "share": 1.0, "params": params}]
    path = tmp_path / "units.json"
    path.write_text(json.dumps(data))
    plan_path = tmp_path / "plan.json"
    args = ["solve", str(path), "--max-freeze-ratio", "0.2", "-o", str(plan_path)]
    result = runner.invoke(app, [*args, "--weighting", "params", "--json"])
    assert result.exit_code == 0, result.output
    weighted = json.loads(result.stdout)
    assert load_plan(plan_path).weighting == "params"
    plain = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    # same optimal iteration; among such plans, the least parameter-weighted freezing
    assert weighted["lp_makespan"] == pytest.approx(plain["lp_makespan"], rel=1e-9)
    params = [10.0 if rank == 3 else 1.0 for rank in range(8)]

    def cost(out: dict) -> float:
        return sum(p * r for p, r in zip(params, out["per_stage_mean_freeze_ratio"], strict=True))

    assert cost(weighted) <= cost(plain) * (1 + 1e-6)


def test_missing_profile_file(tmp_path: Path) -> None:
    line = one_error_line(runner.invoke(app, ["solve", str(tmp_path / "none.json")]))
    assert "not found" in line


def test_infeasible_budget_keeps_an_existing_plan(tmp_path: Path) -> None:
    profile = synthetic(tmp_path, PP8_CASE)
    plan_path = tmp_path / "plan.json"
    ok = runner.invoke(app, ["solve", str(profile), "-o", str(plan_path)])
    assert ok.exit_code == 0, ok.output
    before = plan_path.read_bytes()
    result = runner.invoke(
        app,
        ["solve", str(profile), "-o", str(plan_path), "--min-trained-microbatches", "100"],
    )
    line = one_error_line(result)
    assert "infeasible budget" in line and "--min-trained-microbatches 100" in line
    assert plan_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "profile.json"]


def test_plan_records_the_first_stage_zero(tmp_path: Path) -> None:
    """Here the LP alone leaves no zero on (rank 0, chunk 0); the plan gets one and says so."""
    profile = synthetic(tmp_path, [*INTERLEAVED, "--costs", "1,2,1.5", "--comm", "0.05"])
    plan_path = tmp_path / "plan.json"
    args = ["solve", str(profile), "-o", str(plan_path), "--max-freeze-ratio", "0.9", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    plan = load_plan(plan_path)
    assert plan.solver.first_stage_pinned == summary["first_stage_pinned"] == [2]
    assert plan.ratios[0][0][2] == 0.0
    assert plan.solver.extras["first_stage_pinned_zero"] == 1.0
    sim = runner.invoke(
        app, ["simulate", "--profile", str(profile), "--plan", str(plan_path), "--json"]
    )
    assert json.loads(sim.stdout)["makespan"] == pytest.approx(plan.predicted.makespan, rel=1e-6)

    table = runner.invoke(app, ["solve", str(profile), "--max-freeze-ratio", "0.9"])
    assert "ratio fixed at 0 on microbatch 2" in table.stdout

    # with --min-trained-microbatches 0 nothing is pinned
    assert runner.invoke(app, [*args, "--min-trained-microbatches", "0"]).exit_code == 0
    assert load_plan(plan_path).solver.first_stage_pinned == []


def test_solver_choice_through_the_cli(tmp_path: Path) -> None:
    """`--solver pdlp` writes a PDLP plan, named as such, within its accuracy of GLOP's;
    `auto` on a small layout is GLOP."""
    profile = synthetic(tmp_path, [*INTERLEAVED, "--costs", "1,2,1.5", "--comm", "0.05"])
    summaries = {}
    for solver in ("auto", "glop", "pdlp"):
        plan_path = tmp_path / f"{solver}.json"
        args = ["solve", str(profile), "-o", str(plan_path), "--json", "--solver", solver]
        eps = [] if solver == "glop" else ["--pdlp-eps", "1e-6"]  # glop refuses it
        result = runner.invoke(app, [*args, *eps])
        assert result.exit_code == 0, result.output
        summaries[solver] = json.loads(result.stdout)
        assert load_plan(plan_path).solver.name == summaries[solver]["solver"]
    assert summaries["auto"]["solver"] == summaries["glop"]["solver"] == "GLOP"
    assert summaries["auto"]["makespan"] == summaries["glop"]["makespan"]
    assert summaries["pdlp"]["solver"] == "PDLP"
    assert summaries["pdlp"]["status"] == "OPTIMAL (PDLP, eps 1e-06)"
    optimum = summaries["glop"]["lp_makespan"]
    assert optimum * (1 - 1e-9) <= summaries["pdlp"]["makespan"] <= optimum * (1 + 2e-5)
    # the certified gap: GLOP's is its tolerance; PDLP's never understates the real one
    assert summaries["glop"]["dual_bound"] == pytest.approx(optimum, rel=1e-9)
    assert summaries["glop"]["certified_gap"] == pytest.approx(1e-6, abs=1e-8)
    real_gap = summaries["pdlp"]["makespan"] / optimum - 1
    assert summaries["pdlp"]["certified_gap"] >= real_gap - 1e-12
    table = runner.invoke(app, ["solve", str(profile), "--solver", "pdlp"])
    assert table.exit_code == 0, table.output
    assert "PDLP, eps 0.0001 in" in table.stdout


AUTO = ["--max-freeze-ratio", "auto", "--batch-samples", "8"]
PLAN_KEYS = {"baseline_makespan", "makespan", "predicted_speedup", "max_freeze_ratio", "status"}


def test_auto_json_is_one_document_with_the_choice_as_added_fields(tmp_path: Path) -> None:
    profile = synthetic(tmp_path, PP8_CASE)
    plan_path = tmp_path / "plan.json"
    args = ["solve", str(profile), "-o", str(plan_path), *AUTO, "--noise-scale", "4", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # one document, nothing after it
    plain = json.loads(
        runner.invoke(app, ["solve", str(profile), "--max-freeze-ratio", "0.1", "--json"]).stdout
    )
    assert set(doc) == set(plain) | {"reason", "candidates"}
    assert doc["max_freeze_ratio"] > 0 and doc["max_freeze_ratio"] in {
        c["max_freeze_ratio"] for c in doc["candidates"]
    }
    assert load_plan(plan_path).max_freeze_ratio == doc["max_freeze_ratio"]
    # with a sweep as well: still one document, the sweep as one more field
    swept = runner.invoke(app, [*args, "--sweep", "0,0.2"])
    both = json.loads(swept.stdout)
    assert set(both) == set(doc) | {"sweep"} and len(both["sweep"]) == 2
    assert both["max_freeze_ratio"] == doc["max_freeze_ratio"]


def test_auto_choosing_cap_0_writes_a_plan_that_freezes_nothing(tmp_path: Path) -> None:
    profile = synthetic(
        tmp_path, ["--schedule", "1f1b", "--pp", "2", "--microbatches", "4", "--costs", "1,1,1"]
    )
    plan_path = tmp_path / "plan.json"
    args = ["solve", str(profile), "-o", str(plan_path), *AUTO, "--noise-scale", "1e9"]
    doc = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert doc["max_freeze_ratio"] == 0.0 and set(doc) >= PLAN_KEYS
    assert doc["makespan"] == doc["baseline_makespan"] and doc["mean_freeze_ratio"] == 0.0
    assert "freezing cannot pay" in doc["reason"]
    plan = load_plan(plan_path)
    assert plan.max_freeze_ratio == 0.0
    assert all(r == 0.0 for chunks in plan.ratios for values in chunks for r in values)
    plan_path.unlink()
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    assert f"auto chose cap 0: {plan_path} freezes nothing" in text.stdout
    assert "training with it is the baseline" in text.stdout
    dry = runner.invoke(
        app,
        ["pretrain", "--out-dir", str(tmp_path / "out"), "--mock-data", "--dry-run"]
        + ["--pp", "2", "--microbatches", "4", "--plan", str(plan_path)],
    )
    assert dry.exit_code == 0, dry.output
