"""Fixtures of the runtime tests; the constant model they build is in runtime_fixtures.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runtime_fixtures import model_json, write_const_onnx


@pytest.fixture
def const_model(tmp_path: Path) -> Path:
    """Folder with model.onnx (the constant model) + model.json."""
    d = tmp_path / "model"
    d.mkdir()
    write_const_onnx(d / "model.onnx")
    (d / "model.json").write_text(json.dumps(model_json()))
    return d
