"""No import circles between the project's modules, eager or lazy (type-only imports aside)."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2]


def _type_only(tree: ast.Module) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def import_graph() -> nx.DiGraph:
    modules = {}
    for path in (ROOT / "topovlm").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_only(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            graph.add_edges_from((name, t) for t in targets if t in modules and t != name)
    return graph


def test_no_import_cycles():
    cycles = [sorted(c) for c in nx.simple_cycles(import_graph())]
    assert not cycles, f"import circles: {cycles}"


def test_interfaces_import_nothing_of_the_project():
    graph = import_graph()
    for module in ("topovlm.api", "topovlm.errors"):
        assert not list(graph.successors(module)), f"{module} imports {list(graph.successors(module))}"


def test_the_lmms_eval_model_class_is_imported_only_when_lmms_eval_runs():
    """Importing the evaluator (as validation and the registry listing do) leaves lmms-eval unimported."""
    import subprocess
    import sys

    code = "import sys, topovlm.evaluation.lmms; print('lmms_eval' in sys.modules, 'topovlm.evaluation.lmms_model' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr[-2000:]


def test_the_harness_imports_nothing_from_the_research_folder():
    """research/ (how the embedded model was trained) may use the harness, never the reverse."""
    found = []
    for path in [*(ROOT / "topovlm").rglob("*.py"), *(ROOT / "baselines").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "research"]
    assert not found, found
