"""TimelyFreeze inside a user's Megatron-LM script: plan check, lazy runtime, checkpoint state.

`install(job)` runs on every rank before the user's `pretrain_gpt.py` (see
`megatron_tf.train.lm_script`) and sets three traps, all in megatron modules the script will
use, none in the script itself:

1. Layout check, early: `megatron.training.global_vars.set_global_variables(args)` is where
   Megatron-LM (0.19, `arguments.parse_and_validate_args`) publishes its parsed and validated
   arguments. Right after it, the plan's schedule is compared with the layout those arguments
   give: pp, vpp, M = global batch / (micro batch x dp), group size. A mismatch stops the job
   before torch.distributed is even initialised.
2. The runtime, lazily: the model chunks exist only once the script built them, so the freeze
   runtime is created at the first *training* call of the schedule returned by
   `get_forward_backward_func()` (`forward_only=False`; evaluation calls pass through). That call
   is checked again (the universal check, for scripts that parse their own arguments) and the
   runtime starts before its first forward. The schedule is re-fetched on every call, because
   Megatron-LM's `train()` fetches it once before the runtime's hooks exist.
3. Checkpoints: after `megatron.training.checkpointing.save_checkpoint` each rank writes its
   freezer state to `<save>/iter_<7 digits>/timelyfreeze/rank<R>.pt`; after `load_checkpoint` the
   matching file is read and handed to the runtime when it starts.

Functions are replaced in their defining module and in every loaded module that imported them
by name (`from x import f`), which is how Megatron-LM's training.py holds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from megatron_tf.console import rank_line
from megatron_tf.errors import ConfigError, ScheduleMismatchError
from megatron_tf.formats.plan import check_plan_matches, load_plan
from megatron_tf.formats.schedule import ScheduleSpec, megatron_schedule
from megatron_tf.freeze.config import FreezeConfig
from megatron_tf.megatron import guard
from megatron_tf.megatron.compat import enable_cpu_compat
from megatron_tf.megatron.freeze_runtime import FreezeRuntime
from megatron_tf.megatron.hooks import installed_route

__all__ = ["FirstCall", "MegatronLMFreezer", "install", "layout_from_args", "layout_from_call"]

_MEGATRON_FLAGS = (
    "Megatron-LM's --pipeline-model-parallel-size, --num-layers-per-virtual-pipeline-stage / "
    "--num-virtual-stages-per-pipeline-rank, --global-batch-size, --micro-batch-size and the "
    "data-parallel size"
)

_ACTIVE: MegatronLMFreezer | None = None

FirstCall = Callable[[Callable[[], Callable[..., Any]], dict[str, Any]], Any]
"""`first_call(fetch, kwargs)`: takes over the first training schedule call (profile mode);
`fetch()` returns the schedule function as of now, `kwargs` are the call's arguments."""


def _log(message: str) -> None:
    rank_line(message)


def layout_from_args(args: Any) -> ScheduleSpec | None:
    """The schedule Megatron-LM's parsed arguments describe; None without pipelining."""
    pp = int(args.pipeline_model_parallel_size)
    if pp < 2:
        return None
    vpp = int(getattr(args, "virtual_pipeline_model_parallel_size", None) or 1)
    per_step = int(args.micro_batch_size) * int(args.data_parallel_size)
    microbatches, remainder = divmod(int(args.global_batch_size), per_step)
    if remainder or microbatches < 1:
        raise ConfigError(
            f"Megatron-LM's --global-batch-size {args.global_batch_size} is not a multiple of "
            f"--micro-batch-size {args.micro_batch_size} x data-parallel size "
            f"{args.data_parallel_size}"
        )
    return megatron_schedule(
        pp=pp,
        vpp=vpp,
        microbatches=microbatches,
        group_size=getattr(args, "microbatch_group_size_per_vp_stage", None),
        overlap_p2p_comm=bool(getattr(args, "overlap_p2p_comm", False)),
        drop_interleaved_only=True,
    )


