"""Run a user's Megatron-LM entry script (e.g. `pretrain_gpt.py`) with TimelyFreeze installed.

torchrun starts `python -m megatron_tf.launch.megatron_lm <Megatron-LM arguments>` on every
rank. This entry reads its own settings from `TIMELYFREEZE_*` environment variables (Megatron-LM's
parser rejects flags it does not know, so they can never travel in argv), installs the freeze
bootstrap (`megatron_tf.megatron.megatron_lm`), and then runs the script exactly as
`python PATH/pretrain_gpt.py <arguments>` would: `sys.argv` is the script and the untouched
arguments, the checkout is first on `sys.path` (so a fork's own `megatron/` package is the one
imported), and the script runs as `__main__`.

Everything at module level is torch-free: the CLI imports this module to validate a checkout.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from megatron_tf.console import worker_line
from megatron_tf.errors import LaunchError

__all__ = ["ENTRY_MODULE", "MegatronLMJob", "main", "resolve_checkout"]

ENTRY_MODULE = "megatron_tf.launch.megatron_lm"

SCRIPT_ENV = "TIMELYFREEZE_MEGATRON_SCRIPT"
MODE_ENV = "TIMELYFREEZE_MODE"
PLAN_ENV = "TIMELYFREEZE_PLAN"
FREEZE_ENV = "TIMELYFREEZE_FREEZE_CONFIG"
PROFILE_ENV = "TIMELYFREEZE_PROFILE_OUT"
PROFILE_CONFIG_ENV = "TIMELYFREEZE_PROFILE_CONFIG"
CPU_TRIAL_ENV = "TIMELYFREEZE_CPU_TRIAL"

Mode = Literal["pretrain", "profile"]

# What a Megatron-LM checkout (or fork) has at its root; any one of them is enough.
_CHECKOUT_MARKERS = (
    "megatron/training/__init__.py",
    "megatron/core/__init__.py",
    "pretrain_gpt.py",
)


@dataclass(kw_only=True, slots=True)
class MegatronLMJob:
    """What the workers need to know, carried by environment variables."""

    script: Path
    """Absolute path of the entry script inside the checkout."""
    mode: Mode = "pretrain"
    """`pretrain`: train with the plan's freezing. `profile`: measure at the first training
    call, write profile_out, and stop before any optimizer step."""
    plan: Path | None = None
    """plan.json (absolute; on a file system every node sees). None: train without freezing."""
    freeze: dict[str, Any] = field(default_factory=dict)
    """FreezeConfig fields (seed, rescale, warmup_iters, ramp_iters) as a dict."""
    profile_out: Path | None = None
    """Where profile mode writes profile.json."""
    profile: dict[str, Any] = field(default_factory=dict)
    """ProfileConfig fields (iters, warmup_iters, linearity) for profile mode."""
    cpu_trial: bool = False
    """Run the script on CPU with a stand-in for torch.cuda (`megatron_tf.megatron.cpu_trial`);
    ignored on a machine with CUDA."""

    @property
    def checkout(self) -> Path:
        return self.script.parent

    def environment(self) -> dict[str, str]:
        env = {SCRIPT_ENV: str(self.script), MODE_ENV: self.mode}
        if self.plan is not None:
            env[PLAN_ENV] = str(self.plan)
        if self.freeze:
            env[FREEZE_ENV] = json.dumps(self.freeze, sort_keys=True)
        if self.profile_out is not None:
            env[PROFILE_ENV] = str(self.profile_out)
        if self.profile:
            env[PROFILE_CONFIG_ENV] = json.dumps(self.profile, sort_keys=True)
        if self.cpu_trial:
            env[CPU_TRIAL_ENV] = "1"
        return env

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> MegatronLMJob:
        env = os.environ if env is None else env
        script = env.get(SCRIPT_ENV)
        if not script:
            raise LaunchError(
                f"{SCRIPT_ENV} is not set: start this entry through "
                "`timelyfreeze pretrain --megatron-lm PATH`"
            )
        mode = env.get(MODE_ENV, "pretrain")
        if mode not in ("pretrain", "profile"):
            raise LaunchError(f"{MODE_ENV} must be pretrain or profile, got {mode!r}")
        freeze, profile = _json_env(env, FREEZE_ENV), _json_env(env, PROFILE_CONFIG_ENV)
        if mode == "profile" and not env.get(PROFILE_ENV):
            raise LaunchError(f"{MODE_ENV}=profile needs {PROFILE_ENV} (where to write it)")
        return cls(
            script=Path(script),
            mode=mode,  # type: ignore[arg-type]
            plan=Path(env[PLAN_ENV]) if env.get(PLAN_ENV) else None,
            freeze=freeze,
            profile_out=Path(env[PROFILE_ENV]) if env.get(PROFILE_ENV) else None,
            profile=profile,
            cpu_trial=env.get(CPU_TRIAL_ENV, "0") == "1",
        )


def _json_env(env: Mapping[str, str], name: str) -> dict[str, Any]:
    try:
        value = json.loads(env.get(name) or "{}")
    except json.JSONDecodeError as exc:
        raise LaunchError(f"{name} is not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise LaunchError(f"{name} must hold a JSON object, got {type(value).__name__}")
    return value


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
    from megatron_tf.launch.worker_errors import report_user_errors

    args = list(sys.argv[1:] if argv is None else argv)
    with report_user_errors():
        job = MegatronLMJob.from_environment()
        # As `python script.py` would set them: the script's folder first on the path, and
        # argv[0] the script. Done before anything imports megatron, so a fork's `megatron/`
        # package wins over the installed megatron-core.
        sys.path.insert(0, str(job.checkout))
        sys.argv = [str(job.script), *args]
        if job.cpu_trial:
            from megatron_tf.megatron.cpu_trial import enable_cpu_trial

            if not enable_cpu_trial() and os.environ.get("RANK", "0") == "0":
                worker_line("timelyfreeze: CUDA is available: the CPU trial mode stays off")
        from megatron_tf.megatron.megatron_lm import install

        if job.mode == "profile":
            install(plan=None, first_call=_profile_first_call(job))
        else:
            install(plan=job.plan, freeze=job.freeze)
        runpy.run_path(str(job.script), run_name="__main__")


def _profile_first_call(job: MegatronLMJob) -> Any:
    """Profile mode: measure at the first training schedule call, write, stop the script."""
    import functools

    from megatron_tf.profile.config import ProfileConfig
    from megatron_tf.profile.megatron_lm import measure_and_stop

    assert job.profile_out is not None
    return functools.partial(
        measure_and_stop, config=ProfileConfig(**job.profile), output=job.profile_out
    )


if __name__ == "__main__":
    main()
