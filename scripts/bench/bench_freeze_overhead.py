"""Overhead of the freeze runtime when it freezes nothing (all ratios 0).

Runs a small GPT with megatron-core's real 1F1B schedule (pp 2, gloo on CPU, or NCCL on GPUs)
and alternates stock iterations with iterations under an installed FreezeRuntime whose ratios
are all 0, on the same model. Each step's time is the slowest rank's; prints the median of each
and their ratio (target <= 1.01). It also prints the ratio of CPU time (summed over ranks),
which a busy shared machine disturbs much less than wall time.

    .venv/bin/python scripts/bench/bench_freeze_overhead.py [--steps 20] [--pp 2] [--vpp 1]

Without torchrun's environment the script relaunches itself under torchrun.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind (>= 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each kind first")
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--vpp", type=int, default=1)
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--seq-length", type=int, default=128)
    return parser.parse_args()


def relaunch(args: argparse.Namespace) -> int:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.pp}",
        __file__,
        *sys.argv[1:],
    ]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False).returncode


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_tf.formats.layout import ModelConfig, ParallelConfig
    from megatron_tf.freeze.config import FreezeConfig
    from megatron_tf.megatron.distributed import destroy_distributed, init_distributed
    from megatron_tf.megatron.freeze_runtime import FreezeRuntime
    from megatron_tf.model.gpt import build_model_chunks
    from megatron_tf.model.step import forward_step as gpt_forward_step
    from megatron_tf.model.synthetic import synthetic_batches

    parallel = ParallelConfig(
        pp=args.pp,
        vpp=args.vpp,
        microbatches=args.microbatches,
        overlap_p2p_comm=args.vpp > 1 and args.pp == 2,
    )
    model = ModelConfig(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        num_attention_heads=4,
        seq_length=args.seq_length,
        vocab_size=1024,
        micro_batch_size=2,
    )
    init_distributed(parallel, seed=model.seed)
    chunks = build_model_chunks(model, parallel, wrap_ddp=True)
    spec = parallel.schedule_spec()
    zeros = [[[0.0] * spec.microbatches for _ in range(spec.vpp)] for _ in range(spec.pp)]
    runtime = FreezeRuntime(chunks, zeros, spec, FreezeConfig())

    def step() -> tuple[float, float]:
        for chunk in chunks:
            chunk.zero_grad_buffer()
        iterators = [
            synthetic_batches(model, iteration=0, microbatches=spec.microbatches) for _ in chunks
        ]
        dist.barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        get_forward_backward_func()(
            forward_step_func=gpt_forward_step,
            data_iterator=iterators if len(chunks) > 1 else iterators[0],
            model=chunks,
            num_microbatches=spec.microbatches,
            seq_length=model.seq_length,
            micro_batch_size=model.micro_batch_size,
            forward_only=False,
        )
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        cpu = torch.tensor([time.process_time() - cpu_start], dtype=torch.float64)
        dist.all_reduce(wall, op=dist.ReduceOp.MAX)  # the step ends when the slowest rank does
        dist.all_reduce(cpu, op=dist.ReduceOp.SUM)
        return float(wall), float(cpu)

    times: dict[str, list[tuple[float, float]]] = {"stock": [], "installed": []}
    for i in range(2 * (args.warmup + args.steps)):
        kind = "stock" if i % 2 == 0 else "installed"
        if kind == "installed":
            runtime.install()
        took = step()
        if kind == "installed":
            runtime.remove()
        if i >= 2 * args.warmup:
            times[kind].append(took)
    if dist.get_rank() == 0:
        print(
            f"freeze runtime overhead, {spec.describe()}, all ratios 0, "
            f"{args.steps} steps each (alternating):"
        )
        for index, what in ((0, "wall time, slowest rank"), (1, "CPU time, all ranks")):
            stock, installed = (
                statistics.median(t[index] for t in times[k]) for k in ("stock", "installed")
            )
            print(
                f"  {what}: stock median {stock * 1e3:.2f} ms, installed median "
                f"{installed * 1e3:.2f} ms, ratio installed/stock = {installed / stock:.4f}"
                + (" (target <= 1.01)" if index == 0 else "")
            )
    destroy_distributed()


def main() -> int:
    args = parse()
    if args.steps < 20:
        print("--steps must be >= 20 (the median needs enough samples)", file=sys.stderr)
        return 2
    if "RANK" not in os.environ:
        return relaunch(args)
    worker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
