"""A user's own indexed dataset: Megatron's split conventions, the held-out set they give
validation and the noise probe, and the checks and messages around them.

The datasets are real Megatron indexed datasets (megatron-core's `IndexedDatasetBuilder`) and
the splits are cut by Megatron's own `BlendedMegatronDatasetBuilder`, in this process. CLI cases
run the real app in-process (CliRunner, `--dry-run`: nothing is launched), except the one that
needs a fresh interpreter to see what a failing call prints.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from megatron_tf.cli import app
from megatron_tf.errors import ConfigError
from megatron_tf.formats.layout import ModelConfig
from megatron_tf.train.data import DataConfig, build_datasets, parse_split, prepare_data
from megatron_tf.train.heldout import SplitHeldOut, heldout_source, sample_order
from megatron_tf.train.metrics import MetricsLogger, StepMetrics, format_summary

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
DOCS = 20
DOC_TOKENS = 200


def _write(prefix: Path, docs: list[np.ndarray]) -> str:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    for doc in docs:
        builder.add_document(doc, lengths=[len(doc)])
    builder.finalize(str(prefix) + ".idx")
    return str(prefix)


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> str:
    """20 documents; document d holds only token d (and the end-of-document id 256), so a
    sample's tokens say which documents it was cut from."""
    folder = tmp_path_factory.mktemp("tagged")
    docs = [np.append(np.full(DOC_TOKENS - 1, d), 256) for d in range(DOCS)]
    return _write(folder / "tagged", docs)


def _model(**kw: int) -> ModelConfig:
    return ModelConfig(
        **{"num_layers": 2, "hidden_size": 32, "seq_length": 32, "vocab_size": 257, **kw}
    )


def _cli(args: list[str], tmp: Path) -> typer.testing.Result:
    env = {"TIMELYFREEZE_CACHE": str(tmp / "cache")}
    return runner.invoke(app, ["pretrain", "--out-dir", str(tmp / "out"), *args], env=env)


