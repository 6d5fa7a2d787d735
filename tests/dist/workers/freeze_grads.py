"""Freeze-runtime gradients against an independent reference, on megatron-core's real schedules.

Reference: a second, identically initialised copy of the model (Megatron DDP, no overlap, no
finalize) runs the stock schedule once per microbatch j with every other microbatch's loss
multiplied by 0, which leaves exactly microbatch j's contribution g_j (scaled 1/M, as in a
normal run) in each parameter's main_grad. For a freeze run, the gradient the optimizer sees
is then, per parameter p with active microbatches A(p):
    sum_{j in A(p)} g_j(p) * (M / |A(p)| for rescale="mean", 1 for "none"),
averaged over data-parallel replicas and, for the tied word embedding, summed over its first-
and last-stage copies (what Megatron's finalize_model_grads does). The test worker emulates
those two reductions on the expected values with torch.distributed collectives.

Which parameters count as frozen on a (chunk, microbatch) is derived here, not read from the
runtime: the frozen units it reports, and on the first virtual stage also every parameter of
a module the forward calls before the first trainable unit's module (the prefix is frozen
whole: norms, biases, position embedding; the call order is recorded by forward pre-hooks).
The worker checks that the runtime switched off exactly that set.

Also recorded: which parameters accumulated a gradient during which (chunk, microbatch)
backward (frozen ones must not), which backward_steps ran autograd at all (a fully frozen
microbatch on the first virtual stage must not), which modules' outputs required grad in the
forward and received a gradient in the backward (a frozen prefix must get none: no backward
ran for it), and whether all-zero ratios are bitwise stock.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from _results import save_result

from megatron_tf.freeze.config import FreezeConfig
from megatron_tf.megatron.distributed import destroy_distributed, init_distributed
from megatron_tf.megatron.freeze_runtime import FreezeRuntime
from megatron_tf.megatron.hooks import ScheduleObserver, installed_route
from megatron_tf.formats.layout import ModelConfig, ParallelConfig
from megatron_tf.model.gpt import build_model_chunks, transformer_config
from megatron_tf.model.step import forward_step as gpt_forward_step
from megatron_tf.model.synthetic import synthetic_batch

Grads = dict[tuple[int, str], torch.Tensor]  # (chunk, parameter name) -> gradient


def ratios_for(pp: int, vpp: int, m: int) -> list[list[list[float]]]:
    """Varied ratios: full freezes (incl. on the last microbatch), partial, none."""
    patterns = [[1.0, 0.5, 0.0, 1.0], [0.3, 0.6, 0.0, 1.0], [0.7, 0.0, 0.4, 0.9]]
    return [
        [[patterns[(r + c) % 3][k % 4] for k in range(m)] for c in range(vpp)] for r in range(pp)
    ]


def make_forward_step(chunks: list[torch.nn.Module], keep: int | None) -> Any:
    """gpt_forward_step whose loss is multiplied by 0 except on microbatch `keep`."""
    consumed = [0] * len(chunks)
    index = {id(c): i for i, c in enumerate(chunks)}

    def forward_step(data_iterator: Iterator, model: torch.nn.Module) -> Any:
        c = index[id(model)]
        mb = consumed[c]
        consumed[c] += 1
        output, loss_fn = gpt_forward_step(data_iterator, model)
        if keep is None or mb == keep:
            return output, loss_fn

        def zeroed(out: torch.Tensor, fn: Any = loss_fn) -> Any:
            loss, report = fn(out)
            return loss * 0.0, report

        return output, zeroed

    return forward_step


def batches(model: ModelConfig, m: int, dp_rank: int) -> Iterator:
    # Data differ across data-parallel replicas (as in real training), not across iterations,
    # so one set of per-microbatch reference gradients serves every iteration.
    for mb in range(m):
        yield synthetic_batch(model, iteration=1000 * dp_rank, microbatch=mb)


def run_schedule(chunks, model: ModelConfig, parallel: ParallelConfig, keep=None) -> None:
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    dp_rank = parallel_state.get_data_parallel_rank()
    for chunk in chunks:
        chunk.zero_grad_buffer()
    iterators = [batches(model, parallel.microbatches, dp_rank) for _ in chunks]
    get_forward_backward_func()(
        forward_step_func=make_forward_step(chunks, keep),
        data_iterator=iterators if len(chunks) > 1 else iterators[0],
        model=chunks,
        num_microbatches=parallel.microbatches,
        seq_length=model.seq_length,
        micro_batch_size=model.micro_batch_size,
        forward_only=False,
    )


def named(chunks) -> list[tuple[int, str, torch.nn.Parameter]]:
    from megatron_tf.megatron.freeze_runtime import _unwrap

    return [(c, n, p) for c, ch in enumerate(chunks) for n, p in _unwrap(ch).named_parameters()]


def grads(chunks) -> Grads:
    return {(c, n): p.main_grad.detach().clone() for c, n, p in named(chunks)}


def build(model: ModelConfig, parallel: ParallelConfig, *, overlap: bool, finalize: bool):
    from megatron.core.distributed import DistributedDataParallelConfig, finalize_model_grads

    ddp = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlap,
        use_distributed_optimizer=False,
        bucket_size=4000 if overlap else None,  # several buckets: dispatch order matters
    )
    config = transformer_config(model, parallel)
    chunks = build_model_chunks(model, parallel, wrap_ddp=True, ddp_config=ddp, config=config)
    config.no_sync_func = [c.no_sync for c in chunks] if len(chunks) > 1 else chunks[0].no_sync
    config.finalize_model_grads_func = finalize_model_grads if finalize else None
    return chunks


def reference(model: ModelConfig, parallel: ParallelConfig) -> list[Grads]:
    """Per-microbatch local gradients g_j (scaled 1/M as in a full run)."""
    chunks = build(model, parallel, overlap=False, finalize=False)
    out = []
    for j in range(parallel.microbatches):
        run_schedule(chunks, model, parallel, keep=j)
        out.append(grads(chunks))
    return out


def param_modules(chunks) -> dict[tuple[int, str], str]:
    """(chunk, parameter name) -> name of the module that owns it directly."""
    from megatron_tf.megatron.freeze_runtime import _unwrap

    out = {}
    for c, chunk in enumerate(chunks):
        for mod_name, module in _unwrap(chunk).named_modules():
            for p_name, _ in module.named_parameters(recurse=False):
                out[(c, f"{mod_name}.{p_name}" if mod_name else p_name)] = mod_name
    return out


def frozen_sets(
    runtime: FreezeRuntime, chunks, call_order: dict[int, list[str]], first: int | None
) -> tuple[dict[tuple[int, int], set[str]], dict[tuple[int, int], dict[str, Any]]]:
    """Per (chunk, mb): the parameters that must be frozen, and on the first virtual stage
    the prefix's modules and the first trainable unit's module (its boundary)."""
    owner = param_modules(chunks)
    m = runtime.spec.microbatches
    sets, prefix = {}, {}
    for c in range(len(chunks)):
        names = [n for cc, n, _ in named(chunks) if cc == c]
        position = {mod: i for i, mod in enumerate(call_order.get(c, []))}

        def pos(name: str, c: int = c, position: dict[str, int] = position) -> tuple[int, int]:
            # modules in forward call order; inside one, a weight's GEMM comes before its bias
            return (position.get(owner[(c, name)], 1 << 30), int(name.endswith("bias")))

        unit_names = [u.name for u in runtime.units[c]]
        for j in range(m):
            units = set(runtime.frozen_names(c, j))
            if runtime.masks.full[c][j]:
                sets[(c, j)] = set(names)
            elif c != first or not units:
                sets[(c, j)] = units
            else:
                boundary = min((u for u in unit_names if u not in units), key=pos)
                frozen = units | {n for n in names if pos(n) < pos(boundary)}
                sets[(c, j)] = frozen
                modules = {owner[(c, n)] for n in names}
                prefix[(c, j)] = {
                    "is_prefix": all(pos(u) < pos(boundary) for u in units),
                    "frozen_modules": sorted(
                        mod
                        for mod in modules
                        if all(n in frozen for n in names if owner[(c, n)] == mod)
                    ),
                    "boundary_module": owner[(c, boundary)],
                }
    return sets, prefix


def expected(runtime: FreezeRuntime, ref: list[Grads], chunks, rescale: str, frozen: dict) -> Grads:
    """Combine per the semantics, then emulate finalize_model_grads' reductions."""
    from megatron.core import parallel_state

    m = len(ref)
    out = {}
    for c, name, _p in named(chunks):
        active = [j for j in range(m) if name not in frozen[(c, j)]]
        total = torch.zeros_like(ref[0][(c, name)])
        for j in active:
            total += ref[j][(c, name)]
        if rescale == "mean" and active:
            total *= m / len(active)
        dp = parallel_state.get_data_parallel_world_size()
        if dp > 1:
            dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
            total /= dp
        out[(c, name)] = total
    # Tied word embedding: first-stage embedding + last-stage output layer, summed.
    for c, name, p in named(chunks):
        vp_stage = c if len(chunks) > 1 else None
        in_group = parallel_state.is_rank_in_embedding_group(
            ignore_virtual=False, vp_stage=vp_stage
        )
        if getattr(p, "shared_embedding", False) and in_group:
            group = parallel_state.get_embedding_group()
            if group.size() > 1:
                dist.all_reduce(out[(c, name)], group=group)
    return out


