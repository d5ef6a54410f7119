"""Datasets: train / validation / test splits as tensors, loaded from what is on disk.

Nothing is downloaded. ``digits`` ships with scikit-learn (the embedded default);
``fashion-mnist`` and ``mnist`` read IDX files (Debian's dataset-fashion-mnist package, a
directory option, or an environment variable); ``cifar10`` reads the binary version
(cifar-10-batches-bin); ``synthetic`` is generated for tests. Validation is carved from the
training data; the test split is only for reporting.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.fileio import clip
from engine.models.zoo import check_reference, is_reference, load_callable

FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    description: str


SPECS = {
    "digits": DatasetSpec("digits", (1, 8, 8), 10, "scikit-learn's 8x8 handwritten digits (1,797 images)"),
    "fashion-mnist": DatasetSpec("fashion-mnist", (1, 28, 28), 10, "Fashion-MNIST, 28x28 clothing images (70,000)"),
    "mnist": DatasetSpec("mnist", (1, 28, 28), 10, "MNIST handwritten digits, 28x28 (70,000)"),
    "cifar10": DatasetSpec("cifar10", (3, 32, 32), 10, "CIFAR-10, 32x32 colour images (60,000)"),
    "synthetic": DatasetSpec("synthetic", (1, 8, 8), 4, "generated Gaussian clusters, for tests"),
}


@dataclass
class Dataset:
    """Standardised float images (N, C, H, W) and integer labels for three splits."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        if which not in ("train", "val", "test"):
            raise ValueError(f"unknown split {which!r}")
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")

    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, f"y_{s}")) for s in ("train", "val", "test")}


# ``bitscape serve --dataset pkg.mod:fn`` registers its references here (loaded once, at start-up)
USER_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(ref: str) -> DatasetSpec:
    """Load a ``package.module:function`` dataset once (a bad one fails now) and offer it to the dashboard."""
    ref = str(ref).strip()
    mod, sep, attr = ref.partition(":")
    if not (sep and mod and attr):
        raise UserError(f"dataset {ref!r}: give your own dataset as package.module:function")
    from engine.models.zoo import allow_reference
    allow_reference(ref)  # typed by the user on serve's command line
    d = load_dataset(ref)
    spec = DatasetSpec(ref, d.input_shape, d.num_classes,
                       f"your dataset {ref} ({sum(d.sizes().values())} images, {d.num_classes} classes)")
    USER_DATASETS[ref] = spec
    return spec


def dataset_availability(name: str) -> str:
    """'' when the dataset can be loaded here; otherwise why not, in words for a dashboard user.

    Checks files only (nothing is loaded), so it is cheap enough to run when a page opens.
    """
    if name in USER_DATASETS or name == "synthetic":
        return ""
    if name == "digits":
        try:
            import sklearn.datasets  # noqa: F401
        except ImportError:
            return "not installed: it ships with scikit-learn, which is missing on this server"
        return ""
    if name in ("fashion-mnist", "mnist"):
        try:
            _find_idx_dir(name, None)
        except UserError:
            title = "Fashion-MNIST" if name == "fashion-mnist" else "MNIST"
            env = "BITSCAPE_FASHION_MNIST" if name == "fashion-mnist" else "BITSCAPE_MNIST"
            extra = " (or install Debian's dataset-fashion-mnist package)" if name == "fashion-mnist" else ""
            return (f"not installed: the {title} image files are not on this server; whoever runs it can put "
                    f"the four IDX files (train-images-idx3-ubyte and the rest) in a folder, point {env} at it"
                    f"{extra} and restart")
        return ""
    if name == "cifar10":
        try:
            _cifar10_dir(None)
        except UserError:
            return ("not installed: the CIFAR-10 images are not on this server; whoever runs it can unpack "
                    "CIFAR-10's binary version (cifar-10-batches-bin, from the CIFAR-10 website) in a folder, "
                    "point BITSCAPE_CIFAR10 at it and restart")
        return ""
    return "unknown dataset"


def dataset_spec(name: str) -> DatasetSpec:
    """Shape facts of a dataset, without loading it."""
    if isinstance(name, str) and name in SPECS:
        return SPECS[name]
    if name in USER_DATASETS:
        return USER_DATASETS[name]
    if is_reference(name):
        d = load_dataset(name)
        return DatasetSpec(name, d.input_shape, d.num_classes, f"user dataset {name}")
    raise UserError(f"unknown dataset {clip(name)}; known datasets are {', '.join(SPECS)}, "
                    "or give your own as package.module:function")


def check_dataset_name(name: object, where: str = "") -> str:
    """``name`` if it is a built-in dataset or an allowed reference, without loading anything."""
    if isinstance(name, str) and name in SPECS:
        return name
    if is_reference(name):
        check_reference(name, "dataset")
        return name
    raise UserError(f"{where}unknown dataset {clip(name)}; known datasets are {', '.join(SPECS)}")


_CACHE: dict[tuple, Dataset] = {}


def load_dataset(name: str, root: str | os.PathLike | None = None, seed: int = 0,
                 val_fraction: float = 0.1, limit_train: int | None = None) -> Dataset:
    """Load a dataset by name; results are cached per process."""
    key = (name, str(root), seed, val_fraction, limit_train)
    if is_reference(name):
        check_reference(name, "dataset")   # also when cached: the allow-list may have changed
    if key not in _CACHE:
        _CACHE[key] = _load(name, root, seed, val_fraction, limit_train)
    return _CACHE[key]


