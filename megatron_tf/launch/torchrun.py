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
from megatron_tf.process.lifeline import LAUNCHER_ENV, prctl_function

__all__ = ["JobResult", "TorchrunLaunch", "format_dry_run", "parse_endpoint", "run", "run_job"]

DEFAULT_RDZV_PORT = 29400
"""torchrun's own default port when an endpoint names only a host."""

COLLECTIVE_TIMEOUT_ENV = "TIMELYFREEZE_COLLECTIVE_TIMEOUT"
"""Seconds a worker waits in a collective or P2P call (read by megatron/distributed.py)."""

DEFAULT_COLLECTIVE_TIMEOUT = 600.0
"""`--collective-timeout` default: 10 minutes, Megatron's own default for its groups."""

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


@dataclass(kw_only=True, slots=True)
class JobResult:
    """How a job ended, as `run_job` saw it."""

    code: int
    """torchrun's exit code (128 + N when it died of signal N; TIMEOUT_EXIT_CODE on timeout)."""
    signal: int | None = None
    """A SIGINT, SIGTERM or SIGHUP this process received and passed on to the job."""
    stopped_ranks: dict[int, int] = field(default_factory=dict)
    """Ranks seen stopped (SIGSTOP, a debugger) while the job ran: rank -> pid."""


FORWARDED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals passed on to the whole job: Ctrl-C, scancel or a time limit, a closed terminal."""

STOP_GRACE_SECONDS = 10.0
"""After a forwarded signal, the job's processes get this long before SIGKILL."""


