"""The `--megatron-lm PATH [--script S] -- <Megatron-LM arguments>` route of `pretrain`/`profile`.

The commands call `megatron_lm_job(...)` to check the checkout, script and plan in this process
(so bad input exits 2 before any rank starts), then `launch_megatron_lm(...)`. Megatron-LM's
arguments are handed to the workers untouched; TimelyFreeze's own settings travel as
`TIMELYFREEZE_*` environment variables (printed by `--dry-run`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from megatron_tf.cli._launch import LaunchOptions, launch_or_print
from megatron_tf.errors import ConfigError, LaunchError
from megatron_tf.formats.job import job_env
from megatron_tf.formats.layout import RUNTIME_SCHEDULES
from megatron_tf.freeze.config import FreezeConfig
from megatron_tf.train.lm_script import ENTRY_MODULE, MegatronLMJob, Mode, resolve_checkout

__all__ = [
    "CpuTrialOption",
    "MegatronArgsArgument",
    "MegatronLMOption",
    "ScriptOption",
    "check_cpu_trial",
    "launch_megatron_lm",
    "megatron_lm_job",
]

_PANEL = "Megatron-LM"

MegatronLMOption = Annotated[
    Path | None,
    typer.Option(
        "--megatron-lm",
        metavar="PATH",
        help="Run your Megatron-LM checkout's entry script instead of the built-in trainer; "
        "its arguments follow `--`.",
        rich_help_panel=_PANEL,
    ),
]
ScriptOption = Annotated[
    str,
    typer.Option(
        "--script",
        help="Entry script inside the --megatron-lm checkout.",
        rich_help_panel=_PANEL,
    ),
]
CpuTrialOption = Annotated[
    bool,
    typer.Option(
        "--cpu-trial",
        help="Try the exact Megatron-LM command on a machine without a GPU (a tiny model, "
        "gloo): a CPU stand-in for torch.cuda on the ranks. Never active where CUDA is "
        "available.",
        rich_help_panel=_PANEL,
    ),
]
MegatronArgsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="-- MEGATRON_ARGS",
        help="With --megatron-lm: Megatron-LM's own arguments, after `--`, passed untouched.",
        show_default=False,
    ),
]


def megatron_lm_job(
    *,
    megatron_lm: str | os.PathLike[str],
    script: str = "pretrain_gpt.py",
    plan: str | os.PathLike[str] | None = None,
    freeze: FreezeConfig | None = None,
    mode: Mode = "pretrain",
    profile_out: str | os.PathLike[str] | None = None,
    profile: Mapping[str, Any] | None = None,
    cpu_trial: bool = False,
    schedule: str = "",
) -> MegatronLMJob:
    """Validate `--megatron-lm`, `--script` and `--plan` here, before any rank starts.

    Raises LaunchError (not a checkout, missing script), UnsupportedMegatronError (the
    megatron/core the ranks would import, the checkout's own when it has one, is of a version
    the hooks do not support) or FormatError (a plan that is not one); the plan's layout is
    checked by the workers against what Megatron-LM parses.
    """
    from megatron_tf.megatron.guard import core_before_launch

    entry = resolve_checkout(megatron_lm, script)
    core_before_launch(entry.parent)
    plan_path = None
    if plan is not None:
        from megatron_tf.formats.plan import load_plan

        load_plan(plan, flag="--plan")
        plan_path = Path(plan).resolve()
    out, measure = None, None
    if mode == "profile":
        if profile_out is None:
            raise LaunchError("profile --megatron-lm needs -o/--output for profile.json")
        out = Path(profile_out).resolve()
        if not out.parent.is_dir():
            raise LaunchError(f"--output {profile_out}: folder {out.parent} does not exist")
        from megatron_tf.profile.config import ProfileConfig

        measure = ProfileConfig(**(profile or {}))  # --iters etc. checked here, not on every rank
    return MegatronLMJob(
        script=entry,
        mode=mode,
        plan=plan_path,
        freeze=freeze or FreezeConfig(),
        profile_out=out,
        profile=measure,
        cpu_trial=cpu_trial,
        schedule=_runnable_schedule(schedule),
    )


def check_zero_bubble_args(schedule: str, megatron_args: Sequence[str] | None) -> None:
    """Before launch: Megatron-LM's defaults (TransformerEngine layers, gradient-accumulation
    fusion) are what a zero-bubble schedule cannot split exactly yet, so the arguments must
    turn both off."""
    if schedule in ("", "1f1b"):
        return
    args = list(megatron_args or [])
    local = any(
        a == "--transformer-impl=local"
        or (a == "--transformer-impl" and i + 1 < len(args) and args[i + 1] == "local")
        for i, a in enumerate(args)
    )
    if not local:
        raise ConfigError(
            f"--schedule {schedule} needs Megatron-LM's `--transformer-impl local`: the split "
            "of TransformerEngine layers (TE's delay_wgrad_compute/backward_dw) is not verified "
            "yet"
        )
    if "--no-gradient-accumulation-fusion" not in args:
        raise ConfigError(
            f"--schedule {schedule} needs Megatron-LM's `--no-gradient-accumulation-fusion`: "
            "the fused wgrad GEMM into main_grad is not verified with the split backward yet"
        )


def _runnable_schedule(schedule: str) -> str:
    """`--schedule` for a Megatron-LM script: "" (Megatron's own) or a kind TimelyFreeze runs
    in place of its 1F1B; checked here, before any rank starts."""
    if schedule in ("", "1f1b"):
        return ""
    if schedule not in RUNTIME_SCHEDULES:
        raise ConfigError(
            f"--schedule {schedule} cannot run a Megatron-LM script: use "
            f"{', '.join(RUNTIME_SCHEDULES)} (in place of its 1F1B), or leave it out for "
            "Megatron-LM's own schedule"
        )
    return schedule


def check_cpu_trial(cpu_trial: bool, megatron_lm: Path | None) -> None:
    """--cpu-trial belongs to the --megatron-lm route (the built-in trainer needs no stand-in)."""
    if cpu_trial and megatron_lm is None:
        raise LaunchError(
            "--cpu-trial runs a Megatron-LM script on CPU: add --megatron-lm PATH (the built-in "
            "trainer runs on CPU without it)"
        )


def launch_megatron_lm(
    job: MegatronLMJob, options: LaunchOptions, megatron_args: Sequence[str] | None
) -> None:
    """Start (or print, under --dry-run) the job on this node; exits like `launch_or_print`.

    The job file goes to a private temporary folder of this node (under Slurm every node runs
    this command itself), removed when the job ends; under --dry-run it is kept, since the
    printed command names it.
    """
    if options.nproc_per_node is None and options.launcher == "local":
        raise LaunchError(
            "--nproc-per-node is required with --megatron-lm: Megatron-LM's world size "
            "(tensor x pipeline x data parallel) is decided by its own arguments"
        )
    args = list(megatron_args or [])
    from megatron_tf.megatron.guard import check_argv

    if job.plan is not None or job.mode == "profile":  # freezing, or profiling frozen backwards
        check_argv(args)  # every refused flag in one line, before torchrun
    if options.dry_run:
        folder = tempfile.mkdtemp(prefix="timelyfreeze-job-")
        env = job_env(job.save(Path(folder) / "megatron_lm_job.json"))
        launch_or_print(options, ENTRY_MODULE, args, env=env)
        return
    with tempfile.TemporaryDirectory(prefix="timelyfreeze-job-") as folder:
        env = job_env(job.save(Path(folder) / "megatron_lm_job.json"))
        launch_or_print(options, ENTRY_MODULE, args, env=env)
