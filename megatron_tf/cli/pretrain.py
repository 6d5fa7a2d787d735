"""`timelyfreeze pretrain`: GPT pretraining on Megatron-Core with the freeze runtime, via torchrun.

The command parses its flags into `PretrainOptions` (typed fields, one per flag), turns them into
the library's configs, checks everything it can in this process (`train.job.prepare_job`: plan vs
layout, checkpoint vs layout, data and tokenizer vs model) and starts the workers
(`train.launch.run_pretrain`: job.json, a `pretrain` job envelope named by `$TIMELYFREEZE_JOB`).
The `--megatron-lm` route runs a user's Megatron-LM script instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from megatron_tf.cli._app import app, console, err_console, user_errors
from megatron_tf.cli._data_opts import DataFlags
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
from megatron_tf.cli._model_opts import model_option
from megatron_tf.cli._options import option_groups
from megatron_tf.errors import ConfigError
from megatron_tf.freeze.config import DEFAULT_MAX_FREEZE_RATIO, DEFAULT_MIN_SAVING, FreezeConfig
from megatron_tf.outputs import check_cache_dir, check_output_dir

if TYPE_CHECKING:
    from megatron_tf.train.job import Job

_MODEL = "Model"
_LAYOUT = "Parallel layout"
_DATA = "Data"
_TRAIN = "Training"
_FREEZE = "Freezing"


@dataclass(kw_only=True, slots=True)
class PretrainOptions:
    """Every `pretrain` flag except the launch and Megatron-LM ones, as parsed."""

    # -- model
    num_layers: Annotated[int, model_option("num_layers", _MODEL)] = 4
    hidden_size: Annotated[int, model_option("hidden_size", _MODEL)] = 64
    num_attention_heads: Annotated[int, model_option("num_attention_heads", _MODEL)] = 4
    ffn_hidden_size: Annotated[int, model_option("ffn_hidden_size", _MODEL)] = 0
    seq_length: Annotated[int, model_option("seq_length", _MODEL)] = 64
    vocab_size: Annotated[
        int, model_option("vocab_size", _MODEL, help_text="Vocabulary size of the model.")
    ] = 512
    micro_batch_size: Annotated[int, model_option("micro_batch_size", _MODEL)] = 2
    recompute: Annotated[str, model_option("recompute", _MODEL)] = "none"
    seed: Annotated[
        int,
        model_option(
            "seed", _MODEL, help_text="Seed of weights and freezing (and data order by default)."
        ),
    ] = 1234
    # -- layout
    tp: Annotated[int, model_option("tp", _LAYOUT)] = 1
    pp: Annotated[int, typer.Option(help="Pipeline-parallel size.", rich_help_panel=_LAYOUT)] = 2
    vpp: Annotated[
        int, typer.Option(help="Chunks per rank (>1: interleaved).", rich_help_panel=_LAYOUT)
    ] = 1
    dp: Annotated[int, model_option("dp", _LAYOUT)] = 1
    microbatches: Annotated[
        int, typer.Option(help="Microbatches per iteration.", rich_help_panel=_LAYOUT)
    ] = 8
    group_size: Annotated[
        int,
        typer.Option(
            help="Microbatch group size per virtual stage (0 = pp).", rich_help_panel=_LAYOUT
        ),
    ] = 0
    overlap_p2p_comm: Annotated[
        bool,
        typer.Option(
            "--overlap-p2p-comm/--no-overlap-p2p-comm",
            help="Megatron's overlap_p2p_comm (interleaved; required at pp 2).",
            rich_help_panel=_LAYOUT,
        ),
    ] = False
    schedule: Annotated[
        str,
        typer.Option(
            help="Pipeline schedule: empty for Megatron's own (1f1b; interleaved with --vpp > 1) "
            "or zb-h1, the zero-bubble ZB-H1 schedule (backward split into input and weight "
            "gradients, weight gradients in the bubbles; gradients bitwise 1F1B's; --vpp 1, "
            "local layer spec).",
            rich_help_panel=_LAYOUT,
        ),
    ] = ""
    # -- data (the dataset flags are DataFlags, cli/_data_opts.py)
    mock_data: Annotated[
        bool, typer.Option(help="Megatron's mock GPT dataset.", rich_help_panel=_DATA)
    ] = False
    cache_dir: Annotated[
        str | None,
        typer.Option(
            help="Corpus and index cache (default ~/.cache/timelyfreeze).", rich_help_panel=_DATA
        ),
    ] = None
    data_seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the sample order, and of the validation split's (default: --seed).",
            rich_help_panel=_DATA,
        ),
    ] = None
    corpus_seed: Annotated[
        int,
        typer.Option(
            help="Seed of the embedded corpus (without --data-path): the task itself, apart "
            "from --seed.",
            rich_help_panel=_DATA,
        ),
    ] = 1234
    # -- training
    iters: Annotated[int, typer.Option(help="Training iterations.", rich_help_panel=_TRAIN)] = 100
    lr: Annotated[float, typer.Option(help="Peak learning rate.", rich_help_panel=_TRAIN)] = 3e-3
    min_lr: Annotated[float, typer.Option(help="Final learning rate.", rich_help_panel=_TRAIN)] = (
        3e-4
    )
    lr_warmup_iters: Annotated[
        int, typer.Option(help="LR warm-up iterations.", rich_help_panel=_TRAIN)
    ] = 10
    lr_decay_style: Annotated[
        str,
        typer.Option(help="constant, linear, cosine, inverse-square-root.", rich_help_panel=_TRAIN),
    ] = "cosine"
    weight_decay: Annotated[
        float, typer.Option(help="AdamW weight decay.", rich_help_panel=_TRAIN)
    ] = 0.01
    clip_grad: Annotated[
        float, typer.Option(help="Gradient-norm clip (0 = off).", rich_help_panel=_TRAIN)
    ] = 1.0
    log_interval: Annotated[
        int, typer.Option(help="Iterations per console line.", rich_help_panel=_TRAIN)
    ] = 10
    out_dir: Annotated[
        Path,
        typer.Option(help="job.json, metrics.jsonl, TensorBoard events.", rich_help_panel=_TRAIN),
    ] = Path("runs/pretrain")
    save: Annotated[
        str | None, typer.Option(help="Checkpoint folder to write.", rich_help_panel=_TRAIN)
    ] = None
    save_interval: Annotated[
        int,
        typer.Option(help="Iterations per checkpoint (0 = at the end).", rich_help_panel=_TRAIN),
    ] = 0
    load: Annotated[
        str | None,
        typer.Option(
            help="Resume from this checkpoint folder's latest, or from one iteration folder "
            "(DIR/iter_0000050). A folder holding no checkpoint starts from scratch; a damaged "
            "one is refused.",
            rich_help_panel=_TRAIN,
        ),
    ] = None
    overwrite_checkpoints: Annotated[
        bool,
        typer.Option(
            "--overwrite-checkpoints",
            help="Allow --save to write over checkpoints newer than this run's start (and move "
            "`latest` back). Without it such a run is refused.",
            rich_help_panel=_TRAIN,
        ),
    ] = False
    exit_after_iters: Annotated[
        int, typer.Option(help="Stop after N iterations of this run.", rich_help_panel=_TRAIN)
    ] = 0
    tensorboard: Annotated[
        bool,
        typer.Option(
            "--tensorboard/--no-tensorboard",
            help="Write TensorBoard events to <out-dir>/tensorboard.",
            rich_help_panel=_TRAIN,
        ),
    ] = True
    eval_interval: Annotated[
        int,
        typer.Option(
            help="Iterations between validation losses (0 = off), on the held-out set: the "
            "embedded corpus's, or with --data-path its validation split (--split 98,2,0) or "
            "--valid-data-path.",
            rich_help_panel=_TRAIN,
        ),
    ] = 0
    eval_samples: Annotated[
        int | None,
        typer.Option(
            help="With --eval-interval: held-out samples in the validation set [default: 128].",
            rich_help_panel=_TRAIN,
        ),
    ] = None
    eval_iters: Annotated[
        int,
        typer.Option(
            help="With --eval-interval, instead of --eval-samples: the validation set as this "
            "many iterations' microbatches (Megatron's --eval-iters; 0 = use --eval-samples).",
            rich_help_panel=_TRAIN,
        ),
    ] = 0
    noise_probe_at: Annotated[
        list[int] | None,
        typer.Option(
            help="Measure the gradient noise scale before this iteration (repeatable), on the "
            "held-out set (as --eval-interval); unfrozen runs only (--no-freeze).",
            rich_help_panel=_TRAIN,
        ),
    ] = None
    noise_probe_rounds: Annotated[
        int,
        typer.Option(
            help="Gradient pairs averaged per noise probe (--noise-probe-at, "
            "--max-freeze-ratio auto, --reprice-every).",
            rich_help_panel=_TRAIN,
        ),
    ] = 8
    # -- freezing
    plan: Annotated[
        str | None,
        typer.Option(
            help="plan.json from `solve`, or `auto` (profile and solve in-job after the warm-up).",
            rich_help_panel=_FREEZE,
        ),
    ] = None
    freeze: Annotated[
        bool,
        typer.Option(
            "--freeze/--no-freeze",
            help="--no-freeze ignores --plan: the baseline run (on resume it replaces the "
            "checkpoint's plan).",
            rich_help_panel=_FREEZE,
        ),
    ] = True
    max_freeze_ratio: Annotated[
        str,
        typer.Option(
            help="Budget for --plan auto and re-planning, in [0, 1], or `auto` (probe the "
            "gradient noise scale on the held-out set after the warm-up, as --noise-probe-at; "
            "least predicted time to a target loss). Not with --megatron-lm.",
            rich_help_panel=_FREEZE,
        ),
    ] = str(DEFAULT_MAX_FREEZE_RATIO)
    auto_min_saving: Annotated[
        float,
        typer.Option(
            help="With --max-freeze-ratio auto: freeze only when the best cap predicts at least "
            "this share less time than the baseline (0 trusts any predicted saving).",
            rich_help_panel=_FREEZE,
        ),
    ] = DEFAULT_MIN_SAVING
    freeze_warmup_iters: Annotated[
        int,
        typer.Option(help="With --plan: iterations before any freezing.", rich_help_panel=_FREEZE),
    ] = 0
    freeze_ramp_iters: Annotated[
        int,
        typer.Option(
            help="With --plan: iterations ramping ratios from 0 to the plan.",
            rich_help_panel=_FREEZE,
        ),
    ] = 0
    freeze_rescale: Annotated[
        str,
        typer.Option(
            help="Gradient of a partly frozen tensor: `mean` over the microbatches that trained "
            "it, or `none` (their sum, as it falls out).",
            rich_help_panel=_FREEZE,
        ),
    ] = "mean"
    profile_iters: Annotated[
        int,
        typer.Option(
            help="Measured iterations per in-job profile phase (--plan auto, --drift-threshold).",
            rich_help_panel=_FREEZE,
        ),
    ] = 10
    drift_threshold: Annotated[
        float,
        typer.Option(
            help="Re-profile when |measured/predicted - 1| exceeds this (0 = off).",
            rich_help_panel=_FREEZE,
        ),
    ] = 0.0
    drift_patience: Annotated[
        int,
        typer.Option(
            help="With --drift-threshold: drifting iterations before re-profiling.",
            rich_help_panel=_FREEZE,
        ),
    ] = 5
    reprice_every: Annotated[
        int,
        typer.Option(
            help="With --max-freeze-ratio auto: re-probe the noise scale and choose the cap "
            "again every this many iterations after the warm-up (0 = price once).",
            rich_help_panel=_FREEZE,
        ),
    ] = 0
    reprice_profile: Annotated[
        str | None,
        typer.Option(
            help="With --reprice-every: profile to re-solve with when re-pricing a --plan FILE "
            "run (default: the in-job profile of --plan auto).",
            rich_help_panel=_FREEZE,
        ),
    ] = None

    replan_lag: Annotated[
        int,
        typer.Option(
            help="Iterations to keep training under the current plan while rank 0 solves an "
            "in-job plan (--plan auto, drift, re-pricing); 0 = wait for the solve.",
            rich_help_panel=_FREEZE,
        ),
    ] = 0

    def freeze_config(self) -> FreezeConfig:
        """The runtime's settings, one object for both routes (validated by FreezeConfig)."""
        return FreezeConfig(
            seed=self.seed,
            rescale=self.freeze_rescale,  # type: ignore[arg-type]  # checked by FreezeConfig
            warmup_iters=self.freeze_warmup_iters,
            ramp_iters=self.freeze_ramp_iters,
        )

    def job(self, dataset: DataFlags) -> Job:
        """Build and check the Job for these flags and the `dataset` ones (TimelyFreezeError,
        exit 2, on bad input)."""
        from megatron_tf.formats.layout import ModelConfig, ParallelConfig
        from megatron_tf.train.job import prepare_job
        from megatron_tf.train.train_config import FreezeOptions, TrainConfig

        model = ModelConfig(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            ffn_hidden_size=self.ffn_hidden_size,
            seq_length=self.seq_length,
            vocab_size=self.vocab_size,
            micro_batch_size=self.micro_batch_size,
            recompute=self.recompute,
            seed=self.seed,
        )
        parallel = ParallelConfig(
            tp=self.tp,
            pp=self.pp,
            vpp=self.vpp,
            dp=self.dp,
            microbatches=self.microbatches,
            group_size=self.group_size,
            overlap_p2p_comm=self.overlap_p2p_comm,
            schedule=self.schedule,
        )
        data = dataset.config(
            mock=self.mock_data,
            cache_dir=self.cache_dir,
            corpus_seed=self.corpus_seed,
            data_seed=self.data_seed,
        )
        freeze = FreezeOptions(
            plan=self.plan,
            no_freeze=not self.freeze,
            max_freeze_ratio=self.max_freeze_ratio,
            auto_min_saving=self.auto_min_saving,
            runtime=self.freeze_config(),
            profile_iters=self.profile_iters,
            drift_threshold=self.drift_threshold,
            drift_patience=self.drift_patience,
            reprice_every=self.reprice_every,
            reprice_profile=self.reprice_profile,
            replan_lag=self.replan_lag,
        )
        train = TrainConfig(
            iters=self.iters,
            lr=self.lr,
            min_lr=self.min_lr,
            lr_warmup_iters=self.lr_warmup_iters,
            lr_decay_style=self.lr_decay_style,
            weight_decay=self.weight_decay,
            clip_grad=self.clip_grad,
            log_interval=self.log_interval,
            out_dir=str(self.out_dir),
            save=self.save,
            save_interval=self.save_interval,
            load=self.load,
            overwrite_checkpoints=self.overwrite_checkpoints,
            exit_after_iters=self.exit_after_iters,
            tensorboard=self.tensorboard,
            eval_interval=self.eval_interval,
            eval_samples=self._eval_samples(),
            eval_iters=self.eval_iters,
            noise_probe_at=tuple(self.noise_probe_at or ()),
            noise_probe_rounds=self.noise_probe_rounds,
            freeze=freeze,
        )
        return prepare_job(model, parallel, data, train)

    def _eval_samples(self) -> int:
        if self.eval_samples is not None and self.eval_iters:
            raise ConfigError("--eval-samples and --eval-iters exclude each other: give one")
        return 128 if self.eval_samples is None else self.eval_samples

    def builtin_only(self) -> list[str]:
        """The given flags whose work only the built-in trainer does (the noise probe and what
        reads it, validation on its held-out set), which a --megatron-lm run would ignore."""
        return [
            flag
            for flag, given in (
                ("--noise-probe-at", bool(self.noise_probe_at)),
                ("--max-freeze-ratio auto", self.max_freeze_ratio.strip() == "auto"),
                ("--reprice-every", bool(self.reprice_every)),
                ("--eval-interval", bool(self.eval_interval)),
            )
            if given
        ]


