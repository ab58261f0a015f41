"""Dependency direction (STYLE.md): checked on the source with ast, so a violation fails pytest."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def files(sub: str) -> list[Path]:
    return sorted((REPO / sub).rglob("*.py"))


def _top(name: str) -> str:
    return name.split(".")[0]


def test_runtime_imports_nothing_of_ours_nor_ray():
    bad = []
    for f in files("runtime/tsal_runtime"):
        for imp in imports_of(f):
            if _top(imp) in {"tsal_dist", "ray", "deepspeed"}:
                bad.append(f"{f.relative_to(REPO)}: {imp}")
        for imp in module_level_imports(f):
            if _top(imp) in {"torch", "tensorrt", "pycuda"}:
                bad.append(f"{f.relative_to(REPO)}: module-level {imp}")
    assert not bad, bad


def test_only_distributed_and_entry_points_import_ray():
    allowed = {"distributed", "train.py", "tune.py", "distill.py"}
    bad = []
    for f in files("tsal_dist"):
        rel = f.relative_to(REPO / "tsal_dist")
        if rel.parts[0] in allowed:
            continue
        for imp in imports_of(f):
            if _top(imp) == "ray":
                bad.append(str(rel))
    assert not bad, bad


@pytest.mark.parametrize("pkg", ["data", "models", "losses", "teacher"])
def test_leaf_packages_do_not_import_each_other(pkg):
    others = {"data", "models", "losses", "teacher", "loop", "distributed"} - {pkg}
    bad = []
    for f in files(f"tsal_dist/{pkg}"):
        for imp in imports_of(f):
            parts = imp.split(".")
            if parts[0] == "tsal_dist" and len(parts) > 1 and parts[1] in others:
                bad.append(f"{f.name}: {imp}")
    assert not bad, bad


def test_metrics_are_pure_numpy():
    imps = {i for i in imports_of(REPO / "tsal_dist/eval/metrics.py")}
    assert not {i for i in imps if _top(i) in {"tsal_dist", "torch", "ray"}}


def test_deepspeed_is_imported_lazily():
    for f in files("tsal_dist"):
        assert "deepspeed" not in {_top(i) for i in module_level_imports(f)}, f


def test_train_local_path_imports_no_ray():
    """`python -m tsal_dist.train --local` is the Ray-free path: everything it imports up to the
    loop, the resume rules and the error sorting must not pull Ray in."""
    import subprocess
    import sys

    code = ("import sys, tsal_dist.train, tsal_dist.loop.loop, tsal_dist.loop.runs, "
            "tsal_dist.errors, tsal_dist.config as c; c.run_name_for(c.ExperimentConfig()); "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
