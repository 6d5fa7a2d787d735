"""The one version guard: is this megatron-core one whose schedules our hooks understand?

Every version-specific fact lives here, in `SUPPORTED_VERSIONS`: one entry per megatron-core
release series the hooks were proven against (schedules.py call for call, the gradient tests),
with its patch set, the Megatron-LM branch that carries it, the GPT's parameter names (which
`freeze/` gets passed in), the private index reader `train/data.py` uses (`private`) and the
optimizer's step sequence the CPU step repeats. Adding the next version means one new entry
plus its tests. The facts the hooks rely on are the same in every entry
(`pipeline_parallel/schedules.py`): the schedules call the module-level `forward_step` and
`backward_step` by name, `forward_step` receives `current_microbatch` and `vp_stage`, and
`backward_step(input_tensor, output_tensor, output_tensor_grad, config)` receives no ids.
`check_schedules` checks those facts once and refuses, in one sentence, what would break them.

The version checks that run before any process starts (`core_before_launch`) read
`megatron/core/package_info.py` as text: this module imports neither torch nor megatron.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from megatron_tf.errors import UnsupportedMegatronError
from megatron_tf.freeze.units import ParamNames

GPT_PARAM_NAMES = ParamNames(
    # megatron-core 0.19 / 0.20 GPTModel (local and TE specs): LanguageModelEmbedding's
    # `word_embeddings`, GPTModel's `output_layer`, and the linears of attention (MHA and MLA)
    # and MLP in TransformerLayer.
    embedding=r"(^|\.)embedding\.word_embeddings\.weight$",
    output=r"(^|\.)output_layer\.weight$",
    linears=(
        "linear_qkv",
        "linear_proj",
        "linear_fc1",
        "linear_fc2",
        "linear_q",
        "linear_kv",
        "linear_q_proj",
        "linear_kv_down_proj",
        "linear_kv_up_proj",
        "linear_q_down_proj",
        "linear_q_up_proj",
    ),
    # TransformerLayer.forward: input norm, attention, post/cross attention, pre-MLP norm, MLP.
    # MLA runs its down projections, their norms, then the up projections. TE's fused
    # `layer_norm_*` parameters of linear_qkv / linear_fc1 are used before that linear's weight.
    layer_slots=(
        (r"\.input_layernorm\.", 0),
        (
            r"\.(linear_qkv|linear_q|linear_kv|linear_q_proj|linear_q_down_proj|"
            r"linear_kv_down_proj)\.",
            1,
        ),
        (r"\.(q_layernorm|k_layernorm|kv_layernorm)\.", 2),
        (r"\.(linear_q_up_proj|linear_kv_up_proj)\.", 3),
        (r"\.self_attention\.linear_proj\.", 4),
        (r"\.(post_self_attn_layernorm|pre_cross_attn_layernorm|cross_attention)\.", 5),
        (r"\.pre_mlp_layernorm\.", 6),
        (r"\.mlp\.router\.", 7),
        (r"\.linear_fc1\.", 8),
        (r"\.linear_fc2\.", 9),
        (r"\.post_mlp_layernorm\.", 10),
    ),
)
"""Parameter names of megatron-core's GPT; the same in 0.19.x and 0.20.x (every module name
above occurs in both Megatron-LM snapshots' megatron/core/transformer and models, except
`post_self_attn_layernorm` and `post_mlp_layernorm`, which neither has and which match nothing)."""

MEGATRON_OPTIMIZER_STEP: tuple[str, ...] = (
    "prepare_grads",
    "get_grad_norm",
    "step_with_ready_grads",
)
"""`MegatronOptimizer.step()`'s calls in order (0.19.x and 0.20.x, optimizer.py), between which
it clips by the global norm. On CPU the trainer makes the same calls itself and clips in between
(`megatron/compat.py::optimizer_step`): the clip asserts CUDA tensors."""


@dataclass(frozen=True, slots=True)
class SupportedVersion:
    """One megatron-core release series the hooks, the order proof and the patch set cover."""

    series: str
    """`MAJOR.MINOR`, e.g. "0.19"; every patch release and pre-release of it is accepted."""
    patch_set: str
    """Folder under `patches/` with the hook-point patch set for this series."""
    megatron_lm: str
    """The Megatron-LM branch or tag whose `megatron/core` is this series."""
    pip: str
    """What to install for the installed-package route ("" when not on PyPI yet)."""
    tested: str
    """What the test suite runs it against (docs/cluster.md lists the same)."""
    param_names: ParamNames = GPT_PARAM_NAMES
    """How the GPT names its parameters (which weights `freeze/` may freeze, in what order)."""
    index_reader: str = "megatron.core.datasets.indexed_dataset:_IndexReader"
    """The (private) reader of an indexed dataset's `.idx` header: megatron-core has no public
    way to read a dataset's token dtype without opening the whole dataset."""
    optimizer_step: tuple[str, ...] = MEGATRON_OPTIMIZER_STEP
    """The optimizer methods the CPU step calls, in `MegatronOptimizer.step()`'s order."""
    linear_backward_casts_grad_output: bool = False
    """Whether `LinearWithGradAccumulationAndAsyncCommunication.backward` first casts
    `grad_output` to the input's dtype (tensor_parallel/layers.py; 0.20 adds the cast with
    its `output_dtype` argument). The split backward (`megatron/split_backward.py`) repeats
    that backward's input-gradient part and must cast exactly when it does."""
    wgrad_inputs: str = "megatron.core.utils:prepare_input_tensors_for_wgrad_compute"
    """The helper stock backward reshapes (grad_output, input) with before the wgrad GEMM;
    the split backward's W calls the same one."""


