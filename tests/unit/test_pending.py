"""`PendingSolve` (train/pending.py): a solve on a thread, its result due at a fixed iteration."""

from __future__ import annotations

import threading

import pytest

from megatron_tf.train.pending import PendingSolve


def test_work_runs_beside_the_caller_and_is_due_lag_iterations_later() -> None:
    """Starting does not wait for the work (it blocks until the caller lets it finish), and the
    result is due exactly `lag` iterations after the start, whatever the work's speed."""
    release = threading.Event()
    started = threading.Event()

    def work() -> str:
        started.set()
        assert release.wait(10)
        return "plan"

    pending = PendingSolve(work, started=7, lag=3, what="re-plan auto:0")
    assert started.wait(10)
    assert not pending.done()  # construction returned while the work still runs
    assert (pending.started, pending.due) == (7, 10)
    assert [pending.is_due(i) for i in (7, 9, 10, 11)] == [False, False, True, True]
    release.set()
    value, waited = pending.result()
    assert value == "plan" and waited >= 0.0 and pending.done()
    assert pending.solve_seconds > 0.0


def test_result_waits_for_slow_work_and_reports_the_wait() -> None:
    release = threading.Event()
    pending = PendingSolve(lambda: release.wait(10), started=0, lag=0, what="x")
    threading.Timer(0.2, release.set).start()
    value, waited = pending.result()
    assert value is True and waited >= 0.15


def test_an_error_in_the_work_is_raised_by_result() -> None:
    def work() -> None:
        raise RuntimeError("infeasible budget")

    pending = PendingSolve(work, started=0, lag=2, what="x")
    with pytest.raises(RuntimeError, match="infeasible budget"):
        pending.result()


def test_ranks_without_work_know_only_when() -> None:
    pending = PendingSolve(None, started=4, lag=2, what="x")
    assert pending.done() and pending.due == 6
    assert pending.result()[0] is None
    with pytest.raises(ValueError, match="lag"):
        PendingSolve(None, started=0, lag=-1, what="x")