def _load(name, root, seed, val_fraction, limit_train) -> Dataset:
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        x = (d.images.astype(np.float32) / 16.0)[:, None]
        y = d.target.astype(np.int64)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(y))
        n_test = int(round(0.2 * len(y)))
        test, rest = order[:n_test], order[n_test:]
        return _finish(name, x[rest], y[rest], x[test], y[test], 10, seed, val_fraction, limit_train)
    if name in ("fashion-mnist", "mnist"):
        directory = _find_idx_dir(name, root)
        xtr = _read_idx(directory, "train-images-idx3-ubyte")
        ytr = _read_idx(directory, "train-labels-idx1-ubyte")
        xte = _read_idx(directory, "t10k-images-idx3-ubyte")
        yte = _read_idx(directory, "t10k-labels-idx1-ubyte")
        f = lambda a: (a.astype(np.float32) / 255.0)[:, None]  # noqa: E731
        return _finish(name, f(xtr), ytr.astype(np.int64), f(xte), yte.astype(np.int64), 10, seed,
                       val_fraction, limit_train)
    if name == "cifar10":
        return _load_cifar10(root, seed, val_fraction, limit_train)
    if name == "synthetic":
        rng = np.random.default_rng(seed)
        centers = rng.normal(0, 1.0, size=(4, 64)).astype(np.float32)
        y = rng.integers(0, 4, size=800)
        x = (centers[y] + rng.normal(0, 0.8, size=(800, 64)).astype(np.float32)).reshape(-1, 1, 8, 8)
        return _finish(name, x[:600], y[:600], x[600:], y[600:], 4, seed, val_fraction, limit_train)
    if is_reference(name):
        return _load_user(name, seed, val_fraction, limit_train)
    raise UserError(f"unknown dataset {clip(name)}; known datasets are {', '.join(SPECS)}, "
                    "or give your own as package.module:function")


def _finish(name, x_trainval, y_trainval, x_test, y_test, classes, seed, val_fraction, limit_train) -> Dataset:
    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(len(y_trainval))
    n_val = int(round(val_fraction * len(order)))
    val, train = order[:n_val], order[n_val:]
    if limit_train:
        train = train[:limit_train]
    mean, std = float(x_trainval[train].mean()), float(x_trainval[train].std()) or 1.0
    t = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))  # noqa: E731
    lab = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
    return Dataset(name, t(x_trainval[train]), lab(y_trainval[train]), t(x_trainval[val]), lab(y_trainval[val]),
                   t(x_test), lab(y_test), classes)


def _find_idx_dir(name: str, root) -> Path:
    env = "BITSCAPE_FASHION_MNIST" if name == "fashion-mnist" else "BITSCAPE_MNIST"
    candidates = [root, os.environ.get(env)] + (list(FASHION_DIRS) if name == "fashion-mnist" else [])
    for c in candidates:
        if c and (Path(c) / "train-images-idx3-ubyte.gz").exists() or (c and (Path(c) / "train-images-idx3-ubyte").exists()):
            return Path(c)
    how = ("install Debian's package (apt-get install dataset-fashion-mnist), or " if name == "fashion-mnist" else "")
    raise UserError(f"dataset {name!r} not found: {how}put the four IDX files (train-images-idx3-ubyte[.gz], ...) "
                    f"in a directory and pass --data-dir DIR or set {env}")


def _read_idx(directory: Path, stem: str) -> np.ndarray:
    path = directory / f"{stem}.gz"
    opener = gzip.open if path.exists() else open
    if not path.exists():
        path = directory / stem
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise UserError(f"cannot read IDX file {str(path)!r}: {e}") from None


def _cifar10_dir(root) -> Path:
    base = Path(root or os.environ.get("BITSCAPE_CIFAR10", "")) if (root or os.environ.get("BITSCAPE_CIFAR10")) else None
    if base is not None and (base / "cifar-10-batches-bin").is_dir():
        base = base / "cifar-10-batches-bin"
    if base is None or not (base / "data_batch_1.bin").exists():
        raise UserError("dataset 'cifar10' not found: download the binary version (cifar-10-binary.tar.gz) yourself, "
                        "extract it, and pass --data-dir DIR or set BITSCAPE_CIFAR10 to the cifar-10-batches-bin folder")
    return base


def _load_cifar10(root, seed, val_fraction, limit_train) -> Dataset:
    base = _cifar10_dir(root)

    def read(fn):
        raw = np.fromfile(base / fn, dtype=np.uint8).reshape(-1, 3073)
        return raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, raw[:, 0].astype(np.int64)

    parts = [read(f"data_batch_{i}.bin") for i in range(1, 6)]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = read("test_batch.bin")
    return _finish("cifar10", xtr, ytr, xte, yte, 10, seed, val_fraction, limit_train)


def _load_user(ref: str, seed, val_fraction, limit_train) -> Dataset:
    """A user function returning (x_train, y_train, x_test, y_test) arrays or tensors."""
    fn = load_callable(ref, "dataset")
    out = fn()
    if not (isinstance(out, (tuple, list)) and len(out) == 4):
        raise UserError(f"dataset {ref!r} must return (x_train, y_train, x_test, y_test)")
    xtr, ytr, xte, yte = (np.asarray(a.numpy() if isinstance(a, torch.Tensor) else a) for a in out)
    if xtr.ndim != 4:
        raise UserError(f"dataset {ref!r}: x_train must be (N, C, H, W), got shape {xtr.shape}")
    classes = int(max(ytr.max(), yte.max())) + 1
    return _finish(ref, xtr.astype(np.float32), ytr, xte.astype(np.float32), yte, classes, seed,
                   val_fraction, limit_train)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None):
    """Yield (x, y) mini-batches; shuffled when a generator is given."""
    n = len(y)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]