@app.command("pretrain")
@user_errors
@option_groups
def pretrain(
    *,
    opts: PretrainOptions,
    dataset: DataFlags,
    launch: LaunchFlags,
    megatron_lm: MegatronLMOption = None,
    script: ScriptOption = "pretrain_gpt.py",
    cpu_trial: CpuTrialOption = False,
    megatron_args: MegatronArgsArgument = None,
) -> None:
    """Pretrain a GPT on Megatron-Core, freezing weight gradients by a plan.

    Example: [bold]timelyfreeze pretrain --pp 2 --iters 200 --plan plan.json[/]

    Without --data-path it trains on the embedded synthetic corpus, whose entropy floor is
    printed at the start. Bad input (missing data, a plan or checkpoint for another layout, a
    tokenizer that does not match the data) exits 2 before any process starts.

    Your own Megatron-LM: [bold]timelyfreeze pretrain --megatron-lm PATH --plan plan.json
    --nproc-per-node 8 -- <Megatron-LM arguments>[/] runs PATH/pretrain_gpt.py with its
    arguments untouched; the model, layout, data and training flags above are then Megatron's.
    """
    options = launch.options()
    check_cpu_trial(cpu_trial, megatron_lm)
    if megatron_lm is not None or megatron_args:
        _pretrain_megatron_lm(opts, megatron_lm, script, cpu_trial, megatron_args, options)
        return
    check_output_dir(opts.out_dir, "--out-dir")
    check_cache_dir(opts.cache_dir)
    if opts.save is not None:
        check_output_dir(opts.save, "--save")
    from megatron_tf.train.launch import run_pretrain

    job = opts.job(dataset)
    _say_before_start(job, opts.load, options.dry_run)
    text = run_pretrain(job, options)
    if text is not None:
        echo_dry_run(text)


