import torch

from engine.quant import binary, wrpn


def test_wrpn_weight_levels():
    w = torch.tensor([-2.0, -0.6, -0.1, 0.0, 0.4, 0.9, 3.0])
    out = wrpn.quantize_weight(w, 3, torch.tensor(1.0))  # k-1 = 2 magnitude bits: {-3..3}/3
    assert torch.allclose(out * 3, torch.tensor([-3.0, -2.0, 0.0, 0.0, 1.0, 3.0, 3.0]))


def test_wrpn_activation_levels_clip_to_unit_range():
    a = torch.tensor([-1.0, 0.1, 0.5, 2.0])
    out = wrpn.quantize_activation(a, 2, torch.tensor(1.0), signed=False)  # {0, 1/3, 2/3, 1}
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 2 / 3, 1.0]))


def test_binarize_uses_mean_abs_per_channel():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    out = binary.binarize(w)
    assert out.tolist() == [[2.0, -2.0], [0.5, 0.5]]


def test_ternarize_threshold_and_scale():
    w = torch.tensor([[1.0, -1.0, 0.1, 0.2]])  # mean |w| = 0.575, delta = 0.4025
    out = binary.ternarize(w)
    assert torch.allclose(out, torch.tensor([[1.0, -1.0, 0.0, 0.0]]))


def test_quantizers_pass_gradients_straight_through():
    w = torch.tensor([[0.3, -0.2]], requires_grad=True)
    (binary.binarize(w).sum() + binary.ternarize(w).sum()).backward()
    assert w.grad.tolist() == [[2.0, 2.0]]
