"""Make megatron-core 0.19.2 run on CPU processes with gloo (tests, demo, CPU profiling).

megatron-core assumes CUDA in a handful of places (docs/megatron-notes.md, "Running
megatron-core on CPU"). Rather than patching `torch.cuda` for the whole process, each affected
megatron module gets its own view of torch (`module.torch = _CpuTorch()`), which maps
`device="cuda"` and `torch.cuda.current_device()` to the CPU and turns stream/synchronize calls
into no-ops. Code outside those modules (ours, the user's, torch itself) sees the real torch.

`enable_cpu_compat()` is idempotent and does nothing when CUDA is available.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from megatron_tf.megatron import guard

__all__ = ["cpu_compat_enabled", "enable_cpu_compat", "optimizer_step"]

_LOCK = threading.Lock()
_ENABLED = False

# Megatron modules whose `torch` global is replaced by the CPU view, and why.
_PATCHED_MODULES: dict[str, str] = {
    # token counters `torch.zeros([], device="cuda")` in the three schedule functions
    "megatron.core.pipeline_parallel.schedules": "token counters on cuda",
    # receive buffers on torch.cuda.current_device(); torch.cuda.synchronize() after batched p2p
    "megatron.core.pipeline_parallel.p2p_communication": "p2p buffers, synchronize",
    # DDP: start_grad_sync reads torch.cuda.current_stream(); warm-up tensor on cuda
    "megatron.core.distributed.param_and_grad_buffer": "DDP current_stream",
    "megatron.core.distributed.distributed_data_parallel": "DDP communication stream",
    # local attention / dot-product attention: masks and buffers on current_device()
    "megatron.core.transformer.attention": "attention buffers",
    "megatron.core.transformer.dot_product_attention": "attention mask buffer",
    # get_default_causal_mask builds the causal mask with device="cuda" (local softmax path)
    "megatron.core.transformer.utils": "causal mask",
    # GlobalMemoryBuffer.get_tensor allocates on torch.cuda.current_device()
    "megatron.core.utils": "global memory buffer",
    # GPTModel: position ids / inference buffers on current_device()
    "megatron.core.models.gpt.gpt_model": "position ids",
    # sequence-parallel all-gather buffers on current_device()
    "megatron.core.tensor_parallel.layers": "linear buffers",
    "megatron.core.models.common.embeddings.rotary_pos_embedding": "rope frequencies",
    # optimizer and clip_grads create CUDA scalars (found_inf, norms, overflow buffers)
    "megatron.core.optimizer.optimizer": "optimizer scalars",
    "megatron.core.optimizer.clip_grads": "clip_grads scalars",
}


def cpu_compat_enabled() -> bool:
    """True once `enable_cpu_compat()` has patched megatron-core for CPU."""
    return _ENABLED


def enable_cpu_compat() -> bool:
    """Patch megatron-core for CPU when no GPU is present; returns True if it patched.

    Safe to call more than once and from every rank; a no-op on a machine with CUDA.
    """
    global _ENABLED
    if torch.cuda.is_available():
        return False
    with _LOCK:
        if _ENABLED:
            return True
        view = _CpuTorch()
        for name in _PATCHED_MODULES:
            module = importlib.import_module(name)
            module.torch = view  # type: ignore[attr-defined]
        _patch_rng()
        _patch_tied_embedding_init()
        _ENABLED = True
    return True


def _to_cpu(device: Any) -> Any:
    """Map a CUDA device spec (`"cuda"`, `"cuda:0"`, an int index, torch.device) to the CPU."""
    if device is None:
        return None
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


def _device_mapped(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "device" in kwargs:
            kwargs["device"] = _to_cpu(kwargs["device"])
        return fn(*args, **kwargs)

    wrapper.__name__ = getattr(fn, "__name__", "factory")
    wrapper.__doc__ = fn.__doc__
    return wrapper


class _NullEvent:
    """Stands in for torch.cuda.Event: CPU work is synchronous, so there is nothing to wait on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


