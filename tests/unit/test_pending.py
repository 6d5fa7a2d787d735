"""train/pending.py: a solve on a thread, and the in-job plan whose result is due at a fixed
iteration, stored whole in a checkpoint."""

from __future__ import annotations

import threading

import pytest

from megatron_tf.train.pending import PendingPlan, PendingSolve
from megatron_tf.train.plan_source import PlanSource

PLAN = PlanSource(ratios=[[[0.0, 0.5]]], baseline_makespan=2.0, makespan=1.5, source="auto:0")


def _broadcast(value: tuple[dict, str] | None) -> tuple[PlanSource, str]:
    """Stands in for rank 0's broadcast: what rank 0 holds, every rank gets."""
    assert value is not None
    return PlanSource.from_dict(value[0]), value[1]


def test_work_runs_beside_the_caller_and_the_plan_is_due_lag_iterations_later() -> None:
    """Starting does not wait for the work (it blocks until the caller lets it finish), and
    the plan is due exactly `lag` iterations after the start, whatever the work's speed."""
    release = threading.Event()
    started = threading.Event()

    def work() -> tuple[dict, str]:
        started.set()
        assert release.wait(10)
        return PLAN.to_dict(), "cap 0.3"

    pending = PendingPlan.start(
        work, iteration=7, lag=3, what="re-plan auto:0", then=("replan", "out/replan_0")
    )
    assert started.wait(10)
    assert pending.solve is not None and not pending.solve.done()  # start() did not wait
    assert (pending.started, pending.due) == (7, 10)
    assert [pending.is_due(i) for i in (7, 9, 10, 11)] == [False, False, True, True]
    release.set()
    assert pending.collect(_broadcast) == (PLAN, "cap 0.3")
    assert pending.waited >= 0.0 and pending.solve.seconds > 0.0
    # a second collect is the same plan and calls no collective
    assert pending.collect(lambda _: pytest.fail("broadcast twice")) == (PLAN, "cap 0.3")


def test_result_waits_for_slow_work_and_reports_the_wait() -> None:
    release = threading.Event()
    solve = PendingSolve(lambda: release.wait(10))
    threading.Timer(0.2, release.set).start()
    value, waited = solve.result()
    assert value is True and waited >= 0.15


def test_an_error_in_the_work_is_raised_by_result() -> None:
    def work() -> None:
        raise RuntimeError("infeasible budget")

    with pytest.raises(RuntimeError, match="infeasible budget"):
        PendingSolve(work).result()


def test_ranks_without_work_take_rank_0s_plan() -> None:
    pending = PendingPlan.start(None, iteration=4, lag=2, what="x", then=("reprice", "4"))
    got = pending.collect(lambda value: (PLAN, "from rank 0") if value is None else None)
    assert got == (PLAN, "from rank 0") and pending.due == 6
    with pytest.raises(ValueError, match="lag"):
        PendingPlan.start(None, iteration=0, lag=-1, what="x", then=("reprice", "0"))


def test_a_collected_plan_round_trips_through_a_checkpoint() -> None:
    pending = PendingPlan.start(
        lambda: (PLAN.to_dict(), ""),
        iteration=2,
        lag=3,
        what="re-plan auto:0",
        then=("replan", "run/replan_0"),
    )
    pending.collect(_broadcast)
    back = PendingPlan.from_dict(pending.to_dict())
    assert (back.started, back.due, back.what, back.then) == (2, 5, "re-plan auto:0", pending.then)
    assert back.solved == (PLAN, "") and back.solve is None
