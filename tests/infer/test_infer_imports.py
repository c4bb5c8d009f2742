"""The modules of openqwen/infer import each other in one direction only (imports inside functions
count too): the engine's parts can be read, and loaded, one at a time."""

from __future__ import annotations

import ast
from pathlib import Path

import openqwen.infer

PACKAGE = Path(openqwen.infer.__file__).parent


def infer_imports(path: Path) -> set[str]:
    """Sibling modules of openqwen.infer that ``path`` imports, anywhere in the file."""
    siblings = {p.stem for p in PACKAGE.glob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            out |= {n.split(".")[0] for n in names if n.split(".")[0] in siblings}
        elif isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0):
            for n in ([node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]):
                if n and n.startswith("openqwen.infer."):
                    out.add(n.split(".")[2])
    return out - {path.stem}


def test_no_import_cycles_inside_infer():
    graph = {p.stem: infer_imports(p) for p in PACKAGE.glob("*.py")}
    assert "quant" not in graph["kernels"] and "kernels" in graph["quant"]  # the cycle that was
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join(path + [dep])
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