class _NullStream:
    """Stands in for torch.cuda.Stream on CPU."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, stream: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> _NullEvent:
        return _NullEvent()

    def synchronize(self) -> None:
        pass

    @staticmethod
    def priority_range() -> tuple[int, int]:
        return (0, 0)


class _CpuCuda:
    """`torch.cuda` as the patched megatron modules see it on a CPU machine."""

    Stream = _NullStream
    Event = _NullEvent

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def synchronize(device: Any = None) -> None:
        pass

    @staticmethod
    def current_stream(device: Any = None) -> _NullStream:
        return _NullStream()

    @staticmethod
    def default_stream(device: Any = None) -> _NullStream:
        return _NullStream()

    @staticmethod
    def stream(stream: Any) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    @staticmethod
    def empty_cache() -> None:
        pass

    @staticmethod
    def is_available() -> bool:
        return False


class _CpuTorch:
    """`torch` as the patched megatron modules see it: factories put "cuda" tensors on the CPU."""

    _FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "randn", "rand", "randint")

    def __init__(self) -> None:
        self.cuda = _CpuCuda()
        for name in self._FACTORIES:
            setattr(self, name, _device_mapped(getattr(torch, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def _patch_tied_embedding_init() -> None:
    """LanguageModule.setup_embeddings_and_output_layer moves the tied embedding copy to the GPU.

    megatron/core/models/common/language_module/language_module.py: with pp > 1 and tied
    embeddings, the first and last stage all-reduce their copies at construction time after
    `weight.data = weight.data.cuda()`. On CPU we run the original with the all-reduce step
    turned off for this instance, then do the same all-reduce on the CPU tensor.
    """
    from megatron.core.models.common.language_module.language_module import LanguageModule

    original = LanguageModule.setup_embeddings_and_output_layer

    def setup_embeddings_and_output_layer(self: Any) -> None:
        in_group = self._is_in_embd_group()
        self._is_in_embd_group = lambda: False  # instance attribute shadows the method
        try:
            original(self)
        finally:
            del self._is_in_embd_group
        if (
            in_group
            and torch.distributed.is_initialized()
            and not self.config.init_model_with_meta_device
        ):
            weight = self.shared_embedding_or_output_weight()
            torch.distributed.all_reduce(weight.data, group=self.embd_group)

    LanguageModule.setup_embeddings_and_output_layer = setup_embeddings_and_output_layer


# --- RNG ------------------------------------------------------------------------------------
# megatron/core/tensor_parallel/random.py keeps named "CUDA" RNG states (CudaRNGStatesTracker)
# and activation recompute (CheckpointFunction, CheckpointWithoutOutput) saves and restores the
# CUDA RNG state through `_get_cuda_rng_state` / `_set_cuda_rng_state`. On CPU those become the
# state of a private CPU generator, and the tracker's `fork` runs in place: dropout draws from
# the default CPU generator, which recompute restores with torch.set_rng_state, so a recomputed
# forward still sees the same random numbers as the original one.

_DEVICE_GENERATOR = torch.Generator()


def _get_device_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False):
    return _DEVICE_GENERATOR.get_state()


def _set_device_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False):
    _DEVICE_GENERATOR.set_state(new_state)


def _patch_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    base = mrandom.CudaRNGStatesTracker

    class CpuRNGStatesTracker(base):  # type: ignore[valid-type, misc]
        """Megatron's tracker with CPU states; `fork` does not switch generators on CPU."""

        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self.seeds_.add(seed)
            self.states_[name] = torch.Generator().manual_seed(seed).get_state()

        @contextlib.contextmanager
        def fork(self, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            yield

    mrandom._get_cuda_rng_state = _get_device_rng_state
    mrandom._set_cuda_rng_state = _set_device_rng_state
    # initialize_rng_tracker looks `CudaRNGStatesTracker` up at call time; the subclass keeps
    # get_all_rng_states' isinstance check true.
    mrandom.CudaRNGStatesTracker = CpuRNGStatesTracker
    mrandom.initialize_rng_tracker(force_reset=True)


def optimizer_step(optimizer: Any, clip_grad: float) -> tuple[bool, float | None]:
    """Megatron's optimizer step; on CPU with the gradient clip done here, in the same order.

    megatron-core's `clip_grad_by_total_norm_fp32` asserts `torch.cuda.FloatTensor` grads, so
    on CPU the optimizer is built with `clip_grad=0` and this function makes the calls of
    `MegatronOptimizer.step()` itself, as the guard's table lists them for the installed
    version (`SupportedVersion.optimizer_step`: prepare_grads, i.e. main_grad -> grad; the
    global norm across model-parallel ranks; step_with_ready_grads), scaling the gradients by
    Megatron's coefficient clip / (norm + 1e-6) when it is below 1 before the last call.
    """
    if torch.cuda.is_available():
        ok, grad_norm, _ = optimizer.step()
        return ok, grad_norm

    prepare, norm, step = (getattr(optimizer, name) for name in guard.current().optimizer_step)
    with torch.no_grad():
        if prepare():  # found inf/nan: only fp16 loss scaling reports that
            return False, None
        grad_norm = float(norm())
        coeff = clip_grad / (grad_norm + 1.0e-6)
        if clip_grad > 0 and coeff < 1.0:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is not None:
                        param.grad.mul_(coeff)
        return step(), grad_norm
