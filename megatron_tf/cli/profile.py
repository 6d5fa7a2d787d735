"""`timelyfreeze profile`: measure a profile.json on the real model, or write what-if costs.

Measuring launches `python -m megatron_tf.profile.worker` under torchrun (gloo on CPU, nccl on
GPU) with the shared launch flags; every flag is checked here first, so a bad one exits 2
before any process starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from megatron_tf.cli._app import app, console, user_errors
from megatron_tf.cli._launch import (
    CollectiveTimeoutOption,
    DryRunOption,
    LauncherOption,
    LaunchOptions,
    NnodesOption,
    NprocPerNodeOption,
    RdzvEndpointOption,
    launch_or_print,
)
from megatron_tf.cli._megatron_lm import (
    CpuTrialOption,
    MegatronArgsArgument,
    MegatronLMOption,
    ScriptOption,
    check_cpu_trial,
    launch_megatron_lm,
    megatron_lm_job,
)
from megatron_tf.cli._model_opts import model_kwargs, model_option
from megatron_tf.cli._schedule_opts import (
    CommOption,
    CostsOption,
    GroupSizeOption,
    MicrobatchesOption,
    OverlapOption,
    PpOption,
    ScheduleOption,
    VppOption,
    synthetic_from_flags,
)
from megatron_tf.errors import ConfigError
from megatron_tf.launch.torchrun import DEFAULT_COLLECTIVE_TIMEOUT
from megatron_tf.outputs import check_output_file

_MODEL = "Model (measuring)"
_MEASURE = "Measuring"


@app.command("profile")
@user_errors
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
    schedule: ScheduleOption = None,
    pp: PpOption = None,
    vpp: VppOption = 1,
    microbatches: MicrobatchesOption = None,
    group_size: GroupSizeOption = 0,
    overlap_p2p_comm: OverlapOption = False,
    costs: CostsOption = None,
    comm: CommOption = 0.0,
    # -- model and layout (measuring)
    num_layers: Annotated[int, model_option("num_layers", _MODEL)] = 4,
    hidden_size: Annotated[int, model_option("hidden_size", _MODEL)] = 64,
    num_attention_heads: Annotated[int, model_option("num_attention_heads", _MODEL)] = 4,
    ffn_hidden_size: Annotated[int, model_option("ffn_hidden_size", _MODEL)] = 0,
    seq_length: Annotated[int, model_option("seq_length", _MODEL)] = 64,
    vocab_size: Annotated[int, model_option("vocab_size", _MODEL)] = 512,
    micro_batch_size: Annotated[int, model_option("micro_batch_size", _MODEL)] = 2,
    recompute: Annotated[str, model_option("recompute", _MODEL)] = "none",
    seed: Annotated[int, model_option("seed", _MODEL)] = 1234,
    tp: Annotated[int, model_option("tp", _MODEL)] = 1,
    dp: Annotated[int, model_option("dp", _MODEL)] = 1,
    # -- measuring
    iters: Annotated[
        int,
        typer.Option(
            help="Measured iterations per phase (interleaved: rounds of one iteration each).",
            rich_help_panel=_MEASURE,
        ),
    ] = 10,
    warmup_iters: Annotated[
        int, typer.Option(help="Unmeasured iterations first.", rich_help_panel=_MEASURE)
    ] = 2,
    linearity: Annotated[
        bool,
        typer.Option(
            "--linearity",
            help="Also measure at freeze ratios 0.25, 0.5, 0.75 and fit backward time vs ratio.",
            rich_help_panel=_MEASURE,
        ),
    ] = False,
    phase_order: Annotated[
        str,
        typer.Option(
            help="interleaved: rounds of one iteration per phase in a rotating order (robust to "
            "a machine whose speed drifts); sequential: each phase's iterations back to back.",
            rich_help_panel=_MEASURE,
        ),
    ] = "interleaved",
    # -- launch
    nnodes: NnodesOption = 1,
    nproc_per_node: NprocPerNodeOption = None,
    rdzv_endpoint: RdzvEndpointOption = None,
    launcher: LauncherOption = "local",
    dry_run: DryRunOption = False,
    collective_timeout: CollectiveTimeoutOption = DEFAULT_COLLECTIVE_TIMEOUT,
    # -- a user's Megatron-LM script instead of the built-in model
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
    launch = LaunchOptions(
        nnodes=nnodes,
        nproc_per_node=nproc_per_node,
        rdzv_endpoint=rdzv_endpoint,
        launcher=launcher,
        dry_run=dry_run,
        collective_timeout=collective_timeout,
    )
    measure_flags = dict(
        iters=iters, warmup_iters=warmup_iters, linearity=linearity, phase_order=phase_order
    )
    if synthetic:
        _refuse_given(
            ctx, _MEASURING_ONLY, "they describe a measured run; --synthetic writes costs"
        )
    elif comm != 0.0:
        raise ConfigError("--comm describes what-if costs: it needs --synthetic")
    check_output_file(output, "-o/--output", suffixes=(".json",) if megatron_lm is None else ())
    check_cpu_trial(cpu_trial, megatron_lm)
    if megatron_lm is not None or megatron_args:
        if synthetic:
            raise ConfigError("--synthetic writes what-if costs: it takes no --megatron-lm")
        if megatron_lm is None:
            raise ConfigError(
                "arguments after `--` are for a Megatron-LM script: add --megatron-lm PATH "
                f"(got {' '.join(megatron_args or [])!r})"
            )
        job = megatron_lm_job(
            megatron_lm=megatron_lm,
            script=script,
            mode="profile",
            profile_out=output,
            profile=measure_flags,
            cpu_trial=cpu_trial,
        )
        launch_megatron_lm(job, launch, megatron_args)
        if not dry_run and job.profile_out is not None and job.profile_out.is_file():
            from megatron_tf.profile.launch import summary_line

            console.print(
                f"wrote {output}: {summary_line(job.profile_out)}", highlight=False, soft_wrap=True
            )
        return
    if not synthetic:
        measure_profile(
            output,
            schedule=schedule,
            model_flags=model_kwargs(locals()),
            layout_flags=dict(
                tp=tp,
                pp=2 if pp is None else pp,
                vpp=vpp,
                dp=dp,
                microbatches=4 if microbatches is None else microbatches,
                group_size=group_size,
                overlap_p2p_comm=overlap_p2p_comm,
            ),
            measure_flags=measure_flags,
            launch=launch,
            costs=costs,
        )
        return
    from megatron_tf.formats.profile import save_profile

    data = synthetic_from_flags(
        schedule=schedule,
        pp=pp,
        vpp=vpp,
        microbatches=microbatches,
        group_size=group_size,
        overlap_p2p_comm=overlap_p2p_comm,
        costs=costs,
        comm=comm,
    )
    save_profile(data, output)
    console.print(f"wrote {output}: synthetic profile of {data.spec.describe()}", highlight=False)


def measure_profile(
    output: Path,
    *,
    schedule: str | None,
    model_flags: dict,
    layout_flags: dict,
    measure_flags: dict,
    launch: LaunchOptions,
    costs: str | None = None,
) -> None:
    """The measuring path: check every flag, launch the workers, print a one-line summary."""
    import contextlib
    import tempfile

    from megatron_tf.cli._progress import phase_progress
    from megatron_tf.formats.layout import ModelConfig, ParallelConfig
    from megatron_tf.profile.config import JOB_ENV, ProfileConfig
    from megatron_tf.profile.launch import prepare_profile_job, summary_line

    if costs is not None:
        raise ConfigError("--costs describes what-if costs: it needs --synthetic")
    model = ModelConfig(**model_flags)
    parallel = ParallelConfig(**layout_flags)
    kind = "1f1b" if parallel.vpp == 1 else "interleaved"
    if schedule is not None and schedule != kind:
        raise ConfigError(
            f"--schedule {schedule} disagrees with --vpp {parallel.vpp} (which runs {kind}); "
            "when measuring, --vpp alone picks the schedule"
        )
    job = prepare_profile_job(model, parallel, ProfileConfig(**measure_flags), output)
    with tempfile.TemporaryDirectory(prefix="timelyfreeze-profile-") as folder:
        # Under --dry-run the printed command must still work later: keep the job file.
        job_path = (
            output.with_name(output.stem + ".job.json")
            if launch.dry_run
            else Path(folder) / "profile_job.json"
        )
        job.save(job_path)
        # The worker reports warm-up iterations, then whole rounds (one iteration per phase).
        phases = [("warm-up", job.profile.warmup_iters), ("rounds", len(job.profile.rounds()))]
        display = contextlib.nullcontext() if launch.dry_run else phase_progress(phases)
        with display:
            launch_or_print(
                launch,
                "megatron_tf.profile.worker",
                world_size=parallel.world_size,
                env={JOB_ENV: str(job_path.resolve())},
            )
    if not launch.dry_run:
        console.print(f"wrote {output}: {summary_line(output)}", highlight=False, soft_wrap=True)


_MEASURING_ONLY: tuple[str, ...] = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "ffn_hidden_size",
    "seq_length",
    "vocab_size",
    "micro_batch_size",
    "recompute",
    "seed",
    "tp",
    "dp",
    "iters",
    "warmup_iters",
    "linearity",
    "phase_order",
    "nnodes",
    "nproc_per_node",
    "rdzv_endpoint",
    "launcher",
    "dry_run",
    "collective_timeout",
)
"""Flags `profile --synthetic` would ignore: giving one is refused rather than ignored."""


def _refuse_given(ctx: typer.Context, names: tuple[str, ...], why: str) -> None:
    """Refuse flags given on the command line (or by environment) that would be ignored."""
    given = []
    for param in ctx.command.params:
        if param.name in names:
            source = ctx.get_parameter_source(param.name)
            if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
                given.append(max(param.opts, key=len))
    if given:
        raise ConfigError(f"{', '.join(given)} cannot be used with --synthetic: {why}")
