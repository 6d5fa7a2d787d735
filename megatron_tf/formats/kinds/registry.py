"""The registry of schedule kinds: what `ScheduleSpec.kind` may name.

A kind is one record: its name, its action kinds, its validation rules (the one place the
fields of a `ScheduleSpec` of that kind are checked), its per-rank program generator and the
metadata the model reads (whether it has chunks, whether it runs the weight gradient as its
own action). `ScheduleSpec`, the order module, the DAG, the LP and the CLI's help all read the
registry, so a new kind is one module in this package plus its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from megatron_tf.errors import ConfigError
from megatron_tf.formats.kinds.program import ActionKind, Recorder

__all__ = ["SpecFields", "ScheduleKind", "register", "get_kind", "kind_names"]


class SpecFields(Protocol):
    """The fields of a `ScheduleSpec` a kind's rules and generator read."""

    @property
    def kind(self) -> str: ...
    @property
    def pp(self) -> int: ...
    @property
    def vpp(self) -> int: ...
    @property
    def microbatches(self) -> int: ...
    @property
    def group_size(self) -> int: ...
    @property
    def overlap_p2p_comm(self) -> bool: ...
    def virtual_stage(self, rank: int, chunk: int) -> int: ...


@dataclass(frozen=True, slots=True)
class ScheduleKind:
    """One schedule kind, as registered."""

    name: str
    """What `--schedule` and the `kind` field of profile.json and plan.json say."""
    summary: str
    """One line for help texts: the schedule function it follows."""
    actions: tuple[ActionKind, ...]
    """The compute actions of one (chunk, microbatch): (F, B), or (F, B, W) where the weight
    gradient is its own action."""
    chunked: bool
    """Whether it runs several model chunks per rank (vpp, the group size)."""
    check: Callable[[SpecFields], int]
    """Raises ConfigError (naming the flag and Megatron's rule) for fields this kind rejects;
    returns the group size to store (0 in the spec means the kind's default)."""
    program: Callable[[SpecFields, int], Recorder]
    """The program of one rank: its compute actions and P2P calls, in order."""

    @property
    def splits_backward(self) -> bool:
        """The weight gradient is its own W action (not inside B)."""
        return ActionKind.W in self.actions

    @property
    def freezable_action(self) -> ActionKind:
        """The action whose work freezing removes: W where it is its own action, else B."""
        return ActionKind.W if self.splits_backward else ActionKind.B


_KINDS: dict[str, ScheduleKind] = {}


def register(kind: ScheduleKind) -> ScheduleKind:
    """Add `kind` to the registry (once per name)."""
    if kind.name in _KINDS:
        raise ValueError(f"schedule kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


def kind_names() -> tuple[str, ...]:
    """Registered kinds, by name."""
    return tuple(sorted(_KINDS))


def get_kind(name: str) -> ScheduleKind:
    """The registered kind `name`; ConfigError naming `--schedule` and the choices otherwise."""
    found = _KINDS.get(name) if isinstance(name, str) else None
    if found is None:
        raise ConfigError(
            f"unknown schedule {name!r} (--schedule): expected one of {', '.join(kind_names())}"
        )
    return found
