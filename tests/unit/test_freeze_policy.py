"""The freeze policy's invariants, without torch or megatron."""

from __future__ import annotations

import subprocess
import sys

import pytest

from megatron_tf.errors import ConfigError
from megatron_tf.freeze import FreezeConfig, FreezePolicy, UnitSpec, make_units
from megatron_tf.freeze.units import prefix_closure
from megatron_tf.megatron.guard import GPT_PARAM_NAMES as NAMES

# A 2-layer chunk of a Megatron GPT (local spec names), numel per tensor.
GPT_PARAMS = [
    ("embedding.word_embeddings.weight", 512 * 64),
    ("embedding.position_embeddings.weight", 64 * 64),
    ("decoder.layers.0.input_layernorm.weight", 64),
    ("decoder.layers.0.self_attention.linear_qkv.weight", 192 * 64),
    ("decoder.layers.0.self_attention.linear_qkv.bias", 192),
    ("decoder.layers.0.self_attention.linear_proj.weight", 64 * 64),
    ("decoder.layers.0.mlp.linear_fc1.weight", 256 * 64),
    ("decoder.layers.0.mlp.linear_fc2.weight", 64 * 256),
    ("decoder.layers.1.self_attention.linear_qkv.weight", 192 * 64),
    ("decoder.layers.1.self_attention.linear_proj.weight", 64 * 64),
    ("decoder.layers.1.mlp.linear_fc1.weight", 256 * 64),
    ("decoder.layers.1.mlp.linear_fc2.weight", 64 * 256),
    ("decoder.final_layernorm.weight", 64),
    ("output_layer.weight", 512 * 64),
]


def equal_units(n: int) -> list[UnitSpec]:
    return [UnitSpec(name=f"u{i}", kind="linear", cost=1.0, order=i) for i in range(n)]


def policy(
    ratios: list[list[float]],
    *,
    units: list[list[UnitSpec]] | None = None,
    first: int | None = None,
    rank: int = 1,
    **cfg: object,
) -> FreezePolicy:
    units = units if units is not None else [equal_units(10) for _ in ratios]
    return FreezePolicy(
        units=units, ratios=ratios, rank=rank, first_stage_chunk=first, config=FreezeConfig(**cfg)
    )


def test_units_are_linear_weights_embedding_and_output_never_norms_or_biases() -> None:
    units = make_units(GPT_PARAMS, NAMES)
    names = [u.name for u in units]
    assert names[0] == "embedding.word_embeddings.weight"
    assert names[-1] == "output_layer.weight"
    assert len(units) == 10
    assert all("norm" not in n and not n.endswith("bias") for n in names)
    assert NAMES.classify("embedding.position_embeddings.weight") is None
    assert [u.order for u in units] == list(range(10))
    # layer order: layer 0's tensors come before layer 1's
    assert names.index("decoder.layers.0.mlp.linear_fc2.weight") < names.index(
        "decoder.layers.1.self_attention.linear_qkv.weight"
    )


def test_measured_costs_override_numel() -> None:
    units = make_units(GPT_PARAMS, NAMES, costs={"output_layer.weight": 7.0})
    assert units[-1].cost == 7.0
    assert units[0].cost == 512 * 64


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.7])
def test_frozen_cost_is_about_the_ratio(ratio: float) -> None:
    units = make_units(GPT_PARAMS, NAMES)
    total = sum(u.cost for u in units)
    p = policy([[ratio] * 8], units=[units])
    for it in range(5):
        masks = p.plan(it)
        for mb in range(8):
            frozen = sum(units[i].cost for i in masks.frozen[0][mb])
            # taken greedily while each unit brings the cost closer: off by at most half of
            # the largest unit, unless the coverage repair had to step in (not at these ratios).
            assert abs(frozen - ratio * total) <= max(u.cost for u in units) / 2 + 1e-9


def test_ratio_zero_freezes_nothing_and_one_freezes_all_but_coverage() -> None:
    p = policy([[0.0, 1.0, 1.0, 0.0]])
    masks = p.plan(0)
    assert masks.frozen[0][0] == frozenset() and masks.frozen[0][3] == frozenset()
    assert masks.frozen[0][1] == frozenset(range(10)) == masks.frozen[0][2]


def test_deterministic_across_instances_and_depends_on_seed() -> None:
    a = [policy([[0.4] * 6, [0.6] * 6], seed=3).plan(i).frozen for i in range(1)]
    b = [policy([[0.4] * 6, [0.6] * 6], seed=3).plan(i).frozen for i in range(1)]
    assert a == b
    pa, pb = policy([[0.4] * 6], seed=3), policy([[0.4] * 6], seed=4)
    assert [pa.plan(i).frozen for i in range(4)] != [pb.plan(i).frozen for i in range(4)]


