"""The CLI stays thin: each command parses, calls a library function and renders.

Checked by shape: no function in `megatron_tf/cli/` is longer than 80 lines (decorators and
docstrings included), and `--help` reflows each command's docstring paragraphs instead of keeping
the source's hard line breaks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import typer

from megatron_tf.cli import app

CLI = Path(__file__).resolve().parents[2] / "megatron_tf" / "cli"
MAX_LINES = 80


def test_no_function_in_cli_is_over_80_lines() -> None:
    long = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = (node.end_lineno or node.lineno) - first + 1
                if lines > MAX_LINES:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long, long


def _help_texts(typer_app: typer.Typer) -> list[str]:
    texts = [info.help for info in typer_app.registered_commands]
    for group in typer_app.registered_groups:
        assert group.typer_instance is not None
        texts += _help_texts(group.typer_instance)
    return texts


def test_help_paragraphs_are_single_lines() -> None:
    texts = _help_texts(app)
    assert len(texts) >= 8  # six commands and the patch group's two
    for text in texts:
        assert text, "a command without help text"
        for paragraph in text.split("\n\n"):
            assert "\n" not in paragraph, paragraph
