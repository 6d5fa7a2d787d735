"""The freeze runtime on megatron-core's real schedules (torchrun, gloo, CPU, tiny GPT).

Each launch groups several cases (tests/dist/workers/freeze_grads.py); every case compares the
gradients the optimizer would see with an independent per-microbatch reference (1e-6
relative; in practice they are exactly equal) and checks that frozen work was really skipped.
The pp 2 launches (1F1B with every case, interleaved, the patched route) run on both supported
megatron-core versions: the installed 0.19.2 and Megatron-LM main's 0.20.0 (a copy of the
snapshot, tests/conftest.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from harness import REPO, WORKERS, run_torchrun

from megatron_tf.megatron.hooks import P2P_CALLS
from megatron_tf.megatron.patchset import apply_patches, installed_megatron_root

TOL = 1e-6


def check_case(name: str, rank_result: dict[str, Any], *, pp_rank: int) -> None:
    case = rank_result[name]
    assert case["iterations"], name
    for i, it in enumerate(case["iterations"]):
        worst = max(it["rel_err"], key=it["rel_err"].get)
        assert it["rel_err"][worst] <= TOL, (name, i, worst, it["rel_err"][worst])
        # No frozen parameter (unit, or norm/bias of a first-stage prefix) accumulated a
        # gradient in that microbatch's backward ...
        for (chunk, mb), names in it["frozen_params"].items():
            for param in names:
                assert (chunk, mb, param) not in it["accumulated"], (name, chunk, mb, param)
        # ... while trained weights did (the recorder sees accumulation at all).
        trained = {
            (c, mb) for (c, mb), names in it["frozen"].items() if it["autograd_ran"].get((c, mb))
        }
        accumulated_keys = {(c, mb) for c, mb, _ in it["accumulated"]}
        assert trained <= accumulated_keys, (name, trained - accumulated_keys)
        # The hooks also report the schedule's P2P calls (timing observers rely on them).
        assert it["p2p_calls"] and set(it["p2p_calls"]) <= set(P2P_CALLS), name
        # First virtual stage: a fully frozen microbatch runs no autograd at all.
        for mb, full in enumerate(it["full"][0]):
            if full:
                assert pp_rank == 0
                assert it["autograd_ran"][(0, mb)] is False, (name, mb)
                assert not any(c == 0 and m == mb for c, m, _ in it["accumulated"])
        # The runtime switched off exactly the parameters the worker derived independently
        # (frozen units; on the first virtual stage the whole prefix in forward call order).
        assert it["toggle_matches"], name
        for (chunk, mb), info in it["prefix"].items():
            assert pp_rank == 0 and chunk == 0 and info["is_prefix"], (name, mb, info)
            # norms and biases below the boundary (at least layer 0's input norm, which runs
            # before the first unit after the embedding) are frozen with the prefix
            frozen = it["frozen_params"][(chunk, mb)]
            assert "decoder.layers.0.input_layernorm.bias" in frozen, (name, mb)
            if case["recompute"] != "none":
                # Module outputs inside a recompute are out of the recorder's sight. What it
                # sees: layers below the boundary's layer (each a layer group of its own) are
                # not even recomputed, so no backward ran for them; the boundary's layer is.
                boundary = info["boundary_module"]
                below = range(int(boundary.split(".")[2])) if "layers." in boundary else []
                seen = {m for c, j, m in it["recomputed"] if (c, j) == (chunk, mb)}
                for layer in below:
                    assert not any(f"layers.{layer}." in m for m in seen), (name, mb, layer)
                assert any(m.startswith(boundary.rsplit(".", 2)[0]) for m in seen), (name, mb)
                continue
            # No backward ran for the prefix: none of its modules' outputs required grad in
            # the forward (so autograd has no node for them) or received a gradient ...
            for module in info["frozen_modules"]:
                assert it["out_requires_grad"][(chunk, mb, module)] is False, (name, mb, module)
                assert (chunk, mb, module) not in it["grad_seen"], (name, mb, module)
            # ... while the backward reached the first trainable unit's module.
            assert (chunk, mb, info["boundary_module"]) in it["grad_seen"], (name, mb, info)


def check_all(results: list[dict[str, Any]], names: list[str]) -> None:
    for result in results:
        for name in names:
            check_case(name, result, pp_rank=result["_ranks"]["pp"])
    # The layouts' ratios include full freezes of the first virtual stage: the skip ran; and
    # partial prefixes (frozen units and something trainable) whose skip is checked above.
    first = [r for r in results if r["_ranks"]["pp"] == 0][0]
    assert any(any(it["full"][0]) for it in first["base"]["iterations"])
    assert any(
        info["frozen_modules"]
        for it in first["base"]["iterations"]
        for info in it["prefix"].values()
    )


ZB_STOCK = "zb,zb_overlap,zb_recompute,zb_untied"
"""zb-h1 alone against stock 1F1B (DDP overlap off/on, full recompute with two layers per
stage, tied and untied embeddings): tests/dist/workers/freeze_grads.py, `ZB_CASES`."""
ZB_FREEZE = "zb_freeze,zb_freeze_overlap,zb_freeze_recompute"
"""zb-h1 with freezing on top, against the per-microbatch reference."""


def check_zero_bubble_bitwise(results: list[dict[str, Any]], names: list[str]) -> None:
    """zb-h1's gradients (after finalize_model_grads) equal stock 1F1B's bit for bit, and the
    split really happened: every W had deferred work, the linear weights (and the output
    layer, linear_qkv's in-kernel bias) got their gradient in W only, everything else in B."""
    for result in results:
        for name in names:
            case = result[name]
            assert case["restored"] is True, name
            deferred = case["deferred"].__contains__
            for i, it in enumerate(case["iterations"]):
                where = (result["_ranks"], name, i)
                assert it["unequal"] == [], where
                assert it["nonzero"] == it["params"], where  # every parameter trained
                assert [mb for mb, _ in it["work"]] == list(range(4)), where  # microbatch order
                assert all(n > 0 for _, n in it["work"]), where
                phases: dict[str, set[str]] = {}
                for phase, _mb, param in it["where"]:
                    phases.setdefault(param, set()).add(phase)
                assert phases, where
                for param, seen in phases.items():
                    assert seen == ({"W"} if deferred(param) else {"B"}), (where, param)
                assert any(deferred(p) for p in phases), where


def check_zero_bubble_memory(results: list[dict[str, Any]], microbatches: int = 4) -> None:
    """Live activation bytes between compute actions (autograd's saved tensors, weights
    excluded, plus what the split keeps for pending W's), per rank s of p:

    - 1F1B: at most min(p - s, M) microbatches from F to B: exactly that many times A_s, the
      bytes one microbatch's forward leaves saved;
    - zb-h1: the same, plus d_s = min(s, M - warm-up) microbatches between B and W, each
      holding D_s <= A_s (the linears' inputs and output gradients): exactly
      min(p - s, M) A_s + d_s D_s, at most min(p, M) A_s, the microbatch count of 1F1B's
      rank 0 (equal to its peak when the stages are alike)."""
    from megatron_tf.formats.kinds.zb_h1 import deferred_weight_gradients

    p = len(results)
    for result in results:
        s = result["_ranks"]["pp"]
        stock, split = result["zb_memory"]["1f1b"], result["zb_memory"]["zb-h1"]
        a = stock[0][2]  # after F of microbatch 0, nothing else pending
        (d,) = {b for action, _mb, b in split if action == "D"}
        assert 0 < d <= a, (s, a, d)
        in_flight = min(p - s, microbatches)
        assert max(b for _, _, b in stock) == in_flight * a, (s, stock)
        peak = max(b for action, _, b in split if action != "D")
        deferred = deferred_weight_gradients(p, microbatches, s)
        assert peak == in_flight * a + deferred * d, (s, split)
        assert peak <= min(p, microbatches) * a


def test_zero_bubble_pp2_peak_activation_memory(pp2_1f1b: list[dict[str, Any]]) -> None:
    check_zero_bubble_memory(pp2_1f1b)


def check_zero_bubble_freezing(results: list[dict[str, Any]], names: list[str]) -> None:
    """Freezing on zb-h1: exact against the reference (check_case), one W per microbatch in
    microbatch order, frozen parameters accumulate in neither B nor W."""
    for result in results:
        for name in names:
            check_case(name, result, pp_rank=result["_ranks"]["pp"])
            for it in result[name]["iterations"]:
                assert it["weight_grads"] == [(0, mb) for mb in range(4)], name


@pytest.fixture(scope="module", params=["installed", "main"])
def megatron(request: pytest.FixtureRequest, megatron_lm_checkout) -> Path | None:
    """None: the installed megatron-core 0.19.2; else the folder holding Megatron-LM main."""
    return None if request.param == "installed" else megatron_lm_checkout(request.param)


_LAUNCHES: dict[tuple[str, Path | None], list[dict[str, Any]]] = {}


def launch_once(name: str, args: list[str], megatron: Path | None) -> list[dict[str, Any]]:
    """One torchrun per (launch, megatron-core) for the whole module, whatever order pytest
    runs the tests that share it in."""
    key = (name, megatron)
    if key not in _LAUNCHES:
        _LAUNCHES[key] = run_torchrun("freeze_grads", 2, args, timeout=400, megatron=megatron)
    return _LAUNCHES[key]


@pytest.fixture
def pp2_1f1b(megatron: Path | None) -> list[dict[str, Any]]:
    cases = (
        "base,overlap,recompute,none,untied,zero,checkpoint,refuse,recompute_leak,"
        f"recompute_no_leaf,recompute_deep,{ZB_STOCK},{ZB_FREEZE},zb_memory"
    )
    return launch_once("pp2_1f1b", ["--pp", "2", "--cases", cases], megatron)


def test_1f1b_pp2_all_semantics(pp2_1f1b: list[dict[str, Any]]) -> None:
    """1F1B pp 2: DDP overlap off/on over several iterations (units frozen on the last
    microbatch), full recompute (one and two layers per stage), rescale none, untied and tied
    embeddings."""
    check_all(
        pp2_1f1b,
        ["base", "overlap", "recompute", "recompute_deep", "none", "untied", "zero", "checkpoint"],
    )


def test_zero_bubble_pp2_is_bitwise_stock_1f1b(pp2_1f1b: list[dict[str, Any]]) -> None:
    """zb-h1 without freezing: bitwise stock 1F1B with DDP overlap off and on, full
    recompute, tied and untied embeddings (on both megatron-core versions)."""
    check_zero_bubble_bitwise(pp2_1f1b, ZB_STOCK.split(","))


def test_zero_bubble_pp2_with_freezing(pp2_1f1b: list[dict[str, Any]]) -> None:
    """zb-h1 with freezing (frozen weights skip their W): exact against the reference with
    overlap off and on (units frozen on the last microbatch) and full recompute."""
    check_zero_bubble_freezing(pp2_1f1b, ZB_FREEZE.split(","))


def test_overlap_case_freezes_units_on_the_last_microbatch(
    pp2_1f1b: list[dict[str, Any]],
) -> None:
    """The DDP-readiness path is exercised: some unit is frozen on the last microbatch."""
    for result in pp2_1f1b:
        for it in result["overlap"]["iterations"]:
            assert it["frozen"][(0, 3)], result["_ranks"]


def test_refusals_come_before_any_forward(pp2_1f1b: list[dict[str, Any]]) -> None:
    for result in pp2_1f1b:
        refused = result["refuse"]
        assert refused["plan_for_other_schedule"][0] == "ScheduleMismatchError"
        assert (
            "solved for 1f1b pp=2 M=8 but this run is 1f1b pp=2 M=4"
            in (refused["plan_for_other_schedule"][1])
        )
        assert refused["ratio_shape"][0] == "ScheduleMismatchError"
        assert refused["num_microbatches"] == (
            "ScheduleMismatchError",
            "the freeze plan is for 4 microbatches per iteration but the schedule was called "
            "with num_microbatches=6",
        )
        assert refused["forwards_before_refusal"] == 0
        assert refused["delay_wgrad_compute"][0] == "UnsupportedMegatronError"
        assert refused["delay_wgrad_compute"][1].startswith("delay_wgrad_compute=True is not")


def test_negative_control_forward_only_freezing_leaks_under_recompute(
    pp2_1f1b: list[dict[str, Any]],
) -> None:
    """The comparison is sharp: freezing only in forward is caught under full recompute."""
    worst = max(
        max(it["rel_err"].values())
        for result in pp2_1f1b
        for it in result["recompute_leak"]["iterations"]
    )
    assert worst > 1e-3


def test_negative_control_full_recompute_needs_the_embedding_leaf(
    pp2_1f1b: list[dict[str, Any]],
) -> None:
    """Behind a frozen first-stage prefix, megatron-core's reentrant checkpoint runs no
    backward for the layers after it unless their input requires grad: without the runtime's
    leaf, those layers lose their gradients (rank 0 only; rank 1 is unaffected)."""
    for result in pp2_1f1b:
        worst = max(max(it["rel_err"].values()) for it in result["recompute_no_leaf"]["iterations"])
        assert (worst > 1e-3) == (result["_ranks"]["pp"] == 0), (result["_ranks"], worst)


def test_remove_restores_megatrons_frozen_linear_backward(
    pp2_1f1b: list[dict[str, Any]],
) -> None:
    """The bias-gradient fix lives only while a runtime is installed."""
    for result in pp2_1f1b:
        for case in ("base", "none", "zero"):
            assert result[case]["backward_replaced"] is True, case
            assert result[case]["backward_restored"] is True, case


def test_all_ratios_zero_is_bitwise_stock(pp2_1f1b: list[dict[str, Any]]) -> None:
    for result in pp2_1f1b:
        (it,) = result["zero"]["iterations"]
        assert it["bitwise_stock"] is True
        assert all(not names for names in it["frozen"].values())


def test_rescale_modes_differ_by_m_over_active(pp2_1f1b: list[dict[str, Any]]) -> None:
    """'mean' and 'none' see the same masks (same seed); gradients differ by M/n_active."""
    for result in pp2_1f1b:
        mean = result["base"]["iterations"][0]
        none = result["none"]["iterations"][0]
        assert mean["frozen"] == none["frozen"]
        differs = [k for k in mean["grads"] if not mean["grads"][k].equal(none["grads"][k])]
        assert differs  # freezing happened, so the two semantics disagree somewhere


def test_freezer_checkpoint_restores_the_same_masks(pp2_1f1b: list[dict[str, Any]]) -> None:
    for result in pp2_1f1b:
        assert result["checkpoint"]["restored_masks"] == {"equal": True, "any_frozen": True}


def test_1f1b_pp4() -> None:
    """1F1B pp 4 with freezing; zb-h1 there (ranks defer up to three W's), alone bitwise
    stock and with freezing exact."""
    cases = "base,overlap,zb,zb_overlap,zb_freeze,zb_freeze_overlap,zb_memory"
    results = run_torchrun("freeze_grads", 4, ["--pp", "4", "--cases", cases], 500)
    check_all(results, ["base", "overlap"])
    check_zero_bubble_bitwise(results, ["zb", "zb_overlap"])
    check_zero_bubble_freezing(results, ["zb_freeze", "zb_freeze_overlap"])
    check_zero_bubble_memory(results)


INTERLEAVED_PP2 = ["--pp", "2", "--vpp", "2", "--overlap-p2p-comm"]


@pytest.fixture
def pp2_interleaved(megatron: Path | None) -> list[dict[str, Any]]:
    args = [*INTERLEAVED_PP2, "--cases", "base,overlap,recompute"]
    return launch_once("pp2_interleaved", args, megatron)


def test_interleaved_pp2_overlap_p2p(pp2_interleaved: list[dict[str, Any]]) -> None:
    check_all(pp2_interleaved, ["base", "overlap", "recompute"])


@pytest.fixture(scope="module")
def patched_megatron(tmp_path_factory: pytest.TempPathFactory, megatron: Path | None) -> Path:
    """A copy of the megatron package under test with its version's hook-point patch set
    applied (patches/megatron-core-0.19.2 or -0.20.0, chosen by version)."""
    root = tmp_path_factory.mktemp("patched-megatron")
    source = installed_megatron_root() if megatron is None else megatron
    shutil.copytree(
        source / "megatron", root / "megatron", ignore=shutil.ignore_patterns("__pycache__")
    )
    assert {s.state for s in apply_patches(root)} == {"applied"}
    return root


# On 0.20 one patched launch: interleaved, whose hooks carry vp_stage and microbatch ids.
@pytest.mark.parametrize(
    ("megatron", "layout"),
    [("installed", "1f1b"), ("installed", "interleaved"), ("main", "interleaved")],
    indirect=["megatron"],
)
def test_patched_tree_route_gives_the_same_gradients(
    layout: str, patched_megatron: Path, request: pytest.FixtureRequest
) -> None:
    fixture = "pp2_1f1b" if layout == "1f1b" else "pp2_interleaved"
    runtime = request.getfixturevalue(fixture)
    args = ["--pp", "2"] if layout == "1f1b" else INTERLEAVED_PP2
    env = {"PYTHONPATH": f"{REPO}:{WORKERS}"}
    patched = run_torchrun(
        "freeze_grads", 2, [*args, "--cases", "base"], 400, env=env, megatron=patched_megatron
    )
    check_all(patched, ["base"])
    for got, want in zip(patched, runtime, strict=True):
        assert got["base"]["route"] == "patched" and want["base"]["route"] == "runtime"
        for it_got, it_want in zip(
            got["base"]["iterations"], want["base"]["iterations"], strict=True
        ):
            assert it_got["frozen"] == it_want["frozen"]
            assert all(it_got["grads"][k].equal(it_want["grads"][k]) for k in it_want["grads"])


def test_interleaved_pp4_vpp2() -> None:
    args = ["--pp", "4", "--vpp", "2", "--cases", "base,overlap"]
    results = run_torchrun("freeze_grads", 4, args, timeout=500)
    check_all(results, ["base", "overlap"])


def test_dp2_pp2_replicas_freeze_identically() -> None:
    results = run_torchrun(
        "freeze_grads", 4, ["--pp", "2", "--dp", "2", "--cases", "base,overlap"], 500
    )
    check_all(results, ["base", "overlap"])
    for pp_rank in (0, 1):
        replicas = [r for r in results if r["_ranks"]["pp"] == pp_rank]
        assert len(replicas) == 2
        for name in ("base", "overlap"):
            masks = [[it["frozen"] for it in r[name]["iterations"]] for r in replicas]
            assert masks[0] == masks[1]
            grads = [r[name]["iterations"][-1]["grads"] for r in replicas]
            assert all(grads[0][k].equal(grads[1][k]) for k in grads[0])


def test_tp2_pp2_tensor_parallel_replicas_freeze_identically() -> None:
    results = run_torchrun("freeze_grads", 4, ["--pp", "2", "--tp", "2", "--cases", "base"], 500)
    check_all(results, ["base"])
    for pp_rank in (0, 1):
        shards = [r for r in results if r["_ranks"]["pp"] == pp_rank]
        assert sorted(r["_ranks"]["tp"] for r in shards) == [0, 1]
        masks = [[it["frozen"] for it in r["base"]["iterations"]] for r in shards]
        assert masks[0] == masks[1]
