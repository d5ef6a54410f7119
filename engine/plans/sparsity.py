"""Pure sparsity-mask functions (the ASP recipe keeps them apart from orchestration).

Masks are computed once from the pretrained weights and held fixed while fine-tuning;
they are applied before weight quantization.
"""
from __future__ import annotations

import torch


def magnitude_mask(w: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the largest-magnitude weights; exactly round(fraction * numel) are zeroed."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"sparsity fraction {fraction} is outside 0..1 (1 excluded)")
    n = w.numel()
    k = int(round(fraction * n))
    mask = torch.ones(n, dtype=torch.bool)
    if k:
        idx = torch.argsort(w.detach().abs().flatten(), stable=True)[:k]
        mask[idx] = False
    return mask.reshape(w.shape)


def _input_last(w: torch.Tensor) -> torch.Tensor:
    """View a weight with the input-channel axis last: (out, in) or (out, kh, kw, in)."""
    return w.permute(0, 2, 3, 1) if w.dim() == 4 else w


def _input_back(m: torch.Tensor, dim: int) -> torch.Tensor:
    return m.permute(0, 3, 1, 2) if dim == 4 else m


def nm_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M mask along the input dimension: in every group of M consecutive input channels
    (for each output channel and kernel position) exactly N weights are kept, the largest.
    This is the layout sparse tensor cores read (2:4 on Ampere and later).
    """
    if not 1 <= n < m:
        raise ValueError(f"N:M needs 1 <= N < M, got {n}:{m}")
    v = _input_last(w.detach())
    cin = v.shape[-1]
    if cin % m and not (w.dim() == 4 and cin == 1 and v[0].numel() % m == 0):
        raise ValueError(f"input dimension {cin} is not divisible by M={m}")
    # (a depthwise filter, one input channel, groups along its k*k taps in (kh, kw) order)
    groups = v.abs().reshape(-1, m)
    top = torch.topk(groups, n, dim=1, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, top, True)
    return _input_back(mask.reshape(v.shape), w.dim()).contiguous()


def is_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    """True when every input group of M holds at most N kept weights."""
    v = _input_last(mask)
    if v.shape[-1] % m and not (mask.dim() == 4 and v.shape[-1] == 1 and v[0].numel() % m == 0):
        return False
    return bool((v.reshape(-1, m).sum(1) <= n).all())


def mask_for(w: torch.Tensor, sparsity: str, fraction: float) -> torch.Tensor | None:
    """The mask a layer config asks for, or None for dense."""
    if sparsity == "none":
        return None
    if sparsity == "unstructured":
        return magnitude_mask(w, fraction) if fraction > 0 else None
    n, m = (int(t) for t in sparsity.split(":"))
    return nm_mask(w, n, m)
