"""Checkpoints: one file per rank plus a metadata file, made visible by one atomic rename.

Layout of a `--save` folder:
    latest                       name of the last complete checkpoint ("iter_0000050")
    iter_0000050/meta.json       iteration, model and layout, plan, size and sha256 of each file
    iter_0000050/rank_00000.pt   model, optimizer, LR scheduler, freezer state, RNG of rank 0
Every rank writes into a hidden `.iter_0000050.tmp` folder with its file's size and sha256 beside
it; after a barrier rank 0 writes `meta.json` (holding every rank's size and checksum), renames
the folder into place and replaces `latest`. A run killed at any point leaves the previous
complete checkpoint and a `latest` that names it.

What the launching process checks (no torch), so that nothing is lost and nothing is silent:
- `resolve_resume`: `--load` of a folder that holds checkpoint artifacts but no readable latest
  complete checkpoint is refused (a damaged `latest`, a missing or garbled `meta.json`, a rank
  file of the wrong size or missing). A damaged newest checkpoint is *refused*, never skipped
  over silently: the message names the damaged file and the previous complete checkpoint, which
  `--load ROOT/iter_XXXXXXX` resumes from explicitly. Only a folder holding no checkpoint at all
  starts from scratch.
- `check_save_target`: a run never writes a checkpoint over a newer one, nor moves `latest`
  backwards, unless `--overwrite-checkpoints` says so.
Each rank verifies its own file's sha256 when it loads it (the bytes are read once).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_tf.errors import CheckpointWriteError, ConfigError
from megatron_tf.formats.jsonio import read_json

CHECKPOINT_FORMAT = "timelyfreeze.checkpoint/1"
# Fields of the layout that must match for a resume; the LR schedule and data may change.
_LAYOUT_KEYS: tuple[str, ...] = ("tp", "pp", "vpp", "dp", "microbatches", "group_size")
_ITER_DIR = re.compile(r"^iter_(\d{7,})$")
_CHUNK = 1 << 20


def iteration_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """The complete, intact checkpoint a run resumes from."""

    path: Path
    """The iteration folder (`ROOT/iter_XXXXXXX`)."""
    meta: dict[str, Any]
    """Its meta.json."""

    @property
    def iteration(self) -> int:
        return int(self.meta["iteration"])


def iteration_folders(root: str | Path) -> list[tuple[int, Path]]:
    """Published iteration folders under `root` (complete or not), oldest first."""
    root = Path(root)
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = _ITER_DIR.match(child.name)
            if match and child.is_dir():
                found.append((int(match[1]), child))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder `latest` names under `root` if it holds a meta.json, else None (no checks)."""
    marker = Path(root) / "latest"
    try:
        name = _read_marker(marker)
    except (OSError, UnicodeDecodeError):
        return None
    path = Path(root) / name
    return path if _ITER_DIR.match(name) and (path / "meta.json").is_file() else None


def _read_marker(marker: Path) -> str:
    """The text of `latest`: only a small regular file is opened (a FIFO would block `open`)."""
    info = os.stat(marker)
    if not stat.S_ISREG(info.st_mode) or info.st_size > 4096:
        raise OSError(f"{marker.name} is not a small regular file")
    return marker.read_text(encoding="utf-8").strip()


def read_meta(path: Path) -> dict[str, Any]:
    """meta.json of an iteration folder; ConfigError naming the file when unreadable."""
    file = path / "meta.json"
    if not file.is_file():
        raise ConfigError(f"{file} is missing: the checkpoint is incomplete")
    meta = read_json(file, "checkpoint file")
    if not isinstance(meta, dict) or not isinstance(meta.get("iteration"), int):
        raise ConfigError(f"{file} is damaged: no integer 'iteration' field")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{file} has format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    for key in ("model", "parallel"):
        if not isinstance(meta.get(key), dict):
            raise ConfigError(f"{file} is damaged: no {key!r} object")
    return meta


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """meta.json of `path` after checking every rank file it lists exists with its size.

    Sizes are cheap to check for any checkpoint size before launch; each rank checks its own
    file's sha256 when it loads it.
    """
    meta = read_meta(path)
    files = meta.get("files")
    if files is None:
        return meta  # written before checksums existed: nothing to compare against
    if not isinstance(files, dict) or not files:
        raise ConfigError(f"{path / 'meta.json'} is damaged: 'files' must list the rank files")
    for name, info in sorted(files.items()):
        file = path / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise ConfigError(f"{file} is missing: the checkpoint is incomplete") from None
        expected = info.get("size") if isinstance(info, dict) else None
        if size != expected:
            raise ConfigError(
                f"{file} is damaged: {size} bytes, meta.json says {expected} (truncated or "
                "overwritten)"
            )
    return meta


