"""`timelyfreeze pretrain` end to end: the real CLI, torchrun, gloo on CPU, the embedded corpus.

Each run is a subprocess of the real command; losses come from the run's metrics.jsonl and
weights from its checkpoints. Runs are tiny (a few iterations of the default small GPT), and a
run that several tests read (the same command line) is launched once for the module
(`shared`), so the whole file takes a few minutes on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from harness import uniform_plan

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300


def _pretrain(tmp: Path, *args: str, out: str = "run") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TIMELYFREEZE_CACHE=str(tmp / "cache"))
    cmd = [sys.executable, "-m", "megatron_tf", "pretrain", "--out-dir", str(tmp / out)]
    return subprocess.run(
        [*cmd, "--microbatches", "4", "--log-interval", "1", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _losses(tmp: Path, out: str = "run") -> dict[int, float]:
    lines = (tmp / out / "metrics.jsonl").read_text().splitlines()
    return {r["iteration"]: r["loss"] for r in map(json.loads, lines)}


class Shared:
    """Runs shared by the module's tests: one launch per distinct command line, whatever order
    pytest runs the tests in. `run(*args)` returns the run's folder and its process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.plan = uniform_plan(root / "plan.json", pp=2, vpp=1, microbatches=4, ratio=0.5)
        self._runs: dict[tuple[str, ...], tuple[Path, subprocess.CompletedProcess[str]]] = {}

    def run(self, *args: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
        if args not in self._runs:
            out = f"run{len(self._runs)}"
            proc = _pretrain(self.root, *args, out=out)
            _ok(proc)
            self._runs[args] = (self.root / out, proc)
        return self._runs[args]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    return Shared(tmp_path_factory.mktemp("pretrain-shared"))


def _read(run: Path) -> dict[int, float]:
    return _losses(run.parent, run.name)


def baseline_args() -> list[str]:
    """8 iterations of the 1F1B baseline: a loss-decrease case and the plain run that the
    validation test compares with."""
    return ["--iters", "8", "--lr-warmup-iters", "1", "--vpp", "1"]


def planned_args(shared: Shared) -> list[str]:
    """8 iterations of 1F1B under the uniform 0.5 plan, checkpointing at 4 and 8: a
    loss-decrease case and the uninterrupted run that the resume test compares with."""
    args = [*baseline_args(), "--plan", str(shared.plan), "--save-interval", "4"]
    return [*args, "--save", str(shared.root / "ckA")]


@pytest.mark.parametrize("vpp", [1, 2], ids=["1f1b", "interleaved"])
@pytest.mark.parametrize("with_plan", [False, True], ids=["baseline", "plan"])
def test_pretrain_loss_decreases(tmp_path: Path, shared: Shared, vpp: int, with_plan: bool) -> None:
    if vpp == 1:  # the 1F1B runs are shared with the validation and resume tests
        run, _ = shared.run(*(planned_args(shared) if with_plan else baseline_args()))
    else:
        args = ["--iters", "8", "--lr-warmup-iters", "1", "--vpp", str(vpp), "--overlap-p2p-comm"]
        if with_plan:
            plan = uniform_plan(tmp_path / "plan.json", pp=2, vpp=vpp, microbatches=4, ratio=0.5)
            args += ["--plan", str(plan)]
        _ok(_pretrain(tmp_path, *args))
        run = tmp_path / "run"
    losses = _read(run)
    assert sorted(losses) == list(range(1, 9))
    # Starts near ln(vocab) = ln(512) and goes down: the last two iterations average below the
    # first by a margin far above the step-to-step noise of this tiny run.
    assert abs(losses[1] - torch.log(torch.tensor(512.0)).item()) < 0.3
    assert (losses[7] + losses[8]) / 2 < losses[1] - 0.15
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    if with_plan:
        # The freeze runtime was on: every virtual stage realised a real share of the plan's
        # 0.5 (the runtime freezes whole tensors by wgrad cost, so the realised share differs
        # from the plan by up to a tensor's cost; the first virtual stage, whose embedding has
        # almost no wgrad cost, realises less) and never more than the plan plus that.
        assert all(len(r["freeze_ratio"]) == 2 * vpp for r in records)
        assert all(0.2 <= x <= 0.65 for r in records for x in r["freeze_ratio"])
    else:
        assert all(r["freeze_ratio"] == [] for r in records)


def test_resume_continues_exactly(tmp_path: Path, shared: Shared) -> None:
    """N iterations straight vs N/2, stop, resume: identical losses and weights at N."""
    straight_run, _ = shared.run(*planned_args(shared))
    ckA = shared.root / "ckA"
    common = planned_args(shared)[:-2]  # without its --save
    _ok(
        _pretrain(
            tmp_path,
            *common,
            "--save",
            str(tmp_path / "ckB"),
            "--exit-after-iters",
            "4",
            out="first",
        )
    )
    assert (tmp_path / "ckB" / "latest").read_text().strip() == "iter_0000004"
    _ok(
        _pretrain(
            tmp_path,
            *common,
            "--save",
            str(tmp_path / "ckB"),
            "--load",
            str(tmp_path / "ckB"),
            out="second",
        )
    )
    straight = _read(straight_run)
    first, second = (_losses(tmp_path, o) for o in ("first", "second"))
    assert sorted(first) == [1, 2, 3, 4] and sorted(second) == [5, 6, 7, 8]
    assert {**first, **second} == straight  # exact float equality, iteration by iteration
    for rank in (0, 1):
        a = torch.load(ckA / "iter_0000008" / f"rank_{rank:05d}.pt", weights_only=False)
        b = torch.load(tmp_path / "ckB/iter_0000008" / f"rank_{rank:05d}.pt", weights_only=False)
        for sa, sb in zip(a["model"], b["model"], strict=True):
            assert sa.keys() == sb.keys()
            for key in sa:
                if isinstance(sa[key], torch.Tensor):
                    assert torch.equal(sa[key], sb[key]), key
        assert a["freezer"] == b["freezer"]


def test_plan_auto_profiles_without_touching_the_run(tmp_path: Path) -> None:
    """`--plan auto` measures after the warm-up and solves; the measurement iterations change
    nothing: a run given the same plan as a file from the start has identical losses. Drift
    re-profiling is off by default: one plan only."""
    common = ["--iters", "6", "--lr-warmup-iters", "1", "--freeze-warmup-iters", "2"]
    common += ["--profile-iters", "2", "--max-freeze-ratio", "0.8"]
    _ok(_pretrain(tmp_path, *common, "--plan", "auto", out="auto"))
    replans = sorted(p.name for p in (tmp_path / "auto").glob("replan_*"))
    assert replans == ["replan_0"]
    plan = tmp_path / "auto" / "replan_0" / "plan.json"
    assert json.loads(plan.read_text())["max_freeze_ratio"] == 0.8
    _ok(_pretrain(tmp_path, *common, "--plan", str(plan), out="file"))
    assert _losses(tmp_path, "auto") == _losses(tmp_path, "file")


def test_drift_triggers_reprofiling_when_forced(tmp_path: Path) -> None:
    """A threshold no measurement can meet: after `patience` freezing iterations the run
    profiles and solves again (replan_1), and does not re-plan after its last iteration."""
    args = ["--iters", "6", "--lr-warmup-iters", "1", "--freeze-warmup-iters", "2"]
    args += ["--profile-iters", "2", "--plan", "auto", "--drift-threshold", "1e-9"]
    proc = _pretrain(tmp_path, *args, "--drift-patience", "2")
    _ok(proc)
    replans = sorted(p.name for p in (tmp_path / "run").glob("replan_*"))
    assert replans == ["replan_0", "replan_1"]
    assert "re-planning (drift" in proc.stdout
    assert sorted(_losses(tmp_path)) == list(range(1, 7))


def test_validation_and_noise_probe_leave_training_untouched(
    tmp_path: Path, shared: Shared
) -> None:
    """`--eval-interval` and `--noise-probe-at` run forward(-backward) passes on held-out samples
    without a step: the training losses equal a plain run's exactly, validation losses appear
    at the interval and the last iteration, and each probe reports a finite noise scale; the
    data seed alone changes the sample order (other losses), not the task."""
    common = baseline_args()
    probe = ["--eval-interval", "4", "--eval-samples", "16"]
    probe += ["--noise-probe-at", "1", "--noise-probe-at", "5", "--noise-probe-rounds", "2"]
    _ok(_pretrain(tmp_path, *common, *probe, out="probed"))
    plain, _ = shared.run(*common)
    assert _losses(tmp_path, "probed") == _read(plain)
    lines = (tmp_path / "probed" / "metrics.jsonl").read_text().splitlines()
    val = {r["iteration"]: r["val_loss"] for r in map(json.loads, lines)}
    assert [i for i, v in val.items() if v is not None] == [4, 8]
    assert 0.0 < val[8] < val[4] < 7.0  # below ln(512) and falling
    probes = json.loads((tmp_path / "probed" / "noise_scale.json").read_text())
    assert [p["iteration"] for p in probes] == [1, 5]
    assert all(p["b_small"] == 2 and p["b_big"] == 8 for p in probes)  # 1 and 4 microbatches
    assert all(p["small_batch_grad_sq"] > 0 and p["big_batch_grad_sq"] > 0 for p in probes)
    _ok(_pretrain(tmp_path, *common, "--data-seed", "99", out="order"))
    assert _losses(tmp_path, "order") != _read(plain)


def test_plan_auto_with_the_auto_budget(tmp_path: Path) -> None:
    """`--plan auto --max-freeze-ratio auto`: the noise probe runs at the end of the freeze
    warm-up, and the plan's cap is the budget choice for that noise scale on the in-job profile."""
    from megatron_tf.formats.profile import load_profile
    from megatron_tf.solve.budget import LossCost, choose_budget

    args = ["--iters", "4", "--lr-warmup-iters", "1", "--freeze-warmup-iters", "2"]
    args += ["--profile-iters", "2", "--plan", "auto", "--max-freeze-ratio", "auto"]
    _ok(_pretrain(tmp_path, *args, "--noise-probe-rounds", "2", out="auto"))
    probes = json.loads((tmp_path / "auto" / "noise_scale.json").read_text())
    assert [p["iteration"] for p in probes] == [2]
    replan = tmp_path / "auto" / "replan_0"
    plan = json.loads((replan / "plan.json").read_text())
    choice = choose_budget(
        load_profile(replan / "profile.json"),
        LossCost(noise_scale=probes[0]["noise_scale"], batch=8),
    )
    assert plan["max_freeze_ratio"] == choice.max_freeze_ratio


def _reprice_inputs(tmp: Path) -> tuple[Any, Any]:
    """The pp 2 x 4 profile (synthetic 1:1:1) and its plan at cap 0.3, saved as profile.json
    and plan.json under `tmp`: the starting plan and speed curve of a re-pricing run."""
    from megatron_tf.formats.plan import save_plan
    from megatron_tf.formats.profile import save_profile
    from megatron_tf.formats.schedule import ScheduleSpec
    from megatron_tf.schedule.costs import synthetic_profile
    from megatron_tf.solve.lp import SolverConfig
    from megatron_tf.solve.planner import solve_profile

    profile = synthetic_profile(ScheduleSpec(kind="1f1b", pp=2, microbatches=4), [(1.0, 1.0, 1.0)])
    save_profile(profile, tmp / "profile.json")
    plan = solve_profile(profile, SolverConfig(max_freeze_ratio=0.3)).plan
    save_plan(plan, tmp / "plan.json")
    return profile, plan


def test_reprice_switches_plans_at_its_iterations(tmp_path: Path) -> None:
    """`--reprice-every 2` after a 2-iteration warm-up: the noise scale is probed again before
    iterations 4 and 6 (0-based: after 4 and 6 steps), each probe's cap is the budget choice on
    the given profile's speed curve, each plan is in force from the next step on (its predicted
    time in metrics.jsonl), and the probes change no loss: up to the first switch the losses
    equal those of the same run without re-pricing, exactly."""
    from megatron_tf.solve.budget import LossCost, budget_curve

    profile, plan = _reprice_inputs(tmp_path)
    common = ["--iters", "7", "--lr-warmup-iters", "1", "--freeze-warmup-iters", "2"]
    common += ["--plan", str(tmp_path / "plan.json"), "--noise-probe-rounds", "2"]
    reprice = ["--max-freeze-ratio", "auto", "--reprice-every", "2"]
    reprice += ["--reprice-profile", str(tmp_path / "profile.json")]
    proc = _pretrain(tmp_path, *common, *reprice, out="reprice")
    _ok(proc)
    _ok(_pretrain(tmp_path, *common, out="once"))
    run = tmp_path / "reprice"
    assert sorted(p.name for p in run.glob("reprice_*")) == ["reprice_4", "reprice_6"]
    probes = json.loads((run / "noise_scale.json").read_text())
    assert [p["iteration"] for p in probes] == [4, 6]
    curve = budget_curve(profile)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for probe in probes:
        it = int(probe["iteration"])
        chosen = json.loads((run / f"reprice_{it}" / "plan.json").read_text())
        expect = curve.best(LossCost(noise_scale=probe["noise_scale"], batch=8))
        assert chosen["max_freeze_ratio"] == expect.max_freeze_ratio
        makespan = chosen["predicted"]["makespan"]
        # metrics' iteration n is the step taken after n - 1 steps: the new plan's first is it+1.
        for rec in records[it : it + 2]:
            assert rec["predicted_seconds"] == pytest.approx(makespan)
    assert records[3]["predicted_seconds"] == pytest.approx(plan.predicted.makespan)
    once = _losses(tmp_path, "once")
    mine = _losses(tmp_path, "reprice")
    assert [mine[i] for i in range(1, 5)] == [once[i] for i in range(1, 5)]
    assert "re-priced at iteration 4" in proc.stdout


def lag_common() -> list[str]:
    return ["--iters", "7", "--lr-warmup-iters", "1", "--max-freeze-ratio", "0.8"]


def lagged_args(shared: Shared) -> list[str]:
    """`--plan auto --replan-lag 3`: measured after the 2-iteration warm-up, solved beside
    iterations 3-5, in force from 6; a checkpoint at 4, while the plan is on its way."""
    args = [*lag_common(), "--plan", "auto", "--freeze-warmup-iters", "2", "--profile-iters", "2"]
    return [*args, "--replan-lag", "3", "--save-interval", "4", "--save", str(shared.root / "ck")]


def lagged_and_file(shared: Shared) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """The lagged run, and a run given its plan as a file with a 5-iteration warm-up."""
    lagged, proc = shared.run(*lagged_args(shared))
    plan = lagged / "replan_0" / "plan.json"
    file_run, _ = shared.run(*lag_common(), "--plan", str(plan), "--freeze-warmup-iters", "5")
    return lagged, file_run, proc


def test_replan_lag_solves_beside_training_and_switches_at_a_fixed_iteration(
    shared: Shared,
) -> None:
    """`--replan-lag 3`: the in-job profile is measured after the 2-iteration warm-up, rank 0
    solves while iterations 3 to 5 train unfrozen, and the plan is in force from iteration 6 on
    every rank. The run equals one given that plan as a file with a 5-iteration warm-up, loss
    for loss: the switch happens at the lag, not when the solve finished."""
    lagged, file_run, proc = lagged_and_file(shared)
    assert "beside iterations 3-5, in force from 6" in proc.stdout
    records = [json.loads(x) for x in (lagged / "metrics.jsonl").read_text().splitlines()]
    plan = lagged / "replan_0" / "plan.json"
    makespan = json.loads(plan.read_text())["predicted"]["makespan"]
    assert [r["predicted_seconds"] for r in records[:5]] == [None] * 5
    assert [r["predicted_seconds"] for r in records[5:]] == pytest.approx([makespan] * 2)
    assert _read(lagged) == _read(file_run)


def test_replan_lag_with_repricing_skips_and_abandons_in_order(tmp_path: Path) -> None:
    """`--reprice-every 2 --replan-lag 3` after a 2-iteration warm-up: the re-pricing started
    at iteration 4 is in force from 8 (not before), the one due at 6 is skipped while it is
    pending, and the one started at 8 is still pending when the 9-iteration run ends: its plan
    is written whole but not applied."""
    _, plan = _reprice_inputs(tmp_path)
    args = ["--iters", "9", "--lr-warmup-iters", "1", "--freeze-warmup-iters", "2"]
    args += ["--plan", str(tmp_path / "plan.json"), "--noise-probe-rounds", "2"]
    args += ["--max-freeze-ratio", "auto", "--reprice-every", "2", "--replan-lag", "3"]
    args += ["--reprice-profile", str(tmp_path / "profile.json")]
    proc = _pretrain(tmp_path, *args)
    _ok(proc)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("reprice_*")) == ["reprice_4", "reprice_8"]
    assert "re-pricing at iteration 6 skipped" in proc.stdout
    assert "re-pricing, due at iteration 11, was not applied" in proc.stdout
    new = json.loads((run / "reprice_4" / "plan.json").read_text())["predicted"]["makespan"]
    json.loads((run / "reprice_8" / "plan.json").read_text())  # whole, parseable
    assert new != pytest.approx(plan.predicted.makespan)  # the switch is visible in the record
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    predicted = [r["predicted_seconds"] for r in records]
    assert predicted[2:7] == pytest.approx([plan.predicted.makespan] * 5)
    assert predicted[7:] == pytest.approx([new] * 2)