def layout_from_call(kwargs: dict[str, Any]) -> ScheduleSpec | None:
    """The schedule a call of the pipeline schedule is about to run."""
    from megatron.core import parallel_state
    from megatron.core.utils import get_model_config

    model = kwargs["model"]
    chunks = list(model) if isinstance(model, (list, tuple)) else [model]
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if pp < 2:
        return None
    config = get_model_config(chunks[0])
    from megatron_tf.megatron.zero_bubble import running_spec

    # A zero-bubble schedule installed in place of 1F1B is what this call runs.
    return running_spec(
        megatron_schedule(
            pp=pp,
            vpp=len(chunks),
            microbatches=int(kwargs["num_microbatches"]),
            group_size=getattr(config, "microbatch_group_size_per_vp_stage", None),
            overlap_p2p_comm=bool(getattr(config, "overlap_p2p_comm", False)),
            drop_interleaved_only=True,
        )
    )


class MegatronLMFreezer:
    """The per-process state behind the traps: plan, runtime, iteration, pending state."""

    def __init__(
        self,
        *,
        plan: Path | None,
        freeze: FreezeConfig | None = None,
        first_call: FirstCall | None = None,
        schedule: str = "",
    ) -> None:
        self.plan = load_plan(plan) if plan is not None else None
        self.schedule_kind = schedule  # "" or a kind run in place of 1F1B (zb-h1)
        self.zero_bubble: Any = None
        self.plan_sha256 = hashlib.sha256(plan.read_bytes()).hexdigest() if plan else ""
        self.freeze_config = freeze or FreezeConfig()
        self.runtime: Any = None
        self.next_iteration = 0
        self.pending_state: dict[str, Any] | None = None
        self.first_call = first_call
        self._restore: list[tuple[Any, str, Any]] = []

    # -- checks -----------------------------------------------------------------------------

    def check_layout(self, spec: ScheduleSpec | None, where: str) -> None:
        """Refuse a plan for another layout, naming both and the Megatron-LM flags."""

        if self.plan is None:
            return
        planned = self.plan.schedule_spec()
        if spec is None:
            raise ScheduleMismatchError(
                f"the plan was solved for {planned.describe()} but this job runs without "
                f"pipeline parallelism ({where}; --pipeline-model-parallel-size 1)"
            )
        try:
            check_plan_matches(self.plan, spec)
        except ScheduleMismatchError:
            raise ScheduleMismatchError(
                f"the plan was solved for {planned.describe()} but this job runs "
                f"{spec.describe()} ({where}; set by {_MEGATRON_FLAGS}); profile this job and "
                "solve again"
            ) from None

    def on_arguments(self, args: Any) -> None:
        """Megatron-LM's arguments are parsed and validated: check them against the plan."""
        if self.plan is None:
            return
        if getattr(args, "rampup_batch_size", None) or getattr(
            args, "step_batch_size_schedule", None
        ):
            raise ConfigError(
                "a freeze plan needs a constant number of microbatches: drop Megatron-LM's "
                "--rampup-batch-size / --step-batch-size-schedule, or run without --plan"
            )
        self.check_layout(
            self._running(layout_from_args(args), "Megatron-LM's arguments"),
            "from Megatron-LM's arguments",
        )
        _log(f"plan {self.plan_sha256[:12]} matches Megatron-LM's arguments")

    # -- the schedule -----------------------------------------------------------------------

    def _running(self, spec: ScheduleSpec | None, where: str) -> ScheduleSpec | None:
        """What runs for the layout Megatron-LM sets up: `--schedule`'s kind in place of 1F1B."""
        if not self.schedule_kind or spec is None or spec.kind == self.schedule_kind:
            return spec
        if spec.kind != "1f1b":
            raise ConfigError(
                f"--schedule {self.schedule_kind} runs in place of 1F1B, but {where} give "
                f"{spec.describe()}: drop Megatron-LM's virtual pipeline flags"
            )
        return dataclasses.replace(spec, kind=self.schedule_kind, group_size=0)

    def _install_schedule(self) -> None:
        """Stand the requested schedule in for Megatron's 1F1B, before its first call."""
        if self.schedule_kind and self.zero_bubble is None:
            from megatron_tf.megatron.zero_bubble import install_for

            self.zero_bubble = install_for(
                ScheduleSpec(kind=self.schedule_kind, pp=2, microbatches=1)
            )
            _log(f"{self.schedule_kind} schedule installed in place of Megatron's 1F1B")

    def schedule(self, fetch: Callable[[], Callable[..., Any]], kwargs: dict[str, Any]) -> Any:
        """One call of the pipeline schedule, with the runtime around training iterations."""
        if not kwargs.get("forward_only", False):
            self._install_schedule()
        if self.first_call is not None and not kwargs.get("forward_only", False):
            take_over, self.first_call = self.first_call, None
            return take_over(fetch, kwargs)
        if self.plan is None or kwargs.get("forward_only", False):
            return fetch()(**kwargs)
        if self.runtime is None:
            self._start_runtime(kwargs)
        iteration = self._current_iteration()
        self.runtime.start_iteration(iteration)
        # Fetched after the runtime installed its hooks: on the runtime route the hooks
        # replace the schedule functions in their module, which get_forward_backward_func
        # reads at call time (schedules.py, megatron-core 0.19).
        result = fetch()(**kwargs)
        self.runtime.finish_iteration()
        self.next_iteration = iteration + 1
        return result

    def _start_runtime(self, kwargs: dict[str, Any]) -> None:
        assert self.plan is not None
        spec = self._running(layout_from_call(kwargs), "the model chunks")
        self.check_layout(spec, "at its first schedule call")
        assert spec is not None
        model = kwargs["model"]
        chunks = list(model) if isinstance(model, (list, tuple)) else [model]
        args = _megatron_args()
        if args is not None:  # Megatron-LM's parsed flags: the backstop of the pre-launch scan
            guard.check_config(args)
        runtime = FreezeRuntime(chunks, self.plan, spec, self.freeze_config)
        if self.pending_state is not None:
            runtime.load_state_dict(self.pending_state)
            self.pending_state = None
        runtime.install()
        self.runtime = runtime
        from megatron.core import __file__ as core_file

        _log(
            f"freeze runtime installed before iteration {self._current_iteration()}: "
            f"plan {self.plan_sha256[:12]}, {spec.describe()}, {installed_route()} hooks in "
            f"{Path(core_file).parent}"
        )

    def _current_iteration(self) -> int:
        """Megatron-LM's own counter when it has one (`args.curr_iteration`), else ours."""
        args = _megatron_args()
        current = getattr(args, "curr_iteration", None) if args is not None else None
        return int(current) if current is not None else self.next_iteration

    # -- checkpoints ------------------------------------------------------------------------

    def after_save(self, iteration: int) -> None:
        args = _megatron_args()
        save_dir = getattr(args, "save", None) if args is not None else None
        if self.runtime is None or not save_dir:
            return
        path = _state_path(save_dir, iteration)
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic(self.runtime.state_dict(), path)

    def after_load(self, iteration: int) -> None:
        args = _megatron_args()
        load_dir = getattr(args, "load", None) if args is not None else None
        self.next_iteration = iteration
        if self.plan is None or not load_dir or iteration <= 0:
            return
        path = _state_path(load_dir, iteration)
        if not path.is_file():
            _log(f"checkpoint iteration {iteration} has no freezer state ({path}); starting fresh")
            return
        import torch

        state = torch.load(path, map_location="cpu", weights_only=False)
        if self.runtime is not None:
            self.runtime.load_state_dict(state)
        else:
            self.pending_state = state
        _log(f"freezer state restored from {path}")

    # -- installation -----------------------------------------------------------------------

    def install(self) -> None:
        schedules = "megatron.core.pipeline_parallel.schedules"
        self._replace(schedules, "get_forward_backward_func", self._wrap_getter)
        with contextlib.suppress(ImportError):
            self._replace(
                "megatron.training.global_vars", "set_global_variables", self._wrap_set_globals
            )
            checkpointing = "megatron.training.checkpointing"
            self._replace(checkpointing, "save_checkpoint", self._wrap_save)
            self._replace(checkpointing, "load_checkpoint", self._wrap_load)

    def uninstall(self) -> None:
        for owner, name, old in reversed(self._restore):
            setattr(owner, name, old)
        self._restore.clear()
        if self.runtime is not None:
            self.runtime.remove()
            self.runtime = None
        if self.zero_bubble is not None:
            self.zero_bubble.remove()
            self.zero_bubble = None

    def _replace(self, module_name: str, attr: str, wrap: Callable[[Any], Any]) -> None:
        original = getattr(importlib.import_module(module_name), attr)
        wrapper = wrap(original)
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None)
            if namespace is not None and namespace.get(attr) is original:
                self._restore.append((module, attr, original))
                setattr(module, attr, wrapper)

    def _wrap_getter(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def get_forward_backward_func(*args: Any, **kwargs: Any) -> Callable[..., Any]:
            fetch = functools.partial(original, *args, **kwargs)
            inner = fetch()

            @functools.wraps(inner)
            def forward_backward(**call: Any) -> Any:
                return self.schedule(fetch, call)

            return forward_backward

        return get_forward_backward_func

    def _wrap_set_globals(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def set_global_variables(args: Any, *rest: Any, **kwargs: Any) -> Any:
            self.on_arguments(args)
            return original(args, *rest, **kwargs)

        return set_global_variables

    def _wrap_save(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def save_checkpoint(iteration: int, *args: Any, **kwargs: Any) -> Any:
            result = original(iteration, *args, **kwargs)
            self.after_save(int(iteration))
            return result

        return save_checkpoint

    def _wrap_load(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def load_checkpoint(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            iteration = result[0] if isinstance(result, tuple) else result
            if isinstance(iteration, int):
                self.after_load(iteration)
            return result

        return load_checkpoint


def install(
    *,
    plan: Path | None,
    freeze: FreezeConfig | None = None,
    first_call: FirstCall | None = None,
    schedule: str = "",
) -> MegatronLMFreezer:
    """Set the traps for this process (once); see the module docstring.

    Args:
        plan: plan.json to train with; None runs the script unchanged (a baseline).
        freeze: the runtime's settings (seed, rescale, warm-up, ramp); None: FreezeConfig().
        first_call: takes over the first training schedule call (the profile mode).
        schedule: a kind TimelyFreeze runs in place of Megatron-LM's 1F1B (`zb-h1`), or "".
    """
    global _ACTIVE
    if _ACTIVE is not None:
        return _ACTIVE

    freezer = MegatronLMFreezer(plan=plan, freeze=freeze, first_call=first_call, schedule=schedule)
    enable_cpu_compat()  # a no-op with CUDA; lets a stand-in script run on CPU with gloo
    freezer.install()
    _ACTIVE = freezer
    return freezer


def _megatron_args() -> Any:
    """Megatron-LM's global args, or None when the script did not set them."""
    global_vars = sys.modules.get("megatron.training.global_vars")
    return getattr(global_vars, "_GLOBAL_ARGS", None)


def _state_path(root: str, iteration: int) -> Path:
    # Megatron-LM names checkpoint folders iter_<7 digits> (checkpointing.get_checkpoint_name).
    rank = int(os.environ.get("RANK", "0"))
    return Path(root) / f"iter_{iteration:07d}" / "timelyfreeze" / f"rank{rank:05d}.pt"


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
