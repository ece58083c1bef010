"""The app's shape: no import cycle (imports inside functions count), no module over ~350 lines without a
reason in its docstring, manifests read only through precompute.store.manifest, no copy of precompute's vocabulary."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
MODULES = {f"app.{p.stem}": p for p in APP.glob("*.py") if p.stem != "__init__"}


def app_imports(path: Path) -> set[str]:
    """The app modules ``path`` imports anywhere in it (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in MODULES:
                out.add(node.module)
            elif node.module == "app":
                out |= {f"app.{a.name}" for a in node.names if f"app.{a.name}" in MODULES}
    return out


def test_no_import_cycle():
    graph = {name: app_imports(path) for name, path in MODULES.items()}
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        assert name not in stack, "import cycle: " + " -> ".join(stack[stack.index(name):] + [name])
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, stack + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_the_cycle_check_sees_imports_inside_functions(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from app import charts\n    import app.data\n")
    assert app_imports(mod) == {"app.charts", "app.data"}


def test_modules_are_small_or_say_why():
    for path in [*APP.glob("*.py"), *(APP / "views").glob("*.py")]:
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert lines <= 360 or "lines" in doc, f"{path.name}: {lines} lines and no reason in its docstring"


READER = APP.parent / "matching_atlas"


def test_manifests_are_read_through_precompute_only():
    for path in [*APP.rglob("*.py"), *READER.rglob("*.py")]:
        text = path.read_text()
        assert not ("json.load" in text and "manifest" in text.lower()), path


def test_no_copy_of_precompute_vocabulary():
    """Contrast names and labels, alpha and p-value stars come from precompute."""
    for path in [*APP.rglob("*.py"), *READER.rglob("*.py")]:
        text = path.read_text()
        for copied in ('"relevant_vs_easy":', "< 0.05", "def stars(", "def fmt_p("):
            assert copied not in text, (path.name, copied)
