"""Checkpoints as safetensors (no pickle) with bitscape metadata; .pt files load weights_only."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import UserError
from .fileio import atomic_write_bytes

META_KEY = "bitscape"


def save_state(path: str | Path, state: dict[str, torch.Tensor], meta: dict) -> None:
    """Write tensors and a JSON metadata blob atomically."""
    from safetensors.torch import save
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)}
    atomic_write_bytes(path, save(tensors, metadata={META_KEY: json.dumps(meta)}))


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a checkpoint; a missing or corrupt file is a clear error."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint {str(p)!r} does not exist")
    if p.suffix in (".pt", ".pth"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many kinds on bad files
            raise UserError(f"checkpoint {str(p)!r} cannot be read as a weights-only torch file: {e}") from None
        if isinstance(obj, dict) and "state_dict" in obj:
            return obj["state_dict"], obj.get("meta", {})
        if not isinstance(obj, dict):
            raise UserError(f"checkpoint {str(p)!r} does not hold a state dict")
        return obj, {}
    from safetensors import SafetensorError
    from safetensors.torch import load
    try:
        data = p.read_bytes()
        state = load(data)
        from safetensors import safe_open
        with safe_open(str(p), framework="pt") as f:
            md = f.metadata() or {}
        meta = json.loads(md.get(META_KEY, "{}"))
    except (SafetensorError, ValueError, OSError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint {str(p)!r} is not a valid safetensors file: {e}") from None
    return state, meta
