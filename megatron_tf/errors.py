"""The project's exceptions.

Every error a user can fix (bad flags, a malformed or mismatched file, an infeasible budget)
is a `TimelyFreezeError`; the CLI prints its message as one line and exits with code 2.
Messages say what was expected, what was found, and which flag or field to change.
"""


class TimelyFreezeError(Exception):
    """A problem the user can fix; the CLI turns it into one line and exit code 2."""


class ConfigError(TimelyFreezeError, ValueError):
    """A flag or setting is invalid, or a combination Megatron-Core rejects."""


class FormatError(TimelyFreezeError, ValueError):
    """A profile or plan file is malformed, of another format version, or inconsistent."""


class ScheduleMismatchError(TimelyFreezeError):
    """A plan or profile was made for another schedule than the one it is used with."""


class SolverError(TimelyFreezeError):
    """The LP has no optimal solution (infeasible budget, numerical trouble)."""


class UnsupportedMegatronError(TimelyFreezeError):
    """The installed megatron-core, or a feature turned on in it, cannot carry the hooks."""


class LaunchError(TimelyFreezeError):
    """A launcher setting is wrong: a missing script, an incomplete Slurm environment, ..."""


class CheckpointWriteError(TimelyFreezeError):
    """A checkpoint could not be written (a full disk, a file-size limit): the run stops, and
    `latest` still names the previous complete checkpoint."""
