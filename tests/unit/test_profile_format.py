"""timelyfreeze.profile/1: round trip, fingerprint, every problem reported at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_tf.errors import ConfigError, FormatError
from megatron_tf.formats.profile import (
    Measured,
    MeasuredAction,
    MicrobatchCost,
    load_profile,
    parse_profile,
    profile_sha256,
    save_profile,
)
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.schedule.costs import CostModel, parse_costs, synthetic_profile

SPEC = ScheduleSpec(kind="interleaved", pp=2, vpp=2, microbatches=4)


def _data() -> dict:
    return synthetic_profile(SPEC, parse_costs("1,2,3;2,2,2", 2), 0.1).model_dump(mode="json")


def test_round_trip_and_fingerprint(tmp_path: Path) -> None:
    profile = synthetic_profile(SPEC, parse_costs("1,2,3;2,2,2", 2), 0.1)
    profile.measured = Measured(
        iteration_time=1.5,
        actions=[MeasuredAction(rank=0, kind="F", chunk=0, microbatch=0, start=0.0, end=0.1)],
        gpu="H100",  # open for extension by the measuring profiler
    )
    path = tmp_path / "p.json"
    save_profile(profile, path)
    again = load_profile(path)
    assert again == profile
    assert profile_sha256(path) == profile_sha256(profile)
    # Whitespace of the file does not matter, values do.
    path.write_text(json.dumps(json.loads(path.read_text())))
    assert profile_sha256(path) == profile_sha256(profile)
    again.stages[0].forward += 1e-6
    assert profile_sha256(again) != profile_sha256(profile)


def test_synthetic_rule() -> None:
    profile = synthetic_profile(SPEC, parse_costs("1,2,3;2,2,2", 2))
    st = {(s.rank, s.chunk): s for s in profile.stages}
    # rank 0: F=1, B=2, W=3, split over 2 chunks; the first virtual stage has backward_frozen 0
    assert (st[0, 0].forward, st[0, 0].backward, st[0, 0].backward_frozen) == (0.5, 2.5, 0.0)
    assert (st[0, 1].forward, st[0, 1].backward, st[0, 1].backward_frozen) == (0.5, 2.5, 1.0)
    assert (st[1, 0].forward, st[1, 0].backward, st[1, 0].backward_frozen) == (1.0, 2.0, 1.0)


def test_microbatch_overrides_and_comm_links() -> None:
    data = _data()
    data["microbatches"] = [{"rank": 1, "chunk": 1, "microbatch": 3, "forward": 9.0}]
    data["comm"] = [
        {"rank": r, "direction": d, "seconds": 0.1 * (r + 1) + (d == "backward")}
        for r in range(2)
        for d in ("forward", "backward")
    ]
    cm = CostModel.from_profile(parse_profile(data))
    assert cm.forward[1][1][3] == 9.0
    assert cm.forward[1][1][2] == 1.0
    assert cm.message_time("act", 1) == pytest.approx(0.2)
    assert cm.message_time("grad", 0) == pytest.approx(1.1)
    assert isinstance(parse_profile(data).microbatches[0], MicrobatchCost)  # type: ignore[index]


def test_all_field_problems_in_one_line() -> None:
    data = _data()
    data["stages"][1]["backward_frozen"] = 99.0
    data["stages"][2]["forward"] = -1.0
    data["stages"][3]["backward"] = float("nan")
    with pytest.raises(FormatError) as err:
        parse_profile(data)
    text = str(err.value)
    assert "\n" not in text
    assert "stages.1: backward_frozen (99.0) exceeds backward" in text
    assert "stages.2.forward: Input should be greater than or equal to 0" in text
    assert "stages.3.backward: must be a finite number" in text


def test_missing_stage_and_comm_link() -> None:
    data = _data()
    data["stages"].pop(2)
    data["comm"] = [{"rank": 0, "direction": "forward", "seconds": 0.1}]
    with pytest.raises(FormatError, match=r"stages: missing \(rank 1, chunk 0\).*comm: missing"):
        parse_profile(data)


def test_wrong_version_and_bad_schedule() -> None:
    data = _data()
    data["format"] = "timelyfreeze.profile/0"
    with pytest.raises(FormatError, match="must be 'timelyfreeze.profile/1', found"):
        parse_profile(data)
    data = _data()
    data["schedule"]["microbatches"] = 3  # 3 < group size 2? no: 3 mod 2 = 1 < pp=2
    with pytest.raises(FormatError, match="schedule: Megatron requires M mod group size"):
        parse_profile(data)


def test_files(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="cannot read profile"):
        load_profile(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        load_profile(bad)
    nan = tmp_path / "nan.json"
    nan.write_text(json.dumps(_data()).replace('"comm": 0.1', '"comm": NaN'))
    with pytest.raises(FormatError, match=r"comm\.\S*: must be a finite number"):
        load_profile(nan)


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.json"
    save_profile(synthetic_profile(SPEC, [(1, 1, 1)]), path)
    before = path.read_text()

    def half_written(data: object, fh: object, **kwargs: object) -> None:
        fh.write('{"format": ')  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr("megatron_tf.formats.profile.json.dump", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_profile(synthetic_profile(SPEC, [(2, 2, 2)]), path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_parse_costs_errors() -> None:
    with pytest.raises(ConfigError, match="expected one F,B,W triple or 4 triples"):
        parse_costs("1,1,1;2,2,2", 4)
    with pytest.raises(ConfigError, match="must be three numbers"):
        parse_costs("1,1", 2)
    with pytest.raises(ConfigError, match=r"W in triple 1 must be a finite number >= 0, found -1"):
        parse_costs("1,1,-1", 2)
    assert parse_costs("1,2,3", 2) == [(1.0, 2.0, 3.0)] * 2


def test_iteration_overhead_is_optional_checked_and_keeps_old_fingerprints() -> None:
    data = _data()
    old = profile_sha256(parse_profile(data))  # written before the field existed
    assert parse_profile(data).iteration_overhead is None
    assert CostModel.from_profile(parse_profile(data)).iteration_overhead == 0.0
    data["iteration_overhead"] = 0.002
    assert CostModel.from_profile(parse_profile(data)).iteration_overhead == 0.002
    assert profile_sha256(parse_profile(data)) != old
    data["iteration_overhead"] = -1.0
    with pytest.raises(FormatError, match="iteration_overhead"):
        parse_profile(data)
