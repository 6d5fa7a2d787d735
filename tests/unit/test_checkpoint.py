"""Checkpoints: atomic publication, an interrupted save keeps the last one, layout checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megatron_tf.errors import ConfigError
from megatron_tf.train import checkpoint as ckpt

MODEL = {"num_layers": 4, "hidden_size": 64, "micro_batch_size": 2}
PARALLEL = {"tp": 1, "pp": 2, "vpp": 1, "dp": 1, "microbatches": 4, "group_size": 0}


def _save(root: Path, iteration: int) -> Path:
    return ckpt.save_checkpoint(
        root,
        iteration,
        {"w": torch.full((2,), float(iteration))},
        {"model": MODEL, "parallel": PARALLEL},
        rank=0,
        barrier=lambda: None,
    )


def test_save_publishes_latest_and_state(tmp_path: Path) -> None:
    _save(tmp_path, 3)
    path = _save(tmp_path, 6)
    assert ckpt.latest_checkpoint(tmp_path) == path
    assert torch.equal(ckpt.load_rank_state(path, 0)["w"], torch.full((2,), 6.0))
    assert ckpt.read_meta(path)["iteration"] == 6


def test_interrupted_save_keeps_the_last_complete_checkpoint(tmp_path: Path) -> None:
    good = _save(tmp_path, 4)
    # What a kill during the next save leaves: a staging folder with a partial rank file.
    staging = tmp_path / ".iter_0000008.tmp"
    staging.mkdir()
    (staging / "rank_00000.pt.part").write_bytes(b"\x80partial")
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert ckpt.check_resume(tmp_path, MODEL, PARALLEL)["iteration"] == 4
    # The next save cleans the leftover and publishes normally.
    assert _save(tmp_path, 8) == tmp_path / "iter_0000008"
    assert not staging.exists()


def test_resume_refuses_another_layout(tmp_path: Path) -> None:
    _save(tmp_path, 2)
    with pytest.raises(ConfigError, match=r"another model or layout: pp 2 \(checkpoint\) vs 4"):
        ckpt.check_resume(tmp_path, MODEL, {**PARALLEL, "pp": 4})
    with pytest.raises(ConfigError, match=r"hidden_size 64 \(checkpoint\) vs 128"):
        ckpt.check_resume(tmp_path, {**MODEL, "hidden_size": 128}, PARALLEL)
    # The micro batch size may change between runs (it does not change any tensor's shape).
    assert ckpt.check_resume(tmp_path, {**MODEL, "micro_batch_size": 4}, PARALLEL)


def test_resume_from_empty_or_missing_folder(tmp_path: Path) -> None:
    assert ckpt.check_resume(tmp_path, MODEL, PARALLEL) is None
    with pytest.raises(ConfigError, match="folder does not exist"):
        ckpt.check_resume(tmp_path / "nope", MODEL, PARALLEL)


_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
import torch
from megatron_tf.errors import TimelyFreezeError
from megatron_tf.train import checkpoint as ckpt
root = Path(sys.argv[1])
meta = {"model": {}, "parallel": {}}
ckpt.save_checkpoint(root, 4, {"w": torch.zeros(4)}, meta, rank=0, barrier=lambda: None)
# What a full disk does to a write (EFBIG here, ENOSPC there): an error, not a signal.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
try:
    ckpt.save_checkpoint(root, 8, {"w": torch.zeros(1 << 16)}, meta, rank=0, barrier=lambda: None)
except TimelyFreezeError as exc:
    print(exc)
    sys.exit(2)
"""


def test_a_full_disk_during_a_save_stops_in_one_line_and_keeps_latest(tmp_path: Path) -> None:
    """A write that fails mid-file (file-size limit standing in for a full disk): one line
    naming --save, the partial file removed, `latest` still the previous complete checkpoint,
    and that checkpoint still loads."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.count("\n") == 1 and "--save" in proc.stdout, proc.stdout
    assert "latest" in proc.stdout and "Traceback" not in proc.stderr
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "iter_0000004"
    assert not list(tmp_path.glob(".iter_0000008.tmp/*.part"))
    assert not (tmp_path / "iter_0000008").exists()
    assert torch.equal(ckpt.load_rank_state(tmp_path / "iter_0000004", 0)["w"], torch.zeros(4))
