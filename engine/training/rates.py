"""Fine-tune learning rates: set in the settings, stored per baseline, or the default.

The rates a baseline fine-tunes best at are measured once (``bitscape bench finetune --recipe``)
and stored in data/baselines/rates.json; settings that leave ``lr``/``lr_step`` unset take them.
"""
from __future__ import annotations

import dataclasses
import functools
import json

from engine.assets import data_dir
from engine.errors import UserError
from engine.evaluation import DEFAULT_LR, Settings


@functools.lru_cache(maxsize=1)
def _table() -> dict:
    p = data_dir() / "baselines" / "rates.json"
    if not p.is_file():
        return {}
    try:
        table = json.loads(p.read_text())
    except ValueError as e:
        raise UserError(f"{p} is not valid JSON ({e})") from None
    return table if isinstance(table, dict) else {}


def stored(model_id: str, dataset_id: str) -> dict | None:
    """{"lr", "lr_step"} stored for this baseline, or None."""
    row = _table().get(f"{model_id}-{dataset_id}")
    if not isinstance(row, dict):
        return None
    out = {k: row[k] for k in ("lr", "lr_step") if isinstance(row.get(k), (int, float))}
    return out or None


def resolve(s: Settings, model_id: str | None = None, dataset_id: str | None = None) -> tuple[Settings, str]:
    """``s`` with concrete rates, and where they came from ("settings", "stored for M/D", "default")."""
    if s.lr is not None and s.lr_step is not None:
        return s, "settings"
    row = stored(model_id, dataset_id) if model_id and dataset_id else None
    row = row or {}
    lr = s.lr if s.lr is not None else row.get("lr", DEFAULT_LR)
    lr_step = s.lr_step if s.lr_step is not None else row.get("lr_step", DEFAULT_LR)
    source = f"stored for {model_id}/{dataset_id}" if row else "default"
    if s.lr is not None or s.lr_step is not None:
        source = f"settings and {source}"
    return dataclasses.replace(s, lr=float(lr), lr_step=float(lr_step)), source
