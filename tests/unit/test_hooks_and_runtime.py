"""Hook installation and the freeze runtime's bookkeeping, in one process (no torchrun).

The schedules themselves run in tests/dist; here: install/remove restore megatron-core
exactly, ids survive Megatron's output deallocation, and the runtime toggles, rescales and
checkpoints as specified on a plain module with Megatron's parameter names.
"""

from __future__ import annotations

import pytest
import torch

from megatron_tf.errors import ScheduleMismatchError
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.freeze.config import FreezeConfig
from megatron_tf.megatron import hooks
from megatron_tf.megatron.freeze_runtime import FreezeRuntime


def test_install_and_remove_restore_megatron_exactly() -> None:
    from megatron.core.pipeline_parallel import p2p_communication, schedules

    before = {
        name: getattr(schedules, name)
        for name in (
            "forward_step",
            "backward_step",
            "forward_backward_pipelining_with_interleaving",
        )
    }
    send = p2p_communication.P2PCommunicator.send_forward
    first = hooks.install_hooks(hooks.ScheduleObserver())
    second = hooks.install_hooks(hooks.ScheduleObserver())
    assert first.route == "runtime"
    assert schedules.forward_step is not before["forward_step"]
    assert p2p_communication.P2PCommunicator.send_forward is not send
    first.remove()
    assert hooks.installed_route() == "runtime"  # the second handle still holds the hooks
    second.remove()
    second.remove()  # removing twice is harmless
    assert hooks.installed_route() == ""
    for name, fn in before.items():
        assert getattr(schedules, name) is fn
    assert p2p_communication.P2PCommunicator.send_forward is send


def test_waits_on_posted_transfers_are_observed() -> None:
    """overlap_p2p_comm: a P2P call returns {request name: request}; the schedule's later
    `wait()` on each is reported to observers, and the request is otherwise untouched."""
    from megatron.core.pipeline_parallel import p2p_communication

    events: list[tuple[str, str]] = []

    class Request:
        done = False

        def wait(self) -> str:
            events.append(("wait", "inside"))
            self.done = True
            return "ok"

    class Recorder(hooks.ScheduleObserver):
        def before_wait(self, request: str) -> None:
            events.append(("before", request))

        def after_wait(self, request: str) -> None:
            events.append(("after", request))

    comm = p2p_communication.P2PCommunicator
    original = comm.__dict__["send_forward_recv_forward"]
    requests = {"recv_prev": Request(), "send_next": Request()}
    comm.send_forward_recv_forward = lambda self, *a, **k: ("tensor", requests)
    try:
        with hooks.install_hooks(Recorder()):
            hooks._DISPATCH.schedule_start(forward_only=False)
            tensor, handles = comm.send_forward_recv_forward(None)
            assert tensor == "tensor" and set(handles) == {"recv_prev", "send_next"}
            assert handles["recv_prev"].wait() == "ok"
            assert handles["recv_prev"].done  # attributes are the request's own
            hooks._DISPATCH.schedule_end(forward_only=False)
            handles["send_next"].wait()  # outside a schedule call: not reported
    finally:
        comm.send_forward_recv_forward = original
    assert events == [
        ("before", "recv_prev"),
        ("wait", "inside"),
        ("after", "recv_prev"),
        ("wait", "inside"),
    ]


def test_ids_survive_output_deallocation() -> None:
    from megatron.core.pipeline_parallel.schedules import deallocate_output_tensor

    out = torch.ones(4, 3, requires_grad=True) * 2
    hooks._tag([out], (1, 5))
    deallocate_output_tensor(out, deallocate_pipeline_outputs=True)
    assert out.numel() == 1  # Megatron swapped .data ...
    assert hooks.tensor_ids([out]) == (1, 5)  # ... and the ids are still there
    assert hooks.tensor_ids({"a": out}) == (1, 5)
    assert hooks.tensor_ids(torch.ones(1)) is None


