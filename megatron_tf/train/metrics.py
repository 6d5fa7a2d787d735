"""Metrics of a training run: one JSONL record per iteration, a rich line per log interval, and
TensorBoard events in `<out-dir>/tensorboard` (on by default; `pretrain --no-tensorboard` turns
them off).

Only the metrics rank (global rank 0, after the trainer gathered the values there) writes.
Throughput is tokens / wall seconds of the iteration: freezing changes the FLOPs per token, so a
FLOP-based rule (6N) would over-report a frozen run.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console


@dataclass(kw_only=True, slots=True)
class StepMetrics:
    """What one iteration reports."""

    iteration: int
    """1-based index of the iteration just finished."""
    loss: float
    """Mean LM loss over the iteration's microbatches (nats per token)."""
    lr: float
    grad_norm: float
    tokens: int
    """Tokens consumed by the iteration (global batch * sequence length)."""
    seconds: float
    """Wall time of the iteration (schedule + optimizer step), measured on rank 0."""
    schedule_seconds: float = 0.0
    """Wall time of the pipeline schedule alone (what the DAG model predicts), on rank 0."""
    predicted_seconds: float | None = None
    """The plan's (or profile's) predicted iteration time, when known (see predicted_unitless)."""
    predicted_unitless: bool = False
    """The plan was solved on synthetic costs: `predicted_seconds` is in their unit, not s."""
    freeze_ratio: list[float] = field(default_factory=list)
    """Realised freeze ratio per virtual stage (index = chunk * pp + rank)."""
    phase: str = "train"
    """`warmup`, `ramp`, `freeze`, `train` (no plan), or `profile`."""
    elapsed: float = 0.0
    """Wall seconds since the run started (training iterations only)."""
    val_loss: float | None = None
    """Mean LM loss on the held-out validation set after this iteration's step, when evaluated
    (`--eval-interval`); evaluation time is not in `seconds` or `elapsed`."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokens_per_second"] = self.tokens_per_second
        return data


class MetricsLogger:
    """JSONL + console + optional TensorBoard; a no-op on ranks other than the metrics rank."""

    def __init__(
        self, out_dir: str | Path, *, enabled: bool, log_interval: int, tensorboard: bool
    ) -> None:
        self.enabled = enabled
        self.log_interval = log_interval
        self.console = Console(stderr=False, highlight=False)
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(out / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        if tensorboard:
            self._tb = _tensorboard_writer(out / "tensorboard", self.console)

    def log(self, m: StepMetrics, *, last: bool = False) -> None:
        """Record `m`; print its line every `log_interval` iterations and at the run's `last`
        iteration, whatever the interval, so a run's final numbers are always on the console."""
        if not self.enabled:
            return
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(m.to_dict()) + "\n")
        if self._tb is not None:
            self._tb.add_scalar("loss", m.loss, m.iteration)
            self._tb.add_scalar("lr", m.lr, m.iteration)
            self._tb.add_scalar("grad_norm", m.grad_norm, m.iteration)
            self._tb.add_scalar("tokens_per_second", m.tokens_per_second, m.iteration)
            self._tb.add_scalar("iteration_seconds", m.seconds, m.iteration)
            if m.val_loss is not None:
                self._tb.add_scalar("val_loss", m.val_loss, m.iteration)
            for stage, ratio in enumerate(m.freeze_ratio):
                self._tb.add_scalar(f"freeze_ratio/stage{stage}", ratio, m.iteration)
        if last or m.iteration % self.log_interval == 0 or m.phase == "profile":
            self.console.print(format_line(m), soft_wrap=True)

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(f"[dim]{text}[/]", soft_wrap=True)

    def summary(self, text: str) -> None:
        """The run's closing line (`format_summary`), undimmed."""
        if self.enabled:
            self.console.print(text, soft_wrap=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def format_line(m: StepMetrics) -> str:
    """The console line: iteration, loss, tokens/s, measured vs predicted time, ratios, lr, norm."""
    predicted = ""
    if m.predicted_seconds and m.predicted_unitless:
        predicted = (
            f" (fwd-bwd {m.schedule_seconds * 1e3:.0f} ms, "
            f"pred {m.predicted_seconds:.4g} unitless: synthetic costs)"
        )
    elif m.predicted_seconds:
        predicted = (
            f" (fwd-bwd {m.schedule_seconds * 1e3:.0f} ms, pred {m.predicted_seconds * 1e3:.0f} ms)"
        )
    ratios = ""
    if m.freeze_ratio:
        ratios = " frz " + "/".join(f"{r:.2f}" for r in m.freeze_ratio)
    val = "" if m.val_loss is None else f" val {m.val_loss:.4f}"
    return (
        f"[bold]it {m.iteration:>5d}[/] [cyan]{m.phase:<7s}[/] loss [bold]{m.loss:.4f}[/]{val} "
        f"{m.tokens_per_second:,.0f} tok/s {m.seconds * 1e3:.0f} ms{predicted}{ratios} "
        f"lr {m.lr:.2e} gnorm {m.grad_norm:.3f}"
    )


def format_summary(
    last: StepMetrics | None, *, first_iteration: int, val: tuple[int, float] | None, wall: float
) -> str:
    """The run's last line: iterations, final loss, the latest validation loss, time, and the
    frozen share (mean realised freeze ratio over virtual stages, since the run started)."""
    if last is None:
        return f"done: no iterations left to run (at iteration {first_iteration})"
    frozen = sum(last.freeze_ratio) / len(last.freeze_ratio) if last.freeze_ratio else 0.0
    val_text = "" if val is None else f", val loss {val[1]:.4f} (it {val[0]})"
    return (
        f"done: iterations {first_iteration + 1}-{last.iteration}, final loss {last.loss:.4f}"
        f"{val_text}, {last.elapsed:.1f} s training ({wall:.1f} s wall), frozen share "
        f"{frozen:.3f}"
    )


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (for the demo's report and the benchmarks)."""
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _tensorboard_writer(path: Path, console: Console) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        # tensorboard is a dependency; a broken install should not cost the run, only the events.
        console.print(
            f"[dim]note: TensorBoard events skipped: {exc} (reinstall the `tensorboard` package, "
            "or pass --no-tensorboard)[/]"
        )
        return None
    os.makedirs(path, exist_ok=True)
    return SummaryWriter(log_dir=str(path))
