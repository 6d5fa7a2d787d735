"""Time and memory of `solve` (both passes) at scale, on synthetic profiles (costs 1,1,1).

    .venv/bin/python scripts/bench/bench_solve.py                   # the three standard cases
    .venv/bin/python scripts/bench/bench_solve.py --time-limit 300  # one limit for every case
    .venv/bin/python scripts/bench/bench_solve.py --case 16,4,128 --comm-model dataflow
    .venv/bin/python scripts/bench/bench_solve.py --case 64,1,1024  # vpp 1: a 1F1B schedule
    .venv/bin/python scripts/bench/bench_solve.py --solver pdlp --pdlp-eps 1e-4
    .venv/bin/python scripts/bench/bench_solve.py --case 16,4,128 --caps auto  # cold vs warm

`--caps auto` (the 11 caps `--max-freeze-ratio auto` solves) or `--caps 0.05,0.1,...` solves
every cap twice in one process: cold (one `solve_lp` per cap, what each cap cost before
`solve_caps`) and warm (`solve_caps`, one LP re-bounded cap to cap, pass 2 restarted from the
previous cap's basis), and prints CPU seconds and pivots per cap side by side, with the
largest relative difference of T* between the two. It then solves the cold caps once more on
one thread per usable core (`solve_each_cap`, what `--max-freeze-ratio auto` does) and prints
that wall time against the one-by-one cold wall time, and whether the plans are identical.

`--solver` is `solve`'s flag: auto (GLOP up to 60,000 LP variables, PDLP above), glop or
pdlp. Each case runs in a fresh subprocess so its peak RSS (resource.getrusage) is its own,
and so a case that runs past its wall-time limit can be stopped: it is then reported as "did
not finish within N s" instead of hanging the script. Wall time and CPU time are both
printed: on a shared machine the CPU time (time.process_time) is the honest number for the
solver's work, the wall time is what a user waits.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time

# (pp, vpp, M, default wall-time limit in seconds for the whole subprocess); vpp 1 is 1F1B
CASES = [(16, 4, 128, 900.0), (32, 4, 512, 1200.0), (64, 1, 1024, 1200.0)]


def case_name(pp: int, vpp: int, m: int) -> str:
    return f"1F1B pp={pp} M={m}" if vpp == 1 else f"interleaved pp={pp} vpp={vpp} M={m}"


def run_case(
    pp: int, vpp: int, m: int, comm_model: str, max_ratio: float, solver: str, eps: float
) -> dict:
    from megatron_tf.formats.schedule import ScheduleSpec
    from megatron_tf.schedule.costs import CostModel, synthetic_profile
    from megatron_tf.schedule.dag import build_dag
    from megatron_tf.solve.lp import SolverConfig, solve_lp

    kind = "1f1b" if vpp == 1 else "interleaved"
    spec = ScheduleSpec(kind=kind, pp=pp, vpp=vpp, microbatches=m)
    profile = synthetic_profile(spec, [(1.0, 1.0, 1.0)])
    t0 = time.perf_counter()
    dag = build_dag(spec, CostModel.from_profile(profile), comm_model)
    dag_seconds = time.perf_counter() - t0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    config = SolverConfig(
        max_freeze_ratio=max_ratio, comm_model=comm_model, solver=solver, pdlp_eps=eps
    )
    result = solve_lp(dag, config)
    return {
        "case": f"{case_name(pp, vpp, m)} ({comm_model}, {result.solver})",
        "finished": True,
        "dag_nodes": len(dag.nodes),
        "dag_seconds": dag_seconds,
        "solve_wall_seconds": time.perf_counter() - wall0,
        "solve_cpu_seconds": time.process_time() - cpu0,
        "pass_seconds": list(result.pass_seconds),
        "lp_variables": result.num_variables,
        "lp_rows": result.num_constraints,
        "iterations": [result.extras["pass1_iterations"], result.extras["pass2_iterations"]],
        "first_stage_pinned": list(result.first_stage_pinned),
        "speedup": result.speedup,
        "makespan": result.makespan,
        "lp_makespan": result.lp_makespan,
        "lp_gap": result.extras["lp_gap"],
        "dual_bound": result.extras.get("dual_bound", float("nan")),
        "certified_gap": result.extras.get("certified_gap", float("nan")),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_caps(pp: int, vpp: int, m: int, comm_model: str, caps: list[float], solver: str) -> dict:
    """Every cap cold (one solve_lp each) and warm (solve_caps), CPU seconds and pivots."""
    from megatron_tf.formats.schedule import ScheduleSpec
    from megatron_tf.schedule.costs import CostModel, synthetic_profile
    from megatron_tf.schedule.dag import build_dag
    from megatron_tf.solve.lp import (
        SolverConfig,
        solve_caps,
        solve_each_cap,
        solve_lp,
        usable_cores,
    )
    from megatron_tf.solve.reduce import reduce_dag

    kind = "1f1b" if vpp == 1 else "interleaved"
    spec = ScheduleSpec(kind=kind, pp=pp, vpp=vpp, microbatches=m)
    dag = build_dag(
        spec, CostModel.from_profile(synthetic_profile(spec, [(1.0, 1.0, 1.0)])), comm_model
    )
    cpu0 = time.process_time()
    prec = reduce_dag(dag)
    reduce_cpu = time.process_time() - cpu0
    config = SolverConfig(comm_model=comm_model, solver=solver)
    # OR-Tools' first call loads and sets up the solver: pay it before either clock runs
    tiny = ScheduleSpec(kind="1f1b", pp=2, microbatches=2)
    solve_lp(build_dag(tiny, CostModel.from_profile(synthetic_profile(tiny, [(1, 1, 1)]))), config)
    cold: dict[float, dict] = {}
    plans = {}
    cpu_cold, wall_cold = time.process_time(), time.perf_counter()
    for cap in sorted(caps, reverse=True):
        cpu0 = time.process_time()
        r = solve_lp(
            dag, SolverConfig(**{**config.to_dict(), "max_freeze_ratio": cap}), precedence=prec
        )
        cold[cap] = _row(r, time.process_time() - cpu0)
        plans[cap] = r.ratios
    cpu_cold, wall_cold = time.process_time() - cpu_cold, time.perf_counter() - wall_cold
    # The same cold solves, one thread per usable core (what budget_curve does)
    cpu_par, wall_par = time.process_time(), time.perf_counter()
    parallel = solve_each_cap(dag, config, caps, precedence=prec)
    cpu_par, wall_par = time.process_time() - cpu_par, time.perf_counter() - wall_par
    identical = all((parallel[c].ratios == plans[c]).all() for c in caps)
    marks: dict[float, float] = {}

    def mark(line: str) -> None:  # the first line of a cap: its CPU clock starts
        cap = float(line.split(":")[0].split()[-1])
        marks.setdefault(cap, time.process_time())

    cpu_warm = time.process_time()
    solved = solve_caps(dag, config, caps, precedence=prec, progress=mark)
    end = time.process_time()
    cpu_warm = end - cpu_warm
    order = sorted(marks, key=marks.__getitem__) + [None]
    warm = {}
    for cap, nxt in zip(order, order[1:], strict=False):
        warm[cap] = _row(solved[cap], (marks[nxt] if nxt is not None else end) - marks[cap])
    worst = max(abs(warm[c]["t_star"] - cold[c]["t_star"]) / cold[c]["t_star"] for c in caps)
    return {
        "case": f"{case_name(pp, vpp, m)} ({comm_model}, {solved[caps[0]].solver})",
        "dag_nodes": len(dag.nodes),
        "lp_variables": solved[caps[0]].num_variables,
        "lp_rows": solved[caps[0]].num_constraints,
        "reduce_cpu_seconds": reduce_cpu,
        "cold": {str(c): cold[c] for c in caps},
        "warm": {str(c): warm[c] for c in caps},
        "cold_cpu_seconds": cpu_cold,
        "cold_wall_seconds": wall_cold,
        "parallel": {
            "threads": min(len(caps), usable_cores()),
            "wall_seconds": wall_par,
            "cpu_seconds": cpu_par,
            "plans_identical": identical,
        },
        "warm_cpu_seconds": cpu_warm,
        "max_rel_t_star_difference": worst,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _row(result: object, cpu: float) -> dict:
    r = result
    return {
        "cpu_seconds": cpu,
        "pivots": [r.extras["pass1_iterations"], r.extras["pass2_iterations"]],  # type: ignore[attr-defined]
        "t_star": r.lp_makespan,  # type: ignore[attr-defined]
        "total_freezing": float(r.ratios.sum()),  # type: ignore[attr-defined]
        "pinned": list(r.first_stage_pinned),  # type: ignore[attr-defined]
    }


def _cell(cpu: float, pivots: list[float]) -> str:
    return f"{cpu:7.2f} s  {pivots[0]:7.0f} + {pivots[1]:7.0f}"


def print_caps(out: dict) -> None:
    """The cold and warm columns of `run_caps`, one line per cap, then the totals."""
    print(
        f"{out['case']}: {out['dag_nodes']} DAG nodes -> LP {out['lp_variables']} vars, "
        f"{out['lp_rows']} rows (series reduction {out['reduce_cpu_seconds']:.2f} s CPU, shared)"
    )
    print("cap     cold CPU  cold pivots (1 + 2)  warm CPU  warm pivots (1 + 2)")
    total = {"cold": [0.0, 0.0], "warm": [0.0, 0.0]}
    for cap in sorted(out["cold"], key=float, reverse=True):
        c, w = out["cold"][cap], out["warm"][cap]
        for name, row in (("cold", c), ("warm", w)):
            total[name][0] += row["pivots"][0]
            total[name][1] += row["pivots"][1]
        print(
            f"{float(cap):<6g}  {_cell(c['cpu_seconds'], c['pivots'])}"
            f"   {_cell(w['cpu_seconds'], w['pivots'])}"
        )
    print(
        f"all     {_cell(out['cold_cpu_seconds'], total['cold'])}"
        f"   {_cell(out['warm_cpu_seconds'], total['warm'])}"
        f"   warm/cold CPU {out['warm_cpu_seconds'] / out['cold_cpu_seconds']:.2f}; "
        f"largest relative T* difference {out['max_rel_t_star_difference']:.1e}; "
        f"peak RSS {out['peak_rss_mb']:.0f} MB"
    )
    par = out["parallel"]
    print(
        f"cold caps in parallel ({par['threads']} threads, budget_curve): wall "
        f"{par['wall_seconds']:.2f} s against {out['cold_wall_seconds']:.2f} s one by one "
        f"({par['wall_seconds'] / out['cold_wall_seconds']:.2f}x), CPU {par['cpu_seconds']:.2f} s; "
        f"plans identical: {'yes' if par['plans_identical'] else 'NO'}"
    )


def run_limited(cmd: list[str], limit: float) -> tuple[str | None, float]:
    """Run `cmd`; its stdout, or None when it ran past `limit` seconds (then it is killed)."""
    started = time.perf_counter()
    # own process group, so the kill reaches the solver whatever it spawned
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"case failed (exit {proc.returncode}): {' '.join(cmd)}")
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help="pp,vpp,M (one case, in this process, no limit)")
    parser.add_argument("--comm-model", default="megatron", choices=["megatron", "dataflow"])
    parser.add_argument("--max-freeze-ratio", type=float, default=0.2)
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="wall seconds per case (DAG build + solve); defaults 900, 1200, 1200",
    )
    parser.add_argument(
        "--solver",
        default="auto",
        choices=["auto", "glop", "pdlp"],
        help="`solve --solver`: auto (by LP size), glop (exact simplex) or pdlp (first-order)",
    )
    parser.add_argument("--pdlp-eps", type=float, default=1e-4, help="PDLP relative accuracy")
    parser.add_argument(
        "--caps",
        help="`auto` (the auto budget's grid) or a list like 0.05,0.1: every cap cold and warm",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line per case")
    args = parser.parse_args()
    caps = _parse_caps(parser, args.caps) if args.caps else None
    if args.case and caps is not None:
        pp, vpp, m = (int(x) for x in args.case.split(","))
        out = run_caps(pp, vpp, m, args.comm_model, caps, args.solver)
        print(json.dumps(out) if args.json else "", end="\n" if args.json else "")
        if not args.json:
            print_caps(out)
        return
    if args.case:
        pp, vpp, m = (int(x) for x in args.case.split(","))
        out = run_case(
            pp, vpp, m, args.comm_model, args.max_freeze_ratio, args.solver, args.pdlp_eps
        )
        print(json.dumps(out))
        return
    for pp, vpp, m, default_limit in CASES:
        limit = args.time_limit if args.time_limit is not None else default_limit
        cmd = [sys.executable, __file__, "--case", f"{pp},{vpp},{m}"]
        cmd += ["--comm-model", args.comm_model, "--max-freeze-ratio", str(args.max_freeze_ratio)]
        cmd += ["--solver", args.solver, "--pdlp-eps", str(args.pdlp_eps)]
        if args.caps:
            cmd += ["--caps", args.caps, "--json"]
        stdout, waited = run_limited(cmd, limit)
        name = f"{case_name(pp, vpp, m)} ({args.comm_model}, --solver {args.solver})"
        if stdout is None:
            if args.json:
                print(json.dumps({"case": name, "finished": False, "time_limit": limit}))
            else:
                print(f"{name}: did not finish within {limit:g} s (stopped after {waited:.0f} s)")
            continue
        out = json.loads(stdout)
        if args.json:
            print(json.dumps(out))
            continue
        if args.caps:
            print_caps(out)
            continue
        print(
            f"{out['case']}: {out['dag_nodes']} DAG nodes -> LP {out['lp_variables']} vars, "
            f"{out['lp_rows']} rows; solve {out['solve_wall_seconds']:.2f} s wall, "
            f"{out['solve_cpu_seconds']:.2f} s CPU (passes {out['pass_seconds'][0]:.2f} + "
            f"{out['pass_seconds'][1]:.2f} s, {out['iterations'][0]:.0f} + "
            f"{out['iterations'][1]:.0f} iterations); first-stage zeros pinned "
            f"{out['first_stage_pinned'] or 'none'}; peak RSS {out['peak_rss_mb']:.0f} MB; "
            f"predicted speedup {out['speedup']:.3f}x (makespan {out['makespan']:.6g} s, "
            f"{out['lp_gap']:+.1e} from the LP's T*, at most {out['certified_gap']:.1e} above "
            f"the optimum by the dual bound {out['dual_bound']:.6g} s)"
        )


def _parse_caps(parser: argparse.ArgumentParser, text: str) -> list[float]:
    """`auto` -> the auto budget's caps above 0; else a comma list in (0, 1]."""
    if text == "auto":
        from megatron_tf.solve.budget import DEFAULT_CANDIDATES

        return sorted(c for c in DEFAULT_CANDIDATES if c > 0)
    try:
        caps = sorted({float(x) for x in text.split(",")})
    except ValueError:
        parser.error(f"--caps: expected auto or comma-separated ratios, got {text!r}")
    if not caps or not all(0.0 <= c <= 1.0 for c in caps):
        parser.error(f"--caps: ratios must lie in [0, 1], got {text!r}")
    return caps


if __name__ == "__main__":
    main()
