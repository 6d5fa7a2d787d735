"""The parts of the GPU acceptance kit. Each returns a JSON-ready dict; `acceptance.py` runs each
one in its own process under a timeout.

- exactness: per-microbatch random frozen subsets; trained weights' gradients and the input
  gradients equal a reference computed without freezing (masks applied to per-microbatch
  reference gradients); frozen weights get no gradient; the profiler shows one weight-gradient
  GEMM fewer per frozen weight;
- linearity: backward time against the frozen share, medians of CUDA-event timings; R^2 of
  a straight-line fit and the largest gap to the LP's line through the two end points;
- F : B_input : W: the costs of those layers as a `--costs F,B,W` line;
- pp2: whether two processes can share the GPU for a pp 2 pipeline.
"""

from __future__ import annotations

import random
import re
import statistics
import time
from typing import Any

import torch
from layers import LLAMA_8B, SMALL, TINY, LayerShape, Stack, frozen, frozen_share, pick_share

from megatron_tf.linefit import fit_line

BF16_TOLERANCE = 2e-2
"""max |a - b| / max |b| per tensor for bf16: about five bf16 ulps (2^-8) of the largest entry,
room for the rounding of accumulating a few microbatches' gradients in bf16."""
FP32_TOLERANCE = 1e-5


def device_for(cpu_check: bool) -> torch.device:
    if cpu_check or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


# ---------------------------------------------------------------------------------- exactness


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item()
    diff = (a.float() - b.float()).abs().max().item()
    return diff / scale if scale > 0 else diff


def _microbatch(stack: Stack, x: torch.Tensor, dy: torch.Tensor, names: set[str]):
    """One microbatch's forward and backward with `names` frozen; (weight grads, input grad)."""
    units = stack.units()
    for p in stack.parameters():
        p.grad = None
    xin = x.detach().requires_grad_(True)
    with frozen(units, names):
        stack(xin).backward(dy)
    grads = {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in units}
    return grads, xin.grad.detach().clone()


