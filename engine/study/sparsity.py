"""2:4 structured sparsity with the ASP recipe, with and without quantization."""
from __future__ import annotations

from engine.study import core

ID = "sparsity"
TITLE = "2:4 sparsity (ASP recipe)"
PAPER = "Mishra et al., 'Accelerating Sparse Deep Neural Networks', arXiv 2104.08378 (NVIDIA ASP)"
CLAIM = ("Pruning a trained dense network to 2:4 by magnitude and retraining with the mask fixed recovers the "
         "dense accuracy, also combined with INT8 quantization, and doubles the math throughput of sparse "
         "tensor cores (paraphrased).")
# what the evidence points to when the claim still fails at the convergent budget
BEYOND_BUDGET = ('ASP retrains for about the original training schedule with the mask fixed; one epoch is far shorter. '
                 'The CNN is also narrow (its layers have few filters), so 2:4 removes half of an already small set of '
                 "weights, where the paper's networks are heavily over-parameterized: the evidence points to scale and "
                 'the retraining budget.')
PAIRS = (("fp32", "2:4-fp32", "FP32"), ("w8a8", "2:4-w8a8", "W8A8"), ("w4a4", "2:4-w4a4", "W4A4"))


def tasks(cfg, ctx, done):
    out = []
    for dense, sparse, _ in PAIRS:
        out += [core.ft_task(cfg, sparse, s) for s in cfg.seeds_minor]
        if dense != "fp32":
            out += [core.ft_task(cfg, dense, s) for s in cfg.seeds_minor]
        out.append(core.ft_task(cfg, sparse, 0, steps=0, weight=0.3))
    return out


def section(cfg, ctx, done, plots):
    keys = {}
    for dense, sparse, _ in PAIRS:
        keys[sparse] = [core.key_ft(cfg.model, sparse, s, cfg.steps) for s in cfg.seeds_minor]
        if dense != "fp32":
            keys[dense] = [core.key_ft(cfg.model, dense, s, cfg.steps) for s in cfg.seeds_minor]
    problems = core.errors(done, [k for ks in keys.values() for k in ks])
    fp = core.fp32_of(done, cfg.model)
    if problems or fp is None:
        return core.failed_section(__name__, problems or ["no FP32 accuracy"])
    rows, diffs = [], {}
    topo = ctx["topo"][cfg.model]
    for dense, sparse, label in PAIRS:
        a_d = [fp] if dense == "fp32" else core.accs(done, keys[dense])
        a_s = core.accs(done, keys[sparse])
        est = core.accs(done, [core.key_ft(cfg.model, sparse, 0, 0)])
        c = core.compare(a_d, a_s)
        diffs[label] = c["diff"]
        rd = core.cost(ctx, cfg.model, dense, "a100")
        rs = core.cost(ctx, cfg.model, sparse, "a100")
        rows.append([label, "pretrained " + f"{fp:.2f}" if dense == "fp32" else core.fmt_ms(a_d),
                     f"{est[0]:.2f}" if est else "n/a", core.fmt_ms(a_s), f"{c['diff']:+.2f}",
                     f"{rd.batch_time_s / rs.batch_time_s:.2f}x"])
    plan = core.resolve_plan("2:4-w8a8", topo, cfg.model).resolve(topo.names)
    sparse_layers = [n for n, c in plan.items() if c.sparsity == "2:4"]
    ok_fp = diffs["FP32"] >= -core.TOL
    ok_8 = diffs["W8A8"] >= -core.TOL
    verdict = "held" if ok_fp and ok_8 else ("partly held" if ok_fp or ok_8 else "did not hold")
    figure = (f"2:4 vs dense: FP32 {diffs['FP32']:+.2f}, W8A8 {diffs['W8A8']:+.2f}, W4A4 {diffs['W4A4']:+.2f} "
              f"points after {cfg.steps} steps")
    notes = [f"2:4 masks by magnitude along the input dimension of {len(sparse_layers)} of {len(topo.names)} layers "
             f"({', '.join(sparse_layers)}); layers whose input dimension is not a multiple of 4 stay dense. "
             "Masks are fixed during fine-tuning and applied before weight quantization (ASP's order).",
             f"ASP retrains for the original schedule; we fine-tune {cfg.steps} steps "
             f"({core.n_seeds(cfg.seeds_minor)}). The dense FP32 reference is the pretrained network (not "
             "fine-tuned further).",
             "The speed column is the a100 profile's modeled batch time dense / 2:4: a model (2x peak on "
             "sparse tensor cores where the layer qualifies), not a measurement; these layers are small, so "
             "the modeled gain is small or nil."]
    if not ok_fp:
        notes.append("2:4 alone lost more than the tolerance at this budget.")
    table = {"columns": ["precision", "dense (%)", "2:4, no training (%)", "2:4 fine-tuned (%)", "2:4 - dense",
                         "modeled speed-up (a100)"], "rows": rows}
    return core.section(__name__, verdict, figure, table, notes, extra={"diffs": diffs})
