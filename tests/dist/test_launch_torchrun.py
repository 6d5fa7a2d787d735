"""`megatron_tf.launch.run` with the real torchrun: environment, argv, exit codes, two "nodes".

The probe (tests/dist/workers/launch_probe.py) only opens a gloo group, so these take seconds.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
from pathlib import Path

from megatron_tf.launch import TorchrunLaunch, run
from megatron_tf.process.lifeline import LAUNCHER_ENV

WORKERS = Path(__file__).parent / "workers"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": str(WORKERS), "PROBE_DIR": str(tmp_path), **extra}


def _seen(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]


def test_single_node_ranks_get_env_and_argv(tmp_path: Path) -> None:
    env = _env(tmp_path, TIMELYFREEZE_PLAN="/p/plan 1.json")
    launch = TorchrunLaunch(nproc_per_node=2, env=env)
    out = io.StringIO()
    code = run(launch, "launch_probe", ["--x", "a b"], timeout=120, stdout=out, stderr=out)
    assert code == 0, out.getvalue()
    seen = _seen(tmp_path)
    assert [(s["rank"], s["world_size"], s["local_rank"]) for s in seen] == [(0, 2, 0), (1, 2, 1)]
    for s in seen:
        assert s["argv"] == ["--x", "a b"]
        # Plus the launcher's mark, by which a worker knows its torchrun is still the launcher's.
        assert s["env"] == {
            "TIMELYFREEZE_PLAN": "/p/plan 1.json",
            LAUNCHER_ENV: str(os.getpid()),
        }


def test_a_dead_rank_fails_the_job(tmp_path: Path) -> None:
    launch = TorchrunLaunch(nproc_per_node=2, env=_env(tmp_path, PROBE_FAIL_RANK="1"))
    out = io.StringIO()
    code = run(launch, "launch_probe", timeout=120, stdout=out, stderr=out)
    assert code != 0, out.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_meet_at_the_endpoint(tmp_path: Path) -> None:
    """Two torchrun agents on this machine stand in for two nodes of a multi-node job."""
    endpoint = f"127.0.0.1:{_free_port()}"
    codes: dict[int, int] = {}
    logs = {0: io.StringIO(), 1: io.StringIO()}

    def node(rank: int) -> None:
        launch = TorchrunLaunch(
            nnodes=2,
            nproc_per_node=1,
            rdzv_endpoint=endpoint,
            node_rank=rank,
            rdzv_id="probe",
            env=_env(tmp_path),
        )
        codes[rank] = run(launch, "launch_probe", timeout=180, stdout=logs[rank], stderr=logs[rank])

    threads = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == {0: 0, 1: 0}, {r: logs[r].getvalue()[-2000:] for r in logs}
    seen = _seen(tmp_path)
    assert [(s["rank"], s["world_size"], s["local_rank"]) for s in seen] == [(0, 2, 0), (1, 2, 0)]
    assert sorted(s["group_rank"] for s in seen) == [0, 1]  # one rank per "node"
