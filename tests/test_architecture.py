"""Dependency direction (STYLE.md): checked on the source with ast, so a violation fails pytest."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imports_of(path: Path, *, with_names: bool = False) -> set[str]:
    """Modules imported anywhere in ``path`` (lazy imports count); ``with_names``:
    ``from a.b import c`` also counts as ``a.b.c`` (c may be a module)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            if with_names:
                out.update(f"{node.module}.{a.name}" for a in node.names)
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
    others = {"data", "models", "losses", "teacher", "eval", "loop", "distributed"} - {pkg}
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


def tsal_imports(path: Path) -> set[str]:
    return {m for m in imports_of(path, with_names=True) if _top(m) == "tsal_dist"}


def _is_or_under(name: str, modules: set[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


# The command-line entry points: nothing below them imports them.
ENTRY_POINTS = {"tsal_dist.train", "tsal_dist.tune", "tsal_dist.distill", "tsal_dist.prepare",
                "tsal_dist.export", "tsal_dist.eval.__main__"}


def test_atomic_writes_import_nothing_of_ours():
    """tsal_dist.atomic is the bottom layer every writer uses: stdlib only."""
    assert not tsal_imports(REPO / "tsal_dist/atomic.py")


def test_eval_imports_no_loop_distributed_or_entry_point():
    """eval scores models: metrics, plots and the list runner sit below the loop. Besides
    eval itself its library modules import only the bottom layer (atomic, codec, config) and
    data (run.py reads lists and crops images with it); the CLI (__main__, an entry point) may
    also import models and the one checkpoint reader (loop.checkpoint). Never the rest of loop,
    distributed or another entry point."""
    library = {"tsal_dist.eval", "tsal_dist.atomic", "tsal_dist.codec", "tsal_dist.config",
               "tsal_dist.data"}
    cli = library | {"tsal_dist.models", "tsal_dist.loop.checkpoint"}
    bad = []
    for f in files("tsal_dist/eval"):
        allowed = cli if f.name == "__main__.py" else library
        for imp in tsal_imports(f):
            if not _is_or_under(imp, allowed) or _is_or_under(imp, ENTRY_POINTS):
                bad.append(f"{f.name}: {imp}")
    assert not bad, bad


def test_loop_imports_no_entry_point():
    """The loops hand their checkpoints back; the entry points export them (run.export)."""
    found = {(f.name, e) for f in files("tsal_dist/loop") for imp in tsal_imports(f)
             for e in ENTRY_POINTS if _is_or_under(imp, {e})}
    assert not found, sorted(found)


def test_checkpoint_files_are_read_and_written_in_one_module():
    """tsal_dist.loop.checkpoint owns every checkpoint kind: no other module of the package
    calls torch.load or torch.save (eval, export, resume and distillation go through it)."""
    bad = []
    for f in files("tsal_dist"):
        if f.relative_to(REPO / "tsal_dist").as_posix() == "loop/checkpoint.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in ("load", "save")
                    and isinstance(node.value, ast.Name) and node.value.id == "torch"):
                bad.append(f"{f.relative_to(REPO)}:{node.lineno}: torch.{node.attr}")
    assert not bad, bad
