"""From real text to a `compare` report on a user's own data, through the public CLI.

The data: a few Python standard-library source files as bytes, one document each with the
end-of-document id 256, written with megatron-core's `IndexedDatasetBuilder` (what
`docs/pretrain.md`, "Your own data", tells a user to do). Then, as a user would:

1. `pretrain --data-path ... --split 80,20,0 --eval-interval ... --noise-probe-at ...`: the
   validation loss of the validation split in metrics.jsonl, TensorBoard and on the console
   (the last iteration's line and the summary line included), the noise scale in
   noise_scale.json;
2. `solve --max-freeze-ratio auto` on that noise scale: the library's budget choice;
3. `compare --data-path ...`: time to the baseline's validation loss on that data, the report
   naming it.

Tiny GPT (2 layers, hidden 32), pp 2, a handful of iterations: two torchrun launches.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300
SOURCES = ("json/decoder.py", "json/encoder.py", "json/scanner.py", "json/__init__.py")
SOURCES += ("textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "bisect.py", "keyword.py")
TINY = ["--num-layers", "2", "--hidden-size", "32", "--pp", "2", "--microbatches", "4"]


@pytest.fixture(scope="module")
def text_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    folder = tmp_path_factory.mktemp("own_data")
    prefix = folder / "stdlib_bytes"
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in SOURCES:
        doc = np.frombuffer((stdlib / name).read_bytes(), dtype=np.uint8).astype(np.uint16)
        builder.add_document(np.append(doc, 256), lengths=[len(doc) + 1])
    builder.finalize(f"{prefix}.idx")
    return prefix


def _cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TIMELYFREEZE_CACHE=str(tmp / "cache"))
    return subprocess.run(
        [sys.executable, "-m", "megatron_tf", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_own_text_from_pretrain_to_a_compare_report(tmp_path: Path, text_dataset: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from megatron_tf.cli import app
    from megatron_tf.formats.plan import load_plan
    from megatron_tf.formats.profile import load_profile
    from megatron_tf.solve.budget import LossCost, choose_budget, noise_scale_estimate

    data = ["--data-path", str(text_dataset), "--split", "80,20,0", "--vocab-size", "257"]
    run = tmp_path / "run"
    proc = _cli(
        tmp_path,
        "pretrain",
        *data,
        *TINY,
        "--iters", "5", "--lr-warmup-iters", "1", "--log-interval", "3",
        "--eval-interval", "2", "--eval-samples", "16",
        "--noise-probe-at", "2", "--noise-probe-rounds", "4", "--no-freeze",
        "--out-dir", str(run),
    )  # fmt: skip
    _ok(proc)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5]
    val = {r["iteration"]: r["val_loss"] for r in records if r["val_loss"] is not None}
    assert sorted(val) == [2, 4, 5]  # every --eval-interval and at the last iteration
    assert all(math.isfinite(v) for v in val.values()) and val[5] < val[2] < math.log(257)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("val_loss")] == [
        (it, round(v, 4)) for it, v in sorted(val.items())
    ]
    probes = json.loads((run / "noise_scale.json").read_text())
    assert [p["iteration"] for p in probes] == [2] and (
        probes[0]["b_small"],
        probes[0]["b_big"],
    ) == (2, 8)
    noise = probes[0]["noise_scale"]
    # McCandlish's estimator on the gradients the probe measured (0 when this early in
    # training the noise is below what two batch sizes can tell apart).
    again = noise_scale_estimate(
        2, 8, [probes[0]["small_batch_grad_sq"]], [probes[0]["big_batch_grad_sq"]]
    )
    assert math.isfinite(noise) and noise >= 0 and noise == again["noise_scale"]
    # The console: the data named, the last iteration's line although 5 is no multiple of
    # --log-interval 3, and the summary line with the numbers metrics.jsonl holds.
    assert f"data: --data-path {text_dataset} --split 80,20,0 (NullTokenizer)" in proc.stdout
    assert [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("it ")] == ["3", "5"]
    final = records[-1]["loss"]
    summary = f"done: iterations 1-5, final loss {final:.4f}, val loss {val[5]:.4f} (it 5)"
    assert summary in proc.stdout and "frozen share 0.000" in proc.stdout

    # The auto budget on that noise scale (what a --megatron-lm user does in step two).
    runner = CliRunner()
    profile = tmp_path / "profile.json"
    synthetic = [
        "--synthetic",
        "--schedule",
        "1f1b",
        "--pp",
        "2",
        "--microbatches",
        "4",
        "--costs",
        "1,1,1",
    ]
    assert runner.invoke(app, ["profile", *synthetic, "-o", str(profile)]).exit_code == 0
    plan = tmp_path / "plan.json"
    solve = ["solve", str(profile), "--max-freeze-ratio", "auto", "--noise-scale", str(noise)]
    result = runner.invoke(app, [*solve, "--batch-samples", "8", "--auto-min-saving", "0"]
                           + ["-o", str(plan)])  # fmt: skip
    assert result.exit_code == 0, result.output
    choice = choose_budget(load_profile(profile), LossCost(noise, 8, min_saving=0.0))
    assert f"auto budget: {choice.reason}" in " ".join(result.output.split())
    if choice.max_freeze_ratio > 0:
        assert load_plan(plan).max_freeze_ratio == choice.max_freeze_ratio

    # compare on the same data. Cap 0 keeps it to one launch (a cap-0 run is the baseline
    # itself); frozen runs read the data through the same job (the demo test runs them).
    out = tmp_path / "compare"
    proc = _cli(
        tmp_path,
        "compare",
        *data,
        *TINY,
        "--iters", "4", "--warmup-iters", "1", "--seeds", "1", "--budgets", "0",
        "--eval-interval", "2", "--eval-samples", "16", "--out-dir", str(out),
    )  # fmt: skip
    _ok(proc)
    named = f"data: --data-path {text_dataset} --split 80,20,0 (NullTokenizer)"
    assert named in (out / "report.md").read_text() and named in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == named.removeprefix("data: ")
    baseline = [
        json.loads(x)
        for x in (out / "seed1" / "baseline" / "metrics.jsonl").read_text().splitlines()
    ]
    (only,) = summary["runs"]
    # The target is the baseline's final validation loss on the validation split.
    assert only["comparison"]["target"] == pytest.approx(baseline[-1]["val_loss"])
    assert only["max_freeze_ratio"] == 0 and only["reach_fraction"] == pytest.approx(1.0)
