"""Where the shipped assets (FP32 baselines, accelerator profiles) live.

A checkout reads the repository's top-level data/; a wheel carries the same files inside the
engine package (engine/_data, copied there by setup.py's build step); BITSCAPE_DATA overrides both.
"""
from __future__ import annotations

import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def data_dir() -> Path:
    env = os.environ.get("BITSCAPE_DATA")
    if env:
        return Path(env)
    packaged = _HERE / "_data"
    return packaged if packaged.is_dir() else _HERE.parent / "data"
