"""Apply the freeze policy inside megatron-core's schedules.

Mechanism (docs/megatron-notes.md, "Skipping a weight gradient"): for microbatch m of chunk c,
the frozen weights get `requires_grad=False` for that microbatch's forward AND its backward
(activation recompute reruns the forward inside backward). Megatron's Column/RowParallelLinear
then take `linear_with_frozen_weight` (tensor_parallel/layers.py, `_forward_impl`), which
computes the input gradient only; TransformerEngine records `weight.requires_grad` at forward
time and skips its wgrad GEMM. On the first virtual stage the frozen units are a prefix in
forward order and every parameter below the first trainable unit is switched off with them
(`freeze.units.prefix_closure`), so no activation below it requires grad and autograd stops
there; a microbatch the policy marks "full" has every parameter of the chunk off, so its
output needs no grad and the stock `backward_step` skips the whole backward.

Full activation recompute: megatron-core's reentrant checkpoint (recompute.py,
`checkpointed_forward`; tensor_parallel/random.py, `CheckpointFunction`) backpropagates
through a layer group only if one of its tensor inputs requires grad. Behind a frozen prefix
none does, so the trainable layers would silently get no gradient. The runtime wraps
`tensor_parallel.checkpoint` (looked up at call time by recompute.py) while it is installed:
when a first-stage group holds a parameter that requires grad but its hidden-states input
does not, that input becomes a fresh leaf that requires grad. Autograd stops at the leaf, so
the frozen groups below it still run no backward and no recompute. Under FP8/FP4 (TE's
checkpoint, not wrapped) the embedding's output becomes that leaf instead: frozen decoder
layers then still pass the input gradient down (their wgrad skipped only).

Gradients: with `rescale="mean"` each parameter's gradient is multiplied by M / n_active
(n_active = microbatches that trained it) before any reduction: in a Megatron DDP chunk,
right before its bucket group's data-parallel collective (which also precedes the
tied-embedding all-reduce in `finalize_model_grads`), so both embedding copies are scaled by
their own factor and then summed; in a plain module, at the end of the iteration. Any other
data-parallel wrapper (Megatron-FSDP, torch FSDP/FSDP2, torch DDP) keeps or reduces gradients
where neither rescale reaches, so `install` refuses it (`foreign_data_parallel`).

Megatron DDP with `overlap_grad_reduce=True` dispatches a bucket when all its parameters
reported ready on the last microbatch (param_and_grad_buffer.py, `register_grad_ready`); a
parameter frozen on a chunk's last microbatch never reports, so the runtime reports it after
that backward (as many times as DDP learned to expect in the first iteration).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from megatron_tf.errors import ConfigError, ScheduleMismatchError, UnsupportedMegatronError
from megatron_tf.formats.plan import Plan, check_plan_matches
from megatron_tf.formats.schedule import ScheduleSpec, megatron_schedule
from megatron_tf.freeze.config import FreezeConfig
from megatron_tf.freeze.policy import FreezePolicy, IterationMasks
from megatron_tf.freeze.units import ParamNames, UnitSpec, make_units, prefix_closure
from megatron_tf.megatron import guard, zero_bubble
from megatron_tf.megatron.frozen_linear import install_bias_grad_fix, remove_bias_grad_fix
from megatron_tf.megatron.hooks import (
    HookHandle,
    ScheduleObserver,
    current_num_microbatches,
    install_hooks,
    weight_grads_deferred,
)

__all__ = ["FreezeRuntime", "Ratios", "chunk_units", "foreign_data_parallel"]

type Ratios = Plan | Sequence[Sequence[Sequence[float]]]
"""What the runtime freezes by: a plan (checked against the run's schedule) or the bare
`ratios[rank][chunk][microbatch]` array in [0, 1]."""


def _unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP / Float16Module wrappers (they keep it in `.module`)."""
    while hasattr(chunk, "module") and isinstance(chunk.module, torch.nn.Module):
        chunk = chunk.module
    return chunk


def _transformer_impl(chunks: Sequence[torch.nn.Module]) -> str:
    """ "transformer_engine" when a chunk holds TransformerEngine modules, else "local": the
    config's own `transformer_impl` keeps its default whichever spec built the layers."""
    te = ("transformer_engine", "megatron.core.extensions.transformer_engine")
    for chunk in chunks:
        if any(type(m).__module__.startswith(te) for m in chunk.modules()):
            return "transformer_engine"
    return "local"


def _is_ddp(chunk: torch.nn.Module) -> bool:
    return hasattr(chunk, "param_to_bucket_group") and hasattr(chunk, "bucket_groups")


_FSDP_CLASSES = {
    # megatron/core/distributed/fsdp/mcore_fsdp_adapter.py (core 0.19: one class; main: V1, V2
    # behind a factory of the old name), torch_fully_sharded_data_parallel.py, and torch's FSDP1.
    "FullyShardedDataParallel": "Megatron-FSDP or torch FSDP (FullyShardedDataParallel)",
    "FullyShardedDataParallelV1": "Megatron-FSDP (FullyShardedDataParallelV1)",
    "FullyShardedDataParallelV2": "Megatron-FSDP (FullyShardedDataParallelV2)",
    "TorchFullyShardedDataParallel": "torch FSDP2 (TorchFullyShardedDataParallel)",
    # torch/distributed/fsdp/_fully_shard/_fully_shard.py: `fully_shard` swaps a module's class
    # for one that also derives from FSDPModule.
    "FSDPModule": "torch FSDP2 (fully_shard)",
}


def _mro_names(obj: object) -> list[str]:
    return [c.__name__ for c in type(obj).__mro__]


def foreign_data_parallel(chunk: torch.nn.Module) -> str | None:
    """The data-parallel wrapper of `chunk` the runtime does not reach, or None.

    The runtime rescales gradients in two places only: Megatron DDP's `main_grad` buffers,
    before their bucket's collective, and `p.grad` of an unwrapped module at the iteration's
    end. Under any other wrapper (Megatron-FSDP, torch FSDP/FSDP2, torch DDP) gradients live or
    are reduced where that rescale never happens, so the run would silently train on unscaled
    partial sums. Checked by type name, so no optional package has to import."""
    module = chunk
    while True:
        names = _mro_names(module)
        for name in names:
            if name in _FSDP_CLASSES:
                return _FSDP_CLASSES[name]
        if getattr(getattr(module, "ddp_config", None), "use_megatron_fsdp", False):
            return "Megatron-FSDP (ddp_config.use_megatron_fsdp)"
        if not _is_ddp(module) and any("DataParallel" in n for n in names):
            return f"{type(module).__module__}.{type(module).__qualname__}"
        inner = getattr(module, "module", None)
        if not isinstance(inner, torch.nn.Module):
            break
        module = inner
    for sub in module.modules():
        if "FSDPModule" in _mro_names(sub):
            return _FSDP_CLASSES["FSDPModule"]
    for name, p in module.named_parameters():
        if "DTensor" in _mro_names(p) or "DTensor" in _mro_names(p.data):
            return f"sharded DTensor parameters (torch FSDP2; {name} is a DTensor)"
    return None


def chunk_units(
    chunk: torch.nn.Module, table: ParamNames | None = None
) -> tuple[list[UnitSpec], list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(units, their parameters, all trainable parameters) of one model chunk.

    A unit's default cost is its wgrad work per token: numel for a linear weight, one row
    (the embedding dim) for an embedding, whose backward only scatters each token's gradient
    into its row (tensor_parallel/layers.py, VocabParallelEmbedding). By numel the word
    embedding would look like a quarter of a small first stage and skew its prefix.

    `table`: the parameter names of the megatron-core in use (default: the guard's entry)."""
    table = table or guard.current().param_names
    named = [(n, p) for n, p in _unwrap(chunk).named_parameters() if p.requires_grad]
    sizes = [(n, p.shape[-1] if table.classify(n) == "embedding" else p.numel()) for n, p in named]
    units = make_units(sizes, table)
    by_name = dict(named)
    return units, [by_name[u.name] for u in units], [p for _, p in named]


def _rank_ratios(ratios: Ratios, spec: ScheduleSpec, rank: int) -> list[list[float]]:
    """This rank's [chunk][microbatch] ratios from a Plan or a [rank][chunk][mb] array."""

    if isinstance(ratios, Plan):
        check_plan_matches(ratios, spec)
        ratios = ratios.ratios
    table = [[list(map(float, row)) for row in per_rank] for per_rank in ratios]
    shape = (len(table), {len(r) for r in table}, {len(row) for r in table for row in r})
    if shape != (spec.pp, {spec.vpp}, {spec.microbatches}):
        raise ScheduleMismatchError(
            f"ratios have shape [rank={shape[0]}][chunk={sorted(shape[1])}]"
            f"[microbatch={sorted(shape[2])}] but this run is {spec.describe()} "
            f"(expected [{spec.pp}][{spec.vpp}][{spec.microbatches}])"
        )
    return table[rank]


def _group_trains(function: Any) -> bool | None:
    """Whether the layer group that recompute.py's `custom(start, end)` closure runs holds a
    parameter that requires grad now (the runtime toggled the frozen ones off before this
    forward); None when the closure is not that shape (then the caller plays safe)."""
    code, closure = getattr(function, "__code__", None), getattr(function, "__closure__", None)
    if code is None or not closure:
        return None
    cells = dict(zip(code.co_freevars, closure, strict=True))
    try:
        start, end = cells["start"].cell_contents, cells["end"].cell_contents
        layers = cells["self"].cell_contents.layers[start:end]
    except (KeyError, ValueError, AttributeError, TypeError):
        return None
    return any(p.requires_grad for layer in layers for p in layer.parameters())


class FreezeRuntime(ScheduleObserver):
    """Freezes the planned weights per (chunk, microbatch) in this rank's model chunks."""

    def __init__(
        self,
        model_chunks: Sequence[torch.nn.Module],
        ratios: Ratios,
        spec: ScheduleSpec,
        config: FreezeConfig | None = None,
        *,
        rank: int | None = None,
    ) -> None:
        """`ratios` is a `formats.plan.Plan` or `ratios[rank][chunk][microbatch]`; `rank` is
        the pipeline rank (default: Megatron's parallel_state)."""
        if rank is None:
            from megatron.core import parallel_state

            rank = parallel_state.get_pipeline_model_parallel_rank()
        self.chunks = list(model_chunks)
        self.spec = spec
        self.rank = rank
        self.config = config or FreezeConfig()
        if len(self.chunks) != spec.vpp:
            raise ScheduleMismatchError(
                f"this rank has {len(self.chunks)} model chunk(s) but the schedule "
                f"{spec.describe()} has vpp={spec.vpp}"
            )
        self._table = guard.current().param_names
        found = [chunk_units(c, self._table) for c in self.chunks]
        self.units = [f[0] for f in found]
        self.unit_params = [f[1] for f in found]
        self.all_params = [f[2] for f in found]
        self._first_chunk = 0 if rank == 0 else None
        self._names = [{p: n for n, p in _unwrap(c).named_parameters()} for c in self.chunks]
        self._leaf_needed: list[bool] = [False] * spec.microbatches  # first chunk, per mb
        self._leaf_now = False
        self._embedding_hook: Any = None
        self._checkpoint_patch: tuple[Any, Any] | None = None
        self._bias_fix = False
        self.policy = FreezePolicy(
            units=self.units,
            ratios=_rank_ratios(ratios, spec, rank),
            rank=rank,
            first_stage_chunk=self._first_chunk,
            config=self.config,
        )
        self.masks: IterationMasks | None = None
        self._toggle: list[list[list[torch.nn.Parameter]]] = []
        self._scale: dict[torch.nn.Parameter, float] = {}
        self._scaled_groups: set[int] = set()
        self._handle: HookHandle | None = None
        self._bucket_patches: list[Any] = []
        self._in_iteration = False
        self._frozen_cost = [0.0] * len(self.chunks)  # summed over iterations and microbatches
        self._planned_cost = [0] * len(self.chunks)  # microbatches counted

    # -- installation ---------------------------------------------------------------------

    def install(self) -> FreezeRuntime:
        """Check megatron-core and the run, register on the schedules, wrap DDP buckets.

        Idempotent: installing an installed runtime does nothing."""
        if self._handle is not None:
            return self
        from megatron.core.utils import get_model_config

        config = get_model_config(self.chunks[0])
        guard.check_all(config, _transformer_impl(self.chunks))
        for c, chunk in enumerate(self.chunks):
            wrapper = foreign_data_parallel(chunk)
            if wrapper is not None:
                raise UnsupportedMegatronError(
                    f"model chunk {c} is wrapped in {wrapper}, whose gradients the freeze "
                    "runtime does not rescale; wrap the model in Megatron's "
                    "DistributedDataParallel (megatron.core.distributed) to use TimelyFreeze"
                )
        for chunk in self.chunks:  # the backstop of the pre-launch scan: DDP's own settings
            if _is_ddp(chunk) and getattr(chunk, "ddp_config", None) is not None:
                guard.check_config(chunk.ddp_config)
        self._check_layout(config)
        install_bias_grad_fix()
        self._bias_fix = True
        self._install_recompute_leaf(config)
        self._handle = install_hooks(self)
        for chunk in self.chunks:
            if _is_ddp(chunk):
                for group in chunk.bucket_groups + chunk.expert_parallel_bucket_groups:
                    self._wrap_bucket_group(group)
        return self

    def remove(self) -> None:
        """Unregister and restore Megatron's objects; parameters end trainable as found."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._bias_fix:  # the last runtime out puts LinearWithFrozenWeight.backward back
            remove_bias_grad_fix()
            self._bias_fix = False
        for group, previous in reversed(self._bucket_patches):
            if previous is None:
                del group.start_grad_sync  # the instance attribute shadowed the class method
            else:  # another runtime (e.g. an in-job profiler) wrapped it before us
                group.start_grad_sync = previous
        self._bucket_patches.clear()
        if self._embedding_hook is not None:
            self._embedding_hook.remove()
            self._embedding_hook = None
        if self._checkpoint_patch is not None:
            module, previous = self._checkpoint_patch
            module.checkpoint = previous
            self._checkpoint_patch = None
        for params in self.all_params:
            for p in params:
                p.requires_grad_(True)

    def __enter__(self) -> FreezeRuntime:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _check_layout(self, config: Any) -> None:
        from megatron.core import parallel_state

        pp = parallel_state.get_pipeline_model_parallel_world_size()
        try:
            found = megatron_schedule(
                pp=pp,
                vpp=len(self.chunks),
                microbatches=self.spec.microbatches,  # the schedule call checks M itself
                group_size=getattr(config, "microbatch_group_size_per_vp_stage", None),
                drop_interleaved_only=True,
            )
            found = zero_bubble.running_spec(found)  # a zero-bubble schedule stands in for 1F1B
        except ConfigError as exc:
            found, why = None, str(exc)
        if found is None or not found.same_compute_order(self.spec):
            runs = (
                f"runs {found.describe()}"
                if found is not None
                else f"(pp={pp}, vpp={len(self.chunks)}) runs no such schedule: {why}"
            )
            raise ScheduleMismatchError(
                f"the freeze plan is for {self.spec.describe()} but the model {runs}"
            )

    def _install_recompute_leaf(self, config: Any) -> None:
        """Under full recompute, give the first trainable layer group behind a frozen prefix
        a grad-requiring input (see the module docstring); otherwise nothing to do."""
        if self._first_chunk is None or getattr(config, "recompute_granularity", None) != "full":
            return
        if getattr(config, "fp8", None) or getattr(config, "fp4", None):
            self._install_embedding_leaf()
            return
        from megatron.core import tensor_parallel

        previous = tensor_parallel.checkpoint

        def checkpoint(function: Any, distribute_saved_activations: bool, *args: Any) -> Any:
            if (
                self._leaf_now
                and args
                and isinstance(args[0], torch.Tensor)
                and not args[0].requires_grad
                and torch.is_grad_enabled()
                and _group_trains(function) is not False
            ):
                args = (args[0].detach().requires_grad_(True), *args[1:])
            return previous(function, distribute_saved_activations, *args)

        tensor_parallel.checkpoint = checkpoint
        self._checkpoint_patch = (tensor_parallel, previous)

    def _install_embedding_leaf(self) -> None:
        embedding = getattr(_unwrap(self.chunks[self._first_chunk or 0]), "embedding", None)
        if embedding is None:
            return

        def leaf(_module: Any, _args: Any, output: Any) -> Any:
            if self._leaf_now and isinstance(output, torch.Tensor) and torch.is_grad_enabled():
                return output.detach().requires_grad_(True)
            return None

        self._embedding_hook = embedding.register_forward_hook(leaf)

    def _wrap_bucket_group(self, group: Any) -> None:
        previous = group.__dict__.get("start_grad_sync")
        original = group.start_grad_sync  # bound method of the class, or an earlier wrapper

        def start_grad_sync(*args: Any, **kwargs: Any) -> Any:
            self._scale_group(group)
            return original(*args, **kwargs)

        group.start_grad_sync = start_grad_sync
        self._bucket_patches.append((group, previous))

    # -- iteration bookkeeping ------------------------------------------------------------

    def start_iteration(self, iteration: int) -> IterationMasks:
        """Decide this iteration's frozen units (call before the schedule, or let it auto-run)."""
        masks = self.policy.plan(iteration)
        self.masks = masks
        m = self.spec.microbatches
        self._toggle = []
        self._scale = {}
        for c, params in enumerate(self.unit_params):
            per_mb = []
            for mb in range(m):
                if masks.full[c][mb]:
                    per_mb.append(list(self.all_params[c]))
                elif c == self._first_chunk and masks.frozen[c][mb]:
                    per_mb.append(self._prefix_params(c, masks.frozen[c][mb]))
                else:
                    per_mb.append([params[i] for i in sorted(masks.frozen[c][mb])])
            self._toggle.append(per_mb)
            if c == self._first_chunk:
                # A frozen prefix that leaves something trainable (not "full").
                self._leaf_needed = [
                    bool(masks.frozen[c][mb]) and not masks.full[c][mb] for mb in range(m)
                ]
            self._account(c, masks)
            if self.config.rescale == "mean":
                self._scale.update(self._chunk_scales(per_mb, self.all_params[c], m))
        self._scaled_groups = set()
        self._in_iteration = True
        return masks

    def _prefix_params(self, chunk: int, frozen: frozenset[int]) -> list[torch.nn.Parameter]:
        """The frozen prefix's units and every parameter used before the first trainable one."""
        params = self.all_params[chunk]
        names = [self._names[chunk][p] for p in params]
        keep = set(prefix_closure(names, self.units[chunk], frozen, self._table))
        return [p for p, n in zip(params, names, strict=True) if n in keep]

    @staticmethod
    def _chunk_scales(
        per_mb: list[list[torch.nn.Parameter]], params: list[torch.nn.Parameter], m: int
    ) -> dict[torch.nn.Parameter, float]:
        frozen_on: dict[torch.nn.Parameter, int] = {}
        for frozen in per_mb:
            for p in frozen:
                frozen_on[p] = frozen_on.get(p, 0) + 1
        scales = {}
        for p, n_frozen in frozen_on.items():
            active = m - n_frozen
            if active > 0:  # 0 only in measurement runs (coverage off): nothing to scale
                scales[p] = m / active
        return scales

    def _account(self, chunk: int, masks: IterationMasks) -> None:
        units = self.units[chunk]
        total = sum(u.cost for u in units) or 1.0
        for frozen in masks.frozen[chunk]:
            self._frozen_cost[chunk] += sum(units[i].cost for i in frozen) / total
            self._planned_cost[chunk] += 1

    def finish_iteration(self) -> None:
        """Rescale what no DDP collective rescaled; idempotent within an iteration."""
        if not self._in_iteration:
            return
        self._in_iteration = False
        if not self._scale:
            return
        for c, chunk in enumerate(self.chunks):
            if _is_ddp(chunk):
                for group in chunk.bucket_groups + chunk.expert_parallel_bucket_groups:
                    self._scale_group(group)
            else:
                with torch.no_grad():
                    for p in self.all_params[c]:
                        scale = self._scale.get(p)
                        if scale is not None and p.grad is not None:
                            p.grad.mul_(scale)

    def _scale_group(self, group: Any) -> None:
        """Multiply each parameter's main_grad by M / n_active once per iteration."""
        if id(group) in self._scaled_groups or not self._in_iteration:
            return
        self._scaled_groups.add(id(group))
        if not self._scale:
            return
        with torch.no_grad():
            for p in group.params:
                scale = self._scale.get(p)
                if scale is not None:
                    p.main_grad.mul_(scale)

    # -- observer hooks -------------------------------------------------------------------

    def iteration_start(self) -> None:
        found = current_num_microbatches()
        if found is not None and found != self.spec.microbatches:
            raise ScheduleMismatchError(
                f"the freeze plan is for {self.spec.microbatches} microbatches per iteration "
                f"but the schedule was called with num_microbatches={found}"
            )
        if not self._in_iteration:
            self.start_iteration(self.policy.next_iteration)

    def iteration_end(self) -> None:
        self.finish_iteration()

    def _set(self, chunk: int, microbatch: int, value: bool) -> None:
        for p in self._toggle[chunk][microbatch]:
            p.requires_grad_(value)

    def before_forward(self, chunk: int, microbatch: int) -> None:
        self._set(chunk, microbatch, False)
        self._leaf_now = chunk == self._first_chunk and self._leaf_needed[microbatch]

    def after_forward(self, chunk: int, microbatch: int) -> None:
        self._set(chunk, microbatch, True)
        self._leaf_now = False

    def before_backward(self, chunk: int, microbatch: int) -> None:
        self._set(chunk, microbatch, False)

    def after_backward(self, chunk: int, microbatch: int) -> None:
        self._set(chunk, microbatch, True)
        if microbatch == self.spec.microbatches - 1 and not weight_grads_deferred():
            self._report_ready(chunk, self._toggle[chunk][microbatch])

    def after_weight_grad(self, chunk: int, microbatch: int) -> None:
        # A split-backward schedule: earlier microbatches' W may run after the last B, so a
        # parameter is complete only after the chunk's last W (megatron/zero_bubble.py).
        if microbatch == self.spec.microbatches - 1:
            self._report_ready(chunk, self._toggle[chunk][microbatch])

    def _report_ready(self, chunk: int, frozen: list[torch.nn.Parameter]) -> None:
        """Tell DDP that parameters frozen on the last microbatch have their gradient."""
        ddp = self.chunks[chunk]
        if not frozen or not _is_ddp(ddp) or not ddp.ddp_config.overlap_grad_reduce:
            return
        force = getattr(ddp, "force_all_reduce", False)
        for p in frozen:
            group = ddp.param_to_bucket_group.get(p)
            if group is None or not group.is_last_microbatch:
                continue
            expected = group.golden_per_param_grad_ready_counts.get(p, 1)
            for _ in range(expected - group.per_param_grad_ready_counts.get(p, 0)):
                group.register_grad_ready(p, force)

    # -- plan, checkpoint, reporting --------------------------------------------------------

    def set_ratios(self, ratios: Ratios) -> None:
        """Re-plan within the job: new ratios from the next iteration on."""
        self.policy.set_ratios(_rank_ratios(ratios, self.spec, self.rank))

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.config = self.policy.config

    def realised_ratio_per_chunk(self) -> list[float]:
        """Mean frozen share of each chunk's unit cost over every microbatch planned so far."""
        return [
            f / n if n else 0.0 for f, n in zip(self._frozen_cost, self._planned_cost, strict=True)
        ]

    def frozen_names(self, chunk: int, microbatch: int) -> list[str]:
        """Names of the units frozen on (chunk, microbatch) in the current iteration."""
        if self.masks is None:
            return []
        if self.masks.full[chunk][microbatch]:
            return [u.name for u in self.units[chunk]]
        return [self.units[chunk][i].name for i in sorted(self.masks.frozen[chunk][microbatch])]

    def frozen_param_names(self, chunk: int, microbatch: int) -> list[str]:
        """Names of every parameter switched off on (chunk, microbatch): the units, and on the
        first virtual stage the norms, biases and embeddings of the frozen prefix too."""
        if not self._toggle:
            return []
        return [self._names[chunk][p] for p in self._toggle[chunk][microbatch]]
