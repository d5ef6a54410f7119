"""The study's machinery: its configuration, tasks run in worker processes, the scheduler, and
small statistics / formatting / plotting helpers shared by the per-claim modules.

A claim module (``engine.study.<name>``) exposes ``ID``, ``TITLE``, ``PAPER``, ``CLAIM``,
``tasks(cfg, ctx, done) -> list[Task]`` (called repeatedly: it returns the tasks whose inputs
are ready; tasks with the same key run once and are shared between claims) and
``section(cfg, ctx, done, plots) -> dict`` (the report section, with a verdict). A module may
also expose ``final(cfg, ctx, done) -> dict`` run in the main process after the pool has
stopped (for measurements that must not share the cores with the study's own workers).
"""
from __future__ import annotations

import importlib
import math
import os
import statistics
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

VERDICTS = ("held", "partly held", "did not hold", "inconclusive")
TOL = 0.5        # accuracy points: "matches" means within this of the reference
BUDGETS = ("quick", "convergent")
# claims whose runs do not depend on the fine-tune budget, or too costly to repeat at one epoch here
QUICK_ONLY = {"mixed": "its frontier needs 7 ALPS fine-tunes and 9 uniform and mixed points per budget",
              "pbatch": "it fine-tunes nothing: bit-planes of the calibrated W8 network",
              "bsq": "its search has its own budget (bsq_steps); the uniform chord is at the quick budget"}


@dataclass(frozen=True)
class Config:
    quick: bool = False
    model: str = "cnn"                 # the CNN of the study
    dataset: str = "fashion-mnist"
    rnn: str = "lstm"
    steps: int = 120                   # fine-tune steps per CNN run (batch 64)
    rnn_steps: int = 300
    alps_steps: int = 60
    bsq_steps: int = 200
    bsq_strength: float = 20.0
    seeds: tuple = (0, 1, 2)           # headline comparisons
    seeds_minor: tuple = (0, 1)        # secondary comparisons
    val_limit: int | None = 2000       # validation subsample (selection only); the test set is whole
    lstm_epochs: float = 4.0
    pb_examples: int = 1000            # test images run through the packed bit-plane kernels
    workers: int = 2
    profile: str = "bitfusion"         # accelerator profile of the mixed-precision frontier
    batch_size: int = 64
    budget: str = "quick"              # "quick" (the interactive budget) or "convergent" (one epoch)

    @classmethod
    def make(cls, quick: bool = False, workers: int | None = None, budget: str = "quick") -> "Config":
        """The study's configuration: ``quick`` is the smoke run on digits; ``budget`` picks the
        fine-tune length of the claims that train (BUDGETS)."""
        if budget not in BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; budgets are {', '.join(BUDGETS)}")
        w = workers if workers is not None else min(2, os.cpu_count() or 1)
        if quick:
            base = cls(quick=True, model="lenet5", dataset="digits", steps=25, rnn_steps=25, alps_steps=10,
                       bsq_steps=25, seeds=(0,), seeds_minor=(0,), val_limit=None, lstm_epochs=2.0,
                       pb_examples=100, workers=w)
            return base if budget == "quick" else replace(base, budget=budget, steps=60, rnn_steps=60)
        if budget == "convergent":
            # one epoch of the 54,000 training images at batch 64, one seed (a 2-core machine's hour)
            return cls(workers=w, budget=budget, steps=844, rnn_steps=844, seeds=(0,), seeds_minor=(0,))
        return cls(workers=w)

    def epochs(self, steps: int, train_size: int) -> float:
        return steps * self.batch_size / max(train_size, 1)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Task:
    key: str
    fn: str                            # "module:function", called as fn(cfg, **kwargs) in a worker
    kwargs: dict = field(default_factory=dict)
    weight: float = 1.0                # rough relative cost (heavier tasks are queued first)


# ============================================================================ worker side

_CTX: dict = {}


def _init_worker() -> None:
    import torch
    torch.set_num_threads(1)


