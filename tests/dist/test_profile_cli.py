"""`timelyfreeze profile` end to end: torchrun workers on CPU, a valid profile, solve and simulate.

Timing accuracy is not asserted here (the CI machine is shared; see
scripts/bench/bench_profile_prediction.py for the measured prediction errors).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_tf.formats.profile import load_profile

SMALL = ["--iters", "2", "--warmup-iters", "1", "--hidden-size", "32", "--seq-length", "32"]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 400):
    return subprocess.run(
        [sys.executable, "-m", "megatron_tf", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TIMELYFREEZE_TIMEOUT": "360", **(env or {})},
    )


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(["--pp", "2", "--microbatches", "4", "--linearity"], id="1f1b-pp2-linearity"),
        pytest.param(
            ["--pp", "2", "--vpp", "2", "--overlap-p2p-comm", "--microbatches", "4"],
            id="interleaved-pp2",
        ),
    ],
)
def test_profile_measures_and_feeds_solve_and_simulate(tmp_path: Path, layout: list[str]) -> None:
    out = tmp_path / "profile.json"
    done = _cli("profile", *layout, *SMALL, "-o", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "predicted" in done.stdout and "measured" in done.stdout
    profile = load_profile(out)  # the format's validator accepts it
    spec = profile.spec
    assert spec.kind == ("interleaved" if "--vpp" in layout else "1f1b")
    assert len(profile.stages) == spec.pp * spec.vpp
    for stage in profile.stages:
        assert stage.forward > 0 and stage.backward > 0
        assert 0 <= stage.backward_frozen <= stage.backward
    measured = profile.measured
    assert measured.iteration_time > 0 and len(measured.iteration_times) == 2
    assert {(a.kind, a.chunk, a.microbatch) for a in measured.actions if a.kind in "FB"} == {
        (k, c, m) for k in "FB" for c in range(spec.vpp) for m in range(spec.microbatches)
    }
    assert profile.provenance["megatron_core"].startswith("0.19.2")
    # Every wait on a posted transfer (overlap_p2p_comm) was timed, one per Wait of the model,
    # so the gaps between timed calls are the schedule's bookkeeping in both P2P modes.
    from megatron_tf.schedule.order import Wait, rank_programs

    for rank, program in enumerate(rank_programs(spec)):
        waits = [a for a in measured.actions if a.rank == rank and a.kind.startswith("wait:")]
        assert len(waits) == sum(isinstance(op, Wait) for op in program)
    assert measured.gaps_attributed is True
    assert profile.provenance["timer"] == "time.perf_counter"
    # The phases were measured in interleaved rounds, one iteration of each per round.
    measurement = profile.provenance["measurement"]
    assert measurement["order"] == "interleaved"
    phases = ["unfrozen", "frozen"] + (
        ["ratio_0.25", "ratio_0.5", "ratio_0.75"] if "--linearity" in layout else []
    )
    assert len(measurement["rounds"]) == 2
    assert all(sorted(r) == sorted(phases) for r in measurement["rounds"])
    assert len(measured.frozen_iteration_times) == 2
    if "--linearity" in layout:
        assert profile.linearity["ratios"] == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert all(math.isfinite(s["r2"]) for s in profile.linearity["stages"])

    # simulate: the prediction check against the measured iteration.
    sim = _cli("simulate", "--profile", str(out), "--json")
    assert sim.returncode == 0, sim.stderr
    data = json.loads(sim.stdout)
    assert data["measured_iteration_time"] == measured.iteration_time
    # Megatron's gradient finalization (the tied-embedding all-reduce) ran after the last call,
    # was timed, and is part of the simulated iteration.
    assert 0 < profile.iteration_overhead < measured.iteration_time
    assert data["iteration_overhead"] == profile.iteration_overhead
    assert data["prediction_error"] == pytest.approx(
        (data["makespan"] - measured.iteration_time) / measured.iteration_time
    )

    # The LP solves on the measured profile's DAG (the `solve` command's core).
    from megatron_tf.schedule.costs import CostModel
    from megatron_tf.schedule.dag import build_dag
    from megatron_tf.solve.lp import SolverConfig, solve_lp

    dag = build_dag(spec, CostModel.from_profile(profile), "megatron")
    result = solve_lp(dag, SolverConfig(max_freeze_ratio=0.5))
    assert result.status == "OPTIMAL"
    assert result.makespan <= result.baseline_makespan + 1e-12
    assert result.baseline_makespan == pytest.approx(data["makespan"])

    # The profiler records each stage's freezable units with their parameter counts, so
    # `solve --weighting params` works on a measured profile, not only on hand-edited ones.
    for stage in profile.stages:
        assert stage.units and all(u.params and u.params > 0 for u in stage.units)
    first, last = profile.stage(0, 0), profile.stage(spec.pp - 1, spec.vpp - 1)
    assert first.units[0].name.endswith("embedding.word_embeddings.weight")
    assert 512 * 32 in {u.params for u in first.units}  # vocab x hidden: the word embedding
    assert any(u.name.endswith("linear_fc1.weight") for u in last.units)
    weighted = _cli("solve", str(out), "--weighting", "params", "-o", str(tmp_path / "w.json"))
    assert weighted.returncode == 0, weighted.stderr
    assert json.loads((tmp_path / "w.json").read_text())["weighting"] == "params"
    if "--vpp" not in layout:
        _plan_runs_with_the_freeze_runtime(tmp_path, profile, out, result, layout)


def _plan_runs_with_the_freeze_runtime(tmp_path, profile, profile_path, result, layout) -> None:
    """The plan solved on the measured profile trains on the same layout (pretrain --plan)."""
    from megatron_tf.formats.plan import Plan, Predicted, SolverInfo, save_plan
    from megatron_tf.formats.schedule import ScheduleRecord
    from megatron_tf.formats.profile import profile_sha256

    spec = profile.spec
    plan = Plan(
        schedule=ScheduleRecord(**spec.to_dict()),
        profile_sha256=profile_sha256(profile_path),
        max_freeze_ratio=0.5,
        tolerance=1e-6,
        min_trained_microbatches=1,
        comm_model="megatron",
        ratios=result.ratios.tolist(),
        predicted=Predicted(
            baseline_makespan=result.baseline_makespan,
            makespan=result.makespan,
            speedup=result.baseline_makespan / result.makespan,
        ),
        solver=SolverInfo(name="GLOP", status=result.status, seconds=0.0),
    )
    plan_path = tmp_path / "plan.json"
    save_plan(plan, plan_path)
    assert any(r > 0 for rank in plan.ratios for chunk in rank for r in chunk)
    model = [f for f in SMALL if f not in ("--iters", "2", "--warmup-iters", "1")]
    run = _cli(
        "pretrain",
        *[f for f in layout if f != "--linearity"],
        *model,
        "--plan",
        str(plan_path),
        "--iters",
        "2",
        "--lr-warmup-iters",
        "0",
        "--out-dir",
        str(tmp_path / "run"),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    # The freeze runtime applied the plan: some weight-gradient work was skipped.
    assert len(metrics) == 2 and any(max(m["freeze_ratio"]) > 0 for m in metrics), metrics


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--pp", "3"], "must divide --num-layers 4"),
        (["--pp", "4", "--vpp", "2", "--microbatches", "6", "--num-layers", "8"], "M mod group"),
        (["--pp", "2", "--nproc-per-node", "1"], "needs 2 processes"),
        (["--pp", "2", "--vpp", "2", "--microbatches", "4"], "--overlap-p2p-comm"),
        (["--pp", "2", "--phase-order", "random"], "--phase-order must be one of"),
    ],
)
def test_bad_flags_exit_2_before_launching(tmp_path: Path, flags: list[str], message: str) -> None:
    done = _cli("profile", *flags, "-o", str(tmp_path / "p.json"), timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert "torch.distributed.run" not in done.stdout + done.stderr  # nothing was launched
    assert not (tmp_path / "p.json").exists()


def test_a_dying_rank_fails_the_command(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    done = _cli(
        "profile",
        "--pp",
        "2",
        *SMALL,
        "-o",
        str(out),
        env={"TIMELYFREEZE_PROFILE_FAULT_RANK": "1"},
    )
    assert done.returncode == 1
    assert "injected failure on rank 1" in done.stdout + done.stderr
    assert "the job failed" in done.stderr
    assert not out.exists()
