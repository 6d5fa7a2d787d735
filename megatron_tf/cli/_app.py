"""The typer app every command module registers on, and the one place errors become exit codes."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import sys
import warnings
from collections.abc import Callable
from typing import Annotated

import typer
from rich.markup import escape

from megatron_tf import __version__
from megatron_tf.console import console, err_console  # the project's; commands import them here
from megatron_tf.errors import ConfigError, TimelyFreezeError
from megatron_tf.launch.options import JobFailed

app = typer.Typer(
    name="timelyfreeze",
    help="TimelyFreeze for Megatron-Core: freeze weight gradients on the pipeline's critical path.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# click's base exception, as typer re-exports it (typer >= 0.20 vendors click, older use it).
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def user_errors[**P, R](fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a `TimelyFreezeError` into one red line on stderr and exit code 2, never a traceback.

    A launched job that failed (`JobFailed`) is one line too, with the job's exit code.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            _refuse_non_finite(kwargs)
            return fn(*args, **kwargs)
        except TimelyFreezeError as exc:
            print_error(str(exc))
            raise typer.Exit(code=2) from None
        except JobFailed as exc:
            print_error(str(exc))
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            print_error("interrupted (Ctrl-C) before any job started; nothing was written")
            raise typer.Exit(code=130) from None

    return wrapper


def print_error(message: str) -> None:
    """`error: <message>` on stderr, as one line whatever the message held."""
    text = escape(" ".join(message.split()))
    err_console.print(f"[bold red]error:[/] {text}", highlight=False, soft_wrap=True)


def _refuse_non_finite(values: dict[str, object]) -> None:
    """NaN and infinity pass every `<`/`>` range check, so every float flag is refused first."""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be a finite number, got {value}")


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


def reflow_help(typer_app: typer.Typer) -> None:
    """Let `--help` reflow every command's docstring to the terminal's width.

    Docstrings are hard-wrapped at 100 columns for the source; typer's rich mode keeps those
    line breaks, so on any other width the help came out ragged. Here each paragraph becomes one
    line (blank lines still separate paragraphs) before typer reads it.
    """
    for info in typer_app.registered_commands:
        if not isinstance(info.help, str) and info.callback is not None and info.callback.__doc__:
            info.help = unwrap_paragraphs(inspect.getdoc(info.callback) or "")
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)


def unwrap_paragraphs(text: str) -> str:
    """Join the lines of each blank-line-separated paragraph with single spaces."""
    paragraphs = (" ".join(line.strip() for line in p.splitlines()) for p in text.split("\n\n"))
    return "\n\n".join(p for p in paragraphs if p)


def quiet_library_warnings() -> None:
    """Keep megatron-core's import-time UserWarnings (TransformerEngine or Apex not installed,
    no rank known yet) and torch's "No CUDA runtime" log line off this process's console.

    This process only checks flags and launches: a call that fails before launch then prints
    its one error line alone. The ranks import megatron-core themselves and report what
    concerns them in their own output. `PYTHONWARNINGS` (or `python -W`) set by the user wins,
    the convention of Python's warnings documentation for applications.
    """
    if sys.warnoptions:
        return
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def main() -> None:
    """Console-script entry point: usage errors (a bad type, an unknown flag) are one line too.

    typer draws them in a box of four or more lines; here they are `error: ...` naming the
    flag, with exit code 2 as before.
    """
    quiet_library_warnings()
    try:
        code = app(standalone_mode=False)
    except _ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `timelyfreeze` alone: help was shown
            sys.exit(exc.exit_code)
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            hint = f" (see `{ctx.command_path} --help`)"
        print_error(exc.format_message() + hint)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print_error("interrupted (Ctrl-C)")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