def context(cfg: Config, model: str | None = None):
    """(baseline, data, topology) for ``model`` on the study's dataset, cached per process.

    The validation split is cut to ``cfg.val_limit`` examples (it only steers selection); the
    test split is whole.
    """
    model = model or cfg.model
    key = (model, cfg.dataset, cfg.val_limit)
    if key not in _CTX:
        from engine.models.baselines import load_baseline
        from engine.models.data import Dataset, load_dataset
        from engine.plans.graph import analyze
        full = load_dataset(cfg.dataset)
        data = full
        if cfg.val_limit and len(full.y_val) > cfg.val_limit:
            n = cfg.val_limit
            data = Dataset(full.name, full.x_train, full.y_train, full.x_val[:n], full.y_val[:n], full.x_test,
                           full.y_test, full.num_classes)
        base = load_baseline(model, cfg.dataset, full)
        _CTX[key] = (base, data, analyze(base, data.input_shape))
    return _CTX[key]


def resolve_plan(spec, topo, model: str):
    """A Plan from a preset name, one of the study's names, or a plan dict."""
    from engine.plans.plan import Plan
    from engine.plans.presets import PRESETS, preset_plan
    if isinstance(spec, dict):
        return Plan.from_dict(spec)
    if spec in PRESETS:
        return preset_plan(spec, topo, model)
    if spec == "w3a3":               # as the presets: the network input at 8 bits
        from engine.plans.presets import _input_at
        return _input_at(Plan.uniform(3, 3, model=model, name=spec), 3, topo)
    if spec == "ternary-a8":
        return Plan.uniform(2, 8, quantizer="ternary", model=model, name=spec)
    if spec == "w2a8":
        return Plan.uniform(2, 8, model=model, name=spec)
    if spec.startswith("u-"):          # u-w3a4: uniform
        w, a = spec[3:].split("a")
        return Plan.uniform(int(w), int(a), model=model, name=spec)
    if spec == "2:4-fp32":
        p = preset_plan("2:4-w8a8", topo, model)
        p.default = p.default.replace(w_bits=32, a_bits=32)
        p.name = spec
        return p
    raise ValueError(f"unknown plan spec {spec!r}")


def weight_zero_fraction(applied) -> dict[str, float]:
    """Per quantized layer: fraction of zero quantized weights (what a zero-skipping datapath skips)."""
    import torch

    from engine.plans.apply import quant_layers
    from engine.plans.layers import QuantLSTM
    out = {}
    with torch.no_grad():
        for name, mod in quant_layers(applied.model):
            if isinstance(mod, QuantLSTM):
                ws = [mod.wq_ih(mod.masked("ih")), mod.wq_hh(mod.masked("hh"))]
            else:
                ws = [mod.quant_weight()]
            n = sum(w.numel() for w in ws)
            out[name] = float(sum(int((w == 0).sum()) for w in ws) / max(n, 1))
    return out


def finetune(cfg: Config, model: str, plan, seed: int = 0, steps: int | None = None, distill: bool = False) -> dict:
    """One ``evaluate_plan`` run (steps=0: the no-training estimate) as plain data."""
    from engine.evaluation import Settings
    from engine.explore.pipeline import evaluate_plan
    base, data, topo = context(cfg, model)
    p = resolve_plan(plan, topo, model)
    s = Settings(steps=cfg.steps if steps is None else steps, seed=seed, distill=distill,
                 batch_size=cfg.batch_size)
    run = evaluate_plan(model, cfg.dataset, p, s, baseline=base, data=data)
    ev = run.evaluation
    out = {"status": ev.status, "reason": ev.reason, "test": ev.test_accuracy, "val": ev.val_accuracy,
           "estimate_val": ev.estimate_val_accuracy, "fp32_test": ev.baseline_test_accuracy,
           "fp32_val": ev.baseline_val_accuracy, "steps": ev.steps, "seed": seed, "plan": p.to_dict()}
    if run.applied is not None and ev.status != "failed":
        out["zeros"] = weight_zero_fraction(run.applied)
    return out


