"""Python 3.10 is supported (pyproject's requires-python; the cluster image's Ubuntu 22.04 runs it),
while CI runs 3.11: every source file is checked for syntax and standard-library names that 3.10
lacks, so a 3.11-only import fails here instead of on the first cluster node."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("tsal_dist", "runtime", "benchmarks", "tests")
# Standard-library names added after Python 3.10, as (module, name); name None = the module.
NEWER: set[tuple[str, str | None]] = {
    ("typing", "Self"), ("typing", "LiteralString"), ("typing", "Never"),
    ("typing", "assert_never"), ("typing", "reveal_type"), ("typing", "TypeVarTuple"),
    ("typing", "Unpack"), ("typing", "Required"), ("typing", "NotRequired"),
    ("typing", "dataclass_transform"), ("typing", "override"), ("typing", "TypeAliasType"),
    ("tomllib", None), ("itertools", "batched"), ("datetime", "UTC"), ("enum", "StrEnum"),
    ("asyncio", "TaskGroup"), ("asyncio", "timeout"), ("hashlib", "file_digest"),
}
NEWER_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}


def _guarded(tree: ast.Module) -> set[int]:
    """Line numbers inside ``try:`` blocks whose handlers catch ImportError or
    ModuleNotFoundError (a fallback for older Pythons), or under ``if TYPE_CHECKING:``."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in {"ImportError",
                                                               "ModuleNotFoundError"}
                for h in node.handlers):
            for stmt in node.body:
                lines.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                lines.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    return lines


def problems_in(source: str, name: str = "<source>") -> list[str]:
    """What in ``source`` needs a Python newer than 3.10 (one line each)."""
    try:
        tree = ast.parse(source, feature_version=(3, 10))
    except SyntaxError as e:
        return [f"{name}:{e.lineno}: syntax newer than Python 3.10 ({e.msg})"]
    guarded, found = _guarded(tree), []
    aliases: dict[str, str] = {}  # local name -> module, for `import x as y`
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if getattr(node, "lineno", 0) in guarded:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name] = a.name
                if (a.name, None) in NEWER:
                    found.append(f"{where}: import {a.name} (Python 3.11+)")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if (node.module, None) in NEWER:
                found.append(f"{where}: from {node.module} import ... (Python 3.11+)")
            for a in node.names:
                if (node.module, a.name) in NEWER:
                    found.append(f"{where}: from {node.module} import {a.name} (Python 3.11+)")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = aliases.get(node.value.id)
            if module and (module, node.attr) in NEWER:
                found.append(f"{where}: {module}.{node.attr} (Python 3.11+)")
        elif isinstance(node, ast.Name) and node.id in NEWER_BUILTINS:
            found.append(f"{where}: {node.id} (Python 3.11+)")
    return found


def test_the_checker_finds_what_3_10_lacks():
    bad = ("from typing import Any, Self\nimport tomllib\nimport itertools as it\n"
           "x = it.batched([1, 2], 1)\ntry:\n    pass\nexcept* ValueError:\n    pass\n")
    (syntax,) = problems_in(bad)
    assert "syntax newer than Python 3.10 (Exception groups are only supported" in syntax
    found = problems_in(bad.split("try:")[0] + "raise ExceptionGroup('x', [])\n")
    assert found == ["<source>:1: from typing import Self (Python 3.11+)",
                     "<source>:2: import tomllib (Python 3.11+)",
                     "<source>:4: itertools.batched (Python 3.11+)",
                     "<source>:5: ExceptionGroup (Python 3.11+)"]
    ok = ("from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
          "if TYPE_CHECKING:\n    from typing import Self\n"
          "try:\n    import tomllib\nexcept ModuleNotFoundError:\n    import tomli as tomllib\n"
          "import itertools\npairs = itertools.pairwise([1, 2, 3])\n")
    assert problems_in(ok) == []


def test_requires_python_says_3_10():
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^requires-python = ">=3\.10"$', text, re.M)


@pytest.mark.parametrize("folder", FOLDERS)
def test_sources_run_on_python_3_10(folder):
    files = sorted((REPO / folder).rglob("*.py"))
    assert files
    found = [p for f in files
             for p in problems_in(f.read_text(encoding="utf-8"), str(f.relative_to(REPO)))]
    assert not found, "\n".join(found)
