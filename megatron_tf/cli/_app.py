"""The typer app every command module registers on, and the one place errors become exit codes."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console

from megatron_tf import __version__
from megatron_tf.errors import TimelyFreezeError

app = typer.Typer(
    name="timelyfreeze",
    help="TimelyFreeze for Megatron-Core: freeze weight gradients on the pipeline's critical path.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console()
err_console = Console(stderr=True)


def user_errors[**P, R](fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a `TimelyFreezeError` into one red line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except TimelyFreezeError as exc:
            message = " ".join(str(exc).split())  # one line, whatever the message held
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        console.print(f"timelyfreeze {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """TimelyFreeze for Megatron-Core.

    The journey: [bold]profile[/] (measure stage costs) -> [bold]solve[/] (LP for freeze ratios)
    -> [bold]simulate[/] (look at the plan) -> [bold]pretrain[/] (train with the plan).
    [bold]demo[/] runs all of it on a CPU-only machine.
    """


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