def _call(fn: str, cfg: Config, kwargs: dict) -> dict:
    t0 = time.perf_counter()
    try:
        mod, _, name = fn.partition(":")
        res = getattr(importlib.import_module(mod), name)(cfg, **kwargs)
        res = dict(res) if isinstance(res, dict) else {"value": res}
    except Exception as e:
        res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
    res["_wall"] = round(time.perf_counter() - t0, 3)
    return res


# ============================================================================ scheduler

class _Inline:
    """An executor that runs each task when submitted (workers <= 1)."""

    def submit(self, fn, *args):
        f = Future()
        f.set_result(fn(*args))
        return f

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def _executor(workers: int):
    if workers <= 1:
        import torch
        torch.set_num_threads(1)
        return _Inline()
    import multiprocessing as mp
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker)


def execute(cfg: Config, modules, ctx: dict, log=None, done: dict | None = None, save=None) -> dict:
    """Run every module's tasks (shared by key) until none is left; returns {key: result}.

    ``done`` holds results already there (a resumed run: their tasks are not run again);
    ``save(done)`` is called after each finished task.
    """
    log = log or (lambda m: None)
    done = dict(done or {})
    pending: dict[Future, Task] = {}
    seen: set[str] = set(done)
    ex = _executor(cfg.workers)
    try:
        while True:
            new = []
            for m in modules:
                for t in m.tasks(cfg, ctx, done):
                    if t.key not in seen:
                        seen.add(t.key)
                        new.append(t)
            new.sort(key=lambda t: -t.weight)
            for t in new:
                pending[ex.submit(_call, t.fn, cfg, t.kwargs)] = t
            if not pending:
                break
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for f in finished:
                t = pending.pop(f)
                done[t.key] = f.result()
                r = done[t.key]
                what = f"error {r['error']}" if "error" in r else (
                    f"test {100 * r['test']:.2f}%" if isinstance(r.get("test"), float) else "done")
                log(f"[{len(done)}/{len(seen)}] {t.key}: {what} ({r['_wall']:.1f} s)")
                if save is not None:
                    save(done)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    return done


# ============================================================================ statistics

def accs(done: dict, keys, field_: str = "test") -> list[float]:
    """Accuracies (in points) of the finished, non-failed runs among ``keys``."""
    out = []
    for k in keys:
        r = done.get(k)
        if r and "error" not in r and r.get("status") != "failed" and isinstance(r.get(field_), float):
            out.append(100 * r[field_])
    return out


def mean_sd(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt_ms(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    m, s = mean_sd(xs)
    return f"{m:.2f}" if len(xs) == 1 else f"{m:.2f} ± {s:.2f} (n={len(xs)})"


def compare(a: list[float], b: list[float]) -> dict:
    """b - a: the difference of means, its standard error, and whether it clears 2 standard errors
    (``None`` when either side has one run: no noise estimate)."""
    ma, sa = mean_sd(a)
    mb, sb = mean_sd(b)
    d = mb - ma
    if len(a) > 1 and len(b) > 1:
        se = math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))
        sig = abs(d) > 2 * se if se > 0 else d != 0
    else:
        se, sig = float("nan"), None
    return {"diff": d, "se": se, "significant": sig}


def fmt_diff(c: dict) -> str:
    if math.isnan(c["diff"]):
        return "n/a"
    s = f"{c['diff']:+.2f}"
    if c["significant"] is None:
        return s + " (1 seed)"
    return s + (f" (± {c['se']:.2f}, beyond noise)" if c["significant"] else f" (± {c['se']:.2f}, within noise)")


def key_ft(model: str, plan: str, seed: int, steps: int, distill: bool = False) -> str:
    return f"ft|{model}|{plan}|s{seed}|n{steps}|kd{int(distill)}"


def ft_task(cfg: Config, plan, seed: int, steps: int | None = None, distill: bool = False, model: str | None = None,
            label: str | None = None, weight: float = 1.0) -> Task:
    model = model or cfg.model
    steps = cfg.steps if steps is None else steps
    name = label or plan
    return Task(key_ft(model, name, seed, steps, distill), "engine.study.core:finetune",
                {"model": model, "plan": plan, "seed": seed, "steps": steps, "distill": distill},
                weight * (1 + steps / 100) * (1.3 if distill else 1.0))


