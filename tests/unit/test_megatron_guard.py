"""The version and flag guard refuses, in one sentence, what the hooks cannot carry."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from megatron_tf.errors import UnsupportedMegatronError
from megatron_tf.megatron import guard

REPO = Path(__file__).resolve().parents[2]


def test_installed_megatron_is_supported() -> None:
    import megatron.core
    from megatron.core.pipeline_parallel import schedules

    assert guard.check_version().series == "0.19"
    guard.check_schedules(schedules)
    # Read as text before launch, it is the version the import reports.
    version, core = guard.core_before_launch()
    assert version == megatron.core.__version__.split("+")[0]  # without the git hash
    assert core == Path(megatron.core.__file__).parent


@pytest.mark.parametrize(
    ("version", "series"),
    [("0.19.0", "0.19"), ("0.19.2", "0.19"), ("0.20.0", "0.20"), ("0.20.1rc0+a1b2c3", "0.20")],
)
def test_table_covers_both_series(version: str, series: str) -> None:
    assert guard.check_version(version).series == series
    entry = guard.supported(version)
    assert entry is not None
    # Every entry has its own patch set in the repository.
    assert (REPO / "patches" / entry.patch_set).is_dir()


@pytest.mark.parametrize("version", ["0.18.1", "0.21.0", "1.0.0rc1"])
def test_other_versions_are_refused(version: str) -> None:
    with pytest.raises(UnsupportedMegatronError) as info:
        guard.check_version(version)
    message = str(info.value)
    assert message.startswith(f"megatron-core {version} is not supported: ")
    assert "0.19.x (Megatron-LM core_r0.19.0), 0.20.x (Megatron-LM main)" in message
    assert "\n" not in message


def fake_core(root: Path, minor: int, pre: str = "") -> Path:
    """A megatron/core whose package_info.py says 0.<minor>.0<pre>, written as megatron-core
    writes it (MAJOR/MINOR/PATCH/PRE_RELEASE constants, then derived strings)."""
    core = root / "megatron" / "core"
    core.mkdir(parents=True)
    (core / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (core / "package_info.py").write_text(
        f"MAJOR = 0\nMINOR = {minor}\nPATCH = 0\nPRE_RELEASE = {pre!r}\n"
        "VERSION = (MAJOR, MINOR, PATCH, PRE_RELEASE)\n"
        "__version__ = '.'.join(map(str, VERSION[:3])) + ''.join(VERSION[3:])\n"
    )
    return core


def test_a_checkout_shadows_the_installed_package(tmp_path: Path) -> None:
    core = fake_core(tmp_path, 20, "rc1")
    assert guard.core_before_launch(tmp_path) == ("0.20.0rc1", core)


def test_unsupported_checkout_is_refused_with_a_fix_that_works(tmp_path: Path) -> None:
    core = fake_core(tmp_path, 21)
    with pytest.raises(UnsupportedMegatronError) as info:
        guard.core_before_launch(tmp_path)
    message = str(info.value)
    assert message.startswith(f"megatron-core 0.21.0 at {core} is not supported")
    # Installing a wheel cannot fix a checkout that shadows it: check out a supported ref.
    assert f"`git -C {tmp_path} checkout core_r0.19.0`" in message
    assert "pip install" not in message


def test_unsupported_installed_package_says_pip(tmp_path: Path) -> None:
    core = fake_core(tmp_path / "lib" / "site-packages", 18)
    assert "pip install megatron-core==0.19.2" in guard.unsupported_message("0.18.0", core)


def test_unreadable_version_is_refused(tmp_path: Path) -> None:
    core = fake_core(tmp_path, 20)
    (core / "package_info.py").write_text("__version__ = get()\n")
    with pytest.raises(UnsupportedMegatronError, match="no MAJOR/MINOR/PATCH constants"):
        guard.core_before_launch(tmp_path)


@pytest.mark.parametrize(("name", "version"), [("core_r0.19.0", "0.19.1"), ("main", "0.20.0")])
def test_megatron_lm_snapshots_are_read_right(
    name: str, version: str, megatron_lm_snapshot
) -> None:
    root = megatron_lm_snapshot(name)
    assert guard.core_before_launch(root) == (version, root / "megatron" / "core")


@pytest.mark.parametrize(
    "flag",
    [
        "overlap_moe_expert_parallel_comm",
        "delay_wgrad_compute",
        "defer_embedding_wgrad_compute",
        "enable_cuda_graph",
        "external_cuda_graph",
        "calculate_per_token_loss",
    ],
)
def test_refused_flags(flag: str) -> None:
    with pytest.raises(UnsupportedMegatronError, match=rf"^{flag}=True is not supported") as info:
        guard.check_config(SimpleNamespace(**{flag: True}))
    assert "\n" not in str(info.value)


def test_cuda_graph_impl_is_refused_and_defaults_pass() -> None:
    with pytest.raises(UnsupportedMegatronError, match="cuda_graph_impl='local'"):
        guard.check_config(SimpleNamespace(cuda_graph_impl="local"))
    guard.check_config(SimpleNamespace(cuda_graph_impl="none", delay_wgrad_compute=False))


def test_changed_signatures_are_refused() -> None:
    def forward_step(a, b):  # no current_microbatch / vp_stage
        return None

    def backward_step(input_tensor, output_tensor, output_tensor_grad, config):
        return None

    fake = SimpleNamespace(
        forward_step=forward_step,
        backward_step=backward_step,
        **{name: (lambda: None) for name in guard.SCHEDULE_ENTRIES},
    )
    with pytest.raises(UnsupportedMegatronError, match="forward_step has no current_microbatch"):
        guard.check_schedules(fake)
    del fake.forward_backward_pipelining_with_interleaving
    with pytest.raises(UnsupportedMegatronError, match="lacks forward_backward_pipelining_with"):
        guard.check_schedules(fake)


# --- the refusal table: one entry refuses the config attribute and the Megatron-LM flag -------

TE_BIAS = dict(transformer_impl="transformer_engine", add_bias_linear=True, fp8=None)


@pytest.mark.parametrize("refusal", guard.REFUSALS, ids=lambda r: r.attr)
def test_each_table_entry_refuses_its_setting(refusal: guard.Refusal) -> None:
    on = {
        "transformer_impl": TE_BIAS,
        "cuda_graph_impl": {"cuda_graph_impl": "transformer_engine"},
        "tp_comm_overlap": {
            "tp_comm_overlap": True,
            "sequence_parallel": True,
            "transformer_impl": "transformer_engine",
        },
    }.get(refusal.attr, {refusal.attr: True})
    with pytest.raises(UnsupportedMegatronError, match=rf"^{refusal.attr}=") as info:
        guard.check_config(SimpleNamespace(**on))
    assert refusal.reason in str(info.value) and "\n" not in str(info.value)
    assert guard.refused_settings(SimpleNamespace()) == []


@pytest.mark.parametrize(
    "settings",
    [
        dict(TE_BIAS, add_bias_linear=False),
        dict(TE_BIAS, fp8="hybrid"),
        dict(TE_BIAS, transformer_impl="local", add_qkv_bias=True),
    ],
)
def test_transformer_engine_without_bias_or_with_fp8_passes(settings: dict) -> None:
    guard.check_config(SimpleNamespace(**settings))


def test_te_bias_is_refused_by_qkv_bias_and_by_the_built_spec() -> None:
    qkv = SimpleNamespace(**dict(TE_BIAS, add_bias_linear=False, add_qkv_bias=True))
    with pytest.raises(UnsupportedMegatronError, match="--disable-bias-linear"):
        guard.check_config(qkv)
    # A TransformerConfig keeps transformer_impl="transformer_engine" under the local spec: the
    # spec the model was really built with decides.
    guard.check_config(SimpleNamespace(**TE_BIAS), transformer_impl="local")
    with pytest.raises(UnsupportedMegatronError, match="transformer_impl='transformer_engine'"):
        guard.check_config(SimpleNamespace(**TE_BIAS), transformer_impl="transformer_engine")


GPU_RECIPE = [
    "--num-layers", "32", "--hidden-size", "4096", "--swiglu", "--bf16",
    "--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather",
    "--sequence-parallel", "--tp-comm-overlap", "--num-experts", "8", "--moe-grouped-gemm",
]  # fmt: skip


def test_argv_scan_names_every_refused_flag_of_a_gpu_recipe() -> None:
    assert [r.flag for r in guard.refused_flags(GPU_RECIPE)] == [
        "--transformer-impl transformer_engine",  # Megatron-LM's default, with its biases
        "--tp-comm-overlap",
        "--overlap-param-gather",
        "--moe-grouped-gemm",
    ]
    with pytest.raises(UnsupportedMegatronError) as info:
        guard.check_argv(GPU_RECIPE)
    message = str(info.value)
    assert "\n" not in message
    for refusal in guard.refused_flags(GPU_RECIPE):
        assert f"{refusal.flag} ({refusal.reason})" in message


@pytest.mark.parametrize(
    "spec",
    [["--transformer-impl", "local"], ["--transformer-impl=local"], ["--disable-bias-linear"]],
)
def test_argv_scan_passes_handled_settings(spec: list[str]) -> None:
    recipe = ["--num-layers", "4", *spec, "--bf16", "--overlap-grad-reduce", "--sequence-parallel"]
    assert guard.refused_flags(recipe) == []
    guard.check_argv(recipe)


def test_argv_scan_reads_every_flag_of_the_table() -> None:
    for refusal in guard.REFUSALS:
        if refusal.attr == "transformer_impl":
            argv = ["--add-qkv-bias", "--disable-bias-linear"]  # the default spec, a qkv bias
        elif refusal.attr == "tp_comm_overlap":  # TE's bulk wgrad overlap, sequence parallel
            argv = ["--disable-bias-linear", "--sequence-parallel", refusal.flag]
        elif refusal.attr == "cuda_graph_impl":
            argv = ["--transformer-impl", "local", "--cuda-graph-impl", "local"]
        else:
            argv = ["--transformer-impl", "local", refusal.flag]
        assert guard.refused_flags(argv) == [refusal], refusal.flag
    local = ["--transformer-impl", "local"]
    assert guard.refused_flags([*local, "--cuda-graph-impl=none"]) == []
    assert guard.refused_flags(["--fp8-format", "hybrid"]) == []  # TE with FP8: bias in FP8 path


@pytest.mark.parametrize(
    "extra",
    [
        ["--transformer-impl", "local", "--sequence-parallel"],  # local linears ignore tp_comm_*
        [],  # no sequence parallelism: TE keeps no bulk wgrad overlap
        ["--sequence-parallel", "--tp-comm-overlap-rs-dgrad"],
        ["--sequence-parallel", "--disable-tp-comm-bulk-wgrad"],
        ["--sequence-parallel", "--no-tp-comm-bulk-wgrad"],
    ],
)
def test_tp_comm_overlap_is_refused_only_with_the_bulk_wgrad_overlap(extra: list[str]) -> None:
    assert guard.refused_flags(["--disable-bias-linear", "--tp-comm-overlap", *extra]) == []
