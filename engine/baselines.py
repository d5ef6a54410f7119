"""FP32 baselines: the pretrained networks plans are applied to.

Small checkpoints for the embedded default ship in data/baselines; others are trained with
``bitscape train-baseline`` and cached in the user's cache directory.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn as nn

from engine.assets import data_dir
from engine.errors import UserError
from engine.evaluation import Settings, code_version
from engine.models.checkpoint import load_state, save_state
from engine.models.data import Dataset, load_dataset
from engine.models.zoo import build_model
from engine.training.finetune import Progress, accuracy, train

DATA_DIR = data_dir()
SHIPPED = DATA_DIR / "baselines"


def cache_dir() -> Path:
    from platformdirs import user_cache_dir
    return Path(os.environ.get("BITSCAPE_CACHE", user_cache_dir("bitscape")))


def _fname(model_id: str, dataset_id: str) -> str:
    safe = lambda s: s.replace(":", "_").replace("/", "_")  # noqa: E731
    return f"{safe(model_id)}-{safe(dataset_id)}.safetensors"


def baseline_path(model_id: str, dataset_id: str) -> Path | None:
    for base in (cache_dir() / "baselines", SHIPPED):
        p = base / _fname(model_id, dataset_id)
        if p.is_file():
            return p
    return None


def load_baseline(model_id: str, dataset_id: str, data: Dataset | None = None,
                  path: str | Path | None = None) -> nn.Module:
    """The pretrained FP32 network, in eval mode."""
    data = data or load_dataset(dataset_id)
    model = build_model(model_id, data.input_shape, data.num_classes)
    p = Path(path) if path else baseline_path(model_id, dataset_id)
    if p is None:
        raise UserError(f"no FP32 baseline for model {model_id!r} on dataset {dataset_id!r}: run "
                        f"`bitscape train-baseline --model {model_id} --dataset {dataset_id}` first")
    state, _ = load_state(p)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"baseline {str(p)!r} does not fit model {model_id!r}: {str(e).splitlines()[0]}") from None
    return model.eval()


def train_baseline(model_id: str, dataset_id: str, epochs: float = 20, batch_size: int = 64, lr: float = 2e-3,
                   seed: int = 0, out: str | Path | None = None, progress: Progress | None = None) -> dict:
    """Train the FP32 network from scratch, save it, and report its accuracy."""
    data = load_dataset(dataset_id)
    torch.manual_seed(seed)
    model = build_model(model_id, data.input_shape, data.num_classes)
    steps = max(1, int(epochs * len(data.y_train) / batch_size))
    t0 = time.perf_counter()
    result = train(model, data, Settings(steps=steps, batch_size=batch_size, lr=lr, weight_decay=1e-4, seed=seed),
                   progress=progress, freeze_bn=False)
    wall = time.perf_counter() - t0
    val, test = accuracy(model, data.x_val, data.y_val), accuracy(model, data.x_test, data.y_test)
    path = Path(out) if out else cache_dir() / "baselines" / _fname(model_id, dataset_id)
    meta = {"model": model_id, "dataset": dataset_id, "val_accuracy": val, "test_accuracy": test,
            "epochs": epochs, "steps": steps, "seed": seed, "code_version": code_version()}
    save_state(path, model.state_dict(), meta)
    return {**meta, "path": str(path), "wall_s": wall, "final_loss": result.loss_curve[-1]}
