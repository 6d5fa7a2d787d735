"""Launch flags shared by the commands that start distributed jobs (`profile`, `pretrain`).

A command declares the options with the aliases below (they show up in their own "Launch"
help panel), packs them into `LaunchOptions` (`launch/options.py`, where local and Slurm
launches are resolved), and ends with `launch_or_print(...)`:

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import typer

from megatron_tf.launch.options import Launcher, LaunchOptions, launch_job
from megatron_tf.launch.torchrun import DEFAULT_COLLECTIVE_TIMEOUT

__all__ = [
    "CollectiveTimeoutOption",
    "DryRunOption",
    "LaunchFlags",
    "LaunchOptions",
    "LauncherOption",
    "NnodesOption",
    "NprocPerNodeOption",
    "RdzvEndpointOption",
    "echo_dry_run",
    "launch_or_print",
]

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
        help="Print the exact torchrun command, after `export` lines for any variables the "
        "workers need, then exit without running.",
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
class LaunchFlags:
    """The launch flags as an option group (`cli/_options.py`); `options()` is the library's."""

    nnodes: NnodesOption = 1
    nproc_per_node: NprocPerNodeOption = None
    rdzv_endpoint: RdzvEndpointOption = None
    launcher: LauncherOption = "local"
    dry_run: DryRunOption = False
    collective_timeout: CollectiveTimeoutOption = DEFAULT_COLLECTIVE_TIMEOUT

    def options(self) -> LaunchOptions:
        return LaunchOptions(
            nnodes=self.nnodes,
            nproc_per_node=self.nproc_per_node,
            rdzv_endpoint=self.rdzv_endpoint,
            launcher=self.launcher,
            dry_run=self.dry_run,
            collective_timeout=self.collective_timeout,
        )


def launch_or_print(
    options: LaunchOptions,
    entry_module: str,
    args: Sequence[str] = (),
    *,
    world_size: int | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run the job (`launch.options.launch_job`), or print it under --dry-run.

    A failed job raises `JobFailed`, which `@user_errors` turns into one line and its exit code.
    """
    text = launch_job(options, entry_module, args, world_size=world_size, env=env)
    if text is not None:
        echo_dry_run(text)


def echo_dry_run(text: str) -> None:
    """Plain echo, not rich: the text must survive copy and paste unwrapped."""
    typer.echo(text)