SUPPORTED_VERSIONS: tuple[SupportedVersion, ...] = (
    SupportedVersion(
        series="0.19",
        patch_set="megatron-core-0.19.2",
        megatron_lm="core_r0.19.0",
        pip="megatron-core==0.19.2",
        tested="megatron-core 0.19.2 (PyPI); Megatron-LM core_r0.19.0 at f8837c04ef6c (0.19.1)",
    ),
    SupportedVersion(
        series="0.20",
        patch_set="megatron-core-0.20.0",
        megatron_lm="main",
        pip="",
        tested="Megatron-LM main at d98e8a64ddf3 (0.20.0)",
        linear_backward_casts_grad_output=True,
    ),
)
"""The supported megatron-core series, oldest first."""

SUPPORTED_SERIES = ", ".join(f"{v.series}.x" for v in SUPPORTED_VERSIONS)
"""For messages: "0.19.x, 0.20.x"."""

SCHEDULE_ENTRIES: tuple[str, ...] = (
    "forward_backward_no_pipelining",
    "forward_backward_pipelining_without_interleaving",
    "forward_backward_pipelining_with_interleaving",
)
"""Schedule entry points wrapped for iteration bookkeeping."""

_FORWARD_KWARGS = ("current_microbatch", "vp_stage")
_BACKWARD_PARAMS = ("input_tensor", "output_tensor", "output_tensor_grad", "config")

HOOK_POINTS_ATTR = "TIMELYFREEZE_HOOK_POINTS"
"""Set in schedules.py by `patches/megatron-core-*/*.patch`: explicit hook points exist."""


def series_of(version: str) -> str:
    """ "0.20.0rc1+abc" -> "0.20"."""
    return ".".join(version.split("+")[0].split(".")[:2])


def supported(version: str) -> SupportedVersion | None:
    """The table entry for `version`, or None when no entry covers it."""
    series = series_of(version)
    return next((v for v in SUPPORTED_VERSIONS if v.series == series), None)


def _is_installed_package(core_dir: Path) -> bool:
    """True for a megatron-core installed by pip (under site-packages), False for a checkout."""
    return bool({"site-packages", "dist-packages"} & set(core_dir.resolve().parts))


def _fix(core_dir: Path | None) -> str:
    """A fix that works for where this megatron/core came from."""
    if core_dir is not None and not _is_installed_package(core_dir):
        checkout = core_dir.parents[1]
        return (
            f"check out a supported branch or tag of Megatron-LM there, e.g. "
            f"`git -C {checkout} checkout {SUPPORTED_VERSIONS[0].megatron_lm}`"
        )
    releases = [v for v in SUPPORTED_VERSIONS if v.pip]
    return f"install a supported one: pip install {releases[-1].pip}"