def test_same_decisions_in_a_fresh_process() -> None:
    """Replicas are separate processes: the choice must not depend on Python's hash seed."""
    code = (
        "from megatron_tf.freeze import FreezeConfig, FreezePolicy, UnitSpec\n"
        "u=[UnitSpec(name=f'u{i}',kind='linear',cost=1.0,order=i) for i in range(10)]\n"
        "p=FreezePolicy(units=[u],ratios=[[0.4]*6],rank=1,first_stage_chunk=None,"
        "config=FreezeConfig(seed=5))\n"
        "print([sorted(s) for it in range(3) for s in p.plan(it).frozen[0]])\n"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (1, 2)
    }
    assert len(outs) == 1


@pytest.mark.parametrize("ratios", [[1.0] * 4, [0.9] * 2, [1.0, 1.0, 0.95], [0.99] * 8])
def test_every_unit_trained_on_at_least_one_microbatch(ratios: list[float]) -> None:
    units = make_units(GPT_PARAMS, NAMES)
    for first in (None, 0):
        p = policy([ratios], units=[units], first=first)
        for it in range(6):
            masks = p.plan(it)
            assert min(masks.active_counts(0, len(units))) >= 1


def test_single_microbatch_cannot_freeze_anything() -> None:
    p = policy([[0.8]])
    assert p.plan(0).frozen[0][0] == frozenset()


def test_balanced_across_iterations() -> None:
    p = policy([[0.3] * 4])
    frozen_count = [0] * 10
    iters = 50
    for it in range(iters):
        for s in p.plan(it).frozen[0]:
            for u in s:
                frozen_count[u] += 1
    # 3 units per microbatch x 4 microbatches x 50 iterations = 600 freezes over 10 units.
    assert sum(frozen_count) == 600
    assert max(frozen_count) - min(frozen_count) <= 1


def is_prefix(frozen: frozenset[int]) -> bool:
    return sorted(frozen) == list(range(len(frozen)))


