"""docs/cli.md is the CLI's own `--help` output, regenerated, never hand-edited.

When this fails after a command changed, run `.venv/bin/python scripts/gen_cli_reference.py`.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_cli_reference", REPO / "scripts" / "gen_cli_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_committed_reference_equals_a_fresh_generation() -> None:
    committed = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    fresh = _generator().render()
    assert committed == fresh, "docs/cli.md is stale: run scripts/gen_cli_reference.py"


def test_every_top_level_command_has_a_section() -> None:
    gen = _generator()
    root_help = gen.help_text([])
    # Rows of the Commands panel: "│ name  summary ... │"
    panel = root_help.split("Commands", 1)[1]
    listed = re.findall(r"^│ ([a-z][a-z-]*)\s{2,}", panel, flags=re.MULTILINE)
    top_level = [p[0] for p in gen.command_paths() if len(p) == 1]
    assert listed and sorted(listed) == sorted(top_level)
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for name in top_level:
        assert f"\n## timelyfreeze {name}\n" in text