class Recorder(ScheduleObserver):
    """Which parameters accumulated a gradient, and whether autograd ran, per backward; the
    forward call order of modules; which module outputs required grad / got a gradient."""

    def __init__(self, chunks) -> None:
        from megatron.core.pipeline_parallel import schedules

        from megatron_tf.megatron.freeze_runtime import _unwrap

        self.current: tuple[int, int] | None = None
        self.forward: tuple[int, int] | None = None
        self.accumulated: set[tuple[int, int, str]] = set()
        self.autograd_ran: dict[tuple[int, int], bool] = {}
        self.p2p_calls: list[str] = []
        self.weight_grads: list[tuple[int, int]] = []
        self.call_order: dict[int, list[str]] = {}
        self.out_requires_grad: dict[tuple[int, int, str], bool] = {}
        self.grad_seen: set[tuple[int, int, str]] = set()
        self.recomputed: set[tuple[int, int, str]] = set()
        self.handles = [
            p.register_post_accumulate_grad_hook(partial(self._acc, c, n))
            for c, n, p in named(chunks)
        ]
        # Module hooks register after the runtime's (installed first), so they see the
        # output the forward really passes on.
        for c, chunk in enumerate(chunks):
            for mod_name, module in _unwrap(chunk).named_modules():
                if any(True for _ in module.parameters(recurse=False)):
                    self.handles.append(
                        module.register_forward_pre_hook(partial(self._enter, c, mod_name))
                    )
                    self.handles.append(
                        module.register_forward_hook(partial(self._leave, c, mod_name))
                    )
        self._schedules = schedules
        self._orig = schedules.custom_backward

        def counting(*a: Any, **k: Any) -> Any:
            if self.current is not None:
                self.autograd_ran[self.current] = True
            return self._orig(*a, **k)

        schedules.custom_backward = counting

    def _enter(self, c: int, mod_name: str, _module: Any, _args: Any) -> None:
        if self.current is not None:  # a forward inside a backward: activation recompute
            self.recomputed.add((*self.current, mod_name))
        order = self.call_order.setdefault(c, [])
        if mod_name not in order:
            order.append(mod_name)

    def _leave(self, c: int, mod_name: str, _module: Any, _args: Any, output: Any) -> None:
        # Only the schedule's forward (not a recompute inside backward) counts.
        if self.forward is None or self.forward[0] != c:
            return
        out = output[0] if isinstance(output, tuple) else output
        if not isinstance(out, torch.Tensor):
            return
        key = (*self.forward, mod_name)
        self.out_requires_grad[key] = out.requires_grad
        if out.requires_grad:
            out.register_hook(lambda _g, key=key: self.grad_seen.add(key))

    def before_forward(self, chunk: int, microbatch: int) -> None:
        self.forward = (chunk, microbatch)

    def after_forward(self, chunk: int, microbatch: int) -> None:
        self.forward = None

    def _acc(self, c: int, name: str, _p: Any) -> None:
        if self.current is not None:
            self.accumulated.add((*self.current, name))

    def before_backward(self, chunk: int, microbatch: int) -> None:
        self.current = (chunk, microbatch)
        self.autograd_ran[self.current] = False

    def after_backward(self, chunk: int, microbatch: int) -> None:
        self.current = None

    def before_weight_grad(self, chunk: int, microbatch: int) -> None:
        # A zero-bubble schedule's W: the weight gradients of that microbatch land here.
        self.current = (chunk, microbatch)
        self.weight_grads.append((chunk, microbatch))

    def after_weight_grad(self, chunk: int, microbatch: int) -> None:
        self.current = None

    def before_p2p(self, call: str) -> None:
        self.p2p_calls.append(call)

    def close(self) -> None:
        self._schedules.custom_backward = self._orig
        for h in self.handles:
            h.remove()


