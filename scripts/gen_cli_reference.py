#!/usr/bin/env python
"""Generate docs/cli.md from the CLI itself: `timelyfreeze --help` and every command's `--help`.

    .venv/bin/python scripts/gen_cli_reference.py            # rewrite docs/cli.md
    .venv/bin/python scripts/gen_cli_reference.py --check    # exit 1 if docs/cli.md is stale

Each help page is rendered in a fresh interpreter with a fixed width and no terminal (COLUMNS,
TERM, NO_COLOR and typer's own switches), so the text is the same on every machine; trailing
spaces that rich pads lines with are dropped. tests/unit/test_cli_reference.py fails when the
committed page differs from a fresh generation.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "cli.md"
WIDTH = 100

# Run the app under its real name, so the usage lines read `timelyfreeze ...`.
_RUN_APP = "from megatron_tf.cli import app; app(prog_name='timelyfreeze')"

HEADER = """\
# CLI reference

Generated from the CLI itself by `scripts/gen_cli_reference.py` (every command's `--help`);
do not edit by hand. Regenerate after changing a command:

```bash
.venv/bin/python scripts/gen_cli_reference.py
```
"""


def help_env() -> dict[str, str]:
    """A stable, colourless, fixed-width rendering environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"FORCE_COLOR", "PY_COLORS", "GITHUB_ACTIONS", "TERMINAL_WIDTH", "CLICOLOR"}
    }
    env.update(
        COLUMNS=str(WIDTH),
        LINES="50",
        TERM="dumb",
        NO_COLOR="1",
        _TYPER_FORCE_DISABLE_TERMINAL="1",
        PYTHONIOENCODING="utf-8",
    )
    return env


def command_paths(app: object | None = None, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """Every visible command and command group, depth first, in registration order."""
    if app is None:
        from megatron_tf.cli import app
    paths: list[list[str]] = []
    for info in app.registered_commands:  # type: ignore[attr-defined]
        if info.hidden:
            continue
        name = info.name or info.callback.__name__.replace("_", "-")
        paths.append([*prefix, name])
    for group in app.registered_groups:  # type: ignore[attr-defined]
        sub = group.typer_instance
        if group.hidden or (sub.info.hidden is True):
            continue
        name = group.name or sub.info.name
        paths.append([*prefix, name])
        paths.extend(command_paths(sub, (*prefix, name)))
    return paths


def help_text(path: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _RUN_APP, *path, "--help"],
        env=help_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"`timelyfreeze {' '.join(path)} --help` failed:\n{done.stderr}")
    lines = [line.rstrip() for line in done.stdout.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def render() -> str:
    parts = [HEADER]
    paths = command_paths()
    anchors = [f"[`{' '.join(p)}`](#timelyfreeze-{'-'.join(p)})" for p in paths]
    parts.append("Commands: " + ", ".join(anchors) + ".\n")
    for path in [[], *paths]:
        title = " ".join(["timelyfreeze", *path])
        parts.append(f"## {title}\n\n```text\n{help_text(path)}\n```\n")
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run scripts/gen_cli_reference.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, args.output)
    print(f"wrote {args.output} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
