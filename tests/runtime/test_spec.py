import json
from pathlib import Path

import pytest
from runtime_fixtures import SIZE, model_json, write_const_onnx

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
    ({"schema_version": True}, "schema_version True is not supported"),
    ({"decode": [1]}, "decode must be an object"),
    ({"decode": "dark"}, "decode must be an object"),
    ({"antialias": "false"}, "antialias must be true or false"),
    ({"num_landmarks": float("inf")}, "bad field value"),
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


def _pinned(model: Path, pt2: bytes = b"PK\x03\x04 a pt2 archive") -> dict:
    """model.json as export writes it now: file hashes pinned, meaning hash over the fields."""
    from tsal_runtime.spec import meaning_sha256

    (model / "model.pt2").write_bytes(pt2)
    d = model_json(onnx_sha256=sha256_file(model / "model.onnx"),
                   pt2_sha256=sha256_file(model / "model.pt2"))
    d["meaning_sha256"] = meaning_sha256(d)
    (model / "model.json").write_text(json.dumps(d))
    return d


@pytest.mark.parametrize("field, value", [("crop_expand", 0.5), ("input_size", 64),
                                          ("decode", {"stride": 4, "window": 9})])
def test_editing_a_field_that_changes_the_model_is_detected(const_model: Path, field: str,
                                                            value: object) -> None:
    d = _pinned(const_model)
    assert load_spec(const_model).meaning_sha256 == d["meaning_sha256"]
    d[field] = value
    (const_model / "model.json").write_text(json.dumps(d))
    with pytest.raises(SpecError, match="edited after export") as e:
        load_spec(const_model, check_onnx=False)
    assert "\n" not in str(e.value)
    d = _pinned(const_model)
    d["source_checkpoint"] = "/elsewhere/ckpt.pt"  # provenance, not meaning: allowed
    (const_model / "model.json").write_text(json.dumps(d))
    load_spec(const_model)


def test_tampered_model_files_are_refused_before_they_are_opened(const_model: Path,
                                                                  monkeypatch) -> None:
    """A payload planted in model.pt2 never reaches torch.export.load (which can unpickle code);
    a changed model.onnx is refused by load_spec before ONNX Runtime sees it."""
    torch = pytest.importorskip("torch")
    from tsal_runtime.engines import make_engine
    from tsal_runtime.errors import EngineError

    opened: list[str] = []
    monkeypatch.setattr(torch.export, "load", lambda p, *a, **k: opened.append(p))
    _pinned(const_model)
    spec = load_spec(const_model)
    (const_model / "model.pt2").write_bytes(b"PK\x03\x04 planted payload")
    with pytest.raises(EngineError, match="model.pt2: refused: its sha256 differs") as e:
        make_engine("torch", spec, device="cpu")
    assert "\n" not in str(e.value) and opened == []
    # an export without the pin (older tsal_dist) is refused too, for the same reason
    (const_model / "model.json").write_text(json.dumps(model_json()))
    with pytest.raises(EngineError, match="pins no pt2_sha256"):
        make_engine("torch", load_spec(const_model), device="cpu")
    assert opened == []
    _pinned(const_model)
    onnx = const_model / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\x00")
    with pytest.raises(SpecError, match="sha256"):
        load_spec(const_model)
