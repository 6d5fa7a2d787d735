"""The optional patch set that adds explicit hook points to megatron-core's schedules.

`patches/megatron-core-<version>/*.patch` are unified diffs with paths `megatron/core/...`, so
they apply with `patch -p1` in the directory that holds the `megatron` package: the
installed wheel's site-packages, or a Megatron-LM checkout. The set is chosen by the version the
tree's `megatron/core/package_info.py` reports, through the guard's table of supported versions
(`guard.SUPPORTED_VERSIONS`: 0.19.x -> megatron-core-0.19.2, 0.20.x -> megatron-core-0.20.0).
With the hook points present, `megatron_tf.megatron.hooks` registers on them instead of
wrapping functions.

Imports neither torch nor megatron: checking a tree must work on any machine.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from megatron_tf.errors import ConfigError, UnsupportedMegatronError
from megatron_tf.megatron import guard

__all__ = [
    "PATCHES_ROOT",
    "PatchStatus",
    "apply_patches",
    "check_patches",
    "installed_megatron_root",
    "patch_dir_for",
]

PATCHES_ROOT = Path(__file__).resolve().parents[2] / "patches"
"""The patch sets shipped in the repository (next to the package in a checkout)."""

State = Literal["applied", "applies", "mismatch"]


@dataclass(frozen=True, slots=True)
class PatchStatus:
    """What `patch` says about one patch file against one tree."""

    patch: str
    """File name of the patch."""
    state: State
    """`applied` (already in the tree), `applies` (would apply cleanly) or `mismatch`."""
    detail: str = ""
    """patch's own words when the tree does not match."""


def installed_megatron_root() -> Path:
    """The directory holding the importable `megatron` package (without importing it)."""
    spec = importlib.util.find_spec("megatron")
    if spec is None or not spec.submodule_search_locations:
        raise UnsupportedMegatronError("megatron-core is not installed; pass --target DIR")
    return Path(next(iter(spec.submodule_search_locations))).parent


def _tree_root(target: Path) -> Path:
    """Accept the dir holding `megatron/` or the `megatron` package dir itself."""
    target = target.expanduser().resolve()
    if (target / "megatron" / "core" / "pipeline_parallel").is_dir():
        return target
    if target.name == "megatron" and (target / "core" / "pipeline_parallel").is_dir():
        return target.parent
    raise ConfigError(
        f"--target {target}: expected a directory containing megatron/core/pipeline_parallel "
        "(site-packages of megatron-core, or a Megatron-LM checkout)"
    )


def patch_dir_for(root: Path) -> Path:
    """The patch set for the megatron-core version of the tree at `root` (holding megatron/)."""
    core = root / "megatron" / "core"
    version = guard.read_core_version(core)
    entry = guard.supported(version)
    if entry is None:
        raise UnsupportedMegatronError(guard.unsupported_message(version, core))
    return PATCHES_ROOT / entry.patch_set


def _patch_files(patch_dir: Path) -> list[Path]:
    files = sorted(patch_dir.glob("*.patch"))
    if not files:
        raise ConfigError(f"--patch-dir {patch_dir}: no *.patch files found")
    return files


def _run_patch(root: Path, patch: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("patch")
    if exe is None:
        raise ConfigError("the `patch` program is not installed (apt-get install patch)")
    # -f: never ask (and never guess "reversed"); -s: quiet; -p1: paths start at megatron/.
    cmd = [exe, "-p1", "-f", "-s", "--no-backup-if-mismatch", "-d", str(root), "-i", str(patch)]
    return subprocess.run(cmd + list(extra), capture_output=True, text=True, check=False)


def _status(root: Path, patch: Path) -> PatchStatus:
    if _run_patch(root, patch, "-R", "--dry-run").returncode == 0:
        return PatchStatus(patch=patch.name, state="applied")
    forward = _run_patch(root, patch, "--dry-run")
    if forward.returncode == 0:
        return PatchStatus(patch=patch.name, state="applies")
    words = " ".join((forward.stdout + forward.stderr).split())
    return PatchStatus(patch=patch.name, state="mismatch", detail=words[:300])


def check_patches(target: Path | None = None, patch_dir: Path | None = None) -> list[PatchStatus]:
    """The state of every patch of the set against `target` (default: installed megatron)."""
    root = _tree_root(target) if target is not None else installed_megatron_root()
    return [_status(root, p) for p in _patch_files(patch_dir or patch_dir_for(root))]


def apply_patches(target: Path | None = None, patch_dir: Path | None = None) -> list[PatchStatus]:
    """Apply what is not applied yet; idempotent; refuses (changing nothing) a tree that does
    not match any patch."""
    root = _tree_root(target) if target is not None else installed_megatron_root()
    chosen = patch_dir or patch_dir_for(root)
    files = _patch_files(chosen)
    before = [_status(root, p) for p in files]
    bad = [s for s in before if s.state == "mismatch"]
    if bad:
        raise UnsupportedMegatronError(
            f"{bad[0].patch} of {chosen.name} does not apply to {root} (a locally modified "
            f"schedules.py?): {bad[0].detail}"
        )
    for status, patch in zip(before, files, strict=True):
        if status.state == "applies":
            done = _run_patch(root, patch)
            if done.returncode != 0:  # pragma: no cover - the dry run said it applies
                raise UnsupportedMegatronError(
                    f"{patch.name} failed on {root}: {' '.join(done.stdout.split())[:300]}"
                )
    return [_status(root, p) for p in files]
