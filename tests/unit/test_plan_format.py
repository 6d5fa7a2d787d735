"""`plan.json` (timelyfreeze.plan/1): round trip, validation messages, schedule matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_tf.errors import FormatError, ScheduleMismatchError
from megatron_tf.formats.plan import (
    PLAN_FORMAT,
    Plan,
    Predicted,
    SolverInfo,
    check_plan_matches,
    load_plan,
    parse_plan,
    save_plan,
)
from megatron_tf.formats.schedule import ScheduleRecord, ScheduleSpec

SPEC = ScheduleSpec(kind="interleaved", pp=2, vpp=2, microbatches=4)


def make_plan(spec: ScheduleSpec = SPEC) -> Plan:
    ratios = [
        [[0.25 * ((r + c + m) % 4) for m in range(spec.microbatches)] for c in range(spec.vpp)]
        for r in range(spec.pp)
    ]
    return Plan(
        schedule=ScheduleRecord.from_spec(spec),
        profile_sha256="ab" * 32,
        max_freeze_ratio=0.5,
        tolerance=1e-6,
        min_trained_microbatches=1,
        comm_model="megatron",
        ratios=ratios,
        predicted=Predicted(baseline_makespan=10.0, makespan=8.0, speedup=1.25),
        solver=SolverInfo(name="GLOP", status="OPTIMAL", seconds=0.01),
    )


def plan_dict() -> dict:
    return make_plan().model_dump(mode="json")


def test_round_trip(tmp_path: Path) -> None:
    plan = make_plan()
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    assert load_plan(path) == plan
    data = json.loads(path.read_text())
    assert data["format"] == PLAN_FORMAT
    assert data["ratios"][1][0][2] == plan.ratio(1, 0, 2) == 0.75
    assert plan.schedule_spec() == SPEC
    assert plan.mean_freeze_ratio() == pytest.approx(0.375)
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temp file left behind


def test_save_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half-way leaves the previous plan intact."""
    path = tmp_path / "plan.json"
    save_plan(make_plan(), path)
    before = path.read_bytes()

    def broken_dump(obj: object, fh, **kwargs: object) -> None:
        fh.write('{"format": "timelyfreeze.plan/1", "ratios": [[')
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        save_plan(make_plan(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("format"), "has no 'format' field; expected 'timelyfreeze.plan/1'"),
        (lambda d: d.update(format="timelyfreeze.plan/2"), "has format 'timelyfreeze.plan/2'"),
        (lambda d: d.pop("ratios"), "ratios: Field required"),
        (lambda d: d["ratios"][0][1].__setitem__(2, 1.5), r"ratios.0.1.2: .*less than or equal"),
        (lambda d: d["ratios"][0][1].__setitem__(2, -0.1), r"ratios.0.1.2: .*greater than"),
        (lambda d: d["ratios"][1][1].__setitem__(0, float("nan")), "ratios.1.1.0: .*finite"),
        (lambda d: d["ratios"].pop(), "ratios has 1 ranks, schedule.pp is 2"),
        (lambda d: d["ratios"][1].pop(), r"ratios\[1\] has 1 chunks, schedule.vpp is 2"),
        (lambda d: d["ratios"][0][0].pop(), r"ratios\[0\]\[0\] has 3 microbatches"),
        (lambda d: d.update(max_freeze_ratio=2), "max_freeze_ratio: .*less than or equal to 1"),
        (lambda d: d.update(profile_sha256="xyz"), "profile_sha256: String should match"),
        (lambda d: d["schedule"].update(group_size=3), "schedule: .*group size"),
        (lambda d: d["predicted"].pop("speedup"), "predicted.speedup: Field required"),
        (lambda d: d.update(extra=1), "extra: Extra inputs are not permitted"),
    ],
)
def test_validation_names_the_field(mutate, match: str) -> None:
    data = plan_dict()
    mutate(data)
    with pytest.raises(FormatError, match=match) as info:
        parse_plan(data)
    assert "\n" not in str(info.value)


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(FormatError, match="cannot read plan"):
        load_plan(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FormatError, match="is not valid JSON"):
        load_plan(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(FormatError, match="expected a JSON object"):
        load_plan(bad)


def test_check_plan_matches() -> None:
    plan = make_plan()
    check_plan_matches(plan, SPEC)
    # overlap_p2p_comm changes P2P calls, not the compute order: the plan still applies
    check_plan_matches(
        plan, ScheduleSpec(kind="interleaved", pp=2, vpp=2, microbatches=4, overlap_p2p_comm=True)
    )
    other = ScheduleSpec(kind="interleaved", pp=2, vpp=2, microbatches=6)
    with pytest.raises(ScheduleMismatchError) as info:
        check_plan_matches(plan, other)
    message = str(info.value)
    assert "interleaved pp=2 vpp=2 group=2 M=4" in message
    assert "interleaved pp=2 vpp=2 group=2 M=6" in message
    with pytest.raises(ScheduleMismatchError, match="1f1b pp=2 M=4"):
        check_plan_matches(plan, ScheduleSpec(kind="1f1b", pp=2, microbatches=4))
