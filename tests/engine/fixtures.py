"""Bring-your-own model and dataset functions used by the tests."""
import numpy as np
import torch.nn as nn


def tiny_dataset():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=60)
    return x[:40], y[:40], x[40:], y[40:]


def nan_dataset():
    x_train, y_train, x_test, y_test = tiny_dataset()
    x_train[0, 0, 0, 0] = np.nan
    return x_train, y_train, x_test, y_test


def tiny_model(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, num_classes))
