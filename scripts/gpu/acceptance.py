"""GPU acceptance kit: settle in one command what only a GPU can tell (docs/gpu.md).

    scripts/gpu/acceptance.sh --out DIR              # on a GPU machine
    scripts/gpu/acceptance.sh --cpu-check --out DIR  # reduced form on CPU (CI)

Each part runs in its own process under a timeout, so one that hangs or crashes leaves the
others' numbers; the report (DIR/report.json, DIR/report.md) says for each part whether it
passed, failed, timed out or was skipped, and why.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# (part, timeout seconds on GPU); on CPU every part is small.
PARTS = [("environment", 60), ("exactness", 120), ("linearity", 200), ("pp2", 100)]


def environment(cpu_check: bool) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "mode": "cpu-check" if cpu_check else "gpu",
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        from importlib.metadata import version

        info["megatron_core"] = version("megatron-core")
    except Exception as err:  # noqa: BLE001 - reported, not raised
        info["megatron_core"] = f"missing ({err.__class__.__name__})"
    try:
        import transformer_engine

        info["transformer_engine"] = getattr(transformer_engine, "__version__", "present")
    except ImportError:
        info["transformer_engine"] = "not installed"
    return info


def run_part(name: str, cpu_check: bool) -> dict[str, Any]:
    """Inside the child process: run one part and return its result."""
    if name == "environment":
        return environment(cpu_check)
    sys.path.insert(0, str(HERE))
    import checks

    if name == "pp2":
        return checks.pp2_probe(cpu_check)
    return getattr(checks, name)(cpu_check)


def run_all(out: Path, cpu_check: bool) -> dict[str, Any]:
    """In the parent: each part as a child process with its timeout; collect the results."""
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "parts": {}}
    for name, timeout in PARTS:
        result_file = out / f"part-{name}.json"
        result_file.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--part", name, "--out", str(out)]
        if cpu_check:
            cmd.append("--cpu-check")
        t0 = time.monotonic()
        print(f"[acceptance] {name} (timeout {timeout} s) ...", flush=True)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            status = "ok" if done.returncode == 0 and result_file.exists() else "error"
            tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        except subprocess.TimeoutExpired:
            status, tail = "timeout", [f"killed after {timeout} s"]
        entry: dict[str, Any] = {"status": status, "seconds": round(time.monotonic() - t0, 1)}
        if result_file.exists():
            entry["result"] = json.loads(result_file.read_text())
        if status != "ok":
            entry["log_tail"] = tail
        report["parts"][name] = entry
        print(f"[acceptance] {name}: {status} in {entry['seconds']} s", flush=True)
    report["costs_lines"] = _cost_lines(report)
    return report


def _cost_lines(report: dict[str, Any]) -> dict[str, str]:
    rows = report["parts"].get("linearity", {}).get("result", {}).get("rows", [])
    return {f"{r['shape']['name']}/{r['impl']}": r["costs"]["line"] for r in rows}


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: one section per part."""
    parts = report["parts"]
    env = parts.get("environment", {}).get("result", {})
    lines = [
        "# TimelyFreeze GPU acceptance report",
        "",
        f"Started {report['started']}; mode {env.get('mode', '?')}; GPU {env.get('gpu', 'none')}; "
        f"torch {env.get('torch', '?')}; CUDA {env.get('cuda', '-')}; "
        f"megatron-core {env.get('megatron_core', '?')}; "
        f"TransformerEngine {env.get('transformer_engine', '?')}.",
        "",
        "| part | status | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {p['status']} | {p['seconds']} |" for name, p in parts.items()]

    lines += ["", "## 1. Exactness (per-microbatch frozen subsets against a reference)", ""]
    rows = parts.get("exactness", {}).get("result", {}).get("rows", [])
    lines += [
        "| layers | dtype | tolerance | trained wgrad | input grad | accumulated | "
        "frozen with grad | backward mm (none/frozen/units) | GEMM kernels | passed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "passed" not in r:
            lines.append(
                f"| {r['impl']} | - | - | - | - | - | - | - | - | {r['status']}: {r['why']} |"
            )
            continue
        mm, gk = r["backward_aten_mm"], r["backward_gemm_kernels"]
        gemm = gk if isinstance(gk, str) else f"{gk['none_frozen']}/{gk['frozen']}"
        lines.append(
            f"| {r['impl']} ({r['device']}) | {r['dtype']} | {r['tolerance']:g} | "
            f"{r['max_rel_diff_trained_weight_grads']:.2e} | {r['max_rel_diff_input_grads']:.2e} | "
            f"{r['max_rel_diff_accumulated']:.2e} | {len(r['frozen_weights_with_grad'])} | "
            f"{mm['none_frozen']}/{mm['frozen']}/{mm['frozen_units']} | {gemm} | {r['passed']} |"
        )

    lines += ["", "## 2-3. Backward time against the frozen share; F : B_input : W", ""]
    lin = parts.get("linearity", {}).get("result", {})
    lines += [
        f"Timer: {lin.get('timer', '-')}; medians. The LP's line runs through the unfrozen and "
        "fully frozen backward times.",
        "",
        "| layer | impl | dtype | backward at share 0 / 1 (ms) | R^2 | max gap to LP line | "
        "F (ms) | `--costs` line |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in lin.get("rows", []):
        pts = r["points"]
        lines.append(
            f"| {r['shape']['name']} | {r['impl']} | {r['dtype']} | "
            f"{pts[0]['backward_s'] * 1e3:.2f} / {pts[-1]['backward_s'] * 1e3:.2f} | "
            f"{r['r2']:.4f} | {r['max_gap_to_lp_line_rel']:.2%} | {r['costs']['F'] * 1e3:.2f} | "
            f"`{r['costs']['line']}` |"
        )
    for r in lin.get("rows", []):
        shares = ", ".join(f"{p['share']:.2f}: {p['backward_s'] * 1e3:.2f}" for p in r["points"])
        lines.append(f"\n{r['shape']['name']}/{r['impl']} backward ms by share: {shares}")

    lines += ["", "## 4. pp 2 on one GPU", ""]
    pp2 = parts.get("pp2", {}).get("result", {})
    lines.append(
        f"Status: {pp2.get('status', parts.get('pp2', {}).get('status'))}. {pp2.get('why', '')}"
    )
    for backend, attempt in pp2.get("attempts", {}).items():
        lines.append(
            f"- {backend}: exit {attempt['returncode']}: {' / '.join(attempt['tail'][-2:])}"
        )
    if "gradient_check" in pp2:
        lines.append(f"- gradient check: {pp2['gradient_check']}")
    for name, p in parts.items():
        if p["status"] != "ok":
            lines += ["", f"### {name}: log tail", "", "```", *p.get("log_tail", []), "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the reports")
    parser.add_argument("--cpu-check", action="store_true", help="reduced form on CPU")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part:
        result = run_part(args.part, args.cpu_check)
        (args.out / f"part-{args.part}.json").write_text(json.dumps(result, indent=1))
        return 0
    report = run_all(args.out, args.cpu_check)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    (args.out / "report.md").write_text(render_markdown(report))
    failed = [n for n, p in report["parts"].items() if p["status"] != "ok"]
    exact = report["parts"].get("exactness", {}).get("result", {})
    if exact and not exact.get("passed", False):
        failed.append("exactness (a comparison failed)")
    print(f"[acceptance] report: {args.out / 'report.md'}")
    if failed:
        print(f"[acceptance] not ok: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
