"""Freeze policy: which weight tensors to freeze for each (iteration, chunk, microbatch).

Framework-light (no torch, no megatron): the runtime in `megatron_tf.megatron.freeze_runtime`
applies the decisions to a model.
"""

from megatron_tf.freeze.config import FreezeConfig
from megatron_tf.freeze.policy import FreezePolicy, IterationMasks, validate_ratios
from megatron_tf.freeze.units import ParamNames, UnitSpec, make_units, prefix_closure

__all__ = [
    "FreezeConfig",
    "FreezePolicy",
    "IterationMasks",
    "ParamNames",
    "UnitSpec",
    "make_units",
    "prefix_closure",
    "validate_ratios",
]
