"""The real Megatron-LM `pretrain_gpt.py`, end to end, on both shared snapshots.

For each snapshot (`core_r0.19.0`: megatron/core 0.19.1; `main`: 0.20.0; see tests/conftest.py
for where they are found) one module-scoped chain runs, on a copy of the snapshot, in CPU trial
mode (`--cpu-trial`: gloo, a tiny pp 2 GPT, M 4):

1. `profile --megatron-lm` on the stock `pretrain_gpt.py`, then `solve`;
2. `pretrain --megatron-lm --plan`, 4 iterations, Megatron's own checkpoints at 2 and 4;
3. `pretrain --megatron-lm --plan --load` from iteration 2 to 4 (the resume);
4. `pretrain --megatron-lm --schedule zb-h1 --plan` with an all-zero plan for zb-h1 (the
   zero-bubble schedule in place of Megatron's 1F1B, the freeze runtime on top), and the same
   `pretrain_gpt.py` run by torchrun without TimelyFreeze at all (only the CPU stand-in): both
   bitwise equal, losses and weights.

Runs 2 to 4 start `record_losses.py` (tests/dist/megatron_lm_real), which records each training
step's exact losses and then runs `pretrain_gpt.py` unchanged. The copy
(`megatron_lm_checkout`, tests/conftest.py) only adds the dataset index helper built by the
installed megatron-core wheel, and MAKEFLAGS names that module's file so Megatron's `make` finds
it up to date.

Dropout is off in runs 2 and 3: in CPU trial mode dropout draws from the CPU generator, which the
DataLoader also draws its seed from after a resume's checkpoint load (on a GPU dropout uses the
CUDA generator), so only without it is a resume bit-exact on CPU. Run 4 keeps dropout on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from harness import REPO, torchrun_command
from typer.testing import CliRunner

from megatron_tf.cli import app
from megatron_tf.formats.plan import load_plan, save_plan

pytestmark = pytest.mark.dist

RECORDER = Path(__file__).parent / "megatron_lm_real" / "record_losses.py"
SNAPSHOTS = ["core_r0.19.0", "main"]
CORE_VERSIONS = {"core_r0.19.0": "0.19.1", "main": "0.20.0"}

# A tiny pp 2 GPT on CPU: M = 4 / (1 x dp 1). The flags Megatron-LM needs without CUDA,
# TransformerEngine or a tokenizer file; the checkpoint format that needs no psutil.
MEGATRON_ARGS = [
    "--pipeline-model-parallel-size", "2",
    "--num-layers", "2",
    "--hidden-size", "32",
    "--num-attention-heads", "4",
    "--seq-length", "16",
    "--max-position-embeddings", "16",
    "--micro-batch-size", "1",
    "--global-batch-size", "4",
    "--train-iters", "4",
    "--lr", "1e-3",
    "--lr-decay-style", "constant",
    "--seed", "1234",
    "--distributed-backend", "gloo",
    "--transformer-impl", "local",
    "--no-gradient-accumulation-fusion",
    "--no-bias-dropout-fusion",
    "--no-masked-softmax-fusion",
    "--no-persist-layer-norm",
    "--use-cpu-initialization",
    "--mock-data",
    "--tokenizer-type", "NullTokenizer",
    "--vocab-size", "64",
    "--eval-iters", "0",
    "--eval-interval", "1000",
    "--log-interval", "1",
    "--ckpt-format", "torch",
]  # fmt: skip
NO_DROPOUT = ["--attention-dropout", "0", "--hidden-dropout", "0"]


@dataclass
class Run:
    """One launch: its exit code, console output and what each rank recorded."""

    exit_code: int
    output: str
    ranks: list[dict[str, Any]] = field(default_factory=list)

    def losses(self) -> list[tuple[int, float]]:
        """(iteration, lm loss) of every training step, from the last pipeline stage."""
        return [(it, losses["lm loss"]) for it, losses in self.ranks[1]["steps"]]


@dataclass
class Chain:
    snapshot: str
    checkout: Path
    work: Path
    profile: Run
    planned: Run
    resumed: Run
    zero_plan: Run
    stock: Run


def environment(results: Path) -> dict[str, str]:
    return {
        "REAL_RESULTS": str(results),
        "TIMELYFREEZE_TIMEOUT": "600",  # per launch; a busy 2-core machine is slow
        "OMP_NUM_THREADS": "1",
        # Megatron's dataset Makefile names the module after `python3-config`, which may be
        # another Python than this one.
        "MAKEFLAGS": f"LIBEXT={sysconfig.get_config_var('EXT_SUFFIX')}",
    }


def read_ranks(results: Path) -> list[dict[str, Any]]:
    return [json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1)]


def timelyfreeze(cli: list[str], results: Path) -> Run:
    result = CliRunner().invoke(app, cli, env=environment(results))
    ranks = read_ranks(results) if result.exit_code == 0 and results.is_dir() else []
    return Run(result.exit_code, result.output, ranks)


def pretrain(checkout: Path, plan: Path, args: list[str], results: Path, schedule: str = "") -> Run:
    cli = ["pretrain", "--megatron-lm", str(checkout), "--script", RECORDER.name, "--cpu-trial"]
    cli += ["--schedule", schedule] if schedule else []
    cli += ["--plan", str(plan), "--nproc-per-node", "2", "--", *args]
    return timelyfreeze(cli, results)


def stock(checkout: Path, args: list[str], results: Path) -> Run:
    """`torchrun pretrain_gpt.py` (through the recorder) with no TimelyFreeze, only the stand-in."""
    env = {**environment(results), "REAL_STOCK": "1", "PYTHONPATH": str(REPO)}
    cmd = torchrun_command(str(checkout / RECORDER.name), 2, args)
    proc = subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=600, check=False
    )
    output = proc.stdout + proc.stderr
    return Run(proc.returncode, output, read_ranks(results) if proc.returncode == 0 else [])


def zero_plan(plan: Path, dest: Path, kind: str) -> Path:
    """`plan` with every ratio 0, for the schedule `kind` (same layout)."""
    solved = load_plan(plan)
    ratios = [[[0.0] * len(mbs) for mbs in chunks] for chunks in solved.ratios]
    schedule = solved.schedule.model_copy(update={"kind": kind})
    save_plan(solved.model_copy(update={"ratios": ratios, "schedule": schedule}), dest)
    return dest


@pytest.fixture(scope="module", params=SNAPSHOTS)
def chain(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, megatron_lm_checkout
) -> Chain:
    name = request.param
    work = tmp_path_factory.mktemp(f"real-{name}")
    checkout = megatron_lm_checkout(name)
    shutil.copy(RECORDER, checkout / RECORDER.name)
    args = MEGATRON_ARGS

    cli = ["profile", "--megatron-lm", str(checkout), "--cpu-trial", "--nproc-per-node", "2"]
    cli += ["-o", str(work / "profile.json"), "--iters", "2", "--warmup-iters", "1", "--", *args]
    profile = CliRunner().invoke(app, cli, env=environment(work / "profile-results"))
    assert profile.exit_code == 0, profile.output[-4000:]
    solved = CliRunner().invoke(
        app,
        ["solve", str(work / "profile.json"), "-o", str(work / "plan.json")]
        + ["--max-freeze-ratio", "0.5"],
    )
    assert solved.exit_code == 0, solved.output

    plan = work / "plan.json"
    saving = [*args, *NO_DROPOUT, "--save", str(work / "ck-planned"), "--save-interval", "2"]
    planned = pretrain(checkout, plan, saving, work / "planned")
    assert planned.exit_code == 0, planned.output[-4000:]
    resuming = [*args, *NO_DROPOUT, "--load", str(work / "ck-planned"), "--ckpt-step", "2"]
    resuming += ["--save", str(work / "ck-resumed"), "--save-interval", "2"]
    resumed = pretrain(checkout, plan, resuming, work / "resumed")
    assert resumed.exit_code == 0, resumed.output[-4000:]

    final = ["--save-interval", "4"]
    zero = zero_plan(plan, work / "zero-plan.json", "zb-h1")
    zero_run = pretrain(
        checkout,
        zero,
        [*args, "--save", str(work / "ck-zero"), *final],
        work / "zero",
        schedule="zb-h1",
    )
    assert zero_run.exit_code == 0, zero_run.output[-4000:]
    stock_run = stock(checkout, [*args, "--save", str(work / "ck-stock"), *final], work / "stock")
    assert stock_run.exit_code == 0, stock_run.output[-4000:]
    return Chain(
        name,
        checkout,
        work,
        Run(profile.exit_code, profile.output),
        planned,
        resumed,
        zero_run,
        stock_run,
    )


def model_weights(root: Path, iteration: int, rank: int) -> dict[str, torch.Tensor]:
    path = root / f"iter_{iteration:07d}" / f"mp_rank_00_{rank:03d}" / "model_optim_rng.pt"
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {k: v for k, v in state["model"].items() if isinstance(v, torch.Tensor)}


def freezer_state(root: Path, iteration: int, rank: int) -> dict[str, Any]:
    path = root / f"iter_{iteration:07d}" / "timelyfreeze" / f"rank{rank:05d}.pt"
    return torch.load(path, map_location="cpu", weights_only=False)


def test_the_checkout_megatron_core_is_the_one_that_ran(chain: Chain) -> None:
    core = chain.checkout / "megatron" / "core"
    for run in (chain.planned, chain.resumed, chain.zero_plan, chain.stock):
        assert [Path(r["megatron_core"]) for r in run.ranks] == [core / "__init__.py"] * 2
    version = CORE_VERSIONS[chain.snapshot]
    assert f"Megatron-Core version .......... {version}" in chain.stock.output


def test_profile_measured_inside_the_stock_script(chain: Chain) -> None:
    from megatron_tf.formats.profile import load_profile

    profile = load_profile(chain.work / "profile.json")
    assert profile.schedule.to_spec().describe() == "1f1b pp=2 M=4"
    assert profile.provenance["script"] == str(chain.checkout / "pretrain_gpt.py")
    assert profile.provenance["megatron_args"] == MEGATRON_ARGS
    for stage in profile.stages:
        assert stage.forward > 0 and 0 <= stage.backward_frozen <= stage.backward
    assert "stopping before any optimizer step" in chain.profile.output
    plan = load_plan(chain.work / "plan.json")
    assert any(r > 0 for chunks in plan.ratios for mbs in chunks for r in mbs)


def test_plan_trains_from_the_first_iteration(chain: Chain) -> None:
    for rank in (0, 1):
        assert (
            f"timelyfreeze[rank {rank}]: freeze runtime installed before iteration 0: plan "
        ) in chain.planned.output
    assert [it for it, _ in chain.planned.losses()] == [0, 1, 2, 3]
    for iteration in (2, 4):  # Megatron's checkpoints, each with the freezer's state beside it
        assert (chain.work / "ck-planned" / f"iter_{iteration:07d}" / "timelyfreeze").is_dir()


def test_resume_restores_the_freezer_and_continues_bit_for_bit(chain: Chain) -> None:
    planned, resumed = chain.work / "ck-planned", chain.work / "ck-resumed"
    for rank in (0, 1):
        restored = planned / "iter_0000002" / "timelyfreeze" / f"rank{rank:05d}.pt"
        assert f"timelyfreeze[rank {rank}]: freezer state restored from {restored}" in (
            chain.resumed.output
        )
        assert f"timelyfreeze[rank {rank}]: freeze runtime installed before iteration 2" in (
            chain.resumed.output
        )
    # The same losses as the uninterrupted run, exactly.
    assert chain.resumed.losses() == chain.planned.losses()[2:]
    for rank in (0, 1):
        # The freezer's state moves on between iterations 2 and 4 ...
        assert freezer_state(planned, 2, rank) != freezer_state(planned, 4, rank)
        # ... and the resumed run ends where the uninterrupted one did, weights included.
        assert freezer_state(resumed, 4, rank) == freezer_state(planned, 4, rank)
        want, got = model_weights(planned, 4, rank), model_weights(resumed, 4, rank)
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), rank


def test_zero_bubble_with_an_all_zero_plan_is_bitwise_the_stock_run(chain: Chain) -> None:
    """zb-h1 in place of Megatron-LM's 1F1B, the freeze runtime on top with nothing frozen:
    the real pretrain_gpt.py's losses and final weights equal the stock run's bit for bit."""
    for rank in (0, 1):
        assert (
            f"timelyfreeze[rank {rank}]: zb-h1 schedule installed in place of Megatron's 1F1B"
        ) in chain.zero_plan.output
    assert "freeze runtime installed before iteration 0" in chain.zero_plan.output
    assert "zb-h1 pp=2 M=4" in chain.zero_plan.output
    assert "timelyfreeze[" not in chain.stock.output  # no TimelyFreeze in the stock run
    losses = chain.stock.losses()
    assert [it for it, _ in losses] == [0, 1, 2, 3]
    assert chain.zero_plan.losses() == losses
    for rank in (0, 1):
        want = model_weights(chain.work / "ck-stock", 4, rank)
        got = model_weights(chain.work / "ck-zero", 4, rank)
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), rank
