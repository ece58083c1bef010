"""No import cycle in precompute/, nor across precompute, matching_atlas and app, no upward import, and a --help that
imports no torch (imports inside functions count: a cycle through them still ties the modules
together, and job <-> stages <-> ablation once ran through them)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules(package: str = "precompute") -> dict[str, Path]:
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that ``path`` imports anywhere (``from pkg import sub`` names the submodule)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
            out |= subs or ({base} if base in known else set())
    return out - {name}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> list[str] | None:
        if name in stack:
            return stack[stack.index(name):] + [name]
        if name in done:
            return None
        for dep in sorted(graph[name]):
            found = visit(dep, stack + [name])
            if found:
                return found
        done.add(name)
        return None

    return next((found for name in sorted(graph) if (found := visit(name, []))), None)


def test_no_import_cycle_in_precompute():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    found = cycle(graph)
    assert found is None, "import cycle: " + " -> ".join(found)


def test_the_walk_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from precompute import job\n    import precompute.stages\n")
    known = {"precompute.job": module, "precompute.stages": module, "precompute": module}
    assert imports("x.m", module, known) == {"precompute.job", "precompute.stages"}
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_and_no_upward_import_across_the_packages():
    """precompute <- matching_atlas <- app: the reader imports nothing of the app; precompute imports neither, except
    its report, which prints the reader's tables."""
    known = {**modules("precompute"), **modules("matching_atlas"), **modules("app")}
    graph = {name: imports(name, path, known) for name, path in known.items()}
    found = cycle(graph)
    assert found is None, "import cycle: " + " -> ".join(found)
    for name, deps in graph.items():
        if name.startswith("matching_atlas"):
            assert not {d for d in deps if d.startswith("app")}, name
        elif name.startswith("precompute"):
            upward = {d for d in deps if d.startswith(("app", "matching_atlas"))}
            assert not upward or name.startswith("precompute.report"), (name, upward)


def test_help_imports_no_torch():
    import subprocess
    import sys

    code = ("import contextlib, io, runpy, sys; sys.argv = ['precompute', '--help']\n"
            "try:\n    with contextlib.redirect_stdout(io.StringIO()): runpy.run_module('precompute', run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