def unsupported_message(version: str, core_dir: Path | None) -> str:
    """One line: the version found, where it came from, what is supported, a fix that works."""
    where = f" at {core_dir}" if core_dir is not None else ""
    table = ", ".join(f"{v.series}.x (Megatron-LM {v.megatron_lm})" for v in SUPPORTED_VERSIONS)
    return (
        f"megatron-core {version}{where} is not supported: TimelyFreeze's schedule hooks "
        f"support {table}; {_fix(core_dir)}"
    )


def megatron_version() -> str:
    """The imported megatron-core version string, e.g. '0.19.2'."""
    try:
        from megatron.core import package_info
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise UnsupportedMegatronError(
            f"megatron-core is not importable ({exc}); install one of {SUPPORTED_SERIES}"
        ) from None
    return str(package_info.__version__)


def current() -> SupportedVersion:
    """The table entry of the imported megatron-core (UnsupportedMegatronError if none)."""
    return check_version()


def private(reference: str) -> Any:
    """Resolve a "module:attribute" reference from the table, e.g. `current().index_reader`.

    The one way code outside this module reaches a private megatron-core name, so a version
    that renames it fails here with one sentence instead of an ImportError deep in a rank.
    """
    module_name, _, attr = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UnsupportedMegatronError(
            f"megatron-core {megatron_version()} has no {reference} ({exc}); TimelyFreeze "
            f"supports {SUPPORTED_SERIES}"
        ) from None


def check_version(version: str | None = None) -> SupportedVersion:
    """Raise unless `version` (default: the imported one) is in a supported series."""
    core_dir = None
    if version is None:
        version = megatron_version()
        import megatron.core

        core_dir = Path(megatron.core.__file__).parent
    entry = supported(version)
    if entry is None:
        raise UnsupportedMegatronError(unsupported_message(version, core_dir))
    return entry


# --- before launch: which megatron/core will the ranks import, and which version is it? -----


def read_core_version(core_dir: Path) -> str:
    """The version in `core_dir/package_info.py`, read as text (nothing is imported).

    megatron-core writes it as MAJOR, MINOR, PATCH and PRE_RELEASE constants.
    """
    info = core_dir / "package_info.py"
    try:
        tree = ast.parse(info.read_text(encoding="utf-8"), filename=str(info))
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnsupportedMegatronError(
            f"cannot read the megatron-core version from {info}: {exc}"
        ) from None
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    try:
        base = f"{int(found['MAJOR'])}.{int(found['MINOR'])}.{int(found['PATCH'])}"
    except (KeyError, TypeError, ValueError):
        raise UnsupportedMegatronError(
            f"cannot read the megatron-core version from {info}: no MAJOR/MINOR/PATCH constants"
        ) from None
    return base + str(found.get("PRE_RELEASE") or "")


def locate_core(search_path: Sequence[str]) -> Path | None:
    """The `megatron/core` folder Python would import with `search_path` as sys.path.

    `megatron` is a namespace package in both Megatron-LM and the megatron-core wheel, so the
    first entry holding `megatron/core/__init__.py` wins, unless some entry holds a regular
    `megatron/__init__.py`, which then wins for every submodule.
    """
    entries = [Path(e or os.getcwd()) for e in search_path]
    for entry in entries:
        if (entry / "megatron" / "__init__.py").is_file():
            core = entry / "megatron" / "core"
            return core if (core / "__init__.py").is_file() else None
    for entry in entries:
        if (entry / "megatron" / "core" / "__init__.py").is_file():
            return entry / "megatron" / "core"
    return None


def core_before_launch(checkout: Path | None = None) -> tuple[str, Path]:
    """Check the megatron-core the ranks will import, before any of them starts.

    `checkout`: the `--megatron-lm` folder, which goes first on the ranks' sys.path (its own
    megatron/core shadows the installed package); None for the built-in trainer.
    Returns (version, core folder); raises `UnsupportedMegatronError` in one line.
    """
    search = ([str(checkout)] if checkout is not None else []) + list(sys.path)
    core_dir = locate_core(search)
    if core_dir is None:
        spec = importlib.util.find_spec("megatron")
        where = f" or in {checkout}" if checkout is not None else ""
        if spec is None or not spec.submodule_search_locations:
            raise UnsupportedMegatronError(
                f"no megatron/core found on the Python path{where}; install one of "
                f"{SUPPORTED_SERIES}"
            )
        core_dir = Path(next(iter(spec.submodule_search_locations))) / "core"
    version = read_core_version(core_dir)
    if supported(version) is None:
        raise UnsupportedMegatronError(unsupported_message(version, core_dir))
    return version, core_dir


