"""The architecture's rules, checked on the source: layers, no import cycles (lazy ones included),
small modules, no private names across modules, short positional parameter lists, keyword-only flags."""

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


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return found


def _imports(
    path: Path, name: str, modules: dict[str, Path], *, top_level_only: bool, typing_too: bool = True
) -> set[str]:
    """``worker.*`` modules imported by ``path`` (module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if not typing_too:
        skipped = _type_checking_nodes(tree)
        nodes = [n for n in nodes if id(n) not in skipped]
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


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
    return cycles


def test_no_import_cycles_at_module_level() -> None:
    modules = _modules()
    assert _cycles({n: _imports(p, n, modules, top_level_only=True) for n, p in modules.items()}) == []


def test_no_lazy_import_breaks_a_cycle() -> None:
    """A function-level import is fine to keep a heavy module off a light path (the CLI on a
    management node), never to hide a cycle: with every import hoisted there is still none."""
    modules = _modules()
    graph = {n: _imports(p, n, modules, top_level_only=False, typing_too=False) for n, p in modules.items()}
    assert _cycles(graph) == []


def _trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text()) for path in WORKER.rglob("*.py")}


def test_no_private_name_imported_across_modules() -> None:
    found = [
        f"{path.relative_to(WORKER.parent)}:{node.lineno} {node.module}.{alias.name}"
        for path, tree in _trees().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert found == []


def _functions() -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    return [
        (f"{path.relative_to(WORKER.parent)}:{node.lineno} {node.name}", node)
        for path, tree in _trees().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def _positional(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.arg]:
    return [a for a in (*node.args.posonlyargs, *node.args.args) if a.arg not in ("self", "cls")]


def test_at_most_five_positional_parameters() -> None:
    too_many = {where: len(_positional(fn)) for where, fn in _functions() if len(_positional(fn)) > 5}
    assert too_many == {}


def test_flags_are_keyword_only() -> None:
    """A positional ``True``/``False`` at a call site says nothing: every ``bool`` parameter is
    keyword-only."""
    positional_flags = [
        f"{where}({a.arg})"
        for where, fn in _functions()
        for a in _positional(fn)
        if a.annotation is not None and ast.unparse(a.annotation) in ("bool", "bool | None")
    ]
    assert positional_flags == []


def test_core_and_config_keep_their_inputs_explicit() -> None:
    """The core's only inputs are what its caller passes (never the process's global settings or
    wiring), and the settings module knows nothing of the core."""
    modules = _modules()
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        imported = {
            f"{node.module}.{a.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
            for a in node.names
        }
        deps = _imports(path, name, modules, top_level_only=False)
        if name.startswith("worker.hypervisors"):
            assert "worker.config.get_settings" not in imported, name
            assert "worker.wiring" not in deps, name
        if name == "worker.config":
            assert not {d for d in deps if d.startswith("worker.hypervisors")}, name


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
