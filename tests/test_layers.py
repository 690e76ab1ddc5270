"""The import graph holds the layers that docs/ARCHITECTURE.md states: no import (module or function level) reaches
a higher layer, and no module imports itself back through others."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cwpo"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def documented_layers() -> list[tuple[str, list[str]]]:
    """``(layer, module prefixes)`` from the table under "## Layers" in docs/ARCHITECTURE.md, lowest first."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[1].startswith("`"):
            layers.append((cells[0], re.findall(r"`([\w.]+)`", cells[1])))
    return layers


def layer_of(module: str, layers: list[tuple[str, list[str]]]) -> int:
    """Index of the layer whose prefix matches ``module`` longest (``cwpo`` itself matches only ``cwpo``)."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            exact_only = prefix == "cwpo"
            matches = module == prefix or (not exact_only and module.startswith(prefix + "."))
            if matches and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer of docs/ARCHITECTURE.md")
    return best


def _lazy_exports(path: Path) -> dict[str, str]:
    """A package's ``_EXPORTS`` map (name -> defining module): ``from cwpo.data import X`` imports X's module."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_EXPORTS":
            return ast.literal_eval(node.value)
    return {}


EXPORTS = {name: _lazy_exports(path) for name, path in MODULES.items() if path.name == "__init__.py"}


def imports_of(module: str) -> set[tuple[str, int]]:
    """Every cwpo module ``module`` imports, anywhere in its body, with the line."""
    path = MODULES[module]
    return imports_in(path.read_text(), module, is_package=path.name == "__init__.py")


def imports_in(source: str, module: str, *, is_package: bool = False) -> set[tuple[str, int]]:
    """``(imported cwpo module, line)`` for every import statement in ``source``, module or function level."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.append(full if full in MODULES else EXPORTS.get(base, {}).get(alias.name, base))
        found |= {(target, node.lineno) for target in targets if target.split(".")[0] == "cwpo" and target != module}
    return found


def test_the_documented_layers_cover_every_module():
    layers = documented_layers()
    assert [name for name, _ in layers][:2] == ["foundations", "losses"], layers
    for module in MODULES:
        layer_of(module, layers)  # raises for a module no layer names


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_reaches_a_higher_layer(module):
    layers = documented_layers()
    own = layer_of(module, layers)
    upward = [
        f"line {line}: {target} ({layers[layer_of(target, layers)][0]})"
        for target, line in sorted(imports_of(module))
        if layer_of(target, layers) > own
    ]
    assert not upward, f"{module} ({layers[own][0]}) imports a higher layer: {'; '.join(upward)}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports) as a path that ends where it starts, or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                return path[path.index(target) :] + [target]
            if target not in done and (cycle := visit(target, [*path, target])):
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done and (cycle := visit(module, [module])):
            return cycle
    return None


def test_the_module_import_graph_has_no_cycle():
    graph = {module: {target for target, _ in imports_of(module) if target in MODULES} for module in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_can_fail():
    """A function-level upward import, a lazy re-export and a cycle are all seen."""
    layers = documented_layers()
    source = "import torch\n\ndef f():\n    from cwpo.pipeline.stages import StageRunner\n    from cwpo.data import PairDataModule\n"
    found = imports_in(source, "cwpo.losses.fake")
    assert found == {("cwpo.pipeline.stages", 4), ("cwpo.data.datamodules", 5)}
    assert all(layer_of(target, layers) > layer_of("cwpo.losses.fake", layers) for target, _ in found)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None
