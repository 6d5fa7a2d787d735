"""One schedule record: the formats, the layout and the Megatron-LM route share ScheduleSpec."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from megatron_tf.errors import ConfigError
from megatron_tf.formats.layout import ParallelConfig
from megatron_tf.formats.plan import Plan
from megatron_tf.formats.profile import Profile
from megatron_tf.formats.schedule import ScheduleRecord, ScheduleSpec, megatron_schedule


def test_profile_and_plan_hold_the_same_record() -> None:
    assert Profile.model_fields["schedule"].annotation is ScheduleRecord
    assert Plan.model_fields["schedule"].annotation is ScheduleRecord


def test_record_keeps_fields_as_written_and_spec_fills_defaults() -> None:
    # A hand-written group_size 0 stays 0 in the record (the file's fingerprint must not move)
    # while the spec gets Megatron's default, pp.
    record = ScheduleRecord(kind="interleaved", pp=4, vpp=2, microbatches=8)
    assert record.group_size == 0
    assert record.to_spec().group_size == 4
    spec = ScheduleSpec(kind="interleaved", pp=4, vpp=2, microbatches=8, group_size=4)
    assert ScheduleRecord.from_spec(spec).to_spec() == spec


def test_record_applies_megatrons_rules_through_the_spec() -> None:
    with pytest.raises(ValidationError, match="M mod group size"):
        ScheduleRecord(kind="interleaved", pp=4, vpp=2, microbatches=6, group_size=4)
    with pytest.raises(ValidationError, match="--vpp must be 1"):
        ScheduleRecord(kind="1f1b", pp=4, vpp=2, microbatches=8)


def test_megatron_schedule_picks_the_kind_from_vpp() -> None:
    assert megatron_schedule(pp=4, vpp=1, microbatches=8).kind == "1f1b"
    spec = megatron_schedule(pp=4, vpp=2, microbatches=8, group_size=None)
    assert (spec.kind, spec.group_size) == ("interleaved", 4)


def test_megatron_schedule_drops_what_megatron_ignores_only_when_asked() -> None:
    # Megatron's own settings: group size and overlap mean nothing under 1F1B.
    read = megatron_schedule(
        pp=4, vpp=1, microbatches=8, group_size=6, overlap_p2p_comm=True, drop_interleaved_only=True
    )
    assert read == ScheduleSpec(kind="1f1b", pp=4, microbatches=8)
    # A user's flags: the same values are a mistake, named by ScheduleSpec's one rule.
    with pytest.raises(ConfigError, match="--group-size applies to the interleaved"):
        megatron_schedule(pp=4, vpp=1, microbatches=8, group_size=6)
    with pytest.raises(ConfigError, match="--overlap-p2p-comm applies to the interleaved"):
        ParallelConfig(pp=4, microbatches=8, overlap_p2p_comm=True)


def test_the_record_layer_imports_nothing_of_megatron_tf_but_errors() -> None:
    """formats/ holds what crosses a file or process boundary; every package may read it."""
    import ast
    from pathlib import Path

    import megatron_tf.formats

    allowed = ("megatron_tf.errors", "megatron_tf.formats")
    for path in Path(megatron_tf.formats.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        found += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        bad = [m for m in found if m.startswith("megatron_tf") and not m.startswith(allowed)]
        assert not bad, (path.name, bad)