def resolve_resume(
    load: str | Path, model: dict[str, Any], parallel: dict[str, Any]
) -> ResumePoint | None:
    """The checkpoint `--load` resumes from, or None when the folder holds no checkpoint yet.

    `load` is a `--save` folder (its `latest` is used) or one iteration folder
    (`ROOT/iter_XXXXXXX`, to resume from an older checkpoint explicitly). Raises ConfigError,
    naming the file, when the folder holds checkpoint artifacts but no intact latest checkpoint,
    and when the checkpoint was written for another model or layout.
    """
    root = Path(load)
    if not root.exists():
        raise ConfigError(f"--load {load}: folder does not exist")
    if not root.is_dir():
        raise ConfigError(f"--load {load}: not a folder")
    if _ITER_DIR.match(root.name) or (root / "meta.json").exists():
        path = root
    else:
        path = _latest_named(root)
        if path is None:
            return None
    try:
        meta = verify_checkpoint(path)
    except ConfigError as exc:
        raise ConfigError(f"--load {load}: {exc}{_previous_hint(path)}") from None
    _check_same_layout(load, path, meta, model, parallel)
    return ResumePoint(path=path, meta=meta)


def check_resume(
    load: str | Path, model: dict[str, Any], parallel: dict[str, Any]
) -> dict[str, Any] | None:
    """Metadata of the checkpoint `--load` resumes from, or None (see `resolve_resume`)."""
    point = resolve_resume(load, model, parallel)
    return None if point is None else point.meta


def _latest_named(root: Path) -> Path | None:
    """The folder `root/latest` names; None only when `root` holds no checkpoint artifact."""
    marker = root / "latest"
    folders = iteration_folders(root)
    if not marker.exists():
        if not folders:
            return None
        newest = folders[-1][1]
        raise ConfigError(
            f"--load {root}: {marker} is missing but the folder holds checkpoints "
            f"({', '.join(p.name for _, p in folders[-3:])}); to resume from one, pass "
            f"--load {newest}"
        )
    try:
        name = _read_marker(marker)
    except (OSError, UnicodeDecodeError) as exc:
        name = f"<unreadable: {exc}>"
    path = root / name
    if not _ITER_DIR.match(name) or not path.is_dir():
        hint = f"; to resume from {folders[-1][1].name}, pass --load {folders[-1][1]}"
        raise ConfigError(
            f"--load {root}: {marker} is damaged: it reads {name[:40]!r}, not the name of a "
            f"checkpoint folder here{hint if folders else ''}"
        )
    return path


def _previous_hint(damaged: Path) -> str:
    """`; the previous complete checkpoint is ..., pass --load ...` when there is one."""
    match = _ITER_DIR.match(damaged.name)
    if match is None:
        return ""
    for iteration, path in reversed(iteration_folders(damaged.parent)):
        if iteration < int(match[1]):
            try:
                verify_checkpoint(path)
            except ConfigError:
                continue
            return f"; the previous complete checkpoint is {path.name}: pass --load {path}"
    return ""


def _check_same_layout(
    load: str | Path,
    path: Path,
    meta: dict[str, Any],
    model: dict[str, Any],
    parallel: dict[str, Any],
) -> None:
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


def check_save_target(save: str | Path, start_iteration: int, *, overwrite: bool) -> None:
    """Refuse a `--save` folder holding a checkpoint newer than where this run starts.

    Such a run would replace it (same iteration) or move `latest` back to an older one, and the
    newer checkpoint would be lost or unreachable. `overwrite` (`--overwrite-checkpoints`)
    allows it.
    """
    if overwrite:
        return
    newer = [p for i, p in iteration_folders(save) if i > start_iteration]
    named = latest_checkpoint(save)
    if named is not None and named not in newer and _iteration_of(named) > start_iteration:
        newer.append(named)
    if newer:
        shown = ", ".join(p.name for p in newer[-3:])
        raise ConfigError(
            f"--save {save} already holds {shown}, newer than this run's start (iteration "
            f"{start_iteration}): this run would overwrite it or move `latest` back. Resume "
            f"with --load {save}, save elsewhere, or pass --overwrite-checkpoints"
        )


