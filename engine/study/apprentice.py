"""Apprentice (Mishra & Marr, ICLR 2018): distillation from the FP32 teacher vs none, same budget."""
from __future__ import annotations

from engine.study import core

ID = "apprentice"
TITLE = "Apprentice: knowledge distillation for low precision"
PAPER = "Mishra, Marr, 'Apprentice: Using Knowledge Distillation Techniques to Improve Low-Precision " \
        "Network Accuracy', ICLR 2018"
CLAIM = ("Training a low-precision student (ternary, 4-bit, 2-bit) with distillation from a full-precision "
         "teacher gives higher accuracy than training it alone (paraphrased).")
# what the evidence points to when the claim still fails at the convergent budget
BEYOND_BUDGET = ('Apprentice distils from a larger and stronger teacher (e.g. ResNet-101 for a ResNet-18 student) over '
                 "full ImageNet training; here the teacher is the student's own FP32 network, which fits Fashion-MNIST "
                 'at about 92%, so its soft targets carry little beyond the labels. The evidence points to the '
                 "teacher's size and the dataset, not to distillation itself.")
PLANS = (("w2a2", "W2A2"), ("w1a1", "W1A1"), ("ternary-a8", "ternary W, A8"))


def _seeds(cfg, p):
    return cfg.seeds if p == "w2a2" else cfg.seeds_minor


def tasks(cfg, ctx, done):
    return [core.ft_task(cfg, p, s, distill=kd) for p, _ in PLANS for kd in (False, True) for s in _seeds(cfg, p)]


def section(cfg, ctx, done, plots):
    keys = {(p, kd): [core.key_ft(cfg.model, p, s, cfg.steps, kd) for s in _seeds(cfg, p)]
            for p, _ in PLANS for kd in (False, True)}
    problems = core.errors(done, [k for ks in keys.values() for k in ks])
    fp = core.fp32_of(done, cfg.model)
    if problems or fp is None:
        return core.failed_section(__name__, problems or ["no FP32 accuracy"])
    rows, gains, sig = [], {}, {}
    a = {k: core.accs(done, v) for k, v in keys.items()}
    for p, label in PLANS:
        c = core.compare(a[(p, False)], a[(p, True)])
        gains[p], sig[p] = c["diff"], c["significant"]
        rows.append([label, core.fmt_ms(a[(p, False)]), core.fmt_ms(a[(p, True)]), core.fmt_diff(c)])
    # a gain counts when it is positive and clears the seed noise (a single seed has no noise estimate)
    pos = [p for p, _ in PLANS if gains[p] > 0]
    strong = [p for p in pos if sig[p] is not False]
    if len(strong) == len(PLANS):
        verdict = "held"
    elif strong:
        verdict = "partly held"
    else:
        verdict = "did not hold"
    png = core.bar_plot(plots, ID, [lbl for _, lbl in PLANS],
                        {"no teacher": [a[(p, False)] for p, _ in PLANS],
                         "distilled": [a[(p, True)] for p, _ in PLANS]}, fp,
                        f"Apprentice on {cfg.model} / {cfg.dataset}, {cfg.steps} steps")
    figure = "distilled - alone: " + ", ".join(f"{lbl} {gains[p]:+.2f}" for p, lbl in PLANS) + " points"
    notes = [f"{core.n_seeds(cfg.seeds)} per arm at W2A2, {core.n_seeds(cfg.seeds_minor)} at W1A1 and ternary; "
             f"{cfg.steps} steps each; loss CE + T^2 KL(teacher || student), T=2.",
             "The teacher is the FP32 network of the same architecture the student starts from (Apprentice also "
             "used larger teachers, e.g. ResNet-101 for ResNet-18, and trained much longer).",
             "Ternary weights use the fixed ternarizer (threshold 0.7 mean|w|) with 8-bit LSQ activations."]
    weak = [lbl for p, lbl in PLANS if gains[p] > 0 and sig[p] is False]
    if weak:
        notes.append("Positive but within seed noise: " + ", ".join(weak) + ".")
    neg = [lbl for p, lbl in PLANS if gains[p] <= 0]
    if neg:
        notes.append("Distillation did not help: " + ", ".join(neg) + ".")
    table = {"columns": ["precision", "no teacher (%)", "distilled (%)", "distilled - alone"], "rows": rows}
    return core.section(__name__, verdict, figure, table, notes, [png], extra={"gains": gains})
