"""Record the per-rank order of forward_step/backward_step calls of megatron-core's schedules
(and of TimelyFreeze's zero-bubble schedule with `--kind zb-h1`, W included).

One torchrun launch per (pp, vpp) runs several (microbatches, group size) cases on the same
tiny GPT. Two recorders run side by side and must agree:
- `hooks`: TimelyFreeze's ScheduleObserver (megatron_tf.megatron.hooks), the ids it reports;
- `independent`: ids known without the hooks: the forward_step_func counts the microbatches
  each chunk consumes, and an identity autograd function on each forward output records the
  backward of that (chunk, microbatch) when autograd reaches it inside backward_step.
A third recorder (`program`) keeps the compute actions and the P2P calls that issued
requests, in program order. Saves per rank {case: {"hooks": [...], "independent": [...],
"program": [...]}} with ("F"|"B", chunk, mb) and ("P2P", call name) tuples.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from _results import save_result

from megatron_tf.megatron.distributed import destroy_distributed, init_distributed
from megatron_tf.megatron.hooks import ScheduleObserver, install_hooks
from megatron_tf.formats.layout import ModelConfig, ParallelConfig
from megatron_tf.model.gpt import build_model_chunks
from megatron_tf.model.step import forward_step as gpt_forward_step
from megatron_tf.model.synthetic import synthetic_batches

Action = tuple[str, int, int]


class OrderObserver(ScheduleObserver):
    """The observer API's view: one entry per forward and backward, as the hooks report it."""

    def __init__(self) -> None:
        self.actions: list[Action] = []

    def before_forward(self, chunk: int, microbatch: int) -> None:
        self.actions.append(("F", chunk, microbatch))

    def before_backward(self, chunk: int, microbatch: int) -> None:
        self.actions.append(("B", chunk, microbatch))

    def before_weight_grad(self, chunk: int, microbatch: int) -> None:
        self.actions.append(("W", chunk, microbatch))


class ProgramObserver(ScheduleObserver):
    """Compute actions and the P2P calls that issued at least one request, in program order.

    Whether a call issued a request is read from `P2PCommunicator._communicate` (wrapped by
    `count_requests`): a call on a pipeline end that sends and receives nothing issues none, and
    the schedule model leaves such calls out.
    """

    def __init__(self) -> None:
        self.ops: list[tuple] = []
        self.issued = False

    def before_forward(self, chunk: int, microbatch: int) -> None:
        self.ops.append(("F", chunk, microbatch))

    def before_backward(self, chunk: int, microbatch: int) -> None:
        self.ops.append(("B", chunk, microbatch))

    def before_weight_grad(self, chunk: int, microbatch: int) -> None:
        self.ops.append(("W", chunk, microbatch))

    def before_p2p(self, call: str) -> None:
        self.issued = False

    def after_p2p(self, call: str) -> None:
        if self.issued:
            self.ops.append(("P2P", call))


def count_requests(observer: ProgramObserver) -> None:
    from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator

    original = P2PCommunicator._communicate

    def _communicate(self, **kwargs):
        if (
            kwargs.get("tensor_send_next") is not None
            or kwargs.get("tensor_send_prev") is not None
            or kwargs.get("recv_prev")
            or kwargs.get("recv_next")
        ):
            observer.issued = True
        return original(self, **kwargs)

    P2PCommunicator._communicate = _communicate