def _one_error(result: typer.testing.Result, needle: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
    return lines[0]


# ------------------------------------------------------------------ the split is Megatron's


def test_the_validation_split_holds_only_its_own_documents(tmp_path: Path, tagged: str) -> None:
    """--split 80,20,0: Megatron's builder gives documents 0-15 to training and 16-19 to
    validation; the held-out streams read validation documents only, training never does."""
    data = DataConfig(source="path", data_path=tagged, split="80,20,0", cache_dir=str(tmp_path))
    model = _model()
    prepared = prepare_data(data, model)
    train, valid = build_datasets(data, prepared, model, num_samples=64)
    heldout = heldout_source(prepared, model, valid)
    assert isinstance(heldout, SplitHeldOut)

    def documents(sample: dict) -> set[int]:
        return {int(t) for t in np.unique(sample["tokens"].numpy())} - {256}

    seen_train = set().union(*(documents(train[i]) for i in range(len(train))))
    assert seen_train == set(range(16))
    for stream in ("validation", "noise_probe"):
        batches = heldout.microbatches(stream, 12)
        assert len(batches) == 12 // model.micro_batch_size
        seen = set().union(*(documents({"tokens": b["tokens"]}) for b in batches))
        assert seen and seen <= set(range(16, 20)), (stream, seen)
        # The same tokens on every call: every run evaluates the same set.
        again = heldout.microbatches(stream, 12)
        assert all((a["tokens"] == b["tokens"]).all() for a, b in zip(batches, again, strict=True))


def test_one_file_per_split(tmp_path: Path, tagged: str) -> None:
    """--train-data-path / --valid-data-path: Megatron's per-split blends, each file whole."""
    valid_docs = [np.append(np.full(DOC_TOKENS - 1, 100 + d), 256) for d in range(3)]
    valid_prefix = _write(tmp_path / "valid", valid_docs)
    data = DataConfig(
        source="path", train_data_path=tagged, valid_data_path=valid_prefix, cache_dir=str(tmp_path)
    )
    model = _model()
    prepared = prepare_data(data, model)
    _, valid = build_datasets(data, prepared, model, num_samples=8)
    tokens = np.concatenate(
        [
            b["tokens"].numpy().ravel()
            for b in heldout_source(prepared, model, valid).microbatches("validation", 8)
        ]
    )
    assert set(np.unique(tokens)) - {256} <= {100, 101, 102}


def test_streams_start_at_opposite_ends_and_wrap() -> None:
    assert sample_order("validation", 5, 8) == [0, 1, 2, 3, 4]
    assert sample_order("noise_probe", 5, 8) == [7, 6, 5, 4, 3]
    assert sample_order("validation", 5, 3) == [0, 1, 2, 0, 1]


@pytest.mark.parametrize(
    ("text", "weights"),
    [("98,2,0", (0.98, 0.02, 0.0)), ("969, 30, 1", (0.969, 0.03, 0.001)), ("1", (1.0, 0, 0))],
)
def test_split_reads_as_megatron_reads_it(text: str, weights: tuple[float, ...]) -> None:
    from megatron.core.datasets.blended_megatron_dataset_config import parse_and_normalize_split

    assert parse_split(text) == pytest.approx(weights)
    assert parse_split(text) == pytest.approx(tuple(parse_and_normalize_split(text)))


@pytest.mark.parametrize("text", ["-1,2", "a,b", "0,0,0", "1,2,3,4"])
def test_bad_split(text: str) -> None:
    with pytest.raises(ConfigError, match="--split"):
        DataConfig(source="path", data_path="x", split=text)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"split": "98,2,0"}, "--split cuts --data-path"),
        ({"source": "path", "valid_data_path": "v"}, "--valid-data-path needs --train-data-path"),
        (
            {"source": "path", "data_path": "d", "train_data_path": "t"},
            "--data-path excludes --train-data-path",
        ),
        ({"source": "mock", "train_data_path": "t"}, "--mock-data"),
    ],
)
def test_conventions_that_exclude_each_other(kw: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        DataConfig(**kw)


# ------------------------------------------------------------------ pretrain's checks, CLI


def test_validation_and_probe_run_on_a_split(tmp_path: Path, tagged: str) -> None:
    args = ["--data-path", tagged, "--vocab-size", "257", "--split", "90,10,0"]
    args += ["--eval-interval", "2", "--noise-probe-at", "1", "--dry-run"]
    result = _cli(args, tmp_path)
    assert result.exit_code == 0, result.output
    auto = ["--data-path", tagged, "--vocab-size", "257", "--split", "90,10,0", "--plan", "auto"]
    result = _cli([*auto, "--max-freeze-ratio", "auto", "--dry-run"], tmp_path)
    assert result.exit_code == 0, result.output


def test_eval_iters_sets_the_validation_set_in_iterations(tmp_path: Path, tagged: str) -> None:
    import json

    args = ["--data-path", tagged, "--vocab-size", "257", "--split", "90,10,0"]
    args += ["--eval-interval", "2", "--eval-iters", "3", "--microbatches", "4", "--dry-run"]
    assert _cli(args, tmp_path).exit_code == 0
    job = json.loads((tmp_path / "out" / "job.json").read_text())["job"]
    assert job["train"]["eval_samples"] == 3 * 4 * 2  # iterations x microbatches x micro batch
    _one_error(_cli([*args, "--eval-samples", "8"], tmp_path), "exclude each other")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--eval-interval", "2"], "--eval-interval needs a held-out set: --split 100,0,0"),
        (["--noise-probe-at", "1"], "--noise-probe-at needs a held-out set"),
        (["--plan", "auto", "--max-freeze-ratio", "auto"], "give it a validation share"),
        (["--split", "99,1,0", "--eval-interval", "2"], "the validation split of --data-path"),
    ],
)
def test_without_a_validation_split_the_refusal_says_how_to_get_one(
    tmp_path: Path, tagged: str, extra: list[str], needle: str
) -> None:
    """No --split (every document trains) or a share too small for one sample (1% of 20
    documents rounds to none): one line naming the flag and the fix, before launch."""
    result = _cli(["--data-path", tagged, "--vocab-size", "257", *extra], tmp_path)
    _one_error(result, needle)


