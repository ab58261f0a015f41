import numpy as np
import pytest
import torch

from tsal_dist.teacher.averaging import (buffer_keys_of, lerp_state_, lerp_state_np_, mean_states,
                                         state_nbytes, to_numpy_state)


def _state(seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(3, 2, generator=g, dtype=dtype),
        "bn.running_mean": torch.randn(3, generator=g, dtype=dtype),
        "bn.num_batches_tracked": torch.tensor(seed * 10, dtype=torch.long),
    }


def test_blend_half_is_midpoint_and_ints_copied():
    a, b = _state(1), _state(2)
    a0 = {k: v.clone() for k, v in a.items()}
    lerp_state_(a, b, 0.5)
    assert torch.allclose(a["conv.weight"], (a0["conv.weight"] + b["conv.weight"]) / 2)
    assert torch.allclose(a["bn.running_mean"], (a0["bn.running_mean"] + b["bn.running_mean"]) / 2)
    assert a["bn.num_batches_tracked"].item() == 20


def test_general_weight_formula():
    a, b = _state(3), _state(4)
    a0 = a["conv.weight"].clone()
    lerp_state_(a, b, 0.9)
    assert torch.allclose(a["conv.weight"], 0.9 * a0 + 0.1 * b["conv.weight"], atol=1e-7)


def test_weight_edges_copy_or_keep():
    a, b = _state(5), _state(6)
    a0 = {k: v.clone() for k, v in a.items()}
    lerp_state_(a, b, 1.0)
    assert torch.equal(a["conv.weight"], a0["conv.weight"])
    lerp_state_(a, b, 0.0)
    assert torch.equal(a["conv.weight"], b["conv.weight"])
    with pytest.raises(ValueError, match="OLD"):
        lerp_state_(a, b, 1.5)


def test_updates_module_in_place_through_state_dict():
    torch.manual_seed(0)
    teacher, student = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = (teacher.weight.detach() + student.weight.detach()) / 2
    lerp_state_(teacher.state_dict(), student.state_dict(), 0.5)
    assert torch.allclose(teacher.weight, expected)


def test_buffer_policy():
    model_t = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    model_s = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    model_s[1].running_mean.fill_(4.0)
    model_s[1].num_batches_tracked.fill_(7)
    keys = buffer_keys_of(model_t)
    assert keys == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    lerp_state_(model_t.state_dict(), model_s.state_dict(), 0.5, average_buffers=False,
                buffer_keys=keys)
    assert torch.all(model_t[1].running_mean == 0)  # left alone
    assert model_t[1].num_batches_tracked.item() == 0
    lerp_state_(model_t.state_dict(), model_s.state_dict(), 0.5, average_buffers=True,
                buffer_keys=keys)
    assert torch.all(model_t[1].running_mean == 2.0)  # averaged
    assert model_t[1].num_batches_tracked.item() == 7  # int copied


def test_key_and_shape_mismatch_raise_naming_key():
    a, b = _state(1), _state(2)
    del b["bn.running_mean"]
    with pytest.raises(ValueError, match="bn.running_mean"):
        lerp_state_(a, b, 0.5)
    b = _state(2)
    b["conv.weight"] = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="conv.weight"):
        lerp_state_(a, b, 0.5)


def test_dtype_preserved_and_numpy_source():
    a = {"w": torch.zeros(4, dtype=torch.float16), "d": torch.zeros(2, dtype=torch.float64),
         "n": torch.tensor(0)}
    src = {"w": np.ones(4, np.float32), "d": np.full(2, 2.0), "n": np.array(3)}
    lerp_state_(a, src, 0.75)
    assert a["w"].dtype == torch.float16 and torch.all(a["w"] == 0.25)
    assert a["d"].dtype == torch.float64 and torch.all(a["d"] == 0.5)
    assert a["n"].dtype == torch.int64 and a["n"].item() == 3


def test_numpy_target_in_place():
    t = {"w": np.zeros(3, np.float32), "n": np.array(1, np.int64)}
    w_ref = t["w"]
    lerp_state_np_(t, {"w": np.full(3, 4.0, np.float32), "n": np.array(9)}, 0.25)
    assert t["w"] is w_ref and np.all(w_ref == 3.0) and t["n"].item() == 9
    ro = np.zeros(2, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        lerp_state_np_({"w": ro}, {"w": np.ones(2, np.float32)}, 0.5)


def test_n_step_closed_form():
    # teacher <- d*teacher + (1-d)*student_i, n times: d^n t0 + sum_i (1-d) d^(n-1-i) s_i.
    rng = np.random.default_rng(0)
    d, n = 0.7, 6
    t0 = rng.normal(size=5)
    ss = rng.normal(size=(n, 5))
    t = {"w": torch.tensor(t0)}
    for s in ss:
        lerp_state_(t, {"w": s}, d)
    expected = d**n * t0 + sum((1 - d) * d ** (n - 1 - i) * ss[i] for i in range(n))
    np.testing.assert_allclose(t["w"].numpy(), expected, rtol=1e-12)


def test_mean_states():
    states = [_state(i) for i in range(3)]
    m = mean_states(states)
    expected = (states[0]["conv.weight"].double() + states[1]["conv.weight"].double()
                + states[2]["conv.weight"].double()) / 3
    assert m["conv.weight"].dtype == torch.float32
    assert torch.allclose(m["conv.weight"], expected.float())
    assert m["bn.num_batches_tracked"].item() == 20  # from the newest
    m["bn.num_batches_tracked"] += 1
    assert states[2]["bn.num_batches_tracked"].item() == 20  # no aliasing
    np_states = [{"w": np.array([1.0, 2.0], np.float32)}, {"w": np.array([2.0, 4.0], np.float32)}]
    mn = mean_states(np_states)
    assert isinstance(mn["w"], np.ndarray) and mn["w"].dtype == np.float32
    np.testing.assert_array_equal(mn["w"], [1.5, 3.0])
    with pytest.raises(ValueError):
        mean_states([])
    with pytest.raises(ValueError, match="w"):
        mean_states([{"w": np.zeros(2)}, {"w": np.zeros(3)}])


def test_to_numpy_state_and_nbytes():
    s = {"w": torch.ones(2, 3), "b": torch.ones(2, dtype=torch.bfloat16), "n": torch.tensor(4)}
    out = to_numpy_state(s)
    assert out["w"].dtype == np.float32 and out["b"].dtype == np.float32
    out["w"][0, 0] = 5
    assert s["w"][0, 0].item() == 1.0  # a copy
    assert state_nbytes(out) == 24 + 8 + 8
