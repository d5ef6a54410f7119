"""EAGL and ALPS (Bablani et al.): mixed 4/2-bit networks vs uniform precision, and what selection costs."""
from __future__ import annotations

import time

from engine.study import core

ID = "mixed"
TITLE = "EAGL / ALPS: mixed 4/2-bit precision"
PAPER = "Bablani, McKinstry, Esser, Appuswamy, Modha, 'Efficient and Effective Methods for Mixed Precision " \
        "Neural Network Quantization for Faster, Energy-efficient Inference', arXiv 2301.13330"
CLAIM = ("Choosing which layers drop from 4 to 2 bits by weight entropy (EAGL, no data or training) or by the "
         "accuracy drop of a brief per-layer fine-tune (ALPS) gives mixed-precision networks on a better "
         "accuracy-throughput frontier than uniform precision, and EAGL does so at a tiny fraction of the "
         "cost (paraphrased).")
LADDER = (4, 2)
UNIFORM = ("u-w4a4", "u-w3a3", "u-w2a2")   # every layer, the input too: the greedy path's own ends


def run_eagl(cfg) -> dict:
    from engine.training.sensitivity import eagl
    base, data, _ = core.context(cfg)
    t0 = time.perf_counter()
    s = eagl(cfg.model, cfg.dataset, bits=LADDER[0], baseline=base, data=data)
    return {"scores": s.scores, "order": s.order(), "seconds": time.perf_counter() - t0}


def run_hessian(cfg) -> dict:
    from engine.training.sensitivity import hessian
    base, data, _ = core.context(cfg)
    t0 = time.perf_counter()
    s = hessian(cfg.model, cfg.dataset, bits=LADDER[1], baseline=base, data=data)
    return {"scores": s.scores, "order": s.order(), "seconds": time.perf_counter() - t0}


def _alps_plans(cfg, ctx):
    from engine.training.sensitivity import alps_plans
    plans = alps_plans(ctx["topo"][cfg.model], bits=LADDER[1], base_bits=LADDER[0])
    return {(layer or "ref"): p.to_dict() for layer, p in plans.items()}


def _alps_key(cfg, layer):
    return core.key_ft(cfg.model, f"alps-{layer}", 0, cfg.alps_steps)


def _orders(cfg, ctx, done):
    """{method: layers least sensitive first}, once EAGL and every ALPS run are in."""
    plans = _alps_plans(cfg, ctx)
    keys = [_alps_key(cfg, layer) for layer in plans]
    e = done.get("eagl")
    if e is None or any(k not in done for k in keys):
        return None
    if "error" in e or core.errors(done, keys):
        return {}
    ref = done[_alps_key(cfg, "ref")]["val"]
    names = ctx["topo"][cfg.model].names
    drop = {n: ref - done[_alps_key(cfg, n)]["val"] for n in names}
    alps_order = sorted(names, key=lambda n: (drop[n], names.index(n)))
    return {"EAGL": e["order"], "ALPS": alps_order, "_alps_scores": drop}


def _path(cfg, ctx, order):
    """Interior plans of the greedy 4 -> 2 path (the endpoints are uniform W4A4 and W2A2)."""
    from engine.explore.search import greedy_plans, plan_label
    names = ctx["topo"][cfg.model].names
    plans = greedy_plans(names, order, LADDER)
    return [(plan_label(p, names), p.to_dict()) for p in plans[1:-1]]


def tasks(cfg, ctx, done):
    # the sensitivity runs go first: the mixed-precision path waits for them
    out = [core.Task("eagl", "engine.study.mixed:run_eagl", {}, 20.0),
           core.Task("hessian", "engine.study.mixed:run_hessian", {}, 0.5)]
    out += [core.ft_task(cfg, p, 0, steps=cfg.alps_steps, label=f"alps-{layer}", weight=5.0)
            for layer, p in _alps_plans(cfg, ctx).items()]
    out += [core.ft_task(cfg, p, 0) for p in UNIFORM]
    orders = _orders(cfg, ctx, done)
    if orders:
        for method in ("EAGL", "ALPS"):
            out += [core.ft_task(cfg, plan, 0, label=f"mixed-{label}")
                    for label, plan in _path(cfg, ctx, orders[method])]
    return out


