"""Run a user's Megatron-LM entry script (e.g. `pretrain_gpt.py`) with TimelyFreeze installed.

torchrun starts `python -m megatron_tf.train.lm_script <Megatron-LM arguments>` on every
rank. This entry reads its own settings from a `megatron_lm` job envelope (`formats/job.py`) named
by `$TIMELYFREEZE_JOB` (Megatron-LM's parser rejects flags it does not know, so they can never
travel in argv), installs the freeze
bootstrap (`megatron_tf.megatron.lm_freezer`), and then runs the script exactly as
`python PATH/pretrain_gpt.py <arguments>` would: `sys.argv` is the script and the untouched
arguments, the checkout is first on `sys.path` (so a fork's own `megatron/` package is the one
imported), and the script runs as `__main__`.

Everything at module level is torch-free: the CLI imports this module to validate a checkout.
"""

from __future__ import annotations

import functools
import os
import runpy
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from megatron_tf.console import worker_line
from megatron_tf.errors import LaunchError
from megatron_tf.formats.job import JobEnvelope, job_from_env
from megatron_tf.freeze.config import FreezeConfig
from megatron_tf.process.worker_errors import report_user_errors
from megatron_tf.profile.config import ProfileConfig

__all__ = ["ENTRY_MODULE", "MegatronLMJob", "main", "resolve_checkout"]

ENTRY_MODULE = "megatron_tf.train.lm_script"

Mode = Literal["pretrain", "profile"]

# What a Megatron-LM checkout (or fork) has at its root; any one of them is enough.
_CHECKOUT_MARKERS = (
    "megatron/training/__init__.py",
    "megatron/core/__init__.py",
    "pretrain_gpt.py",
)


@dataclass(kw_only=True, slots=True)
class MegatronLMJob:
    """What the workers need to know; travels as a `megatron_lm` job envelope."""

    script: Path
    """Absolute path of the entry script inside the checkout."""
    mode: Mode = "pretrain"
    """`pretrain`: train with the plan's freezing. `profile`: measure at the first training
    call, write profile_out, and stop before any optimizer step."""
    plan: Path | None = None
    """plan.json (absolute; on a file system every node sees). None: train without freezing."""
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    """The freeze runtime's settings (seed, rescale, warm-up, ramp)."""
    profile_out: Path | None = None
    """Where profile mode writes profile.json."""
    profile: ProfileConfig | None = None
    """What profile mode measures (iters, warm-up, linearity); None: ProfileConfig()."""
    cpu_trial: bool = False
    """Run the script on CPU with a stand-in for torch.cuda (`megatron_tf.megatron.cpu_trial`);
    ignored on a machine with CUDA."""
    schedule: str = ""
    """A schedule TimelyFreeze runs in place of Megatron-LM's 1F1B (`zb-h1`); "" runs
    Megatron's own."""

    @property
    def checkout(self) -> Path:
        return self.script.parent

    def to_dict(self) -> dict[str, Any]:
        return {
            "script": str(self.script),
            "mode": self.mode,
            "plan": None if self.plan is None else str(self.plan),
            "freeze": self.freeze.to_dict(),
            "profile_out": None if self.profile_out is None else str(self.profile_out),
            "profile": None if self.profile is None else self.profile.to_dict(),
            "cpu_trial": self.cpu_trial,
            "schedule": self.schedule,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MegatronLMJob:
        mode = data.get("mode", "pretrain")
        if mode not in ("pretrain", "profile"):
            raise LaunchError(f"job field 'mode' must be pretrain or profile, got {mode!r}")
        if not data.get("script"):
            raise LaunchError("job field 'script' is missing: the Megatron-LM script to run")
        if mode == "profile" and not data.get("profile_out"):
            raise LaunchError("a profile job needs 'profile_out' (where to write profile.json)")
        for name in ("freeze", "profile"):
            if not isinstance(data.get(name) or {}, dict):
                raise LaunchError(f"job field {name!r} must be a JSON object")
        profile = data.get("profile")
        return cls(
            script=Path(data["script"]),
            mode=mode,
            plan=Path(data["plan"]) if data.get("plan") else None,
            freeze=FreezeConfig.from_dict(data.get("freeze") or {}),
            profile_out=Path(data["profile_out"]) if data.get("profile_out") else None,
            profile=None if profile is None else ProfileConfig(**profile),
            cpu_trial=bool(data.get("cpu_trial", False)),
            schedule=str(data.get("schedule") or ""),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the `megatron_lm` envelope; return its absolute path (for `job_env`)."""
        return JobEnvelope(kind="megatron_lm", job=self.to_dict()).save(path)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
    ) -> MegatronLMJob:
        """From `path`, else (in a worker) from the file `$TIMELYFREEZE_JOB` names."""
        if path is not None:
            return cls.from_dict(JobEnvelope.load(path, "megatron_lm").job)
        return cls.from_dict(job_from_env("megatron_lm", env))


def resolve_checkout(path: str | os.PathLike[str], script: str = "pretrain_gpt.py") -> Path:
    """Check `--megatron-lm PATH` and `--script`; return the script's absolute path.

    A checkout is a folder with Megatron-LM's `megatron/` package or its `pretrain_gpt.py`;
    a fork that renames its scripts still has `megatron/`.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise LaunchError(f"--megatron-lm {path}: {what}; pass a Megatron-LM checkout")
    root = root.resolve()
    if not any((root / marker).is_file() for marker in _CHECKOUT_MARKERS):
        raise LaunchError(
            f"--megatron-lm {path} is not a Megatron-LM checkout: it has neither "
            "megatron/training/ nor megatron/core/ nor pretrain_gpt.py"
        )
    entry = (root / script).resolve()
    if not entry.is_file():
        raise LaunchError(f"--script {script}: no such file in the checkout {root}")
    if entry.suffix != ".py":
        raise LaunchError(f"--script {script}: expected a Python script (.py)")
    return entry


def main(argv: Sequence[str] | None = None) -> None:
    """Worker entry: install TimelyFreeze, then run the user's script with its own argv."""
    args = list(sys.argv[1:] if argv is None else argv)
    with report_user_errors():
        job = MegatronLMJob.load()
        # As `python script.py` would set them: the script's folder first on the path, and
        # argv[0] the script. Done before anything imports megatron, so a fork's `megatron/`
        # package wins over the installed megatron-core.
        sys.path.insert(0, str(job.checkout))
        sys.argv = [str(job.script), *args]
        if job.cpu_trial:
            from megatron_tf.megatron.cpu_trial import enable_cpu_trial

            if not enable_cpu_trial() and os.environ.get("RANK", "0") == "0":
                worker_line("timelyfreeze: CUDA is available: the CPU trial mode stays off")
        from megatron_tf.megatron.lm_freezer import install

        if job.mode == "profile":
            install(plan=None, first_call=_profile_first_call(job), schedule=job.schedule)
        else:
            install(plan=job.plan, freeze=job.freeze, schedule=job.schedule)
        runpy.run_path(str(job.script), run_name="__main__")


def _profile_first_call(job: MegatronLMJob) -> Any:
    """Profile mode: measure at the first training schedule call, write, stop the script."""
    # Imports torch: deferred, like the megatron modules in `main`, so that this module stays
    # torch-free for the CLI.
    from megatron_tf.profile.lm_profiler import measure_and_stop

    assert job.profile_out is not None
    return functools.partial(
        measure_and_stop, config=job.profile or ProfileConfig(), output=job.profile_out
    )


if __name__ == "__main__":
    main()
