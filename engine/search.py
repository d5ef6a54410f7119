"""Mixed-precision search: the per-layer search space, the greedy sensitivity path and the joint
multi-objective search (Optuna's NSGA-II, or random sampling as the baseline) with
estimate-then-fine-tune.

Both searches take an ``evaluate(plans, settings, labels) -> list[Evaluation]`` function (see
``engine.explore.sweep.Sweep.evaluate``), so they never care whether jobs run locally, on Dask or come
back from the store's cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from engine.plans.plan import FLOAT_BITS, LayerConfig, Plan

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

    def suggest_params(self, trial) -> dict:
        """Parameters from an Optuna trial (categorical: deterministic for a seeded sampler)."""
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

    def params_of(self, plan: Plan) -> dict:
        """Parameters of any plan (e.g. a greedy-path plan, for seeding a search), each choice
        snapped to the nearest one in the space (FP32 to the highest bits; widening of a space
        from its first producer)."""
        snap = lambda v, opts: min(opts, key=lambda o: (abs(o - v), -o))  # noqa: E731
        cfgs = plan.resolve(self.names)
        p = {}
        for n in self.names:
            c = cfgs[n]
            p[f"{n}.w"], p[f"{n}.a"] = snap(c.w_bits, self.w_bits), snap(c.a_bits, self.a_bits)
            if n in self.nm_layers and len(self.sparsity) > 1:
                p[f"{n}.sp"] = c.sparsity if c.sparsity in self.sparsity else "none"
        for sid, prods in self.widen_spaces.items():
            p[f"space{sid}.widen"] = snap(cfgs[prods[0]].widen, self.widen)
        return p

    def random_params(self, rng: np.random.Generator) -> dict:
        class _T:
            def suggest_categorical(self, _name, choices):
                return choices[int(rng.integers(len(choices)))]
        return self.suggest_params(_T())


def hv_gain_picks(pred: np.ndarray, current: np.ndarray, ref: Sequence[float], k: int) -> list[int]:
    """Up to k rows of ``pred`` chosen greedily by how much each adds to the hypervolume (all
    objectives maximised, bounded by ``ref``) of ``current`` plus the rows already chosen; stops
    when nothing adds volume."""
    from engine.explore.frontier import hypervolume
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
    """Fine-tuned validation accuracy predicted from the no-training estimate.

    What a fine-tune leaves of the estimate's loss against the unquantized network's accuracy
    ``reference`` is taken as a line in that loss: left = offset + fraction * lost, so a plan that
    loses more recovers more, and the offset carries what a short fine-tune costs even a plan that
    lost nothing (on Fashion-MNIST's CNN about a point). Least squares over the (estimate,
    fine-tuned) pairs so far plus two prior pairs on the identity line (lost 0 and ``prior``, left
    the same), so one pair, or pairs that barely lost anything, cannot swing it; fraction in
    [0, 1.5], the offset refitted after clipping. Never above the best fine-tuned accuracy seen
    (nothing says a plan beats every one tried). No pairs: the estimate itself.

    (Tried first and replaced: a free line in (estimate, fine-tuned), which through two pairs with
    nearly the same estimate gave every candidate the same prediction; then the line through the
    reference (no offset), whose fraction the near-lossless pairs pushed up, so heavy plans such as
    uniform W2A2 were predicted below the hypervolume reference and never fine-tuned. Replayed
    over the 45 pairs of three benchmark seeds, each predicted from the pairs before it, this line
    has an RMSE of 1.6 points against 2.4 for the one without offset.)"""

    def __init__(self, est: Sequence[float], tuned: Sequence[float], reference: float = 1.0, prior: float = 0.02):
        e, t = np.asarray(est, dtype=float), np.asarray(tuned, dtype=float)
        ok = np.isfinite(e) & np.isfinite(t)
        pseudo = [0.0, prior] if prior > 0 else []
        lost = np.r_[reference - e[ok], pseudo]
        left = np.r_[reference - t[ok], pseudo]
        slope = np.polyfit(lost, left, 1)[0] if len(lost) > 1 and np.ptp(lost) > 0 else 1.0
        self.reference = float(reference)
        self.fraction = float(np.clip(slope, 0.0, 1.5))
        self.offset = float(np.mean(left - self.fraction * lost)) if len(lost) else 0.0
        self.cap = float(t[ok].max()) if ok.any() else 1.0

    def __call__(self, est) -> np.ndarray:
        lost = self.reference - np.asarray(est, dtype=float)
        return np.clip(self.reference - self.offset - self.fraction * lost, 0.0, self.cap)


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
SAMPLERS = ("nsga2", "random")


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def default_population(first: int, n_seeds: int) -> int:
    """NSGA-II population for a first round of ``first`` estimates: the seed plans plus a couple of
    random ones fit generation 0 where the budget allows at least three generations, and never
    fewer than 4 (at most 16)."""
    return max(4, min(16, max(n_seeds + 2, first // 4), max(4, first // 3)))


def make_sampler(sampler: str, seed: int, population: int):
    import optuna
    if sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {sampler!r}; samplers are {', '.join(SAMPLERS)}")


class _Quiet:
    """Optuna's INFO lines off while a search runs (progress goes through the sweep's callback)."""

    def __enter__(self):
        import optuna
        self.level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def __exit__(self, *exc):
        import optuna
        optuna.logging.set_verbosity(self.level)


def joint_search(evaluate: Callable, space: SearchSpace, objective: Callable, estimate_settings, finetune_settings,
                 budget: int, finetune: int, sampler: str = "nsga2", seed: int = 0, population: int | None = None,
                 seeds: Sequence[tuple[int, int, float]] = UNIFORM_SEEDS, rounds: int | None = None,
                 acc_margin: float = 0.10, seed_plans: Sequence[Plan] = ()):
    """Estimate-then-fine-tune search over the space with Optuna (ask/tell), in rounds.

    One multi-objective study (maximise validation accuracy and each cost objective) with
    ``sampler``: ``nsga2`` = ``optuna.samplers.NSGAIISampler`` (seeded), ``random`` =
    ``optuna.samplers.RandomSampler`` (seeded), the baseline. Both start from the same enqueued
    plans: the uniform ``seeds`` (w bits, a bits, widening) then ``seed_plans`` (e.g. the greedy
    sensitivity path), so the only difference between the two is what the sampler proposes.

    Candidates are asked a generation at a time (``population`` trials; default from the budget,
    see ``default_population``), scored by the no-training estimate in one batch through
    ``evaluate`` and told to the study on the fine-tuned scale: the estimate mapped through the
    round's estimate -> fine-tuned predictor (the identity in round 1). A proposal whose plan was
    already evaluated is told its known values (fine-tuned ones once fine-tuned) without spending
    budget, so ``budget`` counts distinct plans. From round 2 on, the fine-tuned plans are
    enqueued again first: told their fine-tuned values they join the generation, where NSGA-II's
    survivor selection can keep them as parents (the random sampler ignores them).

    Each round ends with fine-tunes: what fine-tuning left of the estimate's loss (against the
    FP32 validation accuracy), a line with an offset fitted over the (estimate, fine-tuned)
    validation accuracy pairs so far (``FinetunePredictor``; none yet: the estimate), predicts every
    open candidate's fine-tuned accuracy, and the round's fine-tunes go to the candidates that
    add most to the hypervolume of the fine-tuned front (reference: baseline validation accuracy
    - ``acc_margin``, cost objectives at 0 or below their lowest value), then, when nothing adds,
    by gain against the lowest predicted accuracy as reference.

    ``budget`` estimates and ``finetune`` fine-tunes in all, whatever the sampler. ``rounds``
    defaults to one per two fine-tunes (at most 3); the later rounds share a third of the
    estimates. Seeded: a rerun proposes the same plans (so a sweep resumes from the store).
    ``objective(plan, ev) -> tuple`` gives the cost objectives to maximise (e.g. throughput, or
    -size). Returns (estimate plans, estimate evaluations, fine-tune plans, fine-tune evaluations):
    the estimates' records are ``estimated``, the fine-tunes' ``fine-tuned`` (or ``failed``).
    """
    import optuna
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; samplers are {', '.join(SAMPLERS)}")
    budget = max(1, int(budget))
    rounds = rounds or max(1, min(3, finetune // 2))
    rounds = max(1, min(rounds, max(finetune, 1), budget))
    ft_split = _split(max(finetune, 0), rounds)
    later = [max(1, n) for n in _split(budget // 3, rounds - 1)] if rounds > 1 else []
    first = max(1, budget - sum(later))
    est_split = [first] + later
    while sum(est_split) > budget and est_split[-1] > 0:   # tiny budgets: never more than asked
        est_split[-1] -= 1

    enqueue, digests = [], set()
    for p in [space.uniform_params(w, a, k) for w, a, k in seeds] + [space.params_of(p) for p in seed_plans]:
        d = space.plan_from(p).digest()
        if d not in digests:
            digests.add(d)
            enqueue.append(p)
    pop = population or default_population(first, len(enqueue))
    n_obj = 1 + len(objective(space.plan_from(space.uniform_params(8, 8)), None))

    cands: list[dict] = []   # params, plan, est (ev), est_v (values), ft (ev), ft_v (values); in order estimated
    by_digest: dict[str, int] = {}
    est_plans, est_evs, ft_plans, ft_evs = [], [], [], []

    def values_of(plan, ev):
        if ev is None or ev.status == "failed" or ev.val_accuracy is None:
            return None
        return [float(ev.val_accuracy), *map(float, objective(plan, ev))]

    with _Quiet():
        study = optuna.create_study(directions=["maximize"] * n_obj, sampler=make_sampler(sampler, seed, pop))
        for p in enqueue:
            study.enqueue_trial(p)

        def generation(n: int, round_no: int) -> int:
            """Ask up to ``n`` new plans (one batch, never past the current NSGA-II generation),
            estimate them, tell the study; returns how many were estimated."""
            told = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
            n = min(n, pop - told % pop)
            trials, new, params, labels = [], [], [], []
            for _ in range(n):
                t = study.ask()
                t.relative_params   # noqa: B018  (NSGA-II records a trial's generation here; an
                #                     enqueued trial never asks for it, and would be left out)
                p = space.suggest_params(t)
                plan = space.plan_from(p)
                trials.append((t, plan))
                d = plan.digest()
                if d not in by_digest and all(q.digest() != d for q in new):
                    new.append(plan)
                    params.append(p)
                    labels.append(f"{sampler} r{round_no + 1} {len(cands) + len(new) - 1}")
            evs = evaluate(new, estimate_settings, labels) if new else []
            for p, plan, ev in zip(params, new, evs):
                by_digest[plan.digest()] = len(cands)
                cands.append({"params": p, "plan": plan, "est": ev, "est_v": values_of(plan, ev), "ft": None,
                              "ft_v": None})
                est_plans.append(plan)
                est_evs.append(ev)
            for t, plan in trials:
                v = told_values(cands[by_digest[plan.digest()]])
                if v is None:
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(t, v)
            return len(new)

        predictor = [FinetunePredictor([], [])]

        def told_values(c):
            """What the study hears of a candidate: its fine-tuned values once fine-tuned, else the
            estimate mapped through the round's estimate -> fine-tuned predictor (the identity
            until something is fine-tuned), so every value told is on the fine-tuned scale."""
            if c["ft_v"] is not None:
                return c["ft_v"]
            if c["est_v"] is None:
                return None
            return [float(predictor[0](c["est_v"][0])), *c["est_v"][1:]]

        for r in range(rounds):
            if r > 0:
                # feedback: the fine-tuned plans are enqueued again; asked (no budget spent: they
                # are known) and told their fine-tuned values, they join the current generation,
                # where NSGA-II's survivor selection can pick them as parents (random ignores them)
                predictor[0] = _predictor(cands)
                for c in cands:
                    if c["ft_v"] is not None:
                        study.enqueue_trial(c["params"])
            done, asks = 0, 0
            while done < est_split[r] and asks < 20 * est_split[r] + 20:
                got = generation(est_split[r] - done, r)
                done += got
                asks += 1
            if ft_split[r] > 0:
                picks = _finetune_picks(cands, ft_split[r], n_obj, acc_margin)
                if picks:
                    plans = [cands[i]["plan"] for i in picks]
                    evs = evaluate(plans, finetune_settings,
                                   [f"{sampler} fine-tune {len(ft_plans) + j}" for j in range(len(picks))])
                    for i, plan, ev in zip(picks, plans, evs):
                        cands[i]["ft"], cands[i]["ft_v"] = ev, values_of(plan, ev)
                        ft_plans.append(plan)
                        ft_evs.append(ev)
    return est_plans, est_evs, ft_plans, ft_evs


def _baseline_val(cands: list[dict]) -> float | None:
    return next((c["est"].baseline_val_accuracy for c in cands
                 if c["est"] is not None and c["est"].baseline_val_accuracy is not None), None)


def _predictor(cands: list[dict]) -> FinetunePredictor:
    """The estimate -> fine-tuned predictor from the candidates fine-tuned so far, anchored at the
    unquantized network's validation accuracy."""
    tuned = [c for c in cands if c["ft_v"] is not None]
    base = _baseline_val(cands)
    return FinetunePredictor([c["est_v"][0] for c in tuned], [c["ft_v"][0] for c in tuned],
                             reference=1.0 if base is None else base)


