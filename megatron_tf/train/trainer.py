"""The training loop on megatron.core, with the freeze runtime installed when a plan is given.

Shape follows torchtitan's trainer: `Trainer(job)` builds everything, `train()` is the loop,
`train_step()` one optimizer step, `state_dict()` what a checkpoint holds, `close()` tears down.

Components (all Megatron-Core): GPTModel chunks from `model/gpt.py`, Megatron's
DistributedDataParallel, Megatron's optimizer (`get_megatron_optimizer`: Adam with a
distributed optimizer on GPU; on CPU Megatron's FP32 optimizer wrapping torch's AdamW, made to
run there by `megatron/compat.py`), `OptimizerParamScheduler` (warm-up then decay), gradient
clipping inside the optimizer, bf16 on GPU (Float16Module), and the pipeline schedule from
`get_forward_backward_func()`.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron_tf.errors import ConfigError
from megatron_tf.megatron.compat import optimizer_step
from megatron_tf.megatron.distributed import (
    collective_device,
    destroy_distributed,
    device_clock,
    init_distributed,
    rank_place,
    rng_state,
    set_rng_state,
)
from megatron_tf.megatron.freeze_runtime import FreezeRuntime
from megatron_tf.megatron.optimizer import build_optimizer, build_scheduler
from megatron_tf.model.gpt import build_training_model
from megatron_tf.model.step import run_schedule
from megatron_tf.solve.budget import LossCost, noise_scale_estimate
from megatron_tf.train import checkpoint as ckpt
from megatron_tf.train.data import BatchPlan, build_datasets, iteration_iterators
from megatron_tf.train.heldout import HeldOut, heldout_source
from megatron_tf.train.injob import broadcast_plan, measure_profile, reprice, solve_in_job
from megatron_tf.train.job import Job
from megatron_tf.train.metrics import MetricsLogger, StepMetrics, format_summary
from megatron_tf.train.pending import PendingPlan
from megatron_tf.train.plan_source import PlanSource, load_plan_source

__all__ = ["Trainer"]


class Trainer:
    """One rank of a pipeline-parallel GPT pretraining job."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.cfg = job.train
        init_distributed(job.parallel, seed=job.model.seed)
        self.rank = dist.get_rank()
        self.place = rank_place()
        self.pp_rank = self.place.pp_rank
        self.spec = job.parallel.schedule_spec()
        self.chunks, self.tconfig = build_training_model(job.model, job.parallel)
        self.optimizer = build_optimizer(self.cfg, self.chunks)
        self.scheduler = build_scheduler(self.cfg, self.optimizer)
        self.batches = BatchPlan(
            micro_batch_size=job.model.micro_batch_size,
            microbatches=job.parallel.microbatches,
            dp_rank=self.place.dp_rank,
            dp_size=self.place.dp_size,
        )
        self.tokens_per_iteration = self.batches.samples_per_iteration * job.model.seq_length
        self.dataset, valid = build_datasets(
            job.data, job.prepared, job.model, self.cfg.iters * self.batches.samples_per_iteration
        )
        # Validation and the noise probe read one held-out source: the embedded corpus's
        # held-out text or the validation split of --data-path (train/heldout.py).
        self.heldout: HeldOut | None = None
        if job.data.has_heldout:
            self.heldout = heldout_source(job.prepared, job.model, valid)
        self.validation: list[dict[str, torch.Tensor]] = []
        if self.cfg.eval_interval:
            assert self.heldout is not None  # prepare_job refuses --eval-interval without one
            self.validation = _whole_iterations(
                self.heldout.microbatches("validation", self.cfg.eval_samples),
                job.parallel.microbatches,
            )
        self.noise_estimates: list[dict[str, float]] = []
        self.iteration = 0  # optimizer steps done
        self.elapsed = 0.0  # wall seconds of training iterations (resumed runs add to it)
        self.plan: PlanSource | None = None
        self.freezer: FreezeRuntime | None = None  # installed runtime; None: nothing frozen
        self._idle_freezer: FreezeRuntime | None = None  # removed by set_plan(None), kept
        self.drift_count = 0
        self.replans = 0
        self.pending: PendingPlan | None = None  # an in-job plan rank 0 solves beside training
        self.budget_curves: dict[str, Any] = {}  # rank 0: speed curves solved for re-pricing
        self.curve_profile: Path | None = None  # the auto budget's in-job profile (this run)
        self.metrics = MetricsLogger(
            self.cfg.out_dir,
            enabled=self.rank == 0,
            log_interval=self.cfg.log_interval,
            tensorboard=self.cfg.tensorboard,
        )
        if self.cfg.freeze.enabled and not self.cfg.freeze.auto:
            self.set_plan(load_plan_source(self.cfg.freeze.plan or "", self.spec))
        if self.cfg.resume_from:
            self.load_checkpoint(self.cfg.resume_from)

    # ------------------------------------------------------------------ loop

    def train(self) -> None:
        """Run until `iters` (or `exit_after_iters` of this run) with logging and checkpoints."""
        start_iteration = self.iteration
        started = time.perf_counter()
        if job_floor := self._loss_floor():
            self.metrics.note(f"entropy floor of the corpus: {job_floor:.4f} nats/token")
        saved_at = start_iteration
        end = self.cfg.iters
        if self.cfg.exit_after_iters:
            end = min(end, start_iteration + self.cfg.exit_after_iters)
        metrics: StepMetrics | None = None
        val: tuple[int, float] | None = None
        while self.iteration < end:
            self._apply_due_plan()
            if self.iteration in self.cfg.noise_probe_at:
                self._noise_probe()
            self._maybe_auto_plan()
            self._maybe_reprice()
            metrics = self.train_step()
            if self._should_evaluate():
                metrics.val_loss = self.evaluate()
                val = (self.iteration, metrics.val_loss)
            self.metrics.log(metrics, last=self.iteration == end)
            self._check_drift(metrics)
            if self._should_save():
                self.save_checkpoint()
                saved_at = self.iteration
        if self.cfg.save and saved_at != self.iteration:
            self.save_checkpoint()  # stopped early (--exit-after-iters): keep where it got to
        summary = format_summary(
            metrics,
            first_iteration=start_iteration,
            val=val,
            wall=time.perf_counter() - started,
        )
        self.metrics.summary(summary)

    def train_step(self) -> StepMetrics:
        """One iteration: zero grads, the pipeline schedule, freezer bookkeeping, optimizer."""
        phase = self._phase()
        if self.freezer is not None:
            self.freezer.start_iteration(self.iteration)
        t0 = device_clock()  # GPU work of the previous step is not counted in this one
        for chunk in self.chunks:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        losses = run_schedule(
            self.chunks,
            iteration_iterators(self.dataset, self.batches, self.iteration, len(self.chunks)),
            microbatches=self.job.parallel.microbatches,
            seq_length=self.job.model.seq_length,
            micro_batch_size=self.job.model.micro_batch_size,
        )
        if self.freezer is not None:
            self.freezer.finish_iteration()
        # Compared with the plan's prediction by the drift check: taken once the GPU has run
        # the schedule's kernels, not when the host finished queuing them.
        schedule_seconds = device_clock() - t0
        ok, grad_norm = optimizer_step(self.optimizer, self.cfg.clip_grad)
        if not ok:  # only fp16 loss scaling can skip a step; bf16/fp32 never do
            raise RuntimeError(f"optimizer step skipped at iteration {self.iteration}")
        self.scheduler.step(increment=1)
        seconds = device_clock() - t0  # the iteration's work ends with the optimizer step
        loss = self._reduce_loss(losses)
        self.iteration += 1
        self.elapsed += seconds
        return StepMetrics(
            iteration=self.iteration,
            loss=loss,
            lr=self.optimizer.param_groups[0]["lr"],
            grad_norm=math.nan if grad_norm is None else float(grad_norm),
            tokens=self.tokens_per_iteration,
            seconds=seconds,
            schedule_seconds=schedule_seconds,
            predicted_seconds=self._predicted(phase),
            predicted_unitless=self.plan is not None and self.plan.synthetic,
            freeze_ratio=self._realised_ratios(),
            phase=phase,
            elapsed=self.elapsed,
        )

    # ------------------------------------------------------------------ validation, noise

    def _should_evaluate(self) -> bool:
        every = self.cfg.eval_interval
        return bool(every) and (self.iteration % every == 0 or self.iteration == self.cfg.iters)

    def evaluate(self) -> float:
        """Mean loss on the held-out set: forward-only passes of the real pipeline schedule
        (the freeze hooks ignore forward-only runs), in batches of one iteration's microbatches."""
        m = self.job.parallel.microbatches
        losses = []
        with torch.no_grad():
            for first in range(0, len(self.validation), m):
                batch = self.validation[first : first + m]
                losses.append(self._reduce_loss(self._schedule(batch, forward_only=True)))
        return float(np.mean(losses))

    def _schedule(self, batch: list[dict[str, torch.Tensor]], *, forward_only: bool) -> Any:
        """One call of Megatron's schedule over `batch` (a list of microbatches)."""
        return run_schedule(
            self.chunks,
            [iter(batch) for _ in self.chunks],
            microbatches=len(batch),
            seq_length=self.job.model.seq_length,
            micro_batch_size=self.job.model.micro_batch_size,
            forward_only=forward_only,
        )

    def _grad_sq_norm(self, batch: list[dict[str, torch.Tensor]]) -> float:
        """|G_B|^2 of the mean gradient over `batch` at the current weights (no step taken)."""
        for chunk in self.chunks:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        self._schedule(batch, forward_only=False)
        with torch.no_grad():
            self.optimizer.prepare_grads()
            norm = float(self.optimizer.get_grad_norm())  # across pipeline ranks, shared once
        for chunk in self.chunks:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        return norm * norm

    def _noise_probe(self) -> None:
        """Measure the gradient noise scale B_noise = tr(Sigma) / |G|^2 (McCandlish et al. 2018,
        appendix A) from |G|^2 at two batch sizes on held-out samples, at the current weights.

        Small batch: the fewest microbatches the schedule accepts; big: one iteration's. Both
        estimators are unbiased; their means over rounds are divided (the paper's advice). Held-
        out samples and no dropout: the probe changes neither the weights nor any RNG, so a
        run with the probe trains exactly like one without. noise_scale.json lists every probe."""
        par = self.job.parallel
        small = _smallest_valid_microbatches(par)
        big = par.microbatches
        rounds = self.cfg.noise_probe_rounds
        per_round = small + big
        assert self.heldout is not None  # prepare_job refuses a probe without a held-out set
        # Each data-parallel replica takes its own share of one pool, so the all-reduced
        # gradient is the mean over dp times as many distinct samples as one replica sees.
        dp, dp_rank = self.batches.dp_size, self.batches.dp_rank
        pool = self.heldout.microbatches(
            "noise_probe", rounds * per_round * self.job.model.micro_batch_size * dp
        )[dp_rank::dp]
        b_small = small * self.batches.micro_batch_size * self.batches.dp_size
        b_big = big * self.batches.micro_batch_size * self.batches.dp_size
        g_small, g_big = [], []
        for r in range(rounds):
            chunk = pool[r * per_round : (r + 1) * per_round]
            g_small.append(self._grad_sq_norm(chunk[:small]))
            g_big.append(self._grad_sq_norm(chunk[small:]))
        estimate = noise_scale_estimate(b_small, b_big, g_small, g_big)
        estimate["iteration"] = self.iteration
        self.noise_estimates.append(estimate)
        if self.rank == 0:
            out = Path(self.cfg.out_dir) / "noise_scale.json"
            out.write_text(json.dumps(self.noise_estimates, indent=2) + "\n")
        self.metrics.note(
            f"gradient noise scale at iteration {self.iteration}: B_noise "
            f"{estimate['noise_scale']:.1f} samples (batch {b_big}, |G|^2 "
            f"{estimate['true_grad_sq']:.3g}, tr(Sigma) {estimate['trace_sigma']:.3g})"
        )

    # ------------------------------------------------------------------ freezing

    def set_plan(self, plan: PlanSource | None) -> None:
        """Freeze by `plan`'s ratios for this rank from the next step on; None: run the stock
        schedule (runtime removed, nothing frozen, no rescale) until a plan is set again.

        The runtime is built once and kept across None and back, so its balance counts carry
        on (`train/alternate.py` switches every iteration)."""
        self.plan = plan
        if plan is None:
            if self.freezer is not None:
                self.freezer.remove()
                self._idle_freezer, self.freezer = self.freezer, None
            return
        if self.freezer is None and self._idle_freezer is not None:
            self.freezer, self._idle_freezer = self._idle_freezer, None
            self.freezer.install()
        if self.freezer is not None:
            self.freezer.set_ratios(plan.ratios)
            return
        # The DDP-wrapped chunks: the runtime rescales gradients inside DDP's bucket groups.
        self.freezer = FreezeRuntime(self.chunks, plan.ratios, self.spec, self.cfg.freeze.runtime)
        self.freezer.install()

    def _phase(self) -> str:
        """What this iteration runs: decided by the installed freezer, not by the flags (a
        resumed run may continue the checkpoint's plan without --plan)."""
        if self.freezer is None:
            return "warmup" if self.cfg.freeze.auto else "train"
        f = self.freezer.config
        if self.iteration < f.warmup_iters:
            return "warmup"
        if self.iteration < f.warmup_iters + f.ramp_iters:
            return "ramp"
        return "freeze"

    def _predicted(self, phase: str) -> float | None:
        if self.plan is None:
            return None
        if phase == "freeze":
            return self.plan.makespan
        if phase in ("warmup", "train"):
            return self.plan.baseline_makespan
        return None  # during the ramp the prediction is between the two; not reported

    def _maybe_auto_plan(self) -> None:
        """`--plan auto`: at the end of the freeze warm-up, profile in-job and solve."""
        if (
            self.cfg.freeze.auto
            and self.plan is None
            and self.pending is None
            and (self.iteration >= self.cfg.freeze.runtime.warmup_iters)
        ):
            if self.cfg.freeze.auto_budget and not self.noise_estimates:
                self._noise_probe()  # the loss cost of freezing, before anything is frozen
            self._replan(reason="auto plan")

    def _maybe_reprice(self) -> None:
        """`--reprice-every K`: every K iterations after the freeze warm-up, probe the noise
        scale (freezer off: the probe measures the whole model's gradient), choose the cap
        again on the same speed curve and switch to its plan from this iteration on."""
        f = self.cfg.freeze
        since = self.iteration - f.runtime.warmup_iters
        if not f.reprice_every or self.plan is None or since <= 0 or since % f.reprice_every:
            return
        if self.pending is not None:
            self.metrics.note(
                f"re-pricing at iteration {self.iteration} skipped: the {self.pending.what} "
                f"started at iteration {self.pending.started} takes effect at {self.pending.due}"
            )
            return
        if self.freezer is not None:
            self.freezer.remove()
        try:
            self._noise_probe()
        finally:
            if self.freezer is not None:
                self.freezer.install()
        profile = Path(f.reprice_profile) if f.reprice_profile else self.curve_profile
        if profile is None:
            # Resumed: the speed curve of the in-job profile is not in the checkpoint.
            self._replan(reason=f"re-pricing at iteration {self.iteration} after a resume")
            return
        at = self.iteration
        work = functools.partial(
            reprice,
            profile,
            self._loss_cost(),
            curves=self.budget_curves,
            source=f"reprice:{at}",
            out_dir=Path(self.cfg.out_dir) / f"reprice_{at}",
        )
        self._solve_beside_training(work, what="re-pricing", then=("reprice", str(at)))

    def _check_drift(self, m: StepMetrics) -> None:
        """Re-profile when the measured time drifts from the prediction for long enough."""
        f = self.cfg.freeze
        if f.drift_threshold <= 0 or m.phase != "freeze" or not m.predicted_seconds:
            return
        if m.predicted_unitless:
            return  # synthetic costs predict no time to drift from
        if self.iteration >= self.cfg.iters:
            return  # nothing left to train with a new plan
        if self.pending is not None:
            return  # a new plan is on its way; its prediction is what to compare with next
        # The prediction covers the pipeline schedule (forward and backward of all microbatches),
        # so it is compared with that part of the iteration. Every rank must take the same
        # decision: rank 0's measurement is broadcast.
        ratio = m.schedule_seconds / m.predicted_seconds
        drift = torch.tensor([abs(ratio - 1.0)], dtype=torch.float64, device=collective_device())
        dist.broadcast(drift, src=0)
        self.drift_count = self.drift_count + 1 if drift.item() > f.drift_threshold else 0
        if self.drift_count >= f.drift_patience:
            self.drift_count = 0
            self._replan(reason=f"drift {drift.item():.1%} > {f.drift_threshold:.1%}")

    def _loss_cost(self) -> LossCost:
        """The auto budget's loss-cost model at the latest noise probe."""
        return LossCost(
            noise_scale=self.noise_estimates[-1]["noise_scale"],
            batch=self.batches.samples_per_iteration,
            min_saving=self.cfg.freeze.auto_min_saving,
        )

    def _replan(self, *, reason: str) -> None:
        """Profile the current model in-job (weights untouched), solve, retarget the freezer.

        Every rank measures; rank 0 solves, on a thread beside training with `--replan-lag`."""
        self.metrics.note(f"re-planning ({reason}): profiling {self.cfg.freeze.profile_iters} x 2")
        cap = self.cfg.freeze.max_freeze_ratio
        budget = self._loss_cost() if cap == "auto" else float(cap)
        out_dir = Path(self.cfg.out_dir) / f"replan_{self.replans}"
        source = f"auto:{self.replans}"
        self.replans += 1
        runtime = self.freezer
        if runtime is not None:  # the profiler installs its own runtimes; measure unfrozen
            runtime.remove()
        try:
            profile = measure_profile(
                self.chunks,
                self.job.model,
                self.job.parallel,
                profile_iters=self.cfg.freeze.profile_iters,
                iteration=self.iteration,
                out_dir=out_dir,
            )
        finally:
            if runtime is not None:
                runtime.install()
        work = None
        if profile is not None:
            work = functools.partial(solve_in_job, profile, budget, source, out_dir)
        self._solve_beside_training(work, what=f"re-plan {source}", then=("replan", str(out_dir)))

    def _solve_beside_training(self, work: Any, *, what: str, then: tuple[str, str]) -> None:
        """Start rank 0's solve (`work`, None on other ranks); its plan takes effect
        `--replan-lag` iterations from now on every rank (now, when the lag is 0)."""
        self.pending = PendingPlan.start(
            work, iteration=self.iteration, lag=self.cfg.freeze.replan_lag, what=what, then=then
        )
        self._apply_due_plan()

    def _apply_due_plan(self) -> None:
        """At the iteration the pending plan is due: rank 0's solve, broadcast, applies."""
        pending = self.pending
        if pending is None or not pending.is_due(self.iteration):
            return
        plan, why = pending.collect(broadcast_plan)
        self.pending = None
        if pending.due > pending.started:
            took = "" if pending.solve is None else f" in {pending.solve.seconds:.1f} s"
            self.metrics.note(
                f"{pending.what}: solved{took} beside iterations {pending.started + 1}-"
                f"{pending.due}, in force from {pending.due + 1} (training waited "
                f"{pending.waited:.1f} s for it)"
            )
        kind, arg = pending.then
        if kind == "reprice":
            self.metrics.note(f"re-priced at iteration {arg}: {why}")
            self.set_plan(plan)
            return
        if why:
            self.metrics.note(f"budget: {why}")
        if self.cfg.freeze.max_freeze_ratio == "auto":
            self.curve_profile = Path(arg) / "profile.json"
        self.set_plan(plan)
        self.metrics.note(
            f"plan: predicted {plan.baseline_makespan * 1e3:.1f} -> "
            f"{plan.makespan * 1e3:.1f} ms per iteration "
            f"(speedup {plan.baseline_makespan / plan.makespan:.3f})"
        )

    def _abandon_pending(self) -> None:
        """The run ended before the pending plan was due: wait for its solve, so its files
        are written whole, and say that the plan was not applied."""
        pending, self.pending = self.pending, None
        assert pending is not None
        outcome = "was not applied"
        if pending.solve is not None and pending.solved is None:
            try:
                pending.solve.result()
            except Exception as exc:  # the run is over: report it, do not mask its own error
                outcome = f"failed ({exc})"
        self.metrics.note(
            f"{pending.what}, due at iteration {pending.due}, {outcome}: the run ended at "
            f"iteration {self.iteration}"
        )

    def _realised_ratios(self) -> list[float]:
        """Realised freeze ratio per virtual stage, gathered on every rank (index c * pp + r)."""
        if self.freezer is None:
            return []
        mine = [float(x) for x in self.freezer.realised_ratio_per_chunk()]
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self.pp_rank, mine))
        stages = [0.0] * self.spec.stages
        for pp_rank, ratios in gathered:
            for chunk, ratio in enumerate(ratios):
                stages[chunk * self.spec.pp + pp_rank] = ratio
        return stages

    # ------------------------------------------------------------------ data and loss

    def _reduce_loss(self, losses: list[dict[str, torch.Tensor]]) -> float:
        """Mean loss over microbatches and data-parallel replicas, known on every rank."""
        total = torch.zeros(2, dtype=torch.float64)
        if self.place.last_stage and losses and self.place.tp_rank == 0:
            total[0] = sum(float(x["lm loss"]) for x in losses) / len(losses)
            total[1] = 1.0
        total = total.to(collective_device())  # NCCL reduces only CUDA tensors
        dist.all_reduce(total)
        return float(total[0] / total[1])

    def _loss_floor(self) -> float | None:
        corpus = self.job.prepared.corpus
        return None if corpus is None else corpus.loss_floor

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """This rank's part of a checkpoint (model, optimizer, scheduler, freezer, RNG, data)."""
        return {
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "model": [c.state_dict() for c in self.chunks],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "freezer": None if self.freezer is None else self.freezer.state_dict(),
            "plan": None if self.plan is None else self.plan.to_dict(),
            "replans": self.replans,
            "drift_count": self.drift_count,
            "pending": None if self.pending is None else self.pending.to_dict(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.elapsed = float(state["elapsed"])
        for chunk, sd in zip(self.chunks, state["model"], strict=True):
            chunk.load_state_dict(sd)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._resume_plan(state)
        self.replans = int(state["replans"])
        self.drift_count = int(state["drift_count"])
        self._resume_pending(state.get("pending"))
        set_rng_state(state["rng"])

    def save_checkpoint(self) -> None:
        assert self.cfg.save is not None
        if self.pending is not None:  # stored with its due iteration: a resume switches there
            self.pending.collect(broadcast_plan)
        meta = {
            "model": self.job.model.to_dict(),
            "parallel": self.job.parallel.to_dict(),
            "schedule": self.spec.to_dict(),
            "plan": None if self.plan is None else self.plan.source,
            "elapsed": self.elapsed,
        }
        path = ckpt.save_checkpoint(
            self.cfg.save,
            self.iteration,
            self.state_dict(),
            meta,
            rank=self.rank,
            barrier=dist.barrier,
            overwrite=self.cfg.overwrite_checkpoints,
        )
        self.metrics.note(f"saved checkpoint {path}")

    def _resume_plan(self, state: dict[str, Any]) -> None:
        """Which plan a resumed run freezes by (docs/pretrain.md, "Resuming").

        An explicit `--no-freeze` or `--plan FILE` wins over the checkpoint's plan, with a line
        saying so; `--plan auto` continues an in-job plan the checkpoint holds and solves anew
        over a plan file's; without either flag the checkpoint's plan continues.
        """
        saved = None if state["plan"] is None else PlanSource.from_dict(state["plan"])
        f = self.cfg.freeze
        if f.no_freeze:
            if saved is not None:
                self.metrics.note(
                    f"--no-freeze replaces the checkpoint's plan ({saved.source}): "
                    "this run freezes nothing"
                )
            return
        if f.enabled and not f.auto:
            assert self.plan is not None  # installed from --plan in __init__
            mine = self.plan
            if state["freezer"] is not None and self.freezer is not None:
                self.freezer.load_state_dict(state["freezer"])  # balance counts carry over
                self.freezer.set_ratios(mine.ratios)
            if saved is not None and saved.ratios != mine.ratios:
                self.metrics.note(
                    f"--plan {mine.source} replaces the checkpoint's plan ({saved.source})"
                )
            return
        if saved is None:
            return
        if f.auto and not saved.source.startswith(("auto:", "reprice:")):
            self.metrics.note(
                f"--plan auto replaces the checkpoint's plan ({saved.source}): "
                "profiling and solving in-job"
            )
            return
        self.set_plan(saved)
        if state["freezer"] is not None:
            self.freezer.load_state_dict(state["freezer"])
        if not f.enabled:
            self.metrics.note(f"continuing the checkpoint's plan ({saved.source})")

    def _resume_pending(self, data: dict[str, Any] | None) -> None:
        """The checkpoint's plan on its way (`--replan-lag`) is due where it was, unless this
        run plans nothing in-job (`--no-freeze`, or a plan file without drift or re-pricing)."""
        if data is None:
            return
        f = self.cfg.freeze
        if f.no_freeze or not (f.auto or f.drift_threshold or f.reprice_every):
            self.metrics.note(
                f"the checkpoint's {data['what']}, due at iteration {data['due']}, is dropped: "
                "this run plans nothing in-job"
            )
            return
        self.pending = PendingPlan.from_dict(data)

    def load_checkpoint(self, path: str) -> None:
        """Resume from the iteration folder the launcher resolved and checked (`resume_from`)."""
        self.load_state_dict(ckpt.load_rank_state(Path(path), self.rank))
        self.metrics.note(f"resumed from {path} at iteration {self.iteration}")

    def _should_save(self) -> bool:
        if not self.cfg.save:
            return False
        if self.iteration >= self.cfg.iters:
            return True
        return bool(self.cfg.save_interval) and self.iteration % self.cfg.save_interval == 0

    def close(self) -> None:
        if self.pending is not None:
            self._abandon_pending()
        if self.freezer is not None:
            self.freezer.remove()
        self.metrics.close()
        destroy_distributed()


# ---------------------------------------------------------------------- construction helpers


def _whole_iterations(batches: list[Any], microbatches: int) -> list[Any]:
    """Keep whole groups of `microbatches` (each forward-only call runs one group)."""
    return batches[: len(batches) // microbatches * microbatches]


def _smallest_valid_microbatches(parallel: Any) -> int:
    """The fewest microbatches Megatron's schedule for this layout accepts (1 for 1F1B)."""
    for m in range(1, parallel.microbatches):
        try:
            replace(parallel, microbatches=m)
        except ConfigError:
            continue
        return m
    raise ConfigError(
        f"--noise-probe-at needs a schedule that accepts fewer than --microbatches "
        f"{parallel.microbatches} microbatches"
    )
