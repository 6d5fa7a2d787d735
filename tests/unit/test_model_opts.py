"""The model flags `pretrain` and `profile` share (`cli/_model_opts.py`).

Both commands must offer every ModelConfig field as a flag with the config's default and the
shared help text, and `--dry-run` must carry each value into the job file the workers read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup, TyperOption

from megatron_tf.cli import app
from megatron_tf.cli._model_opts import LAYOUT_HELP, MODEL_FLAGS, MODEL_HELP, model_kwargs
from megatron_tf.formats.layout import ModelConfig, ParallelConfig

REPO = Path(__file__).resolve().parents[2]

# pretrain's seed also seeds the freezing (data order and corpus have flags of their own), and
# its vocabulary sits next to the tokenizer's.
PRETRAIN_HELP = {
    "vocab_size": "Vocabulary size of the model.",
    "seed": "Seed of weights and freezing (and data order by default).",
}
PANELS = {"pretrain": ("Model", "Parallel layout"), "profile": ("Model (measuring)",) * 2}

# Not one of them equals its ModelConfig default, so a flag that is dropped shows.
MODEL_VALUES = {
    "num_layers": 8,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "ffn_hidden_size": 48,
    "seq_length": 32,
    "vocab_size": 256,
    "micro_batch_size": 3,
    "recompute": "selective",
    "seed": 7,
}


def _options(command: str) -> dict[str, TyperOption]:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    params = group.commands[command].params
    return {p.name: p for p in params if isinstance(p, TyperOption) and p.name}


def test_model_flags_are_the_model_config_fields() -> None:
    names = [f.name for f in fields(ModelConfig) if f.name != "tie_embeddings"]
    assert list(MODEL_FLAGS) == names
    assert set(MODEL_VALUES) == set(MODEL_FLAGS)


@pytest.mark.parametrize("command", ["pretrain", "profile"])
def test_flags_default_to_the_config_and_share_help(command: str) -> None:
    params = _options(command)
    model_panel, layout_panel = PANELS[command]
    config_fields = {f.name: f for f in (*fields(ModelConfig), *fields(ParallelConfig))}
    expected_help = {**MODEL_HELP, **LAYOUT_HELP}
    if command == "pretrain":
        expected_help.update(PRETRAIN_HELP)
    for name, text in expected_help.items():
        param = params[name]
        assert param.opts == ["--" + name.replace("_", "-")]
        assert param.help == text
        panel = layout_panel if name in LAYOUT_HELP else model_panel
        assert param.rich_help_panel == panel
        default = config_fields[name].default
        assert default is not MISSING and param.default == default, name


def test_model_kwargs_picks_exactly_the_model_fields() -> None:
    values = {**MODEL_VALUES, "tp": 2, "plan": "auto", "out_dir": "x"}
    assert model_kwargs(values) == MODEL_VALUES
    assert ModelConfig(**model_kwargs(values)).num_layers == 8


def _run(tmp: Path, *args: str) -> None:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in MODEL_VALUES.items()]
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_tf", *args, *flags, "--tp", "2", "--dry-run"],
        cwd=REPO,
        env=dict(os.environ, TIMELYFREEZE_CACHE=str(tmp / "cache")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pretrain_dry_run_carries_every_model_flag(tmp_path: Path) -> None:
    _run(tmp_path, "pretrain", "--out-dir", str(tmp_path / "out"))
    job = json.loads((tmp_path / "out" / "job.json").read_text())["job"]
    assert {k: job["model"][k] for k in MODEL_FLAGS} == MODEL_VALUES
    assert job["parallel"]["tp"] == 2


def test_profile_dry_run_carries_every_model_flag(tmp_path: Path) -> None:
    _run(tmp_path, "profile", "-o", str(tmp_path / "p.json"))
    job = json.loads((tmp_path / "p.job.json").read_text())["job"]
    assert {k: job["model"][k] for k in MODEL_FLAGS} == MODEL_VALUES
    assert job["parallel"]["tp"] == 2
