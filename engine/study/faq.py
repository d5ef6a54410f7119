"""FAQ (McKinstry et al.): 8-bit and 4-bit from the pretrained model with at most one epoch of fine-tuning."""
from __future__ import annotations

from engine.study import core

ID = "faq"
TITLE = "FAQ: fine-tuning after quantization"
PAPER = "McKinstry et al., 'Discovering Low-Precision Networks Close to Full-Precision Networks for Efficient " \
        "Embedded Inference' (FAQ), arXiv 1809.04191"
CLAIM = ("Starting from the pretrained network with well-initialised quantizers, 8-bit networks match full "
         "precision after at most one epoch of fine-tuning, and 4-bit ones come close (the paper fine-tuned "
         "4-bit networks far longer) (paraphrased).")
# what the evidence points to when the claim still fails at the convergent budget
BEYOND_BUDGET = ("FAQ's one-epoch claim is for 8 bits; its 4-bit networks were fine-tuned for many epochs. Where 4 "
                 "bits stays short here, the budget is the first suspect; the small CNN's first layers (few filters) "
                 'also have little redundancy to absorb 4-bit error.')
PLANS = (("w8a8", "W8A8"), ("w4a4", "W4A4"))


def _seeds(cfg, p):
    return cfg.seeds if p == "w4a4" else cfg.seeds_minor


def tasks(cfg, ctx, done):
    out = []
    for p, _ in PLANS:
        out.append(core.ft_task(cfg, p, 0, steps=0, weight=0.3))
        out += [core.ft_task(cfg, p, s) for s in _seeds(cfg, p)]
    return out


def section(cfg, ctx, done, plots):
    keys = [core.key_ft(cfg.model, p, s, n) for p, _ in PLANS for s in _seeds(cfg, p) for n in (cfg.steps,)]
    keys += [core.key_ft(cfg.model, p, 0, 0) for p, _ in PLANS]
    problems = core.errors(done, keys)
    fp = core.fp32_of(done, cfg.model)
    if problems or fp is None:
        return core.failed_section(__name__, problems or ["no FP32 accuracy"])
    ep = cfg.epochs(cfg.steps, ctx["train_size"])
    rows, d = [], {}
    for p, label in PLANS:
        e = done[core.key_ft(cfg.model, p, 0, 0)]
        est, est_val = 100 * e["test"], 100 * e["val"]
        ks = [core.key_ft(cfg.model, p, s, cfg.steps) for s in _seeds(cfg, p)]
        a, av = core.accs(done, ks), core.accs(done, ks, "val")
        m, mv = core.mean_sd(a)[0], core.mean_sd(av)[0]
        pick_tuned = mv > est_val
        chosen = m if pick_tuned else est
        d[p] = {"estimate": est - fp, "tuned": m - fp, "chosen": chosen - fp, "picked": "fine-tuned" if pick_tuned
                else "no fine-tuning"}
        rows.append([label, f"{est:.2f} ({est - fp:+.2f}); val {est_val:.2f}",
                     f"{core.fmt_ms(a)} ({m - fp:+.2f}); val {mv:.2f}", f"{d[p]['picked']}: {chosen - fp:+.2f}"])
    ok8 = d["w8a8"]["chosen"] >= -core.TOL
    ok4 = d["w4a4"]["chosen"] >= -core.TOL
    verdict = "held" if ok8 and ok4 else ("partly held" if ok8 else "did not hold")
    figure = (f"within {ep:.2f} epoch{'s' if ep > 1.01 else ''} (validation-selected): W8A8 "
              f"{d['w8a8']['chosen']:+.2f}, W4A4 {d['w4a4']['chosen']:+.2f} points vs FP32 {fp:.2f}% "
              f"(fine-tuned: {d['w8a8']['tuned']:+.2f} / {d['w4a4']['tuned']:+.2f})")
    notes = [f"Fine-tuning budget: {cfg.steps} steps of batch {cfg.batch_size} = {ep:.2f} epoch of the "
             f"{ctx['train_size']}-image training split"
             + (" (within the 'at most one epoch' of the claim). " if ep <= 1.01 else
                " (more than the claim's one epoch). ")
             +
             "These are the LSQ section's runs; the no-training column calibrates the step sizes (MSE search) "
             "and evaluates.",
             "FAQ keeps the first and last layers at 8 bits, uses ImageNet networks and a learning-rate schedule "
             "tuned for fine-tuning; here every layer is quantized (the network input at 8 bits, the last layer "
             "at the plan's bits) and the quick fine-tune's Adam + cosine recipe is used."]
    if not ok4 and ok8:
        notes.append("At 4 bits this short fine-tune is not enough here; the paper, too, fine-tuned 4-bit networks "
                     "far longer.")
    notes.append("'At most one epoch' includes none: for each precision the run with the higher validation "
                 "accuracy (no fine-tuning, or the fine-tune) is the result, and its test accuracy is reported; "
                 "the verdict uses it.")
    if d["w8a8"]["tuned"] < d["w8a8"]["estimate"]:
        notes.append("The quick fine-tune (Adam, lr 1e-3) lowered the W8A8 network's accuracy: at 8 bits the "
                     "calibrated network is already at FP32 accuracy and the fine-tune only perturbs it; FAQ used "
                     "a small learning rate for this.")
    table = {"columns": ["precision", "no fine-tuning (%)", f"{cfg.steps} steps = {ep:.2f} epoch (%)",
                         "validation-selected vs FP32"], "rows": rows}
    return core.section(__name__, verdict, figure, table, notes, extra={"delta": d, "epochs": ep})
