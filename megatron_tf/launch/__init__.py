"""Starting distributed jobs: launch resolution (local or Slurm), torchrun command lines, signals.

Nothing here imports torch or megatron at module level; the workers do that in their own
processes.
"""

from megatron_tf.launch.options import JobFailed, LaunchOptions, launch_job
from megatron_tf.launch.slurm import SlurmEnv, expand_nodelist, read_slurm_env, slurm_launch
from megatron_tf.launch.torchrun import TorchrunLaunch, format_dry_run, run

__all__ = [
    "JobFailed",
    "LaunchOptions",
    "SlurmEnv",
    "TorchrunLaunch",
    "expand_nodelist",
    "format_dry_run",
    "launch_job",
    "read_slurm_env",
    "run",
    "slurm_launch",
]
