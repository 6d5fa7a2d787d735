"""The Megatron-LM route's pieces that need no torchrun: checkout checks, the job's environment,
the layout read from Megatron-LM's arguments, function replacement, freezer state files."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from megatron_tf.errors import ConfigError, FormatError, LaunchError, ScheduleMismatchError
from megatron_tf.formats.job import JobEnvelope, job_env
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.freeze.config import FreezeConfig
from megatron_tf.megatron import lm_freezer
from megatron_tf.megatron.lm_freezer import MegatronLMFreezer, layout_from_args
from megatron_tf.train.lm_script import MegatronLMJob, resolve_checkout


def test_checkout_with_pretrain_gpt(tmp_path: Path) -> None:
    (tmp_path / "pretrain_gpt.py").write_text("")
    assert resolve_checkout(tmp_path) == (tmp_path / "pretrain_gpt.py").resolve()


def test_fork_with_megatron_package_and_another_script(tmp_path: Path) -> None:
    (tmp_path / "megatron" / "training").mkdir(parents=True)
    (tmp_path / "megatron" / "training" / "__init__.py").write_text("")
    (tmp_path / "pretrain_mamba.py").write_text("")
    assert resolve_checkout(tmp_path, "pretrain_mamba.py").name == "pretrain_mamba.py"


@pytest.mark.parametrize(
    ("setup", "script", "message"),
    [
        (lambda p: None, "pretrain_gpt.py", r"is not a Megatron-LM checkout: it has neither"),
        (lambda p: (p / "pretrain_gpt.py").write_text(""), "nope.py", r"--script nope.py: no such"),
        (
            lambda p: [(p / n).write_text("") for n in ("pretrain_gpt.py", "run.sh")],
            "run.sh",
            r"--script run.sh: expected a Python script",
        ),
    ],
)
def test_bad_checkout_or_script(tmp_path: Path, setup, script: str, message: str) -> None:
    setup(tmp_path)
    with pytest.raises(LaunchError, match=message):
        resolve_checkout(tmp_path, script)


def test_missing_checkout_folder(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=r"--megatron-lm .*/gone: does not exist"):
        resolve_checkout(tmp_path / "gone")
    (tmp_path / "file").write_text("")
    with pytest.raises(LaunchError, match=r"is not a folder"):
        resolve_checkout(tmp_path / "file")


def test_job_travels_as_an_envelope_named_by_one_variable(tmp_path: Path) -> None:
    job = MegatronLMJob(
        script=tmp_path / "pretrain_gpt.py",
        plan=tmp_path / "plan.json",
        freeze=FreezeConfig(seed=3, warmup_iters=10),
    )
    env = job_env(job.save(tmp_path / "job.json"))
    assert env == {"TIMELYFREEZE_JOB": str(tmp_path / "job.json")}
    assert MegatronLMJob.load(env=env) == job


def test_entry_outside_timelyfreeze_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="TIMELYFREEZE_JOB is not set"):
        MegatronLMJob.load(env={})
    # Another worker's job (or another version's) is refused by name, not half-read.
    profile_job = JobEnvelope(kind="profile", job={}).save(tmp_path / "p.json")
    with pytest.raises(FormatError, match="is a 'profile' job, this worker runs 'megatron_lm'"):
        MegatronLMJob.load(env=job_env(profile_job))


def megatron_args(**overrides) -> SimpleNamespace:
    base = dict(
        pipeline_model_parallel_size=4,
        virtual_pipeline_model_parallel_size=None,
        micro_batch_size=2,
        data_parallel_size=8,
        global_batch_size=256,
        microbatch_group_size_per_vp_stage=None,
        overlap_p2p_comm=True,
    )
    return SimpleNamespace(**{**base, **overrides})


def test_layout_from_megatron_args() -> None:
    # M = 256 / (2 x 8) = 16; overlap_p2p_comm means nothing for 1F1B.
    assert layout_from_args(megatron_args()) == ScheduleSpec(kind="1f1b", pp=4, microbatches=16)
    interleaved = layout_from_args(
        megatron_args(virtual_pipeline_model_parallel_size=2, microbatch_group_size_per_vp_stage=8)
    )
    assert interleaved == ScheduleSpec(
        kind="interleaved", pp=4, vpp=2, microbatches=16, group_size=8, overlap_p2p_comm=True
    )
    assert layout_from_args(megatron_args(pipeline_model_parallel_size=1)) is None


def test_layout_from_megatron_args_needs_whole_microbatches() -> None:
    with pytest.raises(ConfigError, match="--global-batch-size 100 is not a multiple"):
        layout_from_args(megatron_args(global_batch_size=100))


def _plan_file(tmp_path: Path, microbatches: int) -> Path:
    from megatron_tf.formats.plan import Plan, Predicted, SolverInfo, save_plan
    from megatron_tf.formats.schedule import ScheduleRecord

    plan = Plan(
        schedule=ScheduleRecord(kind="1f1b", pp=4, vpp=1, microbatches=microbatches, group_size=4),
        profile_sha256="a" * 64,
        max_freeze_ratio=0.5,
        tolerance=0.0,
        min_trained_microbatches=1,
        comm_model="megatron",
        ratios=[[[0.0] * microbatches]] * 4,
        predicted=Predicted(baseline_makespan=1.0, makespan=1.0, speedup=1.0),
        solver=SolverInfo(name="GLOP", status="OPTIMAL", seconds=0.0),
    )
    save_plan(plan, tmp_path / "plan.json")
    return tmp_path / "plan.json"


def test_arguments_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    freezer = MegatronLMFreezer(plan=_plan_file(tmp_path, 16), freeze=None)
    freezer.on_arguments(megatron_args())
    assert "matches Megatron-LM's arguments" in capsys.readouterr().out
    with pytest.raises(
        ScheduleMismatchError,
        match=r"solved for 1f1b pp=4 M=16 but this job runs 1f1b pp=4 M=8 \(from Megatron-LM's",
    ):
        freezer.on_arguments(megatron_args(global_batch_size=128))
    with pytest.raises(ScheduleMismatchError, match="without pipeline parallelism"):
        freezer.on_arguments(megatron_args(pipeline_model_parallel_size=1))
    with pytest.raises(ConfigError, match="--rampup-batch-size"):
        freezer.on_arguments(megatron_args(rampup_batch_size=["16", "16", "1000"]))


def test_functions_are_replaced_wherever_imported_by_name(monkeypatch) -> None:
    home = types.ModuleType("tf_fake_home")
    user = types.ModuleType("tf_fake_user")

    def save(iteration: int) -> str:
        return f"saved {iteration}"

    home.save = save
    user.save = save  # as `from tf_fake_home import save` leaves it
    monkeypatch.setitem(sys.modules, "tf_fake_home", home)
    monkeypatch.setitem(sys.modules, "tf_fake_user", user)
    freezer = MegatronLMFreezer(plan=None, freeze=None)
    freezer._replace("tf_fake_home", "save", lambda f: lambda i: f(i).upper())
    assert (home.save(3), user.save(4)) == ("SAVED 3", "SAVED 4")
    freezer.uninstall()
    assert home.save is save and user.save is save


class _FakeRuntime:
    def __init__(self, state: dict) -> None:
        self.state = state
        self.loaded: list[dict] = []

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        self.loaded.append(state)


def test_freezer_state_beside_megatron_checkpoints(tmp_path: Path, monkeypatch) -> None:
    args = SimpleNamespace(save=str(tmp_path / "ckpt"), load=str(tmp_path / "ckpt"))
    monkeypatch.setattr(lm_freezer, "_megatron_args", lambda: args)
    monkeypatch.setenv("RANK", "3")
    plan = _plan_file(tmp_path, 16)

    writer = MegatronLMFreezer(plan=plan, freeze=None)
    writer.runtime = _FakeRuntime({"next_iteration": 20, "counts": [[1, 2]]})
    writer.after_save(20)
    saved = tmp_path / "ckpt" / "iter_0000020" / "timelyfreeze" / "rank00003.pt"
    assert saved.is_file()

    # A resumed job: the state waits for the runtime, which starts at the first schedule call.
    reader = MegatronLMFreezer(plan=plan, freeze=None)
    reader.after_load(20)
    assert reader.pending_state == {"next_iteration": 20, "counts": [[1, 2]]}
    assert reader.next_iteration == 20

    # A checkpoint written without TimelyFreeze: start fresh, say so.
    fresh = MegatronLMFreezer(plan=plan, freeze=None)
    fresh.after_load(30)
    assert fresh.pending_state is None and fresh.next_iteration == 30


# --- the CLI: bad input exits 2 with one line, before any rank starts ---------------------------


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from megatron_tf.cli import app

    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("command", ["pretrain"])
def test_cli_bad_megatron_lm_input_exits_2(command: str, tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "Megatron-LM").mkdir()
    (tmp_path / "Megatron-LM" / "pretrain_gpt.py").write_text("")
    checkout = str(tmp_path / "Megatron-LM")
    cases = [
        (["--megatron-lm", str(tmp_path / "ckpt")], "is not a Megatron-LM checkout"),
        (["--megatron-lm", checkout, "--script", "pretrain_t5.py"], "--script pretrain_t5.py"),
        (["--megatron-lm", checkout, "--plan", str(tmp_path / "no.json")], "cannot read plan"),
        (["--megatron-lm", checkout], "--nproc-per-node is required with --megatron-lm"),
        (["--megatron-lm", checkout, "--launcher", "slurm"], "SLURM_JOB_NUM_NODES"),
        (["--", "--num-layers", "2", "--transformer-impl", "local"], "add --megatron-lm PATH"),
    ]
    for args, message in cases:
        result = _cli(
            [command, *args, "--dry-run", "--", "--num-layers", "2", "--transformer-impl", "local"]
        )
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.output)


def test_cli_dry_run_shows_the_megatron_lm_job(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "pretrain_gpt.py").write_text("")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "dgx[3,5]")
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "8")
    args = ["--num-layers", "2", "--data-path", "a b", "--transformer-impl", "local"]
    result = _cli(
        ["pretrain", "--megatron-lm", str(tmp_path), "--launcher", "slurm", "--dry-run", "--"]
        + args
    )
    assert result.exit_code == 0, result.output
    *exports, command = result.output.strip().splitlines()
    (job_file,) = [e.split("=", 1)[1] for e in exports if e.startswith("export TIMELYFREEZE_JOB=")]
    assert MegatronLMJob.load(job_file).script == tmp_path / "pretrain_gpt.py"
    assert command.endswith(
        "--nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=dgx3:29477 "
        "--rdzv-id=timelyfreeze-77 --node-rank=1 --max-restarts=0 "
        "--module megatron_tf.train.lm_script --num-layers 2 --data-path 'a b' "
        "--transformer-impl local"
    )


def test_checkpoint_wrappers_pass_through_and_record(tmp_path: Path, monkeypatch) -> None:
    """Megatron-LM's save/load keep their signatures and results; the state rides along."""
    args = SimpleNamespace(save=str(tmp_path), load=str(tmp_path))
    monkeypatch.setattr(lm_freezer, "_megatron_args", lambda: args)
    monkeypatch.setenv("RANK", "0")
    freezer = MegatronLMFreezer(plan=_plan_file(tmp_path, 16), freeze=None)
    freezer.runtime = _FakeRuntime({"next_iteration": 7})
    calls = []

    def save_checkpoint(iteration, model, optimizer, scheduler, flops, **kwargs):
        calls.append(("save", iteration, kwargs))
        (tmp_path / f"iter_{iteration:07d}").mkdir(exist_ok=True)

    def load_checkpoint(model, optimizer, scheduler, **kwargs):
        calls.append(("load", kwargs))
        return 7, 123.0  # (iteration, num_floating_point_operations_so_far)

    assert (
        freezer._wrap_save(save_checkpoint)(7, "m", "o", "s", 1.0, non_persistent_ckpt=False)
        is None
    )
    assert (tmp_path / "iter_0000007" / "timelyfreeze" / "rank00000.pt").is_file()
    freezer.runtime = _FakeRuntime({})
    assert freezer._wrap_load(load_checkpoint)("m", "o", "s", strict=True) == (7, 123.0)
    assert freezer.runtime.loaded == [{"next_iteration": 7}]  # handed to the running runtime
    assert calls == [("save", 7, {"non_persistent_ckpt": False}), ("load", {"strict": True})]


