"""The worker-job envelope: how every torchrun worker learns what to do.

Three kinds of worker exist (`pretrain`: `megatron_tf.train.main`, `profile`:
`megatron_tf.profile.worker`, `megatron_lm`: `megatron_tf.train.lm_script` running a user's
Megatron-LM script). The launching process checks everything, writes one `JobEnvelope` file
(`timelyfreeze.job/1`: kind plus the kind's own record) and hands its absolute path to the
workers in one environment variable, `TIMELYFREEZE_JOB`. Not argv: a Megatron-LM script's
parser refuses flags it does not know, and environment variables reach every rank under
torchrun and Slurm alike.

The envelope holds plain JSON; the records inside (`train.job.Job`, `profile.config.ProfileJob`,
`train.lm_script.MegatronLMJob`) build themselves from it, so this module needs nothing but
the errors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from megatron_tf.errors import FormatError, LaunchError
from megatron_tf.formats.jsonio import read_json

__all__ = ["JOB_ENV", "JOB_FORMAT", "JobEnvelope", "JobKind", "job_env", "job_from_env"]

JOB_FORMAT = "timelyfreeze.job/1"
JOB_ENV = "TIMELYFREEZE_JOB"
"""The one environment variable a worker reads: the absolute path of its envelope file."""

JobKind = Literal["pretrain", "profile", "megatron_lm"]
_COMMAND = {
    "pretrain": "timelyfreeze pretrain",
    "profile": "timelyfreeze profile",
    "megatron_lm": "timelyfreeze pretrain --megatron-lm PATH (or profile --megatron-lm)",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEnvelope:
    """One worker job: which kind of worker it is for, and that worker's record as JSON."""

    kind: JobKind
    job: dict[str, Any]
    format: str = JOB_FORMAT

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the envelope atomically; return its absolute path (what `job_env` passes on)."""
        from megatron_tf.formats.profile import write_json_atomic

        target = Path(path).resolve()
        write_json_atomic({"format": self.format, "kind": self.kind, "job": self.job}, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], kind: JobKind) -> JobEnvelope:
        """Read an envelope and check it is a `kind` job of this version (FormatError if not)."""
        data = read_json(path, "job file")
        if not isinstance(data, dict) or data.get("format") != JOB_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise FormatError(
                f"job file {path}: field 'format' must be {JOB_FORMAT!r}, found {found!r} "
                f"(written by another version of timelyfreeze?)"
            )
        if data.get("kind") != kind:
            raise FormatError(
                f"job file {path} is a {data.get('kind')!r} job, this worker runs {kind!r} jobs"
            )
        if not isinstance(data.get("job"), dict):
            raise FormatError(f"job file {path}: field 'job' must be a JSON object")
        return cls(kind=kind, job=data["job"])


def job_env(path: str | os.PathLike[str]) -> dict[str, str]:
    """The workers' environment entry for an envelope file (absolute, as every rank resolves it)."""
    return {JOB_ENV: str(Path(path).resolve())}


def job_from_env(kind: JobKind, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """In a worker: the `kind` record its launcher wrote (LaunchError when started by hand)."""
    if kind not in get_args(JobKind):
        raise ValueError(f"unknown job kind {kind!r}")
    path = (os.environ if env is None else env).get(JOB_ENV)
    if not path:
        raise LaunchError(f"{JOB_ENV} is not set: start this worker with {_COMMAND[kind]}")
    return JobEnvelope.load(path, kind).job
