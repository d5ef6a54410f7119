import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.quant import lsq


def test_levels_hand_computed():
    assert lsq.levels(2, signed=True) == (2, 1)
    assert lsq.levels(4, signed=True) == (8, 7)
    assert lsq.levels(8, signed=True) == (128, 127)
    assert lsq.levels(2, signed=False) == (0, 3)
    assert lsq.levels(8, signed=False) == (0, 255)
    assert lsq.levels(1, signed=False) == (0, 1)
    with pytest.raises(ValueError, match="outside 1..8"):
        lsq.levels(9, signed=True)


def test_init_step_is_two_mean_abs_over_sqrt_qp():
    v = torch.tensor([-1.0, 2.0, -3.0, 4.0])
    # mean |v| = 2.5, Q_P = 7 (4-bit signed)
    assert float(lsq.init_step(v, 7)) == pytest.approx(2 * 2.5 / math.sqrt(7))


def test_grad_scale_factor():
    assert lsq.grad_scale_factor(100, 7) == pytest.approx(1 / math.sqrt(700))


def test_fake_quant_values_and_clipping():
    v = torch.tensor([-10.0, -0.26, 0.0, 0.24, 0.26, 0.74, 10.0])
    out = lsq.fake_quant(v, torch.tensor(0.5), 2, 1, g=1.0)  # 2-bit signed: codes -2..1
    assert out.tolist() == [-1.0, -0.5, 0.0, 0.0, 0.5, 0.5, 0.5]


def test_lsq_step_gradient_matches_paper():
    """d q / d s = -v/s + round(v/s) inside the range, -Q_N or Q_P outside; scaled by g."""
    v = torch.tensor([0.3, -0.7, 5.0, -5.0])
    s = torch.tensor(0.5, requires_grad=True)
    g = 0.1
    q = lsq.fake_quant(v, s, 2, 1, g)
    q.sum().backward()
    x = v / 0.5  # 0.6, -1.4, 10, -10
    expected = ((-x[0] + torch.round(x[0])) + (-x[1] + torch.round(x[1])) + 1 + (-2)) * g
    assert float(s.grad) == pytest.approx(float(expected), rel=1e-5)


def test_lsq_input_gradient_is_straight_through_inside_range_only():
    v = torch.tensor([0.3, -0.7, 5.0, -5.0], requires_grad=True)
    lsq.fake_quant(v, torch.tensor(0.5), 2, 1, 1.0).sum().backward()
    assert v.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), signed=st.booleans(), scale=st.floats(0.01, 10.0),
       seed=st.integers(0, 10_000))
def test_outputs_lie_on_the_grid(bits, signed, scale, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(200, generator=g) * scale
    q_n, q_p = lsq.levels(bits, signed)
    step = lsq.init_step(v, q_p)
    out = lsq.fake_quant(v, step, q_n, q_p, 1.0)
    codes = out / step
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.min() >= -q_n - 1e-4 and codes.max() <= q_p + 1e-4
    assert len(torch.unique(codes.round())) <= q_n + q_p + 1


def test_binary_codes_are_plus_minus_step():
    v = torch.tensor([-2.0, -0.1, 0.0, 0.3])
    out = lsq.fake_quant(v, torch.tensor(0.5), 1, 1, 1.0, binary=True)
    assert out.tolist() == [-0.5, -0.5, 0.5, 0.5]


def test_mse_step_beats_or_matches_paper_init():
    v = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    for bits in (2, 4, 8):
        q_n, q_p = lsq.levels(bits, True)

        def err(s, q_n=q_n, q_p=q_p):
            return float(((lsq.fake_quant(v, s, q_n, q_p, 1.0) - v) ** 2).mean())

        assert err(lsq.mse_step(v, q_n, q_p)) <= err(lsq.init_step(v, q_p)) + 1e-9
