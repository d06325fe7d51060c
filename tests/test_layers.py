"""The house's shape, checked on the import graph (grimp, the library under import-linter, whose
layers contract `make test` runs): no module takes part in an import cycle, imports inside
functions included; none imports another module's private names; no module is over 900 lines;
the README's Layout section names every module; the old flat module paths still import."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import grimp
import pytest

import vaelab

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vaelab"
MAX_LINES = 900


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_takes_part_in_an_import_cycle():
    graph = grimp.build_graph("vaelab", include_external_packages=False)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    # a package's __init__ re-exporting its modules is not a cycle with them: they never import it
    assert _cycles(edges) == []


def _private_imports(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("vaelab")):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(root)}:{node.lineno} {alias.name}")
    return found


def test_no_module_imports_another_modules_private_names():
    found = [hit for path in _modules() for hit in _private_imports(path)]
    assert found == []


def test_the_private_import_check_sees_one(tmp_path):
    (tmp_path / "m.py").write_text("from .other import _hidden\nfrom .other import shown\nfrom vaelab.x import _also\n")
    assert [hit.split()[-1] for hit in _private_imports(tmp_path / "m.py", tmp_path)] == ["_hidden", "_also"]


def test_no_module_is_over_900_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_readme_layout_names_every_module():
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("## Layout") :]
    layout = layout[: layout.index("\n## ", 4)] if "\n## " in layout[4:] else layout
    missing = []
    for path in _modules():
        if path.name in ("__init__.py", "__main__.py"):
            continue
        if not re.search(rf"\b{re.escape(path.stem)}\.py\b", layout):
            missing.append(str(path.relative_to(ROOT)))
    assert missing == []


@pytest.mark.parametrize("old", sorted(vaelab._MOVED))
def test_the_old_flat_module_paths_still_import(old):
    module = importlib.import_module(f"vaelab.{old}")
    for home in (importlib.import_module(f"vaelab.{name}") for name in vaelab._MOVED[old]):
        defined = [name for name, value in vars(home).items()
                   if not name.startswith("_") and getattr(value, "__module__", None) == home.__name__]  # fmt: skip
        assert defined, home
        assert all(getattr(module, name) is getattr(home, name) for name in defined)
