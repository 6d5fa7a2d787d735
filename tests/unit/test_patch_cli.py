"""`timelyfreeze patch check|apply` on copies of the installed megatron-core schedules."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from megatron_tf.cli import app
from megatron_tf.megatron.patchset import check_patches, installed_megatron_root

SCHEDULES = Path("megatron/core/pipeline_parallel/schedules.py")
runner = CliRunner()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A minimal tree holding a copy of the installed (stock) schedules.py."""
    src = installed_megatron_root() / SCHEDULES
    dst = tmp_path / "site" / SCHEDULES
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    return tmp_path / "site"


@pytest.fixture(autouse=True)
def installed_tree_untouched():
    path = installed_megatron_root() / SCHEDULES
    before = digest(path)
    yield
    assert digest(path) == before


def test_check_reports_applies_then_apply_then_applied(tree: Path) -> None:
    result = runner.invoke(app, ["patch", "check", "--target", str(tree)])
    assert result.exit_code == 0, result.output
    assert "not applied, applies cleanly" in result.output

    result = runner.invoke(app, ["patch", "apply", "--target", str(tree)])
    assert result.exit_code == 0, result.output
    assert "applied" in result.output and "applies cleanly" not in result.output
    text = (tree / SCHEDULES).read_text()
    assert "TIMELYFREEZE_HOOK_POINTS = 1" in text
    compile(text, str(tree / SCHEDULES), "exec")
    assert not list(tree.rglob("*.orig")) and not list(tree.rglob("*.rej"))

    result = runner.invoke(app, ["patch", "check", "--target", str(tree)])
    assert result.exit_code == 0 and ": applied" in result.output


def test_apply_is_idempotent(tree: Path) -> None:
    runner.invoke(app, ["patch", "apply", "--target", str(tree)])
    once = digest(tree / SCHEDULES)
    result = runner.invoke(app, ["patch", "apply", "--target", str(tree)])
    assert result.exit_code == 0, result.output
    assert digest(tree / SCHEDULES) == once


def test_the_package_dir_itself_is_accepted(tree: Path) -> None:
    assert [s.state for s in check_patches(tree / "megatron")] == ["applies"]


def test_mismatched_tree_is_refused_and_left_alone(tree: Path) -> None:
    path = tree / SCHEDULES
    text = path.read_text().replace(
        "def backward_step(input_tensor, output_tensor, output_tensor_grad, config):",
        "def backward_step(input_tensor, output_tensor, output_tensor_grad, config, extra=None):",
    )
    path.write_text(text)
    before = digest(path)
    result = runner.invoke(app, ["patch", "check", "--target", str(tree)])
    assert result.exit_code == 2
    assert "does not match this tree" in result.output
    result = runner.invoke(app, ["patch", "apply", "--target", str(tree)])
    assert result.exit_code == 2
    assert "does not apply to" in result.output and "core_r0.19.0" in result.output
    assert digest(path) == before


def test_target_without_megatron_is_a_user_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["patch", "check", "--target", str(tmp_path)])
    assert result.exit_code == 2
    assert "--target" in result.output and "megatron/core/pipeline_parallel" in result.output