def errors(done: dict, keys) -> list[str]:
    out = []
    for k in keys:
        r = done.get(k)
        if r is None:
            out.append(f"{k}: missing")
        elif "error" in r:
            out.append(f"{k}: {r['error']}")
        elif r.get("status") == "failed":
            out.append(f"{k}: failed ({r.get('reason')})")
    return out


def fp32_of(done: dict, model: str) -> float | None:
    for k, r in done.items():
        if k.startswith(f"ft|{model}|") and isinstance(r.get("fp32_test"), float):
            return 100 * r["fp32_test"]
    return None


def gather(done: dict, model: str, keys: dict) -> tuple[dict, dict, float | None, list[str]]:
    """Per plan: accuracies of its runs and their mean; the FP32 accuracy; what is missing."""
    problems = errors(done, [k for ks in keys.values() for k in ks])
    fp = fp32_of(done, model)
    if fp is None and not problems:
        problems = ["no FP32 accuracy"]
    a = {p: accs(done, ks) for p, ks in keys.items()}
    return a, {p: mean_sd(v)[0] for p, v in a.items()}, fp, problems


def cost(ctx: dict, model: str, plan, profile: str, configs=None, batch: int | None = None):
    """Cost report of a plan (spec or dict) on a profile, from the main process's topology."""
    from engine.cost import cost_topology
    topo = ctx["topo"][model]
    cfgs = configs if configs is not None else resolve_plan(plan, topo, model).resolve(topo.names)
    return cost_topology(topo, cfgs, profile, batch=batch)


def n_seeds(seeds) -> str:
    n = len(seeds)
    return f"{n} seed" + ("" if n == 1 else "s")


def section(mod, verdict: str, figure: str, table: dict | None = None, notes=(), plots=(), setup: str = "",
            extra: dict | None = None) -> dict:
    """A report section; ``mod`` is the claim module or its name."""
    import sys
    mod = sys.modules[mod] if isinstance(mod, str) else mod
    assert verdict in VERDICTS, verdict
    return {"id": mod.ID, "title": mod.TITLE, "paper": mod.PAPER, "claim": mod.CLAIM, "setup": setup,
            "figure": figure, "verdict": verdict, "table": table, "notes": list(notes), "plots": list(plots),
            "data": extra or {}}


def failed_section(mod, problems: list[str], setup: str = "") -> dict:
    return section(mod, "inconclusive", "runs missing or failed: " + "; ".join(problems[:3]), notes=problems,
                   setup=setup)


# ============================================================================ plotting

def figure(w: float = 5.0, h: float = 3.2):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(w, h), dpi=90)
    ax.grid(alpha=0.3)
    return fig, ax


def save(fig, plots: Path, name: str) -> str:
    import matplotlib.pyplot as plt
    plots.mkdir(parents=True, exist_ok=True)
    path = plots / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def bar_plot(plots: Path, name: str, groups: list[str], series: dict[str, list[list[float]]], ref: float | None,
             title: str, ylabel: str = "test accuracy (%)") -> str:
    """Grouped bars: for each series, mean ± sd over seeds per group; ``ref`` as a dashed line."""
    fig, ax = figure()
    n = max(len(series), 1)
    width = 0.8 / n
    lows = []
    for i, (label, vals) in enumerate(series.items()):
        ms = [mean_sd(v) for v in vals]
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [m if m == m else 0 for m, _ in ms], width, yerr=[s if s == s else 0 for _, s in ms],
               label=label, capsize=2)
        lows += [m for m, _ in ms if m == m]
    if ref is not None:
        ax.axhline(ref, color="k", ls="--", lw=1, label="FP32")
        lows.append(ref)
    if lows:
        ax.set_ylim(max(0.0, min(lows) - 3), min(100.0, max(lows) + 2))
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, plots, name)
