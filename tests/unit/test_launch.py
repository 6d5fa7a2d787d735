"""torchrun command lines for one node, several nodes and Slurm, and the runner's exit codes."""

from __future__ import annotations

import io
import sys

import pytest

from megatron_tf.errors import LaunchError
from megatron_tf.launch import (
    TorchrunLaunch,
    expand_nodelist,
    format_dry_run,
    read_slurm_env,
    run,
    slurm_launch,
)
from megatron_tf.launch.torchrun import TIMEOUT_EXIT_CODE, parse_endpoint

PY = "/opt/venv/bin/python"


def test_single_node_is_standalone() -> None:
    launch = TorchrunLaunch(nproc_per_node=2, python=PY)
    assert launch.command("megatron_tf.profile.worker", ["--pp", "2"]) == [
        PY,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--standalone",
        "--max-restarts=0",
        "--module",
        "megatron_tf.profile.worker",
        "--pp",
        "2",
    ]


def test_default_interpreter_is_the_current_one() -> None:
    assert TorchrunLaunch().command("m")[0] == sys.executable


def test_multi_node_uses_c10d_rendezvous() -> None:
    launch = TorchrunLaunch(
        nnodes=4, nproc_per_node=8, rdzv_endpoint="node01:29500", node_rank=3, python=PY
    )
    assert launch.torchrun_args() == [
        "--nnodes=4",
        "--nproc-per-node=8",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=node01:29500",
        "--rdzv-id=timelyfreeze",
        "--node-rank=3",
        "--max-restarts=0",
    ]
    assert launch.world_size == 32


def test_single_node_with_endpoint_is_not_standalone() -> None:
    args = TorchrunLaunch(rdzv_endpoint="localhost:29511").torchrun_args()
    assert "--standalone" not in args
    assert "--rdzv-endpoint=localhost:29511" in args


def test_worker_args_pass_through_untouched() -> None:
    odd = ["--", "--standalone", "--nnodes=9", "a b", "'quoted'", ""]
    cmd = TorchrunLaunch(python=PY).command("pkg.entry", odd)
    assert cmd[cmd.index("pkg.entry") + 1 :] == odd


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nnodes": 2}, r"--nnodes 2 needs --rdzv-endpoint"),
        ({"nnodes": 0}, r"--nnodes must be a positive integer, got 0"),
        ({"nproc_per_node": -1}, r"--nproc-per-node must be a positive integer, got -1"),
        ({"nnodes": 2, "rdzv_endpoint": "h:1", "node_rank": 2}, r"node rank must lie in \[0, "),
        ({"rdzv_endpoint": "h:1", "standalone": True}, r"standalone launch takes no"),
        ({"rdzv_endpoint": "h:99999"}, r"port must be an integer in 1..65535"),
        ({"rdzv_endpoint": ":29500"}, r"must be HOST or HOST:PORT"),
        ({"env": {"A=B": "1"}}, r"invalid environment variable name"),
    ],
)
def test_bad_launch_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(LaunchError, match=match):
        TorchrunLaunch(**kwargs)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("node01", ("node01", 29400)),
        ("node01:1234", ("node01", 1234)),
        ("10.0.0.1:80", ("10.0.0.1", 80)),
        ("[fe80::1]:29500", ("fe80::1", 29500)),
        ("[fe80::1]", ("fe80::1", 29400)),
    ],
)
def test_parse_endpoint(endpoint: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(endpoint) == expected


def test_environment_is_added_over_the_callers() -> None:
    launch = TorchrunLaunch(env={"TIMELYFREEZE_PLAN": "/p.json", "HOME": "/x"})
    env = launch.environment({"HOME": "/home/u", "PATH": "/bin"})
    assert env == {"HOME": "/x", "PATH": "/bin", "TIMELYFREEZE_PLAN": "/p.json"}


def test_dry_run_text_is_runnable_shell() -> None:
    launch = TorchrunLaunch(nproc_per_node=2, env={"TF_B": "two words", "TF_A": "1"}, python=PY)
    assert format_dry_run(launch, "pkg.entry", ["--x", "a b"]) == (
        "export TF_A=1\n"
        "export TF_B='two words'\n"
        f"{PY} -m torch.distributed.run --nnodes=1 --nproc-per-node=2 --standalone "
        "--max-restarts=0 --module pkg.entry --x 'a b'"
    )


# --- Slurm -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node1", ["node1"]),
        ("gpu[01-03,07],login1", ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]),
        ("a[8-10]", ["a8", "a9", "a10"]),
        ("a[008-010]", ["a008", "a009", "a010"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("x-[3,1].dc,y", ["x-3.dc", "x-1.dc", "y"]),
    ],
)
def test_expand_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["a[1-2", "a]1", "a[2-1]", "a[x]", "a,,b", "a[[1]]"])
def test_expand_nodelist_refuses_garbage(nodelist: str) -> None:
    with pytest.raises(LaunchError, match="cannot parse Slurm node list"):
        expand_nodelist(nodelist)


SLURM = {
    "SLURM_JOB_ID": "81234",
    "SLURM_JOB_NUM_NODES": "3",
    "SLURM_NODEID": "2",
    "SLURM_JOB_NODELIST": "gpu[07-09]",
    "SLURM_GPUS_ON_NODE": "8",
}