def _finetune_picks(cands: list[dict], k: int, n_obj: int, acc_margin: float) -> list[int]:
    """Indices of the ``k`` open candidates to fine-tune: most hypervolume added to the fine-tuned
    front under the estimate -> fine-tuned predictor (see ``joint_search``)."""
    tuned = [c for c in cands if c["ft_v"] is not None]
    open_ = [i for i, c in enumerate(cands) if c["ft"] is None and c["est_v"] is not None]
    if not open_:
        return []
    predict = _predictor(cands)
    pv = np.array([[float(predict(cands[i]["est_v"][0])), *cands[i]["est_v"][1:]] for i in open_],
                  dtype=float).reshape(-1, n_obj)
    cur = np.array([c["ft_v"] for c in tuned], dtype=float).reshape(-1, n_obj)
    base_val = _baseline_val(cands)
    allv = np.vstack([cur, pv])
    acc_ref = base_val - acc_margin if base_val is not None else float(np.min(allv[:, 0]))
    cost_ref = [0.0 if np.min(allv[:, j]) >= 0 else
                float(np.min(allv[:, j]) - 0.1 * (np.ptp(allv[:, j]) + 1e-12)) for j in range(1, n_obj)]
    picks = hv_gain_picks(pv, cur, [acc_ref, *cost_ref], k)
    if len(picks) < k:      # nothing left above the reference: gain against the lowest prediction
        low = float(np.min(allv[:, 0])) - 1e-6
        rest = [j for j in range(len(open_)) if j not in picks]
        more = hv_gain_picks(pv[rest], np.vstack([cur, pv[picks]]) if picks else cur, [low, *cost_ref],
                             k - len(picks))
        picks += [rest[j] for j in more]
    if len(picks) < k:      # all predictions dominated: the first open candidates, in order
        picks += [j for j in range(len(open_)) if j not in picks][:k - len(picks)]
    return [open_[j] for j in picks]
