"""TensorBoard events are written by default for `pretrain`, and not with --no-tensorboard.

Two links of the chain: the flag reaches the job the workers read (`job.json`), and the metrics
logger the trainer builds from it writes (or does not write) an events file TensorBoard reads.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from megatron_tf.cli import app
from megatron_tf.train.metrics import MetricsLogger, StepMetrics


def _job_after_dry_run(tmp_path: Path, *flags: str) -> dict:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["pretrain", "--out-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--dry-run"]
        + list(flags),
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "job.json").read_text())["job"]  # the `pretrain` job envelope


def test_pretrain_job_asks_for_events_by_default(tmp_path: Path) -> None:
    assert _job_after_dry_run(tmp_path)["train"]["tensorboard"] is True


def test_no_tensorboard_reaches_the_job(tmp_path: Path) -> None:
    assert _job_after_dry_run(tmp_path, "--no-tensorboard")["train"]["tensorboard"] is False


def _log_three(out: Path, tensorboard: bool) -> None:
    logger = MetricsLogger(out, enabled=True, log_interval=10, tensorboard=tensorboard)
    for it in (1, 2, 3):
        logger.log(
            StepMetrics(iteration=it, loss=4.0 - it, lr=1e-3, grad_norm=1.0, tokens=64, seconds=0.1)
        )
    logger.close()


def test_metrics_logger_writes_events_tensorboard_reads(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log_three(tmp_path, tensorboard=True)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 3.0), (2, 2.0), (3, 1.0)]


def test_metrics_logger_writes_no_events_when_off(tmp_path: Path) -> None:
    _log_three(tmp_path, tensorboard=False)
    assert not (tmp_path / "tensorboard").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
