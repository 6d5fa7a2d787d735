"""A worker's user error reaches the CLI as one line (megatron_tf.process.worker_errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_tf.errors import ScheduleMismatchError
from megatron_tf.process.worker_errors import ERROR_DIR_ENV, first_worker_error, report_user_errors


def test_user_error_becomes_one_line_a_note_and_exit_2(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv(ERROR_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(SystemExit) as exit_info, report_user_errors():
        raise ScheduleMismatchError("the plan was solved\n   for pp=4")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "timelyfreeze[rank 5] error: the plan was solved for pp=4\n"
    assert (tmp_path / "rank5.txt").read_text() == "the plan was solved for pp=4\n"


def test_other_errors_pass_through(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ERROR_DIR_ENV, str(tmp_path))
    with pytest.raises(RuntimeError), report_user_errors():
        raise RuntimeError("a crash is not a user error")
    assert list(tmp_path.iterdir()) == []


def test_lowest_rank_wins(tmp_path: Path) -> None:
    assert first_worker_error(tmp_path) is None
    (tmp_path / "rank10.txt").write_text("ten\n")
    (tmp_path / "rank9.txt").write_text("nine\n")
    (tmp_path / "rank2.txt").write_text("\n")  # empty notes are ignored
    (tmp_path / "rankx.txt").write_text("not a rank\n")
    assert first_worker_error(tmp_path) == "nine"
