"""`--megatron-lm`: a user's Megatron-LM script runs under torchrun with TimelyFreeze installed.

The "checkout" is a temporary folder holding `tests/dist/megatron_lm_standin/pretrain_gpt.py`,
a stand-in script that parses its arguments with Megatron-LM's own parser and trains a tiny GPT
with megatron-core's pipeline schedules on CPU (gloo), 2 ranks, pp 2, M 4.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from megatron_tf.cli import app
from megatron_tf.formats.plan import Plan, Predicted, SolverInfo, save_plan
from megatron_tf.formats.schedule import ScheduleRecord

pytestmark = pytest.mark.dist

STANDIN = Path(__file__).parent / "megatron_lm_standin" / "pretrain_gpt.py"

# What Megatron-LM's parser needs for a tiny 2-stage GPT on CPU; argv must reach the script as is.
MEGATRON_ARGS = [
    "--pipeline-model-parallel-size", "2",
    "--num-layers", "2",
    "--hidden-size", "32",
    "--num-attention-heads", "4",
    "--seq-length", "16",
    "--max-position-embeddings", "16",
    "--micro-batch-size", "1",
    "--global-batch-size", "4",  # M = 4 / (1 x dp 1)
    "--train-iters", "2",
    "--tokenizer-type", "NullTokenizer",
    "--vocab-size", "64",
    "--lr", "1e-3",
    "--mock-data",
    "--no-gradient-accumulation-fusion",
    "--use-cpu-initialization",
    "--transformer-impl", "local",
]  # fmt: skip
OWN_PARSER_ARGS = [
    "--pipeline-model-parallel-size", "2",
    "--num-layers", "2",
    "--hidden-size", "32",
    "--num-attention-heads", "4",
    "--seq-length", "16",
    "--micro-batch-size", "1",
    "--global-batch-size", "4",
    "--vocab-size", "64",
    "--train-iters", "2",
    "--transformer-impl", "local",
]  # fmt: skip

RATIOS = [[[1.0, 0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0, 0.0]]]  # [rank][chunk][microbatch]


def make_spec(microbatches: int):
    from megatron_tf.formats.schedule import ScheduleSpec

    return ScheduleSpec(kind="1f1b", pp=2, microbatches=microbatches)


def make_plan(path: Path, microbatches: int, ratios: list, vpp: int = 1) -> Path:
    kind = "1f1b" if vpp == 1 else "interleaved"
    schedule = ScheduleRecord(
        kind=kind, pp=2, vpp=vpp, microbatches=microbatches, group_size=2, overlap_p2p_comm=vpp > 1
    )
    plan = Plan(
        schedule=schedule,
        profile_sha256="0" * 64,
        max_freeze_ratio=0.5,
        tolerance=0.0,
        min_trained_microbatches=1,
        comm_model="megatron",
        ratios=ratios,
        predicted=Predicted(baseline_makespan=1.0, makespan=1.0, speedup=1.0),
        solver=SolverInfo(name="GLOP", status="OPTIMAL", seconds=0.0),
    )
    save_plan(plan, path)
    return path


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "Megatron-LM"
    root.mkdir()
    shutil.copy(STANDIN, root / "pretrain_gpt.py")
    return root


def pretrain(checkout: Path, plan: Path, args: list[str], results: Path, own_parser: bool):
    env = {
        "STANDIN_RESULTS": str(results),
        "STANDIN_OWN_PARSER": "1" if own_parser else "0",
        "TIMELYFREEZE_TIMEOUT": "300",
    }
    cli = ["pretrain", "--megatron-lm", str(checkout), "--plan", str(plan)]
    cli += ["--nproc-per-node", "2", "--", *args]
    return CliRunner().invoke(app, cli, env=env)


# Interleaved: 4 layers as 2 chunks per rank (Megatron-LM's default group size pp and
# overlapped P2P, which pp 2 with virtual stages needs).
INTERLEAVED_ARGS = [
    *MEGATRON_ARGS[:2],
    "--num-layers", "4",
    "--num-virtual-stages-per-pipeline-rank", "2",
    *MEGATRON_ARGS[4:],
]  # fmt: skip
INTERLEAVED_RATIOS = [
    [[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]],
    [[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]],
]


@pytest.mark.parametrize(
    ("args", "ratios"),
    [(MEGATRON_ARGS, RATIOS), (INTERLEAVED_ARGS, INTERLEAVED_RATIOS)],
    ids=["1f1b", "interleaved"],
)
def test_plan_reaches_every_rank_before_the_first_iteration(
    checkout: Path, tmp_path: Path, args: list[str], ratios: list
):
    plan = make_plan(tmp_path / "plan.json", 4, ratios, vpp=len(ratios[0]))
    results = tmp_path / "results"
    result = pretrain(checkout, plan, args, results, own_parser=False)
    assert result.exit_code == 0, result.output[-4000:]
    for rank in (0, 1):
        assert f"timelyfreeze[rank {rank}]: plan " in result.output
        assert f"timelyfreeze[rank {rank}]: freeze runtime installed before iteration 0" in (
            result.output
        )
        seen = json.loads((results / f"rank{rank}.json").read_text())
        # Megatron-LM's argv, untouched: the script path, then exactly the arguments after `--`.
        assert seen["argv"] == [str(checkout / "pretrain_gpt.py"), *args]
        frozen = {(it, chunk, mb): n for it, chunk, mb, n in seen["records"]}
        for iteration in (0, 1):  # from the very first iteration, as planned for this rank
            for chunk, planned_ratios in enumerate(ratios[rank]):
                for mb, ratio in enumerate(planned_ratios):
                    key = (iteration, chunk, mb)
                    assert (frozen[key] > 0) == (ratio > 0), (rank, key, frozen)
        # The evaluation (forward-only) call freezes nothing.
        assert all(n == 0 for (it, _, _), n in frozen.items() if it == -1)


def test_plan_for_another_layout_is_refused_from_megatron_args(checkout: Path, tmp_path: Path):
    plan = make_plan(tmp_path / "plan.json", 8, [[[0.0] * 8]] * 2)
    results = tmp_path / "results"
    result = pretrain(checkout, plan, MEGATRON_ARGS, results, own_parser=False)
    assert result.exit_code == 2, result.output[-4000:]
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(
        "error: the plan was solved for 1f1b pp=2 M=8 but this job runs 1f1b pp=2 M=4 "
        "(from Megatron-LM's arguments;"
    ), last
    assert not results.exists()  # no rank trained, or even built the model


def test_plan_for_another_layout_is_refused_at_the_first_schedule_call(
    checkout: Path, tmp_path: Path
):
    plan = make_plan(tmp_path / "plan.json", 8, [[[0.0] * 8]] * 2)
    results = tmp_path / "results"
    result = pretrain(checkout, plan, OWN_PARSER_ARGS, results, own_parser=True)
    assert result.exit_code == 2, result.output[-4000:]
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(
        "error: the plan was solved for 1f1b pp=2 M=8 but this job runs 1f1b pp=2 M=4 "
        "(at its first schedule call;"
    ), last
    assert not results.exists()


def test_profile_measures_inside_the_script_and_stops_it(checkout: Path, tmp_path: Path):
    from megatron_tf.formats.profile import load_profile

    out = tmp_path / "profile.json"
    results = tmp_path / "results"
    cli = ["profile", "--megatron-lm", str(checkout), "--nproc-per-node", "2", "-o", str(out)]
    cli += ["--iters", "2", "--warmup-iters", "1", "--", *MEGATRON_ARGS]
    env = {"STANDIN_RESULTS": str(results), "TIMELYFREEZE_TIMEOUT": "300"}
    result = CliRunner().invoke(app, cli, env=env)
    assert result.exit_code == 0, result.output[-4000:]
    profile = load_profile(out)
    # The layout Megatron-LM parsed: pp 2 from its flags, M = 4 / (1 x 1).
    assert profile.schedule.to_spec() == make_spec(4)
    assert [(s.rank, s.chunk) for s in profile.stages] == [(0, 0), (1, 0)]
    for stage in profile.stages:
        assert stage.forward > 0 and 0 <= stage.backward_frozen <= stage.backward
    assert profile.provenance["megatron_args"] == MEGATRON_ARGS
    assert len(profile.measured.iteration_times) == 2
    # Measured inside the script (its forwards ran), which then stopped: no rank reached the
    # end of training, so no optimizer step ever ran.
    assert sorted(p.name for p in results.iterdir()) == ["started_rank0", "started_rank1"]


def test_a_patched_fork_in_the_checkout_is_the_megatron_used(checkout: Path, tmp_path: Path):
    """A checkout carrying its own (patched) megatron/ package: the ranks import that one, and
    the hooks use its explicit hook points instead of wrapping functions."""
    import megatron.core

    installed = Path(megatron.core.__file__).parents[1]
    shutil.copytree(installed, checkout / "megatron", ignore=shutil.ignore_patterns("__pycache__"))
    patched = CliRunner().invoke(app, ["patch", "apply", "--target", str(checkout)])
    assert patched.exit_code == 0, patched.output
    plan = make_plan(tmp_path / "plan.json", 4, RATIOS)
    results = tmp_path / "results"
    result = pretrain(checkout, plan, MEGATRON_ARGS, results, own_parser=False)
    assert result.exit_code == 0, result.output[-4000:]
    fork_core = checkout / "megatron" / "core"
    for rank in (0, 1):
        assert (
            f"timelyfreeze[rank {rank}]: freeze runtime installed before iteration 0: plan "
        ) in result.output
        seen = json.loads((results / f"rank{rank}.json").read_text())
        assert Path(seen["megatron_core"]) == fork_core / "__init__.py"
        frozen = {(it, mb): n for it, _, mb, n in seen["records"]}
        assert [frozen[0, mb] > 0 for mb in range(4)] == [r > 0 for r in RATIOS[rank][0]]
    assert result.output.count(f"patched hooks in {fork_core}") == 2
