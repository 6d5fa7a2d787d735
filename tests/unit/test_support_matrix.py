"""docs/support.md's refused rows are the guard's refusal table, no more and no fewer."""

from __future__ import annotations

import re
from pathlib import Path

from megatron_tf.megatron.guard import REFUSALS

PAGE = Path(__file__).resolve().parents[2] / "docs" / "support.md"


def refused_rows() -> set[tuple[str, str]]:
    """(flag, message) of each row whose status is "refused"."""
    rows = set()
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1] == "refused":
            (flag,) = re.findall(r"`(--[^`]+)`", cells[0])
            rows.add((flag, cells[2]))
    return rows


def test_refused_rows_equal_the_table() -> None:
    rows = refused_rows()
    assert len(rows) == len(REFUSALS)
    assert rows == {(r.flag, r.reason) for r in REFUSALS}
