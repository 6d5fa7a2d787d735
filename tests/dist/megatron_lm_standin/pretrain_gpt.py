"""A stand-in for Megatron-LM's `pretrain_gpt.py`, for tests on CPU (it is copied into a
temporary "checkout" by tests/dist/test_megatron_lm.py).

Like the real script it knows nothing about TimelyFreeze. It parses its arguments with
Megatron-LM's own parser (`megatron.training.arguments.parse_and_validate_args`, which rejects
unknown flags and publishes the arguments with `set_global_variables`), or, with
STANDIN_OWN_PARSER=1, with a strict argparse of its own (a script that never touches
megatron.training). It then trains a tiny GPT with megatron-core's real pipeline schedules,
fetching the schedule once before the loop as Megatron-LM's `train()` does, and runs one
forward-only (evaluation) call at the end.

Each rank writes what it saw to $STANDIN_RESULTS/rank<R>.json: its argv, and for every
forward of every (iteration, chunk, microbatch) how many parameters had requires_grad off.
"""

import argparse
import json
import os
import sys
from pathlib import Path

ARGV = list(sys.argv)
RANK = int(os.environ["RANK"])
RESULTS = Path(os.environ["STANDIN_RESULTS"])


def own_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    parser.add_argument(
        "--num-virtual-stages-per-pipeline-rank",
        dest="virtual_pipeline_model_parallel_size",
        type=int,
        default=None,
    )
    parser.add_argument("--num-layers", type=int, required=True)
    parser.add_argument("--hidden-size", type=int, required=True)
    parser.add_argument("--num-attention-heads", type=int, required=True)
    parser.add_argument("--seq-length", type=int, required=True)
    parser.add_argument("--micro-batch-size", type=int, required=True)
    parser.add_argument("--global-batch-size", type=int, required=True)
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--train-iters", type=int, required=True)
    parser.add_argument("--transformer-impl", default="transformer_engine")
    args = parser.parse_args()  # rejects unknown flags, as Megatron-LM does
    args.data_parallel_size = int(os.environ["WORLD_SIZE"]) // args.pipeline_model_parallel_size
    args.padded_vocab_size = args.vocab_size
    return args


def megatron_arguments() -> argparse.Namespace:
    from megatron.training.arguments import parse_and_validate_args

    return parse_and_validate_args()


def main() -> None:
    own = os.environ.get("STANDIN_OWN_PARSER") == "1"
    args = own_arguments() if own else megatron_arguments()
    if own:
        microbatches = args.global_batch_size // (args.micro_batch_size * args.data_parallel_size)
    else:
        from megatron.core.num_microbatches_calculator import get_num_microbatches

        microbatches = get_num_microbatches()

    # The model side: the project's tiny GPT builder (the real script has its own provider).
    from megatron_tf.megatron.distributed import destroy_distributed, init_distributed
    from megatron_tf.formats.layout import ModelConfig, ParallelConfig
    from megatron_tf.model.gpt import build_model_chunks
    from megatron_tf.model.step import forward_step as gpt_forward_step
    from megatron_tf.model.synthetic import synthetic_batches

    pp = args.pipeline_model_parallel_size
    vpp = args.virtual_pipeline_model_parallel_size or 1
    parallel = ParallelConfig(
        pp=pp,
        vpp=vpp,
        dp=args.data_parallel_size,
        microbatches=microbatches,
        overlap_p2p_comm=vpp > 1 and pp == 2,
    )
    model_cfg = ModelConfig(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads,
        seq_length=args.seq_length,
        vocab_size=args.padded_vocab_size,
        micro_batch_size=args.micro_batch_size,
    )
    init_distributed(parallel, seed=model_cfg.seed)
    chunks = build_model_chunks(model_cfg, parallel, wrap_ddp=True)

    from megatron.core.pipeline_parallel import get_forward_backward_func

    records: list[list[int]] = []
    seen = [0] * len(chunks)
    iteration = 0

    def forward_step(data_iterator, model):
        if not records:  # leaves a trace if any forward ran, even when the job fails later
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"started_rank{RANK}").touch()
        chunk = next(i for i, c in enumerate(chunks) if c is model)
        frozen = sum(1 for p in model.parameters() if not p.requires_grad)
        records.append([iteration, chunk, seen[chunk], frozen])
        seen[chunk] += 1
        return gpt_forward_step(data_iterator, model)

    def endless():
        # Like Megatron-LM's train_data_iterator: one long-lived iterator over the data.
        step = 0
        while True:
            yield from synthetic_batches(model_cfg, iteration=step, microbatches=microbatches)
            step += 1

    train_data = [endless() for _ in chunks]
    eval_data = [endless() for _ in chunks]

    def run(forward_only: bool) -> None:
        seen[:] = [0] * len(chunks)
        data = eval_data if forward_only else train_data
        forward_backward_func(
            forward_step_func=forward_step,
            data_iterator=data if len(chunks) > 1 else data[0],
            model=chunks if len(chunks) > 1 else chunks[0],
            num_microbatches=microbatches,
            seq_length=model_cfg.seq_length,
            micro_batch_size=model_cfg.micro_batch_size,
            forward_only=forward_only,
        )

    forward_backward_func = get_forward_backward_func()  # once, as Megatron-LM's train() does
    for iteration in range(args.train_iters):  # noqa: B007 (read by forward_step)
        if not own:
            args.curr_iteration = iteration  # Megatron-LM's train() keeps this up to date
        for chunk in chunks:
            chunk.zero_grad_buffer()
        run(forward_only=False)
    iteration = -1  # evaluation
    run(forward_only=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    import megatron.core

    out = {
        "argv": ARGV,
        "microbatches": microbatches,
        "records": records,
        "megatron_core": megatron.core.__file__,
    }
    (RESULTS / f"rank{RANK}.json").write_text(json.dumps(out))
    destroy_distributed()


if __name__ == "__main__":
    main()
