"""The Evaluation: the one record that travels from the engine to the store, sweeps and views."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass
class Settings:
    """How a plan is evaluated: the fine-tuning budget and method."""

    steps: int = 400                # 0 = no-training estimate (calibrate, evaluate)
    batch_size: int = 64
    lr: float = 1e-3
    lr_step: float = 1e-3           # learning rate of the quantizers' step sizes
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

    def __post_init__(self):
        if self.eval_limit is not None and (isinstance(self.eval_limit, bool) or not isinstance(self.eval_limit, int)
                                            or self.eval_limit < 1):
            raise ValueError(f"eval_limit must be a positive integer or None, got {self.eval_limit!r}")

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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown setting {sorted(unknown)[0]!r}")
        return cls(**d)


_LATER_DEFAULTS = {"eval_limit": None, "score_test": True}


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
    def key(self) -> str:
        """Cache key: plan, model, dataset, settings (seed included) and code version."""
        return evaluation_key(self.plan, self.model, self.dataset, self.settings,
                              self.provenance.get("code_version", code_version()))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["key"] = self.key
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
