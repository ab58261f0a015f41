"""Dependency direction: checked on the source with ast, so a violation fails pytest."""

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


# What `python -m tsal_dist.train --local` runs besides train.py itself: the loop, the resume
# rules, the export, the exit status and error sorting, the config.
LOCAL_PATH = ("tsal_dist.loop.loop", "tsal_dist.loop.runs", "tsal_dist.export", "tsal_dist.cli",
              "tsal_dist.errors", "tsal_dist.config")


def test_train_local_path_imports_no_ray():
    """`python -m tsal_dist.train --local` is the Ray-free path: everything it imports up to the
    loop, the resume rules and the error sorting must not pull Ray in."""
    import subprocess
    import sys

    code = (f"import sys, tsal_dist.train, {', '.join(LOCAL_PATH)}, tsal_dist.config as c; "
            "c.run_name_for(c.ExperimentConfig()); "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def module_file(name: str) -> Path | None:
    """The source file of a tsal_dist module (a package's __init__.py); None if not one."""
    base = REPO.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def test_train_local_path_never_reaches_ray_even_lazily():
    """The --local path's modules and everything they import, function-level imports included
    (what the run will import later, not only at start), hold no Ray import: train.py keeps its
    Ray import (``distributed.launch``) inside the non-local branch."""
    seen: set[str] = set()
    todo = list(LOCAL_PATH)
    while todo:
        name = todo.pop()
        f = module_file(name)
        if name in seen or f is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # parent packages run too
        todo += sorted(tsal_imports(f))
    with_ray = sorted(m for m in seen
                      if any(_top(i) == "ray" for i in imports_of(module_file(m))))
    assert "tsal_dist.loop.loop" in seen and not with_ray, with_ray
    assert not [m for m in seen if _is_or_under(m, {"tsal_dist.distributed"})]
    # and train.py imports Ray's side only inside the function that runs on Ray
    assert "tsal_dist.distributed.launch" not in module_level_imports(REPO / "tsal_dist/train.py")


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


# What each module of tsal_dist.eval may import of ours (besides tsal_dist.eval itself). The
# layering keeps eval beside data, models, losses and teacher, importing none of them: the metrics
# are pure numpy, the plots and the package use the bottom layer only. One exception, decided: the
# list runner (run.py) reads SBR lists and crops faces with tsal_dist.data, so that a model is
# scored on exactly the crops it was trained on (a copy of the crop code would drift). The CLI
# (__main__.py) is an entry point (it builds the model from a checkpoint like any entry point): it
# may use the loop's checkpoint reader and evaluation arguments and the models, but never Ray's side
# (distributed) or another entry point.
BOTTOM = {"tsal_dist.atomic", "tsal_dist.codec", "tsal_dist.config"}
EVAL_ALLOWED = {
    "metrics.py": set(),
    "plots.py": BOTTOM,
    "__init__.py": BOTTOM,
    "run.py": BOTTOM | {"tsal_dist.data"},
    "__main__.py": BOTTOM | {"tsal_dist.data", "tsal_dist.models", "tsal_dist.loop"},
}


def test_eval_imports_only_what_its_layer_allows():
    bad = []
    for f in files("tsal_dist/eval"):
        assert f.name in EVAL_ALLOWED, f"{f.name}: new eval module, add it to EVAL_ALLOWED"
        allowed = EVAL_ALLOWED[f.name] | {"tsal_dist.eval"}
        for imp in tsal_imports(f):
            if _is_or_under(imp, {"tsal_dist.eval.__main__"} - {f"tsal_dist.eval.{f.stem}"}):
                bad.append(f"{f.name}: {imp} (an entry point)")
            elif not _is_or_under(imp, allowed):
                bad.append(f"{f.name}: {imp}")
    assert not bad, bad


def test_loop_imports_no_entry_point():
    """The loops hand their checkpoints back; the entry points export them (run.export)."""
    found = {(f.name, e) for f in files("tsal_dist/loop") for imp in tsal_imports(f)
             for e in ENTRY_POINTS if _is_or_under(imp, {e})}
    assert not found, sorted(found)


def _module_name(f: Path) -> str:
    parts = f.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_an_entry_point():
    """Entry points sit on top: nothing imports one. The exception is tsal_dist.export, a library
    too (export_run, beside the loop in the layering), which train and distill call; one
    entry point never imports another's CLI (their shared plumbing is tsal_dist.cli)."""
    found = []
    for f in files("tsal_dist"):
        me = _module_name(f)
        for imp in tsal_imports(f):
            for e in ENTRY_POINTS - {me}:
                if not _is_or_under(imp, {e}):
                    continue
                if e == "tsal_dist.export" and me in ENTRY_POINTS:
                    continue
                found.append(f"{me}: {imp}")
    assert not found, sorted(found)


def test_cli_plumbing_is_for_entry_points_only():
    """tsal_dist.cli (flags, exit status, run summary) serves the entry points; no library module
    imports it, and it imports neither torch nor Ray at module level."""
    users = {_module_name(f) for f in files("tsal_dist")
             if any(_is_or_under(i, {"tsal_dist.cli"}) for i in tsal_imports(f))}
    assert users and users <= ENTRY_POINTS, users - ENTRY_POINTS
    assert not {_top(i) for i in module_level_imports(REPO / "tsal_dist/cli.py")} & {"torch", "ray"}


def test_checkpoint_files_are_read_and_written_in_one_module():
    """tsal_dist.loop.checkpoint owns every checkpoint kind: no other module of the package
    calls torch.load or torch.save (eval, export, resume and distillation go through it). The
    one other reader is models/pretrained.py: a user's initial weights (``model.init_from``, an
    ImageNet state dict, never a checkpoint of ours), read with weights_only below the loop."""
    bad = []
    for f in files("tsal_dist"):
        if f.relative_to(REPO / "tsal_dist").as_posix() in ("loop/checkpoint.py",
                                                             "models/pretrained.py"):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in ("load", "save")
                    and isinstance(node.value, ast.Name) and node.value.id == "torch"):
                bad.append(f"{f.relative_to(REPO)}:{node.lineno}: torch.{node.attr}")
    assert not bad, bad


MAX_MODULE_LINES = 450


def test_no_module_is_longer_than_the_house_limit():
    """No module of tsal_dist or the runtime above MAX_MODULE_LINES lines: split it by concern."""
    long = {f.relative_to(REPO).as_posix(): n for f in files("tsal_dist") + files("runtime")
            if (n := len(f.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long
