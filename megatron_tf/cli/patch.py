"""`timelyfreeze patch check|apply`: the optional hook-point patch set for megatron-core."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from megatron_tf.cli._app import app, console, user_errors

patch_app = typer.Typer(
    help="Explicit hook points for megatron-core's schedules (optional; the runtime wrap "
    "works without them).",
    no_args_is_help=True,
)
app.add_typer(patch_app, name="patch")

TargetOption = Annotated[
    Path | None,
    typer.Option(
        "--target",
        help="Directory holding the `megatron` package: site-packages of megatron-core, or a "
        "Megatron-LM checkout (core_r0.19.0 or main). Default: the installed megatron-core.",
    ),
]
PatchDirOption = Annotated[
    Path | None,
    typer.Option(
        "--patch-dir",
        help="Patch set to use (default: the one for the tree's megatron-core version, "
        "patches/megatron-core-0.19.2 or patches/megatron-core-0.20.0).",
    ),
]

_WORDS = {
    "applied": "[green]applied[/]",
    "applies": "[yellow]not applied, applies cleanly[/]",
    "mismatch": "[red]does not match this tree[/]",
}


@patch_app.command("check")
@user_errors
def check(target: TargetOption = None, patch_dir: PatchDirOption = None) -> None:
    """Report whether each patch is applied, applies cleanly, or does not match.

    Exit code 0 when every patch is applied or applies, 2 otherwise.

    Example: [bold]timelyfreeze patch check --target ~/Megatron-LM[/]
    """
    from megatron_tf.errors import UnsupportedMegatronError
    from megatron_tf.megatron.patchset import check_patches

    statuses = check_patches(target, patch_dir)
    for s in statuses:
        console.print(f"{s.patch}: {_WORDS[s.state]}", highlight=False)
    bad = [s for s in statuses if s.state == "mismatch"]
    if bad:
        raise UnsupportedMegatronError(f"{bad[0].patch} does not match: {bad[0].detail}")


@patch_app.command("apply")
@user_errors
def apply(target: TargetOption = None, patch_dir: PatchDirOption = None) -> None:
    """Apply the patch set (idempotent; a tree it does not match is left untouched).

    Example: [bold]timelyfreeze patch apply --target ~/Megatron-LM[/]
    """
    from megatron_tf.megatron.patchset import apply_patches

    for s in apply_patches(target, patch_dir):
        console.print(f"{s.patch}: {_WORDS[s.state]}", highlight=False)
