"""Shared test fixtures: where the Megatron-LM source snapshots are.

`../shared/megatron-lm/` (from the repository root) holds unmodified Megatron-LM exports for
tests: `core_r0.19.0` (megatron/core 0.19.1) and `main` (0.20.0); see its README. Point
TIMELYFREEZE_MEGATRON_LM_SNAPSHOTS elsewhere to use another copy. Where neither exists, a test
that needs one is skipped and says why; under CI (`CI` set) it fails instead, because CI must
run it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAPSHOTS_ENV = "TIMELYFREEZE_MEGATRON_LM_SNAPSHOTS"
SNAPSHOT_NAMES = ("core_r0.19.0", "main")


def snapshot_path(name: str) -> Path:
    """`<snapshots>/<name>`, whether or not it exists."""
    root = os.environ.get(SNAPSHOTS_ENV) or str(REPO.parent / "shared" / "megatron-lm")
    return Path(root) / name


def require_snapshot(name: str) -> Path:
    """The snapshot's folder; skips (fails under CI) when it is not there."""
    path = snapshot_path(name)
    if not (path / "pretrain_gpt.py").is_file() or not (path / "megatron" / "core").is_dir():
        reason = f"no Megatron-LM snapshot at {path} (set {SNAPSHOTS_ENV} to the folder)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run this test")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def megatron_lm_snapshot() -> Callable[[str], Path]:
    """`megatron_lm_snapshot("main")` -> the read-only snapshot folder (see the module doc)."""
    return require_snapshot


@pytest.fixture(scope="session")
def megatron_lm_checkout(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], Path]:
    """`megatron_lm_checkout("main")` -> a writable copy of that snapshot, one per session.

    Tests that import or run a snapshot use the copy: the snapshots stay untouched (no
    __pycache__, no built helper), and the copy holds what a user's checkout has after its first
    run: the dataset index helper, taken from the installed megatron-core wheel (helpers.cpp is
    the same file in the wheel and both snapshots; the checkout would otherwise compile it with
    pybind11). Run its scripts with MAKEFLAGS=LIBEXT=<this Python's EXT_SUFFIX>: Megatron-LM's
    dataset Makefile otherwise names the module after `python3-config`, maybe another Python.
    """
    copies: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in copies:
            copies[name] = _copy_checkout(require_snapshot(name), tmp_path_factory.mktemp(name))
        return copies[name]

    return get


def _copy_checkout(snapshot: Path, parent: Path) -> Path:
    import shutil

    import megatron.core.datasets as installed

    dest = parent / "Megatron-LM"
    shutil.copytree(snapshot, dest, ignore=shutil.ignore_patterns("__pycache__"))
    built = sorted(Path(installed.__file__).parent.glob("helpers_cpp*.so"))
    assert built, "the installed megatron-core wheel ships no built dataset helper"
    target = dest / "megatron" / "core" / "datasets" / built[0].name
    shutil.copy(built[0], target)
    target.touch()  # newer than helpers.cpp: `make` has nothing to do
    return dest
