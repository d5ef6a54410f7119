"""The model zoo, and bring-your-own models as ``package.module:function``."""
from __future__ import annotations

import contextlib
import importlib
import os
import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.errors import UserError
from engine.fileio import clip


class MLP(nn.Module):
    """Two hidden layers on the flattened image."""

    def __init__(self, input_shape, num_classes, hidden=(128, 64)):
        super().__init__()
        n = 1
        for d in input_shape:
            n *= d
        self.fc1 = nn.Linear(n, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5: 5x5 convolutions on 28x28 inputs, 3x3 with padding on small (8x8) ones."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        c, h, w = input_shape
        small = h < 16
        k, p = (3, 1) if small else (5, 2)
        self.conv1 = nn.Conv2d(c, 6, k, padding=p)
        self.conv2 = nn.Conv2d(6, 16, k, padding=p if small else 0)
        h2 = h // 2 if small else (h // 2 - 4)
        w2 = w // 2 if small else (w // 2 - 4)
        self.fc1 = nn.Linear(16 * (h2 // 2) * (w2 // 2), 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class SmallVGG(nn.Module):
    """A small VGG-style CNN for 28x28 images: two conv-conv-pool stages, two linear layers."""

    def __init__(self, input_shape, num_classes, width=16):
        super().__init__()
        c, h, w = input_shape
        self.conv1 = nn.Conv2d(c, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.conv4 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(2 * width)
        self.fc1 = nn.Linear(2 * width * (h // 4) * (w // 4), 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.max_pool2d(F.relu(self.bn4(self.conv4(x))), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for CIFAR-10 (He et al.), with 1x1 projection shortcuts where shapes change."""

    def __init__(self, input_shape, num_classes, blocks=3):
        super().__init__()
        c = input_shape[0]
        self.conv1 = nn.Conv2d(c, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if (b == 0 and i > 0) else 1))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        return self.fc(x)


class _RowRecurrent(nn.Module):
    """Reads an image row by row (one row a time step) with a recurrent layer; classifies the last
    state. The layer is stored under the name of its kind ('lstm' or 'gru'), which plans use."""

    cell: type[nn.Module] = nn.LSTM
    layer_name = "lstm"

    def __init__(self, input_shape, num_classes, hidden=64):
        super().__init__()
        c, h, w = input_shape
        setattr(self, self.layer_name, self.cell(c * w, hidden, batch_first=True))
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = x.permute(0, 2, 1, 3).flatten(2)  # (B, rows, C*W)
        out, _ = getattr(self, self.layer_name)(x)
        return self.fc(out[:, -1])


class RowLSTM(_RowRecurrent):
    cell, layer_name = nn.LSTM, "lstm"


class RowGRU(_RowRecurrent):
    cell, layer_name = nn.GRU, "gru"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[tuple, int], nn.Module]
    description: str
    datasets: tuple[str, ...]


ZOO = {
    "mlp": ZooEntry("mlp", MLP, "MLP, two hidden layers (128, 64)", ("digits", "fashion-mnist", "mnist")),
    "lenet5": ZooEntry("lenet5", LeNet5, "LeNet-5 (3x3 kernels on 8x8 digits)", ("digits", "fashion-mnist", "mnist")),
    "cnn": ZooEntry("cnn", SmallVGG, "small VGG-style CNN (16-16-32-32 conv, 64 fc)", ("fashion-mnist", "mnist", "digits")),
    "resnet20": ZooEntry("resnet20", ResNet20, "ResNet-20 for CIFAR-10 (GPU recommended)", ("cifar10",)),
    "lstm": ZooEntry("lstm", RowLSTM, "LSTM reading the image row by row (hidden 64)", ("digits", "fashion-mnist", "mnist")),
    "gru": ZooEntry("gru", RowGRU, "GRU reading the image row by row (hidden 64)", ("digits", "fashion-mnist", "mnist")),
}


# ``bitscape serve --model pkg.mod:fn`` registers its references here: the dashboard's pickers
# offer the zoo plus these, so a browser only ever chooses among names the server was started with
USER_MODELS: dict[str, str] = {}


def register_model(ref: str) -> str:
    """Check a ``package.module:function`` model reference (it must import) and offer it to the dashboard."""
    ref = str(ref).strip()
    mod, sep, attr = ref.partition(":")
    if not (sep and mod and attr):
        raise UserError(f"model {ref!r}: give your own model as package.module:function")
    if ref in ZOO:
        return ref
    allow_reference(ref)  # typed by the user on serve's command line
    fn = load_callable(ref, "model")
    doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
    USER_MODELS[ref] = doc[0] if doc else f"your model {ref}"
    return ref


def build_model(model_id: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised model: a zoo name, or ``package.module:function``.

    A user function is called as ``function(input_shape=..., num_classes=...)`` when it accepts
    those keywords, else with no arguments; it must return an ``nn.Module``.
    """
    if isinstance(model_id, str) and model_id in ZOO:
        return ZOO[model_id].build(tuple(input_shape), num_classes)
    if is_reference(model_id):
        fn = load_callable(model_id, "model")
        try:
            model = fn(input_shape=tuple(input_shape), num_classes=num_classes)
        except TypeError:
            model = fn()
        if not isinstance(model, nn.Module):
            raise UserError(f"model {model_id!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    raise UserError(f"unknown model {clip(model_id)}; zoo models are {', '.join(ZOO)}, "
                    "or give your own as package.module:function")


# ---- code references: honoured only when the user trusts them --------------------------------
ALLOW_ENV = "BITSCAPE_ALLOW_CODE"
"""Comma-separated ``package.module:function`` references the user allows (inherited by workers)."""
_REF = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def is_reference(name: object) -> bool:
    """Whether ``name`` is written as a ``package.module:function`` reference."""
    return isinstance(name, str) and ":" in name


def _allowed() -> set[str]:
    return {r.strip() for r in os.environ.get(ALLOW_ENV, "").split(",") if r.strip()}


def allow_reference(ref: str) -> None:
    """Trust ``ref`` for the rest of this process and the workers it starts afterwards.

    Callers pass what a user typed (the command line, ``serve``'s allow-list); names read from
    checkpoints, session files and plans are never passed here.
    """
    if not isinstance(ref, str) or not _REF.match(ref):
        raise UserError(f"{clip(ref)} is not a package.module:function reference")
    refs = _allowed()
    if ref not in refs:
        os.environ[ALLOW_ENV] = ",".join(sorted(refs | {ref}))


@contextlib.contextmanager
def trusted_references(*refs: str):
    """Trust ``refs`` inside the block only (a command run in-process, a test)."""
    before = os.environ.get(ALLOW_ENV)
    try:
        for r in refs:
            allow_reference(r)
        yield
    finally:
        if before is None:
            os.environ.pop(ALLOW_ENV, None)
        else:
            os.environ[ALLOW_ENV] = before


def is_allowed(ref: str) -> bool:
    return ref in _allowed()


def check_reference(ref: str, what: str) -> None:
    """Refuse a code reference the user has not allowed; the message says how to allow it."""
    if not is_allowed(ref):
        raise UserError(f"{what} {clip(ref)} is code, and bitscape runs code only when you allow it: "
                        f"type it on the command line (--{what} REF), or allow it with "
                        f"`bitscape --allow-code REF COMMAND ...` (serve included) or {ALLOW_ENV}=REF")


def check_model_name(name: object, where: str = "") -> str:
    """``name`` if it is a zoo model or an allowed reference, without building anything."""
    if isinstance(name, str) and name in ZOO:
        return name
    if is_reference(name):
        check_reference(name, "model")
        return name
    raise UserError(f"{where}unknown model {clip(name)}; zoo models are {', '.join(ZOO)}")


def load_callable(ref: str, what: str):
    """The function a trusted ``package.module:function`` reference names (see check_reference)."""
    check_reference(ref, what)
    mod_name, _, attr = ref.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise UserError(f"{what} {clip(ref)}: cannot import module {mod_name!r} ({clip(str(e))})") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise UserError(f"{what} {clip(ref)}: module {mod_name!r} has no callable {attr!r}")
    return fn
