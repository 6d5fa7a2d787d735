"""Launch flags shared by the commands that start distributed jobs (`profile`, `pretrain`).

A command declares the five options with the aliases below (they show up in their own "Launch"
help panel), packs them into `LaunchOptions`, and ends with `launch_or_print(...)`:

    def profile(..., nnodes: NnodesOption = 1, nproc_per_node: NprocPerNodeOption = None,
                rdzv_endpoint: RdzvEndpointOption = None, launcher: LauncherOption = "local",
                dry_run: DryRunOption = False) -> None:
        options = LaunchOptions(nnodes=nnodes, nproc_per_node=nproc_per_node,
                                rdzv_endpoint=rdzv_endpoint, launcher=launcher, dry_run=dry_run)
        launch_or_print(options, "megatron_tf.profile.worker", worker_args,
                        world_size=tp * pp * dp, env={"TIMELYFREEZE_...": ...})

This module imports neither torch nor megatron, so `--help` and `--dry-run` stay fast.
"""

from __future__ import annotations

import math
import os
import signal
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import typer

from megatron_tf.cli._app import err_console
from megatron_tf.errors import LaunchError
from megatron_tf.launch.slurm import read_slurm_env, slurm_launch
from megatron_tf.launch.torchrun import (
    COLLECTIVE_TIMEOUT_ENV,
    DEFAULT_COLLECTIVE_TIMEOUT,
    TorchrunLaunch,
    format_dry_run,
    run_job,
)
from megatron_tf.process.worker_errors import ERROR_DIR_ENV, WorkerUserError, first_worker_error

__all__ = [
    "CollectiveTimeoutOption",
    "DryRunOption",
    "LaunchOptions",
    "LauncherOption",
    "NnodesOption",
    "NprocPerNodeOption",
    "RdzvEndpointOption",
    "launch_or_print",
]

Launcher = Literal["local", "slurm"]

TIMEOUT_ENV = "TIMELYFREEZE_TIMEOUT"
"""Seconds after which a launched job is killed (exit code 1); unset: no limit."""

_PANEL = "Launch"

NnodesOption = Annotated[
    int,
    typer.Option(
        "--nnodes",
        min=1,
        help="Nodes taking part; each node runs this same command. Above 1 it needs "
        "--rdzv-endpoint (or --launcher slurm, which fills in both).",
        rich_help_panel=_PANEL,
    ),
]
NprocPerNodeOption = Annotated[
    int | None,
    typer.Option(
        "--nproc-per-node",
        min=1,
        help="Worker processes per node (one per GPU). Default: the job's world size / "
        "nodes; with --megatron-lm, SLURM_GPUS_ON_NODE under --launcher slurm, else required.",
        rich_help_panel=_PANEL,
    ),
]
RdzvEndpointOption = Annotated[
    str | None,
    typer.Option(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="c10d rendezvous every node can reach (usually the first node). Without it a "
        "one-node job uses torchrun --standalone.",
        rich_help_panel=_PANEL,
    ),
]
LauncherOption = Annotated[
    Launcher,
    typer.Option(
        "--launcher",
        help="local: this machine, or the nodes you name with --nnodes/--rdzv-endpoint. slurm: "
        "read nodes, node rank and rendezvous host from the Slurm job (one srun task per node).",
        rich_help_panel=_PANEL,
    ),
]
DryRunOption = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the environment and the exact torchrun command, then exit without running.",
        rich_help_panel=_PANEL,
    ),
]

CollectiveTimeoutOption = Annotated[
    float,
    typer.Option(
        "--collective-timeout",
        metavar="SECONDS",
        help="A rank that waits this long in a collective or pipeline send/receive fails the "
        "job (exit 1, naming a rank found stopped); bounds the hang a stuck rank causes.",
        rich_help_panel=_PANEL,
    ),
]


