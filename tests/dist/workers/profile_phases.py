"""Run the profiler's interleaved measuring rounds on a tiny GPT; report what they did.

Saves per rank: whether every parameter is bit-identical before and after (no optimizer, no
change); the phase of every measured iteration in run order; after each unfrozen iteration,
whether its gradients equal bit for bit those of a stock iteration on the same batches run
afterwards with no hook installed, and whether nothing of the freeze runtime was left (hooks,
DDP bucket wrappers, frozen parameters); after each fully frozen iteration, the largest
gradient of a freezable weight; and per phase and iteration the set of timed compute actions.
"""

from __future__ import annotations

import argparse

import torch
from _results import save_result
from _tiny import tiny_gpt

from megatron_tf.megatron.distributed import destroy_distributed, init_distributed
from megatron_tf.megatron.freeze_runtime import chunk_units
from megatron_tf.megatron.hooks import installed_route
from megatron_tf.profile.config import ProfileConfig
from megatron_tf.profile.runner import measure_phases, run_iteration
from megatron_tf.model.gpt import build_model_chunks


def _grads(chunks: list[torch.nn.Module]) -> list[torch.Tensor]:
    return [p.main_grad.detach().clone() for c in chunks for p in c.parameters()]


def _stock(chunks: list[torch.nn.Module]) -> bool:
    """Nothing of a freeze runtime is left: no hooks, no bucket wrapper, all trainable."""
    wrapped = any("start_grad_sync" in g.__dict__ for c in chunks for g in c.bucket_groups)
    trainable = all(p.requires_grad for c in chunks for p in c.parameters())
    return installed_route() == "" and not wrapped and trainable


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--vpp", type=int, default=1)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--linearity", action="store_true")
    parser.add_argument("--phase-order", default="interleaved")
    args = parser.parse_args()
    parallel, model = tiny_gpt(args.pp, args.vpp, args.microbatches)
    init_distributed(parallel, seed=model.seed)
    chunks = build_model_chunks(model, parallel, wrap_ddp=True)
    units = [p for c in chunks for p in chunk_units(c)[1]]
    before = [p.detach().clone() for c in chunks for p in c.parameters()]
    config = ProfileConfig(
        iters=2, warmup_iters=1, linearity=args.linearity, phase_order=args.phase_order
    )
    order: list[str] = []
    unfrozen: dict[int, list[torch.Tensor]] = {}
    stock_after: list[bool] = []
    frozen_max: list[float] = []

    def after_iteration(phase: str, iteration: int) -> None:
        order.append(phase)
        stock_after.append(_stock(chunks))
        if phase == "unfrozen":
            unfrozen[iteration] = _grads(chunks)
        elif phase == "frozen":
            frozen_max.append(max(float(p.main_grad.abs().max()) for p in units))

    timings = measure_phases(chunks, model, parallel, config, after_iteration=after_iteration)
    after = [p.detach() for c in chunks for p in c.parameters()]
    weights_unchanged = all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # The same batches again on stock megatron-core (no hook at all): the same gradients.
    unfrozen_equal_stock = []
    for iteration, grads in sorted(unfrozen.items()):
        run_iteration(chunks, model, parallel, iteration)
        reference = _grads(chunks)
        unfrozen_equal_stock.append(
            all(torch.equal(a, b) for a, b in zip(grads, reference, strict=True))
            and max(float(g.abs().max()) for g in grads) > 0
        )
    save_result(
        {
            "weights_unchanged": weights_unchanged,
            "order": order,
            "rounds": config.rounds(),
            "stock_after": stock_after,
            "unfrozen_equal_stock": unfrozen_equal_stock,
            "frozen_max_unit_grad": frozen_max,
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