def rel_errors(got: Grads, want: Grads) -> dict[str, float]:
    out = {}
    for key, w in want.items():
        scale = max(float(w.norm()), 1e-30)
        out[f"{key[0]}:{key[1]}"] = float((got[key] - w).norm()) / scale
    return out



def _case_model(parallel: ParallelConfig, case: dict[str, Any]) -> ModelConfig:
    """The tiny GPT every case trains: `layers_per_stage` layers per virtual stage."""
    return ModelConfig(
        num_layers=parallel.pp * parallel.vpp * case.get("layers_per_stage", 1),
        hidden_size=16,
        num_attention_heads=2,
        seq_length=8,
        vocab_size=64,
        micro_batch_size=1,
        recompute=case.get("recompute", "none"),
        tie_embeddings=case.get("tied", True),
    )

def run_case(
    case: dict[str, Any], parallel: ParallelConfig, refs: dict[tuple, list[Grads]]
) -> dict[str, Any]:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.layers import LinearWithFrozenWeight

    from megatron_tf.megatron.hooks import install_hooks

    model = _case_model(parallel, case)
    key = (model.tie_embeddings, model.num_layers)
    if key not in refs:
        refs[key] = reference(model, parallel)
    ref = refs[key]
    chunks = build(model, parallel, overlap=case.get("overlap", False), finalize=True)
    spec = parallel.schedule_spec()
    zero_bubble = None
    if case.get("zb"):
        from megatron_tf.megatron.zero_bubble import ZeroBubbleSchedule

        zero_bubble = ZeroBubbleSchedule("zb-h1").install()
        spec = dataclasses.replace(spec, kind="zb-h1", group_size=0)
    ratios = case.get("ratios") or ratios_for(parallel.pp, parallel.vpp, parallel.microbatches)
    cfg = FreezeConfig(seed=7, rescale=case.get("rescale", "mean"))
    result: dict[str, Any] = {"iterations": [], "recompute": model.recompute}
    if case.get("zero_ratios"):
        run_schedule(chunks, model, parallel)
        stock = grads(chunks)
        ratios = [[[0.0] * parallel.microbatches] * parallel.vpp] * parallel.pp
    runtime = FreezeRuntime(chunks, ratios, spec, cfg)
    if case.get("no_leaf"):
        # Negative control: without the grad-requiring leaf behind a frozen prefix, the
        # reentrant checkpoint drops the gradients of trainable layers behind it.
        runtime._install_recompute_leaf = lambda config: None  # type: ignore[method-assign]
    if case.get("leak"):
        # Negative control: frozen in forward only. Under recompute the forward rerun inside
        # backward then builds wgrads again, and the comparison must catch it.
        runtime.before_backward = lambda chunk, microbatch: None  # type: ignore[method-assign]
    stock_backward = vars(LinearWithFrozenWeight)["backward"]
    runtime.install()
    result["backward_replaced"] = vars(LinearWithFrozenWeight)["backward"] is not stock_backward
    recorder = Recorder(chunks)
    rec_handle = install_hooks(recorder)
    result["route"] = installed_route()
    try:
        for it in range(case.get("iters", 1)):
            recorder.accumulated.clear()
            recorder.autograd_ran.clear()
            recorder.p2p_calls.clear()
            recorder.out_requires_grad.clear()
            recorder.grad_seen.clear()
            recorder.recomputed.clear()
            recorder.weight_grads.clear()
            runtime.start_iteration(it)
            run_schedule(chunks, model, parallel)
            got = grads(chunks)
            first = 0 if parallel_state.get_pipeline_model_parallel_rank() == 0 else None
            must, prefix = frozen_sets(runtime, chunks, recorder.call_order, first)
            want = expected(runtime, ref, chunks, cfg.rescale, must)
            frozen = {
                (c, j): runtime.frozen_names(c, j)
                for c in range(parallel.vpp)
                for j in range(parallel.microbatches)
            }
            result["iterations"].append(
                {
                    "rel_err": rel_errors(got, want),
                    "grads": got,
                    "frozen": frozen,
                    "full": runtime.masks.full,
                    "accumulated": set(recorder.accumulated),
                    "autograd_ran": dict(recorder.autograd_ran),
                    "p2p_calls": list(recorder.p2p_calls),
                    "prefix": prefix,
                    "toggle_matches": all(
                        set(runtime.frozen_param_names(c, j)) == must[(c, j)] for c, j in must
                    ),
                    "frozen_params": {k: sorted(v) for k, v in must.items()},
                    "out_requires_grad": dict(recorder.out_requires_grad),
                    "grad_seen": set(recorder.grad_seen),
                    "recomputed": set(recorder.recomputed),
                    "weight_grads": list(recorder.weight_grads),
                    "bitwise_stock": (
                        all(torch.equal(got[k], stock[k]) for k in stock)
                        if case.get("zero_ratios")
                        else None
                    ),
                }
            )
        result["state"] = runtime.state_dict()
        result["realised"] = runtime.realised_ratio_per_chunk()
    finally:
        rec_handle.remove()
        recorder.close()
        runtime.remove()
        if zero_bubble is not None:
            zero_bubble.remove()
    # remove() puts Megatron's own backward back: the process runs stock megatron-core again.
    result["backward_restored"] = vars(LinearWithFrozenWeight)["backward"] is stock_backward
    if case.get("checkpoint"):
        result["restored_masks"] = restored_masks(chunks, ratios, spec, cfg)
    return result