def has_hook_points(schedules: ModuleType) -> bool:
    """True when schedules.py carries the explicit hook points added by our patch."""
    return getattr(schedules, HOOK_POINTS_ATTR, 0) >= 1


def check_schedules(schedules: ModuleType) -> None:
    """Raise unless schedules.py has the functions and call signatures the hooks rely on."""
    missing = [
        name
        for name in ("forward_step", "backward_step", *SCHEDULE_ENTRIES)
        if not callable(getattr(schedules, name, None))
    ]
    if missing:
        raise UnsupportedMegatronError(
            f"megatron.core.pipeline_parallel.schedules lacks {', '.join(missing)}; "
            f"TimelyFreeze needs megatron-core {SUPPORTED_SERIES}"
        )
    fwd = inspect.signature(schedules.forward_step).parameters
    absent = [k for k in _FORWARD_KWARGS if k not in fwd]
    if absent:
        raise UnsupportedMegatronError(
            f"schedules.forward_step has no {', '.join(absent)} argument; "
            f"TimelyFreeze needs megatron-core {SUPPORTED_SERIES}"
        )
    bwd = tuple(inspect.signature(schedules.backward_step).parameters)
    if bwd[: len(_BACKWARD_PARAMS)] != _BACKWARD_PARAMS:
        raise UnsupportedMegatronError(
            f"schedules.backward_step takes {bwd}, expected {_BACKWARD_PARAMS} first; "
            f"TimelyFreeze needs megatron-core {SUPPORTED_SERIES}"
        )
    if has_hook_points(schedules) and not {"vp_stage", "microbatch_id"} <= set(bwd):
        raise UnsupportedMegatronError(
            "schedules.py says it has TimelyFreeze hook points but backward_step lacks "
            "vp_stage/microbatch_id; re-apply the patch with `timelyfreeze patch apply`"
        )


@dataclass(frozen=True, slots=True)
class Refusal:
    """One setting the freeze runtime cannot run exactly: the same entry refuses the Megatron-LM
    flag before launch (`refused_flags`) and the config attribute at install
    (`refused_settings`)."""

    flag: str
    """The Megatron-LM command-line flag that turns it on."""
    attr: str
    """The attribute of a TransformerConfig, DistributedDataParallelConfig or Megatron args."""
    reason: str
    """Why, in one clause (docs/support.md quotes it)."""
    on: Callable[[Any], bool] | None = None
    """When it is on (default: the attribute is truthy)."""

    def enabled(self, config: Any) -> bool:
        """True when `config` (a Megatron config, args, or the namespace of a scanned argv)
        turns this setting on."""
        if self.on is not None:
            return self.on(config)
        return bool(getattr(config, self.attr, False))


def _te_bias_outside_fp8(config: Any) -> bool:
    biased = getattr(config, "add_bias_linear", False) or getattr(config, "add_qkv_bias", False)
    te = getattr(config, "transformer_impl", None) == "transformer_engine"
    return bool(te and biased and not getattr(config, "fp8", None))


def _te_bulk_wgrad_overlap(config: Any) -> bool:
    return bool(
        getattr(config, "tp_comm_overlap", False)
        and getattr(config, "tp_comm_bulk_wgrad", True)
        and not getattr(config, "tp_comm_overlap_rs_dgrad", False)
        and getattr(config, "sequence_parallel", False)
        and getattr(config, "transformer_impl", None) == "transformer_engine"
    )


def _cuda_graph_impl(config: Any) -> bool:
    return getattr(config, "cuda_graph_impl", "none") not in (None, "none")


_CUDA_GRAPHS = "CUDA graphs replay captured kernels and ignore requires_grad"

