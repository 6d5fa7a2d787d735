"""Launch resolution: from the launch flags (`--nnodes`, `--launcher`, ...) to a torchrun job.

Every command that starts distributed workers (`profile`, `pretrain`, the demo, `compare`) packs
its launch flags into `LaunchOptions` and calls `launch_job`; local and Slurm launches are
resolved here, in one place. Nothing here imports torch, megatron or typer, so `--help` and
`--dry-run` stay fast and library callers get exceptions, never exits.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from megatron_tf.errors import LaunchError
from megatron_tf.formats.job import job_env
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
    "QUIET_WORKERS_ENV",
    "TIMEOUT_ENV",
    "JobFailed",
    "LaunchOptions",
    "Launcher",
    "job_log",
    "launch_job",
]

Launcher = Literal["local", "slurm"]

TIMEOUT_ENV = "TIMELYFREEZE_TIMEOUT"
"""Seconds after which a launched job is killed (exit code 1); unset: no limit."""


class JobFailed(Exception):
    """A launched job ended badly for a reason outside the user's input (a crash, a signal).

    Not a `TimelyFreezeError`: the CLI exits with `exit_code` (1, or 128 + signal), not 2.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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


def launch_job(
    options: LaunchOptions,
    entry_module: str,
    args: Sequence[str] = (),
    *,
    world_size: int | None = None,
    env: Mapping[str, str] | None = None,
    job_file: Path | None = None,
    timeout: float | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> str | None:
    """Run the job under torchrun; under --dry-run return what to print instead of running it.

    `job_file` is the worker's job envelope, named to every rank in $TIMELYFREEZE_JOB.

    The dry-run text is the `export` lines of the variables the job sets, then the command.
    `timeout` (seconds; default: $TIMELYFREEZE_TIMEOUT if set, else none) kills a job that runs
    longer, e.g. a hung rank in CI. `stdout`/`stderr` receive the workers' output (default:
    this process's).

    Raises LaunchError for flags that cannot describe a job, WorkerUserError when a worker
    refused to run for a reason the user can fix (both exit 2 in the CLI), and JobFailed when
    the job failed otherwise or was stopped by a signal.
    """
    if job_file is not None:
        env = {**(env or {}), **job_env(job_file)}
    launch = options.build(world_size=world_size, env=env)
    if options.dry_run:
        return format_dry_run(launch, entry_module, args)
    with tempfile.TemporaryDirectory(prefix="timelyfreeze-errors-") as notes:
        launch.env[ERROR_DIR_ENV] = notes
        result = run_job(
            launch,
            entry_module,
            args,
            timeout=timeout or _env_timeout(),
            stdout=stdout,
            stderr=stderr,
        )
        worker_error = first_worker_error(notes) if result.code != 0 else None
    code = result.code
    if result.signal is not None:
        name = signal.Signals(result.signal).name
        why = {"SIGINT": "Ctrl-C", "SIGTERM": "terminated", "SIGHUP": "terminal closed"}[name]
        raise JobFailed(
            f"stopped by {name} ({why}): the signal went to every process of the job, which "
            f"ended with code {code}; checkpoints already written are kept",
            128 + result.signal,
        )
    if worker_error is not None:
        # A rank refused to run (bad plan, mismatched layout): a user error, exit 2.
        raise WorkerUserError(worker_error)
    if code != 0 and result.stopped_ranks:
        stuck = ", ".join(f"rank {r} (pid {p})" for r, p in sorted(result.stopped_ranks.items()))
        raise JobFailed(
            f"the job failed (torchrun exit code {code}): {stuck} was stopped and never "
            f"answered; the other ranks gave up after --collective-timeout "
            f"{launch.env.get(COLLECTIVE_TIMEOUT_ENV, f'{DEFAULT_COLLECTIVE_TIMEOUT:g}')} s",
            1,
        )
    if code != 0:
        raise JobFailed(
            f"the job failed (torchrun exit code {code}); the failing rank's error is printed "
            "above",
            1,
        )
    return None


QUIET_WORKERS_ENV: dict[str, str] = {"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
"""For jobs whose output goes to a log (demo, compare): no import warnings, one thread a rank."""


@contextlib.contextmanager
def job_log(path: Path, what: str) -> Iterator[IO[str]]:
    """A log file for a job's output; a failed job becomes a LaunchError quoting its last lines.

    For callers that run several jobs and show their own progress instead of the workers'
    output (the demo, `compare`): pass the handle as `stdout` and `stderr` of `launch_job`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            yield handle
        except JobFailed as exc:
            handle.flush()
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-15:])
            raise LaunchError(
                f"{what} failed (exit {exc.exit_code}); log {path}:\n{tail}"
            ) from None


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
