"""`timelyfreeze pretrain` refuses bad input with exit 2 and one line, before any worker starts.

Real CLI in a subprocess (`python -m megatron_tf pretrain ...`). `--dry-run` shows the command
that a good input would launch, so the tests also see what the checks let through.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from megatron_tf.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]


def _cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TIMELYFREEZE_CACHE=str(tmp / "cache"))
    return subprocess.run(
        [sys.executable, "-m", "megatron_tf", "pretrain", "--out-dir", str(tmp / "out"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _refused(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip() and "Warning" not in x]
    errors = [x for x in lines if x.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert "torch.distributed.run" not in proc.stdout + proc.stderr  # nothing was launched


def _indexed(prefix: Path, max_id: int) -> Path:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    for start in range(4):
        doc = np.arange(start, start + 300, dtype=np.int64) % (max_id + 1)
        doc[-1] = max_id
        builder.add_document(doc, lengths=[len(doc)])
    builder.finalize(str(prefix) + ".idx")
    return prefix


def test_missing_data_path(tmp_path: Path) -> None:
    proc = _cli(tmp_path, "--data-path", str(tmp_path / "nowhere" / "text"))
    _refused(proc, "nowhere/text.bin does not exist")


def test_tokenizer_that_does_not_match_the_data(tmp_path: Path) -> None:
    prefix = _indexed(tmp_path / "data", max_id=1000)
    proc = _cli(tmp_path, "--data-path", str(prefix), "--vocab-size", "512")
    _refused(proc, "holds token id 1000 but NullTokenizer with --vocab-size 512 knows ids 0..511")


def test_matching_data_passes_the_checks(tmp_path: Path) -> None:
    prefix = _indexed(tmp_path / "data", max_id=500)
    proc = _cli(tmp_path, "--data-path", str(prefix), "--vocab-size", "512", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"export TIMELYFREEZE_JOB={tmp_path / 'out' / 'job.json'}" in proc.stdout
    assert "--module megatron_tf.train.main" in proc.stdout
    assert (tmp_path / "out" / "job.json").is_file()


def test_plan_for_another_layout(tmp_path: Path) -> None:
    from megatron_tf.formats.plan import Plan, save_plan
    from megatron_tf.formats.schedule import ScheduleRecord, ScheduleSpec

    spec = ScheduleSpec(kind="1f1b", pp=2, microbatches=4)
    plan = Plan(
        schedule=ScheduleRecord.from_spec(spec),
        profile_sha256="0" * 64,
        max_freeze_ratio=0.5,
        tolerance=0.0,
        min_trained_microbatches=1,
        comm_model="megatron",
        ratios=[[[0.5] * 4] for _ in range(2)],
        predicted={"baseline_makespan": 1.0, "makespan": 0.9, "speedup": 1 / 0.9},
        solver={"name": "GLOP", "status": "OPTIMAL", "seconds": 0.0},
    )
    save_plan(plan, tmp_path / "plan.json")
    proc = _cli(tmp_path, "--plan", str(tmp_path / "plan.json"), "--microbatches", "8")
    _refused(proc, "the plan was solved for 1f1b pp=2 M=4 but this run is 1f1b pp=2 M=8")


def test_checkpoint_of_another_layout(tmp_path: Path) -> None:
    from megatron_tf.formats.layout import ModelConfig, ParallelConfig

    parallel = ParallelConfig(pp=4, microbatches=8).to_dict()
    ckpt.save_checkpoint(
        tmp_path / "ck",
        5,
        {},
        {"model": ModelConfig().to_dict(), "parallel": parallel},
        rank=0,
        barrier=lambda: None,
    )
    proc = _cli(tmp_path, "--load", str(tmp_path / "ck"), "--microbatches", "8")
    _refused(proc, "checkpoint iter_0000005 is for another model or layout: pp 4 (checkpoint)")


def test_bad_flags(tmp_path: Path) -> None:
    _refused(_cli(tmp_path, "--max-freeze-ratio", "1.5"), "--max-freeze-ratio must lie in [0, 1]")
    _refused(_cli(tmp_path, "--num-layers", "3"), "must divide --num-layers 3")
    _refused(_cli(tmp_path, "--data-path", "x", "--mock-data"), "exclude each other")
    _refused(_cli(tmp_path, "--freeze-rescale", "sum"), "--freeze-rescale must be one of mean")
    _refused(_cli(tmp_path, "--replan-lag", "-2"), "--replan-lag must be >= 0, got -2")


def test_freeze_rescale_reaches_the_job(tmp_path: Path) -> None:
    """The flag the runtime's errors name exists and lands in the job the workers read."""
    import json

    proc = _cli(tmp_path, "--freeze-rescale", "none", "--freeze-warmup-iters", "3", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    runtime = job["job"]["train"]["freeze"]["runtime"]
    assert (runtime["rescale"], runtime["warmup_iters"], runtime["seed"]) == ("none", 3, 1234)
