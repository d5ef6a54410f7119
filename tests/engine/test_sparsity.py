import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.plans.sparsity import is_nm, magnitude_mask, mask_for, nm_mask


@settings(max_examples=50, deadline=None)
@given(nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8), (3, 8)]), groups=st.integers(1, 6),
       out=st.integers(1, 5), conv=st.booleans(), seed=st.integers(0, 1000))
def test_nm_mask_keeps_exactly_n_per_group(nm, groups, out, conv, seed):
    n, m = nm
    g = torch.Generator().manual_seed(seed)
    shape = (out, groups * m, 3, 3) if conv else (out, groups * m)
    w = torch.randn(shape, generator=g)
    mask = nm_mask(w, n, m)
    assert mask.shape == w.shape
    v = mask.permute(0, 2, 3, 1) if conv else mask
    counts = v.reshape(-1, m).sum(1)
    assert bool((counts == n).all())
    assert is_nm(mask, n, m)
    # the kept weights are the largest in each group
    wv = (w.permute(0, 2, 3, 1) if conv else w).abs().reshape(-1, m)
    kept_min = torch.where(v.reshape(-1, m), wv, torch.inf).min(1).values
    dropped_max = torch.where(~v.reshape(-1, m), wv, -torch.inf).max(1).values
    assert bool((kept_min >= dropped_max).all())


def test_nm_rejects_indivisible_input():
    with pytest.raises(ValueError, match="not divisible by M=4"):
        nm_mask(torch.randn(3, 6), 2, 4)


@settings(max_examples=40, deadline=None)
@given(frac=st.floats(0.0, 0.95), numel=st.integers(1, 300), seed=st.integers(0, 1000))
def test_magnitude_mask_zeroes_exact_count_of_smallest(frac, numel, seed):
    w = torch.randn(numel, generator=torch.Generator().manual_seed(seed))
    mask = magnitude_mask(w, frac)
    assert int((~mask).sum()) == int(round(frac * numel))
    if mask.any() and (~mask).any():
        assert w[mask].abs().min() >= w[~mask].abs().max()


def test_mask_for_dispatch():
    w = torch.randn(4, 8)
    assert mask_for(w, "none", 0.0) is None
    assert mask_for(w, "unstructured", 0.0) is None
    assert int(mask_for(w, "unstructured", 0.5).sum()) == 16
    assert int(mask_for(w, "2:4", 0.0).sum()) == 16
