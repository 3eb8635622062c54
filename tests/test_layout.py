"""The package's shape: family facts stay on the adapters."""
from __future__ import annotations

import ast
from pathlib import Path

from growkit.arch import ADAPTERS

PACKAGE = Path(__file__).resolve().parent.parent / "growkit"


def _family_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Family names compared to something, or listed in a tuple, list, set or dict (a table of families)."""
    names = {a.family for a in ADAPTERS.values()} | set(ADAPTERS)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            parts = node.elts
        elif isinstance(node, ast.Dict):
            parts = [k for k in node.keys if k is not None]
        else:
            continue
        for part in parts:
            for sub in ast.walk(part):
                if isinstance(sub, ast.Constant) and sub.value in names:
                    found.add((sub.lineno, sub.value))
    return sorted(found)


def test_no_family_names_are_compared_or_tabled_outside_arch():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "arch" in path.relative_to(PACKAGE).parts:
            continue
        for line, name in _family_literals(ast.parse(path.read_text(encoding="utf-8"))):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name!r}")
    assert not offenders, "family facts belong on the adapter:\n" + "\n".join(offenders)


def test_the_scan_finds_a_family_comparison_and_a_family_table():
    code = 'if config.model_type == "llama": pass\nKIND = {"bert": "mlm"}\nx = family in ("vit",)\n'
    assert [name for _, name in _family_literals(ast.parse(code))] == ["llama", "bert", "vit"]



def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The growkit modules ``path`` imports anywhere (inside functions too), resolved to module names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # ``from . import x`` names a submodule or a name of the package
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycle_inside_the_package():
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph = {_module_name(p): _imports(p, modules) for p in paths}
    assert not _cycles(graph), "import cycles:\n" + "\n".join(" -> ".join(c) for c in _cycles(graph))


def test_the_cycle_finder_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
