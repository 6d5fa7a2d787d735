"""CPU trial mode: run a stock Megatron-LM `pretrain_gpt.py` on a machine without a GPU.

Megatron-LM's training side assumes CUDA throughout (initialize, training, timers,
checkpointing, the rerun state machine, clip_grads, `Tensor.cuda()` in the script itself).
This module lets the *exact* command a user will run on GPUs run first on a laptop with a tiny
model (gloo, `--transformer-impl local`), and lets this project's tests run the real script.

How: every `megatron.*` module, whenever it is imported, gets its own view of torch
(`module.torch`) in which the CPU plays the part of the one CUDA device: `torch.cuda` reports
one available device, its synchronize/streams/events/memory calls are no-ops, its RNG state is
a private CPU generator (the one activation recompute already uses on CPU, see `compat.py`),
and factories and `torch.device` map `"cuda"`, `"cuda:N"` and device indices to the CPU.
Process-wide, only three methods change, each one that would raise without CUDA: `Tensor.cuda`
and `Module.cuda` return the object unchanged, and `Tensor.type()` without arguments spells a
CPU tensor's type as its CUDA twin (`torch.cuda.FloatTensor`), which megatron-core's
clip_grads asserts.

It is never active when CUDA is available: `enable_cpu_trial()` then does nothing and returns
False. It is turned on by `TIMELYFREEZE_CPU_TRIAL=1` (`--cpu-trial` on the CLI).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys
import threading
from types import ModuleType
from typing import Any

import torch

from megatron_tf.megatron import compat

__all__ = ["CPU_TRIAL_ENV", "cpu_trial_enabled", "enable_cpu_trial"]

CPU_TRIAL_ENV = "TIMELYFREEZE_CPU_TRIAL"
"""Set to 1 on the ranks to run the Megatron-LM script in CPU trial mode."""

_LOCK = threading.Lock()
_ENABLED = False


class _TrialCuda(compat._CpuCuda):
    """`torch.cuda` as megatron modules see it in trial mode: one device, the CPU."""

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def is_initialized() -> bool:
        return True

    @staticmethod
    def set_device(device: Any) -> None:
        pass

    @staticmethod
    def set_stream(stream: Any) -> None:
        pass

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        return "cpu (TimelyFreeze CPU trial)"

    @staticmethod
    def get_device_capability(device: Any = None) -> tuple[int, int]:
        return (0, 0)

    @staticmethod
    def get_rng_state(device: Any = "cuda") -> torch.Tensor:
        return compat._DEVICE_GENERATOR.get_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device: Any = "cuda") -> None:
        compat._DEVICE_GENERATOR.set_state(state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        compat._DEVICE_GENERATOR.manual_seed(int(seed))

    manual_seed_all = manual_seed

    @staticmethod
    def memory_allocated(device: Any = None) -> int:
        return 0

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    @staticmethod
    def memory_stats(device: Any = None) -> dict[str, int]:
        return {}

    @staticmethod
    def reset_peak_memory_stats(device: Any = None) -> None:
        pass

    @staticmethod
    def mem_get_info(device: Any = None) -> tuple[int, int]:
        return (0, 0)

    @staticmethod
    def device(device: Any) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    @staticmethod
    def nvtx_range_push(msg: str) -> None:
        pass


class _DeviceMeta(type):
    """`isinstance(x, view.device)` keeps meaning `isinstance(x, torch.device)`."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, torch.device)


class _TrialDevice(metaclass=_DeviceMeta):
    """`torch.device("cuda:N")` in trial mode: the CPU."""

    def __new__(cls, *args: Any, **kwargs: Any) -> torch.device:  # type: ignore[misc]
        mapped = compat._to_cpu(args[0]) if args else None
        if isinstance(mapped, torch.device) and mapped.type == "cpu":
            return mapped
        return torch.device(*args, **kwargs)


class _TrialTorch(compat._CpuTorch):
    """`torch` as megatron modules see it in trial mode."""

    _FACTORIES = (*compat._CpuTorch._FACTORIES, "empty_like", "zeros_like", "ones_like")

    def __init__(self) -> None:
        super().__init__()
        self.cuda = _TrialCuda()
        self.device = _TrialDevice


_VIEW: _TrialTorch | None = None


def _give_view(module: ModuleType) -> None:
    """Replace the real torch in one megatron module's globals by the trial view."""
    assert _VIEW is not None
    namespace = getattr(module, "__dict__", None)
    seen = namespace.get("torch") if namespace is not None else None
    # The real torch, or the narrower view compat.py gave a few megatron.core modules.
    if seen is torch or (isinstance(seen, compat._CpuTorch) and seen is not _VIEW):
        module.torch = _VIEW  # type: ignore[attr-defined]


class _ViewLoader(importlib.abc.Loader):
    """Runs the real loader, then hands the new module the trial view."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _give_view(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _ViewFinder(importlib.abc.MetaPathFinder):
    """Finds `megatron.*` modules as usual, with a loader that gives them the trial view."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if not fullname.startswith("megatron."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ViewLoader(spec.loader)
                return spec
        return None


def _cuda_identity(self: Any, *args: Any, **kwargs: Any) -> Any:
    """`Tensor.cuda()` / `Module.cuda()` in trial mode: already on "the device"."""
    return self


_REAL_TYPE = torch.Tensor.type


def _trial_type(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """`Tensor.type()` without arguments names a CPU tensor's CUDA twin."""
    result = _REAL_TYPE(self, *args, **kwargs)
    if not args and not kwargs and self.device.type == "cpu" and result.startswith("torch."):
        return "torch.cuda." + result[len("torch.") :]
    return result


def cpu_trial_enabled() -> bool:
    """True once `enable_cpu_trial()` turned trial mode on in this process."""
    return _ENABLED


def enable_cpu_trial() -> bool:
    """Turn on trial mode for this process; returns False (and does nothing) with CUDA."""
    global _ENABLED, _VIEW
    if torch.cuda.is_available():
        return False
    with _LOCK:
        if _ENABLED:
            return True
        compat.enable_cpu_compat()
        _VIEW = _TrialTorch()
        for name, module in list(sys.modules.items()):
            if name.startswith("megatron.") and module is not None:
                _give_view(module)
        sys.meta_path.insert(0, _ViewFinder())
        torch.Tensor.cuda = _cuda_identity  # type: ignore[method-assign]
        torch.nn.Module.cuda = _cuda_identity  # type: ignore[method-assign]
        torch.Tensor.type = _trial_type  # type: ignore[method-assign]
        _ENABLED = True
    return True