class _MarkBackward(torch.autograd.Function):
    """Identity whose backward records (chunk, microbatch): the start of that backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, log: list, chunk: int, mb: int) -> torch.Tensor:
        ctx.entry = ("B", chunk, mb)
        ctx.log = log
        return x.clone()  # a fresh tensor: Megatron frees outputs and refuses views

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        ctx.log.append(ctx.entry)
        return grad, None, None, None


def make_forward_step(chunks: list[torch.nn.Module], log: list[Action]):
    consumed = [0] * len(chunks)
    chunk_of = {id(c): i for i, c in enumerate(chunks)}

    def forward_step(data_iterator, model):
        chunk = chunk_of[id(model)]
        mb = consumed[chunk]  # Megatron feeds each chunk its microbatches in order 0..M-1
        consumed[chunk] += 1
        log.append(("F", chunk, mb))
        output, loss = gpt_forward_step(data_iterator, model)
        return _MarkBackward.apply(output, log, chunk, mb), loss

    return forward_step


def mark_weight_grads(chunks: list[torch.nn.Module], log: list[Action]) -> list[Any]:
    """Split-backward kinds: record ("W", 0, k) when a linear weight of the chunk receives its
    k-th gradient of the iteration. The split defers it, so this fires inside W, once per
    microbatch; inside a B it would land where the model has no W and fail the comparison."""
    from megatron_tf.megatron.freeze_runtime import _unwrap

    (chunk,) = chunks
    weight = _unwrap(chunk).decoder.layers[0].mlp.linear_fc2.weight
    count = [0]

    def seen(_param: Any) -> None:
        log.append(("W", 0, count[0]))
        count[0] += 1

    return [weight.register_post_accumulate_grad_hook(seen)]


def run_case(
    chunks, model: ModelConfig, m: int, g: int, program: ProgramObserver, kind: str
) -> dict[str, list]:
    config = chunks[0].config
    if len(chunks) > 1:
        config.microbatch_group_size_per_vp_stage = g
    observer = OrderObserver()
    program.ops = []
    independent: list[Action] = []
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in chunks:
        chunk.zero_grad_buffer()
    iterators = [synthetic_batches(model, iteration=0, microbatches=m) for _ in chunks]
    handles = mark_weight_grads(chunks, independent) if kind == "zb-h1" else []
    with install_hooks(observer, program):
        get_forward_backward_func()(
            forward_step_func=make_forward_step(chunks, independent),
            data_iterator=iterators if len(chunks) > 1 else iterators[0],
            model=chunks,
            num_microbatches=m,
            seq_length=model.seq_length,
            micro_batch_size=model.micro_batch_size,
            forward_only=False,
        )
    for handle in handles:
        handle.remove()
    return {"hooks": observer.actions, "independent": independent, "program": program.ops}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pp", type=int, required=True)
    parser.add_argument("--vpp", type=int, default=1)
    parser.add_argument("--overlap-p2p-comm", action="store_true")
    parser.add_argument("--cases", required=True, help="M:G,M:G,... (G ignored for 1f1b)")
    parser.add_argument(
        "--zb-cases", default="", help="M,M,...: also run TimelyFreeze's zb-h1 schedule (vpp 1)"
    )
    args = parser.parse_args()
    cases = [tuple(int(x) for x in c.split(":")) for c in args.cases.split(",")]
    m0, g0 = cases[0]
    parallel = ParallelConfig(
        pp=args.pp,
        vpp=args.vpp,
        microbatches=m0,
        group_size=g0 if args.vpp > 1 else 0,
        overlap_p2p_comm=args.overlap_p2p_comm,
    )
    model = ModelConfig(
        num_layers=args.pp * args.vpp,
        hidden_size=16,
        num_attention_heads=2,
        seq_length=8,
        vocab_size=64,
        micro_batch_size=1,
    )
    init_distributed(parallel, seed=model.seed)
    chunks = build_model_chunks(model, parallel, wrap_ddp=True)
    program = ProgramObserver()
    count_requests(program)
    out = {f"{m}:{g}": run_case(chunks, model, m, g, program, "") for m, g in cases}
    if args.zb_cases:
        from megatron_tf.megatron.zero_bubble import ZeroBubbleSchedule

        with ZeroBubbleSchedule("zb-h1"):
            for m in map(int, args.zb_cases.split(",")):
                out[f"zb-h1:{m}"] = run_case(chunks, model, m, args.pp, program, "zb-h1")
    save_result(out)
    destroy_distributed()


if __name__ == "__main__":
    main()