def test_a_checkpoint_inside_the_replan_lag_resumes_with_that_plan_where_it_was_due(
    tmp_path: Path, shared: Shared
) -> None:
    """The lagged run saves at 4, while its plan is on its way; a run resumed from that
    checkpoint (its iteration folder) measures nothing and switches to the checkpoint's plan
    at 6, so its iterations after the first four equal those of one run given that plan as a
    file with a 5-iteration warm-up, loss for loss. (Two auto runs measure two profiles, so
    they may solve different plans.)"""
    lagged, file_run, _ = lagged_and_file(shared)
    # The lagged run went on to 7 (and saved there too): resume from its iteration-4 folder.
    resume = [*lagged_args(shared)[:-2], "--save", str(tmp_path / "ck")]
    resume += ["--load", str(shared.root / "ck" / "iter_0000004")]
    second = _pretrain(tmp_path, *resume, out="second")
    _ok(second)
    assert "beside iterations 3-5, in force from 6" in second.stdout
    assert not (tmp_path / "second" / "replan_0").exists()  # nothing measured again
    first = {i: loss for i, loss in _read(lagged).items() if i <= 4}
    after = _losses(tmp_path, "second")
    assert sorted(first) == [1, 2, 3, 4] and sorted(after) == [5, 6, 7]
    assert {**first, **after} == _read(file_run)
