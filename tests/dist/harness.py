"""Run a test worker under torchrun (gloo on CPU) and collect what each rank saved.

A worker is a script under `tests/dist/workers/`; it calls `workers._results.save_result(obj)`
once per rank, which writes `rank{R}.pt` into the folder named by `TF_TEST_RESULTS`. A non-zero
exit or a timeout fails the test with the tail of the ranks' output, so a hang never blocks CI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

WORKERS = Path(__file__).parent / "workers"
REPO = Path(__file__).resolve().parents[2]
RESULTS_ENV = "TF_TEST_RESULTS"


def worker_path(name: str) -> str:
    """Absolute path of `tests/dist/workers/<name>.py`."""
    path = WORKERS / f"{name}.py"
    assert path.is_file(), f"no worker {path}"
    return str(path)


def torchrun_command(script_or_module: str, nproc: int, args: Sequence[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone ...` for a script path or `-m module`."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
    ]
    if script_or_module.endswith(".py"):
        cmd.append(script_or_module)
    else:
        cmd += ["-m", script_or_module]
    return cmd + [str(a) for a in args]


def run_torchrun(
    script_or_module: str,
    nproc: int,
    args: Sequence[str] = (),
    timeout: float = 240.0,
    env: dict[str, str] | None = None,
    megatron: Path | None = None,
) -> list[Any]:
    """Run `nproc` ranks of a worker; return the object each rank saved, indexed by rank.

    `script_or_module` is a worker name (`tests/dist/workers/<name>.py`), a path to a script,
    or a dotted module name. `megatron`: a folder holding another `megatron/core` (a
    Megatron-LM snapshot) to run against instead of the installed package; it goes first on
    the ranks' PYTHONPATH, and the run fails unless every rank imported that one.
    """
    if "/" not in script_or_module and "." not in script_or_module:
        script_or_module = worker_path(script_or_module)
    with tempfile.TemporaryDirectory(prefix="tf-dist-") as out:
        run_env = dict(os.environ)
        run_env.update(
            {
                RESULTS_ENV: out,
                "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(
                    [str(REPO), str(WORKERS), run_env.get("PYTHONPATH", "")]
                ),
            }
        )
        run_env.update(env or {})
        if megatron is not None:
            run_env["PYTHONPATH"] = os.pathsep.join([str(megatron), run_env["PYTHONPATH"]])
        proc = subprocess.Popen(
            torchrun_command(script_or_module, nproc, args),
            cwd=REPO,
            env=run_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so a timeout can end the launcher and all its ranks
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            pytest.fail(f"torchrun timed out after {timeout:.0f}s:\n{_tail(output)}")
        if proc.returncode != 0:
            pytest.fail(f"torchrun exited with {proc.returncode}:\n{_tail(output)}")
        results = []
        for rank in range(nproc):
            path = Path(out) / f"rank{rank}.pt"
            if not path.is_file():
                pytest.fail(f"rank {rank} saved no result:\n{_tail(output)}")
            results.append(torch.load(path, weights_only=False))
            if megatron is not None:
                core = Path((Path(out) / f"rank{rank}.megatron").read_text())
                assert core == megatron / "megatron" / "core" / "__init__.py", (rank, core)
        return results


def _tail(text: str, lines: int = 60) -> str:
    """The ranks' own error lines (torchrun prefixes them with `[rankN]:`), then the tail."""
    all_lines = text.splitlines()
    rank_errors = [line for line in all_lines if line.startswith("[rank")][-lines:]
    return "\n".join([*rank_errors, "----", *all_lines[-20:]])


def uniform_plan(path: Path, *, pp: int, vpp: int, microbatches: int, ratio: float) -> Path:
    """A uniform plan for the layout (the solver's output format; ratios are what matter)."""
    from megatron_tf.formats.plan import Plan, save_plan
    from megatron_tf.formats.schedule import ScheduleRecord
    from megatron_tf.formats.layout import ParallelConfig

    spec = ParallelConfig(
        pp=pp, vpp=vpp, microbatches=microbatches, overlap_p2p_comm=vpp > 1
    ).schedule_spec()
    plan = Plan(
        schedule=ScheduleRecord.from_spec(spec),
        profile_sha256="0" * 64,
        max_freeze_ratio=ratio,
        tolerance=0.0,
        min_trained_microbatches=1,
        comm_model="megatron",
        ratios=[[[ratio] * microbatches for _ in range(vpp)] for _ in range(pp)],
        predicted={"baseline_makespan": 0.04, "makespan": 0.03, "speedup": 4 / 3},
        solver={"name": "GLOP", "status": "OPTIMAL", "seconds": 0.0},
    )
    save_plan(plan, path)
    return path