def test_megatron_lm_route_refuses_the_probe_with_the_two_step_recipe(tmp_path: Path) -> None:
    result = _cli(["--megatron-lm", str(tmp_path), "--noise-probe-at", "5"], tmp_path)
    line = _one_error(result, "--noise-probe-at runs in the built-in trainer only")
    assert "solve profile.json --max-freeze-ratio auto --noise-scale" in line


def test_a_failing_call_prints_its_error_line_alone_with_the_vocabulary_fix(tagged: str) -> None:
    """A fresh interpreter, the real entry point: the call imports megatron-core (the
    tokenizer) and fails before launch; stderr is the one error line, no library warnings.
    Byte data with end-of-document id 256 under --vocab-size 256: the line says 257."""
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_tf", "pretrain", "--data-path", tagged]
        + ["--vocab-size", "256", "--dry-run"],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert "holds token id 256 but NullTokenizer with --vocab-size 256" in lines[0]
    assert "end-of-document id is --vocab-size - 1 = 255" in lines[0]
    assert "need --vocab-size 257" in lines[0]


# ------------------------------------------------------------------ compare on a user's data


def test_compare_checks_the_users_data_before_writing(tmp_path: Path, tagged: str) -> None:
    out = tmp_path / "c"
    base = ["compare", "--out-dir", str(out), "--data-path", tagged]
    result = runner.invoke(app, [*base, "--vocab-size", "257"])
    _one_error(result, "give --data-path a validation share (--split 98,2,0)")
    result = runner.invoke(app, [*base, "--split", "90,10,0"])  # the default --vocab-size 256
    _one_error(result, "need --vocab-size 257")
    assert not out.exists()


# ------------------------------------------------------------------ help names dependencies


@pytest.mark.parametrize(
    ("command", "flag", "needle"),
    [
        ("pretrain", "eval_interval", "--split"),
        ("pretrain", "eval_samples", "With --eval-interval"),
        ("pretrain", "noise_probe_at", "held-out set"),
        ("pretrain", "max_freeze_ratio", "held-out set"),
        ("pretrain", "split", "With --data-path"),
        ("pretrain", "valid_data_path", "With --train-data-path"),
        ("pretrain", "tokenizer_type", "--vocab-size 257"),
        ("pretrain", "vocab_file", "GPT2BPETokenizer"),
        ("pretrain", "corpus_seed", "without --data-path"),
        ("pretrain", "freeze_warmup_iters", "With --plan"),
        ("pretrain", "drift_patience", "With --drift-threshold"),
        ("compare", "eval_interval", "--data-path"),
        ("compare", "corpus_seed", "without --data-path"),
        ("compare", "split", "With --data-path"),
    ],
)
def test_help_of_a_dependent_flag_names_what_it_depends_on(
    command: str, flag: str, needle: str
) -> None:
    click_app = typer.main.get_command(app)
    params = {p.name: p for p in click_app.commands[command].params}  # type: ignore[attr-defined]
    assert needle in (params[flag].help or ""), params[flag].help


# ------------------------------------------------------------------ console lines


def _step(iteration: int, **kw: object) -> StepMetrics:
    base = {"loss": 2.5, "lr": 1e-3, "grad_norm": 1.0, "tokens": 64, "seconds": 0.1}
    return StepMetrics(iteration=iteration, **{**base, **kw})  # type: ignore[arg-type]


def test_the_last_iteration_is_printed_whatever_the_interval(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path, enabled=True, log_interval=10, tensorboard=False)
    buffer = io.StringIO()
    logger.console = Console(file=buffer, width=200)
    for it in range(1, 8):
        logger.log(_step(it), last=it == 7)
    logger.close()
    printed = [line.split()[1] for line in buffer.getvalue().splitlines()]
    assert printed == ["7"]


def test_the_summary_line() -> None:
    last = _step(40, loss=1.23456, elapsed=12.34, freeze_ratio=[0.1, 0.3])
    text = format_summary(last, first_iteration=20, val=(40, 1.5), wall=15.0)
    assert text == (
        "done: iterations 21-40, final loss 1.2346, val loss 1.5000 (it 40), 12.3 s training "
        "(15.0 s wall), frozen share 0.200"
    )
    assert "val loss" not in format_summary(last, first_iteration=0, val=None, wall=1.0)
    assert "no iterations" in format_summary(None, first_iteration=40, val=None, wall=0.0)