def _count_backward_mm(stack: Stack, x: torch.Tensor, dy: torch.Tensor, names: set[str]):
    """aten::mm calls and GEMM-like kernels in one backward with `names` frozen."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if x.is_cuda:
        activities.append(ProfilerActivity.CUDA)
    units = stack.units()
    xin = x.detach().requires_grad_(True)
    with frozen(units, names):
        out = stack(xin)
        with profile(activities=activities) as prof:
            out.backward(dy)
            if x.is_cuda:
                torch.cuda.synchronize()
    mm = 0
    kernels: dict[str, int] = {}
    for event in prof.events():
        if event.name == "aten::mm" and event.device_type.name == "CPU":
            mm += 1
        elif event.device_type.name == "CUDA":
            kernels[event.name] = kernels.get(event.name, 0) + 1
    gemm = sum(n for k, n in kernels.items() if _is_gemm_kernel(k))
    for p in stack.parameters():
        p.grad = None
    return mm, gemm, kernels


def _is_gemm_kernel(name: str) -> bool:
    lowered = name.lower()
    return any(tag in lowered for tag in ("gemm", "nvjet", "xmma", "cutlass", "cublas"))


def exactness(cpu_check: bool) -> dict[str, Any]:
    """Every row: local spec (and TE, when importable) x fp32/bf16 on the tiny layer stack."""
    from layers import init_single_process

    device = device_for(cpu_check)
    init_single_process(device)
    rows = []
    impls = ["megatron"]
    for impl in impls:
        for dtype in (torch.float32, torch.bfloat16):
            rows.append(_exactness_row(impl, dtype, device))
    rows.append(_te_row())
    return {"rows": rows, "passed": all(r.get("passed", True) for r in rows if "passed" in r)}


def _te_row() -> dict[str, Any]:
    try:
        import transformer_engine  # noqa: F401
    except ImportError as err:
        return {
            "impl": "transformer-engine",
            "status": "open",
            "why": f"TransformerEngine is not importable here ({err.__class__.__name__}); its "
            "CUDA 13 wheel is 264 MiB, over the 64 MiB a device call can carry, and its torch "
            "extension ships only as source (docs/gpu.md)",
        }
    return {
        "impl": "transformer-engine",
        "status": "open",
        "why": "TransformerEngine is importable but this kit has no TE row yet",
    }


def _exactness_row(impl: str, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    shape = TINY
    microbatches = 6
    torch.manual_seed(0)
    stack = Stack(shape, impl, dtype, device)
    units = stack.units()
    names = [n for n, _ in units]
    rng = random.Random(7)
    masks = [set(rng.sample(names, rng.randint(0, len(names)))) for _ in range(microbatches)]
    masks[0] = set()  # every unit trains on at least one microbatch, as the policy guarantees
    gen = torch.Generator(device="cpu").manual_seed(1)
    hidden = [
        torch.randn(shape.seq, shape.micro_batch, shape.hidden, generator=gen).to(
            device=device, dtype=dtype
        )
        for _ in range(microbatches)
    ]
    dys = [torch.randn_like(h, device="cpu").to(device) for h in hidden]

    reference = [_microbatch(stack, x, dy, set()) for x, dy in zip(hidden, dys, strict=True)]
    tolerance = BF16_TOLERANCE if dtype == torch.bfloat16 else FP32_TOLERANCE
    per_mb_weight = per_mb_input = 0.0
    leaked: list[str] = []
    for m, (x, dy) in enumerate(zip(hidden, dys, strict=True)):
        grads, dx = _microbatch(stack, x, dy, masks[m])
        ref_grads, ref_dx = reference[m]
        per_mb_input = max(per_mb_input, _rel(dx, ref_dx))
        for n in names:
            if n in masks[m]:
                if grads[n] is not None:
                    leaked.append(f"mb{m}:{n}")
            else:
                per_mb_weight = max(per_mb_weight, _rel(grads[n], ref_grads[n]))

    # Accumulated over the microbatches, as training does: equals the masked reference sum.
    for p in stack.parameters():
        p.grad = None
    for m, (x, dy) in enumerate(zip(hidden, dys, strict=True)):
        with frozen(units, masks[m]):
            stack(x.detach().requires_grad_(True)).backward(dy)
    accumulated = 0.0
    for n, p in units:
        expected = sum(reference[m][0][n].float() for m in range(microbatches) if n not in masks[m])
        accumulated = max(accumulated, _rel(p.grad, expected))

    probe = masks[1] if masks[1] else {names[0]}
    mm_none, gemm_none, _ = _count_backward_mm(stack, hidden[0], dys[0], set())
    mm_frozen, gemm_frozen, kernels = _count_backward_mm(stack, hidden[0], dys[0], probe)
    gemm_ok = (not hidden[0].is_cuda) or gemm_none - gemm_frozen == len(probe)
    passed = (
        not leaked
        and per_mb_weight <= tolerance
        and per_mb_input <= tolerance
        and accumulated <= tolerance
        and mm_none - mm_frozen == len(probe)
    )
    return {
        "impl": impl,
        "dtype": str(dtype).removeprefix("torch."),
        "device": device.type,
        "shape": shape.as_dict(),
        "microbatches": microbatches,
        "frozen_per_microbatch": [len(m) for m in masks],
        "units": len(names),
        "tolerance": tolerance,
        "max_rel_diff_trained_weight_grads": per_mb_weight,
        "max_rel_diff_input_grads": per_mb_input,
        "max_rel_diff_accumulated": accumulated,
        "frozen_weights_with_grad": leaked,
        "backward_aten_mm": {
            "none_frozen": mm_none,
            "frozen": mm_frozen,
            "frozen_units": len(probe),
        },
        "backward_gemm_kernels": (
            {"none_frozen": gemm_none, "frozen": gemm_frozen, "frozen_units": len(probe)}
            if hidden[0].is_cuda
            else "no CUDA kernels on CPU"
        ),
        "gemm_kernels_one_fewer_per_frozen_weight": gemm_ok,
        "cuda_kernels_frozen_backward": kernels,
        "passed": passed,
    }


# ---------------------------------------------------------------------------------- linearity

SHARES = [i / 10 for i in range(11)]


def _timer(device: torch.device):
    """Seconds of `fn()`: CUDA events on GPU, perf_counter on CPU."""

    def cuda_time(fn) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def cpu_time(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return cuda_time if device.type == "cuda" else cpu_time


def linearity(cpu_check: bool) -> dict[str, Any]:
    """Backward time against the frozen share for each (layer shape, implementation)."""
    from layers import init_single_process

    device = device_for(cpu_check)
    init_single_process(device)
    shapes = [TINY] if device.type == "cpu" else [SMALL, LLAMA_8B]
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    reps, warmup = (3, 1) if device.type == "cpu" else (15, 3)
    rows = []
    for shape in shapes:
        for impl in ("megatron", "sdpa"):
            rows.append(_linearity_row(shape, impl, dtype, device, reps, warmup))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"rows": rows, "timer": "CUDA events" if device.type == "cuda" else "perf_counter"}


def _linearity_row(
    shape: LayerShape, impl: str, dtype: torch.dtype, device: torch.device, reps: int, warmup: int
) -> dict[str, Any]:
    torch.manual_seed(0)
    stack = Stack(shape, impl, dtype, device)
    units = stack.units()
    timer = _timer(device)
    x = torch.randn(shape.seq, shape.micro_batch, shape.hidden, device=device, dtype=dtype)
    dy = torch.randn_like(x)

    def one(names: set[str]) -> tuple[float, float]:
        """(forward seconds, backward seconds) of one microbatch with `names` frozen."""
        xin = x.detach().requires_grad_(True)
        with frozen(units, names):
            out: list[torch.Tensor] = []
            fwd = timer(lambda: out.append(stack(xin)))
            bwd = timer(lambda: out[0].backward(dy))
        for p in stack.parameters():
            p.grad = None
        return fwd, bwd

    points = []
    for target in SHARES:
        names = pick_share(units, target)
        for _ in range(warmup):
            one(names)
        timings = [one(names) for _ in range(reps)]
        points.append(
            {
                "target": target,
                "share": frozen_share(units, names),
                "backward_s": statistics.median(t[1] for t in timings),
                "forward_s": statistics.median(t[0] for t in timings),
            }
        )
    xs = [p["share"] for p in points]
    ys = [p["backward_s"] for p in points]
    fit = fit_line(xs, ys)
    full = next(p["backward_s"] for p in points if p["share"] == 0.0)
    dgrad_only = next(p["backward_s"] for p in points if p["share"] == 1.0)
    # The LP's line: backward(r) = B + (1 - r) W, through the two end points.
    gap = max(abs(y - (full - x_ * (full - dgrad_only))) for x_, y in zip(xs, ys, strict=True))
    forward = statistics.median(p["forward_s"] for p in points)
    wgrad = full - dgrad_only
    return {
        "shape": shape.as_dict(),
        "impl": impl,
        "dtype": str(dtype).removeprefix("torch."),
        "reps": reps,
        "points": points,
        "fit_slope_s": fit["slope"],
        "fit_intercept_s": fit["intercept"],
        "r2": fit["r2"],
        "max_gap_to_lp_line_rel": gap / full if full > 0 else 0.0,
        "costs": {
            "F": forward,
            "B_input": dgrad_only,
            "W": wgrad,
            "line": _costs_line(forward, dgrad_only, wgrad),
        },
    }


def _costs_line(forward: float, dgrad: float, wgrad: float) -> str:
    """`--costs F,B,W` normalised to F = 1 (the what-if profile is unitless)."""
    if forward <= 0:
        return "1,1,1"
    return f"1,{dgrad / forward:.3f},{max(wgrad, 0.0) / forward:.3f}"


# ---------------------------------------------------------------------------------- pp 2


_ERROR_LINE = re.compile(r"Error|error:|what\(\)|Duplicate|not supported|RuntimeError")


def pp2_probe(cpu_check: bool) -> dict[str, Any]:
    """Can two processes share one GPU as a pp 2 pipeline? Tries NCCL and gloo P2P on cuda:0."""
    if device_for(cpu_check).type == "cpu":
        return {"status": "skipped", "why": "needs CUDA"}
    import subprocess
    import sys
    from pathlib import Path

    results = {}
    for backend in ("nccl", "gloo"):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(Path(__file__).with_name("pp2_worker.py")),
            backend,
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=45)
            lines = (done.stdout + done.stderr).strip().splitlines()
            # torchrun ends with a summary box; the cause is in the workers' error lines.
            causes = [ln for ln in lines if _ERROR_LINE.search(ln)][:6]
            results[backend] = {"returncode": done.returncode, "tail": causes or lines[-6:]}
        except subprocess.TimeoutExpired:
            results[backend] = {"returncode": None, "tail": ["timed out after 45 s"]}
    usable = [b for b, r in results.items() if r["returncode"] == 0]
    return {
        "status": "p2p works" if usable else "p2p refused",
        "usable_backends": usable,
        "attempts": results,
        "gradient_check": (
            "not run: the freeze runtime's torchrun tests bind one GPU per rank "
            "(LOCAL_RANK -> cuda device), which one GPU cannot give"
        ),
    }
