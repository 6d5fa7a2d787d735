"""zb-h1 against stock 1F1B in measured wall time, and against its own prediction.

One run, the demo GPT (`megatron_tf.demo.demo_model`), pp 2, M 8, gloo on CPU (NCCL on GPUs):

1. `timelyfreeze profile` twice, once per schedule (`--schedule zb-h1` times F, B and W on
   their own); each profile's simulated iteration is that schedule's prediction;
2. one torchrun job that alternates stock 1F1B steps with zb-h1 steps on the same model
   (megatron-core's 1F1B, then TimelyFreeze's zero-bubble schedule installed in its place),
   each step timed on the slowest rank, schedule plus gradient finalization as the profile
   predicts it;
3. prints the medians side by side: zb-h1 / 1F1B (target < 1), and each schedule's measured
   time against its prediction (target for zb-h1: within 3%).

    .venv/bin/python scripts/bench/bench_zb_wall.py [--steps 30] [--microbatches 8]

On a shared CPU machine the wall times swing by several percent between runs: compare the
ratios of one run, and rerun when the machine is busy (the script prints the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each schedule")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each first")
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--profile-iters", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers (JSON)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def model_flags() -> list[str]:
    from megatron_tf.demo import demo_model

    m = demo_model()
    return [
        f"--num-layers={m.num_layers}",
        f"--hidden-size={m.hidden_size}",
        f"--num-attention-heads={m.num_attention_heads}",
        f"--seq-length={m.seq_length}",
        f"--vocab-size={m.vocab_size}",
        f"--micro-batch-size={m.micro_batch_size}",
    ]


def profile(kind: str, folder: Path, args: argparse.Namespace) -> float:
    """Profile `kind` on the demo model; return the simulated iteration time (seconds)."""
    from megatron_tf.formats.profile import load_profile
    from megatron_tf.schedule.iteration import simulate_iteration

    out = folder / f"profile-{kind}.json"
    cmd = [sys.executable, "-m", "megatron_tf", "profile", "--pp", "2"]
    cmd += [f"--microbatches={args.microbatches}", f"--iters={args.profile_iters}"]
    cmd += ["--schedule", kind, "-o", str(out), *model_flags()]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"profile {kind} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    summary = [line for line in done.stdout.splitlines() if line.startswith("wrote ")]
    print(f"  {summary[-1] if summary else out}")
    return simulate_iteration(load_profile(out)).result.makespan


def relaunch(args: argparse.Namespace, result: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += [__file__, *sys.argv[1:], "--worker", str(result)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if subprocess.run(cmd, env=env, check=False).returncode != 0:
        sys.exit("the timing job failed")


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from megatron_tf.demo import demo_model
    from megatron_tf.formats.layout import ParallelConfig
    from megatron_tf.megatron.distributed import destroy_distributed, init_distributed
    from megatron_tf.megatron.zero_bubble import ZeroBubbleSchedule
    from megatron_tf.model.gpt import build_training_model
    from megatron_tf.model.step import run_schedule
    from megatron_tf.model.synthetic import synthetic_batches

    model = demo_model()
    parallel = ParallelConfig(pp=2, microbatches=args.microbatches)
    init_distributed(parallel, seed=model.seed)
    chunks, _ = build_training_model(model, parallel)
    zero_bubble = ZeroBubbleSchedule("zb-h1")

    def step(iteration: int) -> tuple[float, float]:
        for chunk in chunks:
            chunk.zero_grad_buffer()
        batches = [synthetic_batches(model, iteration=iteration, microbatches=args.microbatches)]
        dist.barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        run_schedule(
            chunks,
            batches,
            microbatches=args.microbatches,
            seq_length=model.seq_length,
            micro_batch_size=model.micro_batch_size,
        )
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        cpu = torch.tensor([time.process_time() - cpu_start], dtype=torch.float64)
        dist.all_reduce(wall, op=dist.ReduceOp.MAX)
        dist.all_reduce(cpu, op=dist.ReduceOp.SUM)
        return float(wall), float(cpu)

    times: dict[str, list[tuple[float, float]]] = {"1f1b": [], "zb-h1": []}
    for i in range(2 * (args.warmup + args.steps)):
        kind = "1f1b" if i % 2 == 0 else "zb-h1"
        if kind == "zb-h1":
            zero_bubble.install()
        took = step(i // 2)
        if kind == "zb-h1":
            zero_bubble.remove()
        if i >= 2 * args.warmup:
            times[kind].append(took)
    if dist.get_rank() == 0:
        assert args.worker is not None
        args.worker.write_text(json.dumps(times))
    destroy_distributed()


def main() -> int:
    args = parse()
    if args.worker is not None:
        worker(args)
        return 0
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 busy cores or more: noisy)")
    with tempfile.TemporaryDirectory(prefix="bench-zb-") as tmp:
        folder = Path(tmp)
        print("profiling (simulated iteration time of each schedule from its own profile):")
        predicted = {kind: profile(kind, folder, args) for kind in ("1f1b", "zb-h1")}
        relaunch(args, folder / "times.json")
        times = json.loads((folder / "times.json").read_text())
    wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
    print(
        f"demo GPT, pp 2, M {args.microbatches}, {args.steps} steps of each schedule "
        f"(alternating), load average after: {os.getloadavg()[0]:.2f}"
    )
    print("| schedule | measured median (ms) | predicted (ms) | measured / predicted |")
    print("|---|---|---|---|")
    for kind in ("1f1b", "zb-h1"):
        ratio = wall[kind] / predicted[kind]
        print(f"| {kind} | {wall[kind] * 1e3:.2f} | {predicted[kind] * 1e3:.2f} | {ratio:.4f} |")
    print(
        f"zb-h1 / 1F1B wall time (slowest rank): {wall['zb-h1'] / wall['1f1b']:.4f} "
        f"(predicted {predicted['zb-h1'] / predicted['1f1b']:.4f}); CPU time summed over ranks: "
        f"{cpu['zb-h1'] / cpu['1f1b']:.4f}"
    )
    error = wall["zb-h1"] / predicted["zb-h1"] - 1
    print(f"zb-h1 measured against its prediction: {error:+.1%} (target within 3%)")
    if args.out is not None:
        args.out.write_text(
            json.dumps({"wall": wall, "cpu": cpu, "predicted": predicted, "times": times})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
