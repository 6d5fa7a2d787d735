"""Typed option groups: a dataclass whose fields are a command's flags.

A command that takes many flags declares them once, as fields of a dataclass annotated with
their `typer.Option` (`num_layers: Annotated[int, typer.Option(help=...)] = 4`), and names the
dataclass as a parameter's type:

    @app.command("pretrain")
    @user_errors
    @option_groups
    def pretrain(opts: PretrainOptions, dry_run: DryRunOption = False) -> None: ...

`option_groups` shows typer every field as a flag, in the parameter's place, and calls the
command with one typed instance per group. So the command body works with real fields, never a
dictionary of `locals()`, and no function spells fifty flags out twice.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

__all__ = ["given_flags", "option_groups"]


def option_groups[R](fn: Callable[..., R]) -> Callable[..., R]:
    """Expand every dataclass-typed parameter of `fn` into its fields' flags (see module doc)."""
    hints = get_type_hints(fn, include_extras=True)
    params: list[inspect.Parameter] = []
    annotations: dict[str, Any] = {}
    groups: dict[str, type] = {}
    for param in inspect.signature(fn).parameters.values():
        kind = hints.get(param.name)
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            groups[param.name] = kind
            field_hints = get_type_hints(kind, include_extras=True)
            for field in dataclasses.fields(kind):
                params.append(_flag(field, field_hints[field.name]))
                annotations[field.name] = field_hints[field.name]
        else:
            params.append(param.replace(annotation=hints.get(param.name, param.annotation)))
            if param.name in hints:
                annotations[param.name] = hints[param.name]
    names = [p.name for p in params]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise TypeError(f"{fn.__name__}: flags declared twice: {clashes}")

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> R:
        for name, kind in groups.items():
            values = {f.name: kwargs.pop(f.name) for f in dataclasses.fields(kind)}
            kwargs[name] = kind(**values)
        return fn(*args, **kwargs)

    # Keyword-only everywhere: typer passes every flag by name, and defaults may then mix freely.
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
    )
    command.__annotations__ = annotations
    return command


def _flag(field: dataclasses.Field[Any], annotation: Any) -> inspect.Parameter:
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = inspect.Parameter.empty
    return inspect.Parameter(
        field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def given_flags(ctx: Any, names: Any) -> list[str]:
    """The flags among `names` given on the command line or by environment (not defaulted)."""
    given = []
    for param in ctx.command.params:
        if param.name in names:
            source = ctx.get_parameter_source(param.name)
            if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
                given.append(max(param.opts, key=len))
    return given
