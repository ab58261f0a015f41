"""Domain controls of the synthetic generator: narrow labeled images, wide everything else, and the
default domain untouched (the pinned smoke digest in test_synthetic.py guards its bytes)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from tsal_dist.config import (ConfigError, ExperimentConfig, load_config, parse_set_args,
                              with_overrides)
from tsal_dist.config.experiment import NARROW_DOMAIN, DomainConfig
from tsal_dist.data import synthetic as syn
from tsal_dist.data.formats import read_list, read_pts
from tsal_dist.data.synthetic import dataset as syn_dataset
from tsal_dist.data.synthetic import scene

SIZES = dict(images=8, test_images=8, videos=1, test_videos=1, frames=3, image_size=64, seed=5)


class _Spy:
    """Records what render_image drew: face states, occluders drawn, degradations."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.states: list = []
        self.occluders = 0
        self.degrades: list = []
        render_face, draw_occluder, apply_degrade = (scene.render_face, scene.draw_occluder,
                                                     scene.apply_degrade)

        def face(img, ident, st):
            self.states.append(st)
            return render_face(img, ident, st)

        def occ(img, o, shift=(0, 0)):
            self.occluders += 1
            draw_occluder(img, o, shift)

        def degrade(img, dg, rng):
            self.degrades.append(dg)
            return apply_degrade(img, dg, rng)

        monkeypatch.setattr(scene, "render_face", face)
        monkeypatch.setattr(scene, "draw_occluder", occ)
        monkeypatch.setattr(scene, "apply_degrade", degrade)


def _draw(monkeypatch: pytest.MonkeyPatch, domain: DomainConfig, n: int = 40) -> _Spy:
    spy = _Spy(monkeypatch)
    for i in range(n):
        scene.render_image(np.random.default_rng([1, 1, i]), 48, domain)
    return spy


def test_narrow_domain_stays_in_its_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    wide = _draw(monkeypatch, DomainConfig())
    narrow = _draw(monkeypatch, NARROW_DOMAIN)
    d, eps = NARROW_DOMAIN, 1e-9
    for name, bound in (("yaw", d.yaw_max_deg), ("pitch", d.pitch_max_deg),
                        ("roll", d.roll_max_deg), ("mouth_open", d.expression),
                        ("smile", d.expression), ("brow_raise", d.expression),
                        ("blink_right", d.expression), ("blink_left", d.expression)):
        assert max(abs(getattr(s, name)) for s in narrow.states) <= bound + eps, name
        # the same seeds go beyond it in the wide domain: the check is not vacuous
        assert max(abs(getattr(s, name)) for s in wide.states) > bound, name
    assert max(np.abs(s.gaze).max() for s in narrow.states) <= d.expression + eps
    assert min(s.light[2] for s in narrow.states) > 0.79 > min(s.light[2] for s in wide.states)
    assert min(s.ambient for s in narrow.states) >= 0.6 - 0.35 * d.side_light - eps
    assert narrow.occluders == 0 < wide.occluders
    assert all(g.blur_sigma == 0 and g.motion_len == 0 for g in narrow.degrades)
    assert any(g.blur_sigma > 0 or g.motion_len > 0 for g in wide.degrades)


def test_domain_transforms_draws_never_adds_or_skips_them() -> None:
    """Same seed, any domain: the same numbers drawn (identity and background kept). Pose and
    expression move the landmarks, which can change whether a big face fits the frame at random
    (``_fit_in_frame`` then draws nothing), so those knobs stay wide here."""
    domain = DomainConfig(occluder_rate=0.0, side_light=0.0, blur_rate=0.0)
    for i in range(20):
        a, b = np.random.default_rng([1, 1, i]), np.random.default_rng([1, 1, i])
        scene.render_image(a, 48)
        scene.render_image(b, 48, domain)
        assert a.bit_generator.state == b.bit_generator.state, i
        assert a.random() == b.random()


