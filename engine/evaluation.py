"""The Evaluation: the one record that travels from the engine to the store, sweeps and views."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.fileio import clip

STATUSES = ("estimated", "fine-tuned", "failed")
RECORD_VERSION = 1


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        v = version("bitscape")
    except PackageNotFoundError:
        v = "0+unknown"
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, timeout=5).stdout.strip()
            if sha:
                v += f"+g{sha}"
        except (OSError, subprocess.SubprocessError):
            pass
    return v


DEFAULT_LR = 1e-3


def rates(s: "Settings") -> tuple[float, float]:
    """(lr, lr_step) of ``s``, DEFAULT_LR for either left unset."""
    return (DEFAULT_LR if s.lr is None else s.lr), (DEFAULT_LR if s.lr_step is None else s.lr_step)


@dataclass
class Settings:
    """How a plan is evaluated: the fine-tuning budget and method."""

    steps: int = 400                # 0 = no-training estimate (calibrate, evaluate)
    batch_size: int = 64
    # None: the rate stored for the baseline (data/baselines/rates.json), else DEFAULT_LR
    lr: float | None = None
    lr_step: float | None = None    # learning rate of the quantizers' step sizes
    weight_decay: float = 0.0
    distill: bool = False
    kd_alpha: float = 1.0
    kd_beta: float = 1.0
    temperature: float = 2.0
    init: str = "mse"               # step-size initialisation: "mse" search or LSQ's "lsq" formula
    bn_reestimate: bool = True      # batch-norm statistics recomputed at calibration and after fine-tuning
    seed: int = 0
    calib_batches: int = 4
    eval_limit: int | None = None   # score at most this many validation examples (a fixed subset seeded by seed)
    score_test: bool = True         # False: leave the test split unscored (cheap estimates during a search)
    # the fine-tune stops at whichever comes first: ``steps`` (the cap), ``epochs`` of the training
    # split, or ``patience`` validations in a row without a better score
    epochs: float | None = None
    patience: int | None = None
    val_every: int | None = None    # steps between validations (None: 1/20 of the budget or half an epoch)
    lr_find: bool = False           # choose lr (and lr_step, same ratio) by a short learning-rate range test
    device: str = "cpu"             # "cpu", "cuda", or "auto" (CUDA when torch sees one)
    tier: str = "quick"             # "quick" (interactive budget) or "confirmed" (engine.explore.tiers.CONFIRMED_BUDGET)

    def __post_init__(self):
        if self.tier == "confirmed" and self.steps == 0:
            raise UserError("setting tier=confirmed needs steps above 0: a confirmed point is trained")

    def __setattr__(self, name: str, value) -> None:
        # every assignment is checked (construction, from_dict, the CLI's later edits), so a
        # Settings object never holds a value that could hang or crash a run
        _check_setting(name, value)
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        # settings added after records were first written are left out at their defaults, so a
        # default evaluation keeps the cache key (and stored form) it had before they existed
        for name, default in _LATER_DEFAULTS.items():
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        if not isinstance(d, dict):
            raise UserError(f"settings must be an object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown setting {clip(sorted(map(str, unknown))[0])}")
        return cls(**d)


_LATER_DEFAULTS = {"eval_limit": None, "score_test": True, "epochs": None, "patience": None, "val_every": None,
                   "lr_find": False, "device": "cpu", "tier": "quick"}

MAX_STEPS = 1_000_000
MAX_BATCH = 65_536
MAX_LR = 10.0
INITS = ("mse", "lsq")
DEVICES = ("cpu", "cuda", "auto")
MAX_EPOCHS = 10_000.0
SETTING_TIERS = ("quick", "confirmed")  # "estimated" is no setting: it is any evaluation with steps == 0
# name -> (kind, low, high): ints and floats are closed ranges; "pos" floats exclude 0
_RULES: dict[str, tuple] = {
    "steps": ("int", 0, MAX_STEPS), "batch_size": ("int", 1, MAX_BATCH),
    "lr": ("pos?", 0.0, MAX_LR), "lr_step": ("pos?", 0.0, MAX_LR), "weight_decay": ("float", 0.0, 1.0),
    "kd_alpha": ("float", 0.0, 1000.0), "kd_beta": ("float", 0.0, 1000.0), "temperature": ("pos", 0.0, 1000.0),
    "seed": ("int", 0, 2 ** 63 - 1), "calib_batches": ("int", 1, 10_000),
    "eval_limit": ("int?", 1, 10 ** 9), "patience": ("int?", 1, MAX_STEPS), "val_every": ("int?", 1, MAX_STEPS),
    "epochs": ("pos?", 0.0, MAX_EPOCHS),
    "distill": ("bool",), "bn_reestimate": ("bool",), "score_test": ("bool",), "lr_find": ("bool",),
    "init": ("choice", INITS), "device": ("choice", DEVICES),
    "tier": ("choice", SETTING_TIERS),
}


def _check_setting(name: str, v) -> None:
    """Raise UserError (a ValueError) naming the setting when ``v`` has the wrong type or is out of range."""
    rule = _RULES.get(name)
    if rule is None:
        return
    kind = rule[0]
    if kind == "bool":
        if not isinstance(v, bool):
            raise UserError(f"setting {name} must be true or false, got {clip(v)}")
        return
    if kind == "choice":
        if not isinstance(v, str) or v not in rule[1]:
            raise UserError(f"setting {name}={clip(v)} is not one of {', '.join(rule[1])}")
        return
    if kind in ("int?", "pos?") and v is None:
        return
    lo, hi = rule[1], rule[2]
    if kind in ("int", "int?"):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise UserError(f"setting {name}={clip(v)} must be a whole number in {lo}..{hi:_}"
                             + (" or null" if kind == "int?" else ""))
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi \
            or (kind in ("pos", "pos?") and v <= 0):
        raise UserError(f"setting {name}={clip(v)} must be a finite number "
                         + (f"above 0 and at most {hi:g}" if kind in ("pos", "pos?") else f"in {lo:g}..{hi:g}")
                         + (" or null" if kind == "pos?" else ""))


@dataclass
class Evaluation:
    """A plan evaluated on a model and dataset: accuracy, status, costs and provenance."""

    plan: dict
    model: str
    dataset: str
    settings: dict
    status: str = "estimated"
    reason: str | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    baseline_val_accuracy: float | None = None
    baseline_test_accuracy: float | None = None
    estimate_val_accuracy: float | None = None
    loss_curve: list[float] = field(default_factory=list)
    steps: int = 0
    wall_s: float = 0.0
    costs: dict[str, dict] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = RECORD_VERSION

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")

    @property
    def tier(self) -> str:
        """'estimated', 'quick' or 'confirmed' (see engine.explore.tiers); records written before tiers
        existed have no tier setting and read as quick (or estimated when untrained)."""
        from engine.explore.tiers import tier_of
        return tier_of(self.settings, self.status)

    @property
    def key(self) -> str:
        """Cache key: plan, model, dataset, settings (seed included) and code version."""
        return evaluation_key(self.plan, self.model, self.dataset, self.settings,
                              self.provenance.get("code_version", code_version()))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["key"] = self.key
        d["tier"] = self.tier   # derived (from_dict ignores it): exports and session files carry it
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict) -> "Evaluation":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def evaluation_key(plan: dict, model: str, dataset: str, settings: dict, version: str) -> str:
    p = dict(plan)
    p.pop("name", None)
    blob = json.dumps({"plan": p, "model": model, "dataset": dataset, "settings": settings, "code": version},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def provenance(plan_digest: str, seed: int, model: str, dataset: str) -> dict:
    import torch
    return {"plan_hash": plan_digest, "seed": seed, "model": model, "dataset": dataset,
            "code_version": code_version(), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
