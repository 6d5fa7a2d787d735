"""Build and run torchrun command lines for the TimelyFreeze workers.

Every distributed job of the project (profile, pretrain, a user's Megatron-LM script) is started
the same way: `python -m torch.distributed.run ... --module <entry> <args>` with the *current*
interpreter, so the workers use the same virtual environment as the `timelyfreeze` command.
On one node with no endpoint given the rendezvous is `--standalone` (a c10d store on a free
port, as torchtune's `tune run` does), so parallel jobs on one machine never collide; across
nodes every node runs the same command and meets at `--rdzv-endpoint`.

TimelyFreeze settings travel to the workers by environment variables (`env`), never by the
workers' argv: Megatron-LM's argument parser rejects flags it does not know.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from megatron_tf.errors import LaunchError

__all__ = ["TorchrunLaunch", "format_dry_run", "parse_endpoint", "run"]

DEFAULT_RDZV_PORT = 29400
"""torchrun's own default port when an endpoint names only a host."""

TIMEOUT_EXIT_CODE = 124
"""Exit code `run` reports when it killed a job that ran past its timeout (as `timeout(1)`)."""


@dataclass(kw_only=True, slots=True)
class TorchrunLaunch:
    """Where and how many worker processes to start.

    Validation happens here, so a wrong combination fails before any process starts, with a
    message naming the `timelyfreeze` flag to change.
    """

    nnodes: int = 1
    """Number of nodes taking part (each runs the same command)."""
    nproc_per_node: int = 1
    """Worker processes per node (one per GPU on a GPU node)."""
    rdzv_endpoint: str | None = None
    """`HOST[:PORT]` of the c10d rendezvous; required when `nnodes > 1`."""
    node_rank: int | None = None
    """This node's rank in [0, nnodes); known under Slurm, otherwise assigned by rendezvous."""
    standalone: bool | None = None
    """Force (True) or forbid (False) `--standalone`; None: standalone iff no endpoint."""
    rdzv_id: str = "timelyfreeze"
    """Job id shared by all nodes of one job (Slurm's job id under `--launcher slurm`)."""
    max_restarts: int = 0
    """torchrun restarts of the whole worker group after a failure (0: fail at once)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for the workers, added over the caller's environment."""
    python: str = field(default_factory=lambda: sys.executable)
    """The interpreter that runs torchrun and, through it, the workers."""

    def __post_init__(self) -> None:
        _check_positive("--nnodes", self.nnodes)
        _check_positive("--nproc-per-node", self.nproc_per_node)
        if self.max_restarts < 0:
            raise LaunchError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.node_rank is not None and not 0 <= self.node_rank < self.nnodes:
            raise LaunchError(
                f"node rank must lie in [0, --nnodes={self.nnodes}), got {self.node_rank}"
            )
        if self.rdzv_endpoint is not None:
            parse_endpoint(self.rdzv_endpoint)
        if self.is_standalone:
            if self.nnodes > 1:
                raise LaunchError(
                    f"--nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT (a host every "
                    "node can reach, e.g. the first node) or --launcher slurm"
                )
            if self.rdzv_endpoint is not None:
                raise LaunchError("a standalone launch takes no --rdzv-endpoint")
        bad = [key for key in self.env if not key or "=" in key or "\0" in key]
        if bad:
            raise LaunchError(f"invalid environment variable name(s): {bad!r}")

    @property
    def is_standalone(self) -> bool:
        """Whether torchrun gets `--standalone` (one node, private rendezvous on a free port)."""
        if self.standalone is not None:
            return self.standalone
        return self.rdzv_endpoint is None

    @property
    def world_size(self) -> int:
        """Total worker processes across all nodes."""
        return self.nnodes * self.nproc_per_node

    def torchrun_args(self) -> list[str]:
        """The torchrun flags (without interpreter, entry module or its arguments)."""
        args = [f"--nnodes={self.nnodes}", f"--nproc-per-node={self.nproc_per_node}"]
        if self.is_standalone:
            args.append("--standalone")
        else:
            args += [
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={self.rdzv_endpoint}",
                f"--rdzv-id={self.rdzv_id}",
            ]
        if self.node_rank is not None:
            args.append(f"--node-rank={self.node_rank}")
        args.append(f"--max-restarts={self.max_restarts}")
        return args

    def command(self, entry_module: str, args: Sequence[str] = ()) -> list[str]:
        """The full argv: `python -m torch.distributed.run <flags> --module <entry> <args>`.

        `args` go to the workers untouched; torchrun stops parsing at the entry module.
        """
        if not entry_module or entry_module.startswith("-"):
            raise LaunchError(f"entry module must be a Python module name, got {entry_module!r}")
        return [
            self.python,
            "-m",
            "torch.distributed.run",
            *self.torchrun_args(),
            "--module",
            entry_module,
            *args,
        ]

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The workers' environment: `base` (default: this process's) with `env` on top."""
        merged = dict(os.environ if base is None else base)
        merged.update(self.env)
        return merged


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Split `HOST[:PORT]` (IPv6 as `[ADDR]:PORT`); the port defaults to torchrun's 29400."""
    text = endpoint.strip()
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        rest = text[close + 1 :] if close > 0 else "?"
        host = text[1:close] if close > 0 and rest[:1] in ("", ":") else ""
        port_text = rest[1:]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    if not host or any(c.isspace() for c in host):
        raise LaunchError(f"--rdzv-endpoint must be HOST or HOST:PORT, got {endpoint!r}")
    if not port_text:
        return host, DEFAULT_RDZV_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise LaunchError(
            f"--rdzv-endpoint port must be an integer in 1..65535, "
            f"got {port_text!r} in {endpoint!r}"
        )
    return host, int(port_text)