def save_checkpoint(
    root: str | Path,
    iteration: int,
    state: dict[str, Any],
    meta: dict[str, Any],
    *,
    rank: int,
    barrier: Any,
    overwrite: bool = False,
) -> Path:
    """Write this rank's `state` and, on rank 0, publish the checkpoint atomically.

    `barrier` is called three times (after the staging folder exists, after every rank wrote,
    after publication), so all ranks must call this together. Unless `overwrite`, rank 0
    refuses (ConfigError) to replace an existing checkpoint of this iteration or to point
    `latest` at an older one than it names. Returns the final folder.
    """
    import torch

    root = Path(root)
    final = root / iteration_dir_name(iteration)
    staging = root / f".{final.name}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if not overwrite:
            _refuse_going_back(root, final, iteration)
        if staging.exists():  # left over by an interrupted run
            shutil.rmtree(staging)
        staging.mkdir()
    barrier()
    name = f"rank_{rank:05d}.pt"
    target = staging / name
    with _stopping_on_write_failure(root, f"{target}.part"):
        torch.save(state, f"{target}.part")
        os.replace(f"{target}.part", target)
        size, digest = _size_and_sha256(target)
        sidecar = {"size": size, "sha256": digest}
        (staging / f"{name}.json").write_text(json.dumps(sidecar), encoding="utf-8")
    barrier()
    if rank == 0:
        files = {}
        for note in sorted(staging.glob("rank_*.pt.json")):
            files[note.name.removesuffix(".json")] = read_json(note, "checkpoint note")
            note.unlink()
        full = {"format": CHECKPOINT_FORMAT, "iteration": iteration, **meta, "files": files}
        with _stopping_on_write_failure(root, None):
            _write_atomic(staging / "meta.json", json.dumps(full, indent=2) + "\n")
        if final.exists():  # allowed above only with `overwrite`
            shutil.rmtree(final)
        os.rename(staging, final)
        _write_atomic(root / "latest", final.name + "\n")
    barrier()
    return final


@contextlib.contextmanager
def _stopping_on_write_failure(root: Path, partial: str | None) -> Iterator[None]:
    """Turn a failed write (ENOSPC, EFBIG; torch.save wraps them in a RuntimeError) into one
    line, removing the partial file. Nothing is published: the staging folder is not renamed and
    `latest` is untouched, so it still names the previous complete checkpoint."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if partial is not None:
            Path(partial).unlink(missing_ok=True)
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointWriteError(
            f"could not write the checkpoint under --save {root} ({cause}); `latest` still "
            "names the previous complete checkpoint: free space, then resume with --load"
        ) from None


def _refuse_going_back(root: Path, final: Path, iteration: int) -> None:
    named = latest_checkpoint(root)
    newest = max((i for i, _ in iteration_folders(root)), default=-1)
    if final.exists() or newest > iteration or (named and _iteration_of(named) > iteration):
        raise ConfigError(
            f"--save {root}: refusing to write {final.name} beside a newer or equal checkpoint "
            "(pass --overwrite-checkpoints to allow it)"
        )


def _iteration_of(path: Path) -> int:
    match = _ITER_DIR.match(path.name)
    return int(match[1]) if match else -1


def load_rank_state(path: Path, rank: int) -> dict[str, Any]:
    """This rank's state, after checking its sha256 against meta.json (bytes read once)."""
    import torch

    file = path / f"rank_{rank:05d}.pt"
    if not file.is_file():
        raise ConfigError(f"checkpoint {path} has no state for rank {rank} ({file.name} missing)")
    data = file.read_bytes()
    info = read_meta(path).get("files", {}).get(file.name)
    if info is not None:
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != info.get("size") or digest != info.get("sha256"):
            raise ConfigError(
                f"{file} is damaged: its sha256 differs from meta.json's; resume from the "
                "previous checkpoint with --load ROOT/iter_XXXXXXX"
            )
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _size_and_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temp file and rename, with the permissions a plain `open` would give."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, _default_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
