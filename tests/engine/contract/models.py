"""Models written the way users write them, for the bring-your-own-model contract test.

Each function takes ``input_shape`` and ``num_classes`` (bitscape passes them by keyword) and
returns a fresh ``nn.Module``. Nothing here is written for bitscape: ``F.`` calls, ``torch.flatten``,
``x.view``, modules called twice, tuples from recurrent layers unpacked in ``forward``.
``clusters`` is the dataset they all train on: Gaussian clusters shaped as 1x8x8 images.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def clusters():
    """Three well separated Gaussian clusters as 1x8x8 images (240 train, 90 test)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, size=(3, 64)).astype(np.float32)
    y = rng.integers(0, 3, size=330)
    x = (centers[y] + rng.normal(0, 0.6, size=(330, 64)).astype(np.float32)).reshape(-1, 1, 8, 8)
    return x[:240], y[:240], x[240:], y[240:]


class _Residual(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = F.relu(self.bn_a(self.conv_a(x)))
        x = F.relu(x + self.bn_b(self.conv_b(y)))          # the skip connection
        x = F.adaptive_avg_pool2d(x, 1)
        return self.head(torch.flatten(x, 1))


def residual(input_shape, num_classes):
    """A stem and one residual block (conv-bn-relu-conv-bn + skip), global pooling, Linear."""
    return _Residual(num_classes)


class _Separable(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.pointwise(F.relu(self.depthwise(x))))
        x = F.max_pool2d(x, 2)
        return self.fc(x.view(x.size(0), -1))


def separable(input_shape, num_classes):
    """Depthwise-separable: a depthwise 3x3 (groups = channels) then a pointwise 1x1."""
    return _Separable(num_classes)


class _Grouped(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def grouped(input_shape, num_classes):
    """A grouped 3x3 convolution (2 groups)."""
    return _Grouped(num_classes)


class _DilatedStrided(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.dilated = nn.Conv2d(1, 8, 3, padding=2, dilation=2)
        self.strided = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x):
        x = F.relu(self.strided(F.relu(self.dilated(x))))
        return self.fc(torch.flatten(x, start_dim=1))


def dilated_strided(input_shape, num_classes):
    """A dilated 3x3 convolution (dilation 2) and a strided one (stride 2)."""
    return _DilatedStrided(num_classes)


def linear_only(input_shape, num_classes):
    """nn.Sequential of Flatten and Linear layers."""
    n = int(np.prod(input_shape))
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, num_classes))


class _LSTMHead(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.lstm = nn.LSTM(input_shape[-1], 16, batch_first=True)
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x):
        x = x.squeeze(1)                     # (B, rows, cols): one row per time step
        out, (h, c) = self.lstm(x)
        return self.classifier(h[-1])


def lstm_head(input_shape, num_classes):
    """An LSTM reading the image row by row; the last hidden state feeds a Linear."""
    return _LSTMHead(input_shape, num_classes)


class _GRUHead(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.proj = nn.Linear(input_shape[-1], 12)
        self.gru = nn.GRU(12, 16, batch_first=True)
        self.out = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.tanh(self.proj(x.flatten(1, 2)))   # (B, rows, 12)
        seq, _ = self.gru(x)
        return self.out(seq[:, -1])


def gru_head(input_shape, num_classes):
    """A Linear projection of each row, a GRU over the rows, a Linear on its last output."""
    return _GRUHead(input_shape, num_classes)


class _Shared(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.act = nn.ReLU()                          # one activation module used three times
        self.fc_in = nn.Linear(int(np.prod(input_shape)), 16)
        self.block = nn.Linear(16, 16)                # one layer applied twice (shared weights)
        self.fc_out = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.act(self.fc_in(torch.flatten(x, 1)))
        x = self.act(self.block(x))
        x = self.act(self.block(x))
        return self.fc_out(x)


def shared(input_shape, num_classes):
    """A ReLU module used three times and a Linear applied twice (weight sharing)."""
    return _Shared(input_shape, num_classes)


CORPUS = ("residual", "separable", "grouped", "dilated_strided", "linear_only", "lstm_head", "gru_head", "shared")


def tiny_cifar():
    """Three colour clusters as 3x32x32 images (48 train, 24 test): the shape CIFAR-10 has, for
    networks built for 32x32 inputs where CIFAR-10 itself is not installed."""
    rng = np.random.default_rng(1)
    centers = rng.normal(0, 1, size=(3, 3 * 32 * 32)).astype(np.float32)
    y = rng.integers(0, 3, size=72)
    x = (centers[y] + rng.normal(0, 0.5, size=(72, 3 * 32 * 32)).astype(np.float32)).reshape(-1, 3, 32, 32)
    return x[:48], y[:48], x[48:], y[48:]
