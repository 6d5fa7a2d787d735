"""The package layering of docs/architecture.md, measured on the source.

An AST walk over `megatron_tf` collects every import: module level, inside functions, and under
`if TYPE_CHECKING:` alike, since each one is a dependency a reader has to follow. Then:
- the planning layers and the freeze policy import neither torch nor megatron;
- only `megatron/` and `model/` import megatron-core;
- every import between packages points down the order in `LAYERS`, so no circle can form;
- no two modules import each other, directly or through others, inside a package either.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "megatron_tf"

LAYERS: list[set[str]] = [
    {"megatron_tf", "errors", "console"},
    {"outputs", "linefit", "process"},
    {"formats"},
    {"freeze"},
    {"schedule"},
    {"solve"},
    {"megatron"},
    {"model"},
    {"launch"},
    {"profile"},
    {"train"},
    {"timetoloss", "demo"},
    {"demo_report", "compare"},
    {"demo_deep"},
    {"cli"},
    {"__main__"},
]
"""Packages (and top-level modules) of megatron_tf, lowest first. A unit may import units of a
lower layer only; units of one layer do not import each other."""

TORCH_FREE = ["formats", "freeze", "schedule", "solve"]
"""Units that import neither torch nor megatron: planning runs anywhere, in milliseconds."""

MEGATRON_CORE = {"megatron", "model"}
"""The only units importing megatron-core: `megatron/` for its internals (behind the version
guard), `model/` for its public model-building API (GPTModel, TransformerConfig, DDP,
Float16Module, the schedule's entry point); docs/architecture.md says why."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str:
    """The package (or top-level module) directly under megatron_tf that `module` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


@cache
def imports() -> dict[str, list[tuple[str, int]]]:
    """module -> [(imported module, line)] for every import statement anywhere in the module."""
    found: dict[str, list[tuple[str, int]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: list[tuple[str, int]] = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets += [(alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets.append((module, node.lineno))
                # `from megatron_tf import demo` imports the module megatron_tf.demo
                targets += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
        found[name] = targets
    return found


def _unit_edges() -> dict[tuple[str, str], list[str]]:
    """(importing unit, imported unit) -> ['module:line', ...] between different units."""
    modules = set(imports())
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, targets in imports().items():
        for target, line in targets:
            if target.split(".")[0] != "megatron_tf":
                continue
            if target not in modules and target.rsplit(".", 1)[0] not in modules:
                continue
            src, dst = _unit(module), _unit(target)
            if target == "megatron_tf" or target.count(".") == 1 and target not in modules:
                dst = "megatron_tf"  # a name from megatron_tf/__init__.py (__version__)
            if src != dst:
                edges[(src, dst)].append(f"{module}:{line}")
    return {edge: sorted(set(where)) for edge, where in edges.items()}


def test_every_unit_has_a_layer() -> None:
    layered = set().union(*LAYERS)
    units = {_unit(m) for m in imports()}
    assert units <= layered, f"add to LAYERS (and docs/architecture.md): {units - layered}"
    assert sum(map(len, LAYERS)) == len(layered), "a unit is listed in two layers"


def test_imports_point_down_the_layers() -> None:
    level = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
    upward = [
        f"{src} -> {dst} ({', '.join(sorted(where))})"
        for (src, dst), where in sorted(_unit_edges().items())
        if level.get(dst, -1) >= level.get(src, len(LAYERS))
    ]
    assert not upward, "imports that do not point downwards:\n" + "\n".join(upward)


def test_no_import_circle_between_units() -> None:
    """Redundant with the layer order while it holds; names the circle when it does not."""
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst in _unit_edges():
        graph[src].add(dst)
    circle = _find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def _find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of `graph` (node -> nodes it imports), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if circle := visit(nxt, [*path, node]):
                return circle
        done.add(node)
        return None

    for node in sorted(graph):
        if circle := visit(node, []):
            return circle
    return None


def test_no_import_circle_between_modules() -> None:
    """Within a package too: a circle there hides which module is the lower one."""
    modules = set(imports())
    graph: dict[str, set[str]] = defaultdict(set)
    for module, targets in imports().items():
        for target, _ in targets:
            found = target if target in modules else target.rsplit(".", 1)[0]
            # a package's own __init__ is not an import of the package's modules
            if found in modules and found != module and not module.startswith(found + "."):
                graph[module].add(found)
    circle = _find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def _importers_of(top: str) -> dict[str, list[str]]:
    """unit -> ['module:line'] of every import of the top-level package `top`."""
    out: dict[str, list[str]] = defaultdict(list)
    for module, targets in imports().items():
        for target, line in targets:
            if target == top or target.startswith(top + "."):
                out[_unit(module)].append(f"{module}:{line}")
    return {unit: sorted(set(where)) for unit, where in out.items()}


def test_only_megatron_and_model_import_megatron_core() -> None:
    users = _importers_of("megatron.core")
    others = {unit: where for unit, where in users.items() if unit not in MEGATRON_CORE}
    assert not others, f"megatron.core imported outside {sorted(MEGATRON_CORE)}: {others}"
    # megatron.training (Megatron-LM's own package) is touched by the guarded hooks alone.
    training = {u: w for u, w in _importers_of("megatron.training").items() if u != "megatron"}
    assert not training, training


def test_planning_layers_and_freeze_policy_name_no_torch_or_megatron() -> None:
    for top in ("torch", "megatron", "transformer_engine"):
        users = _importers_of(top)
        bad = {unit: users[unit] for unit in TORCH_FREE if unit in users}
        assert not bad, f"{top} imported by {bad}"


def test_planning_layers_and_freeze_policy_load_without_torch() -> None:
    """The same, in a fresh interpreter: importing every module loads neither."""
    names = [f"megatron_tf.{unit}" for unit in TORCH_FREE]
    code = (
        "import sys, importlib, pkgutil\n"
        f"for name in {names!r}:\n"
        "    pkg = importlib.import_module(name)\n"
        "    for mod in pkgutil.walk_packages(pkg.__path__, name + '.'):\n"
        "        importlib.import_module(mod.name)\n"
        "bad = [m for m in ('torch', 'megatron') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
