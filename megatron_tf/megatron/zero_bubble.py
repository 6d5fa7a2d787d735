"""Zero-bubble pipeline schedules for megatron-core: the split-backward program, run exactly.

`ZeroBubbleSchedule(kind).install()` makes `get_forward_backward_func()` return this module's
schedule wherever megatron-core would return its 1F1B
(`forward_backward_pipelining_without_interleaving`, looked up in `schedules.py` at call time;
`hooks.set_schedule_entry`). The schedule executes, op by op, this rank's program of the
registered kind (`schedule.order.rank_programs`: F, B, W and P2P calls): the order comes from
the schedule model, so the model and the runtime cannot drift apart, and the order proof
(`tests/dist/test_schedule_order.py`) checks every call anyway.

Everything else is Megatron's 1F1B (`pipeline_parallel/schedules.py`, 0.19.x and 0.20.x):
F and B are megatron-core's own `forward_step` and `backward_step` (looked up by name, so the
freeze runtime's hooks and the profiler's timers see them as in stock schedules); the P2P
calls are `P2PCommunicator`'s methods with 1F1B's tensor shapes; the loss, the token count,
`no_sync` (data-parallel reduction held back until the last microbatch), `grad_sync_func`,
`finish_embedding_wgrad_compute` and `finalize_model_grads` are called as 1F1B calls them.
W (`split_backward.SplitBackward.weight_grad`) runs the weight gradients B deferred; it runs
inside `no_sync` unless it is the last microbatch's, so Megatron DDP's readiness counts (and its
overlapped reduce) see each parameter complete only after its last W. Evaluation
(`forward_only=True`) runs megatron-core's own 1F1B: there is no backward to split.

Gradients: bitwise those of stock 1F1B (see `split_backward.py`): per rank the W's run in
microbatch order, as stock 1F1B's backwards do, and B accumulates the parameters it does not
defer in that order too.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from megatron_tf.errors import UnsupportedMegatronError
from megatron_tf.formats.layout import RUNTIME_SCHEDULES
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.megatron import guard, hooks
from megatron_tf.megatron.split_backward import SplitBackward, check_split_supported
from megatron_tf.schedule.order import ActionKind, Compute, P2PCall, rank_programs

__all__ = [
    "ENTRY",
    "ZeroBubbleSchedule",
    "install_for",
    "installed_kind",
    "remove_installed",
    "running_spec",
]

ENTRY = "forward_backward_pipelining_without_interleaving"
"""The megatron-core schedule entry a zero-bubble schedule stands in for (1F1B's)."""

_INSTALLED: list[ZeroBubbleSchedule] = []


def installed_kind() -> str | None:
    """The kind of the zero-bubble schedule now installed, or None."""
    return _INSTALLED[-1].kind if _INSTALLED else None


def running_spec(megatron_spec: ScheduleSpec) -> ScheduleSpec:
    """What runs for the schedule Megatron's settings select: the installed zero-bubble kind
    in place of 1F1B, else that schedule itself."""
    kind = installed_kind()
    if kind is None or megatron_spec.kind != "1f1b":
        return megatron_spec
    return dataclasses.replace(megatron_spec, kind=kind, group_size=0)


def install_for(spec: ScheduleSpec) -> ZeroBubbleSchedule | None:
    """Install the schedule `spec` names if TimelyFreeze runs it (None for Megatron's own)."""
    if spec.kind in ("1f1b", "interleaved"):
        return None
    if spec.kind not in RUNTIME_SCHEDULES:
        raise UnsupportedMegatronError(
            f"--schedule {spec.kind} is a planning model only: the runtime runs "
            f"{', '.join(RUNTIME_SCHEDULES)} in place of Megatron's schedules"
        )
    return ZeroBubbleSchedule(spec.kind).install()


def remove_installed() -> None:
    """Remove whatever zero-bubble schedule is installed (process teardown)."""
    while _INSTALLED:
        _INSTALLED[-1].remove()


class ZeroBubbleSchedule:
    """A registered split-backward kind (e.g. "zb-h1") installed in place of 1F1B."""

    def __init__(self, kind: str = "zb-h1") -> None:
        self.kind = kind
        self.split = SplitBackward()
        self._stock: Callable[..., Any] | None = None
        self._programs: dict[tuple[int, int], list[Any]] = {}
        self.checked: set[int] = set()  # model chunks whose modules passed the checks

    def install(self) -> ZeroBubbleSchedule:
        """Check megatron-core, then stand in for its 1F1B (idempotent; one at a time)."""
        if self._stock is not None:
            return self
        if _INSTALLED:
            raise UnsupportedMegatronError(
                f"a zero-bubble schedule ({_INSTALLED[-1].kind}) is already installed"
            )
        guard.check_all()
        self.split.install()
        self._stock = hooks.set_schedule_entry(ENTRY, self.forward_backward)
        _INSTALLED.append(self)
        return self

    def remove(self) -> None:
        """Give megatron-core its 1F1B back."""
        if self._stock is None:
            return
        hooks.set_schedule_entry(ENTRY, None)
        self.split.remove()
        self._stock = None
        _INSTALLED.remove(self)

    def __enter__(self) -> ZeroBubbleSchedule:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def program(self, pp: int, microbatches: int, rank: int) -> list[Any]:
        """This rank's ops (cached per pp and M): what `forward_backward` executes."""
        key = (pp, microbatches)
        if key not in self._programs:
            spec = ScheduleSpec(kind=self.kind, pp=pp, microbatches=microbatches)
            self._programs[key] = rank_programs(spec)
        return self._programs[key][rank]

    # -- the schedule -------------------------------------------------------------------------

    def forward_backward(self, **kwargs: Any) -> Any:
        """`forward_backward_pipelining_without_interleaving`'s signature and results."""
        assert self._stock is not None, "the zero-bubble schedule is not installed"
        if kwargs.get("forward_only", False):
            return self._stock(**kwargs)
        return _Run(self, **kwargs).run()


class _Run:
    """One training call of the schedule: Megatron's 1F1B set-up, the program, 1F1B's end."""

    def __init__(
        self,
        owner: ZeroBubbleSchedule,
        *,
        forward_step_func: Callable[..., Any],
        data_iterator: Any,
        model: Any,
        num_microbatches: int,
        seq_length: int,
        micro_batch_size: int,
        decoder_seq_length: int | None = None,
        forward_only: bool = False,
        collect_non_loss_data: bool = False,
        first_val_step: bool | None = None,
        adjust_tensor_shapes_fn: Callable[..., Any] | None = None,
        p2p_communicator: Any = None,
        pg_collection: Any = None,
        force_all_reduce: bool | None = False,
    ) -> None:
        from megatron.core import parallel_state
        from megatron.core.pipeline_parallel import schedules
        from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
        from megatron.core.utils import get_model_config

        if isinstance(model, list):
            if len(model) != 1:
                raise UnsupportedMegatronError(
                    f"the {owner.kind} schedule has one model chunk per rank, got {len(model)}"
                )
            model = model[0]
        if isinstance(data_iterator, list):
            data_iterator = data_iterator[0]
        config = get_model_config(model)
        if config.overlap_p2p_comm:
            raise ValueError(
                "Non-interleaved pipeline parallelism does not support overlapping p2p "
                "communication"
            )
        if id(model) not in owner.checked:
            check_split_supported(config, [model])
            owner.checked.add(id(model))
        if getattr(config, "moe_paged_stash", False) or getattr(
            config, "fine_grained_activation_offloading", False
        ):
            raise UnsupportedMegatronError(
                f"the {owner.kind} schedule does not run with moe_paged_stash or "
                "fine_grained_activation_offloading"
            )
        if (p2p_communicator is None) != (pg_collection is None):
            raise ValueError("Provide both p2p_communicator and pg_collection, or neither")
        if p2p_communicator is None:
            p2p_communicator = P2PCommunicator(
                pp_group=parallel_state.get_pipeline_model_parallel_group(), config=config
            )
            pg_collection = schedules._build_default_pg_collection()
        if not hasattr(pg_collection, "tp") or not hasattr(pg_collection, "cp"):
            raise UnsupportedMegatronError(
                f"the {owner.kind} schedule runs single-module pipelines only "
                "(a ProcessGroupCollection with tp and cp)"
            )
        self.owner, self.schedules, self.config = owner, schedules, config
        self.forward_step_func, self.data_iterator, self.model = (
            forward_step_func,
            data_iterator,
            model,
        )
        self.m = num_microbatches
        self.collect_non_loss_data = collect_non_loss_data
        self.first_val_step = first_val_step
        self.force_all_reduce = force_all_reduce
        self.p2p, self.pg = p2p_communicator, pg_collection
        self.tp_group, self.cp_size = pg_collection.tp, pg_collection.cp.size()
        self.first, self.last = (
            p2p_communicator.is_pp_first_stage,
            p2p_communicator.is_pp_last_stage,
        )
        shapes = dict(
            seq_length=seq_length,
            micro_batch_size=micro_batch_size,
            decoder_seq_length=decoder_seq_length,
            config=config,
            tp_group=self.tp_group,
            cp_group=pg_collection.cp,
        )
        self.recv_shapes = schedules.get_tensor_shapes(**shapes)
        self.send_shapes = schedules.get_tensor_shapes(**shapes)
        if adjust_tensor_shapes_fn is not None:
            self.recv_shapes, self.send_shapes = adjust_tensor_shapes_fn(
                self.recv_shapes, self.send_shapes
            )
        self.patched = guard.has_hook_points(schedules)
        self.ops = owner.program(
            p2p_communicator.total_stages, self.m, p2p_communicator.current_stage
        )
        # 1F1B's activation-checkpoint window (partial checkpointing): by forward number.
        warmup = min(p2p_communicator.total_stages - p2p_communicator.current_stage - 1, self.m)
        self.partial = config.num_microbatches_with_partial_activation_checkpoints
        self.max_outstanding = warmup + 1
        # Per microbatch: received activation, (input, output) kept for B, received output
        # gradient, input gradient to send.
        self.inputs: dict[int, Any] = {}
        self.saved: dict[int, tuple[Any, Any]] = {}
        self.outputs: dict[int, Any] = {}
        self.grads: dict[int, Any] = {}
        self.input_grads: dict[int, Any] = {}
        self.forward_data_store: list[Any] = []
        self.no_sync_context: Any = None
        self.no_sync_func = config.no_sync_func or contextlib.nullcontext

    # 1F1B's no_sync bookkeeping (schedules.py, disable_grad_sync / enable_grad_sync).
    def disable_grad_sync(self) -> None:
        if self.no_sync_context is None:
            self.no_sync_context = self.no_sync_func()
            self.no_sync_context.__enter__()

    def enable_grad_sync(self) -> None:
        if self.no_sync_context is not None:
            self.no_sync_context.__exit__(None, None, None)
            self.no_sync_context = None

    def run(self) -> list[Any]:
        schedules, config = self.schedules, self.config
        if self.patched:
            schedules._run_schedule_hooks("iteration_start", False, self.m)
        embedding_module = None
        if config.finalize_model_grads_func is not None:
            embedding_module = schedules.clear_embedding_activation_buffer(
                config, self.model, self.last
            )
        if config.timers is not None:
            config.timers("forward-backward", log_level=1).start(
                barrier=config.barrier_with_L1_time
            )
        self.total_num_tokens = torch.zeros([], dtype=torch.int, device=_device(self.model))
        self.disable_grad_sync()
        hooks.set_weight_grads_deferred(True)
        try:
            for op in self.ops:
                if isinstance(op, Compute):
                    self._compute(op)
                elif isinstance(op, P2PCall):
                    self._p2p(op)
                else:
                    raise UnsupportedMegatronError(
                        f"the {self.owner.kind} program waits on a posted transfer ({op}); "
                        "only blocking P2P calls are supported"
                    )
        finally:
            hooks.set_weight_grads_deferred(False)
        left = self.owner.split.pending_keys()
        assert not left and not self.saved, (left, sorted(self.saved))
        # Launch any remaining grad reductions (1F1B's end).
        if self.no_sync_context is not None:
            self.enable_grad_sync()
            if config.grad_sync_func is not None:
                config.grad_sync_func(self.model.parameters())
        if config.finalize_model_grads_func is not None:
            schedules.finish_embedding_wgrad_compute(
                config, embedding_module, self.last, self.tp_group
            )
            config.finalize_model_grads_func(
                [self.model],
                self.total_num_tokens if config.calculate_per_token_loss else None,
                pg_collection=self.pg,
                force_all_reduce=self.force_all_reduce,
            )
        if config.timers is not None:
            config.timers("forward-backward").stop()
        if self.patched:
            schedules._run_schedule_hooks("iteration_end", False, self.m)
        return self.forward_data_store

    # -- compute --------------------------------------------------------------------------

    def _compute(self, op: Compute) -> None:
        mb = op.microbatch
        if op.kind == ActionKind.F:
            self._forward(mb)
        elif op.kind == ActionKind.B:
            self._backward(mb)
        else:
            self._weight(mb)

    def _forward(self, mb: int) -> None:
        checkpoint = None
        if self.partial is not None:
            checkpoint = mb % self.max_outstanding >= self.partial
        input_tensor = None if self.first else self.inputs.pop(mb)
        with self.owner.split.capture(0, mb):
            output_tensor, num_tokens = self.schedules.forward_step(
                self.forward_step_func,
                self.data_iterator,
                self.model,
                self.m,
                input_tensor,
                self.forward_data_store,
                self.config,
                cp_group_size=self.cp_size,
                collect_non_loss_data=self.collect_non_loss_data,
                checkpoint_activations_microbatch=checkpoint,
                is_first_microbatch=self.schedules.check_first_val_step(
                    self.first_val_step, False, mb == 0
                ),
                current_microbatch=mb,
                is_last_stage=self.last,
            )
        self.total_num_tokens += num_tokens
        self.saved[mb] = (input_tensor, output_tensor)
        if self.last:  # nothing to send: 1F1B frees it right away too
            self._deallocate(output_tensor)
        else:
            self.outputs[mb] = output_tensor

    def _backward(self, mb: int) -> None:
        if mb == self.m - 1 and (self.config.grad_sync_func is None or self.first):
            self.enable_grad_sync()  # 1F1B: the last backward reduces (first stage, or all)
        input_tensor, output_tensor = self.saved.pop(mb)
        output_tensor_grad = None if self.last else self.grads.pop(mb)
        ids = {"vp_stage": 0, "microbatch_id": mb} if self.patched else {}
        with self.owner.split.capture(0, mb):
            grad = self.schedules.backward_step(
                input_tensor, output_tensor, output_tensor_grad, self.config, **ids
            )
        if not self.first:
            self.input_grads[mb] = grad

    def _weight(self, mb: int) -> None:
        hooks.weight_grad_event(True, 0, mb)
        if mb < self.m - 1 and self.no_sync_context is None:
            # An earlier microbatch's W after the last B: DDP must not count it as final.
            self.disable_grad_sync()
            self.owner.split.weight_grad(0, mb)
            self.enable_grad_sync()
        else:
            self.owner.split.weight_grad(0, mb)
        hooks.weight_grad_event(False, 0, mb)

    def _deallocate(self, output_tensor: Any) -> None:
        self.schedules.deallocate_output_tensor(
            output_tensor, self.config.deallocate_pipeline_outputs
        )

    # -- P2P ------------------------------------------------------------------------------

    def _p2p(self, call: P2PCall) -> None:
        """One `P2PCommunicator` method call, with 1F1B's arguments for it."""
        p2p, name = self.p2p, call.name
        sent = {m.kind: m.microbatch for m in call.sends}
        received = {m.kind: m.microbatch for m in call.recvs}
        if name == "recv_forward":
            self.inputs[received["act"]] = p2p.recv_forward(self.recv_shapes, self.first)
        elif name == "recv_backward":
            self.grads[received["grad"]] = p2p.recv_backward(self.send_shapes, self.last)
        elif name == "send_forward":
            output = self.outputs.pop(sent["act"])
            p2p.send_forward(output, self.last)
            self._deallocate(output)
        elif name == "send_backward":
            p2p.send_backward(self.input_grads.pop(sent["grad"]), self.first)
        elif name == "send_forward_recv_backward":
            output = self.outputs.pop(sent["act"])
            grad = p2p.send_forward_recv_backward(output, self.send_shapes, self.last)
            self.grads[received["grad"]] = grad
            self._deallocate(output)
        elif name == "send_backward_recv_forward":
            grad = self.input_grads.pop(sent["grad"])
            tensor = p2p.send_backward_recv_forward(grad, self.recv_shapes, self.first)
            self.inputs[received["act"]] = tensor
        else:
            raise UnsupportedMegatronError(
                f"the {self.owner.kind} program calls P2PCommunicator.{name}, which the "
                "zero-bubble runtime does not issue"
            )


def _device(model: torch.nn.Module) -> torch.device:
    """Where 1F1B's token counter lives ("cuda", i.e. the current device, on a GPU)."""
    for p in model.parameters():
        return p.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