REFUSALS: tuple[Refusal, ...] = (
    # TransformerEngine v2.17.1 pytorch/module/base.py ("Non-FP8 case: bgrad is fused with
    # wgrad"), module/linear.py and layernorm_linear.py `_Linear.backward`: without FP8 the bias
    # gradient comes out of the weight-gradient GEMM, which a frozen weight skips.
    Refusal(
        "--transformer-impl transformer_engine",
        "transformer_impl",
        "TransformerEngine's linears compute their bias gradient only inside the weight-gradient "
        "GEMM outside FP8, so a frozen weight would leave its bias gradient a partial sum; pass "
        "--disable-bias-linear (and no --add-qkv-bias) or --transformer-impl local",
        _te_bias_outside_fp8,
    ),
    # TransformerEngine v2.17.1 module/layernorm_linear.py `_LayerNormLinear.backward`: with
    # ub_bulk_wgrad (kept only with sequence parallel and no ub_overlap_rs_dgrad) the dgrad GEMM
    # leaves this rank's unreduced chunk and the reduce-scatter runs as the bulk overlap of the
    # wgrad GEMM, inside `if ctx.requires_wgrad:`. Megatron passes ub_bulk_wgrad only to
    # TELayerNormColumnParallelLinear (extensions/transformer_engine.py); local linears ignore
    # every tp_comm_* setting.
    Refusal(
        "--tp-comm-overlap",
        "tp_comm_overlap",
        "with sequence parallelism TransformerEngine's bulk wgrad overlap reduce-scatters the "
        "input gradient only when the weight needs a gradient; turn off its bulk wgrad overlap "
        "(tp_comm_bulk_wgrad) or pass --tp-comm-overlap-rs-dgrad",
        _te_bulk_wgrad_overlap,
    ),
    # megatron/core/distributed/distributed_data_parallel.py `_make_forward_pre_hook`:
    # `assert param.requires_grad` before each gathered parameter is used.
    Refusal(
        "--overlap-param-gather",
        "overlap_param_gather",
        "Megatron DDP's forward pre-hook asserts that every parameter requires a gradient",
    ),
    # megatron/core/distributed/fsdp/ and torch_fully_sharded_data_parallel.py: parameters are
    # sharded into flat buffers whose gradient reduction knows no frozen parameter.
    Refusal(
        "--use-megatron-fsdp",
        "use_megatron_fsdp",
        "Megatron-FSDP shards parameters into buffers the freeze runtime does not reach",
    ),
    Refusal(
        "--use-torch-fsdp2",
        "use_torch_fsdp2",
        "torch FSDP2 shards parameters into DTensors the freeze runtime does not reach",
    ),
    # megatron/core/transformer/moe/experts.py `TEGroupedMLP`: one grouped linear holds every
    # local expert's weight, so experts cannot be frozen one by one.
    Refusal(
        "--moe-grouped-gemm",
        "moe_grouped_gemm",
        "grouped expert weights are not freezable units yet",
    ),
    # The following bypass forward_step/backward_step or compute weight gradients outside the
    # backward the hooks bracket (docs/megatron-notes.md).
    Refusal(
        "--overlap-moe-expert-parallel-comm",
        "overlap_moe_expert_parallel_comm",
        "its combined 1F1B schedule bypasses forward_step/backward_step",
    ),
    Refusal(
        "--delay-wgrad-compute",
        "delay_wgrad_compute",
        "it computes weight gradients outside the hooked backward",
    ),
    Refusal(
        "--defer-embedding-wgrad-compute",
        "defer_embedding_wgrad_compute",
        "its deferred embedding wgrad buffer asserts under frozen weights",
    ),
    Refusal("--enable-cuda-graph", "enable_cuda_graph", _CUDA_GRAPHS),
    Refusal("--external-cuda-graph", "external_cuda_graph", _CUDA_GRAPHS),
    Refusal("--cuda-graph-impl", "cuda_graph_impl", _CUDA_GRAPHS, _cuda_graph_impl),
    Refusal(
        "--calculate-per-token-loss",
        "calculate_per_token_loss",
        "its per-token loss scaling is not combined with the freeze rescale",
    ),
)
"""Every setting refused with freezing; docs/support.md lists the same rows."""


class _Overlay:
    """`base` with some attributes replaced (the spec a model was really built with)."""

    def __init__(self, base: Any, overrides: dict[str, Any]) -> None:
        self._base, self._overrides = base, overrides

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._base, name)


