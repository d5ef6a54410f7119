"""WRPN (Mishra et al., ICLR 2018): 2x-wide low-precision networks vs FP32 and vs 1x width."""
from __future__ import annotations

from engine.study import core

ID = "wrpn"
TITLE = "WRPN: wide reduced-precision networks"
PAPER = "Mishra, Nurvitadhi, Cook, Marr, 'WRPN: Wide Reduced-Precision Networks', ICLR 2018"
CLAIM = ("Widening layers (2x filters) compensates for reduced precision: 2x-wide W4A4 matches or beats the "
         "FP32 baseline, and widening recovers much of the loss at W2A2 (paraphrased).")
# what the evidence points to when the claim still fails at the convergent budget
BEYOND_BUDGET = ('WRPN trains the wide network from scratch over a full schedule (with first and last layers kept at '
                 'full precision); here the 2x network starts as the pretrained network replicated (Net2Net), whose '
                 "extra filters begin as copies of the old ones, and one epoch is a small fraction of the paper's "
                 'schedule. The dataset and network are small, so width has less to add than on ImageNet: this points '
                 'to the recipe and the scale, not to the method.')
PAIRS = (("w4a4", "2x-w4a4"), ("w2a2", "2x-w2a2"))


def tasks(cfg, ctx, done):
    return [core.ft_task(cfg, p, s, weight=2.5 if p.startswith("2x") else 1.0)
            for pair in PAIRS for p in pair for s in cfg.seeds]


def section(cfg, ctx, done, plots):
    keys = {p: [core.key_ft(cfg.model, p, s, cfg.steps) for s in cfg.seeds] for pair in PAIRS for p in pair}
    a, m, fp, problems = core.gather(done, cfg.model, keys)
    if problems:
        return core.failed_section(__name__, problems)
    rows, cmp = [], {}
    for narrow, wide in PAIRS:
        c = core.compare(a[narrow], a[wide])
        cmp[narrow] = c
        r1 = core.cost(ctx, cfg.model, narrow, cfg.profile)
        r2 = core.cost(ctx, cfg.model, wide, cfg.profile)
        rows.append([narrow.upper(), core.fmt_ms(a[narrow]), core.fmt_ms(a[wide]), core.fmt_diff(c),
                     f"{m[wide] - fp:+.2f}", f"{r2.size_bytes / r1.size_bytes:.2f}x",
                     f"{r2.throughput / r1.throughput:.2f}x"])
    wide4_ok = m["2x-w4a4"] >= fp - core.TOL
    c2 = cmp["w2a2"]
    wide2_ok = c2["diff"] > 0 and c2["significant"] is not False
    verdict = "held" if wide4_ok and wide2_ok else ("partly held" if wide4_ok or wide2_ok else "did not hold")
    png = core.bar_plot(plots, ID, ["W4A4", "W2A2"],
                        {"1x": [a["w4a4"], a["w2a2"]], "2x wide": [a["2x-w4a4"], a["2x-w2a2"]]}, fp,
                        f"WRPN on {cfg.model} / {cfg.dataset}, {cfg.steps} steps")
    fp_size = core.cost(ctx, cfg.model, "fp32", "bops").size_bytes
    w4_size = core.cost(ctx, cfg.model, "2x-w4a4", "bops").size_bytes
    figure = (f"2x W4A4 {m['2x-w4a4']:.2f}% vs FP32 {fp:.2f}% ({m['2x-w4a4'] - fp:+.2f}); at W2A2 2x vs 1x "
              f"{core.fmt_diff(c2)} points")
    notes = [f"{core.n_seeds(cfg.seeds)} each, {cfg.steps} fine-tune steps for every width (the same budget in steps; "
             "a 2x layer costs ~4x the MACs per step).",
             "WRPN trains the wide network from scratch; here it starts from the pretrained FP32 network widened "
             "by Net2Net replication (same function), so the extra width has to be put to use in a short fine-tune.",
             f"Size and modeled throughput ({cfg.profile} profile) are 2x-wide relative to 1x at the same precision; "
             f"the 2x W4A4 network's weights take {w4_size / fp_size:.2f}x the FP32 network's bytes (32-bit weights)."]
    if not wide4_ok:
        notes.append(f"2x W4A4 stays {fp - m['2x-w4a4']:.2f} points under FP32 (more than {core.TOL}).")
    if not wide2_ok:
        notes.append("Widening did not raise W2A2 accuracy beyond seed noise at this budget.")
    table = {"columns": ["precision", "1x (%)", "2x wide (%)", "2x - 1x", "2x vs FP32", "2x size",
                         f"2x throughput ({cfg.profile})"], "rows": rows}
    return core.section(__name__, verdict, figure, table, notes, [png], extra={"means": m, "fp32": fp})
