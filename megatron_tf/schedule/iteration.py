"""One iteration of a profile, with or without a plan: the library function behind `simulate`.

`simulate_iteration` loads and checks the plan against the profile's schedule, notices a plan
solved on another profile (by fingerprint), takes the comm model the plan was solved with unless
one is given, and simulates the planned iteration next to the unfrozen baseline. The result
draws its timelines and writes its JSON, so the command only parses and renders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from megatron_tf.schedule.simulate import SimResult, simulate_profile

if TYPE_CHECKING:
    from megatron_tf.formats.profile import Profile
    from megatron_tf.schedule.timeline import Timeline

__all__ = ["IterationSim", "simulate_iteration"]

DEFAULT_COMM_MODEL = "megatron"
"""Without a plan or an explicit choice, blocking P2P calls meet their peers."""


@dataclass(frozen=True, slots=True)
class IterationSim:
    """A simulated iteration: with the plan's ratios (`result`) and, given a plan, without."""

    profile: Profile
    result: SimResult
    baseline: SimResult | None
    """The same iteration with nothing frozen; None without a plan."""
    comm_model: str
    plan_label: str | None = None
    """How the timelines name the plan (its file name)."""
    other_profile: bool = False
    """The plan was solved on another profile than this one (fingerprints differ)."""

    @property
    def unfrozen(self) -> SimResult:
        return self.baseline or self.result

    @property
    def speedup(self) -> float | None:
        if self.baseline is None:
            return None
        return self.baseline.makespan / self.result.makespan if self.result.makespan else 1.0

    def prediction_check(self) -> dict[str, float]:
        """A measured profile: the real median iteration time and the model's relative error.

        The measured iterations ran with nothing frozen, so the check uses the simulation
        without the plan's ratios.
        """
        measured = self.profile.measured.iteration_time if self.profile.measured else None
        if not measured:
            return {}
        return {
            "measured_iteration_time": measured,
            "prediction_error": (self.unfrozen.makespan - measured) / measured,
        }

    def to_dict(self) -> dict[str, Any]:
        """What `simulate --json` prints."""
        out = self.result.to_dict()
        if self.baseline is not None:
            out["baseline_makespan"] = self.baseline.makespan
            out["speedup"] = self.speedup
        out.update(self.prediction_check())
        return out

    def timelines(self) -> list[Timeline]:
        """Baseline and planned (or the one) simulated timeline, and the measured one if known."""
        from megatron_tf.schedule.timeline import timeline_from_measured, timeline_from_sim

        panels = []
        if self.baseline is not None:
            panels.append(
                timeline_from_sim(self.baseline, _title("baseline (nothing frozen)", self.baseline))
            )
            panels.append(
                timeline_from_sim(self.result, _title(f"with plan {self.plan_label}", self.result))
            )
        else:
            panels.append(timeline_from_sim(self.result))
        measured = self.profile.measured
        if measured is not None and measured.actions:
            # A measured profile: draw what the real run did under what the model predicts.
            spec = self.profile.spec
            panels.append(timeline_from_measured(measured, spec.pp, spec.vpp))
        return panels

    def write_timelines(
        self,
        timeline: str | os.PathLike[str] | None = None,
        trace: str | os.PathLike[str] | None = None,
    ) -> None:
        """A Gantt chart (.png/.svg) and/or a Chrome trace (.json) of `timelines()`."""
        if timeline is None and trace is None:
            return
        from megatron_tf.schedule.timeline import draw_timelines, write_chrome_trace

        panels = self.timelines()
        if timeline is not None:
            draw_timelines(panels, timeline)
        if trace is not None:
            write_chrome_trace(panels, trace)


def simulate_iteration(
    profile: Profile,
    plan: str | os.PathLike[str] | None = None,
    comm_model: str | None = None,
    *,
    compare_fingerprint: bool = True,
) -> IterationSim:
    """Simulate `profile`'s iteration, with the plan file's ratios if one is given.

    Raises FormatError for a file that is no plan and ConfigError for a plan whose compute order
    differs from the profile's schedule. `comm_model` None: the plan's own (its prediction was
    made on that DAG), else megatron. `compare_fingerprint`: whether the profile came from a
    file the plan may name (a what-if profile built from flags has no such link).
    """
    ratios = None
    other = False
    label = None
    if plan is not None:
        from megatron_tf.formats.plan import check_plan_matches, load_plan
        from megatron_tf.formats.profile import profile_sha256

        loaded = load_plan(plan, flag="--plan")
        check_plan_matches(loaded, profile.spec)
        ratios = loaded.ratios
        label = os.path.basename(plan)
        other = compare_fingerprint and loaded.profile_sha256 != profile_sha256(profile)
        if comm_model is None:
            comm_model = loaded.comm_model
    if comm_model is None:
        comm_model = DEFAULT_COMM_MODEL
    result = simulate_profile(profile, comm_model, ratios)
    baseline = simulate_profile(profile, comm_model) if ratios is not None else None
    return IterationSim(
        profile=profile,
        result=result,
        baseline=baseline,
        comm_model=comm_model,
        plan_label=label,
        other_profile=other,
    )


def _title(what: str, res: SimResult) -> str:
    return (
        f"{what}: {res.dag.spec.describe()}, comm model {res.dag.comm_model}, "
        f"makespan {res.makespan:.4g} s, bubble {res.bubble_fraction:.1%}"
    )
