"""The GPU acceptance kit's reduced CPU form (`scripts/gpu/acceptance.sh --cpu-check`), end to end.

On CPU the kit runs the exactness comparison for real (megatron-core's local-spec layers, fp32
and bf16), times the tiny layer against the frozen share, and skips what needs CUDA, saying so.
This keeps the one command a GPU machine will run from rotting while no GPU is at hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from megatron_tf.cli import app
from megatron_tf.formats.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("gpu-acceptance")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/gpu/acceptance.sh"), "--cpu-check", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((out / "report.json").read_text()), out


def test_every_part_ran_or_says_why_it_was_skipped(report) -> None:
    data, out = report
    parts = data["parts"]
    assert list(parts) == ["environment", "exactness", "linearity", "pp2"]
    assert all(p["status"] == "ok" for p in parts.values()), parts
    assert parts["environment"]["result"]["mode"] == "cpu-check"
    assert parts["pp2"]["result"] == {"status": "skipped", "why": "needs CUDA"}
    markdown = (out / "report.md").read_text()
    for heading in ("## 1. Exactness", "## 2-3. Backward time", "## 4. pp 2 on one GPU"):
        assert heading in markdown


def test_frozen_weights_get_no_gradient_and_the_rest_equal_the_reference(report) -> None:
    rows = report[0]["parts"]["exactness"]["result"]["rows"]
    local = [r for r in rows if r["impl"] == "megatron"]
    assert sorted(r["dtype"] for r in local) == ["bfloat16", "float32"]
    for row in local:
        assert row["passed"], row
        assert row["frozen_weights_with_grad"] == []
        # One microbatch at a time the kernels are the same with and without freezing.
        assert row["max_rel_diff_trained_weight_grads"] == 0.0
        assert row["max_rel_diff_input_grads"] == 0.0
        assert row["max_rel_diff_accumulated"] <= row["tolerance"]
        # Each frozen linear weight drops exactly its weight-gradient matmul.
        mm = row["backward_aten_mm"]
        assert mm["none_frozen"] - mm["frozen"] == mm["frozen_units"] > 0
    fp32 = next(r for r in local if r["dtype"] == "float32")
    assert fp32["max_rel_diff_accumulated"] == 0.0
    te = next(r for r in rows if r["impl"] == "transformer-engine")
    assert te["status"] == "open" and "64 MiB" in te["why"]


def test_linearity_covers_shares_0_to_1_and_the_cost_line_is_a_valid_profile(report) -> None:
    rows = report[0]["parts"]["linearity"]["result"]["rows"]
    assert {r["impl"] for r in rows} == {"megatron", "sdpa"}
    for row in rows:
        shares = [p["share"] for p in row["points"]]
        assert shares[0] == 0.0 and shares[-1] == 1.0 and shares == sorted(shares)
        costs = row["costs"]
        assert costs["W"] == pytest.approx(
            row["points"][0]["backward_s"] - row["points"][-1]["backward_s"]
        )
        f, b, w = (float(x) for x in costs["line"].split(","))
        assert f == 1.0 and b > 0 and w >= 0
        path = report[1] / f"profile-{row['impl']}.json"
        result = CliRunner().invoke(
            app,
            ["profile", "--synthetic", "--schedule", "1f1b", "--pp", "2", "--microbatches", "4"]
            + ["--costs", costs["line"], "-o", str(path)],
        )
        assert result.exit_code == 0, result.output
        stage = load_profile(path).stages[1]  # rank 1: backward = B + W, frozen = B
        assert stage.forward == pytest.approx(f)
        assert stage.backward == pytest.approx(b + w)
        assert stage.backward_frozen == pytest.approx(b)


def test_an_interpreter_without_torch_is_named_in_one_line(tmp_path: Path) -> None:
    """The kit stops before any part runs when its interpreter cannot import torch."""
    bare = tmp_path / "python-without-torch"
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')  # -S: no site-packages
    bare.chmod(0o755)
    out = tmp_path / "r"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/gpu/acceptance.sh"), "--cpu-check", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": str(bare), "PYTHONPATH": ""},
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.count("\n") == 1
    assert f"{bare} has no torch" in done.stderr
    assert not out.exists()
