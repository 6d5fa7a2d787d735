"""The time-to-loss CLI surface: `solve --max-freeze-ratio auto`, `compare`'s refusals, and the
seed/validation flags of `pretrain`, through the real CLI (CliRunner, nothing launched)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from megatron_tf.cli import app
from megatron_tf.formats.plan import load_plan
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.schedule.costs import synthetic_profile
from megatron_tf.solve.budget import LossCost, choose_budget
from megatron_tf.train.corpus import CorpusConfig, heldout_samples, make_chain

runner = CliRunner()
PP4 = ["--schedule", "1f1b", "--pp", "4", "--microbatches", "8", "--costs", "1,1,1"]


def _profile(tmp_path: Path) -> Path:
    path = tmp_path / "profile.json"
    result = runner.invoke(app, ["profile", "--synthetic", *PP4, "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


def _one_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines


def test_solve_auto_writes_the_budget_choice_plan(tmp_path: Path) -> None:
    profile = _profile(tmp_path)
    plan = tmp_path / "plan.json"
    args = ["solve", str(profile), "--max-freeze-ratio", "auto", "--noise-scale", "40"]
    args += ["--auto-min-saving", "0"]  # trust its 4.5% predicted saving here
    result = runner.invoke(app, [*args, "--batch-samples", "16", "-o", str(plan)])
    assert result.exit_code == 0, result.output
    spec = ScheduleSpec(kind="1f1b", pp=4, microbatches=8)
    expected = choose_budget(
        synthetic_profile(spec, [(1.0, 1.0, 1.0)]), LossCost(40.0, 16, min_saving=0.0)
    )
    assert load_plan(plan).max_freeze_ratio == expected.max_freeze_ratio > 0
    assert "predicted time to the target loss" in result.output
    # JSON: every candidate with its time factor; the chosen one is the least.
    out = runner.invoke(app, [*args, "--batch-samples", "16", "--json"])
    data = json.loads(out.stdout)
    best = min(data["candidates"], key=lambda c: c["time_factor"])
    assert best["max_freeze_ratio"] == data["max_freeze_ratio"]


def test_solve_auto_writes_an_unfrozen_plan_when_freezing_cannot_pay(tmp_path: Path) -> None:
    path = tmp_path / "pp2.json"
    args = ["--schedule", "1f1b", "--pp", "2", "--microbatches", "8", "--costs", "1,1,1"]
    assert runner.invoke(app, ["profile", "--synthetic", *args, "-o", str(path)]).exit_code == 0
    plan = tmp_path / "plan.json"
    result = runner.invoke(
        app,
        ["solve", str(path), "--max-freeze-ratio", "auto", "--noise-scale", "1e9"]
        + ["--batch-samples", "16", "-o", str(plan)],
    )
    assert result.exit_code == 0, result.output
    assert "cannot pay" in result.output
    assert load_plan(plan).max_freeze_ratio == 0.0 and load_plan(plan).mean_freeze_ratio() == 0.0
    plan.unlink()
    # pp 4 at a later noise scale: a 4.5% predicted saving is inside the model's measured error.
    result = runner.invoke(
        app,
        ["solve", str(_profile(tmp_path)), "--max-freeze-ratio", "auto", "--noise-scale", "40"]
        + ["--batch-samples", "16", "-o", str(plan)],
    )
    assert result.exit_code == 0, result.output
    assert "--auto-min-saving" in result.output and load_plan(plan).mean_freeze_ratio() == 0.0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-freeze-ratio", "auto"], "--noise-scale"),
        (["--max-freeze-ratio", "auto", "--noise-scale", "4"], "--batch-samples"),
        (["--max-freeze-ratio", "lots"], "--max-freeze-ratio"),
        (["--max-freeze-ratio", "auto", "--noise-scale", "-1", "--batch-samples", "4"], "--noise"),
        (
            ["--max-freeze-ratio", "auto", "--noise-scale", "4", "--batch-samples", "4"]
            + ["--auto-min-saving", "1"],
            "--auto-min-saving",
        ),
        (["--auto-min-saving", "-1"], "--auto-min-saving applies only to --max-freeze-ratio auto"),
        (["--noise-scale", "4"], "--noise-scale applies only to --max-freeze-ratio auto"),
        (["--batch-samples", "4"], "--batch-samples applies only to --max-freeze-ratio auto"),
        (["--solver", "glop", "--pdlp-eps", "0.01"], "--pdlp-eps is PDLP's accuracy"),
    ],
)
def test_solve_auto_refusals(tmp_path: Path, args: list[str], needle: str) -> None:
    _one_error(runner.invoke(app, ["solve", str(_profile(tmp_path)), *args]), needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--budgets", "1.5"], "--budgets"),
        (["--budgets", "some"], "--budgets"),
        (["--time", "guessed"], "--time"),
        (["--seeds", "a,b"], "--seeds"),
        (["--warmup-iters", "300"], "--warmup-iters"),
        (["--noise-from", "middle"], "--noise-from"),
        (["--auto-min-saving", "-0.1"], "--auto-min-saving"),
        (["--budgets", "auto+reprice", "--reprice-every", "0"], "--reprice-every"),
        (["--pp", "3"], "--num-layers"),
        (["--profile", "p.json", "--costs", "1,2,1"], "either --profile FILE or --costs"),
        (["--time", "measured", "--costs", "1,2,1"], "drop --costs or use --time simulated"),
        (["--reprice-every", "5"], "--reprice-every applies only to the auto+reprice budget"),
        (["--budgets", "0.1", "--noise-from", "final"], "--noise-from applies only to an auto"),
        (["--budgets", "0.1", "--auto-min-saving", "0"], "--auto-min-saving applies only"),
    ],
)
def test_compare_refusals(tmp_path: Path, args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["compare", "--out-dir", str(tmp_path / "c"), *args])
    _one_error(result, needle)
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_heldout_samples_are_fixed_and_apart_from_the_training_text() -> None:
    cfg = CorpusConfig(vocab_size=64, documents=8, doc_length=128)
    a = heldout_samples(cfg, 16, 65, "validation")
    assert (a == heldout_samples(cfg, 16, 65, "validation")).all()  # same in every run
    assert not (a == heldout_samples(cfg, 16, 65, "noise_probe")).all()
    chain = make_chain(cfg)
    # Every step is a transition of the corpus's chain: the same task as the training text.
    assert (chain.transition[a[:, :-1], a[:, 1:]] > 0).all()


def test_reprice_run_length_covers_the_baselines_time() -> None:
    """`auto+reprice`'s equal-time length: a flat noise scale gives what the one cap chosen
    for it gets as a fixed plan (free samples: the fastest cap; noise-dominated: the cap that
    only fills bubbles); a growing one lies between (the caps fall as it grows)."""
    import math

    from megatron_tf.compare import CompareConfig, _equal_time_iters, _reprice_iters
    from megatron_tf.solve.budget import budget_curve

    cfg = CompareConfig(iters=300, warmup_iters=30, reprice_every=30)
    profile = synthetic_profile(ScheduleSpec(kind="1f1b", pp=4, microbatches=8), [(1, 1, 1)])
    curve = budget_curve(profile)
    lengths = {}
    for noise in (0.0, math.inf):
        flat = [{"iteration": 30, "noise_scale": noise}]
        speed = curve.best(LossCost(noise_scale=noise, batch=16)).speedup
        lengths[noise] = _equal_time_iters(cfg, speed)
        assert _reprice_iters(cfg, profile, flat, 16) == lengths[noise]
    assert lengths[0.0] == _equal_time_iters(cfg, max(o.speedup for o in curve.options))
    growing = [{"iteration": 30, "noise_scale": 8.0}, {"iteration": 299, "noise_scale": 1000.0}]
    assert lengths[math.inf] < _reprice_iters(cfg, profile, growing, 16) < lengths[0.0]


def test_compare_default_out_dir_is_a_path() -> None:
    """Without --out-dir the default folder parses (a refusal names the bad flag, not it)."""
    _one_error(runner.invoke(app, ["compare", "--budgets", "1.5"]), "--budgets")


def test_compare_out_dir_preflight_through_the_real_cli(tmp_path: Path) -> None:
    """A read-only --out-dir is one line and exit 2 before any training (the real CLI in a
    subprocess; /sys is a read-only mount, so this holds for root too)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "megatron_tf", "compare", "--out-dir", "/sys/tf-compare"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(repo), TIMELYFREEZE_CACHE=str(tmp_path / "cache")),
        timeout=20,
    )
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: --out-dir: cannot write '/sys/tf-compare' (in '/sys')")
    assert done.stdout == ""  # nothing trained, nothing said before the refusal
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("where", "needle"),
    [
        ("file/out", "is not a folder"),
        ("a" * 300, "(NAME_MAX)"),
        ("same", "is the file given to --profile"),
        ("seed", "where compare writes the runs of that seed"),
    ],
)
def test_compare_out_dir_refusals(tmp_path: Path, where: str, needle: str) -> None:
    (tmp_path / "file").write_text("x")
    profile = _profile(tmp_path)
    out = tmp_path / where
    if where == "same":
        out = tmp_path
        profile = profile.rename(tmp_path / "summary.json")
    elif where == "seed":
        out = tmp_path
        (tmp_path / "seed2").mkdir()
        profile = profile.rename(tmp_path / "seed2" / "p.json")
    before = profile.read_bytes()
    args = ["compare", "--out-dir", str(out), "--profile", str(profile), "--seeds", "1,2"]
    _one_error(runner.invoke(app, args), needle)
    assert profile.read_bytes() == before
    left = {"file", "seed2" if where == "seed" else profile.name}
    assert {p.name for p in tmp_path.iterdir()} == left  # nothing written
