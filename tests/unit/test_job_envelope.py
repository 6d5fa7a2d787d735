"""One worker-job envelope, one transport: every worker reads the file $TIMELYFREEZE_JOB names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_tf.errors import FormatError, LaunchError
from megatron_tf.formats.job import JOB_ENV, JOB_FORMAT, JobEnvelope, job_env, job_from_env
from megatron_tf.formats.layout import ModelConfig, ParallelConfig
from megatron_tf.freeze.config import FreezeConfig
from megatron_tf.profile.config import ProfileConfig, ProfileJob
from megatron_tf.train.lm_script import MegatronLMJob


def test_envelope_is_versioned_and_names_its_kind(tmp_path: Path) -> None:
    path = JobEnvelope(kind="profile", job={"a": 1}).save(tmp_path / "sub" / "job.json")
    assert path.is_absolute()
    assert json.loads(path.read_text()) == {
        "format": JOB_FORMAT,
        "kind": "profile",
        "job": {"a": 1},
    }
    assert job_from_env("profile", job_env(path)) == {"a": 1}


def test_wrong_kind_version_or_missing_variable_is_one_clear_error(tmp_path: Path) -> None:
    path = JobEnvelope(kind="pretrain", job={}).save(tmp_path / "job.json")
    with pytest.raises(FormatError, match="is a 'pretrain' job, this worker runs 'profile'"):
        job_from_env("profile", job_env(path))
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"model": {}, "parallel": {}}))  # a pre-envelope job file
    with pytest.raises(FormatError, match="field 'format' must be 'timelyfreeze.job/1'"):
        JobEnvelope.load(old, "pretrain")
    with pytest.raises(LaunchError, match=f"{JOB_ENV} is not set: start this worker with"):
        job_from_env("pretrain", {})


def test_profile_and_megatron_lm_jobs_travel_the_same_way(tmp_path: Path) -> None:
    profile = ProfileJob(
        model=ModelConfig(),
        parallel=ParallelConfig(),
        profile=ProfileConfig(iters=3),
        output=str(tmp_path / "p.json"),
    )
    env = job_env(profile.save(tmp_path / "profile_job.json"))
    assert set(env) == {JOB_ENV}
    megatron = MegatronLMJob(
        script=tmp_path / "pretrain_gpt.py", freeze=FreezeConfig(rescale="none")
    )
    menv = job_env(megatron.save(tmp_path / "megatron_lm_job.json"))
    assert set(menv) == set(env)
    assert MegatronLMJob.load(env=menv) == megatron


def test_profile_job_read_from_the_variable(tmp_path: Path, monkeypatch) -> None:
    profile = ProfileJob(model=ModelConfig(), parallel=ParallelConfig(), output="p.json")
    monkeypatch.setenv(JOB_ENV, str(profile.save(tmp_path / "job.json")))
    assert ProfileJob.load().to_dict() == profile.to_dict()