def format_dry_run(launch: TorchrunLaunch, entry_module: str, args: Sequence[str] = ()) -> str:
    """What `--dry-run` prints: the workers' extra environment and the exact command, as shell.

    The text can be pasted into bash on each node to run the same job by hand.
    """
    lines = [f"export {key}={shlex.quote(value)}" for key, value in sorted(launch.env.items())]
    lines.append(shlex.join(launch.command(entry_module, args)))
    return "\n".join(lines)


def run(
    launch: TorchrunLaunch,
    entry_module: str,
    args: Sequence[str] = (),
    *,
    timeout: float | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run the job, stream its output line by line, and return torchrun's exit code.

    torchrun exits non-zero when any worker fails (a dead rank ends the whole group), so a
    zero here means every rank finished. Output is copied (not inherited) so it also reaches a
    redirected `sys.stdout`, e.g. under typer's CliRunner. On Ctrl-C the job gets SIGINT and
    after 10 s SIGKILL; a SIGTERM to this process is passed on to the job (whose exit code is
    then returned); past `timeout` seconds it is killed and `TIMEOUT_EXIT_CODE` is returned.
    """
    cmd = launch.command(entry_module, args)
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        # A session of its own, so that stopping the job reaches torchrun's workers too.
        proc = subprocess.Popen(
            cmd,
            env=launch.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
    except OSError as exc:
        raise LaunchError(f"cannot start {cmd[0]!r}: {exc.strerror}") from None
    pumps = [_pump(proc.stdout, out), _pump(proc.stderr, err)]
    previous = _forward_sigterm(proc)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc, signal.SIGKILL, grace=5)
        code = TIMEOUT_EXIT_CODE
    except KeyboardInterrupt:
        _stop(proc, signal.SIGINT, grace=10)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for pump in pumps:
            # A stray grandchild could keep a pipe open; do not hang on it.
            pump.join(timeout=10)
    return code if code >= 0 else 128 - code


def _forward_sigterm(proc: subprocess.Popen[str]) -> Any:
    """Pass a SIGTERM sent to us (scancel, a job time limit) on to the job's process group.

    The job runs in a session of its own, so it would not get the signal otherwise; torchrun
    stops its workers when it gets SIGTERM. Returns the previous handler (None off the main
    thread, where Python cannot install handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    return signal.signal(signal.SIGTERM, forward)


def _pump(source: IO[str] | None, sink: IO[str]) -> threading.Thread:
    def copy() -> None:
        assert source is not None
        for line in source:
            sink.write(line)
            sink.flush()
        source.close()

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


def _stop(proc: subprocess.Popen[str], sig: signal.Signals, grace: float) -> None:
    """Signal the job's process group, then SIGKILL it if it outlives `grace` seconds."""
    for next_sig, wait_s in ((sig, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, next_sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _check_positive(flag: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LaunchError(f"{flag} must be a positive integer, got {value!r}")
