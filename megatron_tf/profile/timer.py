"""A schedule observer that times every forward, backward and P2P call of an iteration.

On CPU it reads `time.perf_counter()` at each hook. On GPU it records CUDA events on the
current stream and reads them once, at the end of the iteration, so measuring adds no
synchronisation inside the schedule (a host clock would only time kernel launches).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from megatron_tf.formats.kinds.program import ActionKind
from megatron_tf.formats.profile import WAIT_PREFIX
from megatron_tf.megatron.hooks import ScheduleObserver
from megatron_tf.profile.samples import RawAction

__all__ = ["ActionTime", "IterationTiming", "TimingObserver"]


@dataclass(slots=True)
class ActionTime:
    """One timed call, seconds from the iteration start."""

    kind: str
    """An `ActionKind` ("F", "B", "W"), the P2P call's name, or WAIT_PREFIX + the request
    waited on."""
    chunk: int
    microbatch: int
    start: float
    end: float

    def as_tuple(self) -> RawAction:
        return (self.kind, self.chunk, self.microbatch, self.start, self.end)


@dataclass(slots=True)
class IterationTiming:
    """What one rank saw in one iteration."""

    wall: float
    """Seconds from the iteration start (right after a barrier) to the schedule's return."""
    actions: list[ActionTime]


class _HostClock:
    def __init__(self) -> None:
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def mark(self) -> float:
        return time.perf_counter() - self.t0

    def resolve(self, mark: Any) -> float:
        return float(mark)


class _CudaClock:
    """CUDA events on the current stream, resolved after one synchronize at iteration end."""

    def __init__(self) -> None:
        self.origin: torch.cuda.Event | None = None

    def start(self) -> None:
        self.origin = torch.cuda.Event(enable_timing=True)
        self.origin.record()

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def resolve(self, mark: Any) -> float:
        assert self.origin is not None
        return self.origin.elapsed_time(mark) / 1000.0  # ms -> seconds


class TimingObserver(ScheduleObserver):
    """Collects an `IterationTiming` per schedule call while `recording` is True."""

    def __init__(self, *, use_cuda: bool | None = None) -> None:
        use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
        self._clock: _HostClock | _CudaClock = _CudaClock() if use_cuda else _HostClock()
        self._use_cuda = use_cuda
        self.recording = True
        self.iterations: list[IterationTiming] = []
        self._open: dict[tuple[str, int, int], Any] = {}
        self._p2p: list[tuple[str, Any]] = []
        self._waits: dict[str, Any] = {}
        self._marks: list[tuple[str, int, int, Any, Any]] = []
        self._active = False

    def begin(self) -> None:
        """Set the iteration's time origin (call right after the barrier before the schedule)."""
        self._clock.start()
        self._marks = []
        self._open = {}
        self._p2p = []
        self._waits = {}
        self._active = self.recording

    def iteration_start(self) -> None:
        if not self._active and self.recording:
            self.begin()  # no explicit begin(): the schedule's start is the origin

    def _open_mark(self, key: tuple[str, int, int]) -> None:
        if self._active:
            self._open[key] = self._clock.mark()

    def _close_mark(self, key: tuple[str, int, int]) -> None:
        if self._active and key in self._open:
            self._marks.append((*key, self._open.pop(key), self._clock.mark()))

    def before_forward(self, chunk: int, microbatch: int) -> None:
        self._open_mark((ActionKind.F, chunk, microbatch))

    def after_forward(self, chunk: int, microbatch: int) -> None:
        self._close_mark((ActionKind.F, chunk, microbatch))

    def before_backward(self, chunk: int, microbatch: int) -> None:
        self._open_mark((ActionKind.B, chunk, microbatch))

    def after_backward(self, chunk: int, microbatch: int) -> None:
        self._close_mark((ActionKind.B, chunk, microbatch))

    def before_weight_grad(self, chunk: int, microbatch: int) -> None:
        """Right before a split-backward schedule's W (weight gradient) of (chunk, microbatch)."""
        self._open_mark((ActionKind.W, chunk, microbatch))

    def after_weight_grad(self, chunk: int, microbatch: int) -> None:
        self._close_mark((ActionKind.W, chunk, microbatch))

    def before_p2p(self, call: str) -> None:
        if self._active:
            self._p2p.append((call, self._clock.mark()))

    def after_p2p(self, call: str) -> None:
        if self._active and self._p2p:
            name, start = self._p2p.pop()
            self._marks.append((name, -1, -1, start, self._clock.mark()))

    def before_wait(self, request: str) -> None:
        if self._active:
            self._waits[request] = self._clock.mark()

    def after_wait(self, request: str) -> None:
        if self._active and request in self._waits:
            start = self._waits.pop(request)
            self._marks.append((f"{WAIT_PREFIX}{request}", -1, -1, start, self._clock.mark()))

    def iteration_end(self) -> None:
        if not self._active:
            return
        end = self._clock.mark()
        if self._use_cuda:
            torch.cuda.synchronize()  # once per iteration, after the schedule returned
        resolve = self._clock.resolve
        actions = [
            ActionTime(kind, chunk, mb, resolve(s), resolve(e))
            for kind, chunk, mb, s, e in self._marks
        ]
        actions.sort(key=lambda a: a.start)
        self.iterations.append(IterationTiming(wall=resolve(end), actions=actions))
        self._active = False

    def take(self) -> list[IterationTiming]:
        """The iterations recorded since the last call, and forget them."""
        out, self.iterations = self.iterations, []
        return out
