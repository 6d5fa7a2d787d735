"""Per-rank Gantt charts (PNG/SVG) and Chrome trace JSON of an iteration.

A `Timeline` is a plain list of bars, so the same drawing code shows a simulated iteration
(`timeline_from_sim`) and a measured one (built by the profiler from recorded start and end
times); `draw_timelines` stacks several on one time axis so they can be compared.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from megatron_tf.errors import ConfigError
from megatron_tf.formats.kinds.program import COMPUTE_KINDS, ActionKind
from megatron_tf.formats.profile import Measured, default_file_mode, write_json_atomic
from megatron_tf.schedule.dag import NodeKind
from megatron_tf.schedule.simulate import SimResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "Bar",
    "Timeline",
    "timeline_from_sim",
    "timeline_from_measured",
    "draw_timelines",
    "write_chrome_trace",
]


@dataclass(frozen=True, slots=True)
class Bar:
    rank: int
    kind: str
    """An `ActionKind` ("F", "B", "W") or "P2P"."""
    start: float
    end: float
    chunk: int = -1
    microbatch: int = -1
    ratio: float = 0.0
    """Freeze ratio of the action carrying the weight gradient (the frozen part is shaded)."""
    label: str = ""


@dataclass(slots=True)
class Timeline:
    title: str
    ranks: int
    chunks: int = 1
    bars: list[Bar] = field(default_factory=list)

    @property
    def makespan(self) -> float:
        return max((b.end for b in self.bars), default=0.0)


def timeline_from_sim(result: SimResult, title: str | None = None) -> Timeline:
    """Bars of every compute node and of every blocking P2P call that takes time."""
    dag = result.dag
    bars: list[Bar] = []
    for rank_nodes in dag.rank_program:
        for i in rank_nodes:
            node = dag.nodes[i]
            if node.kind is NodeKind.P2P and result.duration[i] <= 0:
                continue
            bars.append(
                Bar(
                    rank=node.rank,
                    kind=node.kind.value,
                    start=result.start[i],
                    end=result.end[i],
                    chunk=node.chunk,
                    microbatch=node.microbatch,
                    ratio=result.ratio[i],
                    label=node.label,
                )
            )
    spec = dag.spec
    text = title or (
        f"simulated: {spec.describe()}, comm model {dag.comm_model}, "
        f"makespan {result.makespan:.4g} s, bubble {result.bubble_fraction:.1%}"
    )
    return Timeline(title=text, ranks=spec.pp, chunks=spec.vpp, bars=bars)


def timeline_from_measured(
    measured: Measured, ranks: int, chunks: int = 1, title: str | None = None
) -> Timeline:
    """Bars of the actions a profiler recorded (those with an end time), to draw beside a
    simulated timeline of the same schedule."""
    bars = [
        Bar(
            rank=a.rank,
            kind=a.kind if a.kind in COMPUTE_KINDS else "P2P",
            start=a.start,
            end=a.end,
            chunk=a.chunk,
            microbatch=a.microbatch,
            label="" if a.kind in COMPUTE_KINDS else a.kind,
        )
        for a in measured.actions or []
        if a.end is not None
    ]
    span = max((b.end for b in bars), default=0.0)
    text = title or f"measured: iteration {measured.iteration_time or span:.4g} s"
    return Timeline(title=text, ranks=ranks, chunks=chunks, bars=bars)


# Forward chunks in blues, backward chunks in oranges/reds, weight-gradient chunks (W, where it
# is its own action) in greens; darker = later chunk.
_FWD = ["#4C78A8", "#2E5A88", "#72A0CF", "#1B3F66", "#9CC0E6", "#123050"]
_BWD = ["#E45756", "#B83C3B", "#F08A6B", "#8E2A2A", "#F5B09A", "#6A1E1E"]
_WGT = ["#54A24B", "#3B7A34", "#88C580", "#285A22", "#B5DDAE", "#1A3D16"]
_PALETTE = {ActionKind.F: _FWD, ActionKind.B: _BWD, ActionKind.W: _WGT}
_LEGEND = {ActionKind.F: "forward", ActionKind.B: "backward", ActionKind.W: "weight gradient"}
_P2P = "#555555"
_EDGE = {"edgecolor": "white", "linewidth": 0.4}
"""Thin white outlines keep back-to-back actions apart."""


def _lighten(hex_color: str, amount: float) -> tuple[float, float, float]:
    r, g, b = (int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def draw_timelines(timelines: Sequence[Timeline], path: str | os.PathLike[str]) -> None:
    """Draw one panel per timeline, sharing the time axis; the format follows the suffix."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise ConfigError(f"--timeline must end in .png or .svg, got {target.name!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    max_ranks = max(t.ranks for t in timelines)
    height = sum(0.9 + 0.32 * t.ranks for t in timelines) + 0.8
    fig, axes = plt.subplots(
        len(timelines),
        1,
        figsize=(16, height),
        sharex=True,
        squeeze=False,
        height_ratios=[t.ranks + 2 for t in timelines],
    )
    span = max(t.makespan for t in timelines) or 1.0
    for ax, tl in zip(axes[:, 0], timelines, strict=True):
        _draw_one(ax, tl, span)
    axes[-1, 0].set_xlabel("time (s)")
    chunks = max(t.chunks for t in timelines)
    kinds = [k for k in ActionKind if any(b.kind == k for t in timelines for b in t.bars)]
    handles = [
        Patch(color=_PALETTE[k][c % len(_PALETTE[k])], label=f"{_LEGEND[k]} chunk {c}")
        for k in kinds or [ActionKind.F, ActionKind.B]
        for c in range(chunks)
    ]
    frozen_kind = ActionKind.W if ActionKind.W in kinds else ActionKind.B
    handles.append(
        Patch(
            facecolor=_lighten(_PALETTE[frozen_kind][0], 0.55),
            hatch="///",
            label=f"frozen part of {_LEGEND[frozen_kind]}",
        )
    )
    handles.append(Patch(color=_P2P, label="blocking P2P"))
    handles.append(Patch(facecolor="#EEEEEE", edgecolor="#BBBBBB", label="idle (bubble)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 if max_ranks > 4 else 0.1, 1, 1))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.fchmod(fd, default_file_mode())
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=130, format=suffix[1:])
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
        plt.close(fig)


def _draw_one(ax: Axes, tl: Timeline, span: float) -> None:
    lane = 0.8
    ax.set_facecolor("#EEEEEE")
    label_bars = len(tl.bars) <= 600
    for bar in tl.bars:
        y = tl.ranks - 1 - bar.rank  # rank 0 on top
        width = bar.end - bar.start
        if bar.kind == "P2P":
            ax.broken_barh([(bar.start, width)], (y - 0.12, 0.24), color=_P2P)
            continue
        palette = _PALETTE.get(ActionKind(bar.kind), _BWD)
        color = palette[max(bar.chunk, 0) % len(palette)]
        if bar.ratio > 0:
            # Bottom part in full colour: the work still done; top part (height = ratio) light
            # and hatched: the share of the weight-gradient work that was frozen.
            solid = lane * (1 - bar.ratio)
            ax.broken_barh([(bar.start, width)], (y - lane / 2, solid), facecolor=color, **_EDGE)
            ax.broken_barh(
                [(bar.start, width)],
                (y - lane / 2 + solid, lane - solid),
                facecolor=_lighten(color, 0.55),
                hatch="///",
                edgecolor="white",
                linewidth=0,
            )
        else:
            ax.broken_barh([(bar.start, width)], (y - lane / 2, lane), facecolor=color, **_EDGE)
        if label_bars and width > span / 90:
            ax.text(
                bar.start + width / 2,
                y,
                str(bar.microbatch),
                ha="center",
                va="center",
                fontsize=7,
                color="white",
            )
    ax.set_yticks(range(tl.ranks))
    ax.set_yticklabels([f"rank {r}" for r in reversed(range(tl.ranks))], fontsize=8)
    ax.set_ylim(-0.6, tl.ranks - 0.4)
    ax.set_xlim(0, span * 1.005)
    ax.set_title(tl.title, fontsize=10, loc="left")


def chrome_trace(timelines: Sequence[Timeline]) -> dict[str, object]:
    """Trace-event JSON: one process per timeline, one thread (track) per rank; times in us."""
    events: list[dict[str, object]] = []
    for pid, tl in enumerate(timelines):
        events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": tl.title}})
        for r in range(tl.ranks):
            events.append(
                {
                    "ph": "M",
                    "name": "thread_name",
                    "pid": pid,
                    "tid": r,
                    "args": {"name": f"rank {r}"},
                }
            )
            events.append(
                {
                    "ph": "M",
                    "name": "thread_sort_index",
                    "pid": pid,
                    "tid": r,
                    "args": {"sort_index": r},
                }
            )
        for bar in tl.bars:
            if bar.kind == "P2P":
                name = bar.label or "P2P"
                args: dict[str, object] = {}
            else:
                name = f"{bar.kind} c{bar.chunk} m{bar.microbatch}"
                args = {"chunk": bar.chunk, "microbatch": bar.microbatch}
                if bar.kind != ActionKind.F:
                    args["freeze_ratio"] = bar.ratio
            events.append(
                {
                    "ph": "X",
                    "name": name,
                    "cat": bar.kind,
                    "pid": pid,
                    "tid": bar.rank,
                    "ts": bar.start * 1e6,
                    "dur": (bar.end - bar.start) * 1e6,
                    "args": args,
                }
            )
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(timelines: Sequence[Timeline], path: str | os.PathLike[str]) -> None:
    """Write the trace atomically; open it at https://ui.perfetto.dev or chrome://tracing."""
    write_json_atomic(chrome_trace(timelines), path)
