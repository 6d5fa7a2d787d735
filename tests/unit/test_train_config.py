"""ModelConfig / ParallelConfig validation: every message names the flag to change."""

from __future__ import annotations

import pytest

from megatron_tf.errors import ConfigError
from megatron_tf.formats.layout import ModelConfig, ParallelConfig


def test_defaults_are_a_small_gpt_on_two_pipeline_ranks() -> None:
    model, parallel = ModelConfig(), ParallelConfig()
    assert model.ffn_hidden_size == 4 * model.hidden_size
    parallel.check_model(model)
    assert parallel.world_size == 2
    spec = parallel.schedule_spec()
    assert (spec.kind, spec.pp, spec.microbatches) == ("1f1b", 2, 4)


def test_interleaved_spec_carries_group_size_and_overlap() -> None:
    parallel = ParallelConfig(pp=2, vpp=2, microbatches=6, group_size=3, overlap_p2p_comm=True)
    spec = parallel.schedule_spec()
    assert (spec.kind, spec.vpp, spec.group_size, spec.overlap_p2p_comm) == (
        "interleaved",
        2,
        3,
        True,
    )


def test_round_trip_through_dicts() -> None:
    model = ModelConfig(num_layers=8, recompute="full")
    parallel = ParallelConfig(pp=4, vpp=2, microbatches=8)
    assert ModelConfig.from_dict(model.to_dict()) == model
    assert ParallelConfig.from_dict(parallel.to_dict()) == parallel


@pytest.mark.parametrize(
    ("model", "parallel", "match"),
    [
        ({}, {"pp": 3}, r"--pp 3 x --vpp 1 = 3 virtual stages must divide --num-layers 4"),
        ({"num_attention_heads": 3}, {}, r"--num-attention-heads 3 must divide --hidden-size 64"),
        ({}, {"tp": 3}, r"--tp 3 must divide --num-attention-heads 4"),
        ({"vocab_size": 511}, {"tp": 2}, r"--tp 2 must divide --vocab-size 511"),
        ({"recompute": "some"}, {}, r"--recompute must be one of none, full, selective"),
        ({"seq_length": 0}, {}, r"--seq-length must be a positive integer, got 0"),
    ],
)
def test_model_and_layout_errors(model: dict, parallel: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ParallelConfig(**parallel).check_model(ModelConfig(**model))


@pytest.mark.parametrize(
    ("parallel", "match"),
    [
        ({"pp": 2, "vpp": 2}, r"--pp 2 with --vpp > 1 needs --overlap-p2p-comm"),
        ({"pp": 4, "vpp": 2, "microbatches": 6}, r"M mod group size to be 0 or >= PP=4"),
        ({"pp": 4, "vpp": 2, "microbatches": 3}, r"\[PP=4, M=3\]"),
        ({"pp": 2, "group_size": 3}, r"--group-size applies to the interleaved schedule"),
        ({"pp": 2, "overlap_p2p_comm": True}, r"--overlap-p2p-comm applies to the interleaved"),
        ({"dp": 0}, r"--dp must be a positive integer, got 0"),
        ({"pp": 1, "vpp": 2}, r"--vpp 2 needs --pp >= 2"),
    ],
)
def test_layout_errors_follow_megatron(parallel: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ParallelConfig(**parallel)


def test_pp_1_is_a_valid_reference_layout_without_a_schedule() -> None:
    parallel = ParallelConfig(pp=1)
    with pytest.raises(ConfigError, match="--pp must be at least 2"):
        parallel.schedule_spec()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"plan": "auto", "max_freeze_ratio": "auto", "reprice_every": -1}, "--reprice-every"),
        ({"plan": "auto", "max_freeze_ratio": 0.3, "reprice_every": 5}, "--max-freeze-ratio"),
        ({"max_freeze_ratio": "auto", "reprice_every": 5}, "--plan"),
        ({"plan": "p.json", "max_freeze_ratio": "auto", "reprice_every": 5}, "--reprice-profile"),
        ({"plan": "auto", "auto_min_saving": 1.0}, "--auto-min-saving"),
        ({"plan": "auto", "auto_min_saving": -0.01}, "--auto-min-saving"),
        ({"plan": "auto", "replan_lag": -1}, "--replan-lag must be >= 0"),
        ({"plan": "p.json", "replan_lag": 2}, "--replan-lag applies to in-job plans"),
    ],
)
def test_reprice_refusals(options: dict, match: str) -> None:
    from megatron_tf.train.train_config import FreezeOptions

    with pytest.raises(ConfigError, match=match):
        FreezeOptions(**options)
    FreezeOptions(plan="auto", max_freeze_ratio="auto", reprice_every=5)  # the valid form


def test_freeze_options_hold_one_freeze_config() -> None:
    """One seed default and one validation for the runtime's settings, wherever they come from."""
    from megatron_tf.freeze.config import FreezeConfig
    from megatron_tf.train.train_config import FreezeOptions, TrainConfig

    assert FreezeOptions().runtime == FreezeConfig()
    train = TrainConfig(freeze=FreezeOptions(runtime=FreezeConfig(rescale="none", seed=7)))
    assert TrainConfig.from_dict(train.to_dict()) == train
    with pytest.raises(ConfigError, match="--freeze-warmup-iters must be an integer >= 0"):
        FreezeOptions.from_dict({"runtime": {"warmup_iters": -1}})