# --- the megatron/core the ranks will import: its version is checked before launch ---------------


def checkout_with_core(root: Path, package_info: Path, minor: int) -> Path:
    """A Megatron-LM checkout whose megatron/core reports 0.<minor>.x: a copy of a real
    package_info.py with MINOR edited, so the version check reads a real file."""
    core = root / "megatron" / "core"
    core.mkdir(parents=True)
    (core / "__init__.py").write_text("")
    text = package_info.read_text()
    assert "MINOR = " in text
    lines = [f"MINOR = {minor}" if ln.startswith("MINOR = ") else ln for ln in text.splitlines()]
    (core / "package_info.py").write_text("\n".join(lines) + "\n")
    (root / "pretrain_gpt.py").write_text("raise SystemExit('must not run')\n")
    return root


def test_unsupported_checkout_is_refused_before_torchrun(tmp_path: Path, megatron_lm_snapshot):
    """A checkout whose megatron/core says 0.21.0, shadowing the supported installed 0.19.2:
    pretrain, profile and --dry-run refuse it in one line, exit 2, in well under 10 seconds,
    and no torchrun starts (the CLI is timed as a user runs it, in a fresh process)."""
    import subprocess
    import sys
    import time

    main = megatron_lm_snapshot("main")
    checkout = checkout_with_core(
        tmp_path / "Megatron-LM", main / "megatron" / "core" / "package_info.py", 21
    )
    core = checkout / "megatron" / "core"
    runs = {
        "pretrain": ["pretrain", "--nproc-per-node", "2"],
        "profile": ["profile", "--nproc-per-node", "2", "-o", str(tmp_path / "p.json")],
        "dry-run": ["pretrain", "--nproc-per-node", "2", "--dry-run"],
    }
    for name, args in runs.items():
        cli = [sys.executable, "-m", "megatron_tf", *args, "--megatron-lm", str(checkout)]
        start = time.monotonic()
        proc = subprocess.run(
            [*cli, "--", "--num-layers", "2", "--transformer-impl", "local"],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.monotonic() - start
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        assert seconds < 10, (name, seconds)
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        assert len(lines) == 1, (name, lines)
        assert lines[0] == (
            f"error: megatron-core 0.21.0 at {core} is not supported: TimelyFreeze's schedule "
            "hooks support 0.19.x (Megatron-LM core_r0.19.0), 0.20.x (Megatron-LM main); check "
            f"out a supported branch or tag of Megatron-LM there, e.g. `git -C {checkout} "
            "checkout core_r0.19.0`"
        ), name
        assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("name", ["core_r0.19.0", "main"])
def test_supported_checkouts_pass_the_check(name: str, megatron_lm_snapshot) -> None:
    checkout = megatron_lm_snapshot(name)
    result = _cli(
        ["pretrain", "--megatron-lm", str(checkout), "--nproc-per-node", "2", "--cpu-trial"]
        + ["--dry-run", "--", "--num-layers", "2", "--transformer-impl", "local"]
    )
    assert result.exit_code == 0, result.output
    (job_file,) = [
        line.split("=", 1)[1]
        for line in result.output.splitlines()
        if line.startswith("export TIMELYFREEZE_JOB=")
    ]
    assert MegatronLMJob.load(job_file).cpu_trial


def test_cpu_trial_belongs_to_the_megatron_lm_route(tmp_path: Path) -> None:
    for command in (["pretrain"], ["profile", "-o", str(tmp_path / "p.json")]):
        result = _cli([*command, "--cpu-trial", "--dry-run"])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (
            "error: --cpu-trial runs a Megatron-LM script on CPU: add --megatron-lm PATH (the "
            "built-in trainer runs on CPU without it)"
        )


def test_refused_megatron_flags_stop_before_torchrun(megatron_lm_snapshot, tmp_path) -> None:
    """A GPU recipe on Megatron-LM's default TransformerEngine spec: the real CLI, in a fresh
    process, names every refused flag in one line and exits 2 before torchrun starts."""
    import subprocess
    import time

    from megatron_tf.megatron import guard

    recipe = ["--num-layers", "2", "--bf16", "--overlap-param-gather", "--tp-comm-overlap"]
    recipe += ["--sequence-parallel"]
    # Profiling measures frozen backwards, so it is checked like a run with a plan; a run
    # without a plan freezes nothing and is not scanned.
    cli = [sys.executable, "-m", "megatron_tf", "profile", "--nproc-per-node", "2"]
    cli += ["-o", str(tmp_path / "profile.json")]
    cli += ["--megatron-lm", str(megatron_lm_snapshot("main")), "--dry-run", "--", *recipe]
    start = time.monotonic()
    proc = subprocess.run(cli, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert seconds < 10, seconds
    (line,) = (proc.stdout + proc.stderr).strip().splitlines()
    assert "torch.distributed.run" not in line
    flags = [r.flag for r in guard.refused_flags(recipe)]
    assert flags == ["--transformer-impl transformer_engine", "--tp-comm-overlap"] + [
        "--overlap-param-gather"
    ]
    assert line.startswith("error: Megatron-LM arguments not supported with freezing: ")
    assert all(f"{flag} (" in line for flag in flags), line
