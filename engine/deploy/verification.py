"""Does the packed network compute what the fake-quantized torch network computes?"""
from __future__ import annotations

import numpy as np
import torch

from engine.agreement import Agreement
from engine.deploy.runtime import PackedNetwork


def reference_logits(applied, x, batch_size: int = 512) -> np.ndarray:
    """The fake-quantized torch model's logits (the reference the packed network must match)."""
    from engine.training.finetune import predict_logits
    xt = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
    return predict_logits(applied.model, xt, batch_size).numpy()


def verify(applied, net: PackedNetwork, x, y=None, batch_size: int = 512) -> Agreement:
    """Run both models over ``x`` (labels ``y`` optional) and report their agreement."""
    xn = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    ref = reference_logits(applied, x, batch_size)
    got = net.predict(xn, batch_size)
    return Agreement.of(ref, got, y.numpy() if isinstance(y, torch.Tensor) else y)
