"""Parent-side checks of `timelyfreeze profile`: everything that can fail before torchrun starts."""

from __future__ import annotations

from pathlib import Path

from megatron_tf.errors import ConfigError
from megatron_tf.formats.layout import ModelConfig, ParallelConfig
from megatron_tf.profile.config import ProfileConfig, ProfileJob

__all__ = ["prepare_profile_job", "summary_line"]


def prepare_profile_job(
    model: ModelConfig, parallel: ParallelConfig, config: ProfileConfig, output: Path
) -> ProfileJob:
    """Check the flags together (layers vs stages, Megatron's microbatch rules, the output path).

    Raises ConfigError naming the flag; nothing is launched yet.
    """
    if parallel.pp < 2:
        raise ConfigError(
            f"profiling measures a pipeline: --pp must be at least 2, got {parallel.pp}"
        )
    parallel.schedule_spec()
    parallel.check_model(model)
    if output.suffix.lower() != ".json":
        raise ConfigError(f"-o/--output must end in .json, got {str(output)!r}")
    if output.exists() and output.is_dir():
        raise ConfigError(f"-o/--output {str(output)!r} is a folder")
    return ProfileJob(model=model, parallel=parallel, profile=config, output=str(output.resolve()))


def summary_line(path: Path) -> str:
    """One line: stages with F/B/W, bubble fraction, predicted vs measured iteration time."""
    from megatron_tf.formats.profile import load_profile
    from megatron_tf.profile.replay import frozen_prediction_check
    from megatron_tf.schedule.simulate import simulate_profile

    profile = load_profile(path)
    sim = simulate_profile(profile, "megatron")
    stages = " ".join(
        f"(r{s.rank}c{s.chunk} F={s.forward * 1e3:.2f} B={s.backward_frozen * 1e3:.2f} "
        f"W={(s.backward - s.backward_frozen) * 1e3:.2f})"
        for s in profile.stages
    )
    text = f"{profile.spec.describe()}: {stages} ms; bubble {sim.bubble_fraction:.3f}; "
    text += f"predicted {sim.makespan * 1e3:.2f} ms"
    if profile.iteration_overhead:
        text += f" (finalization {profile.iteration_overhead * 1e3:.2f} ms)"
    measured = profile.measured.iteration_time if profile.measured else None
    if measured:
        error = (sim.makespan - measured) / measured
        text += f" vs measured {measured * 1e3:.2f} ms ({error:+.1%})"
    frozen = frozen_prediction_check(profile, "megatron")
    if frozen:
        text += (
            f"; all frozen: predicted {frozen['frozen_predicted'] * 1e3:.2f} ms vs measured "
            f"{frozen['frozen_measured'] * 1e3:.2f} ms ({frozen['frozen_prediction_error']:+.1%})"
        )
    return text