@dataclass(kw_only=True, slots=True)
class LaunchOptions:
    """The launch flags as given on the command line."""

    nnodes: int = 1
    """--nnodes; under Slurm it must be left at 1 or equal the job's node count."""
    nproc_per_node: int | None = None
    """--nproc-per-node; None: derived from the world size or from Slurm."""
    rdzv_endpoint: str | None = None
    """--rdzv-endpoint HOST:PORT; None: standalone (local) or the first node (Slurm)."""
    launcher: Launcher = "local"
    """--launcher: `local` or `slurm`."""
    dry_run: bool = False
    """--dry-run: print the command instead of running it."""
    collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT
    """--collective-timeout: seconds a rank may wait in a collective or P2P call."""

    def build(
        self,
        *,
        world_size: int | None = None,
        env: Mapping[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> TorchrunLaunch:
        """The torchrun launch these flags describe.

        Args:
            world_size: processes the job needs (tp * pp * dp) when the command knows it; it
                sets the default --nproc-per-node and is checked against nnodes * nproc.
            env: variables the workers need (TimelyFreeze settings travel this way).
            environ: where Slurm variables are read (default: this process's environment).
        """
        if self.launcher == "slurm":
            slurm = read_slurm_env(environ)
            if self.nnodes not in (1, slurm.nnodes):
                raise LaunchError(
                    f"--nnodes {self.nnodes} disagrees with the Slurm job's "
                    f"SLURM_JOB_NUM_NODES={slurm.nnodes}: leave --nnodes out under --launcher slurm"
                )
            nproc = self.nproc_per_node
            if nproc is None and world_size is not None:
                nproc = _per_node(world_size, slurm.nnodes)
            launch = slurm_launch(
                slurm, nproc_per_node=nproc, rdzv_endpoint=self.rdzv_endpoint, env=env
            )
        else:
            nproc = self.nproc_per_node
            if nproc is None:
                nproc = _per_node(world_size, self.nnodes) if world_size is not None else 1
            launch = TorchrunLaunch(
                nnodes=self.nnodes,
                nproc_per_node=nproc,
                rdzv_endpoint=self.rdzv_endpoint,
                env=dict(env or {}),
            )
        if not math.isfinite(self.collective_timeout) or self.collective_timeout <= 0:
            raise LaunchError(
                f"--collective-timeout must be a positive number of seconds, "
                f"got {self.collective_timeout}"
            )
        if self.collective_timeout != DEFAULT_COLLECTIVE_TIMEOUT:  # the workers' default
            launch.env.setdefault(COLLECTIVE_TIMEOUT_ENV, f"{self.collective_timeout:g}")
        if world_size is not None and launch.world_size != world_size:
            raise LaunchError(
                f"the job needs {world_size} processes but --nnodes {launch.nnodes} x "
                f"--nproc-per-node {launch.nproc_per_node} gives {launch.world_size}"
            )
        return launch


def launch_or_print(
    options: LaunchOptions,
    entry_module: str,
    args: Sequence[str] = (),
    *,
    world_size: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> None:
    """Run the job under torchrun, or print it under --dry-run; a failed job exits with code 1.

    `timeout` (seconds; default: $TIMELYFREEZE_TIMEOUT if set, else none) kills a job that runs
    longer, e.g. a hung rank in CI.

    Raises LaunchError (exit 2 through `@user_errors`) for flags that cannot describe a job, and
    WorkerUserError when a worker refused to run for a reason the user can fix (see
    `megatron_tf.process.worker_errors`).
    """
    launch = options.build(world_size=world_size, env=env)
    if options.dry_run:
        # Plain echo, not rich: the text must survive copy and paste unwrapped.
        typer.echo(format_dry_run(launch, entry_module, args))
        return
    with tempfile.TemporaryDirectory(prefix="timelyfreeze-errors-") as notes:
        launch.env[ERROR_DIR_ENV] = notes
        result = run_job(launch, entry_module, args, timeout=timeout or _env_timeout())
        worker_error = first_worker_error(notes) if result.code != 0 else None
    code = result.code
    if result.signal is not None:
        name = signal.Signals(result.signal).name
        why = {"SIGINT": "Ctrl-C", "SIGTERM": "terminated", "SIGHUP": "terminal closed"}[name]
        _one_line(
            f"stopped by {name} ({why}): the signal went to every process of the job, which "
            f"ended with code {code}; checkpoints already written are kept"
        )
        raise typer.Exit(code=128 + result.signal)
    if worker_error is not None:
        # A rank refused to run (bad plan, mismatched layout): a user error, exit 2.
        raise WorkerUserError(worker_error)
    if code != 0 and result.stopped_ranks:
        stuck = ", ".join(f"rank {r} (pid {p})" for r, p in sorted(result.stopped_ranks.items()))
        _one_line(
            f"the job failed (torchrun exit code {code}): {stuck} was stopped and never "
            f"answered; the other ranks gave up after --collective-timeout "
            f"{launch.env.get(COLLECTIVE_TIMEOUT_ENV, f'{DEFAULT_COLLECTIVE_TIMEOUT:g}')} s"
        )
        raise typer.Exit(code=1)
    if code != 0:
        _one_line(
            f"the job failed (torchrun exit code {code}); the failing rank's error is printed above"
        )
        raise typer.Exit(code=1)


def _one_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def _env_timeout() -> float | None:
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise LaunchError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return seconds


def _per_node(world_size: int, nnodes: int) -> int:
    if world_size % nnodes:
        raise LaunchError(
            f"the job needs {world_size} processes, which --nnodes {nnodes} does not divide: "
            "pass --nproc-per-node"
        )
    return world_size // nnodes
