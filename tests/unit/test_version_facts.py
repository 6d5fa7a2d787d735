"""Every megatron-core-version fact sits behind the guard's table of supported versions."""

from __future__ import annotations

import ast
from pathlib import Path

from megatron_tf.megatron import guard

PACKAGE = Path(__file__).resolve().parents[2] / "megatron_tf"


def _private_megatron_imports(path: Path) -> list[str]:
    """`from megatron... import _name` and `megatron...._name` references in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("megatron."):
            parts = node.module.split(".") + [a.name for a in node.names]
            found += [f"{node.module}:{p}" for p in parts if p.startswith("_")]
        text = node.value if isinstance(node, ast.Constant) else None
        if isinstance(text, str) and text.startswith("megatron.core.") and ":_" in text:
            found.append(text)
    return found


def test_private_megatron_names_are_reached_only_through_the_guard() -> None:
    outside = {
        str(p.relative_to(PACKAGE)): _private_megatron_imports(p)
        for p in PACKAGE.rglob("*.py")
        if p.parent.name != "megatron" or p.parent.parent != PACKAGE
    }
    assert {k: v for k, v in outside.items() if v} == {}
    # ... and the table's references resolve for the installed megatron-core.
    entry = guard.current()
    assert guard.private(entry.index_reader).__name__ == "_IndexReader"


def test_every_series_names_its_facts() -> None:
    from megatron.core.optimizer.optimizer import MegatronOptimizer

    for entry in guard.SUPPORTED_VERSIONS:
        assert entry.param_names.classify("decoder.layers.0.mlp.linear_fc1.weight") == "linear"
        assert entry.param_names.classify("decoder.final_layernorm.weight") is None
        assert all(callable(getattr(MegatronOptimizer, m, None)) for m in entry.optimizer_step)


def test_freeze_package_gets_the_names_passed_in() -> None:
    """`freeze/` stays torch- and megatron-free: no megatron name table of its own."""
    for path in (PACKAGE / "freeze").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
        assert not [s for s in strings if isinstance(s, str) and "linear_qkv" in s], path.name
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.split(".")[0] in ("torch", "megatron")], path.name
