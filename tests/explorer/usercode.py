"""A tiny model and dataset of "your own", for `bitscape serve --model/--dataset` tests."""
import numpy as np
from torch import nn


def tiny_mlp(input_shape, num_classes):
    """Tiny MLP (one hidden layer of 16)."""
    n = 1
    for d in input_shape:
        n *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 16), nn.ReLU(), nn.Linear(16, num_classes))


def blobs():
    """Three Gaussian blobs as 1x6x6 images."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, size=(3, 36)).astype(np.float32)
    y = rng.integers(0, 3, size=240)
    x = (centers[y] + rng.normal(0, 0.5, size=(240, 36)).astype(np.float32)).reshape(-1, 1, 6, 6)
    return x[:200], y[:200], x[200:], y[200:]


def not_a_dataset():
    return 42
