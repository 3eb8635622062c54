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

