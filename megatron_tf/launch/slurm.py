"""Read a Slurm allocation from the environment and turn it into a multi-node torchrun launch.

The recipe (see `scripts/slurm/*.sbatch`): `srun --ntasks-per-node=1` starts one task per
node; each task runs the same `timelyfreeze ... --launcher slurm` command, which starts torchrun
with `nproc_per_node` workers. All nodes meet at a c10d rendezvous on the first node of the
job's node list, so nothing has to be exported by hand.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from megatron_tf.errors import LaunchError
from megatron_tf.launch.torchrun import DEFAULT_RDZV_PORT, TorchrunLaunch

__all__ = ["SlurmEnv", "expand_nodelist", "read_slurm_env", "slurm_launch"]

# Each key lists the variables that can carry it, preferred first; the first is named in errors.
_NNODES_VARS = ("SLURM_JOB_NUM_NODES", "SLURM_NNODES")
_NODEID_VARS = ("SLURM_NODEID",)
_NODELIST_VARS = ("SLURM_JOB_NODELIST", "SLURM_NODELIST")

_PORT_SPREAD = 1000
"""Jobs get rendezvous ports 29400 + (job id mod 1000), so two jobs sharing a node differ."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SlurmEnv:
    """The part of a Slurm job's environment a multi-node launch needs."""

    nnodes: int
    """Nodes in the job (SLURM_JOB_NUM_NODES)."""
    node_rank: int
    """This node's index in the job, 0-based (SLURM_NODEID)."""
    nodes: tuple[str, ...]
    """Host names of the job's nodes, in Slurm's order (SLURM_JOB_NODELIST expanded)."""
    job_id: str | None
    """SLURM_JOB_ID, used as the rendezvous id and to pick the port; None outside a job."""
    gpus_on_node: int | None
    """SLURM_GPUS_ON_NODE when Slurm sets it (jobs that request GPUs)."""

    @property
    def master_host(self) -> str:
        """The first node: it hosts the c10d rendezvous store."""
        return self.nodes[0]

    @property
    def rdzv_port(self) -> int:
        """A port derived from the job id, the same on every node of the job."""
        if self.job_id is None or not self.job_id.isdigit():
            return DEFAULT_RDZV_PORT
        return DEFAULT_RDZV_PORT + int(self.job_id) % _PORT_SPREAD


def read_slurm_env(environ: Mapping[str, str] | None = None) -> SlurmEnv:
    """Read and cross-check the Slurm variables; a missing or odd one raises LaunchError."""
    env = os.environ if environ is None else environ
    nnodes = _int_var(env, _NNODES_VARS, minimum=1)
    node_rank = _int_var(env, _NODEID_VARS, minimum=0)
    nodes = tuple(expand_nodelist(_var(env, _NODELIST_VARS)))
    if len(nodes) != nnodes:
        raise LaunchError(
            f"Slurm is inconsistent: {_NODELIST_VARS[0]} names {len(nodes)} node(s) but "
            f"{_NNODES_VARS[0]}={nnodes}"
        )
    if node_rank >= nnodes:
        raise LaunchError(
            f"Slurm is inconsistent: SLURM_NODEID={node_rank} but the job has {nnodes} node(s)"
        )
    gpus = env.get("SLURM_GPUS_ON_NODE", "").strip()
    return SlurmEnv(
        nnodes=nnodes,
        node_rank=node_rank,
        nodes=nodes,
        job_id=env.get("SLURM_JOB_ID") or None,
        gpus_on_node=int(gpus) if gpus.isdigit() and int(gpus) > 0 else None,
    )


def slurm_launch(
    slurm: SlurmEnv,
    *,
    nproc_per_node: int | None = None,
    rdzv_endpoint: str | None = None,
    env: Mapping[str, str] | None = None,
) -> TorchrunLaunch:
    """The torchrun launch for this node of the job.

    `nproc_per_node` defaults to SLURM_GPUS_ON_NODE; `rdzv_endpoint` to the first node at
    `slurm.rdzv_port`. The node rank is Slurm's, so node 0 of torchrun is node 0 of the job.
    """
    nproc = nproc_per_node if nproc_per_node is not None else slurm.gpus_on_node
    if nproc is None:
        raise LaunchError(
            "--nproc-per-node is required under --launcher slurm when SLURM_GPUS_ON_NODE is "
            "not set (request GPUs with --gpus-per-node, or pass --nproc-per-node)"
        )
    return TorchrunLaunch(
        nnodes=slurm.nnodes,
        nproc_per_node=nproc,
        rdzv_endpoint=rdzv_endpoint or f"{slurm.master_host}:{slurm.rdzv_port}",
        node_rank=slurm.node_rank,
        standalone=False,
        rdzv_id=f"timelyfreeze-{slurm.job_id}" if slurm.job_id else "timelyfreeze",
        env=dict(env or {}),
    )


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand Slurm's compact host list, e.g. `gpu[01-03,07],login1` into five host names.

    Supports what Slurm emits: comma-separated entries, bracketed ranges with zero padding,
    and several bracket groups in one name (`r[1-2]n[1-2]` gives r1n1 r1n2 r2n1 r2n2).
    """
    text = nodelist.strip()
    if not text:
        raise LaunchError(f"{_NODELIST_VARS[0]} is empty")
    hosts: list[str] = []
    for entry in _split_top_level(text, nodelist):
        hosts.extend(_expand_entry(entry, nodelist))
    return hosts


def _split_top_level(text: str, whole: str) -> list[str]:
    """Split on commas outside brackets."""
    entries, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if depth not in (0, 1):
            raise LaunchError(f"cannot parse Slurm node list {whole!r}: unbalanced brackets")
        if char == "," and depth == 0:
            entries.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise LaunchError(f"cannot parse Slurm node list {whole!r}: unbalanced brackets")
    entries.append(text[start:])
    if any(not entry.strip() for entry in entries):
        raise LaunchError(f"cannot parse Slurm node list {whole!r}: empty entry")
    return [entry.strip() for entry in entries]


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _expand_entry(entry: str, whole: str) -> list[str]:
    """One host pattern: literal parts and bracket groups, expanded as a Cartesian product."""
    parts: list[list[str]] = []
    for literal, group in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", entry):
        if literal:
            parts.append([literal])
        if group:
            parts.append(_expand_group(group, whole))
    return ["".join(choice) for choice in itertools.product(*parts)]


def _expand_group(group: str, whole: str) -> list[str]:
    values: list[str] = []
    for item in group.split(","):
        match = _RANGE.match(item.strip())
        if match is None:
            raise LaunchError(f"cannot parse Slurm node list {whole!r}: bad range {item!r}")
        first, last = match.group(1), match.group(2) or match.group(1)
        if int(last) < int(first):
            raise LaunchError(f"cannot parse Slurm node list {whole!r}: bad range {item!r}")
        width = len(first)  # Slurm pads every number of a range to the width of its start
        values.extend(str(n).zfill(width) for n in range(int(first), int(last) + 1))
    return values


def _var(env: Mapping[str, str], names: tuple[str, ...]) -> str:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    alternatives = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
    raise LaunchError(
        f"--launcher slurm needs the Slurm variable {names[0]}{alternatives}, which is not set: "
        "run inside an allocation, one srun task per node"
    )


def _int_var(env: Mapping[str, str], names: tuple[str, ...], *, minimum: int) -> int:
    value = _var(env, names)
    if not value.isdigit() or int(value) < minimum:
        raise LaunchError(
            f"Slurm variable {names[0]} must be an integer >= {minimum}, got {value!r}"
        )
    return int(value)
