"""`profile.json` (`timelyfreeze.profile/1`): measured or synthetic stage costs of a schedule.

Units are seconds. The loader reports every problem of a file in one `FormatError` line
(field path and what is wrong), so a user fixes a hand-edited profile in one pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from megatron_tf.errors import ConfigError, FormatError
from megatron_tf.formats.kinds import get_kind
from megatron_tf.formats.schedule import ScheduleRecord, ScheduleSpec

__all__ = [
    "PROFILE_FORMAT",
    "WAIT_PREFIX",
    "UnitCost",
    "StageCost",
    "MicrobatchCost",
    "CommLink",
    "MeasuredAction",
    "Measured",
    "Profile",
    "load_profile",
    "save_profile",
    "parse_profile",
    "profile_sha256",
    "write_json_atomic",
    "default_file_mode",
]

PROFILE_FORMAT = "timelyfreeze.profile/1"

WAIT_PREFIX = "wait:"
"""`MeasuredAction.kind` of a timed wait on a posted transfer (overlap_p2p_comm), followed by
the request's name in Megatron's p2p_communication.py, e.g. "wait:recv_prev"."""

Seconds = float

MAX_SECONDS = 1.0e5
"""Largest duration a profile may hold for one action or message (about 28 hours): beyond it a
value is a typo or garbage (1e308 overflowed the LP), not a measurement."""


class _Strict(BaseModel):
    # strict: "1.0" or true where a number belongs is refused, not coerced.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class UnitCost(_Strict):
    """A freezable tensor of a chunk and its parameter count (what `--weighting params` reads).

    The profiler writes one per freezable weight of each (rank, chunk), on tensor-parallel
    rank 0 (a shard when tp > 1: the same fraction on every stage)."""

    name: str
    params: int | None = Field(default=None, ge=0)
    share: float | None = Field(default=None, ge=0, le=1)
    """Read for files written before it was dropped (hand-edited profiles had it); nothing uses
    it and nothing writes it."""


class StageCost(_Strict):
    """Costs of one (rank, chunk), per microbatch, in seconds."""

    rank: int = Field(ge=0)
    chunk: int = Field(ge=0)
    forward: Seconds = Field(ge=0, le=MAX_SECONDS)
    backward: Seconds = Field(ge=0, le=MAX_SECONDS)
    """Full backward (input and weight gradients), nothing frozen."""
    backward_frozen: Seconds = Field(ge=0, le=MAX_SECONDS)
    """Backward with every freezable tensor of the chunk frozen (0 on the first virtual stage)."""
    weight_grad: Seconds | None = Field(default=None, ge=0, le=MAX_SECONDS)
    """The weight-gradient part of `backward` (a split-backward schedule's W action), timed on
    its own; `backward - weight_grad` is the input gradient (B). None: derived from `backward`
    and `backward_frozen` (`schedule/costs.py`), as for profiles written before the field."""
    units: list[UnitCost] | None = None

    @model_validator(mode="after")
    def _frozen_not_slower(self) -> StageCost:
        if self.backward_frozen > self.backward:
            raise ValueError(
                f"backward_frozen ({self.backward_frozen}) exceeds backward ({self.backward}) "
                f"for rank {self.rank} chunk {self.chunk}"
            )
        if self.weight_grad is not None and self.weight_grad > self.backward:
            raise ValueError(
                f"weight_grad ({self.weight_grad}) exceeds backward ({self.backward}) "
                f"for rank {self.rank} chunk {self.chunk}"
            )
        return self


class MicrobatchCost(_Strict):
    """Override of one (rank, chunk, microbatch); fields left out keep the stage's value."""

    rank: int = Field(ge=0)
    chunk: int = Field(ge=0)
    microbatch: int = Field(ge=0)
    forward: Seconds | None = Field(default=None, ge=0, le=MAX_SECONDS)
    backward: Seconds | None = Field(default=None, ge=0, le=MAX_SECONDS)
    backward_frozen: Seconds | None = Field(default=None, ge=0, le=MAX_SECONDS)
    weight_grad: Seconds | None = Field(default=None, ge=0, le=MAX_SECONDS)


class CommLink(_Strict):
    """Seconds per message sent by `rank`: activations go `forward`, gradients `backward`."""

    rank: int = Field(ge=0)
    direction: Literal["forward", "backward"]
    seconds: Seconds = Field(ge=0, le=MAX_SECONDS)


class MeasuredAction(_Strict):
    """One action as a profiler saw it, times relative to the iteration start."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)
    rank: int = Field(ge=0)
    kind: str
    """"F", "B", "W" (an `ActionKind`), a P2P call name, or WAIT_PREFIX + the request waited
    on."""
    chunk: int = -1
    microbatch: int = -1
    start: Seconds
    end: Seconds | None = None


class Measured(_Strict):
    """What a real run recorded; open for extension by the measuring profiler."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)
    iteration_time: Seconds | None = Field(default=None, ge=0)
    iteration_times: list[Seconds] | None = None
    actions: list[MeasuredAction] | None = None


class Profile(_Strict):
    """A whole `profile.json`."""

    format: Literal["timelyfreeze.profile/1"] = PROFILE_FORMAT
    schedule: ScheduleRecord
    stages: list[StageCost]
    microbatches: list[MicrobatchCost] | None = None
    comm: Annotated[Seconds, Field(ge=0, le=MAX_SECONDS)] | list[CommLink] = 0.0
    iteration_overhead: Annotated[Seconds, Field(ge=0, le=MAX_SECONDS)] | None = None
    """Seconds of each iteration outside the schedule's forward, backward and P2P calls, which
    no plan changes: the schedule's set-up and Megatron's gradient finalization (the
    data-parallel and tied-embedding all-reduces). Measured by the profiler; None counts as 0
    (and keeps the fingerprint of profiles written before the field existed)."""
    measured: Measured | None = None
    linearity: dict[str, Any] | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        problems: list[str] = []
        sched = self.schedule
        want = {(r, c) for r in range(sched.pp) for c in range(sched.vpp)}
        seen: dict[tuple[int, int], int] = {}
        for i, st in enumerate(self.stages):
            key = (st.rank, st.chunk)
            if key not in want:
                problems.append(
                    f"stages[{i}]: (rank {st.rank}, chunk {st.chunk}) outside pp={sched.pp}, "
                    f"vpp={sched.vpp}"
                )
            elif key in seen:
                problems.append(f"stages[{i}]: duplicate (rank {st.rank}, chunk {st.chunk})")
            seen[key] = i
        missing = sorted(want - set(seen))
        if missing:
            shown = ", ".join(f"(rank {r}, chunk {c})" for r, c in missing[:6])
            more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
            problems.append(f"stages: missing {shown}{more}")
        for i, mb in enumerate(self.microbatches or []):
            if (mb.rank, mb.chunk) not in want or mb.microbatch >= sched.microbatches:
                problems.append(
                    f"microbatches[{i}]: (rank {mb.rank}, chunk {mb.chunk}, microbatch "
                    f"{mb.microbatch}) outside the schedule"
                )
        work = [x for st in self.stages for x in (st.forward, st.backward)]
        work += [
            x for mb in self.microbatches or [] for x in (mb.forward, mb.backward) if x is not None
        ]
        if not any(work):
            problems.append("every forward and backward cost is 0: nothing to schedule")
        if isinstance(self.comm, list):
            links = {(link.rank, link.direction) for link in self.comm}
            gaps = [
                f"(rank {r}, {d})"
                for r in range(sched.pp)
                for d in ("forward", "backward")
                if (r, d) not in links
            ]
            if gaps:
                problems.append(f"comm: missing {', '.join(gaps[:6])}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def spec(self) -> ScheduleSpec:
        return self.schedule.to_spec()

    def with_schedule_kind(self, kind: str) -> Profile:
        """The same costs planned for another schedule kind of the same pp, vpp and M.

        What a profile measured under 1F1B predicts for the zero-bubble `zb-h1` (whose W comes
        from `weight_grad` or is derived, `schedule/costs.py`). Settings the new kind does not
        take (the interleaved group size and overlap) are dropped, and so are the measured
        iteration's actions and times, which belong to the schedule that ran. ConfigError if
        the kind rejects the layout (e.g. vpp 2 for a one-chunk kind).
        """
        sched = self.schedule
        if kind == sched.kind:
            return self
        if not get_kind(kind).chunked and sched.vpp != 1:
            raise ConfigError(
                f"--schedule {kind} runs one model chunk per rank, but the profile has "
                f"vpp {sched.vpp}"
            )
        spec = ScheduleSpec(kind=kind, pp=sched.pp, vpp=sched.vpp, microbatches=sched.microbatches)
        return self.model_copy(
            update={
                "schedule": ScheduleRecord.from_spec(spec),
                "measured": None,
                "provenance": {**self.provenance, "planned_as": kind, "measured_as": sched.kind},
            }
        )

    def stage(self, rank: int, chunk: int) -> StageCost:
        for st in self.stages:
            if st.rank == rank and st.chunk == chunk:
                return st
        raise KeyError((rank, chunk))


def _describe(exc: ValidationError) -> str:
    """All pydantic errors in one line: `field.path: message; ...`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "finite_number":
            msg = "must be a finite number (NaN or infinity found)"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_profile(data: object, source: str = "profile") -> Profile:
    """Validate already-decoded JSON; FormatError lists every problem found."""
    if not isinstance(data, dict):
        raise FormatError(f"{source}: expected a JSON object, found {type(data).__name__}")
    fmt = data.get("format")
    if fmt != PROFILE_FORMAT:
        raise FormatError(f"{source}: field 'format' must be {PROFILE_FORMAT!r}, found {fmt!r}")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise FormatError(f"{source}: invalid profile: {_describe(exc)}") from None
    return profile


def _read_json(path: Path, what: str) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(f"{what} file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise FormatError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise FormatError(f"cannot read {what} file {path}: {exc.strerror}") from None
    try:
        # NaN and Infinity decode to floats here so that validation can name the field
        # holding them (the models only accept finite numbers).
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read and validate a profile file."""
    p = Path(path)
    return parse_profile(_read_json(p, "profile"), source=str(p))


def write_json_atomic(data: object, path: str | os.PathLike[str]) -> None:
    """Write JSON to a temp file in the same folder, then rename: no half-written outputs."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_file_mode() -> int:
    """What `open(path, "w")` would give (0o666 minus the umask); mkstemp's 0o600 is private."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _canonical(profile: Profile) -> dict[str, Any]:
    return profile.model_dump(mode="json", exclude_none=True)


def save_profile(profile: Profile, path: str | os.PathLike[str]) -> None:
    """Write a profile atomically."""
    write_json_atomic(_canonical(profile), path)


def profile_sha256(profile_or_path: Profile | str | os.PathLike[str]) -> str:
    """Fingerprint of a profile's content (canonical JSON), the same for a file and its model.

    Formatting of the file does not matter; any change of a value does.
    """
    profile = (
        profile_or_path if isinstance(profile_or_path, Profile) else load_profile(profile_or_path)
    )
    text = json.dumps(_canonical(profile), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
