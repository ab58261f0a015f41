import io

import numpy as np
import pytest
import torch

from tsal_dist.teacher.server import TeacherServer


def _snap(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(3, 2)).astype(np.float32),
            "b": rng.normal(size=3).astype(np.float64),
            "n": np.array(seed, np.int64)}


def test_queue_is_mean_of_last_n():
    srv = TeacherServer(mode="queue", queue_length=3)
    snaps = [_snap(i) for i in range(5)]
    for i, s in enumerate(snaps):
        assert srv.push(s, step=10 * (i + 1)) == 10 * (i + 1)
    f = srv.get(50)
    expected_w = np.mean([s["w"].astype(np.float64) for s in snaps[2:]], axis=0)
    np.testing.assert_allclose(f["w"], expected_w.astype(np.float32), rtol=0, atol=0)
    np.testing.assert_allclose(f["b"], np.mean([s["b"] for s in snaps[2:]], axis=0), rtol=1e-15)
    assert f["n"].item() == 4  # ints from the newest


def test_queue_early_versions():
    srv = TeacherServer(mode="queue", queue_length=3, keep_versions=5)
    s0, s1 = _snap(0), _snap(1)
    srv.push(s0, 0)
    srv.push(s1, 1)
    np.testing.assert_array_equal(srv.get(0)["w"], s0["w"])
    np.testing.assert_allclose(srv.get(1)["b"], (s0["b"] + s1["b"]) / 2, rtol=1e-15)


def test_ema_n_step_closed_form():
    d = 0.8
    srv = TeacherServer(mode="ema", ema_decay=d)
    snaps = [_snap(i) for i in range(6)]
    for i, s in enumerate(snaps):
        srv.push(s, i)
    # F_0 = s_0; F_n = d^n s_0 + sum_{i=1..n} (1-d) d^(n-i) s_i
    n = len(snaps) - 1
    expected = d**n * snaps[0]["b"] + sum((1 - d) * d ** (n - i) * snaps[i]["b"]
                                          for i in range(1, n + 1))
    np.testing.assert_allclose(srv.get(n)["b"], expected, rtol=1e-12)
    expected_w = d**n * snaps[0]["w"].astype(np.float64) + sum(
        (1 - d) * d ** (n - i) * snaps[i]["w"].astype(np.float64) for i in range(1, n + 1))
    np.testing.assert_allclose(srv.get(n)["w"], expected_w, rtol=1e-5, atol=1e-6)
    assert srv.get(n)["w"].dtype == np.float32
    assert srv.get(n)["n"].item() == 5


@pytest.mark.parametrize("decay,expect_first", [(0.0, False), (1.0, True),
                                                (1e-12, False), (1.0 - 1e-12, True)])
def test_ema_decay_edges(decay, expect_first):
    srv = TeacherServer(mode="ema", ema_decay=decay)
    a, b = _snap(1), _snap(2)
    srv.push(a, 0)
    srv.push(b, 1)
    ref = a if expect_first else b
    np.testing.assert_allclose(srv.get(1)["w"], ref["w"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(srv.get(1)["b"], ref["b"], rtol=1e-10, atol=1e-12)


def test_mutual_is_latest_student_and_versions_immutable():
    srv = TeacherServer(mode="mutual")
    a = _snap(1)
    srv.push(a, 3)
    a["w"][:] = 99.0  # the caller reuses its buffer: the server holds a copy
    assert not np.any(srv.get(3)["w"] == 99.0)
    got = srv.get(3)
    got["w"][:] = -1.0  # the caller mutates what it got: the server is unaffected
    assert not np.any(srv.get(3)["w"] == -1.0)


def test_ema_versions_immutable_after_later_pushes():
    srv = TeacherServer(mode="ema", ema_decay=0.5)
    srv.push(_snap(1), 0)
    v0 = srv.get(0)
    srv.push(_snap(2), 1)
    np.testing.assert_array_equal(srv.get(0)["w"], v0["w"])


def test_versions_pull_and_eviction():
    srv = TeacherServer(mode="queue", queue_length=2, keep_versions=2)
    assert srv.latest_version() == -1
    assert srv.pull() is None
    assert srv.get(0) is None  # not yet available
    srv.push(_snap(0), 10)
    v, state = srv.pull()
    assert v == 10 and set(state) == {"w", "b", "n"}
    assert srv.pull(newer_than=10) is None  # unchanged: nothing re-sent
    assert srv.get(20) is None  # future version: not yet
    srv.push(_snap(1), 20)
    srv.push(_snap(2), 30)
    assert srv.versions() == [20, 30]
    assert srv.pull(newer_than=10)[0] == 30
    with pytest.raises(KeyError, match="evicted"):
        srv.get(10)
    with pytest.raises(KeyError, match="never pushed"):
        srv.get(25)
    stats = srv.stats()
    assert stats["pushes"] == 3 and stats["versions_held"] == [20, 30]
    assert stats["bytes_pushed"] == 3 * (24 + 24 + 8)


def test_push_rejects_old_step_and_mismatch():
    srv = TeacherServer(mode="ema")
    srv.push(_snap(0), 5)
    with pytest.raises(ValueError, match="not newer"):
        srv.push(_snap(1), 5)
    bad = _snap(1)
    bad["w"] = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="'w'"):
        srv.push(bad, 6)
    with pytest.raises(ValueError, match="mode"):
        TeacherServer(mode="fifo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="OLD"):
        TeacherServer(mode="ema", ema_decay=1.5)


def test_accepts_torch_state():
    srv = TeacherServer(mode="mutual")
    srv.push({"w": torch.ones(2), "n": torch.tensor(3)}, 0)
    got = srv.get(0)
    assert isinstance(got["w"], np.ndarray) and got["n"].item() == 3


@pytest.mark.parametrize("mode", ["queue", "ema", "mutual"])
def test_state_dict_round_trip_continues_bit_exactly(mode):
    kwargs = dict(mode=mode, queue_length=3, ema_decay=0.7, keep_versions=3)
    a = TeacherServer(**kwargs)
    for i in range(4):
        a.push(_snap(i), i * 10)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = TeacherServer(**kwargs)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.versions() == a.versions() and b.stats() == a.stats()
    for i in range(4, 8):
        assert a.push(_snap(i), i * 10) == b.push(_snap(i), i * 10)
        fa, fb = a.get(i * 10), b.get(i * 10)
        for k in fa:
            assert fa[k].dtype == fb[k].dtype
            np.testing.assert_array_equal(fa[k], fb[k])
    assert a.stats() == b.stats()


def test_load_state_dict_rejects_other_settings():
    a = TeacherServer(mode="queue", queue_length=3)
    a.push(_snap(0), 0)
    with pytest.raises(ValueError, match="queue_length"):
        TeacherServer(mode="queue", queue_length=4).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="mode"):
        TeacherServer(mode="ema", queue_length=3).load_state_dict(a.state_dict())
