"""Per-layer sensitivity to low precision: three methods, one row per layer, higher = more sensitive.

- ``eagl``: entropy (bits) of the layer's weights quantized at ``bits`` (EAGL: a layer whose
  quantized weights carry more information needs more bits). No data, no training: seconds.
- ``hessian``: HAWQ-v2's Omega = Tr(H)/n * ||Q(W) - W||^2, the trace of the loss Hessian over
  the layer's weights estimated with Hutchinson's method (Rademacher probes) on a few batches.
- ``alps``: lower one layer to ``bits`` (weights and activations) in a plan that keeps every
  other layer at ``base_bits``, fine-tune briefly, record the validation accuracy drop against
  the same plan with no layer lowered. One job per layer, run in parallel through a JobRunner;
  the test split is left unscored (the drop is measured on validation).

``rank_correlation`` gives Spearman's rho between two methods' scores.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.errors import UserError

METHODS = ("eagl", "alps", "hessian")


@dataclass
class LayerScore:
    layer: str
    kind: str
    params: int
    score: float
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Sensitivity:
    method: str
    model: str
    dataset: str
    rows: list[LayerScore]
    settings: dict = field(default_factory=dict)

    @property
    def scores(self) -> dict[str, float]:
        return {r.layer: r.score for r in self.rows}

    def order(self, most_sensitive_first: bool = False) -> list[str]:
        """Layer names from least to most sensitive (ties: network order)."""
        idx = sorted(range(len(self.rows)), key=lambda i: (self.rows[i].score, i))
        names = [self.rows[i].layer for i in idx]
        return names[::-1] if most_sensitive_first else names

    def ranks(self) -> dict[str, int]:
        """1 = most sensitive."""
        return {n: i + 1 for i, n in enumerate(self.order(most_sensitive_first=True))}

    def to_dict(self) -> dict:
        return {"method": self.method, "model": self.model, "dataset": self.dataset, "settings": self.settings,
                "layers": [dict(r.to_dict(), rank=self.ranks()[r.layer]) for r in self.rows]}


def rank_correlation(a, b) -> float:
    """Spearman's rho between two {layer: score} maps (or Sensitivity objects) over shared layers."""
    sa = a.scores if isinstance(a, Sensitivity) else a
    sb = b.scores if isinstance(b, Sensitivity) else b
    names = [n for n in sa if n in sb]
    if len(names) < 2:
        return float("nan")
    x = _ranks(np.array([sa[n] for n in names], dtype=float))
    y = _ranks(np.array([sb[n] for n in names], dtype=float))
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's rho needs."""
    order = np.argsort(v, kind="mergesort")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    for val in np.unique(v):
        m = v == val
        if m.sum() > 1:
            r[m] = r[m].mean()
    return r


def correlations(results: list[Sensitivity]) -> list[dict]:
    out = []
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            out.append({"a": results[i].method, "b": results[j].method,
                        "spearman": rank_correlation(results[i], results[j])})
    return out


# ---- helpers --------------------------------------------------------------------------------
def _load(model_id: str, dataset_id: str, baseline=None, data=None):
    from engine.models.baselines import load_baseline
    from engine.models.data import load_dataset
    from engine.plans.graph import analyze
    data = data or load_dataset(dataset_id)
    base = baseline if baseline is not None else load_baseline(model_id, dataset_id, data)
    return base, data, analyze(base, data.input_shape)


def _weights(mod: nn.Module) -> list[torch.Tensor]:
    if isinstance(mod, nn.LSTM):
        return [p for n, p in mod.named_parameters() if n.startswith("weight_")]
    return [mod.weight]


