"""Starting distributed jobs: torchrun command lines, Slurm allocations, Megatron-LM scripts.

Nothing here imports torch or megatron at module level; the workers do that in their own
processes.
"""

from megatron_tf.launch.slurm import SlurmEnv, expand_nodelist, read_slurm_env, slurm_launch
from megatron_tf.launch.torchrun import TorchrunLaunch, format_dry_run, run

__all__ = [
    "SlurmEnv",
    "TorchrunLaunch",
    "expand_nodelist",
    "format_dry_run",
    "read_slurm_env",
    "run",
    "slurm_launch",
]
