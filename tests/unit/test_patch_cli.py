"""`timelyfreeze patch check|apply` on copies of megatron-core's schedules: the installed
0.19.2 wheel and the two Megatron-LM snapshots (core_r0.19.0, main at 0.20.0); the patch set is
chosen by the version the tree's package_info.py reports."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from megatron_tf.cli import app
from megatron_tf.megatron.patchset import check_patches, installed_megatron_root

SCHEDULES = Path("megatron/core/pipeline_parallel/schedules.py")
PACKAGE_INFO = Path("megatron/core/package_info.py")
runner = CliRunner()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_tree(source: Path, dest: Path) -> Path:
    """A minimal tree: a copy of `source`'s stock schedules.py and package_info.py."""
    for rel in (SCHEDULES, PACKAGE_INFO):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / rel, dest / rel)
    return dest


@pytest.fixture(params=["installed", "core_r0.19.0", "main"])
def tree(request: pytest.FixtureRequest, tmp_path: Path, megatron_lm_snapshot) -> Path:
    """The installed wheel's tree, or one of the Megatron-LM snapshots."""
    if request.param == "installed":
        source = installed_megatron_root()
    else:
        source = megatron_lm_snapshot(request.param)
    return copy_tree(source, tmp_path / "site")


def test_each_version_gets_its_own_patch_set(tmp_path: Path, megatron_lm_snapshot) -> None:
    """0.19's set does not fit main's schedules.py (and the reverse): the choice matters."""
    from megatron_tf.megatron.patchset import PATCHES_ROOT, patch_dir_for

    for name, other, mine in [
        ("core_r0.19.0", "megatron-core-0.20.0", "megatron-core-0.19.2"),
        ("main", "megatron-core-0.19.2", "megatron-core-0.20.0"),
    ]:
        root = copy_tree(megatron_lm_snapshot(name), tmp_path / name)
        assert patch_dir_for(root) == PATCHES_ROOT / mine
        assert [s.state for s in check_patches(root)] == ["applies"]
        assert [s.state for s in check_patches(root, PATCHES_ROOT / other)] == ["mismatch"]


def test_unsupported_version_is_refused_by_name(tmp_path: Path) -> None:
    root = copy_tree(installed_megatron_root(), tmp_path / "site")
    info = root / PACKAGE_INFO
    info.write_text(info.read_text().replace("MINOR = 19", "MINOR = 21"))
    before = digest(root / SCHEDULES)
    for command in ("check", "apply"):
        result = runner.invoke(app, ["patch", command, "--target", str(root)])
        assert result.exit_code == 2, result.output
        assert "megatron-core 0.21." in result.output and "is not supported" in result.output
    assert digest(root / SCHEDULES) == before


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
    old = "def backward_step(input_tensor, output_tensor, output_tensor_grad, config):"
    assert old in path.read_text()
    text = path.read_text().replace(
        old,
        "def backward_step(input_tensor, output_tensor, output_tensor_grad, config, extra=None):",
    )
    path.write_text(text)
    before = digest(path)
    result = runner.invoke(app, ["patch", "check", "--target", str(tree)])
    assert result.exit_code == 2
    assert "does not match this tree" in result.output
    result = runner.invoke(app, ["patch", "apply", "--target", str(tree)])
    assert result.exit_code == 2
    assert "does not apply to" in result.output and "megatron-core-0." in result.output
    assert digest(path) == before


def test_target_without_megatron_is_a_user_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["patch", "check", "--target", str(tmp_path)])
    assert result.exit_code == 2
    assert "--target" in result.output and "megatron/core/pipeline_parallel" in result.output