def section(cfg, ctx, done, plots):
    import numpy as np

    from engine.explore.frontier import hypervolume, pareto_mask
    from engine.training.sensitivity import rank_correlation
    orders = _orders(cfg, ctx, done)
    alps_keys = [_alps_key(cfg, layer) for layer in _alps_plans(cfg, ctx)]
    if not orders:
        problems = core.errors(done, alps_keys + ["eagl"])
        return core.failed_section(__name__, problems or ["sensitivity runs missing"])
    uni_keys = {p: core.key_ft(cfg.model, p, 0, cfg.steps) for p in UNIFORM}
    paths = {m: _path(cfg, ctx, orders[m]) for m in ("EAGL", "ALPS")}
    path_keys = {m: [core.key_ft(cfg.model, f"mixed-{lbl}", 0, cfg.steps) for lbl, _ in ps] for m, ps in paths.items()}
    problems = core.errors(done, list(uni_keys.values()) + [k for ks in path_keys.values() for k in ks])
    if problems:
        return core.failed_section(__name__, problems)
    thr = lambda plan: core.cost(ctx, cfg.model, plan, cfg.profile).throughput  # noqa: E731
    uni = {p: (thr(p), 100 * done[k]["test"]) for p, k in uni_keys.items()}
    pts = {m: [(thr(plan), 100 * done[k]["test"], lbl) for (lbl, plan), k in zip(paths[m], path_keys[m])]
           for m in paths}
    allacc = [a for _, a in uni.values()] + [a for ps in pts.values() for _, a, _ in ps]
    ref = (min(allacc) - 1.0, 0.0)
    hv_u = hypervolume([list(v) for v in uni.values()], ref)
    hv = {m: hypervolume([list(v) for v in uni.values()] + [[t, a] for t, a, _ in ps], ref) for m, ps in pts.items()}
    # accuracy above the chord joining uniform W4A4 and W2A2 at the same throughput
    (t4, a4), (t2, a2) = uni["u-w4a4"], uni["u-w2a2"]
    chord = lambda t: a4 + (a2 - a4) * (t - t4) / (t2 - t4) if t2 != t4 else max(a4, a2)  # noqa: E731
    excess = {m: float(np.mean([a - chord(t) for t, a, _ in ps])) if ps else float("nan") for m, ps in pts.items()}
    # are mixed points on the joint frontier?
    joint = [(t, a, m) for m, ps in pts.items() for t, a, _ in ps] + [(t, a, "uniform") for t, a in uni.values()]
    mask = pareto_mask(np.array([[t, a] for t, a, _ in joint]), [True, True])
    on_front = {m: int(sum(1 for (t, a, mm), k in zip(joint, mask) if k and mm == m)) for m in ("EAGL", "ALPS")}
    alps_s = sum(done[k]["_wall"] for k in alps_keys)
    eagl_s, hess_s = done["eagl"]["seconds"], done.get("hessian", {}).get("seconds")
    rho = rank_correlation(done["eagl"]["scores"], orders["_alps_scores"])
    frontier_ok = any(hv[m] > hv_u * 1.001 and excess[m] > 0 for m in hv)
    cost_ok = alps_s > 10 * eagl_s
    verdict = "held" if frontier_ok and cost_ok else ("partly held" if frontier_ok or cost_ok else "did not hold")
    rows = [[f"uniform {p[2:].upper()}", f"{a:.2f}", f"{t:,.0f}", "-"] for p, (t, a) in uni.items()]
    for m, ps in pts.items():
        rows += [[f"{m}: {lbl}", f"{a:.2f}", f"{t:,.0f}", f"{a - chord(t):+.2f}"] for t, a, lbl in ps]
    fig, ax = core.figure(5.2, 3.4)
    ut = sorted(uni.items(), key=lambda kv: kv[1][0])
    ax.plot([v[0] for _, v in ut], [v[1] for _, v in ut], "ks--", label="uniform", ms=5)
    for p, (t, a) in uni.items():
        ax.annotate(p[2:].upper(), (t, a), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for m, mk in (("EAGL", "o-"), ("ALPS", "^-")):
        ps = sorted(pts[m])
        ax.plot([t for t, _, _ in ps], [a for _, a, _ in ps], mk, label=f"{m} 4/2 path", ms=4, alpha=0.8)
    ax.set_xlabel(f"modeled throughput, {cfg.profile} (inferences/s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Mixed 4/2-bit vs uniform, {cfg.model} / {cfg.dataset}", fontsize=9)
    ax.legend(fontsize=7)
    png = core.save(fig, plots, ID)
    costs = f"EAGL {eagl_s:.2f} s, ALPS {alps_s:.0f} s ({len(alps_keys)} fine-tunes of {cfg.alps_steps} steps)"
    if hess_s is not None:
        costs += f", Hessian (HAWQ-v2 trace) {hess_s:.1f} s"
    figure = (f"hypervolume vs uniform alone: with EAGL x{hv['EAGL'] / hv_u:.3f}, with ALPS x{hv['ALPS'] / hv_u:.3f}; "
              f"mean accuracy above the W4A4-W2A2 chord: EAGL {excess['EAGL']:+.2f}, ALPS {excess['ALPS']:+.2f} "
              f"points; selection cost {costs}")
    notes = [f"Greedy 4 -> 2 path: starting from uniform W4A4, lower one layer at a time (weights and activations) "
             f"to W2A2, least sensitive first by each method's order; every interior point fine-tuned "
             f"{cfg.steps} steps, seed 0 (the uniform points too; seed-to-seed spread is in the LSQ section).",
             f"Orders, least sensitive first: EAGL {' < '.join(orders['EAGL'])}; ALPS {' < '.join(orders['ALPS'])} "
             f"(Spearman rho of the scores {rho:+.2f}).",
             f"Throughput is the {cfg.profile} profile's model (Bit Fusion runs 3-bit at 4-bit speed, so uniform "
             "W3A3 buys no speed there). Hypervolume of accuracy x throughput above "
             f"({ref[0]:.2f}%, 0). Mixed points on the joint Pareto front: EAGL {on_front['EAGL']}, "
             f"ALPS {on_front['ALPS']} of {len(pts['EAGL'])} / {len(pts['ALPS'])}.",
             "Selection cost is wall time on this machine with one torch thread per process (ALPS: the sum of its "
             "fine-tunes' wall times; the study runs two processes side by side, so each figure includes some "
             "contention)."]
    for m in ("EAGL", "ALPS"):
        if frontier_ok and not excess[m] > 0:
            notes.append(f"{m}'s path is not above the W4A4-W2A2 chord on average ({excess[m]:+.2f} points): "
                         "the verdict rests on the other method.")
    if not frontier_ok:
        notes.append("Neither method's mixed points lifted the frontier above uniform precision at this budget.")
    table = {"columns": ["plan (per layer)", "test acc. (%)", f"throughput ({cfg.profile})", "vs chord"],
             "rows": rows}
    return core.section(__name__, verdict, figure, table, notes, [png],
                        extra={"hv_uniform": hv_u, "hv": hv, "excess": excess, "eagl_s": eagl_s, "alps_s": alps_s,
                               "hessian_s": hess_s, "orders": {k: v for k, v in orders.items() if k[0] != "_"}})
