"""Pre-flight checks of output paths, run before any work or launch (torch-free).

A read-only `--save` used to be found at the first checkpoint, after all the training before it,
and a missing `-o` folder after the LP had run. Every command checks each of its output paths
first and refuses with one line naming the flag and the path (exit 2).

Writability is *probed* (a temporary file is created and removed in the folder), because
permission bits do not tell the whole story: read-only mounts, ACLs, quotas, root.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from megatron_tf.errors import ConfigError

__all__ = ["check_output_dir", "check_output_file"]


def check_output_file(
    path: str | os.PathLike[str], flag: str, *, suffixes: Sequence[str] = ()
) -> None:
    """`path` can be written as a file: its folder exists and is writable, it is no folder.

    `suffixes` (lower case, with the dot) restricts the file type, e.g. (".png", ".svg").
    """
    target = Path(path)
    if suffixes and target.suffix.lower() not in suffixes:
        raise ConfigError(f"{flag} must end in {' or '.join(suffixes)}, got {str(target)!r}")
    if target.is_dir():
        raise ConfigError(f"{flag}: {str(target)!r} is a folder, expected a file path")
    parent = target.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise ConfigError(f"{flag}: folder {str(parent)!r} {what}")
    _probe(parent, flag, target)
    if target.exists() and not os.access(target, os.W_OK):
        raise ConfigError(f"{flag}: {str(target)!r} exists and is read-only")


def check_output_dir(path: str | os.PathLike[str], flag: str) -> None:
    """`path` is, or can be created as, a writable folder (missing parents are fine)."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{flag}: {str(target)!r} exists and is not a folder")
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"{flag}: cannot create {str(target)!r}: {str(existing)!r} is not a folder"
        )
    _probe(existing, flag, target)


def _probe(folder: Path, flag: str, target: Path) -> None:
    """Create and remove a temporary file in `folder`; refuse with the OS's reason if it fails."""
    try:
        fd, name = tempfile.mkstemp(prefix=".timelyfreeze-probe-", dir=folder)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = "" if folder == target else f" (in {str(folder)!r})"
        raise ConfigError(f"{flag}: cannot write {str(target)!r}{where}: {reason}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