def refused_settings(config: Any, transformer_impl: str | None = None) -> list[str]:
    """One sentence per setting of a Megatron config that the freeze runtime cannot carry.

    `transformer_impl`: the spec the model was built with, when known from its modules: a
    TransformerConfig keeps its default "transformer_engine" even under the local spec."""
    if transformer_impl is not None:
        config = _Overlay(config, {"transformer_impl": transformer_impl})
    return [
        f"{r.attr}={getattr(config, r.attr, None)!r} is not supported with freezing: {r.reason}"
        for r in REFUSALS
        if r.enabled(config)
    ]


def check_config(config: Any, transformer_impl: str | None = None) -> None:
    """Raise `UnsupportedMegatronError` (one sentence) if `config` enables a refused path."""
    problems = refused_settings(config, transformer_impl)
    if problems:
        raise UnsupportedMegatronError(problems[0] + "; turn it off to use TimelyFreeze")


# Megatron-LM's defaults (megatron/core/transformer/transformer_config.py, model_parallel_config.py:
# transformer_impl "transformer_engine", add_bias_linear True, fp8 None; arguments.py
# --cuda-graph-impl "none") for the attributes the table reads, and the flags that set them.
_ARGV_DEFAULTS: dict[str, Any] = {
    "transformer_impl": "transformer_engine",
    "add_bias_linear": True,
    "add_qkv_bias": False,
    "fp8": None,
    "cuda_graph_impl": "none",
    "tp_comm_overlap": False,
    "tp_comm_bulk_wgrad": True,
    "tp_comm_overlap_rs_dgrad": False,
    "sequence_parallel": False,
}
_VALUE_FLAGS = {
    "--transformer-impl": "transformer_impl",
    "--fp8-format": "fp8",
    "--cuda-graph-impl": "cuda_graph_impl",
}
_SWITCHES: dict[str, tuple[str, bool]] = {
    "--disable-bias-linear": ("add_bias_linear", False),
    "--add-qkv-bias": ("add_qkv_bias", True),
    "--tp-comm-overlap": ("tp_comm_overlap", True),
    "--disable-tp-comm-bulk-wgrad": ("tp_comm_bulk_wgrad", False),
    "--no-tp-comm-bulk-wgrad": ("tp_comm_bulk_wgrad", False),
    "--tp-comm-overlap-rs-dgrad": ("tp_comm_overlap_rs_dgrad", True),
    "--sequence-parallel": ("sequence_parallel", True),
}


def settings_from_argv(argv: Sequence[str]) -> SimpleNamespace:
    """The table's attributes as Megatron-LM would parse them from `argv` (its defaults where a
    flag is absent); only the flags above are read, the rest pass untouched."""
    values = dict(_ARGV_DEFAULTS)
    switches = dict(_SWITCHES)
    switches.update({r.flag: (r.attr, True) for r in REFUSALS if r.on is None})
    tokens = list(argv)
    for i, token in enumerate(tokens):
        name, eq, inline = token.partition("=")
        if name in _VALUE_FLAGS:
            if eq:
                values[_VALUE_FLAGS[name]] = inline
            elif i + 1 < len(tokens):
                values[_VALUE_FLAGS[name]] = tokens[i + 1]
        elif token in switches:
            attr, value = switches[token]
            values[attr] = value
    return SimpleNamespace(**values)


def refused_flags(argv: Sequence[str]) -> list[Refusal]:
    """The table entries a Megatron-LM command line turns on, in table order."""
    settings = settings_from_argv(argv)
    return [r for r in REFUSALS if r.enabled(settings)]


def check_argv(argv: Sequence[str]) -> None:
    """Refuse, in one line naming every refused flag with its reason, before any rank starts."""
    found = refused_flags(argv)
    if found:
        listed = "; ".join(f"{r.flag} ({r.reason})" for r in found)
        raise UnsupportedMegatronError(
            f"Megatron-LM arguments not supported with freezing: {listed}"
        )


def check_all(config: Any | None = None, transformer_impl: str | None = None) -> ModuleType:
    """Version, schedule signatures and (if given) config; returns the schedules module."""
    check_version()
    from megatron.core.pipeline_parallel import schedules

    check_schedules(schedules)
    if config is not None:
        check_config(config, transformer_impl)
    return schedules
