import json
from pathlib import Path

import pytest
from conftest import SIZE, model_json, write_const_onnx

from tsal_runtime.errors import SpecError
from tsal_runtime.spec import load_spec, sha256_file


def test_load_valid(const_model: Path) -> None:
    spec = load_spec(const_model)
    assert (spec.input_size, spec.num_landmarks, spec.crop_expand) == (SIZE, 5, 0.2)
    assert spec.eye_corners == (0, 1) and spec.decode.stride == 4 and spec.head == "heatmap"
    assert spec.onnx_path == const_model / "model.onnx"


def test_sha_recorded_and_checked(const_model: Path) -> None:
    d = model_json(onnx_sha256=sha256_file(const_model / "model.onnx"))
    (const_model / "model.json").write_text(json.dumps(d))
    load_spec(const_model)
    (const_model / "model.json").write_text(json.dumps(model_json(onnx_sha256="ab" * 32)))
    with pytest.raises(SpecError, match="sha256"):
        load_spec(const_model)


@pytest.mark.parametrize("over, match", [
    ({"schema_version": 2}, "schema_version 2 is not supported"),
    ({"layout": "NCHW"}, "layout"),
    ({"channel_order": "BGR"}, "channel_order"),
    ({"eye_corners": [0, 9]}, "eye_corners"),
    ({"input_size": "big"}, "bad field value"),
])
def test_bad_fields(const_model: Path, over: dict, match: str) -> None:
    (const_model / "model.json").write_text(json.dumps(model_json(**over)))
    with pytest.raises(SpecError, match=match) as e:
        load_spec(const_model)
    assert "model.json" in str(e.value) and "\n" not in str(e.value)


def test_missing_field_and_bad_json(const_model: Path) -> None:
    d = model_json()
    del d["crop_expand"]
    (const_model / "model.json").write_text(json.dumps(d))
    with pytest.raises(SpecError, match="missing field.*crop_expand"):
        load_spec(const_model)
    (const_model / "model.json").write_text("{not json")
    with pytest.raises(SpecError, match="unreadable JSON"):
        load_spec(const_model)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope")
    with pytest.raises(SpecError, match="model.json: not found"):
        load_spec(tmp_path)


@pytest.mark.parametrize("json_over, onnx_kw, match", [
    ({"input_size": 64}, {}, r"model.json says uint8\[B, 64, 64, 3\]"),
    ({"num_landmarks": 7}, {}, "output 'landmarks'"),
    ({"input_name": "images"}, {}, "input is named 'crops'"),
    ({}, {"input_name": "images"}, "input is named 'images'"),
])
def test_onnx_mismatch(const_model: Path, json_over: dict, onnx_kw: dict, match: str) -> None:
    if onnx_kw:
        write_const_onnx(const_model / "model.onnx", **onnx_kw)
    (const_model / "model.json").write_text(json.dumps(model_json(**json_over)))
    with pytest.raises(SpecError, match=match):
        load_spec(const_model)


def test_corrupt_onnx(const_model: Path) -> None:
    (const_model / "model.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SpecError, match="cannot parse ONNX|expected 1 input"):
        load_spec(const_model)
