"""Checkpoints as safetensors (no pickle) with bitscape metadata; .pt files load weights_only.

Planned checkpoints (a fine-tuned network with its plan, written by `bitscape finetune --save`)
are saved, checked and rebuilt here: ``save_planned``, ``planned_meta``, ``load_planned``.

A checkpoint carries a sha256 of its tensors and metadata, checked on load: a damaged or
edited file is refused with one line instead of silently giving other weights. The hash
detects accidents and naive edits, not a forger (who can recompute it): checkpoints are
data, and the names in them are resolved only against the zoo (see README, Trust model).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import UserError
from engine.evaluation import Settings
from engine.fileio import atomic_write_bytes, load_json
from engine.plans.plan import Plan

META_KEY = "bitscape"
HASH_KEY = "bitscape.sha256"


def content_hash(state: dict[str, torch.Tensor], meta_text: str) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (in name order) and the metadata text."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(meta_text.encode())
    return h.hexdigest()


def save_state(path: str | Path, state: dict[str, torch.Tensor], meta: dict) -> None:
    """Write tensors, a JSON metadata blob and their content hash atomically."""
    from safetensors.torch import save
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)}
    text = json.dumps(meta)
    atomic_write_bytes(path, save(tensors, metadata={META_KEY: text, HASH_KEY: content_hash(tensors, text)}))


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a checkpoint; a missing, corrupt, edited or all-NaN file is a clear error."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint {str(p)!r} does not exist" + (" (it is a directory)" if p.is_dir() else ""))
    if p.suffix in (".pt", ".pth"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"checkpoint {str(p)!r} cannot be read as a weights-only torch file: "
                            f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
        if isinstance(obj, dict) and "state_dict" in obj:
            state, meta = obj["state_dict"], obj.get("meta", {})
        elif isinstance(obj, dict):
            state, meta = obj, {}
        else:
            raise UserError(f"checkpoint {str(p)!r} does not hold a state dict")
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise UserError(f"checkpoint {str(p)!r} does not hold a state dict of named tensors")
        if not isinstance(meta, dict):
            raise UserError(f"checkpoint {str(p)!r}: its metadata must be a JSON object")
        _check_finite(state, p)
        return state, meta
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load
    try:
        state = load(p.read_bytes())
        with safe_open(str(p), framework="pt") as f:
            md = f.metadata() or {}
    except (SafetensorError, ValueError, OSError) as e:
        raise UserError(f"checkpoint {str(p)!r} is not a valid safetensors file: {str(e)[:200]}") from None
    text = md.get(META_KEY, "{}")
    meta = load_json(text, f"checkpoint {str(p)!r}: its metadata", constants=True)
    if not isinstance(meta, dict):
        raise UserError(f"checkpoint {str(p)!r}: its metadata must be a JSON object, not {type(meta).__name__}")
    stored = md.get(HASH_KEY)
    if stored is not None and stored != content_hash(state, text):
        raise UserError(f"checkpoint {str(p)!r} is damaged or was modified: its content hash does not match")
    _check_finite(state, p)
    return state, meta


def _check_finite(state: dict[str, torch.Tensor], p: Path) -> None:
    """Weights with NaN or infinite values give a network that answers at chance: refuse them."""
    for name, t in state.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise UserError(f"checkpoint {str(p)!r}: tensor {name[:80]!r} holds NaN or infinite values")


def checkpoint_meta(run) -> dict:
    """The metadata a planned checkpoint carries: its plan, model, dataset, settings and record."""
    ev = run.evaluation
    return {"kind": "planned-model", "plan": ev.plan, "model": ev.model, "dataset": ev.dataset,
            "settings": ev.settings, "evaluation": ev.to_dict()}


def save_planned(run, path) -> None:
    """Save a run's (``engine.explore.pipeline.Run``) fine-tuned network with its plan embedded."""
    if run.applied is None:
        raise ValueError("this run produced no network to save")
    save_state(path, run.applied.model.state_dict(), checkpoint_meta(run))


@dataclass
class PlannedMeta:
    """The checked metadata of a planned checkpoint: what it may be rebuilt from."""

    plan: Plan
    model: str
    dataset: str
    settings: Settings
    meta: dict


def planned_meta(meta, path) -> PlannedMeta:
    """Check a planned checkpoint's metadata completely before anything is built from it: a
    plan, a zoo model (or one the user allowed), a built-in dataset, valid settings."""
    from engine.errors import UserError
    from engine.models.data import check_dataset_name
    from engine.models.zoo import check_model_name
    from engine.plans.plan import PlanError
    where = f"checkpoint {str(path)!r}"
    if not isinstance(meta, dict) or meta.get("kind") != "planned-model":
        raise UserError(f"{where} is not a planned model written by `bitscape finetune --save` (it carries no plan)")
    if "plan" not in meta:
        raise UserError(f"{where} carries no plan in its metadata")
    try:
        plan = Plan.from_dict(meta["plan"])
    except PlanError as e:
        raise UserError(f"{where}: its plan is invalid: {e}") from None
    model = check_model_name(meta.get("model"), f"{where}: ")
    dataset = check_dataset_name(meta.get("dataset"), f"{where}: ")
    try:
        plan.check_model(model)
        settings = Settings.from_dict(meta.get("settings", {}))
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}") from None
    if not isinstance(meta.get("evaluation", {}), dict):
        raise UserError(f"{where}: its 'evaluation' must be an object")
    return PlannedMeta(plan, model, dataset, settings, meta)


def load_planned(path, data=None) -> tuple:
    """Rebuild a network saved by ``save_planned`` (an ``Applied`` and its metadata): same plan, same
    shapes, saved weights; ``data`` (a Dataset) gives the input shape, else the saved dataset is loaded."""
    from engine.errors import UserError
    from engine.models.data import load_dataset
    from engine.models.zoo import build_model
    from engine.plans.apply import apply_plan
    state, meta = load_state(path)
    pm = planned_meta(meta, path)
    plan, settings = pm.plan, pm.settings
    data = data or load_dataset(pm.dataset)
    base = build_model(pm.model, data.input_shape, data.num_classes).eval()
    applied = apply_plan(base, plan, data.input_shape, seed=settings.seed)
    # masks are recomputed from random weights above; the saved tensors replace them
    mods = dict(applied.model.named_modules())
    for key, t in state.items():
        owner, _, attr = key.rpartition(".")
        mod = mods.get(owner)
        if mod is not None and attr.startswith("mask") and getattr(mod, attr, None) is None:
            setattr(mod, attr, torch.zeros_like(t))
    try:
        applied.model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"checkpoint {str(path)!r} does not match its plan: {str(e).splitlines()[0]}") from None
    applied.model.eval()
    return applied, meta