class TinyChunk(torch.nn.Module):
    """Parameters named like a Megatron GPT chunk (first stage): units and non-units."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Module()
        self.embedding.word_embeddings = torch.nn.Embedding(10, 4)
        self.decoder = torch.nn.Module()
        layer = torch.nn.Module()
        layer.mlp = torch.nn.Module()
        layer.mlp.linear_fc1 = torch.nn.Linear(4, 8)
        layer.mlp.linear_fc2 = torch.nn.Linear(8, 4)
        layer.input_layernorm = torch.nn.LayerNorm(4)
        self.decoder.layers = torch.nn.ModuleList([layer])


SPEC = ScheduleSpec(kind="1f1b", pp=2, microbatches=4)


def runtime(ratios_rank0: list[float], **cfg: object) -> tuple[FreezeRuntime, TinyChunk]:
    chunk = TinyChunk()
    ratios = [[ratios_rank0], [[0.0] * 4]]
    return FreezeRuntime([chunk], ratios, SPEC, FreezeConfig(**cfg), rank=0), chunk


def test_units_and_requires_grad_toggling() -> None:
    rt, chunk = runtime([0.0, 1.0, 0.5, 0.0])
    assert [u.name for u in rt.units[0]] == [
        "embedding.word_embeddings.weight",
        "decoder.layers.0.mlp.linear_fc1.weight",
        "decoder.layers.0.mlp.linear_fc2.weight",
    ]
    # wgrad work per token: one row for the embedding, numel for a linear weight
    assert [u.cost for u in rt.units[0]] == [4.0, 32.0, 32.0]
    masks = rt.start_iteration(0)
    assert masks.full[0] == (False, True, False, False)  # rank 0 chunk 0: first virtual stage
    params = dict(chunk.named_parameters())
    rt.before_forward(0, 1)  # full: every parameter of the chunk is off, norms included
    assert not any(p.requires_grad for p in params.values())
    rt.after_forward(0, 1)
    assert all(p.requires_grad for p in params.values())
    # Ratio 0.5 on the first virtual stage: a forward-order prefix (embedding, fc1) frozen
    # whole: the input norm (registered last, used first) and fc1's bias go with it; fc2 and
    # its bias stay trainable, so autograd stops at fc2.
    assert rt.frozen_names(0, 2) == [
        "embedding.word_embeddings.weight",
        "decoder.layers.0.mlp.linear_fc1.weight",
    ]
    rt.before_backward(0, 2)
    off = {n for n, p in params.items() if not p.requires_grad}
    assert (
        off
        == set(rt.frozen_param_names(0, 2))
        == {
            "embedding.word_embeddings.weight",
            "decoder.layers.0.input_layernorm.weight",
            "decoder.layers.0.input_layernorm.bias",
            "decoder.layers.0.mlp.linear_fc1.weight",
            "decoder.layers.0.mlp.linear_fc1.bias",
        }
    )
    rt.after_backward(0, 2)
    assert all(p.requires_grad for p in params.values())


def test_other_ranks_freeze_units_only() -> None:
    """Off the first virtual stage, norms and biases are never frozen."""
    chunk = TinyChunk()
    rt = FreezeRuntime([chunk], [[[0.0] * 4], [[0.5, 0.5, 0.9, 0.0]]], SPEC, rank=1)
    rt.start_iteration(0)
    for mb in range(4):
        names = rt.frozen_param_names(0, mb)
        assert names == [n for n in dict(chunk.named_parameters()) if n in rt.frozen_names(0, mb)]
        assert not any(n.endswith("bias") or "norm" in n for n in names)
    assert any(rt.frozen_param_names(0, mb) for mb in range(4))


@pytest.mark.parametrize("rescale", ["mean", "none"])
def test_plain_module_gradients_rescaled_by_m_over_active(rescale: str) -> None:
    rt, chunk = runtime([0.0, 1.0, 0.5, 0.0], rescale=rescale)
    rt.start_iteration(0)
    for p in chunk.parameters():
        p.grad = torch.ones_like(p)
    rt.finish_iteration()
    rt.finish_iteration()  # idempotent within the iteration
    for name, p in chunk.named_parameters():
        frozen_on = sum(name in rt.frozen_param_names(0, mb) for mb in range(4))
        want = 4 / (4 - frozen_on) if rescale == "mean" else 1.0
        assert torch.all(p.grad == want), (name, frozen_on)


def test_ratio_shape_and_plan_mismatch_are_refused() -> None:
    with pytest.raises(ScheduleMismatchError, match=r"expected \[2\]\[1\]\[4\]"):
        FreezeRuntime([TinyChunk()], [[[0.0] * 3], [[0.0] * 3]], SPEC, rank=0)
    with pytest.raises(ScheduleMismatchError, match="has vpp=1"):
        FreezeRuntime([TinyChunk(), TinyChunk()], [[[0.0] * 4]] * 2, SPEC, rank=0)


def test_state_dict_round_trip_and_realised_ratio() -> None:
    rt, _ = runtime([0.5, 0.5, 0.5, 0.5], seed=3)
    for it in range(3):
        rt.start_iteration(it)
    state = rt.state_dict()
    straight = [rt.start_iteration(it) for it in (3, 4)]
    other, _ = runtime([0.0] * 4)
    other.load_state_dict(state)
    assert [other.start_iteration(it) for it in (3, 4)] == straight
    assert other.config.seed == 3
    (realised,) = rt.realised_ratio_per_chunk()
    assert 0.3 < realised < 0.7


def test_group_trains_reads_megatron_recompute_closure() -> None:
    """The checkpoint wrapper asks whether a layer group of recompute.checkpointed_forward
    holds a trainable parameter; an unknown callable gives None (the wrapper then plays safe)."""
    from megatron_tf.megatron.freeze_runtime import _group_trains

    block = torch.nn.Module()
    block.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])

    def other(start: int, end: int):  # start and end, but the block is not a free `self`
        def custom_forward(hidden_states: torch.Tensor) -> torch.Tensor:
            for index in range(start, end):
                hidden_states = block.layers[index](hidden_states)
            return hidden_states

        return custom_forward

    def checkpointed_forward(self: torch.nn.Module):  # recompute.py's shape: free self/start/end
        def custom(start: int, end: int):
            def custom_forward(x: torch.Tensor) -> torch.Tensor:
                return self.layers[start:end](x)

            return custom_forward

        return custom

    groups = checkpointed_forward(block)
    block.layers[0].requires_grad_(False)
    assert _group_trains(groups(0, 1)) is False
    assert _group_trains(groups(1, 2)) is True
    assert _group_trains(groups(0, 2)) is True
    assert _group_trains(other(0, 1)) is None
    assert _group_trains(lambda x: x) is None


def test_layout_check_derives_the_models_schedule_like_everyone_else(monkeypatch) -> None:
    """`_check_layout` reads the model's schedule through `megatron_schedule`, as the layout and
    the Megatron-LM route do: same schedule passes, another pp or group size is named."""
    from types import SimpleNamespace

    from megatron.core import parallel_state

    rt, _ = runtime([0.0] * 4)
    monkeypatch.setattr(parallel_state, "get_pipeline_model_parallel_world_size", lambda: 2)
    rt._check_layout(SimpleNamespace(microbatch_group_size_per_vp_stage=None))
    monkeypatch.setattr(parallel_state, "get_pipeline_model_parallel_world_size", lambda: 4)
    with pytest.raises(
        ScheduleMismatchError, match="is for 1f1b pp=2 M=4 but the model runs 1f1b pp=4"
    ):
        rt._check_layout(SimpleNamespace(microbatch_group_size_per_vp_stage=None))
