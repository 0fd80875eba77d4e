"""The architecture's rules, checked on the source: layers, no import cycles, small modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).resolve().parents[2] / "worker"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in WORKER.rglob("*.py"):
        parts = path.relative_to(WORKER.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path], top_level_only: bool) -> set[str]:
    """``worker.*`` modules imported by ``path`` (module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in nodes:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        out.update(t for t in targets if t in modules and t != name)
    return out


def test_no_module_over_400_lines() -> None:
    too_long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert {n: c for n, c in too_long.items() if c > MAX_LINES} == {}


def test_no_import_cycles_at_module_level() -> None:
    modules = _modules()
    graph = {n: _imports(p, n, modules, top_level_only=True) for n, p in modules.items()}
    # A package's __init__ importing its own submodules is not a cycle of responsibilities.
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_layers_keep_their_rules() -> None:
    modules = _modules()
    anywhere = {n: _imports(p, n, modules, top_level_only=False) for n, p in modules.items()}
    for name, deps in anywhere.items():
        if name.startswith("worker.hypervisors"):
            assert not {d for d in deps if d.startswith(("worker.db", "worker.tasks", "worker.app"))}, name
        if name.startswith("worker.db"):
            assert not {d for d in deps if d.startswith(("worker.hypervisors", "worker.tasks"))}, name
        if not name.startswith("worker.devkit") and name != "worker.demo":
            assert not {d for d in deps if d.startswith("worker.devkit")}, f"{name} imports the devkit"
    for path in WORKER.rglob("*.py"):
        # The core, the devkit and the demo (which builds its own libvirt network) may use libvirt.
        if "hypervisors" in path.parts or "devkit" in path.parts or path.name == "demo.py":
            continue
        text = path.read_text()
        assert "import libvirt" not in text, f"{path} imports libvirt outside the core"
    for path in (WORKER / "tasks").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not names & {"select", "update", "insert", "delete", "text"}, f"{path} builds SQL"


def test_dispatcher_and_db_never_load_libvirt() -> None:
    code = "import sys, worker.db.store, worker.dispatcher, worker.app; assert 'libvirt' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