def test_units_follow_forward_order_not_registration_order() -> None:
    """Megatron registers linear_proj before linear_qkv; the forward uses qkv first."""
    registered = [
        ("decoder.layers.0.input_layernorm.weight", 4),
        ("decoder.layers.0.self_attention.linear_proj.weight", 16),
        ("decoder.layers.0.self_attention.linear_proj.bias", 4),
        ("decoder.layers.0.self_attention.linear_qkv.weight", 48),
        ("decoder.layers.0.self_attention.linear_qkv.bias", 12),
        ("decoder.layers.0.mlp.linear_fc2.weight", 64),
        ("decoder.layers.0.mlp.linear_fc1.weight", 64),
        ("embedding.word_embeddings.weight", 40),
    ]
    names = [u.name.split(".")[-2] for u in make_units(registered, NAMES)]
    assert names == ["word_embeddings", "linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
    # TE's fused norm sits before its linear's weight; a bias after it; norms between.
    order = [
        "embedding.word_embeddings.weight",
        "embedding.position_embeddings.weight",
        "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight",
        "decoder.layers.0.self_attention.linear_qkv.weight",
        "decoder.layers.0.self_attention.linear_qkv.bias",
        "decoder.layers.0.self_attention.q_layernorm.weight",
        "decoder.layers.0.self_attention.linear_proj.weight",
        "decoder.layers.0.pre_mlp_layernorm.weight",
        "decoder.layers.0.mlp.linear_fc1.weight",
        "decoder.layers.0.mlp.linear_fc2.bias",
        "decoder.layers.1.input_layernorm.weight",
        "decoder.final_layernorm.weight",
        "output_layer.weight",
    ]
    assert sorted(order, key=NAMES.forward_position) == order


def test_prefix_closure_freezes_everything_below_the_first_trainable_unit() -> None:
    names = [n for n, _ in GPT_PARAMS]
    units = make_units(GPT_PARAMS, NAMES)
    by_name = {u.name: i for i, u in enumerate(units)}
    # embedding and layer 0's qkv frozen: the first trainable unit is layer 0's linear_proj.
    frozen = frozenset({by_name["embedding.word_embeddings.weight"]}) | {
        by_name["decoder.layers.0.self_attention.linear_qkv.weight"]
    }
    assert prefix_closure(names, units, frozen, NAMES) == [
        "embedding.word_embeddings.weight",
        "embedding.position_embeddings.weight",
        "decoder.layers.0.input_layernorm.weight",
        "decoder.layers.0.self_attention.linear_qkv.weight",
        "decoder.layers.0.self_attention.linear_qkv.bias",
    ]
    assert prefix_closure(names, units, frozenset(), NAMES) == []
    assert prefix_closure(names, units, frozenset(range(len(units))), NAMES) == names  # whole chunk


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_first_virtual_stage_freezes_the_same_prefix_every_iteration(ratio: float) -> None:
    units = make_units(GPT_PARAMS, NAMES)
    total = sum(u.cost for u in units)
    p = policy([[ratio] * 3 + [0.0]], units=[units], first=0)
    first = p.plan(0).frozen
    for it in range(1, 6):
        masks = p.plan(it)
        assert masks.frozen == first  # no balancing across iterations on a prefix
    for mb in range(3):
        frozen = first[0][mb]
        assert is_prefix(frozen)
        cost = sum(units[i].cost for i in frozen)
        nxt = units[len(frozen)].cost if len(frozen) < len(units) else 0.0
        if frozen:  # the last unit taken brought the cost closer to the target ...
            assert cost - units[len(frozen) - 1].cost / 2 < ratio * total
        assert ratio * total <= cost + nxt / 2  # ... and the next one would not have
    assert first[0][3] == frozenset()


@pytest.mark.parametrize("ratios", [[0.75] * 4, [0.6, 0.3, 0.9, 0.3], [1.0, 1.0, 0.95]])
def test_first_stage_coverage_repair_keeps_prefixes(ratios: list[float]) -> None:
    """No microbatch trains everything: the cheapest prefix (the later on a tie) is emptied,
    every other one stays as chosen, and every parameter is trained once."""
    units = make_units(GPT_PARAMS, NAMES)
    free = policy([ratios], units=[units], first=0, coverage=False).plan(0).frozen[0]
    p = policy([ratios], units=[units], first=0)
    got = p.plan(0).frozen[0]
    assert all(is_prefix(f) for f in got)
    emptied = [mb for mb in range(len(ratios)) if got[mb] != free[mb]]
    assert len(emptied) == 1 and got[emptied[0]] == frozenset()
    cost = [sum(units[i].cost for i in f) for f in free]
    assert emptied[0] == max(mb for mb in range(len(ratios)) if cost[mb] == min(cost))
    assert min(p.plan(0).active_counts(0, len(units))) >= 1


def test_first_virtual_stage_full_freeze_flag() -> None:
    p = policy([[1.0, 1.0, 0.5, 0.0]], first=0)
    masks = p.plan(0)
    assert masks.full[0] == (True, True, False, False)
    # the same ratios on a chunk that is not the first virtual stage are never "full"
    q = policy([[1.0, 1.0, 0.5, 0.0]], first=None)
    assert q.plan(0).full[0] == (False, False, False, False)
    # all microbatches at 1: coverage wins, so at least one microbatch is not full
    r = policy([[1.0] * 4], first=0)
    assert not all(r.plan(0).full[0])


def test_warmup_and_ramp() -> None:
    p = policy([[0.8] * 4], warmup_iters=2, ramp_iters=3)
    # iterations 0, 1: warm-up; 2, 3, 4: ramp 1/4, 2/4, 3/4; from 5: full ratio
    expected = [0.0, 0.0, 0.2, 0.4, 0.6, 0.8, 0.8]
    for it, want in enumerate(expected):
        assert p.plan(it).ratios[0][0] == pytest.approx(want)
    assert not policy([[0.8] * 4], warmup_iters=1).plan(0).any_frozen()


def test_state_dict_restores_the_same_masks() -> None:
    ratios = [[0.4, 0.7, 0.2, 0.9], [0.5] * 4]
    straight = policy(ratios, seed=9)
    masks = [straight.plan(it) for it in range(8)]
    first = policy(ratios, seed=9)
    for it in range(3):
        first.plan(it)
    state = first.state_dict()
    resumed = policy([[0.0] * 4, [0.0] * 4], seed=0)  # config and ratios come from the state
    resumed.load_state_dict(state)
    assert resumed.next_iteration == 3
    assert [resumed.plan(it) for it in range(3, 8)] == masks[3:]


def test_load_state_dict_refuses_another_layout() -> None:
    state = policy([[0.5] * 4]).state_dict()
    other = policy([[0.5] * 4], units=[equal_units(9)])
    with pytest.raises(ConfigError, match="another model layout"):
        other.load_state_dict(state)


def test_bad_ratios_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"ratios\[0\]\[1\] must lie in \[0, 1\], got 1.5"):
        policy([[0.1, 1.5]])
    with pytest.raises(ConfigError, match="expected 2 chunk"):
        FreezePolicy(
            units=[equal_units(3), equal_units(3)],
            ratios=[[0.1]],
            rank=0,
            first_stage_chunk=0,
            config=FreezeConfig(),
        )


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="--freeze-rescale"):
        FreezeConfig(rescale="sum")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--freeze-warmup-iters"):
        FreezeConfig(warmup_iters=-1)


def test_set_ratios_replans() -> None:
    p = policy([[0.0] * 4])
    assert not p.plan(0).any_frozen()
    p.set_ratios([[0.5] * 4])
    assert p.plan(1).any_frozen()


def test_policy_package_imports_no_torch_or_megatron() -> None:
    code = (
        "import sys, megatron_tf.freeze, megatron_tf.megatron.patchset\n"
        "bad = [m for m in ('torch', 'megatron') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