def _quantize(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, dequantized) with the per-tensor MSE-optimal symmetric step (as calibration uses)."""
    from engine.quant.lsq import codes, levels, mse_step
    q_n, q_p = levels(bits, signed=True)
    binary = bits == 1
    step = mse_step(w, q_n, q_p, binary=binary)
    c = codes(w.detach(), step, q_n, q_p, binary=binary)
    return c, c.float() * step


def _entropy(c: torch.Tensor) -> float:
    _, counts = torch.unique(c.flatten(), return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * torch.log2(p)).sum())


# ---- EAGL -----------------------------------------------------------------------------------
def eagl(model_id: str, dataset_id: str, bits: int = 4, baseline=None, data=None) -> Sensitivity:
    base, data, topo = _load(model_id, dataset_id, baseline, data)
    rows = []
    with torch.no_grad():
        for layer in topo.layers:
            ws = _weights(base.get_submodule(layer.name))
            c = torch.cat([_quantize(w, bits)[0].flatten() for w in ws])
            h = _entropy(c)
            rows.append(LayerScore(layer.name, layer.kind, int(sum(w.numel() for w in ws)), h,
                                   {"entropy_bits": h, "max_entropy_bits": float(bits)}))
    return Sensitivity("eagl", model_id, dataset_id, rows, {"bits": bits})


# ---- Hessian (HAWQ-v2) ----------------------------------------------------------------------
def hessian(model_id: str, dataset_id: str, bits: int = 4, batches: int = 2, batch_size: int = 256,
            probes: int = 16, seed: int = 0, baseline=None, data=None) -> Sensitivity:
    base, data, topo = _load(model_id, dataset_id, baseline, data)
    import copy
    net = copy.deepcopy(base).eval()
    for p in net.parameters():
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.y_train), generator=gen)[:batches * batch_size]
    xs, ys = data.x_train[idx], data.y_train[idx]
    mods = {layer.name: net.get_submodule(layer.name) for layer in topo.layers}
    params = {n: _weights(m) for n, m in mods.items()}
    flat = [p for n in mods for p in params[n]]
    traces = {n: 0.0 for n in mods}
    with torch.backends.cudnn.flags(enabled=False):
        for b in range(batches):
            xb, yb = xs[b * batch_size:(b + 1) * batch_size], ys[b * batch_size:(b + 1) * batch_size]
            if len(yb) == 0:
                break
            loss = F.cross_entropy(net(xb), yb)
            grads = torch.autograd.grad(loss, flat, create_graph=True)
            for _ in range(probes):
                vs = [torch.randint(0, 2, p.shape, generator=gen).float() * 2 - 1 for p in flat]
                hv = torch.autograd.grad(grads, flat, grad_outputs=vs, retain_graph=True)
                k = 0
                for n in mods:
                    for _p in params[n]:
                        traces[n] += float((vs[k] * hv[k]).sum()) / (probes * batches)
                        k += 1
    rows = []
    for layer in topo.layers:
        ws = params[layer.name]
        n = sum(w.numel() for w in ws)
        with torch.no_grad():
            pert = sum(float(((_quantize(w, bits)[1] - w) ** 2).sum()) for w in ws)
        avg = traces[layer.name] / n
        rows.append(LayerScore(layer.name, layer.kind, int(n), avg * pert,
                               {"trace": traces[layer.name], "avg_trace": avg, "quant_perturbation": pert}))
    return Sensitivity("hessian", model_id, dataset_id, rows,
                       {"bits": bits, "batches": batches, "batch_size": batch_size, "probes": probes, "seed": seed})


# ---- ALPS ----------------------------------------------------------------------------------
def alps_plans(topo, bits: int = 2, base_bits: int = 8) -> dict[str | None, "object"]:
    """{None: reference plan, layer: plan with that one layer lowered}."""
    from engine.plans.plan import Plan
    out = {None: Plan.uniform(base_bits, base_bits, name=f"alps-ref-w{base_bits}a{base_bits}")}
    for layer in topo.layers:
        p = Plan.uniform(base_bits, base_bits, name=f"alps-{layer.name}-w{bits}a{bits}")
        p.layers[layer.name] = {"w_bits": bits, "a_bits": bits}
        out[layer.name] = p
    return out


def alps(model_id: str, dataset_id: str, bits: int = 2, base_bits: int = 8, steps: int = 100, seed: int = 0,
         runner=None, store=None, session: str | None = None, progress=None, baseline=None, data=None,
         distill: bool = False) -> Sensitivity:
    """One short fine-tune per layer (plus the reference), run in parallel; score = val accuracy drop."""
    from engine.evaluation import Settings, code_version, evaluation_key
    from engine.explore.jobs import JobRunner
    base, data, topo = _load(model_id, dataset_id, baseline, data)
    plans = alps_plans(topo, bits, base_bits)
    settings = Settings(steps=steps, seed=seed, distill=distill, score_test=False)   # the score is on validation
    own = runner is None
    runner = runner or JobRunner(store=store)
    results = {}
    try:
        ids = {}
        for layer, plan in plans.items():
            key = evaluation_key(plan.to_dict(), model_id, dataset_id, settings.to_dict(), code_version())
            if store is not None and store.has(key):
                results[layer] = store.get(key)
                if session is not None:
                    store.attach(session, key)
                continue
            ids[layer] = runner.submit(model_id, dataset_id, plan, settings, session=session,
                                       label=f"alps {layer or 'reference'}")
        total = len(plans)
        while ids:
            for layer, jid in list(ids.items()):
                info = runner.wait(jid, 0.2)
                if info.done:
                    if info.result is None or info.result.status == "failed":
                        raise UserError(f"ALPS job for layer {layer or 'reference'} failed: {info.error}")
                    results[layer] = info.result
                    del ids[layer]
            if progress is not None:
                running = [runner.status(j) for j in ids.values()]
                frac = (len(results) + sum(r.progress for r in running)) / total
                progress(frac, f"{len(results)}/{total} fine-tunes done")
    finally:
        if own:
            runner.shutdown()
    ref = results[None].val_accuracy
    rows = []
    for layer in topo.layers:
        ev = results[layer.name]
        ws = _weights(base.get_submodule(layer.name))
        rows.append(LayerScore(layer.name, layer.kind, int(sum(w.numel() for w in ws)), ref - ev.val_accuracy,
                               {"val_accuracy": ev.val_accuracy, "reference_val_accuracy": ref, "key": ev.key}))
    return Sensitivity("alps", model_id, dataset_id, rows,
                       {"bits": bits, "base_bits": base_bits, "steps": steps, "seed": seed, "distill": distill})


def sensitivity(method: str, model_id: str, dataset_id: str, **kw) -> Sensitivity:
    if method not in METHODS:
        raise UserError(f"unknown sensitivity method {method!r}; methods are {', '.join(METHODS)}")
    return {"eagl": eagl, "alps": alps, "hessian": hessian}[method](model_id, dataset_id, **kw)


def finite(x: float) -> float | None:
    return x if isinstance(x, float) and math.isfinite(x) else None
