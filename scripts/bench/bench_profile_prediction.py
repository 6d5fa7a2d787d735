"""How well does the schedule model predict a measured iteration? Both comm models and orders.

Runs `timelyfreeze profile` on the default small GPT for pp 2 (1F1B) and pp 2 x vpp 2
(interleaved, overlap_p2p_comm), once per phase order (`--phase-order interleaved`, the default,
and `sequential`, the earlier K-unfrozen-then-K-frozen) in each of `--repeats` repeats, the two
orders alternating so that both see the same stretch of the machine's load. Each profile is
simulated with the `megatron` (P2P rendezvous) and `dataflow` comm models; the relative error
against the measured median iteration time is printed for the unfrozen phase (whose
representative iteration calibrated the per-message P2P time) and for the fully frozen phase
(not seen by the calibration). `W` is the weight-gradient time the LP can save, summed over the
stages: `backward - backward_frozen` per microbatch; its spread over the repeats shows how
stable each order's estimate is. Cells are medians over the repeats, with [min, max] where the
spread matters. The target is |error| <= 5% for the megatron model on an idle machine; the
1-minute load average is printed because other processes on the cores skew every number.

    .venv/bin/python scripts/bench/bench_profile_prediction.py [--iters 10] [--repeats 3] \\
        [--markdown out.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from megatron_tf.formats.profile import load_profile
from megatron_tf.profile.replay import frozen_prediction_check
from megatron_tf.schedule.simulate import simulate_profile

LAYOUTS: dict[str, list[str]] = {
    "1f1b pp=2 M=4": ["--pp", "2", "--microbatches", "4"],
    "interleaved pp=2 vpp=2 M=4 (overlap)": [
        "--pp",
        "2",
        "--vpp",
        "2",
        "--overlap-p2p-comm",
        "--microbatches",
        "4",
    ],
}
ORDERS = ("interleaved", "sequential")
MODELS = ("megatron", "dataflow")


def measure(layout: list[str], iters: int, order: str, out: Path) -> dict[str, float]:
    """Profile once; the numbers one table cell is made from."""
    cmd = [sys.executable, "-m", "megatron_tf", "profile", *layout, "--iters", str(iters)]
    cmd += ["--phase-order", order, "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"profile failed ({done.returncode}):\n{done.stderr[-3000:]}")
    profile = load_profile(out)
    measured = profile.measured.iteration_time
    row = {
        "measured": measured,
        "frozen": profile.measured.frozen_iteration_time,
        "w": sum(s.backward - s.backward_frozen for s in profile.stages),
        "load": (load + os.getloadavg()[0]) / 2,
    }
    transfer = profile.measured.comm_transfer
    raw = max(x["seconds"] for x in transfer) if isinstance(transfer, list) else transfer
    row["p2p transfer"] = raw
    row["p2p calibrated"] = profile.comm if isinstance(profile.comm, float) else raw
    for model in MODELS:
        predicted = simulate_profile(profile, model).makespan
        row[f"{model} error"] = (predicted - measured) / measured
        row[f"{model} error, frozen"] = frozen_prediction_check(profile, model)[
            "frozen_prediction_error"
        ]
    return row


def _ms(values: list[float], spread: bool = False) -> str:
    text = f"{statistics.median(values) * 1e3:.2f}"
    if spread and len(values) > 1:
        text += f" [{min(values) * 1e3:.2f}, {max(values) * 1e3:.2f}]"
    return text


def _pct(values: list[float]) -> str:
    text = f"{statistics.median(values):+.1%}"
    if len(values) > 1:
        text += f" [{min(values):+.1%}, {max(values):+.1%}]"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10, help="measured iterations per phase")
    parser.add_argument("--repeats", type=int, default=3, help="profiles per layout and order")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, layout in LAYOUTS.items():
            for repeat in range(args.repeats):
                # Alternate which order goes first, so neither always sees the later load.
                orders = ORDERS if repeat % 2 == 0 else ORDERS[::-1]
                for order in orders:
                    row = measure(layout, args.iters, order, Path(tmp) / "profile.json")
                    results.setdefault((name, order), []).append(row)
                    print(f"{name} {order} #{repeat + 1}: {row}", file=sys.stderr, flush=True)
    header = [
        "layout",
        "phase order",
        "measured ms",
        "frozen measured ms",
        "W ms [min, max]",
        *(f"{m} error{s}" for m in MODELS for s in ("", ", frozen")),
        "P2P ms: transfer / calibrated",
        "load avg",
    ]
    rows = []
    for (name, order), runs in results.items():
        col = {key: [r[key] for r in runs] for key in runs[0]}
        rows.append(
            [
                name,
                order,
                _ms(col["measured"]),
                _ms(col["frozen"]),
                _ms(col["w"], spread=True),
                *(_pct(col[f"{m} error{s}"]) for m in MODELS for s in ("", ", frozen")),
                f"{statistics.median(col['p2p transfer']) * 1e3:.3f} / "
                f"{statistics.median(col['p2p calibrated']) * 1e3:.3f}",
                f"{statistics.mean(col['load']):.1f}",
            ]
        )
    lines = [
        f"Prediction error of the schedule model, default small GPT, {args.iters} iterations "
        f"per phase, median [min, max] over {args.repeats} profiles per row, "
        f"{platform.machine()} x {os.cpu_count()} cores, gloo on CPU",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
