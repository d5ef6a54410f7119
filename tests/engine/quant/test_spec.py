"""QuantSpec: every quantizer's codes and scale reproduce its own fake-quant forward, bit for bit.

For the sign-based kinds (binary, ternary, 1-bit LSQ and WRPN weights) the forward adds a
straight-through ``(q - x) + x``; there the property is that the same straight-through applied
to the spec's codes gives the forward bit for bit, and the spec's values differ from it by at
most one float rounding.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.quant.modules import ActQuantizer, WeightQuantizer
from engine.quant.spec import QuantSpec, Uncalibrated
from engine.training.methods.dual_quant import DualWeightQuantizer

SETTINGS = settings(max_examples=60, deadline=None)


def _weights(seed: int, c: int, k: int, zeros: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, k, generator=g) * 0.1
    if zeros:   # pruned weights, and a whole channel of zeros
        w = w * (torch.rand(c, k, generator=g) > 0.4)
        w[0] = 0
    return w


def _close(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor | None = None) -> bool:
    """Equal to within float32 rounding of the values' magnitude (and of the weights', where the
    forward passes the straight-through sum (d - w) + w, which rounds at the weights' scale)."""
    mag = b.abs() if w is None else torch.maximum(b.abs(), w.abs())
    return bool(((a - b).abs() <= 2.0 ** -22 * mag.clamp_min(1e-30)).all())


@SETTINGS
@given(method=st.sampled_from(["lsq", "wrpn", "binary", "ternary"]), bits=st.integers(1, 8),
       per_channel=st.booleans(), c=st.integers(1, 6), k=st.integers(1, 12), seed=st.integers(0, 10_000),
       zeros=st.booleans(), stretch=st.floats(0.3, 3.0))
@pytest.mark.slow
def test_weight_spec_reproduces_the_forward(method, bits, per_channel, c, k, seed, zeros, stretch):
    w = _weights(seed, c, k, zeros)
    wq = WeightQuantizer(bits, method, per_channel, c)
    wq.calibrate(w)
    with torch.no_grad():
        wq.step.mul_(stretch)   # any step, not only calibrated ones
    out = wq(w)
    q = wq.spec(w)
    assert isinstance(q, QuantSpec) and q.codes.shape == w.shape and q.codes.dtype == torch.int64
    assert int(q.codes.min()) >= q.qmin and int(q.codes.max()) <= q.qmax
    assert q.per_channel == (method in ("binary", "ternary") or (method == "lsq" and per_channel and c > 1))
    assert bool((q.scale > 0).all())
    d = q.dequantize()
    if method in ("binary", "ternary"):
        assert torch.equal((d - w) + w, out)
    elif bits == 1:
        x = (w / q.broadcast(q.step, w.dim())).clamp(-1, 1)
        assert torch.equal(q.dequantize((q.codes.float() - x) + x), out)
    else:
        assert torch.equal(d, out)
    assert _close(d, out, w)
    assert _close(q.codes * q.broadcast(q.scale, w.dim()), out, w) or bits > 1 and method == "wrpn"
    if q.binary:
        assert set(q.codes.unique().tolist()) <= {-1, 1}


@SETTINGS
@given(method=st.sampled_from(["lsq", "wrpn"]), bits=st.integers(1, 8), signed=st.booleans(),
       batch=st.integers(1, 5), feats=st.integers(1, 20), seed=st.integers(0, 10_000), stretch=st.floats(0.3, 3.0))
def test_act_spec_reproduces_the_forward(method, bits, signed, batch, feats, seed, stretch):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, feats, generator=g)
    if not signed:
        x = x.relu()
    aq = ActQuantizer(bits, method)
    aq.observe(True)
    aq(x)
    aq.finish_calibration()
    with torch.no_grad():
        aq.step.mul_(stretch)
    out = aq(x)
    q = aq.spec(x)
    assert q.signed == bool((x < 0).any()) and not q.per_channel
    assert int(q.codes.min()) >= q.qmin and int(q.codes.max()) <= q.qmax
    if q.binary:   # LSQ 1-bit signed: sign codes through the straight-through estimator
        xs = (x / q.step).clamp(-1, 1)
        assert torch.equal(q.dequantize((q.codes.float() - xs) + xs), out)
        assert _close(q.dequantize(), out)
    else:
        assert torch.equal(q.dequantize(), out)
    # without a batch: the same scale, given the sample size the step's gradient scale depends on
    assert torch.equal(aq.spec(per_sample=feats).step, q.step)


@SETTINGS
@given(high=st.integers(2, 8), low=st.integers(1, 7), per_channel=st.booleans(), midpoint=st.booleans(),
       seed=st.integers(0, 10_000))
def test_dual_nested_spec_reproduces_both_modes(high, low, per_channel, midpoint, seed):
    low = min(low, high - 1)
    w = _weights(seed, 4, 9, False)
    base = WeightQuantizer(high, "lsq", per_channel, 4)
    base.calibrate(w)
    dq = DualWeightQuantizer(base, low, "nested", midpoint)
    dq.fit_low_step(w)
    for mode in ("high", "low"):
        dq.set_mode(mode)
        assert torch.equal(dq.spec(w).dequantize(), dq(w))
    dq.set_mode("high")
    lo, hi = dq.spec(w, mode="low"), dq.spec(w, mode="high")
    assert dq.mode == "high"   # asking for the other mode's spec does not switch the quantizer
    assert torch.equal(lo.codes, torch.div(hi.codes, 2 ** (high - low), rounding_mode="floor"))
    assert lo.zero_point == (-0.5 if midpoint else 0.0)


def test_spec_at_32_bits_and_before_calibration():
    assert WeightQuantizer(32).spec(torch.ones(2, 2)) is None
    assert ActQuantizer(32).spec(per_sample=3) is None
    with pytest.raises(Uncalibrated):
        ActQuantizer(4).spec(per_sample=3)
    with pytest.raises(ValueError, match="weight tensor"):
        WeightQuantizer(4).spec()
    aq = ActQuantizer(4)
    aq.observe(True)
    aq(torch.rand(2, 3))
    aq.finish_calibration()
    with pytest.raises(ValueError, match="per_sample"):
        aq.spec()
