"""Checkpoints: one file per rank plus a metadata file, made visible by one atomic rename.

Layout of a `--save` folder:
    latest                       name of the last complete checkpoint ("iter_0000050")
    iter_0000050/meta.json       iteration, model and layout, plan hash (torch-free, for checks)
    iter_0000050/rank_00000.pt   model, optimizer, LR scheduler, freezer state, RNG of rank 0
Every rank writes into a hidden `.iter_0000050.tmp-*` folder; after a barrier rank 0 writes
`meta.json`, renames the folder into place and replaces `latest`. A run killed at any point
leaves the previous complete checkpoint and a `latest` that names it.

`check_resume` runs in the launching process (no torch), so a checkpoint of another model or
layout is refused with one line before any worker starts.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from megatron_tf.errors import ConfigError

CHECKPOINT_FORMAT = "timelyfreeze.checkpoint/1"
# Fields of the layout that must match for a resume; the LR schedule and data may change.
_LAYOUT_KEYS: tuple[str, ...] = ("tp", "pp", "vpp", "dp", "microbatches", "group_size")


def iteration_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder `latest` names under `root`, or None when there is no complete checkpoint."""
    marker = Path(root) / "latest"
    if not marker.is_file():
        return None
    path = Path(root) / marker.read_text().strip()
    return path if (path / "meta.json").is_file() else None


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "meta.json").read_text())


def check_resume(
    load: str | Path, model: dict[str, Any], parallel: dict[str, Any]
) -> dict[str, Any] | None:
    """Metadata of the checkpoint to resume from, or None if `load` holds none yet.

    Raises ConfigError when the folder is missing, or its checkpoint was written for another
    model or parallel layout (the names of the differing fields are in the message).
    """
    root = Path(load)
    if not root.is_dir():
        raise ConfigError(f"--load {load}: folder does not exist")
    path = latest_checkpoint(root)
    if path is None:
        return None
    meta = read_meta(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(
            f"--load {load}: {path.name} has format {meta.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT}"
        )
    diffs = [
        f"{key} {meta['parallel'].get(key)} (checkpoint) vs {parallel.get(key)} (run)"
        for key in _LAYOUT_KEYS
        if meta["parallel"].get(key) != parallel.get(key)
    ]
    diffs += [
        f"{key} {meta['model'].get(key)} (checkpoint) vs {value} (run)"
        for key, value in model.items()
        if key not in ("micro_batch_size",) and meta["model"].get(key) != value
    ]
    if diffs:
        raise ConfigError(
            f"--load {load}: checkpoint {path.name} is for another model or layout: "
            + "; ".join(diffs)
        )
    return meta


def save_checkpoint(
    root: str | Path,
    iteration: int,
    state: dict[str, Any],
    meta: dict[str, Any],
    *,
    rank: int,
    barrier: Any,
) -> Path:
    """Write this rank's `state` and, on rank 0, publish the checkpoint atomically.

    `barrier` is called twice (after the temporary folder exists, after every rank wrote), so
    all ranks must call this together. Returns the final folder.
    """
    import torch

    root = Path(root)
    final = root / iteration_dir_name(iteration)
    staging = root / f".{final.name}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if staging.exists():  # left over by an interrupted run
            shutil.rmtree(staging)
        staging.mkdir()
    barrier()
    target = staging / f"rank_{rank:05d}.pt"
    torch.save(state, f"{target}.part")
    os.replace(f"{target}.part", target)
    barrier()
    if rank == 0:
        full = {"format": CHECKPOINT_FORMAT, "iteration": iteration, **meta}
        (staging / "meta.json").write_text(json.dumps(full, indent=2) + "\n")
        if final.exists():  # the same iteration saved again (a resumed run): replace it
            shutil.rmtree(final)
        os.rename(staging, final)
        _write_atomic(root / "latest", final.name + "\n")
    barrier()
    return final


def load_rank_state(path: Path, rank: int) -> dict[str, Any]:
    import torch

    file = path / f"rank_{rank:05d}.pt"
    if not file.is_file():
        raise ConfigError(f"checkpoint {path} has no state for rank {rank} ({file.name} missing)")
    return torch.load(file, map_location="cpu", weights_only=False)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
