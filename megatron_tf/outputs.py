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

__all__ = ["check_cache_dir", "check_not_an_input", "check_output_dir", "check_output_file"]


def check_output_file(
    path: str | os.PathLike[str], flag: str, *, suffixes: Sequence[str] = ()
) -> None:
    """`path` can be written as a file: its folder exists and is writable, it is no folder.

    `suffixes` (lower case, with the dot) restricts the file type, e.g. (".png", ".svg").
    """
    target = Path(path)
    _check_length(target, flag)
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
    _check_length(target, flag)
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


def check_not_an_input(
    output: str | os.PathLike[str], flag: str, inputs: dict[str, str | os.PathLike[str] | None]
) -> None:
    """Refuse an output path that names one of the command's inputs (`solve X -o X`).

    Compared by resolved path, and by inode where both exist, so a symlink or a hard link to
    the input is caught too: the input would be replaced by the output.
    """
    out = Path(output)
    for in_flag, given in inputs.items():
        if given is None:
            continue
        source = Path(given)
        same = out.resolve() == source.resolve()
        if not same and out.exists() and source.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, source)
        if same:
            raise ConfigError(
                f"{flag} {str(out)!r} is the file given to {in_flag}: writing it would replace "
                f"that input; choose another {flag}"
            )


CACHE_ENV = "TIMELYFREEZE_CACHE"
"""Where the corpus cache goes when no --cache-dir is given (see train/corpus.py)."""


def check_cache_dir(cache_dir: str | os.PathLike[str] | None, flag: str = "--cache-dir") -> None:
    """The corpus cache (`cache_dir`, else `$TIMELYFREEZE_CACHE`) is, or can be made, a folder.

    Only an explicit setting is checked; the default under the home folder is the user's own.
    """
    if cache_dir is None:
        env = os.environ.get(CACHE_ENV)
        if not env:
            return
        cache_dir, flag = env, CACHE_ENV
    path = Path(cache_dir)
    _check_length(path, flag)
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"{flag} {str(path)!r}: {str(existing)!r} is a file, expected a folder for the "
            "corpus cache"
        )


def _check_length(target: Path, flag: str) -> None:
    """Refuse a name or path the file system cannot hold (ENAMETOOLONG) with one line.

    Checked on the text before any `stat`, which would itself fail with that error.
    """
    absolute = Path(os.path.abspath(target))
    existing = Path(absolute.anchor or "/")
    for part in absolute.parts[1:]:
        if len(os.fsencode(part)) > 255 or not (existing / part).is_dir():
            break
        existing = existing / part
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in absolute.parts[1:]:
        size = len(os.fsencode(part))
        if size > name_max:
            raise ConfigError(
                f"{flag}: the name {part[:32]!r}... is {size} bytes long, over the file "
                f"system's limit of {name_max} bytes (NAME_MAX)"
            )
    total = len(os.fsencode(absolute))
    if total >= path_max:
        raise ConfigError(
            f"{flag}: the path is {total} bytes long, over the file system's limit of "
            f"{path_max - 1} bytes (PATH_MAX)"
        )
