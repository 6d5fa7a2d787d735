"""One forward+backward iteration of a tiny GPT with megatron-core's real pipeline schedule.

Saves per rank: the losses the last stage reported and the gradient norm of each chunk.
"""

from __future__ import annotations

import argparse

import torch
from _results import save_result
from _tiny import tiny_gpt

from megatron_tf.megatron.distributed import destroy_distributed, init_distributed
from megatron_tf.model.gpt import build_model_chunks
from megatron_tf.model.step import forward_step as gpt_forward_step
from megatron_tf.model.synthetic import synthetic_batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--vpp", type=int, default=1)
    parser.add_argument("--microbatches", type=int, default=4)
    args = parser.parse_args()
    parallel, model = tiny_gpt(args.pp, args.vpp, args.microbatches)
    init_distributed(parallel, seed=model.seed)
    chunks = build_model_chunks(model, parallel, wrap_ddp=True)
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in chunks:
        chunk.zero_grad_buffer()
    iterators = [
        synthetic_batches(model, iteration=0, microbatches=args.microbatches) for _ in chunks
    ]
    losses = get_forward_backward_func()(
        forward_step_func=gpt_forward_step,
        data_iterator=iterators if len(chunks) > 1 else iterators[0],
        model=chunks,
        num_microbatches=args.microbatches,
        seq_length=model.seq_length,
        micro_batch_size=model.micro_batch_size,
        forward_only=False,
    )
    grad_norms = [
        float(torch.sqrt(sum((p.main_grad.float() ** 2).sum() for p in c.parameters())))
        for c in chunks
    ]
    save_result({"losses": [float(x["lm loss"]) for x in losses], "grad_norms": grad_norms})
    destroy_distributed()


if __name__ == "__main__":
    main()
