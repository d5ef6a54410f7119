"""BSQ (Yang et al., ICLR 2021): bit-level sparsity search for per-layer weight precision vs uniform precision."""
from __future__ import annotations

from engine.study import core

ID = "bsq"
TITLE = "BSQ: bit-level sparsity quantization"
PAPER = "Yang et al., 'BSQ: Exploring Bit-Level Sparsity for Mixed-Precision Neural Network Quantization', " \
        "ICLR 2021"
CLAIM = ("Training the weights' bit-planes with a bit-level group-Lasso regulariser finds per-layer precisions "
         "with a better accuracy / model-size trade-off than uniform quantization (paraphrased).")
A_BITS = 4
UNIFORM = (2, 3, 4, 8)
LR_BITS = 0.03


def search(cfg) -> dict:
    from engine.evaluation import Settings
    from engine.training.methods.bsq import bsq
    base, data, _ = core.context(cfg)
    r = bsq(cfg.model, cfg.dataset, strength=cfg.bsq_strength, steps=cfg.bsq_steps, a_bits=A_BITS,
            requant_every=25, lr_bits=LR_BITS, settings=Settings(seed=0, batch_size=cfg.batch_size),
            baseline=base, data=data)
    return {"plan": r.plan.to_dict(), "layer_bits": r.layer_bits, "mean_bits": r.mean_bits,
            "search_val": r.val_accuracy, "seconds": r.wall_s}


def _uni(b):
    return "w4a4" if b == 4 else f"u-w{b}a{A_BITS}"


def tasks(cfg, ctx, done):
    out = [core.Task("bsq-search", "engine.study.bsq:search", {}, 9.0)]
    out += [core.ft_task(cfg, _uni(b), s) for b in UNIFORM for s in cfg.seeds_minor]
    r = done.get("bsq-search")
    if r and "error" not in r:
        out += [core.ft_task(cfg, r["plan"], s, label="bsq-plan") for s in cfg.seeds_minor]
    return out


def section(cfg, ctx, done, plots):
    r = done.get("bsq-search", {})
    if "error" in r or not r:
        return core.failed_section(__name__, [f"search: {r.get('error', 'missing')}"])
    bk = [core.key_ft(cfg.model, "bsq-plan", s, cfg.steps) for s in cfg.seeds_minor]
    uk = {b: [core.key_ft(cfg.model, _uni(b), s, cfg.steps) for s in cfg.seeds_minor] for b in UNIFORM}
    problems = core.errors(done, bk + [k for ks in uk.values() for k in ks])
    fp = core.fp32_of(done, cfg.model)
    if problems or fp is None:
        return core.failed_section(__name__, problems or ["no FP32 accuracy"])
    size = lambda plan: core.cost(ctx, cfg.model, plan, "bops").size_bytes / 1024  # noqa: E731
    pts = {f"uniform W{b}A{A_BITS}": (size(_uni(b)), core.mean_sd(core.accs(done, uk[b]))[0], core.accs(done, uk[b]))
           for b in UNIFORM}
    a_b = core.accs(done, bk)
    bsq_pt = (size(r["plan"]), core.mean_sd(a_b)[0])
    dominated = any(s <= bsq_pt[0] and a >= bsq_pt[1] and (s, a) != bsq_pt for s, a, _ in pts.values())
    us = sorted((s, a) for s, a, _ in pts.values())
    chord = None
    for (s1, a1), (s2, a2) in zip(us, us[1:]):
        if s1 <= bsq_pt[0] <= s2:
            chord = a1 + (a2 - a1) * (bsq_pt[0] - s1) / (s2 - s1) if s2 > s1 else max(a1, a2)
    above = chord is not None and bsq_pt[1] > chord
    verdict = "held" if not dominated and above else ("partly held" if not dominated else "did not hold")
    rows = [[k, ", ".join(f"{b}" for b in [k.split("W")[1].split("A")[0]] * len(ctx["topo"][cfg.model].names)),
             f"{s:.1f}", core.fmt_ms(v)] for k, (s, a, v) in pts.items()]
    names = ctx["topo"][cfg.model].names
    rows.append([f"BSQ (strength {cfg.bsq_strength:g})", ", ".join(str(r["layer_bits"][n]) for n in names),
                 f"{bsq_pt[0]:.1f}", core.fmt_ms(a_b)])
    fig, ax = core.figure()
    ax.plot([s for s, _ in us], [a for _, a in us], "ks--", label=f"uniform W2/3/4/8 A{A_BITS}")
    ax.plot([bsq_pt[0]], [bsq_pt[1]], "r*", ms=12, label="BSQ plan")
    ax.axhline(fp, color="k", lw=1, ls=":", label="FP32")
    ax.set_xlabel("weight size (KiB)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"BSQ vs uniform, {cfg.model} / {cfg.dataset}", fontsize=9)
    ax.legend(fontsize=7)
    png = core.save(fig, plots, ID)
    figure = (f"BSQ plan: mean {r['mean_bits']:.2f} weight bits, {bsq_pt[0]:.1f} KiB, {bsq_pt[1]:.2f}% "
              + (f"({bsq_pt[1] - chord:+.2f} points vs the uniform chord at its size)" if chord is not None else
                 "(outside the uniform points' size range)"))
    notes = [f"Search: {cfg.bsq_steps} steps from the FP32 network, weights as 7 magnitude bit-planes + sign, "
             f"activations at {A_BITS} bits, regulariser strength {cfg.bsq_strength:g}, bit learning rate "
             f"{LR_BITS}, re-quantization and precision adjustment every 25 steps; search wall time "
             f"{r['seconds']:.0f} s. The found plan and the uniform plans are then fine-tuned alike "
             f"({cfg.steps} steps, {core.n_seeds(cfg.seeds_minor)}).",
             "BSQ trains for hundreds of epochs with the regulariser and reports the strength sweep; here one "
             "strength is tried with a short search, so the plan it lands on depends on that choice.",
             "Size counts weights at their bits plus 32-bit biases (bops profile's size figure)."]
    if r.get("search_val") is not None and r["search_val"] < 0.5:
        notes.append(f"The bit-parametrized network itself ended the search at {100 * r['search_val']:.1f}% "
                     "validation accuracy (the regulariser overwhelmed the task loss in this short search); only "
                     "the per-layer precisions it chose are used, and the fine-tune starts again from the FP32 "
                     "network.")
    if dominated:
        notes.append("A uniform plan is at least as small and at least as accurate as the BSQ plan.")
    table = {"columns": ["plan", "weight bits per layer", "size (KiB)", "test acc. (%)"], "rows": rows}
    return core.section(__name__, verdict, figure, table, notes, [png],
                        extra={"bsq": bsq_pt, "uniform": {k: v[:2] for k, v in pts.items()}})
