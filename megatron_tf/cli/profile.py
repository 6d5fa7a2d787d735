"""`timelyfreeze profile`: measure a profile.json on the real model, or write what-if costs.

Measuring launches the profiler's workers under torchrun (gloo on CPU, nccl on GPU) through
`profile.measure.measure_profile`; every flag is checked here first, so a bad one exits 2
before any process starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from megatron_tf.cli._app import app, console, user_errors
from megatron_tf.cli._launch import LaunchFlags, LaunchOptions, echo_dry_run
from megatron_tf.cli._megatron_lm import (
    CpuTrialOption,
    MegatronArgsArgument,
    MegatronLMOption,
    ScriptOption,
    check_cpu_trial,
    check_zero_bubble_args,
    launch_megatron_lm,
    megatron_lm_job,
)
from megatron_tf.cli._model_opts import model_kwargs, model_option
from megatron_tf.cli._options import given_flags, option_groups
from megatron_tf.cli._schedule_opts import ScheduleFlags
from megatron_tf.errors import ConfigError
from megatron_tf.outputs import check_output_file

if TYPE_CHECKING:
    from megatron_tf.profile.config import ProfileConfig

_MODEL = "Model (measuring)"
_MEASURE = "Measuring"


@dataclass(kw_only=True, slots=True)
class MeasureFlags:
    """The flags of a measured run: model, layout and measuring (`--synthetic` refuses them)."""

    # -- model and layout (measuring)
    num_layers: Annotated[int, model_option("num_layers", _MODEL)] = 4
    hidden_size: Annotated[int, model_option("hidden_size", _MODEL)] = 64
    num_attention_heads: Annotated[int, model_option("num_attention_heads", _MODEL)] = 4
    ffn_hidden_size: Annotated[int, model_option("ffn_hidden_size", _MODEL)] = 0
    seq_length: Annotated[int, model_option("seq_length", _MODEL)] = 64
    vocab_size: Annotated[int, model_option("vocab_size", _MODEL)] = 512
    micro_batch_size: Annotated[int, model_option("micro_batch_size", _MODEL)] = 2
    recompute: Annotated[str, model_option("recompute", _MODEL)] = "none"
    seed: Annotated[int, model_option("seed", _MODEL)] = 1234
    tp: Annotated[int, model_option("tp", _MODEL)] = 1
    dp: Annotated[int, model_option("dp", _MODEL)] = 1
    # -- measuring
    iters: Annotated[
        int,
        typer.Option(
            help="Measured iterations per phase (interleaved: rounds of one iteration each).",
            rich_help_panel=_MEASURE,
        ),
    ] = 10
    warmup_iters: Annotated[
        int, typer.Option(help="Unmeasured iterations first.", rich_help_panel=_MEASURE)
    ] = 2
    linearity: Annotated[
        bool,
        typer.Option(
            "--linearity",
            help="Also measure at freeze ratios 0.25, 0.5, 0.75 and fit backward time vs ratio.",
            rich_help_panel=_MEASURE,
        ),
    ] = False
    phase_order: Annotated[
        str,
        typer.Option(
            help="interleaved: rounds of one iteration per phase in a rotating order (robust to "
            "a machine whose speed drifts); sequential: each phase's iterations back to back.",
            rich_help_panel=_MEASURE,
        ),
    ] = "interleaved"

    def measuring(self) -> dict[str, object]:
        """The ProfileConfig arguments among the flags."""
        return {
            "iters": self.iters,
            "warmup_iters": self.warmup_iters,
            "linearity": self.linearity,
            "phase_order": self.phase_order,
        }

    def config(self) -> ProfileConfig:
        from megatron_tf.profile.config import ProfileConfig

        return ProfileConfig(**self.measuring())  # type: ignore[arg-type]


@app.command("profile")
@user_errors
@option_groups
def profile(
    ctx: typer.Context,
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="Where to write profile.json (atomically)."),
    ],
    synthetic: Annotated[
        bool,
        typer.Option(
            "--synthetic",
            help="Write what-if costs from --costs instead of measuring the model.",
        ),
    ] = False,
    *,
    what_if: ScheduleFlags,
    measured: MeasureFlags,
    launch: LaunchFlags,
    megatron_lm: MegatronLMOption = None,
    script: ScriptOption = "pretrain_gpt.py",
    cpu_trial: CpuTrialOption = False,
    megatron_args: MegatronArgsArgument = None,
) -> None:
    """Write a [bold]timelyfreeze.profile/1[/] file: per-stage forward/backward costs.

    Measure the real model (torchrun; gloo on CPU, nccl on GPU): [bold]timelyfreeze profile
    --pp 2 --microbatches 4 -o profile.json[/]. Warm-up, then --iters rounds, each one
    iteration with nothing frozen and one with every freezable tensor frozen, in an order that
    rotates from round to round, so a drifting machine biases neither (no optimizer step:
    weights are never changed); medians over iterations and microbatches, outliers flagged.

    What-if planning, no GPU: [bold]timelyfreeze profile --synthetic --schedule interleaved
    --pp 4 --vpp 2 --microbatches 8 --costs 1,1,1 -o profile.json[/]. F, B, W are one rank's
    forward, input-gradient and weight-gradient seconds; each chunk gets 1/vpp of them,
    backward = B+W and backward_frozen = B (0 on the first virtual stage).

    Your own Megatron-LM job: [bold]timelyfreeze profile --megatron-lm PATH --nproc-per-node 8
    -o profile.json -- <Megatron-LM arguments>[/] measures inside PATH/pretrain_gpt.py at its
    first training step (same phases), then stops it before any optimizer step.
    """
    if synthetic:
        refused = [
            f.name for f in dataclasses.fields(MeasureFlags) + dataclasses.fields(LaunchFlags)
        ]
        given = given_flags(ctx, refused)
        if given:
            raise ConfigError(
                f"{', '.join(given)} cannot be used with --synthetic: they describe a measured "
                "run; --synthetic writes costs"
            )
    elif what_if.comm != 0.0:
        raise ConfigError("--comm describes what-if costs: it needs --synthetic")
    check_output_file(output, "-o/--output", suffixes=(".json",) if megatron_lm is None else ())
    check_cpu_trial(cpu_trial, megatron_lm)
    if megatron_lm is not None or megatron_args:
        if synthetic:
            raise ConfigError("--synthetic writes what-if costs: it takes no --megatron-lm")
        _profile_megatron_lm(
            output,
            measured,
            launch.options(),
            megatron_lm,
            script,
            cpu_trial,
            megatron_args,
            schedule=what_if.schedule or "",
        )
    elif synthetic:
        from megatron_tf.formats.profile import save_profile

        data = what_if.synthetic()
        save_profile(data, output)
        console.print(
            f"wrote {output}: synthetic profile of {data.spec.describe()}", highlight=False
        )
    else:
        _measure(output, what_if, measured, launch.options())


def _measure(
    output: Path, what_if: ScheduleFlags, measured: MeasureFlags, launch: LaunchOptions
) -> None:
    """The measuring path: check the flags, run `measure_profile`, print a one-line summary."""
    from megatron_tf.cli._progress import phase_progress
    from megatron_tf.formats.layout import ModelConfig, ParallelConfig
    from megatron_tf.profile.measure import measure_profile, prepare_profile_job, summary_line

    if what_if.costs is not None:
        raise ConfigError("--costs describes what-if costs: it needs --synthetic")
    model = ModelConfig(**model_kwargs(dataclasses.asdict(measured)))
    parallel = ParallelConfig(
        tp=measured.tp,
        pp=2 if what_if.pp is None else what_if.pp,
        vpp=what_if.vpp,
        dp=measured.dp,
        microbatches=4 if what_if.microbatches is None else what_if.microbatches,
        group_size=what_if.group_size,
        overlap_p2p_comm=what_if.overlap_p2p_comm,
        # A schedule TimelyFreeze runs itself (zb-h1) is measured running; Megatron's own two
        # follow from --vpp.
        schedule="" if what_if.schedule in (None, "1f1b", "interleaved") else what_if.schedule,
    )
    kind = parallel.schedule_spec().kind
    if what_if.schedule is not None and what_if.schedule != kind:
        raise ConfigError(
            f"--schedule {what_if.schedule} disagrees with --vpp {parallel.vpp} (which runs "
            f"{kind}); when measuring, --vpp picks Megatron's schedule"
        )
    job = prepare_profile_job(model, parallel, measured.config(), output)
    text = measure_profile(job, launch, watch=phase_progress)
    if text is not None:
        echo_dry_run(text)
    else:
        console.print(f"wrote {output}: {summary_line(output)}", highlight=False, soft_wrap=True)


def _profile_megatron_lm(
    output: Path,
    measured: MeasureFlags,
    launch: LaunchOptions,
    megatron_lm: Path | None,
    script: str,
    cpu_trial: bool,
    megatron_args: list[str] | None,
    schedule: str = "",
) -> None:
    """The --megatron-lm route: measure inside the user's script at its first training step
    (with `schedule` zb-h1: under the zero-bubble schedule, W timed on its own)."""
    if megatron_lm is None:
        raise ConfigError(
            "arguments after `--` are for a Megatron-LM script: add --megatron-lm PATH "
            f"(got {' '.join(megatron_args or [])!r})"
        )
    check_zero_bubble_args(schedule, megatron_args)
    job = megatron_lm_job(
        megatron_lm=megatron_lm,
        script=script,
        mode="profile",
        profile_out=output,
        profile=measured.measuring(),
        cpu_trial=cpu_trial,
        schedule=schedule,
    )
    launch_megatron_lm(job, launch, megatron_args)
    if not launch.dry_run and job.profile_out is not None and job.profile_out.is_file():
        from megatron_tf.profile.measure import summary_line

        console.print(
            f"wrote {output}: {summary_line(job.profile_out)}", highlight=False, soft_wrap=True
        )
