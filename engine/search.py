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


def crowding_distance(values: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row within its set (boundary rows: infinity)."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    d = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(v.shape[1]):
        order = np.argsort(v[:, j], kind="mergesort")
        lo, hi = v[order[0], j], v[order[-1], j]
        d[order[0]] = d[order[-1]] = np.inf
        if hi > lo:
            d[order[1:-1]] += (v[order[2:], j] - v[order[:-2], j]) / (hi - lo)
    return d


def select_promising(values: np.ndarray, k: int) -> list[int]:
    """k row indices by NSGA-II survivor selection: whole non-dominated fronts in order, the last
    front that does not fit thinned by crowding distance (extremes first, then the least crowded)."""
    ranks = nondominated_ranks(values)
    v = np.asarray(values, dtype=float)
    chosen: list[int] = []
    for r in sorted(set(ranks[ranks < np.iinfo(np.int64).max].tolist())):
        room = k - len(chosen)
        if room <= 0:
            break
        front = np.flatnonzero(ranks == r)
        if len(front) <= room:
            chosen += [int(i) for i in front]
        else:
            cd = crowding_distance(v[front])
            order = sorted(range(len(front)), key=lambda j: (-cd[j], j))
            chosen += [int(front[j]) for j in order[:room]]
    return chosen


def hv_gain_picks(pred: np.ndarray, current: np.ndarray, ref: Sequence[float], k: int) -> list[int]:
    """Up to k rows of ``pred`` chosen greedily by how much each adds to the hypervolume (all
    objectives maximised, bounded by ``ref``) of ``current`` plus the rows already chosen; stops
    when nothing adds volume."""
    from .frontier import hypervolume
    ref = np.asarray(ref, dtype=float)
    cur = np.asarray(current, dtype=float).reshape(-1, len(ref))
    pred = np.asarray(pred, dtype=float).reshape(-1, len(ref))
    hv = lambda pts: hypervolume(pts, ref, maximize=[True] * len(ref)) if len(pts) else 0.0  # noqa: E731
    base = hv(cur)
    chosen: list[int] = []
    for _ in range(k):
        best, gain = None, 0.0
        for i in range(len(pred)):
            if i in chosen or not np.all(np.isfinite(pred[i])):
                continue
            g = hv(np.vstack([cur, pred[i:i + 1]])) - base
            if g > gain * (1 + 1e-12):
                best, gain = i, g
        if best is None:
            break
        chosen.append(best)
        cur = np.vstack([cur, pred[best:best + 1]])
        base += gain
    return chosen


class FinetunePredictor:
    """Fine-tuned validation accuracy predicted from the no-training estimate: a least-squares line
    through the (estimate, fine-tuned) pairs seen so far (slope kept in [0, 1.5]), or a mean offset
    with fewer than two distinct estimates; never above the best fine-tuned accuracy seen (the
    line is not trusted beyond its data, where accuracy saturates)."""

    def __init__(self, est: Sequence[float], tuned: Sequence[float]):
        e, t = np.asarray(est, dtype=float), np.asarray(tuned, dtype=float)
        ok = np.isfinite(e) & np.isfinite(t)
        e, t = e[ok], t[ok]
        self.slope, self.offset = 1.0, float(np.mean(t - e)) if len(e) else 0.0
        self.cap = float(t.max()) if len(t) else 1.0
        if len(e) >= 2 and np.ptp(e) > 1e-9:
            b = float(np.clip(np.polyfit(e, t, 1)[0], 0.0, 1.5))
            self.slope, self.offset = b, float(np.mean(t - b * e))

    def __call__(self, est) -> np.ndarray:
        return np.clip(self.slope * np.asarray(est, dtype=float) + self.offset, 0.0, self.cap)


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
UNIFORM_SEEDS = ((8, 8, 1.0), (4, 4, 1.0), (2, 2, 1.0), (8, 8, 2.0), (4, 4, 2.0), (2, 2, 2.0))


def _choices(space: SearchSpace, key: str) -> list:
    if key.endswith(".widen"):
        return list(space.widen)
    if key.endswith(".sp"):
        return list(space.sparsity)
    return list(space.w_bits if key.endswith(".w") else space.a_bits)


def vary(space: SearchSpace, parents: Sequence[dict], rng: np.random.Generator) -> dict:
    """One NSGA-II-style offspring of ``parents`` (parameter dicts): uniform crossover of two parents
    (half the time), then one or two genes moved to a neighbouring choice (bits up/down a notch,
    widening or sparsity switched)."""
    a = parents[int(rng.integers(len(parents)))]
    child = dict(a)
    if len(parents) > 1 and rng.random() < 0.5:
        b = parents[int(rng.integers(len(parents)))]
        child = {k: (a[k] if rng.random() < 0.5 else b.get(k, a[k])) for k in a}
    keys = sorted(child)
    for _ in range(1 + int(rng.random() < 0.5)):
        k = keys[int(rng.integers(len(keys)))]
        opts = _choices(space, k)
        if len(opts) < 2:
            continue
        i = opts.index(child[k]) if child[k] in opts else 0
        j = i + (1 if rng.random() < 0.5 else -1)
        child[k] = opts[j if 0 <= j < len(opts) else i - (j - i)]
    return child


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def joint_search(evaluate: Callable, space: SearchSpace, objective: Callable, estimate_settings, finetune_settings,
                 budget: int, finetune: int, sampler: str = "nsga2", seed: int = 0, population: int | None = None,
                 seeds: Sequence[tuple[int, int, float]] = UNIFORM_SEEDS, rounds: int | None = None,
                 acc_margin: float = 0.10):
    """Estimate-then-fine-tune search over the space, in rounds.

    Round 1: NSGA-II (or random sampling) over candidates scored by the no-training estimate, both
    starting from the same generation 0 (the uniform ``seeds`` plus random plans); its share of the fine-tunes goes to the
    most promising by non-dominated rank and crowding distance of (estimate, cost objectives).
    Each later round is a generation seeded by the fine-tuned results: offspring of the fine-tuned
    front and of the best-predicted candidates (crossover + neighbour mutation; ``random``: fresh
    random samples instead), estimated; then a line fitted to the (estimate, fine-tuned) pairs so
    far predicts every unfine-tuned candidate's fine-tuned accuracy, and the round's fine-tunes go
    to the candidates that add most to the hypervolume of the fine-tuned front (reference:
    baseline validation accuracy - ``acc_margin``, costs 0), by rank and crowding when none adds.

    ``budget`` estimates and ``finetune`` fine-tunes in all, whatever the sampler. ``rounds``
    defaults to one per two fine-tunes (at most 3); later rounds share a third of the estimates.
    Every estimated plan is new (no plan is estimated twice); seeded, so a rerun proposes the same.
    ``objective(plan, ev) -> tuple`` gives the cost objectives to maximise (e.g. throughput, or
    -size). Returns (estimate plans, estimate evaluations, fine-tune plans, fine-tune evaluations).
    """
    if sampler not in ("nsga2", "random"):
        raise ValueError(f"unknown sampler {sampler!r}")
    rounds = rounds or max(1, min(3, finetune // 2))
    rounds = max(1, min(rounds, max(finetune, 1), budget))
    ft_split = _split(max(finetune, 0), rounds)
    later = _split(budget // 3, rounds - 1) if rounds > 1 else []
    later = [max(1, n) for n in later]
    first = max(1, budget - sum(later))
    pop = population or min(16, max(len(seeds) + 2, first // 4))
    n_obj = 1 + len(objective(space.plan_from(space.uniform_params(8, 8)), None))
    rng = np.random.default_rng(seed + 7919)

    cands: list[dict] = []            # params, plan, est (ev), est_v (values), ft (ev), ft_v (values)
    seen: set[str] = set()
    est_plans, est_evs, ft_plans, ft_evs = [], [], [], []

    def values_of(plan, ev):
        if ev is None or ev.status == "failed" or ev.val_accuracy is None:
            return [math.nan] * n_obj
        return [ev.val_accuracy, *objective(plan, ev)]

    def estimate(params_list, labels):
        plans = [space.plan_from(p) for p in params_list]
        evs = evaluate(plans, estimate_settings, labels)
        out = []
        for p, plan, ev in zip(params_list, plans, evs):
            est_plans.append(plan)
            est_evs.append(ev)
            v = values_of(plan, ev)
            d = plan.digest()
            if d not in seen:
                seen.add(d)
                cands.append({"params": p, "plan": plan, "est": ev, "est_v": v, "ft": None, "ft_v": None})
            out.append(v)
        return out

    def fine_tune(idx):
        if not idx:
            return
        plans = [cands[i]["plan"] for i in idx]
        evs = evaluate(plans, finetune_settings, [f"{sampler} fine-tune {len(ft_plans) + j}" for j in range(len(idx))])
        for i, plan, ev in zip(idx, plans, evs):
            cands[i]["ft"], cands[i]["ft_v"] = ev, values_of(plan, ev)
            ft_plans.append(plan)
            ft_evs.append(ev)

    def fresh(n, make):
        out = []
        tries = 0
        while len(out) < n and tries < 50 * n + 50:
            tries += 1
            child = make()
            d = space.plan_from(child).digest()
            if d not in seen and all(space.plan_from(o).digest() != d for o in out):
                out.append(child)
        return out

    # round 1: generation 0 = the uniform seeds topped up with random plans (the same for both
    # samplers); then NSGA-II generations (binary tournaments on rank and crowding, crossover,
    # neighbour mutation, survivors by rank and crowding) or, for ``random``, random plans
    gen0 = [space.uniform_params(w, a, k) for w, a, k in seeds[:first]]
    gen0 = [p for i, p in enumerate(gen0) if all(space.plan_from(q).digest() != space.plan_from(p).digest()
                                                 for q in gen0[:i])]
    gen0 += fresh(max(0, min(pop, first) - len(gen0)), lambda: space.random_params(rng))
    vals = estimate(gen0, [f"{sampler} {i}" for i in range(len(gen0))])
    population_ = [(p, v) for p, v in zip(gen0, vals)]
    done = len(gen0)
    while done < first:
        n = min(pop, first - done)
        if sampler == "nsga2":
            pv = np.array([v for _, v in population_], dtype=float).reshape(-1, n_obj)
            rank = nondominated_ranks(pv)
            crowd = np.zeros(len(pv))
            for r in set(rank.tolist()):
                m = rank == r
                crowd[m] = crowding_distance(pv[m])

            def tournament():
                i, j = rng.integers(len(population_), size=2)
                better = i if (rank[i], -crowd[i]) <= (rank[j], -crowd[j]) else j
                return population_[int(better)][0]
            kids = fresh(n, lambda: vary(space, [tournament(), tournament()], rng))
        else:
            kids = fresh(n, lambda: space.random_params(rng))
        if not kids:
            break
        vals = estimate(kids, [f"{sampler} {done + i}" for i in range(len(kids))])
        population_ += list(zip(kids, vals))
        if sampler == "nsga2":
            pv = np.array([v for _, v in population_], dtype=float).reshape(-1, n_obj)
            population_ = [population_[i] for i in select_promising(pv, pop)]
        done += len(kids)
    est_v = np.array([c["est_v"] for c in cands], dtype=float).reshape(-1, n_obj)
    fine_tune(select_promising(est_v, ft_split[0]) if ft_split[0] > 0 else [])

    # later rounds: a generation seeded by the fine-tuned results, then fine-tunes by predicted gain
    for r in range(1, rounds):
        tuned = [i for i, c in enumerate(cands) if c["ft_v"] is not None and not math.isnan(c["ft_v"][0])]
        predict = FinetunePredictor([cands[i]["est_v"][0] for i in tuned], [cands[i]["ft_v"][0] for i in tuned])

        def predicted(i):
            c = cands[i]
            return [float(predict(c["est_v"][0])), *c["est_v"][1:]]
        if sampler == "nsga2":
            ft_vals = np.array([cands[i]["ft_v"] for i in tuned], dtype=float).reshape(-1, n_obj)
            parents = [cands[tuned[j]]["params"] for j in np.flatnonzero(nondominated_ranks(ft_vals) == 0)]
            open_ = [i for i, c in enumerate(cands) if c["ft"] is None]
            pv = np.array([predicted(i) for i in open_], dtype=float).reshape(-1, n_obj)
            parents += [cands[open_[j]]["params"] for j in select_promising(pv, max(2, pop // 2))]
            parents = parents or [c["params"] for c in cands]
        offspring = fresh(later[r - 1], (lambda: vary(space, parents, rng)) if sampler == "nsga2"
                          else (lambda: space.random_params(rng)))
        estimate(offspring, [f"{sampler} g{r + 1} {i}" for i in range(len(offspring))])
        if ft_split[r] <= 0:
            continue
        open_ = [i for i, c in enumerate(cands) if c["ft"] is None and not math.isnan(c["est_v"][0])]
        if not open_:
            break
        pv = np.array([predicted(i) for i in open_], dtype=float).reshape(-1, n_obj)
        cur = np.array([cands[i]["ft_v"] for i in tuned], dtype=float).reshape(-1, n_obj)
        base_val = next((c["est"].baseline_val_accuracy for c in cands
                         if c["est"] is not None and c["est"].baseline_val_accuracy is not None), None)
        acc_ref = (base_val - acc_margin) if base_val is not None else float(np.nanmin(cur[:, 0])) if len(cur) else 0.0
        allv = np.vstack([cur, pv]) if len(cur) else pv
        cost_ref = [0.0 if np.nanmin(allv[:, j]) >= 0 else
                    float(np.nanmin(allv[:, j]) - 0.1 * (np.nanmax(allv[:, j]) - np.nanmin(allv[:, j]) + 1e-12))
                    for j in range(1, n_obj)]
        picks = hv_gain_picks(pv, cur, [acc_ref, *cost_ref], ft_split[r])
        if len(picks) < ft_split[r]:
            rest = [j for j in range(len(open_)) if j not in picks]
            picks += [rest[j] for j in select_promising(pv[rest], ft_split[r] - len(picks))]
        fine_tune([open_[j] for j in picks])
    return est_plans, est_evs, ft_plans, ft_evs
