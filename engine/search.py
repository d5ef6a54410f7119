"""Mixed-precision search: the per-layer search space, the greedy sensitivity path and the joint
multi-objective (NSGA-II) search with estimate-then-fine-tune.

Both searches take an ``evaluate(plans, settings, labels) -> list[Evaluation]`` function (see
``engine.sweep.Sweep.evaluate``), so they never care whether jobs run locally, on Dask or come
back from the store's cache.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .plan import FLOAT_BITS, LayerConfig, Plan

W_BITS = (2, 3, 4, 5, 6, 8)
A_BITS = (2, 4, 8)
WIDEN = (1.0, 2.0)
LADDER = (8, 4, 2)


def plan_label(plan: Plan, names: Sequence[str]) -> str:
    """Compact per-layer label, e.g. 'W4A8x2|W2A2|W8A8'."""
    cfgs = plan.resolve(names)
    parts = []
    for n in names:
        c = cfgs[n]
        s = f"W{c.w_bits if c.w_bits != FLOAT_BITS else 'f'}A{c.a_bits if c.a_bits != FLOAT_BITS else 'f'}"
        if c.widen != 1.0:
            s += f"x{c.widen:g}"
        if c.nm:
            s += f"/{c.sparsity}"
        parts.append(s)
    return "|".join(parts)


@dataclass
class SearchSpace:
    """Per-layer weight/activation bits, widening per channel space, and N:M sparsity where it fits."""

    names: list[str]
    w_bits: tuple[int, ...] = W_BITS
    a_bits: tuple[int, ...] = A_BITS
    widen: tuple[float, ...] = WIDEN
    sparsity: tuple[str, ...] = ("none",)
    widen_spaces: dict[int, list[str]] = field(default_factory=dict)   # space id -> producer layers
    nm_layers: set[str] = field(default_factory=set)

    @classmethod
    def from_topology(cls, topo, w_bits=W_BITS, a_bits=A_BITS, widen=WIDEN, sparsity=("none",)) -> "SearchSpace":
        spaces = {}
        if len(widen) > 1:
            for sid, sp in topo.spaces.items():
                prods = [p for p in sp.producers if p in topo.names]
                if prods and not sp.fixed:
                    spaces[sid] = prods
        nm = set()
        for s in sparsity:
            if s != "none":
                m = int(s.split(":")[1])
                nm |= {layer.name for layer in topo.layers if all(d % m == 0 for d in layer.nm_dims)}
        return cls(topo.names, tuple(w_bits), tuple(a_bits), tuple(widen), tuple(sparsity), spaces, nm)

    def _widen_of(self) -> dict[str, str]:
        return {p: f"space{sid}.widen" for sid, prods in self.widen_spaces.items() for p in prods}

    def suggest(self, trial) -> Plan:
        """A plan from an Optuna trial (categorical parameters: deterministic for a seeded sampler)."""
        return self.plan_from(self._suggest_params(trial))

    def _suggest_params(self, trial) -> dict:
        params = {}
        for n in self.names:
            params[f"{n}.w"] = trial.suggest_categorical(f"{n}.w", list(self.w_bits))
            params[f"{n}.a"] = trial.suggest_categorical(f"{n}.a", list(self.a_bits))
            if n in self.nm_layers and len(self.sparsity) > 1:
                params[f"{n}.sp"] = trial.suggest_categorical(f"{n}.sp", list(self.sparsity))
        for sid in self.widen_spaces:
            params[f"space{sid}.widen"] = trial.suggest_categorical(f"space{sid}.widen", list(self.widen))
        return params

    def plan_from(self, params: dict, name: str | None = None) -> Plan:
        wid = self._widen_of()
        configs = {}
        for n in self.names:
            configs[n] = LayerConfig(w_bits=int(params[f"{n}.w"]), a_bits=int(params[f"{n}.a"]),
                                     widen=float(params.get(wid.get(n, ""), 1.0)),
                                     sparsity=params.get(f"{n}.sp", "none"))
        return Plan.explicit(configs, name=name)

    def uniform_params(self, w: int, a: int, k: float = 1.0) -> dict:
        """Parameters of a uniform plan (for seeding a search), snapped to the nearest choices."""
        snap = lambda v, opts: min(opts, key=lambda o: (abs(o - v), -o))  # noqa: E731
        p = {}
        for n in self.names:
            p[f"{n}.w"], p[f"{n}.a"] = snap(w, self.w_bits), snap(a, self.a_bits)
            if n in self.nm_layers and len(self.sparsity) > 1:
                p[f"{n}.sp"] = "none"
        for sid in self.widen_spaces:
            p[f"space{sid}.widen"] = snap(k, self.widen)
        return p

    def random_params(self, rng: np.random.Generator) -> dict:
        class _T:
            def suggest_categorical(self, _name, choices):
                return choices[int(rng.integers(len(choices)))]
        return self._suggest_params(_T())


def nondominated_ranks(values: np.ndarray) -> np.ndarray:
    """Front index (0 = Pareto front) of every row; all objectives maximised; NaN rows last."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    rank = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    ok = np.all(np.isfinite(v), axis=1)
    left = set(np.flatnonzero(ok).tolist())
    r = 0
    while left:
        idx = np.array(sorted(left))
        g = v[idx]
        ge = np.all(g[None, :, :] >= g[:, None, :], axis=2)
        gt = np.any(g[None, :, :] > g[:, None, :], axis=2)
        dominated = np.any(ge & gt, axis=1)
        front = idx[~dominated]
        rank[front] = r
        left -= set(front.tolist())
        r += 1
    return rank


