"""Processes of a job die with the process that started them (Linux `PR_SET_PDEATHSIG`).

The CLI starts torchrun in a session of its own (so that it can signal the whole job), which
also means nothing ends the job when the CLI is killed with SIGKILL. `PR_SET_PDEATHSIG` asks the
kernel to send a signal to a process when its parent dies: the CLI sets it for torchrun (before
exec), and each worker sets it for itself (`die_with_parent`), so no worker outlives its
torchrun either. On other systems these are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["LAUNCHER_ENV", "die_with_parent", "prctl_function"]

_PR_SET_PDEATHSIG = 1


def prctl_function() -> Callable[..., int] | None:
    """libc's prctl, or None off Linux or when it cannot be found."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


LAUNCHER_ENV = "TIMELYFREEZE_LAUNCHER_PID"
"""Set by the launcher (`run_job`) to its own pid: a worker's parent (torchrun) is the
launcher's child, so a worker whose grandparent is another process has lost its torchrun."""


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Get `sig` when the parent process (torchrun, for a worker) dies; at once if it has.

    A worker calls this after its imports (seconds): if torchrun died meanwhile, the worker was
    re-parented already, which the check of its grandparent against $TIMELYFREEZE_LAUNCHER_PID
    catches.
    """
    prctl = prctl_function()
    if prctl is None:
        return
    parent = os.getppid()
    prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    orphaned = os.getppid() != parent
    launcher = os.environ.get(LAUNCHER_ENV, "")
    if launcher.isdigit() and _parent_of(os.getppid()) != int(launcher):
        orphaned = True
    if orphaned:
        os.kill(os.getpid(), sig)


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