LINEAR_WEIGHT = ("linear_qkv.weight", "linear_proj.weight", "linear_fc1.weight")


def deferred_name(name: str) -> bool:
    """Parameters whose gradient the split backward defers to W (local spec): the weights of
    the tensor-parallel linears, the in-kernel bias of linear_qkv, the output layer."""
    return name.endswith(
        (*LINEAR_WEIGHT, "linear_fc2.weight", "linear_qkv.bias", "output_layer.weight")
    )


class SplitRecorder(ScheduleObserver):
    """Where each parameter's gradient accumulated (in B or in W) and how much work each W
    had, for a zero-bubble run."""

    def __init__(self, chunks, split) -> None:
        self.split = split
        self.phase: tuple[str, int, int] | None = None
        self.where: set[tuple[str, int, str]] = set()  # (phase, microbatch, parameter)
        self.work: list[tuple[int, int]] = []  # (microbatch, linears pending at its W)
        self.handles = [
            p.register_post_accumulate_grad_hook(partial(self._acc, n))
            for _c, n, p in named(chunks)
        ]

    def _acc(self, name: str, _p: Any) -> None:
        if self.phase is not None:
            self.where.add((self.phase[0], self.phase[2], name))

    def before_backward(self, chunk: int, microbatch: int) -> None:
        self.phase = ("B", chunk, microbatch)

    def after_backward(self, chunk: int, microbatch: int) -> None:
        self.phase = None

    def before_weight_grad(self, chunk: int, microbatch: int) -> None:
        self.work.append((microbatch, self.split.pending(chunk, microbatch)))
        self.phase = ("W", chunk, microbatch)

    def after_weight_grad(self, chunk: int, microbatch: int) -> None:
        self.phase = None

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def zb_against_stock(case: dict[str, Any], parallel: ParallelConfig) -> dict[str, Any]:
    """zb-h1 without freezing against stock 1F1B on an identical model: every gradient
    (after finalize_model_grads) must be bitwise equal, iteration by iteration."""
    from megatron_tf.megatron.hooks import install_hooks
    from megatron_tf.megatron.zero_bubble import ZeroBubbleSchedule

    model = _case_model(parallel, case)  # vpp 1 under zb-h1
    overlap = case.get("overlap", False)
    stock_chunks = build(model, parallel, overlap=overlap, finalize=True)
    zb_chunks = build(model, parallel, overlap=overlap, finalize=True)
    out: dict[str, Any] = {"iterations": []}
    schedule = ZeroBubbleSchedule("zb-h1")
    for _ in range(case.get("iters", 2)):
        run_schedule(stock_chunks, model, parallel)
        want = grads(stock_chunks)
        with schedule:
            recorder = SplitRecorder(zb_chunks, schedule.split)
            handle = install_hooks(recorder)
            try:
                run_schedule(zb_chunks, model, parallel)
            finally:
                handle.remove()
                recorder.close()
        got = grads(zb_chunks)
        out["iterations"].append(
            {
                "unequal": sorted(
                    f"{c}:{n}" for (c, n) in want if not torch.equal(got[(c, n)], want[(c, n)])
                ),
                "nonzero": sum(int(bool(t.abs().sum() > 0)) for t in got.values()),
                "params": len(got),
                "where": set(recorder.where),
                "work": list(recorder.work),
            }
        )
    out["restored"] = schedule_restored()
    out["deferred"] = {n for _c, n, _p in named(zb_chunks) if deferred_name(n)}
    return out