def test_slurm_env_is_read() -> None:
    slurm = read_slurm_env(SLURM)
    assert slurm.nodes == ("gpu07", "gpu08", "gpu09")
    assert (slurm.nnodes, slurm.node_rank, slurm.master_host) == (3, 2, "gpu07")
    assert slurm.gpus_on_node == 8
    assert slurm.rdzv_port == 29400 + 234  # 81234 mod 1000


def test_slurm_launch_command() -> None:
    launch = slurm_launch(read_slurm_env(SLURM), env={"TIMELYFREEZE_PLAN": "/p"})
    assert launch.torchrun_args() == [
        "--nnodes=3",
        "--nproc-per-node=8",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu07:29634",
        "--rdzv-id=timelyfreeze-81234",
        "--node-rank=2",
        "--max-restarts=0",
    ]
    assert launch.env == {"TIMELYFREEZE_PLAN": "/p"}


def test_slurm_single_node_still_uses_the_endpoint() -> None:
    env = {**SLURM, "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "g1"}
    launch = slurm_launch(read_slurm_env(env), nproc_per_node=2, rdzv_endpoint="g1:30000")
    assert "--rdzv-endpoint=g1:30000" in launch.torchrun_args()
    assert "--standalone" not in launch.torchrun_args()


def test_slurm_fallback_variable_names() -> None:
    env = {"SLURM_NNODES": "2", "SLURM_NODEID": "0", "SLURM_NODELIST": "n[1-2]"}
    slurm = read_slurm_env(env)
    assert (slurm.nodes, slurm.job_id, slurm.rdzv_port) == (("n1", "n2"), None, 29400)


@pytest.mark.parametrize("missing", ["SLURM_JOB_NUM_NODES", "SLURM_NODEID", "SLURM_JOB_NODELIST"])
def test_missing_slurm_variable_is_named(missing: str) -> None:
    env = {k: v for k, v in SLURM.items() if k != missing}
    with pytest.raises(LaunchError, match=f"needs the Slurm variable {missing}"):
        read_slurm_env(env)


def test_inconsistent_slurm_env_is_refused() -> None:
    with pytest.raises(LaunchError, match="names 3 node\\(s\\) but SLURM_JOB_NUM_NODES=2"):
        read_slurm_env({**SLURM, "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "0"})
    with pytest.raises(LaunchError, match="SLURM_NODEID=3 but the job has 3 node"):
        read_slurm_env({**SLURM, "SLURM_NODEID": "3"})


def test_slurm_without_gpus_needs_nproc() -> None:
    env = {k: v for k, v in SLURM.items() if k != "SLURM_GPUS_ON_NODE"}
    with pytest.raises(LaunchError, match="--nproc-per-node is required under --launcher slurm"):
        slurm_launch(read_slurm_env(env))


# --- run() -------------------------------------------------------------------------------------


def _fake_torchrun(tmp_path, body: str) -> str:
    """A stand-in interpreter: run() only needs something that takes torchrun's argv."""
    script = tmp_path / "fake_python"
    script.write_text(f"#!{sys.executable}\nimport os, sys, time\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_run_streams_output_env_and_exit_code(tmp_path) -> None:
    fake = _fake_torchrun(
        tmp_path,
        "print('argv', sys.argv[1:]); print('plan', os.environ['TIMELYFREEZE_PLAN'])\n"
        "print('oops', file=sys.stderr); sys.exit(3)",
    )
    out, err = io.StringIO(), io.StringIO()
    launch = TorchrunLaunch(python=fake, env={"TIMELYFREEZE_PLAN": "/p.json"})
    code = run(launch, "pkg.entry", ["--a"], stdout=out, stderr=err)
    assert code == 3
    argv = launch.command("pkg.entry", ["--a"])[1:]
    assert out.getvalue() == f"argv {argv!r}\nplan /p.json\n"
    assert err.getvalue() == "oops\n"


def test_run_reports_a_killed_job(tmp_path) -> None:
    fake = _fake_torchrun(tmp_path, "import signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert run(TorchrunLaunch(python=fake), "m", stdout=io.StringIO()) == 128 + 9


def test_run_timeout_kills_the_job(tmp_path) -> None:
    fake = _fake_torchrun(tmp_path, "print('started', flush=True); time.sleep(60)")
    out = io.StringIO()
    assert run(TorchrunLaunch(python=fake), "m", timeout=2, stdout=out) == TIMEOUT_EXIT_CODE
    assert out.getvalue() == "started\n"


def test_run_missing_interpreter_is_a_launch_error(tmp_path) -> None:
    with pytest.raises(LaunchError, match="cannot start"):
        run(TorchrunLaunch(python=str(tmp_path / "nope")), "m")


def test_sigterm_reaches_the_job(tmp_path) -> None:
    """scancel sends SIGTERM to the srun task (our process): the job must hear it too."""
    import signal
    import subprocess

    marker = tmp_path / "got_sigterm"
    fake = _fake_torchrun(
        tmp_path,
        "import signal\n"
        f"def stop(*a): open({str(marker)!r}, 'w').close(); sys.exit(7)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('ready', flush=True); time.sleep(60)",
    )
    code = (
        "import sys\n"
        "from megatron_tf.launch import TorchrunLaunch, run\n"
        f"sys.exit(run(TorchrunLaunch(python={fake!r}), 'm'))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    assert parent.stdout.readline() == "ready\n"
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 7  # the job's own exit code
    assert marker.exists()
