"""The one version guard: is the installed megatron-core one whose schedules our hooks understand?

Everything in `megatron_tf.megatron` relies on facts about megatron-core 0.19.x
(`pipeline_parallel/schedules.py`): the schedules call the module-level `forward_step` and
`backward_step` by name, `forward_step` receives `current_microbatch` and `vp_stage`, and
`backward_step(input_tensor, output_tensor, output_tensor_grad, config)` receives no ids.
This module checks those facts once and refuses, in one sentence, what would break them.
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any

from megatron_tf.errors import UnsupportedMegatronError

SUPPORTED_SERIES = "0.19"
"""megatron-core release series whose schedules the hooks were written against."""

SCHEDULE_ENTRIES: tuple[str, ...] = (
    "forward_backward_no_pipelining",
    "forward_backward_pipelining_without_interleaving",
    "forward_backward_pipelining_with_interleaving",
)
"""Schedule entry points wrapped for iteration bookkeeping."""

_FORWARD_KWARGS = ("current_microbatch", "vp_stage")
_BACKWARD_PARAMS = ("input_tensor", "output_tensor", "output_tensor_grad", "config")

HOOK_POINTS_ATTR = "TIMELYFREEZE_HOOK_POINTS"
"""Set in schedules.py by `patches/megatron-core-0.19.2/*.patch`: explicit hook points exist."""


def megatron_version() -> str:
    """The installed megatron-core version string, e.g. '0.19.2'."""
    try:
        from megatron.core import package_info
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise UnsupportedMegatronError(
            f"megatron-core is not importable ({exc}); install megatron-core {SUPPORTED_SERIES}.x"
        ) from None
    return str(package_info.__version__)


def check_version(version: str | None = None) -> str:
    """Raise unless `version` (default: the installed one) is in the supported series."""
    found = megatron_version() if version is None else version
    parts = found.split(".")
    if ".".join(parts[:2]) != SUPPORTED_SERIES:
        raise UnsupportedMegatronError(
            f"TimelyFreeze's schedule hooks support megatron-core {SUPPORTED_SERIES}.x, "
            f"found {found}; install megatron-core=={SUPPORTED_SERIES}.2"
        )
    return found


def has_hook_points(schedules: ModuleType) -> bool:
    """True when schedules.py carries the explicit hook points added by our patch."""
    return getattr(schedules, HOOK_POINTS_ATTR, 0) >= 1


def check_schedules(schedules: ModuleType) -> None:
    """Raise unless schedules.py has the functions and call signatures the hooks rely on."""
    missing = [
        name
        for name in ("forward_step", "backward_step", *SCHEDULE_ENTRIES)
        if not callable(getattr(schedules, name, None))
    ]
    if missing:
        raise UnsupportedMegatronError(
            f"megatron.core.pipeline_parallel.schedules lacks {', '.join(missing)}; "
            f"TimelyFreeze needs megatron-core {SUPPORTED_SERIES}.x"
        )
    fwd = inspect.signature(schedules.forward_step).parameters
    absent = [k for k in _FORWARD_KWARGS if k not in fwd]
    if absent:
        raise UnsupportedMegatronError(
            f"schedules.forward_step has no {', '.join(absent)} argument; "
            f"TimelyFreeze needs megatron-core {SUPPORTED_SERIES}.x"
        )
    bwd = tuple(inspect.signature(schedules.backward_step).parameters)
    if bwd[: len(_BACKWARD_PARAMS)] != _BACKWARD_PARAMS:
        raise UnsupportedMegatronError(
            f"schedules.backward_step takes {bwd}, expected {_BACKWARD_PARAMS} first; "
            f"TimelyFreeze needs megatron-core {SUPPORTED_SERIES}.x"
        )
    if has_hook_points(schedules) and not {"vp_stage", "microbatch_id"} <= set(bwd):
        raise UnsupportedMegatronError(
            "schedules.py says it has TimelyFreeze hook points but backward_step lacks "
            "vp_stage/microbatch_id; re-apply the patch with `timelyfreeze patch apply`"
        )


# (config attribute, why it is refused). Each path bypasses forward_step/backward_step or
# computes weight gradients outside the backward our hooks bracket (MEGATRON_NOTES.md).
_REFUSED_FLAGS: tuple[tuple[str, str], ...] = (
    (
        "overlap_moe_expert_parallel_comm",
        "its combined 1F1B schedule bypasses forward_step/backward_step",
    ),
    ("delay_wgrad_compute", "it computes weight gradients outside the hooked backward"),
    (
        "defer_embedding_wgrad_compute",
        "its deferred embedding wgrad buffer asserts under frozen weights",
    ),
    ("enable_cuda_graph", "CUDA graphs replay captured kernels and ignore requires_grad"),
    ("external_cuda_graph", "CUDA graphs replay captured kernels and ignore requires_grad"),
    (
        "calculate_per_token_loss",
        "its per-token loss scaling is not combined with the freeze rescale",
    ),
)


def refused_settings(config: Any) -> list[str]:
    """One sentence per setting of a Megatron config that the freeze runtime cannot carry."""
    problems = []
    for attr, why in _REFUSED_FLAGS:
        if getattr(config, attr, False):
            problems.append(f"{attr}=True is not supported with freezing: {why}")
    impl = getattr(config, "cuda_graph_impl", "none")
    if impl not in (None, "none"):
        problems.append(
            f"cuda_graph_impl={impl!r} is not supported with freezing: CUDA graphs replay "
            "captured kernels and ignore requires_grad"
        )
    return problems


def check_config(config: Any) -> None:
    """Raise `UnsupportedMegatronError` (one sentence) if `config` enables a refused path."""
    problems = refused_settings(config)
    if problems:
        raise UnsupportedMegatronError(problems[0] + "; turn it off to use TimelyFreeze")


def check_all(config: Any | None = None) -> ModuleType:
    """Version, schedule signatures and (if given) config; returns the schedules module."""
    check_version()
    from megatron.core.pipeline_parallel import schedules

    check_schedules(schedules)
    if config is not None:
        check_config(config)
    return schedules
