"""The one reader for every JSON input: profiles, plans, job files, checkpoint notes.

A user can name anything as an input. A FIFO or a socket would block `open` forever and a
character device such as /dev/zero would be read until memory runs out, so the file's type and
size are checked with `os.stat` before it is opened. The size bound follows from the schedule
size bound (`formats.schedule.max_actions`): no file the product writes for an allowed schedule
comes near `BYTES_PER_ACTION` bytes per action. Nesting is bounded (a few thousand levels
would make `json` raise RecursionError), duplicate keys are refused instead of last-wins, and
the text must be strict UTF-8. Every refusal is one FormatError naming the file.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from megatron_tf.errors import FormatError
from megatron_tf.formats.schedule import MAX_ACTIONS_ENV, max_actions

__all__ = ["BYTES_PER_ACTION", "MAX_DEPTH", "max_json_bytes", "read_json"]

BYTES_PER_ACTION = 256
"""Bytes of JSON allowed per schedule action. A plan holds one ratio per forward action (about
30 bytes as `solve` writes it, indented); a profile holds a few numbers per stage. 256 leaves a
wide margin for hand-written or pretty-printed files."""
BASE_BYTES = 1 << 20
"""Allowed on top of the per-action figure, for the fields every file has."""
MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted; the product's files nest at most 5 deep."""


def max_json_bytes() -> int:
    """Largest JSON input accepted, from the schedule action limit in force."""
    return BASE_BYTES + BYTES_PER_ACTION * max_actions()


def read_json(path: str | os.PathLike[str], what: str, *, flag: str = "") -> Any:
    """Decode the JSON file at `path`, refusing (FormatError) anything but a bounded regular file.

    `what` names the file's role in messages ("profile", "plan", "job file"); `flag`, when the
    caller knows it, is added so the user sees which option to change.
    """
    p = Path(path)
    name = f"{what} {p}"
    given = f" (given to {flag})" if flag else ""
    try:
        info = os.stat(p)
    except FileNotFoundError:
        raise FormatError(f"cannot read {name}: file not found{given}") from None
    except OSError as exc:
        raise FormatError(f"cannot read {name}: {exc.strerror or exc}{given}") from None
    if not stat.S_ISREG(info.st_mode):
        raise FormatError(f"{name} is {_kind(info.st_mode)}, expected a regular file{given}")
    limit = max_json_bytes()
    if info.st_size > limit:
        raise FormatError(
            f"{name} has {info.st_size:,} bytes, over the limit of {limit:,} for a JSON input "
            f"({BYTES_PER_ACTION} per schedule action at {MAX_ACTIONS_ENV}={max_actions():,})"
            f"{given}"
        )
    try:
        with open(p, "rb") as fh:
            raw = fh.read(limit + 1)
    except OSError as exc:
        raise FormatError(f"cannot read {name}: {exc.strerror or exc}{given}") from None
    if len(raw) > limit:
        raise FormatError(f"{name} grew past the limit of {limit:,} bytes while read{given}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(
            f"{p}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}){given}"
        ) from None
    try:
        # NaN and Infinity decode to floats so that validation can name the field holding them.
        data = json.loads(text, object_pairs_hook=_Strict(name, given))
    except json.JSONDecodeError as exc:
        raise FormatError(
            f"{name} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}){given}"
        ) from None
    except RecursionError:
        raise FormatError(f"{name} is nested more than {MAX_DEPTH} levels deep{given}") from None
    if isinstance(data, (list, dict)):
        _check_depth(data, name, given)
    return data


def _kind(mode: int) -> str:
    for test, label in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return label
    return "not a regular file"


def _check_depth(data: Any, name: str, given: str) -> None:
    """Refuse nesting over MAX_DEPTH (json itself stops only at the interpreter's recursion
    limit, with a traceback); walks containers only, so a plan's long lists cost milliseconds."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FormatError(f"{name} is nested more than {MAX_DEPTH} levels deep{given}")
        values = node.values() if isinstance(node, dict) else node
        stack.extend((v, depth + 1) for v in values if isinstance(v, (list, dict)))


class _Strict:
    """`object_pairs_hook` refusing a key given twice in one object."""

    def __init__(self, name: str, given: str) -> None:
        self.name, self.given = name, given

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                others = ", ".join(repr(k) for k in list(out)[:4])
                raise FormatError(
                    f"{self.name} has the key {key!r} twice in one object (the object with keys "
                    f"{others}{', ...' if len(out) > 4 else ''}){self.given}"
                )
            out[key] = value
        return out
