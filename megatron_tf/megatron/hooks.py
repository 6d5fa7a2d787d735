"""The one place that hooks into megatron-core's pipeline schedules.

Two routes, same observer calls:

* runtime wrap (stock megatron-core 0.19.x and 0.20.x, see `guard.SUPPORTED_VERSIONS`): the
  schedules look the module-level `forward_step`, `backward_step` and the schedule entry points
  up by name at call time (`megatron/core/pipeline_parallel/schedules.py`), so replacing those
  module attributes is enough. `backward_step` gets no ids (0.19.2, 0.20.0): the forward
  wrapper tags the forward output tensor with (chunk, microbatch) as a Python attribute, which
  survives Megatron's `deallocate_output_tensor` (it only swaps `.data`), and the backward
  wrapper reads it.
* patched tree (`patches/megatron-core-<version>/*.patch`): schedules.py calls the objects in its
  `schedule_hooks` list around forward and backward with explicit ids; we register one
  dispatcher there instead of wrapping.

P2P calls are timed by wrapping the methods of `P2PCommunicator` in both routes. With
`overlap_p2p_comm` those calls only post their transfers and return the requests; the schedule
waits on them later, so each returned request is wrapped to report its `wait()` too. Observers
only hear about training iterations (`forward_only=False`) unless `include_forward_only=True`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from megatron_tf.megatron import guard

__all__ = [
    "HookHandle",
    "ScheduleObserver",
    "current_num_microbatches",
    "install_hooks",
    "installed_route",
    "set_schedule_entry",
    "set_weight_grads_deferred",
    "tensor_ids",
    "weight_grad_event",
    "weight_grads_deferred",
]

P2P_CALLS: tuple[str, ...] = (
    "recv_forward",
    "recv_backward",
    "send_forward",
    "send_backward",
    "send_forward_recv_backward",
    "send_backward_recv_forward",
    "send_forward_recv_forward",
    "send_backward_recv_backward",
    "send_forward_backward_recv_forward_backward",
)
"""`P2PCommunicator` methods the schedules call (pipeline_parallel/p2p_communication.py)."""

_IDS_ATTR = "_timelyfreeze_ids"


class ScheduleObserver:
    """No-op base: subclass and override what you need.

    `chunk` is the model chunk index on this rank (0 for 1F1B), `microbatch` the microbatch id
    within the iteration, as Megatron numbers them.
    """

    def iteration_start(self) -> None:
        """A training schedule (forward_backward_func) is about to run."""

    def before_forward(self, chunk: int, microbatch: int) -> None:
        """Right before `forward_step` for (chunk, microbatch)."""

    def after_forward(self, chunk: int, microbatch: int) -> None:
        """Right after `forward_step` returned its output for (chunk, microbatch)."""

    def before_backward(self, chunk: int, microbatch: int) -> None:
        """Right before `backward_step` for (chunk, microbatch)."""

    def after_backward(self, chunk: int, microbatch: int) -> None:
        """Right after `backward_step` for (chunk, microbatch) returned."""

    def before_weight_grad(self, chunk: int, microbatch: int) -> None:
        """Right before the W (deferred weight gradients) of (chunk, microbatch); only
        split-backward schedules (`megatron/zero_bubble.py`) run W on its own."""

    def after_weight_grad(self, chunk: int, microbatch: int) -> None:
        """Right after that W returned: its gradients are in `main_grad` / `param.grad`."""

    def before_p2p(self, call: str) -> None:
        """Before a `P2PCommunicator` call, e.g. "send_forward_recv_backward"."""

    def after_p2p(self, call: str) -> None:
        """After that call returned (blocking calls have completed their transfer)."""

    def before_wait(self, request: str) -> None:
        """overlap_p2p_comm: before the schedule waits on a posted transfer, e.g. "recv_prev"."""

    def after_wait(self, request: str) -> None:
        """After that wait returned (the transfer completed)."""

    def iteration_end(self) -> None:
        """The schedule returned (gradients finalized if Megatron finalizes them)."""


_EVENTS = (
    "iteration_start",
    "before_forward",
    "after_forward",
    "before_backward",
    "after_backward",
    "before_weight_grad",
    "after_weight_grad",
    "before_p2p",
    "after_p2p",
    "before_wait",
    "after_wait",
    "iteration_end",
)


def _overrides(observer: ScheduleObserver, event: str) -> bool:
    return getattr(type(observer), event, None) is not getattr(ScheduleObserver, event)


class _Dispatcher:
    """Fans events out to observers; holds the per-event lists so a no-op costs one check."""

    def __init__(self) -> None:
        self.observers: list[ScheduleObserver] = []
        self.by_event: dict[str, list[Callable[..., None]]] = {e: [] for e in _EVENTS}
        self.include_forward_only = 0  # number of handles that asked for forward-only runs
        self.active = False  # inside a schedule call whose events observers hear
        self.depth = 0
        self.num_microbatches: int | None = None  # of the schedule call now running
        self.weight_grads_deferred = False  # the running schedule runs W on its own

    def rebuild(self) -> None:
        for event in _EVENTS:
            calls = [getattr(o, event) for o in self.observers if _overrides(o, event)]
            # after_* run in reverse order so observers nest like context managers.
            if event.startswith("after_") or event == "iteration_end":
                calls.reverse()
            self.by_event[event] = calls

    def emit(self, event: str, *args: Any) -> None:
        for call in self.by_event[event]:
            call(*args)

    # Patched-tree hook protocol (schedules.schedule_hooks entries): the patch passes
    # forward_only to iteration_start/iteration_end and explicit ids to forward/backward.
    def schedule_start(self, forward_only: bool, num_microbatches: int | None = None) -> None:
        self.depth += 1
        if self.depth == 1:
            self.num_microbatches = num_microbatches
            self.active = (not forward_only) or self.include_forward_only > 0
            if self.active:
                try:
                    self.emit("iteration_start")
                except BaseException:
                    # An observer refused the run: leave no half-open iteration behind.
                    self.depth, self.active, self.num_microbatches = 0, False, None
                    raise

    def schedule_end(self, forward_only: bool) -> None:
        self.depth -= 1
        if self.depth == 0:
            if self.active:
                self.emit("iteration_end")
            self.active = False
            self.num_microbatches = None

    def compute(self, event: str, chunk: int | None, microbatch: int | None) -> None:
        if self.active and microbatch is not None:
            self.emit(event, chunk or 0, microbatch)


_DISPATCH = _Dispatcher()


class _PatchedHookAdapter:
    """The object registered in a patched schedules.py's `schedule_hooks` list."""

    def iteration_start(self, forward_only: bool, num_microbatches: int | None = None) -> None:
        # The patched schedules cannot bracket their body in try/finally: a schedule that
        # raised never reported its end, so a new start always opens a fresh iteration.
        _DISPATCH.depth = 0
        _DISPATCH.schedule_start(forward_only, num_microbatches)

    def iteration_end(self, forward_only: bool, num_microbatches: int | None = None) -> None:
        _DISPATCH.schedule_end(forward_only)

    def before_forward(self, chunk: int | None, microbatch: int | None) -> None:
        _DISPATCH.compute("before_forward", chunk, microbatch)

    def after_forward(self, chunk: int | None, microbatch: int | None) -> None:
        _DISPATCH.compute("after_forward", chunk, microbatch)

    def before_backward(self, chunk: int | None, microbatch: int | None) -> None:
        _DISPATCH.compute("before_backward", chunk, microbatch)

    def after_backward(self, chunk: int | None, microbatch: int | None) -> None:
        _DISPATCH.compute("after_backward", chunk, microbatch)


