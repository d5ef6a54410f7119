"""Saved networks of evaluated points: one safetensors checkpoint per Evaluation key, beside the store.

A job's worker saves the network it evaluated (fine-tuned, or calibrated for an estimate) as
``<store file>.artifacts/<key>.safetensors``, so a download loads those weights instead of
training again. A point without one (older than this, or imported from a session file) has
no network to export until its fine-tune is run again.
"""
from __future__ import annotations

import re
from pathlib import Path

NO_WEIGHTS = "no saved weights for this point; re-run its fine-tune"
_KEY = re.compile(r"^[0-9a-f]{8,64}$")


def artifacts_dir(store_path: str | Path | None) -> Path | None:
    """The folder of saved networks that goes with a store file (None for an in-memory store)."""
    if store_path is None or str(store_path) == ":memory:":
        return None
    return Path(store_path).expanduser().with_name(Path(store_path).name + ".artifacts")


def artifact_path(store_path: str | Path | None, key: str) -> Path | None:
    """Where the network of the Evaluation with this key is (or would be) saved."""
    folder = artifacts_dir(store_path)
    if folder is None or not _KEY.match(key or ""):
        return None
    return folder / f"{key}.safetensors"


def saved_network(store_path: str | Path | None, key: str) -> Path | None:
    """The saved network of a point, or None when there is none."""
    p = artifact_path(store_path, key)
    return p if p is not None and p.is_file() else None
