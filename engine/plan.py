"""Per-layer plans: what precision, width and sparsity each layer gets.

A plan is data (versioned JSON), in the spirit of torchao's per-layer config map: a
``default`` config plus ``layers`` overrides keyed by exact layer name or by a glob
pattern. Exact names win over patterns; matching patterns apply in file order.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from engine.fileio import clip, load_json

PLAN_VERSION = 1
FLOAT_BITS = 32
BIT_CHOICES = tuple(range(1, 9)) + (FLOAT_BITS,)
QUANTIZERS = ("lsq", "wrpn", "binary", "ternary")
MAX_WIDEN = 8.0
MAX_PLAN_BYTES = 1_000_000
_NM = re.compile(r"^(\d{1,3}):(\d{1,3})$")   # bounded: "1:999...9" must not reach int()
_GLOB_CHARS = set("*?[")


class PlanError(ValueError):
    """A plan is malformed or does not fit the model; the message names what and where."""


def _bits_ok(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v in BIT_CHOICES


@dataclass(frozen=True)
class LayerConfig:
    """Everything the engine applies to one layer."""

    w_bits: int = FLOAT_BITS
    a_bits: int = FLOAT_BITS
    widen: float = 1.0
    sparsity: str = "none"          # "none" | "unstructured" | "N:M", e.g. "2:4"
    sparsity_fraction: float = 0.0  # fraction of weights zeroed, for "unstructured"
    quantizer: str = "lsq"          # weight quantizer: lsq | wrpn | binary | ternary
    per_channel: bool = False       # LSQ: one step per output channel

    def check(self, where: str) -> None:
        """Raise PlanError naming ``where`` and the field if any value is out of range."""
        if not _bits_ok(self.w_bits):
            raise PlanError(f"{where}: w_bits={clip(self.w_bits)} is outside 1..8 or 32")
        if not _bits_ok(self.a_bits):
            raise PlanError(f"{where}: a_bits={clip(self.a_bits)} is outside 1..8 or 32")
        if (isinstance(self.widen, bool) or not isinstance(self.widen, (int, float))
                or not math.isfinite(self.widen) or not 1.0 <= self.widen <= MAX_WIDEN):
            raise PlanError(f"{where}: widen={clip(self.widen)} is outside 1..{MAX_WIDEN:g}")
        if self.quantizer not in QUANTIZERS:
            raise PlanError(f"{where}: quantizer={clip(self.quantizer)} is not one of {', '.join(QUANTIZERS)}")
        if self.quantizer == "binary" and self.w_bits != 1:
            raise PlanError(f"{where}: quantizer='binary' needs w_bits=1 (got {self.w_bits})")
        if self.quantizer == "ternary" and self.w_bits != 2:
            raise PlanError(f"{where}: quantizer='ternary' needs w_bits=2 (got {self.w_bits})")
        if not isinstance(self.per_channel, bool):
            raise PlanError(f"{where}: per_channel={clip(self.per_channel)} must be true or false")
        frac = self.sparsity_fraction
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 <= frac < 1.0:
            raise PlanError(f"{where}: sparsity_fraction={clip(frac)} is outside 0..1 (1 excluded)")
        if self.sparsity == "none":
            if frac:
                raise PlanError(f"{where}: sparsity_fraction={frac} needs sparsity='unstructured'")
        elif self.sparsity == "unstructured":
            pass
        elif isinstance(self.sparsity, str) and _NM.match(self.sparsity):
            n, m = self.nm
            if not (1 <= n < m <= 16):
                raise PlanError(f"{where}: sparsity={self.sparsity!r} needs 1 <= N < M <= 16")
            if frac:
                raise PlanError(f"{where}: sparsity_fraction applies to 'unstructured' only, not {self.sparsity!r}")
        else:
            raise PlanError(f"{where}: sparsity={clip(self.sparsity)} is not 'none', 'unstructured' or 'N:M' (e.g. '2:4')")

    @property
    def nm(self) -> tuple[int, int] | None:
        m = _NM.match(self.sparsity) if isinstance(self.sparsity, str) else None
        return (int(m.group(1)), int(m.group(2))) if m else None

    @property
    def density(self) -> float:
        """Fraction of weights kept."""
        if self.nm:
            n, m = self.nm
            return n / m
        return 1.0 - self.sparsity_fraction if self.sparsity == "unstructured" else 1.0

    @property
    def is_float(self) -> bool:
        return self.w_bits == FLOAT_BITS and self.a_bits == FLOAT_BITS

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "LayerConfig":
        return _merge(self, changes, "config")

    def label(self) -> str:
        """Short human label, e.g. 'W4A8 x2 2:4'."""
        s = "FP32" if self.is_float else f"W{self.w_bits}A{self.a_bits}"
        if self.widen != 1:
            s += f" x{self.widen:g}"
        if self.nm:
            s += f" {self.sparsity}"
        elif self.sparsity == "unstructured":
            s += f" sp{self.sparsity_fraction:.0%}"
        return s


_FIELDS = {f.name for f in dataclasses.fields(LayerConfig)}


def _merge(base: LayerConfig, changes: Mapping[str, Any], where: str) -> LayerConfig:
    if not isinstance(changes, Mapping):
        raise PlanError(f"{where}: expected an object of layer settings, got {type(changes).__name__}")
    unknown = sorted(set(changes) - _FIELDS)
    if unknown:
        hint = difflib.get_close_matches(unknown[0], sorted(_FIELDS), n=1) if len(unknown[0]) <= 100 else []
        raise PlanError(f"{where}: unknown field {clip(unknown[0])}"
                        + (f" (did you mean {hint[0]!r}?)" if hint else f"; fields are {', '.join(sorted(_FIELDS))}"))
    values = dict(changes)
    if isinstance(values.get("widen"), int) and not isinstance(values.get("widen"), bool):
        values["widen"] = float(values["widen"])
    if values.get("sparsity") in ("none", None) and "sparsity" in values and "sparsity_fraction" not in values:
        values["sparsity_fraction"] = 0.0
    cfg = dataclasses.replace(base, **values)
    cfg.check(where)
    return cfg


def is_pattern(key: str) -> bool:
    return bool(_GLOB_CHARS & set(key))


@dataclass
class Plan:
    """A default LayerConfig plus per-layer overrides (exact names or glob patterns)."""

    default: LayerConfig = field(default_factory=LayerConfig)
    layers: dict[str, dict] = field(default_factory=dict)
    model: str | None = None
    name: str | None = None
    version: int = PLAN_VERSION

    def __post_init__(self):
        self.default.check("default")
        for key, over in self.layers.items():
            _merge(self.default, over, f"layer {clip(key)}")

    def check_model(self, model_id: str) -> None:
        """A plan that names its model fits only that model (a resnet20 plan is refused for lenet5)."""
        if self.model is not None and self.model != model_id:
            raise PlanError(f"this plan is for model {clip(self.model)}, not {clip(model_id)}: "
                            "change or remove its 'model' field")

    # ---- resolution -------------------------------------------------------------------
    def resolve(self, layer_names: Iterable[str]) -> dict[str, LayerConfig]:
        """Config for every named layer; unknown names and patterns that match nothing fail."""
        names = list(layer_names)
        known = set(names)
        for key in self.layers:
            if is_pattern(key):
                if not any(fnmatch.fnmatchcase(n, key) for n in names):
                    raise PlanError(f"pattern {clip(key)} matches no layer; layers are {clip(', '.join(names), 400)}")
            elif key not in known:
                close = difflib.get_close_matches(key, names, n=1, cutoff=0.0) if len(key) <= 200 else []
                raise PlanError(f"unknown layer {clip(key)}" + (f" (closest: {close[0]!r})" if close else ""))
        out = {}
        for n in names:
            cfg = self.default
            for key, over in self.layers.items():
                if is_pattern(key) and fnmatch.fnmatchcase(n, key):
                    cfg = _merge(cfg, over, f"layer {clip(n)} (via {clip(key)})")
            if n in self.layers:
                cfg = _merge(cfg, self.layers[n], f"layer {clip(n)}")
            out[n] = cfg
        return out

    # ---- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict:
        d: dict[str, Any] = {"version": self.version}
        if self.name is not None:
            d["name"] = self.name
        if self.model is not None:
            d["model"] = self.model
        d["default"] = self.default.to_dict()
        d["layers"] = {k: dict(v) for k, v in self.layers.items()}
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> "Plan":
        if not isinstance(d, Mapping):
            raise PlanError(f"a plan must be a JSON object, got {type(d).__name__}")
        allowed = {"version", "name", "model", "default", "layers"}
        extra = sorted(map(str, set(d) - allowed))
        if extra:
            raise PlanError(f"unknown top-level key {clip(extra[0])}; allowed keys are {', '.join(sorted(allowed))}")
        if "version" not in d:
            raise PlanError("plan has no 'version' field")
        if type(d["version"]) is not int or d["version"] != PLAN_VERSION:   # true and 1.0 equal 1
            raise PlanError(f"plan version {clip(d['version'])} is not supported (this bitscape reads version {PLAN_VERSION})")
        for key in ("name", "model"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise PlanError(f"'{key}' must be a string")
        default = _merge(LayerConfig(), d.get("default", {}), "default")
        layers = d.get("layers", {})
        if not isinstance(layers, Mapping):
            raise PlanError("'layers' must be an object mapping layer names or patterns to settings")
        for k in layers:
            if not isinstance(k, str) or not k:
                raise PlanError(f"layer key {clip(k)} must be a non-empty string")
        return cls(default=default, layers={k: dict(v) if isinstance(v, Mapping) else v for k, v in layers.items()},
                   model=d.get("model"), name=d.get("name"))

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(load_json(text, "plan", error=PlanError))

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        p = Path(path)
        if not p.is_file():
            raise PlanError(f"plan file {str(p)!r} does not exist")
        size = p.stat().st_size
        if size > MAX_PLAN_BYTES:
            raise PlanError(f"plan file {str(p)!r} is {size} bytes; plans larger than {MAX_PLAN_BYTES} bytes are refused")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise PlanError(f"plan file {str(p)!r} is not UTF-8 text") from None
        return cls.from_json(text)

    def save(self, path: str | Path) -> None:
        """Write atomically: a failure never leaves a half-written plan."""
        from engine.fileio import atomic_write_text
        atomic_write_text(path, self.to_json() + "\n")

    def digest(self) -> str:
        """Stable short hash of the plan's content (name excluded)."""
        d = self.to_dict()
        d.pop("name", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    # ---- constructors -----------------------------------------------------------------
    @classmethod
    def explicit(cls, configs: Mapping[str, LayerConfig], model: str | None = None,
                 name: str | None = None, default: LayerConfig | None = None) -> "Plan":
        """A plan that spells every layer out (what `plan template` prints)."""
        default = default or LayerConfig()
        layers = {n: c.to_dict() for n, c in configs.items()}
        return cls(default=default, layers=layers, model=model, name=name)

    @classmethod
    def uniform(cls, w_bits: int, a_bits: int, widen: float = 1.0, sparsity: str = "none",
                sparsity_fraction: float = 0.0, quantizer: str = "lsq", model: str | None = None,
                keep: Mapping[str, LayerConfig] | None = None, name: str | None = None) -> "Plan":
        """Every layer the same, except the layers in ``keep`` (e.g. first/last at 8 bits)."""
        default = LayerConfig(w_bits=w_bits, a_bits=a_bits, widen=float(widen), sparsity=sparsity,
                              sparsity_fraction=sparsity_fraction, quantizer=quantizer)
        default.check("default")
        layers = {n: c.to_dict() for n, c in (keep or {}).items()}
        return cls(default=default, layers=layers, model=model, name=name)


SCHEMA_PATH = Path(__file__).with_name("schemas") / "plan-v1.schema.json"


def plan_schema() -> dict:
    """The published JSON Schema of a plan file (engine/schemas/plan-v1.schema.json)."""
    return json.loads(SCHEMA_PATH.read_text())