def _tag(output: Any, ids: tuple[int, int]) -> None:
    """Attach (chunk, microbatch) to the forward output tensor(s)."""
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        for item in output:
            _tag(item, ids)
        return
    if output is not None and hasattr(output, "requires_grad"):
        setattr(output, _IDS_ATTR, ids)


def tensor_ids(output: Any) -> tuple[int, int] | None:
    """The (chunk, microbatch) a forward output was tagged with, or None."""
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        for item in output:
            found = tensor_ids(item)
            if found is not None:
                return found
        return None
    return getattr(output, _IDS_ATTR, None)


def _arg_getter(fn: Callable[..., Any], name: str) -> Callable[[tuple, dict], Any]:
    """Read argument `name` of a call to `fn`, whether passed by keyword or by position."""
    position = list(inspect.signature(fn).parameters).index(name)

    def get(args: tuple, kwargs: dict) -> Any:
        if name in kwargs:
            return kwargs[name]
        return args[position] if len(args) > position else None

    return get


def _wrap_forward_step(original: Callable[..., Any]) -> Callable[..., Any]:
    get_chunk = _arg_getter(original, "vp_stage")
    get_mb = _arg_getter(original, "current_microbatch")

    @functools.wraps(original)
    def forward_step(*args: Any, **kwargs: Any) -> Any:
        if not _DISPATCH.active:
            return original(*args, **kwargs)
        chunk, mb = get_chunk(args, kwargs) or 0, get_mb(args, kwargs)
        if mb is None:  # a caller outside the schedules: nothing to attribute it to
            return original(*args, **kwargs)
        _DISPATCH.emit("before_forward", chunk, mb)
        result = original(*args, **kwargs)
        _tag(result[0], (chunk, mb))
        _DISPATCH.emit("after_forward", chunk, mb)
        return result

    return forward_step


