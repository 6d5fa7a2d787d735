"""Schedule kinds: each kind's rules, per-rank program and metadata, in one registry.

Importing the package registers the built-in kinds (one module each); `get_kind(name)` and
`kind_names()` are how the rest of TimelyFreeze finds them. No torch, no megatron: the
generators copy the schedule functions' control flow without tensors.
"""

from megatron_tf.formats.kinds import interleaved, one_f_one_b, zb_h1
from megatron_tf.formats.kinds.program import ActionKind
from megatron_tf.formats.kinds.registry import (
    ScheduleKind,
    SpecFields,
    get_kind,
    kind_names,
    register,
)

__all__ = [
    "ActionKind",
    "ScheduleKind",
    "SpecFields",
    "get_kind",
    "kind_names",
    "register",
    "interleaved",
    "one_f_one_b",
    "zb_h1",
]
