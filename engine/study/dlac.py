"""dLAC (Venkatesh, Nurvitadhi, Marr): 2-bit weights plus zero skipping, on the zero-skipping profile."""
from __future__ import annotations

import statistics

from engine.study import core

ID = "dlac"
TITLE = "dLAC: low precision with sparsity (zero skipping)"
PAPER = "Venkatesh, Nurvitadhi, Marr, 'Accelerating Deep Convolutional Networks using low-precision and " \
        "sparsity', ICASSP 2017 (arXiv 1610.00324)"
CLAIM = ("2-bit (ternary) weights cost about a point of accuracy, and they are sparse: an accelerator that skips "
         "zero weights and activations turns that sparsity into a further large speed-up over dense "
         "low-precision execution (paraphrased).")
# what the evidence points to when the claim still fails at the convergent budget
BEYOND_BUDGET = ("dLAC's accuracy figure is for ternary networks trained from scratch at ImageNet scale; here ternary "
                 "weights are fixed-threshold projections of a small pretrained CNN's weights, fine-tuned for an "
                 'epoch. Its speed-up is a cost-model figure (the dlac profile), not a measurement.')
BATCH = 64                   # compute-bound regime; at the profile's batch 1 these small layers are memory-bound
PLANS = (("ternary-a8", "ternary W, A8", "ternary"), ("w2a8", "2-bit LSQ W, A8", "lsq"))


def _seeds(cfg, p):
    return cfg.seeds_minor


def tasks(cfg, ctx, done):
    out = [core.ft_task(cfg, p, s) for p, _, _ in PLANS for s in _seeds(cfg, p)]
    out += [core.ft_task(cfg, "w8a8", s) for s in cfg.seeds_minor]
    return out


def section(cfg, ctx, done, plots):
    from engine.plans.plan import LayerConfig
    keys = {p: [core.key_ft(cfg.model, p, s, cfg.steps) for s in _seeds(cfg, p)] for p, _, _ in PLANS}
    keys["w8a8"] = [core.key_ft(cfg.model, "w8a8", s, cfg.steps) for s in cfg.seeds_minor]
    problems = core.errors(done, [k for ks in keys.values() for k in ks])
    fp = core.fp32_of(done, cfg.model)
    if problems or fp is None:
        return core.failed_section(__name__, problems or ["no FP32 accuracy"])
    topo = ctx["topo"][cfg.model]
    base = core.cost(ctx, cfg.model, "w8a8", "dlac", batch=BATCH)
    fp16 = core.cost(ctx, cfg.model, "fp32", "dlac", batch=BATCH)
    a8 = core.accs(done, keys["w8a8"])
    rows = [["FP32 (runs as FP16)", f"{fp:.2f}", "0%", f"{fp16.throughput / base.throughput:.2f}x", "-",
             f"{fp16.energy_j / base.energy_j:.2f}x"],
            ["W8A8 (LSQ)", core.fmt_ms(a8), f"{100 * _zero(done, keys['w8a8']):.0f}%", "1.00x", "-", "1.00x"]]
    best, gain_skip = -1e9, {}
    for p, label, q in PLANS:
        a = core.accs(done, keys[p])
        zeros = {n: statistics.fmean(done[k]["zeros"][n] for k in keys[p]) for n in topo.names}
        dense = {n: LayerConfig(w_bits=2, a_bits=8, quantizer=q) for n in topo.names}
        sparse = {n: LayerConfig(w_bits=2, a_bits=8, quantizer=q, sparsity="unstructured",
                                 sparsity_fraction=min(round(zeros[n], 4), 0.99)) if zeros[n] > 0 else dense[n]
                  for n in topo.names}
        rd = core.cost(ctx, cfg.model, None, "dlac", configs=dense, batch=BATCH)
        rs = core.cost(ctx, cfg.model, None, "dlac", configs=sparse, batch=BATCH)
        zall = sum(zeros[n] * l.weights for n, l in zip(topo.names, topo.layers)) / sum(l.weights for l in topo.layers)
        gain_skip[label] = rd.batch_time_s / rs.batch_time_s
        best = max(best, core.mean_sd(a)[0])
        rows.append([label, core.fmt_ms(a), f"{100 * zall:.0f}%",
                     f"{base.batch_time_s / rd.batch_time_s:.2f}x", f"{base.batch_time_s / rs.batch_time_s:.2f}x",
                     f"{rs.energy_j / base.energy_j:.2f}x"])
    acc_ok = best >= fp - 2 * core.TOL
    skip_ok = max(gain_skip.values()) > 1.2
    verdict = "held" if acc_ok and skip_ok else ("partly held" if acc_ok or skip_ok else "did not hold")
    figure = (f"best 2-bit {best:.2f}% vs FP32 {fp:.2f}% ({best - fp:+.2f}); zero skipping on top of 2-bit: "
              + ", ".join(f"{k} x{v:.2f}" for k, v in gain_skip.items()) + " (modeled, dlac profile)")
    notes = ["Accuracy is measured; speed and energy are the `dlac` profile's model (status 'assumed': datapath "
             "rates, 80% skipping efficiency, 5% index overhead and 50% zero activations are the profile's "
             "assumptions, not dLAC's published design). Weight zeros are the measured fraction of zero "
             "quantized weights per layer, costed as unstructured sparsity (bitmap format).",
             "Throughput columns are relative to W8A8 on the same profile; 'dense' runs the 2-bit weights without "
             "skipping their zeros (activation zeros are skipped in every row, a property of the profile).",
             f"Ternary: TWN threshold 0.7 mean|w| per channel (fixed); 2-bit LSQ: signed codes -2..1. "
             f"{cfg.steps} steps, {core.n_seeds(cfg.seeds_minor)}.",
             f"Costed at batch {BATCH}: at the profile's own batch 1 these small layers are bound by weight "
             "traffic and overhead, where skipping compute buys little."]
    if not acc_ok:
        notes.append(f"The 2-bit networks lose more than {2 * core.TOL} points here.")
    table = {"columns": ["weights", "test acc. (%)", "zero weights", "throughput, dense", "throughput, zero-skip",
                         "energy, zero-skip"], "rows": rows}
    return core.section(__name__, verdict, figure, table, notes, extra={"skip_gain": gain_skip, "best": best})


def _zero(done, keys) -> float:
    vals = [statistics.fmean(done[k]["zeros"].values()) for k in keys if done[k].get("zeros")]
    return statistics.fmean(vals) if vals else 0.0