def _say_before_start(job: Job, load: str | None, dry_run: bool) -> None:
    """Where a resumed run starts, and what data trains (the embedded corpus's entropy floor)."""
    if load is not None:
        said = (
            f"resuming from {job.train.resume_from}"
            if job.train.resume_from
            else f"--load {load}: no checkpoint there yet, starting from scratch"
        )
        err_console.print(f"[dim]{escape(said)}[/]", highlight=False, soft_wrap=True)
    if job.prepared.corpus is not None and not dry_run:
        console.print(
            f"[dim]data: embedded corpus {job.prepared.prefix} "
            f"(entropy floor {job.prepared.corpus.loss_floor:.4f} nats/token)[/]",
            soft_wrap=True,
        )
    elif job.data.source == "path" and not dry_run:
        console.print(f"[dim]data: {escape(job.data.describe())}[/]", soft_wrap=True)


def _pretrain_megatron_lm(
    opts: PretrainOptions,
    megatron_lm: Path | None,
    script: str,
    cpu_trial: bool,
    megatron_args: list[str] | None,
    options: LaunchOptions,
) -> None:
    """The --megatron-lm route: check here, then run the user's script per rank."""
    if megatron_lm is None:
        raise ConfigError(
            "arguments after `--` are for a Megatron-LM script: add --megatron-lm PATH "
            f"(got {' '.join(megatron_args or [])!r})"
        )
    if refused := opts.builtin_only():
        raise ConfigError(
            f"{refused[0]} runs in the built-in trainer only; with --megatron-lm measure the "
            "noise scale in two steps: `timelyfreeze pretrain --data-path ... --split ... "
            "--no-freeze --noise-probe-at N` on the same data and layout, then `timelyfreeze "
            "solve profile.json --max-freeze-ratio auto --noise-scale B --batch-samples S -o "
            "plan.json` and --plan plan.json here (Megatron's own --eval-interval goes after `--`)"
        )
    plan = opts.plan if opts.freeze else None
    if plan == "auto":
        raise ConfigError(
            "--plan auto needs the built-in trainer; with --megatron-lm pass a plan.json from "
            "`timelyfreeze solve`"
        )
    freeze = opts.freeze_config()
    check_zero_bubble_args(opts.schedule, megatron_args)
    job = megatron_lm_job(
        megatron_lm=megatron_lm,
        script=script,
        plan=plan,
        freeze=freeze,
        cpu_trial=cpu_trial,
        schedule=opts.schedule,
    )
    launch_megatron_lm(job, options, megatron_args)
