"""Record the per-rank order of forward_step/backward_step calls of megatron-core's schedules.

One torchrun launch per (pp, vpp) runs several (microbatches, group size) cases on the same
tiny GPT. Two recorders run side by side and must agree:
- `hooks`: TimelyFreeze's ScheduleObserver (megatron_tf.megatron.hooks), the ids it reports;
- `independent`: ids known without the hooks: the forward_step_func counts the microbatches
  each chunk consumes, and an identity autograd function on each forward output records the
  backward of that (chunk, microbatch) when autograd reaches it inside backward_step.
Saves per rank {case: {"hooks": [...], "independent": [...]}} with ("F"|"B", chunk, mb) tuples.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from _results import save_result

from megatron_tf.megatron.distributed import destroy_distributed, init_distributed
from megatron_tf.megatron.hooks import ScheduleObserver, install_hooks
from megatron_tf.train.config import ModelConfig, ParallelConfig
from megatron_tf.train.model import build_model_chunks
from megatron_tf.train.step import gpt_forward_step, synthetic_batches

Action = tuple[str, int, int]


class OrderObserver(ScheduleObserver):
    """The observer API's view: one entry per forward and backward, as the hooks report it."""

    def __init__(self) -> None:
        self.actions: list[Action] = []

    def before_forward(self, chunk: int, microbatch: int) -> None:
        self.actions.append(("F", chunk, microbatch))

    def before_backward(self, chunk: int, microbatch: int) -> None:
        self.actions.append(("B", chunk, microbatch))


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


def run_case(chunks, model: ModelConfig, m: int, g: int) -> dict[str, list[Action]]:
    config = chunks[0].config
    if len(chunks) > 1:
        config.microbatch_group_size_per_vp_stage = g
    observer = OrderObserver()
    independent: list[Action] = []
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in chunks:
        chunk.zero_grad_buffer()
    iterators = [synthetic_batches(model, iteration=0, microbatches=m) for _ in chunks]
    with install_hooks(observer):
        get_forward_backward_func()(
            forward_step_func=make_forward_step(chunks, independent),
            data_iterator=iterators if len(chunks) > 1 else iterators[0],
            model=chunks,
            num_microbatches=m,
            seq_length=model.seq_length,
            micro_batch_size=model.micro_batch_size,
            forward_only=False,
        )
    return {"hooks": observer.actions, "independent": independent}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pp", type=int, required=True)
    parser.add_argument("--vpp", type=int, default=1)
    parser.add_argument("--overlap-p2p-comm", action="store_true")
    parser.add_argument("--cases", required=True, help="M:G,M:G,... (G ignored for 1f1b)")
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
    save_result({f"{m}:{g}": run_case(chunks, model, m, g) for m, g in cases})
    destroy_distributed()


if __name__ == "__main__":
    main()
