"""`timelyfreeze compare`: time to the baseline's validation loss, baseline vs TimelyFreeze."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from megatron_tf.cli._app import app, console, user_errors
from megatron_tf.cli._data_opts import DataFlags
from megatron_tf.cli._options import given_flags, option_groups
from megatron_tf.cli.solve import AutoMinSavingOption
from megatron_tf.errors import ConfigError
from megatron_tf.freeze.config import DEFAULT_MIN_SAVING

if TYPE_CHECKING:
    from megatron_tf.compare import CompareConfig


def _ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} needs at least one value")
    return values


DEPENDENT = frozenset({"costs", "reprice_every", "auto_min_saving", "noise_from"})
"""Flags that mean something only with another (`CompareFlags.check_given`)."""


@dataclass(kw_only=True, slots=True)
class CompareFlags:
    """The `compare` flags, as parsed."""

    pp: Annotated[int, typer.Option(help="Pipeline-parallel size.")] = 4
    vpp: Annotated[int, typer.Option(help="Chunks per rank (>1: interleaved).")] = 1
    microbatches: Annotated[int, typer.Option(help="Microbatches per iteration.")] = 8
    num_layers: Annotated[int, typer.Option(help="Transformer layers (demo GPT family).")] = 8
    hidden_size: Annotated[int, typer.Option(help="Hidden size.")] = 128
    micro_batch_size: Annotated[int, typer.Option(help="Samples per microbatch.")] = 2
    vocab_size: Annotated[
        int,
        typer.Option(
            help="Vocabulary size of the model; with --data-path at least the tokenizer's "
            "(NullTokenizer: the largest id + 1)."
        ),
    ] = 256
    iters: Annotated[int, typer.Option(help="Baseline iterations.")] = 300
    warmup_iters: Annotated[
        int, typer.Option(help="LR and freeze warm-up; the noise probe runs at its end.")
    ] = 30
    seeds: Annotated[
        str, typer.Option(help="Seeds of weights and data order, one run set each.")
    ] = "1,2,3"
    corpus_seed: Annotated[
        int,
        typer.Option(
            help="Seed of the embedded corpus (without --data-path): the task, the same for all "
            "seeds."
        ),
    ] = 1234
    budgets: Annotated[
        str,
        typer.Option(
            help="Caps to compare, comma-separated; `auto` = from the noise scale; "
            "`auto+reprice` = auto, chosen again every --reprice-every iterations."
        ),
    ] = "auto"
    reprice_every: Annotated[
        int, typer.Option(help="Iterations between re-pricings of an auto+reprice run.")
    ] = 30
    noise_from: Annotated[
        str,
        typer.Option(help="Noise probe that prices freezing for auto: warmup or final."),
    ] = "warmup"
    auto_min_saving: AutoMinSavingOption = DEFAULT_MIN_SAVING
    time: Annotated[
        str,
        typer.Option(
            help="simulated (charge the simulator's iteration time; deep layouts on few cores) "
            "or measured (wall time; only where ranks do not share cores)."
        ),
    ] = "simulated"
    costs: Annotated[
        str, typer.Option(help="Synthetic F,B,W (per rank: ';'-separated) for simulated time.")
    ] = "1,1,1"
    profile: Annotated[
        Path | None, typer.Option(help="A profile of this layout instead of synthetic costs.")
    ] = None
    eval_interval: Annotated[
        int,
        typer.Option(
            help="Iterations between validation losses on the held-out set (the embedded "
            "corpus's, or the validation split of --data-path)."
        ),
    ] = 10
    eval_samples: Annotated[int, typer.Option(help="Held-out samples in the validation set.")] = 128
    equal_iterations: Annotated[
        bool, typer.Option(help="Also train each budget for the baseline's iterations.")
    ] = False
    out_dir: Annotated[Path, typer.Option(help="Runs, summary.json, report.md, plot.")] = Path(
        "runs/compare"
    )
    cache_dir: Annotated[
        str | None,
        typer.Option(help="Corpus and index cache (default ~/.cache/timelyfreeze)."),
    ] = None

    def check_given(self, given: list[str]) -> None:
        """Refuse a flag given where it means nothing (`given`: the flags on the command line),
        naming it and the flag it depends on."""
        if "--costs" in given and self.profile is not None:
            raise ConfigError(
                "give either --profile FILE or --costs F,B,W, not both: the profile's costs "
                "plan and charge every run"
            )
        if "--costs" in given and self.time == "measured":
            raise ConfigError(
                "--costs sets the costs of simulated time, and --time measured profiles this "
                "machine instead: drop --costs or use --time simulated"
            )
        budgets = {b.strip() for b in self.budgets.split(",")}
        if "--reprice-every" in given and "auto+reprice" not in budgets:
            raise ConfigError(
                "--reprice-every applies only to the auto+reprice budget: add auto+reprice to "
                "--budgets or drop --reprice-every"
            )
        auto_only = [f for f in given if f in ("--auto-min-saving", "--noise-from")]
        if auto_only and not budgets & {"auto", "auto+reprice"}:
            names = ", ".join(auto_only)
            raise ConfigError(
                f"{names} {'applies' if len(auto_only) == 1 else 'apply'} only to an auto "
                f"budget: add auto to --budgets or drop {names}"
            )

    def config(self, dataset: DataFlags | None = None) -> CompareConfig:
        """The comparison these flags describe, on `dataset` when it names one (else the
        embedded corpus); ConfigError names a bad flag."""
        from megatron_tf.compare import CompareConfig, compare_model
        from megatron_tf.formats.layout import ParallelConfig

        model = replace(
            compare_model(),
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            micro_batch_size=self.micro_batch_size,
            ffn_hidden_size=4 * self.hidden_size,
            vocab_size=self.vocab_size,
        )
        data = None
        if dataset is not None and dataset.given:
            data = dataset.config(cache_dir=self.cache_dir)
        return CompareConfig(
            out_dir=self.out_dir,
            model=model,
            parallel=ParallelConfig(pp=self.pp, vpp=self.vpp, microbatches=self.microbatches),
            iters=self.iters,
            warmup_iters=self.warmup_iters,
            seeds=_ints("--seeds", self.seeds),
            corpus_seed=self.corpus_seed,
            budgets=tuple(b.strip() for b in self.budgets.split(",") if b.strip()),
            noise_from=self.noise_from,
            auto_min_saving=self.auto_min_saving,
            reprice_every=self.reprice_every,
            time=self.time,
            costs=self.costs,
            profile=self.profile,
            eval_interval=self.eval_interval,
            eval_samples=self.eval_samples,
            equal_iterations=self.equal_iterations,
            cache_dir=self.cache_dir,
            data=data,
        )


@app.command("compare")
@user_errors
@option_groups
def compare(ctx: typer.Context, *, flags: CompareFlags, dataset: DataFlags) -> None:
    """Train a baseline and TimelyFreeze on the same model, data, seeds and LR schedule; report
    when each reaches the baseline's final validation loss, and the loss at equal time.

    Example: [bold]timelyfreeze compare --pp 4 --microbatches 8 --budgets auto,0.1[/]

    Validation loss on a fixed held-out set (the training-batch loss sees other batches in
    every run): the embedded corpus's, or with --data-path its validation split (--split
    98,2,0) or --valid-data-path; the report names the data. Simulated time charges each
    iteration the simulator's predicted time for the plan in force; the report says which time
    it shows. A run folder that already holds the same finished job is reused.
    """
    from megatron_tf.cli.demo import quiet_imports

    flags.check_given(given_flags(ctx, DEPENDENT))
    _check_outputs(flags)
    quiet_imports()
    from megatron_tf.compare import format_table, run_compare

    result = run_compare(
        flags.config(dataset), lambda text: console.print(text, highlight=False, soft_wrap=True)
    )
    for line in format_table(result):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"report: {flags.out_dir / 'report.md'}", highlight=False, soft_wrap=True)


REPORT_FILES = ("summary.json", "report.md", "loss_vs_time.png")
"""What `compare` writes at the top of --out-dir besides one `seed<S>/` folder per seed."""


def _check_outputs(flags: CompareFlags) -> None:
    """The pre-flight `pretrain` and `demo` get, before any training: --out-dir is a writable
    folder (or can be made one), within the file system's name and path limits, and nothing
    compare writes there is the --profile it reads; the corpus cache is a folder."""
    from megatron_tf.outputs import check_cache_dir, check_not_an_input, check_output_dir

    check_output_dir(flags.out_dir, "--out-dir")
    if flags.profile is not None:
        for name in REPORT_FILES:
            check_not_an_input(flags.out_dir / name, "--out-dir", {"--profile": flags.profile})
        profile = flags.profile.resolve()
        for seed in _ints("--seeds", flags.seeds):
            runs = (flags.out_dir / f"seed{seed}").resolve()
            if profile.is_relative_to(runs):
                raise ConfigError(
                    f"--profile {str(flags.profile)!r} lies in {str(runs)!r}, where compare "
                    "writes the runs of that seed: it could be replaced; move it or choose "
                    "another --out-dir"
                )
    check_cache_dir(flags.cache_dir)