def run(
    launch: TorchrunLaunch,
    entry_module: str,
    args: Sequence[str] = (),
    *,
    timeout: float | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run the job and return torchrun's exit code (see `run_job`)."""
    return run_job(launch, entry_module, args, timeout=timeout, stdout=stdout, stderr=stderr).code


def run_job(
    launch: TorchrunLaunch,
    entry_module: str,
    args: Sequence[str] = (),
    *,
    timeout: float | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> JobResult:
    """Run the job, stream its output line by line, and report how it ended.

    torchrun exits non-zero when any worker fails (a dead rank ends the whole group), so a
    zero code means every rank finished. Output is copied (not inherited) so it also reaches a
    redirected `sys.stdout`, e.g. under typer's CliRunner.

    Faults: the job runs in a session of its own and dies with this process (torchrun gets
    SIGTERM through PR_SET_PDEATHSIG, and stops its workers), so no worker outlives a killed
    CLI. SIGINT, SIGTERM and SIGHUP sent to this process are passed on to the job's whole
    process group; its shutdown output is then dropped (tracebacks of every rank), and after
    `STOP_GRACE_SECONDS` (or a second signal) it is killed. Past `timeout` seconds the job is
    killed and `TIMEOUT_EXIT_CODE` returned. Ranks found stopped while the job runs are
    reported in `stopped_ranks`.
    """
    cmd = launch.command(entry_module, args)
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    state = _Stopping()
    # Handlers first: a signal that arrives while the job starts is passed on once it exists.
    previous = _forward_signals(state)
    try:
        # A session of its own, so that stopping the job reaches torchrun's workers too.
        proc = subprocess.Popen(
            cmd,
            env={**launch.environment(), LAUNCHER_ENV: str(os.getpid())},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
            preexec_fn=_die_with_parent_preexec(),
        )
    except OSError as exc:
        _restore(previous)
        raise LaunchError(f"cannot start {cmd[0]!r}: {exc.strerror}") from None
    state.proc = proc
    if state.signal is not None:
        state.kill_group(state.signal)
    pumps = [_pump(proc.stdout, out, state), _pump(proc.stderr, err, state)]
    watchdog = _watch_for_stopped_ranks(proc, state)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        state.muted = True
        _stop(proc, signal.SIGKILL, grace=5)
        code = TIMEOUT_EXIT_CODE
    except BaseException:
        _stop(proc, signal.SIGTERM, grace=STOP_GRACE_SECONDS)
        raise
    finally:
        _restore(previous)
        state.done.set()
        if state.timer is not None:
            state.timer.cancel()
        watchdog.join(timeout=5)
        for pump in pumps:
            # A stray grandchild could keep a pipe open; do not hang on it.
            pump.join(timeout=10)
    code = code if code >= 0 else 128 - code
    return JobResult(code=code, signal=state.signal, stopped_ranks=dict(state.stopped))


class _Stopping:
    """Shared state of one job between the main thread, the pumps and the watchdog."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.signal: int | None = None
        self.muted = False
        self.timer: threading.Timer | None = None
        self.done = threading.Event()
        self.stopped: dict[int, int] = {}

    def kill_group(self, sig: int) -> None:
        """Signal torchrun's process group and every worker (each leads a session of its own)."""
        if self.proc is None:
            return  # not started yet: run_job passes the signal on once it is
        _signal_job(self.proc, sig)


def _forward_signals(state: _Stopping) -> dict[int, Any]:
    """Pass SIGINT/SIGTERM/SIGHUP on to the job's process group; returns the old handlers.

    Off the main thread Python cannot install handlers: nothing is forwarded there.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}

    def forward(signum: int, frame: object) -> None:
        if state.signal is not None:  # a second signal: no more grace
            state.kill_group(signal.SIGKILL)
            return
        state.signal = signum
        state.muted = True  # the job's shutdown noise (a traceback per rank) is not news
        state.kill_group(signum)
        state.timer = threading.Timer(STOP_GRACE_SECONDS, state.kill_group, (signal.SIGKILL,))
        state.timer.daemon = True
        state.timer.start()

    return {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}


def _signal_job(proc: subprocess.Popen[str], sig: int) -> bool:
    """`sig` to torchrun's process group, and once to each worker outside it (torchrun starts
    every worker in a session of its own). False when the process group is gone."""
    alive = True
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        alive = False
    except PermissionError:
        pass
    for pid in _job_processes(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) != proc.pid:
                os.kill(pid, sig)
    return alive


def _restore(handlers: dict[int, Any]) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def _die_with_parent_preexec() -> Any:
    """A preexec_fn giving torchrun SIGTERM when this process dies (Linux), or None.

    torchrun stops its workers when it gets SIGTERM, so even a SIGKILLed CLI leaves no worker
    running. The libc function is looked up here, before the fork, so the child only calls it.
    """

    prctl = prctl_function()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _watch_for_stopped_ranks(proc: subprocess.Popen[str], state: _Stopping) -> threading.Thread:
    """Poll /proc (Linux) for processes of the job in the stopped state and note their RANK."""

    def watch() -> None:
        while not state.done.wait(1.0):
            for pid, (status, rank) in _job_processes(os.getpid()).items():
                if status in ("T", "t") and rank is not None:
                    state.stopped.setdefault(rank, pid)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _job_processes(launcher: int) -> dict[int, tuple[str, int | None]]:
    """pid -> (state, RANK) of every live process this launcher started (Linux /proc).

    torchrun puts each worker in a session of its own, so neither the session nor the process
    group finds them; the environment does: `run_job` marks the job with its own pid
    (`LAUNCHER_ENV`), which torchrun and the workers inherit.
    """
    found: dict[int, tuple[str, int | None]] = {}
    if not os.path.isdir("/proc"):
        return found
    mark = f"{LAUNCHER_ENV}={launcher}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                continue
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except (OSError, IndexError):
            continue
        if mark in env:
            rank = next((item[5:] for item in env if item.startswith(b"RANK=")), b"")
            found[int(entry)] = (state, int(rank) if rank.isdigit() else None)
    return found


def _pump(source: IO[str] | None, sink: IO[str], state: _Stopping) -> threading.Thread:
    def copy() -> None:
        assert source is not None
        for line in source:
            if not state.muted:
                sink.write(line)
                sink.flush()
        source.close()

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


def _stop(proc: subprocess.Popen[str], sig: signal.Signals, grace: float) -> None:
    """Signal the job (torchrun and its workers), then SIGKILL it if it outlives `grace` s."""
    for next_sig, wait_s in ((sig, grace), (signal.SIGKILL, None)):
        if not _signal_job(proc, next_sig):
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