def _wrap_backward_step(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def backward_step(
        input_tensor: Any, output_tensor: Any, output_tensor_grad: Any, config: Any
    ) -> Any:
        ids = tensor_ids(output_tensor) if _DISPATCH.active else None
        if ids is None:
            return original(input_tensor, output_tensor, output_tensor_grad, config)
        _DISPATCH.emit("before_backward", *ids)
        result = original(input_tensor, output_tensor, output_tensor_grad, config)
        _DISPATCH.emit("after_backward", *ids)
        return result

    return backward_step


def _wrap_entry(name: str, stock: Callable[..., Any]) -> Callable[..., Any]:
    """The schedule entry `name` with iteration bookkeeping; it calls whatever runs that entry
    now (`set_schedule_entry`'s replacement, else megatron-core's own function)."""

    @functools.wraps(stock)
    def entry(*args: Any, **kwargs: Any) -> Any:
        forward_only = bool(kwargs.get("forward_only", False))
        _DISPATCH.schedule_start(forward_only, kwargs.get("num_microbatches"))
        try:
            return _ENTRIES.current(name)(*args, **kwargs)
        finally:
            _DISPATCH.schedule_end(forward_only)

    return entry


class _EntryOverrides:
    """Schedule entry points replaced by TimelyFreeze's own schedules (a zero-bubble schedule
    runs where `get_forward_backward_func()` would return 1F1B). One owner of the module
    attributes, so the hooks' wrap and a replacement compose in any install order."""

    def __init__(self) -> None:
        self.stock: dict[str, Callable[..., Any]] = {}
        self.replaced: dict[str, Callable[..., Any]] = {}

    def remember(self, schedules: Any, name: str) -> Callable[..., Any]:
        if name not in self.stock:
            self.stock[name] = getattr(schedules, name)
        return self.stock[name]

    def current(self, name: str) -> Callable[..., Any]:
        return self.replaced.get(name) or self.stock[name]

    def publish(self, schedules: Any, name: str) -> None:
        """Set the module attribute: the hooks' wrapper while they are installed on the
        runtime route, else the current function itself."""
        if _INSTALLATION.route == "runtime":
            setattr(schedules, name, _INSTALLATION.entries[name])
        else:
            setattr(schedules, name, self.current(name))


_ENTRIES = _EntryOverrides()


def set_schedule_entry(name: str, function: Callable[..., Any] | None) -> Callable[..., Any]:
    """Run `function` wherever megatron-core's schedule entry `name` runs (None: restore).

    `get_forward_backward_func()` looks the entries up in `schedules.py` when called, so a
    function fetched after this returns the replacement; installed hooks keep observing it.
    Returns megatron-core's own function for that entry."""
    from megatron.core.pipeline_parallel import schedules

    stock = _ENTRIES.remember(schedules, name)
    if function is None:
        _ENTRIES.replaced.pop(name, None)
    else:
        _ENTRIES.replaced[name] = function
    _ENTRIES.publish(schedules, name)
    return stock


def weight_grad_event(before: bool, chunk: int, microbatch: int) -> None:
    """A split-backward schedule reports its W of (chunk, microbatch) to the observers."""
    _DISPATCH.compute("before_weight_grad" if before else "after_weight_grad", chunk, microbatch)


def weight_grads_deferred() -> bool:
    """True while a schedule that runs W on its own is running (gradients of a microbatch are
    complete after its W, not after its backward)."""
    return _DISPATCH.weight_grads_deferred


def set_weight_grads_deferred(value: bool) -> None:
    """Set by split-backward schedules for the duration of their run."""
    _DISPATCH.weight_grads_deferred = value


def _wrap_p2p(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not _DISPATCH.active:
            return original(*args, **kwargs)
        _DISPATCH.emit("before_p2p", name)
        result = original(*args, **kwargs)
        _DISPATCH.emit("after_p2p", name)
        return _observe_waits(result)

    return call


class _ObservedRequest:
    """A posted transfer's request whose `wait()` the observers hear about; anything else is
    the request's own."""

    __slots__ = ("_name", "_request")

    def __init__(self, name: str, request: Any) -> None:
        self._name = name
        self._request = request

    def wait(self, *args: Any, **kwargs: Any) -> Any:
        if not _DISPATCH.active:
            return self._request.wait(*args, **kwargs)
        _DISPATCH.emit("before_wait", self._name)
        try:
            return self._request.wait(*args, **kwargs)
        finally:
            _DISPATCH.emit("after_wait", self._name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._request, attr)


def _observe_waits(result: Any) -> Any:
    """With overlap_p2p_comm a call returns its requests as {"recv_prev": req, ...} next to
    the tensors (p2p_communication.py `_communicate(wait_on_reqs=False)`); wrap each one."""
    if not isinstance(result, tuple) or not any(isinstance(x, dict) and x for x in result):
        return result
    return tuple(
        {k: _ObservedRequest(k, req) for k, req in x.items()}
        if isinstance(x, dict) and all(hasattr(req, "wait") for req in x.values())
        else x
        for x in result
    )


class _Installation:
    """What was replaced, so removal restores megatron-core exactly."""

    def __init__(self) -> None:
        self.restore: list[tuple[Any, str, Any]] = []
        self.route = ""
        self.entries: dict[str, Callable[..., Any]] = {}  # the wrapped schedule entries
        self.schedules: Any = None

    def replace(self, owner: Any, name: str, new: Any) -> None:
        self.restore.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    def install(self) -> None:
        schedules = guard.check_all()
        from megatron.core.pipeline_parallel import p2p_communication

        if guard.has_hook_points(schedules):
            adapter = _PatchedHookAdapter()
            schedules.schedule_hooks.append(adapter)
            self.restore.append((schedules.schedule_hooks, "__remove__", adapter))
            self.route = "patched"
        else:
            self.replace(schedules, "forward_step", _wrap_forward_step(schedules.forward_step))
            self.replace(schedules, "backward_step", _wrap_backward_step(schedules.backward_step))
            self.schedules = schedules
            self.entries = {
                name: _wrap_entry(name, _ENTRIES.remember(schedules, name))
                for name in guard.SCHEDULE_ENTRIES
            }
            self.route = "runtime"
            for name in guard.SCHEDULE_ENTRIES:
                _ENTRIES.publish(schedules, name)
        comm = p2p_communication.P2PCommunicator
        for name in P2P_CALLS:
            if name in comm.__dict__:
                self.replace(comm, name, _wrap_p2p(name, comm.__dict__[name]))

    def uninstall(self) -> None:
        for owner, name, old in reversed(self.restore):
            if name == "__remove__":
                if old in owner:
                    owner.remove(old)
            else:
                setattr(owner, name, old)
        self.restore.clear()
        self.route = ""
        if self.entries:
            for name in self.entries:  # back to the current function, replaced or stock
                _ENTRIES.publish(self.schedules, name)
            self.entries = {}
            self.schedules = None


_INSTALLATION = _Installation()


class HookHandle:
    """Keeps observers registered until `.remove()` (or the end of a `with` block)."""

    def __init__(self, observers: Sequence[ScheduleObserver], include_forward_only: bool) -> None:
        self._observers = list(observers)
        self._include_forward_only = include_forward_only
        self._removed = False

    @property
    def route(self) -> str:
        """ "runtime" (wrapped functions) or "patched" (explicit hook points)."""
        return _INSTALLATION.route

    def remove(self) -> None:
        """Unregister this handle's observers; the last removal restores megatron-core."""
        if self._removed:
            return
        self._removed = True
        for obs in self._observers:
            _DISPATCH.observers.remove(obs)
        _DISPATCH.include_forward_only -= int(self._include_forward_only)
        _DISPATCH.rebuild()
        if not _DISPATCH.observers:
            _INSTALLATION.uninstall()

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def install_hooks(*observers: ScheduleObserver, include_forward_only: bool = False) -> HookHandle:
    """Register observers on megatron-core's schedules (installing the hooks on first use).

    Raises `UnsupportedMegatronError` when the installed megatron-core is not one the hooks
    understand. Call `get_forward_backward_func()` after installing: a function fetched before
    is the unwrapped one on the runtime route.
    """
    if not _INSTALLATION.route:
        _INSTALLATION.install()
    _DISPATCH.observers.extend(observers)
    _DISPATCH.include_forward_only += int(include_forward_only)
    _DISPATCH.rebuild()
    return HookHandle(observers, include_forward_only)


def current_num_microbatches() -> int | None:
    """`num_microbatches` of the schedule call now running (None outside one)."""
    return _DISPATCH.num_microbatches


def installed_route() -> str:
    """ "runtime", "patched", or "" when no hooks are installed."""
    return _INSTALLATION.route