class _Held:
    """A tensor autograd saved for a backward; counted while autograd keeps it."""

    __slots__ = ("counter", "key", "tensor")

    def __init__(self, counter: SavedBytes, tensor: torch.Tensor) -> None:
        self.counter, self.tensor = counter, tensor
        self.key = _storage(tensor)
        if self.key[0] not in counter.params:  # a weight saved for dgrad is no activation
            counter.held[self.key] = counter.held.get(self.key, 0) + 1

    def __del__(self) -> None:
        held = self.counter.held
        if self.key in held:
            held[self.key] -= 1
            if not held[self.key]:
                del held[self.key]


def _storage(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return (storage.data_ptr(), storage.nbytes())


class SavedBytes(ScheduleObserver):
    """Live activation bytes of one rank between the schedule's compute actions: the distinct
    storages autograd holds for pending backwards (saved_tensors_hooks), plus what the split
    keeps for pending W's (layer inputs, output gradients). Sampled after every F, B and W."""

    def __init__(self, chunks, split: Any = None) -> None:
        self.split = split
        self.params = {p.untyped_storage().data_ptr() for _c, _n, p in named(chunks)}
        self.held: dict[tuple[int, int], int] = {}
        self.samples: list[tuple[str, int, int]] = []  # (action, microbatch, bytes)
        self.hooks = torch.autograd.graph.saved_tensors_hooks(
            lambda t: _Held(self, t), lambda h: h.tensor
        )

    def _kept(self, keys: list[tuple[int, int]]) -> set[tuple[int, int]]:
        """What the split keeps for the W's of `keys`: layer inputs and output gradients."""
        work = [d for k in keys for d in self.split._pending.get(k, [])]
        return {_storage(t) for d in work for t in (d.input, d.grad_output)}

    def live(self) -> int:
        keys = set(self.held)
        if self.split is not None:
            keys |= self._kept(list(self.split._pending))
        return sum(n for _, n in keys)

    def pending_bytes(self, microbatch: int) -> int:
        return sum(n for _, n in self._kept([(0, microbatch)]))

    def after_forward(self, chunk: int, microbatch: int) -> None:
        self.samples.append(("F", microbatch, self.live()))

    def after_backward(self, chunk: int, microbatch: int) -> None:
        self.samples.append(("B", microbatch, self.live()))
        if self.split is not None:
            self.samples.append(("D", microbatch, self.pending_bytes(microbatch)))

    def after_weight_grad(self, chunk: int, microbatch: int) -> None:
        self.samples.append(("W", microbatch, self.live()))


def zb_memory(parallel: ParallelConfig) -> dict[str, Any]:
    """Live activation bytes per rank, stock 1F1B and zb-h1, on one model (two iterations
    each; the second is measured)."""
    from megatron_tf.megatron.hooks import install_hooks
    from megatron_tf.megatron.zero_bubble import ZeroBubbleSchedule

    model = ModelConfig(
        num_layers=parallel.pp,
        hidden_size=16,
        num_attention_heads=2,
        seq_length=8,
        vocab_size=64,
        micro_batch_size=1,
    )
    chunks = build(model, parallel, overlap=False, finalize=True)
    out: dict[str, Any] = {}
    for kind in ("1f1b", "zb-h1"):
        schedule = ZeroBubbleSchedule(kind) if kind == "zb-h1" else contextlib.nullcontext()
        with schedule:
            for _ in range(2):
                counter = SavedBytes(chunks, getattr(schedule, "split", None))
                handle = install_hooks(counter)
                try:
                    with counter.hooks:
                        run_schedule(chunks, model, parallel)
                finally:
                    handle.remove()
        out[kind] = counter.samples
    return out


def schedule_restored() -> bool:
    """After removal, get_forward_backward_func() is megatron-core's own 1F1B again."""
    from megatron.core.pipeline_parallel import get_forward_backward_func, schedules
    from megatron.core.tensor_parallel import layers

    from megatron_tf.megatron.hooks import _ENTRIES

    stock = _ENTRIES.stock["forward_backward_pipelining_without_interleaving"]
    return (
        get_forward_backward_func() is stock
        and schedules.forward_backward_pipelining_without_interleaving is stock
        and layers.ColumnParallelLinear._forward_impl.__module__ == layers.__name__
    )


def restored_masks(chunks, ratios, spec, cfg) -> dict[str, Any]:
    """Masks of iterations 2..4: uninterrupted vs. restored from a state saved after 1."""
    straight = FreezeRuntime(chunks, ratios, spec, cfg)
    want = [straight.start_iteration(it) for it in range(5)][2:]
    first = FreezeRuntime(chunks, ratios, spec, cfg)
    for it in range(2):
        first.start_iteration(it)
    state = first.state_dict()
    zeros = [[[0.0] * spec.microbatches] * spec.vpp] * spec.pp
    resumed = FreezeRuntime(chunks, zeros, spec, FreezeConfig(seed=99))
    resumed.load_state_dict(state)
    got = [resumed.start_iteration(it) for it in range(2, 5)]
    return {"equal": got == want, "any_frozen": any(m.any_frozen() for m in want)}


def refusals(parallel: ParallelConfig) -> dict[str, Any]:
    """Each refusal must come as one TimelyFreezeError before any forward runs."""
    from megatron_tf.errors import TimelyFreezeError
    from megatron_tf.formats.plan import Plan, Predicted, SolverInfo
    from megatron_tf.formats.schedule import ScheduleRecord
    from megatron_tf.megatron.hooks import install_hooks
    from megatron_tf.formats.schedule import ScheduleSpec

    model = ModelConfig(
        num_layers=parallel.pp * parallel.vpp,
        hidden_size=16,
        num_attention_heads=2,
        seq_length=8,
        vocab_size=64,
        micro_batch_size=1,
    )
    chunks = build(model, parallel, overlap=False, finalize=True)
    spec = parallel.schedule_spec()
    ratios = ratios_for(parallel.pp, parallel.vpp, parallel.microbatches)
    other = ScheduleSpec(kind=spec.kind, pp=spec.pp, vpp=spec.vpp, microbatches=8)
    plan = Plan(
        schedule=ScheduleRecord.from_spec(other),
        profile_sha256="0" * 64,
        max_freeze_ratio=1.0,  # the header must admit its own ratios
        tolerance=0.0,
        min_trained_microbatches=1,
        comm_model="megatron",
        ratios=ratios_for(other.pp, other.vpp, other.microbatches),
        predicted=Predicted(baseline_makespan=1.0, makespan=1.0, speedup=1.0),
        solver=SolverInfo(name="GLOP", status="OPTIMAL", seconds=0.0),
    )

    class Count(ScheduleObserver):
        forwards = 0

        def before_forward(self, chunk: int, microbatch: int) -> None:
            Count.forwards += 1

    out: dict[str, Any] = {}

    def attempt(name: str, fn: Any) -> None:
        try:
            fn()
            out[name] = None
        except TimelyFreezeError as exc:
            out[name] = (type(exc).__name__, str(exc))

    attempt("plan_for_other_schedule", lambda: FreezeRuntime(chunks, plan, spec))
    attempt("ratio_shape", lambda: FreezeRuntime(chunks, ratios[:1], spec))
    counter = install_hooks(Count())
    runtime = FreezeRuntime(chunks, ratios, spec).install()
    try:
        bad = dataclasses.replace(parallel, microbatches=parallel.microbatches + parallel.pp)

        def run_wrong_m() -> None:
            run_schedule(chunks, model, bad)

        attempt("num_microbatches", run_wrong_m)
    finally:
        runtime.remove()
        counter.remove()
    out["forwards_before_refusal"] = Count.forwards
    config = chunks[0].config
    config.delay_wgrad_compute = True
    attempt("delay_wgrad_compute", lambda: FreezeRuntime(chunks, ratios, spec).install())
    config.delay_wgrad_compute = False
    return out


CASES: dict[str, dict[str, Any]] = {
    "base": {"iters": 2},
    "overlap": {"overlap": True, "iters": 3},
    "recompute": {"recompute": "full"},
    "recompute_leak": {"recompute": "full", "leak": True},
    "recompute_no_leaf": {"recompute": "full", "no_leaf": True},
    "recompute_deep": {"recompute": "full", "layers_per_stage": 2},
    "none": {"rescale": "none"},
    "untied": {"tied": False},
    "zero": {"zero_ratios": True},
    "checkpoint": {"checkpoint": True},
    # zb-h1 with freezing on top, against the reference (and with all ratios 0, bitwise).
    "zb_freeze": {"zb": True, "iters": 2},
    "zb_freeze_overlap": {"zb": True, "overlap": True, "iters": 3},
    "zb_freeze_recompute": {"zb": True, "recompute": "full"},
}

ZB_CASES: dict[str, dict[str, Any]] = {
    # zb-h1 alone against stock 1F1B, bitwise.
    "zb": {"iters": 2},
    "zb_overlap": {"overlap": True, "iters": 3},
    "zb_recompute": {"recompute": "full", "layers_per_stage": 2},
    "zb_untied": {"tied": False},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pp", type=int, required=True)
    parser.add_argument("--vpp", type=int, default=1)
    parser.add_argument("--dp", type=int, default=1)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=0)
    parser.add_argument("--overlap-p2p-comm", action="store_true")
    parser.add_argument("--cases", required=True, help="comma-separated names from CASES")
    args = parser.parse_args()
    parallel = ParallelConfig(
        tp=args.tp,
        pp=args.pp,
        vpp=args.vpp,
        dp=args.dp,
        microbatches=args.microbatches,
        group_size=args.group_size,
        overlap_p2p_comm=args.overlap_p2p_comm,
    )
    init_distributed(parallel, seed=1234)
    refs: dict[tuple, list[Grads]] = {}
    out = {}
    for name in args.cases.split(","):
        if name == "refuse":
            out[name] = refusals(parallel)
        elif name == "zb_memory":
            out[name] = zb_memory(parallel)
        elif name in ZB_CASES:
            out[name] = zb_against_stock(ZB_CASES[name], parallel)
        else:
            out[name] = run_case(CASES[name], parallel, refs)
    from megatron.core import parallel_state

    out["_ranks"] = {
        "pp": parallel_state.get_pipeline_model_parallel_rank(),
        "dp": parallel_state.get_data_parallel_rank(),
        "tp": parallel_state.get_tensor_model_parallel_rank(),
    }
    save_result(out)
    destroy_distributed()


if __name__ == "__main__":
    main()
