"""A pretraining job: the configs the workers need, checked and prepared in the launching process.

`prepare_job` is what `timelyfreeze pretrain` runs before any worker starts: it validates the
plan against the layout, the checkpoint to resume against the model and layout, and the data and
tokenizer against the model (writing the embedded corpus if needed). Anything wrong is a
TimelyFreezeError, so the command exits 2 with one line and no process is started. The result
goes to job.json as a `pretrain` job envelope (`formats/job.py`); the workers find it through
`$TIMELYFREEZE_JOB` (`load_job`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_tf.errors import ConfigError
from megatron_tf.formats.job import JobEnvelope, job_from_env
from megatron_tf.formats.layout import ModelConfig, ParallelConfig
from megatron_tf.train import checkpoint as ckpt
from megatron_tf.train.corpus import CorpusConfig, CorpusInfo
from megatron_tf.train.data import DataConfig, PreparedData, prepare_data
from megatron_tf.train.plan_source import load_plan_source
from megatron_tf.train.train_config import TrainConfig

__all__ = ["Job", "load_job", "prepare_job", "write_job"]


@dataclass(kw_only=True, slots=True)
class Job:
    """Everything a worker needs; written by `pretrain` as job.json, read by `train/main.py`."""

    model: ModelConfig
    parallel: ParallelConfig
    data: DataConfig
    train: TrainConfig
    prepared: PreparedData

    def to_dict(self) -> dict[str, Any]:
        corpus = self.prepared.corpus
        return {
            "model": self.model.to_dict(),
            "parallel": self.parallel.to_dict(),
            "data": self.data.to_dict(),
            "train": self.train.to_dict(),
            "prepared": {
                "prefix": self.prepared.prefix,
                "corpus": None if corpus is None else corpus.to_dict(),
                "valid_prefix": self.prepared.valid_prefix,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        corpus = data["prepared"].get("corpus")
        info = None
        if corpus is not None:
            info = CorpusInfo(
                path_prefix=corpus["path_prefix"],
                config=CorpusConfig(**corpus["config"]),
                entropy_rate=corpus["entropy_rate"],
                loss_floor=corpus["loss_floor"],
            )
        return cls(
            model=ModelConfig.from_dict(data["model"]),
            parallel=ParallelConfig.from_dict(data["parallel"]),
            data=DataConfig.from_dict(data["data"]),
            train=TrainConfig.from_dict(data["train"]),
            prepared=PreparedData(
                prefix=data["prepared"]["prefix"],
                corpus=info,
                valid_prefix=data["prepared"].get("valid_prefix"),
            ),
        )


def prepare_job(
    model: ModelConfig, parallel: ParallelConfig, data: DataConfig, train: TrainConfig
) -> Job:
    """Check everything that can be checked without workers, and prepare the data."""

    parallel.check_model(model)
    spec = parallel.schedule_spec()
    if train.freeze.enabled and not train.freeze.auto:
        load_plan_source(str(train.freeze.plan), spec)  # raises on a file for another layout
    _check_heldout(data, train)
    batch = model.micro_batch_size * parallel.microbatches
    if train.eval_iters:
        train.eval_samples = train.eval_iters * batch
    if train.eval_interval and train.eval_samples < batch:
        raise ConfigError(
            f"--eval-samples {train.eval_samples} must be at least one iteration's batch "
            f"(--micro-batch-size x --microbatches = {batch})"
        )
    f = train.freeze
    if f.auto_budget and not f.auto and f.enabled and not f.reprice_every:
        # With --reprice-every a plan file is the starting plan, re-priced in-job.
        raise ConfigError("--max-freeze-ratio auto chooses the cap in-job: use it with --plan auto")
    if train.noise_probe_at and train.freeze.enabled and not train.freeze.auto:
        raise ConfigError("--noise-probe-at measures an unfrozen model: use it with --no-freeze")
    start = 0
    train.resume_from = None
    if train.load:
        point = ckpt.resolve_resume(train.load, model.to_dict(), parallel.to_dict())
        if point is not None:
            train.resume_from = str(point.path)
            start = point.iteration
    if train.save:
        ckpt.check_save_target(train.save, start, overwrite=train.overwrite_checkpoints)
    return Job(
        model=model, parallel=parallel, data=data, train=train, prepared=prepare_data(data, model)
    )


def _check_heldout(data: DataConfig, train: TrainConfig) -> None:
    """Validation, the noise probe and the auto budget read a held-out set: the embedded
    corpus's, or the validation split of the user's data (`train/heldout.py`)."""
    wants = [
        flag
        for flag, on in (
            ("--eval-interval", train.eval_interval),
            ("--noise-probe-at", train.noise_probe_at),
            ("--max-freeze-ratio auto", train.freeze.auto_budget),
        )
        if on
    ]
    if not wants or data.has_heldout:
        return
    if data.source == "mock":
        raise ConfigError(f"{wants[0]} needs a held-out set, which --mock-data has not")
    if data.train_data_path:
        raise ConfigError(f"{wants[0]} needs a held-out set: add --valid-data-path")
    raise ConfigError(
        f"{wants[0]} needs a held-out set: --split {data.effective_split} gives --data-path "
        "no validation documents; give it a validation share (--split 98,2,0) or use "
        "--train-data-path with --valid-data-path"
    )


def write_job(job: Job, path: str | Path) -> Path:
    """Write job.json (a `pretrain` envelope) atomically; return its absolute path."""
    return JobEnvelope(kind="pretrain", job=job.to_dict()).save(path)


def load_job(path: str | Path | None = None) -> Job:
    """The job of this worker: from `path`, else from the file `$TIMELYFREEZE_JOB` names."""
    data = job_from_env("pretrain") if path is None else JobEnvelope.load(path, "pretrain").job
    try:
        return Job.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"job file {path or '$TIMELYFREEZE_JOB'} is unreadable: {exc}") from exc
