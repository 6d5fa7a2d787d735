"""Run the profiler's measuring phases on a tiny GPT and report what they did to the model.

Saves per rank: whether every parameter is bit-identical before and after (no optimizer, no
change), whether any freezable weight holds a gradient after the fully frozen phase, whether
every parameter is trainable again, and per phase and iteration the set of timed compute
actions.
"""

from __future__ import annotations

import argparse

import torch
from _results import save_result

from megatron_tf.megatron.distributed import destroy_distributed, init_distributed
from megatron_tf.megatron.freeze_runtime import chunk_units
from megatron_tf.profile.config import ProfileConfig
from megatron_tf.profile.runner import measure_phases
from megatron_tf.train.config import ModelConfig, ParallelConfig
from megatron_tf.train.model import build_model_chunks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--vpp", type=int, default=1)
    parser.add_argument("--microbatches", type=int, default=4)
    args = parser.parse_args()
    parallel = ParallelConfig(
        pp=args.pp,
        vpp=args.vpp,
        microbatches=args.microbatches,
        overlap_p2p_comm=args.vpp > 1 and args.pp == 2,
    )
    model = ModelConfig(
        num_layers=args.pp * args.vpp,
        hidden_size=32,
        num_attention_heads=4,
        seq_length=16,
        vocab_size=128,
    )
    init_distributed(parallel, seed=model.seed)
    chunks = build_model_chunks(model, parallel, wrap_ddp=True)
    before = [p.detach().clone() for c in chunks for p in c.parameters()]
    timings = measure_phases(chunks, model, parallel, ProfileConfig(iters=2, warmup_iters=1))
    after = [p.detach() for c in chunks for p in c.parameters()]
    # The last phase ran with every freezable weight frozen: their main_grad stayed zero.
    unit_grads = [float(p.main_grad.abs().max()) for c in chunks for p in chunk_units(c)[1]]
    save_result(
        {
            "weights_unchanged": all(torch.equal(a, b) for a, b in zip(before, after, strict=True)),
            "max_unit_grad_after_frozen": max(unit_grads),
            "all_trainable": all(p.requires_grad for c in chunks for p in c.parameters()),
            "actions": {
                phase: [sorted((k, c, m) for k, c, m, _, _ in acts if k in "FB") for _, acts in its]
                for phase, its in timings.items()
            },
            "walls": {phase: [w for w, _ in its] for phase, its in timings.items()},
        }
    )
    destroy_distributed()


if __name__ == "__main__":
    main()
