"""The zero-bubble runtime's pieces that need no torchrun: how `--schedule zb-h1` reaches the
layout and the Megatron-LM job, the refusals before launch, the split's refusals of Megatron
settings, and the schedule-entry replacement composing with the hooks in either order.

The gradients, the order proof and the memory bound run under torchrun
(tests/dist/test_freeze_runtime.py, tests/dist/test_schedule_order.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from megatron_tf.cli import app
from megatron_tf.cli._megatron_lm import check_zero_bubble_args
from megatron_tf.errors import ConfigError
from megatron_tf.formats.layout import ParallelConfig
from megatron_tf.megatron.split_backward import TE_REFUSAL, split_refusals
from megatron_tf.train.lm_script import MegatronLMJob

LOCAL = ["--transformer-impl", "local", "--no-gradient-accumulation-fusion"]


def test_layout_runs_the_named_schedule_in_place_of_1f1b() -> None:
    spec = ParallelConfig(pp=4, microbatches=8, schedule="zb-h1").schedule_spec()
    assert (spec.kind, spec.pp, spec.vpp, spec.microbatches) == ("zb-h1", 4, 1, 8)
    assert ParallelConfig(pp=4, microbatches=8).schedule_spec().kind == "1f1b"
    assert ParallelConfig(pp=4, microbatches=8, schedule="1f1b").schedule_spec().kind == "1f1b"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "zb-v"}, r"--schedule zb-v is not one training runs: .* use zb-h1"),
        ({"schedule": "zb-h1", "vpp": 2, "pp": 4}, r"zb-h1 schedule has one chunk per rank"),
        ({"schedule": "zb-h1", "pp": 1}, r"--schedule zb-h1 needs --pp >= 2"),
    ],
)
def test_layout_refuses_what_training_cannot_run(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ParallelConfig(**{"pp": 2, "microbatches": 4, **kwargs})


def test_pretrain_flag_refuses_in_one_line_before_launch() -> None:
    result = CliRunner().invoke(app, ["pretrain", "--schedule", "zb-h1", "--vpp", "2", "--pp", "4"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [
        "error: the zb-h1 schedule has one chunk per rank: --vpp must be 1, got 2 "
        "(use --schedule interleaved)"
    ], result.output


def test_megatron_lm_job_carries_the_schedule(tmp_path: Path) -> None:
    job = MegatronLMJob(script=tmp_path / "pretrain_gpt.py", schedule="zb-h1")
    assert MegatronLMJob.from_dict(job.to_dict()).schedule == "zb-h1"
    assert MegatronLMJob.from_dict({"script": "x.py"}).schedule == ""  # older job files


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-layers", "2"], r"needs Megatron-LM's `--transformer-impl local`"),
        (["--transformer-impl", "local"], r"needs Megatron-LM's `--no-gradient-accumulation"),
        (["--transformer-impl=transformer_engine", *LOCAL[2:]], r"--transformer-impl local"),
    ],
)
def test_megatron_lm_defaults_are_refused_before_launch(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_zero_bubble_args("zb-h1", args)


def test_megatron_lm_args_that_turn_both_off_pass() -> None:
    check_zero_bubble_args("zb-h1", ["--num-layers", "2", *LOCAL])
    check_zero_bubble_args("zb-h1", ["--transformer-impl=local", *LOCAL[2:]])
    check_zero_bubble_args("", [])  # Megatron-LM's own schedule: nothing to check


def test_split_refusals_name_each_setting() -> None:
    config = SimpleNamespace(
        gradient_accumulation_fusion=True,
        delay_wgrad_compute=True,
        mtp_num_layers=1,
        cuda_graph_impl="transformer_engine",
    )
    problems = split_refusals(config)
    assert [p.split(":")[0] for p in problems] == [
        "gradient_accumulation_fusion=True",
        "delay_wgrad_compute=True",
        "mtp_num_layers > 0",
        "cuda_graph_impl='transformer_engine'",
    ]
    assert split_refusals(SimpleNamespace()) == []
    assert "unverified until a GPU check runs it" in TE_REFUSAL


def test_schedule_entry_replacement_composes_with_the_hooks() -> None:
    """Replaced before or after the hooks are installed, removed before or after: the entry
    runs the replacement under the hooks' bookkeeping, and megatron-core's own function is
    back in place once both are gone."""
    from megatron.core.pipeline_parallel import schedules

    from megatron_tf.megatron import hooks
    from megatron_tf.megatron.zero_bubble import ENTRY

    stock = getattr(schedules, ENTRY)
    seen: list[str] = []

    class Starts(hooks.ScheduleObserver):
        def iteration_start(self) -> None:
            seen.append("start")

    def replacement(**kwargs: object) -> str:
        return "replaced"

    for replace_first in (True, False):
        seen.clear()
        if replace_first:
            hooks.set_schedule_entry(ENTRY, replacement)
            handle = hooks.install_hooks(Starts())
        else:
            handle = hooks.install_hooks(Starts())
            hooks.set_schedule_entry(ENTRY, replacement)
        assert getattr(schedules, ENTRY)(num_microbatches=2) == "replaced"
        assert seen == ["start"]
        if replace_first:
            handle.remove()
            assert getattr(schedules, ENTRY) is replacement
            hooks.set_schedule_entry(ENTRY, None)
        else:
            hooks.set_schedule_entry(ENTRY, None)
            assert getattr(schedules, ENTRY) is not stock  # still the hooks' wrapper
            handle.remove()
        assert getattr(schedules, ENTRY) is stock