def test_default_domain_is_the_wide_renderer() -> None:
    for i in range(4):
        a = scene.render_image(np.random.default_rng([0, 1, i]), 48)
        b = scene.render_image(np.random.default_rng([0, 1, i]), 48, DomainConfig())
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _yaw_proxy(lm: np.ndarray) -> float:
    """Nose tip's offset from the eye midpoint along the eye line, in interocular distances
    (~0 frontal; |yaw| <= 15 deg stays below ~0.2)."""
    a, b = lm[36], lm[45]
    iod = np.linalg.norm(b - a)
    return float((lm[30] - (a + b) / 2) @ (b - a) / iod ** 2)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def test_narrow_labeled_images_wide_everything_else(tmp_path: Path) -> None:
    wide = syn.generate_dataset(tmp_path / "wide", **SIZES, progress=False)
    narrow = syn.generate_dataset(tmp_path / "narrow", **SIZES, labeled_domain=NARROW_DOMAIN,
                                  progress=False)
    a, b = _files(wide), _files(narrow)
    assert sorted(a) == sorted(b)
    changed = {k for k in a if a[k] != b[k]}
    # only the labeled training images (and what shows them) differ; tests and videos are wide
    assert changed and all(k.startswith("300W/train/") or k in
                           ("contact_sheet.png", "lists/synthetic.train.lst") for k in changed)
    assert {k for k in changed if k.endswith(".jpg")} == {
        f"300W/train/{i:05d}.jpg" for i in range(SIZES["images"])}
    lists = syn.dataset_lists(narrow)
    train = [_yaw_proxy(read_pts(e.annotation, 68)[0]) for e in read_list(lists["train"])]
    test = [_yaw_proxy(read_pts(e.annotation, 68)[0]) for e in read_list(lists["test"])]
    assert max(map(abs, train)) < 0.25 < max(map(abs, test))
    man = json.loads((narrow / "manifest.json").read_text())
    assert man["labeled_domain"] == {
        "yaw_max_deg": 15.0, "pitch_max_deg": 10.0, "roll_max_deg": 10.0, "occluder_rate": 0.0,
        "side_light": 0.25, "expression": 0.3, "blur_rate": 0.0}
    assert json.loads((wide / "manifest.json").read_text())["labeled_domain"]["yaw_max_deg"] == 55


def test_cache_key_names_the_domain_only_when_not_default() -> None:
    sizes = dict(images=2, test_images=1, videos=1, test_videos=0, frames=3, image_size=48)
    full = {**syn_dataset._SIZE_DEFAULTS, **sizes, "generator": syn.generator_fingerprint()}
    old = "synthetic-" + hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:12]
    assert syn.synthetic_key(**sizes) == syn.synthetic_key(DomainConfig(), **sizes) == old
    narrow = syn.synthetic_key(NARROW_DOMAIN, **sizes)
    assert narrow != old
    assert syn.synthetic_key(replace(NARROW_DOMAIN, expression=0.5), **sizes) != narrow


def test_config_resolves_the_narrow_domain_into_the_data(tmp_path: Path) -> None:
    """data.synthetic.labeled_domain reaches the generator (resolve_data -> ensure_synthetic)."""
    from tsal_dist.data.lists import resolve_data

    over = {f"data.synthetic.{k}": v for k, v in SIZES.items()}
    over.update({f"data.synthetic.labeled_domain.{k}": v
                 for k, v in asdict(NARROW_DOMAIN).items()})
    cfg = with_overrides(ExperimentConfig(), {**over, "data.cache_dir": str(tmp_path)})
    root = resolve_data(cfg).labeled[0].parent.parent
    assert root.name == syn.synthetic_key(NARROW_DOMAIN, **SIZES)
    assert json.loads((root / "manifest.json").read_text())["labeled_domain"]["blur_rate"] == 0


def test_domain_loads_from_yaml_and_set(tmp_path: Path) -> None:
    y = tmp_path / "narrow.yaml"
    y.write_text("data:\n  synthetic:\n    labeled_domain: {yaw_max_deg: 15, pitch_max_deg: 10, "
                 "roll_max_deg: 10, occluder_rate: 0, side_light: 0.25, expression: 0.3, "
                 "blur_rate: 0}\n")
    cfg = load_config(y)
    assert cfg.data.synthetic.labeled_domain == NARROW_DOMAIN
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    cfg = load_config(y, parse_set_args(["data.synthetic.labeled_domain.yaw_max_deg=20"]))
    assert cfg.data.synthetic.labeled_domain == replace(NARROW_DOMAIN, yaw_max_deg=20.0)
    assert ExperimentConfig().data.synthetic.labeled_domain == DomainConfig()


@pytest.mark.parametrize("key,value", [("yaw_max_deg", "70"), ("pitch_max_deg", -1),
                                       ("roll_max_deg", 31), ("occluder_rate", 1.5),
                                       ("side_light", -0.1), ("expression", 2),
                                       ("blur_rate", "x"), ("nope", 1)])
def test_bad_domain_values_name_the_key(key: str, value: object) -> None:
    full = f"data.synthetic.labeled_domain.{key}"
    with pytest.raises(ConfigError) as e:
        with_overrides(ExperimentConfig(), {full: value})
    msg = str(e.value)
    assert "\n" not in msg and full in msg, msg