def select_promising(values: np.ndarray, k: int) -> list[int]:
    """k row indices: whole non-dominated fronts in order, the last front thinned evenly along its
    first objective (so the fine-tuned set spans the whole throughput range)."""
    ranks = nondominated_ranks(values)
    chosen: list[int] = []
    for r in sorted(set(ranks[ranks < np.iinfo(np.int64).max].tolist())):
        front = [int(i) for i in np.flatnonzero(ranks == r)]
        front.sort(key=lambda i: (values[i][1], values[i][0]))
        room = k - len(chosen)
        if room <= 0:
            break
        if len(front) <= room:
            chosen += front
        else:
            pos = np.linspace(0, len(front) - 1, room)
            chosen += [front[int(round(p))] for p in pos]
    return chosen


# ---- greedy path ------------------------------------------------------------------------------
def greedy_plans(names: Sequence[str], order: Sequence[str], ladder: Sequence[int] = LADDER,
                 activations: bool = True) -> list[Plan]:
    """The greedy path: start uniform at ladder[0], then lower one layer at a time, least sensitive
    first, to each next rung; every step is a plan (1 + layers x (rungs - 1) plans)."""
    missing = [n for n in names if n not in order]
    order = list(order) + missing
    bits = {n: ladder[0] for n in names}
    plans = []

    def snap(i):
        cfgs = {n: LayerConfig(w_bits=bits[n], a_bits=bits[n] if activations else FLOAT_BITS) for n in names}
        return Plan.explicit(cfgs, name=f"greedy-{i}")
    plans.append(snap(0))
    for rung in ladder[1:]:
        for n in order:
            bits[n] = rung
            plans.append(snap(len(plans)))
    return plans


def greedy_search(evaluate: Callable, names: Sequence[str], order: Sequence[str], settings,
                  ladder: Sequence[int] = LADDER, budget: int | None = None):
    plans = greedy_plans(names, order, ladder)
    if budget is not None:
        plans = plans[:max(1, budget)]
    evs = evaluate(plans, settings, [f"greedy {i}" for i in range(len(plans))])
    return plans, evs


# ---- joint multi-objective search ---------------------------------------------------------------
def joint_search(evaluate: Callable, space: SearchSpace, objective: Callable, estimate_settings, finetune_settings,
                 budget: int, finetune: int, sampler: str = "nsga2", seed: int = 0, population: int | None = None,
                 seeds: Sequence[tuple[int, int, float]] = ((8, 8, 1.0), (4, 4, 1.0), (2, 2, 1.0))):
    """NSGA-II (or random) over the space, each candidate scored by the no-training estimate; then
    the ``finetune`` most promising (by non-dominated rank of estimate x objective) are fine-tuned.

    ``objective(plan, ev) -> tuple`` gives the cost objectives to maximise (e.g. throughput, or
    -size). Returns (estimate plans, estimate evaluations, fine-tune plans, fine-tune evaluations).
    """
    import optuna
    from optuna.trial import TrialState
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pop = population or max(4, min(16, budget // 3))
    n_obj = 1 + len(objective(space.plan_from(space.uniform_params(8, 8)), None))
    if sampler == "nsga2":
        smp = optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)
    elif sampler == "random":
        smp = optuna.samplers.RandomSampler(seed=seed)
    else:
        raise ValueError(f"unknown sampler {sampler!r}")
    study = optuna.create_study(directions=["maximize"] * n_obj, sampler=smp)
    for w, a, k in seeds[:budget]:
        study.enqueue_trial(space.uniform_params(w, a, k), skip_if_exists=True)
    est_plans, est_evs, values = [], [], []
    done = 0
    while done < budget:
        n = min(pop, budget - done)
        trials = [study.ask() for _ in range(n)]
        plans = [space.suggest(t) for t in trials]
        evs = evaluate(plans, estimate_settings, [f"{sampler} {done + i}" for i in range(n)])
        for t, p, ev in zip(trials, plans, evs):
            if ev.status == "failed" or ev.val_accuracy is None:
                study.tell(t, state=TrialState.FAIL)
                values.append([math.nan] * n_obj)
            else:
                v = [ev.val_accuracy, *objective(p, ev)]
                study.tell(t, v)
                values.append(v)
            est_plans.append(p)
            est_evs.append(ev)
        done += n
    # the most promising, deduplicated by plan
    vals = np.array(values, dtype=float).reshape(-1, n_obj)
    seen, uniq = set(), []
    for i, p in enumerate(est_plans):
        d = p.digest()
        if d not in seen:
            seen.add(d)
            uniq.append(i)
    picks = [uniq[j] for j in select_promising(vals[uniq], finetune)] if finetune > 0 else []
    ft_plans = [est_plans[i] for i in picks]
    ft_evs = evaluate(ft_plans, finetune_settings, [f"{sampler} fine-tune {i}" for i in picks]) if ft_plans else []
    return est_plans, est_evs, ft_plans, ft_evs
