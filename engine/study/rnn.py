"""Low-precision RNNs (Kapur, Mishra, Marr): the row-by-row LSTM at W4A4 and W2A2, 1x and 2x hidden size."""
from __future__ import annotations

from engine.study import core

ID = "rnn"
TITLE = "Low-precision RNNs, with and without widening"
PAPER = "Kapur, Mishra, Marr, 'Low Precision RNNs: Quantizing RNNs Without Losing Accuracy', arXiv 1710.07706"
CLAIM = ("Quantized LSTMs lose accuracy at 4 and 2 bits, and widening the hidden state (WRPN-style) recovers "
         "full-precision accuracy at low precision (paraphrased).")
# what the evidence points to when the claim still fails at the convergent budget
BEYOND_BUDGET = ("The papers' LSTMs are language models trained from scratch at the target precision; ours reads image "
                 'rows and is fine-tuned from FP32, where a 2-bit hidden state loses information a longer schedule '
                 'cannot restore without retraining the recurrence from scratch.')
PAIRS = (("w4a4", "2x-w4a4"), ("w2a2", "2x-w2a2"))
BASELINE = "rnn-baseline"


def baseline(cfg) -> dict:
    """The LSTM's FP32 baseline: the cached / shipped one, else trained now into the user cache."""
    from engine.models.baselines import baseline_path, train_baseline
    from engine.models.checkpoint import load_state
    p = baseline_path(cfg.rnn, cfg.dataset)
    if p is None:
        r = train_baseline(cfg.rnn, cfg.dataset, epochs=cfg.lstm_epochs, seed=0)
        return {"trained_now": True, "path": r["path"], "epochs": r["epochs"], "steps": r["steps"],
                "test_accuracy": r["test_accuracy"], "val_accuracy": r["val_accuracy"], "train_s": r["wall_s"]}
    _, meta = load_state(p)
    return {"trained_now": False, "path": str(p), "epochs": meta.get("epochs"), "steps": meta.get("steps"),
            "test_accuracy": meta.get("test_accuracy"), "val_accuracy": meta.get("val_accuracy")}


def tasks(cfg, ctx, done):
    out = [core.Task(BASELINE, "engine.study.rnn:baseline", {}, weight=30.0)]
    b = done.get(BASELINE)
    if b and "error" not in b:
        out += [core.ft_task(cfg, p, s, steps=cfg.rnn_steps, model=cfg.rnn, weight=0.5)
                for pair in PAIRS for p in pair for s in cfg.seeds_minor]
    return out


def section(cfg, ctx, done, plots):
    b = done.get(BASELINE, {})
    if "error" in b:
        return core.failed_section(__name__, [f"LSTM baseline: {b['error']}"])
    keys = {p: [core.key_ft(cfg.rnn, p, s, cfg.rnn_steps) for s in cfg.seeds_minor] for pair in PAIRS for p in pair}
    a, m, fp, problems = core.gather(done, cfg.rnn, keys)
    if problems:
        return core.failed_section(__name__, problems)
    rows, cmp = [], {}
    for narrow, wide in PAIRS:
        c = core.compare(a[narrow], a[wide])
        cmp[narrow] = c
        rows.append([narrow.upper(), f"{core.fmt_ms(a[narrow])} ({m[narrow] - fp:+.2f})",
                     f"{core.fmt_ms(a[wide])} ({m[wide] - fp:+.2f})", core.fmt_diff(c)])
    low_loses = m["w2a2"] < fp - core.TOL or m["w4a4"] < fp - core.TOL
    # where 1x loses, does 2x get back to FP32 (held), or at least improve on 1x (partly)?
    losing = [n for n, _ in PAIRS if m[n] < fp - core.TOL]
    recovers = [n for n in losing if m[f"2x-{n}"] >= fp - core.TOL]
    helps = [n for n in losing if cmp[n]["diff"] > 0 and cmp[n]["significant"] is not False]
    if losing and len(recovers) == len(losing):
        verdict = "held"
    elif helps or recovers:
        verdict = "partly held"
    elif not losing:
        verdict = "inconclusive"
    else:
        verdict = "did not hold"
    wide_helps = bool(helps)
    png = core.bar_plot(plots, ID, ["W4A4", "W2A2"], {"hidden 1x": [a["w4a4"], a["w2a2"]],
                                                     "hidden 2x": [a["2x-w4a4"], a["2x-w2a2"]]}, fp,
                        f"LSTM on {cfg.dataset}, {cfg.rnn_steps} steps")
    how = ("trained now" if b.get("trained_now") else "found in the cache / shipped")
    ep = b.get("epochs")
    setup = (f"FP32 baseline: `{cfg.rnn}` (LSTM, hidden 64, reads the 28 rows as 28 time steps) on {cfg.dataset}, "
             f"{ep} epochs of Adam (lr 2e-3, batch 64, seed 0), {how}: test accuracy {fp:.2f}%.")
    figure = (f"FP32 {fp:.2f}%; W4A4 {m['w4a4'] - fp:+.2f} / 2x {m['2x-w4a4'] - fp:+.2f}; W2A2 "
              f"{m['w2a2'] - fp:+.2f} / 2x {m['2x-w2a2'] - fp:+.2f} points")
    notes = [f"{core.n_seeds(cfg.seeds_minor)}, {cfg.rnn_steps} fine-tune steps each; weights of both LSTM matrices "
             "and the input and hidden-state activations are quantized (LSQ); gate nonlinearities and the cell "
             "state stay float. 2x widens the hidden state (64 -> 128) by Net2Net replication.",
             "The paper trains the quantized RNNs (language models, sequence classification) from scratch; here a "
             "small pretrained LSTM is fine-tuned, and the FP32 baseline itself is short-trained."]
    if not low_loses:
        notes.append("At this scale even 1x low precision barely loses accuracy, leaving widening nothing to recover.")
    else:
        kept = [n.upper() for n, _ in PAIRS if n not in losing]
        if kept:
            notes.append(f"{', '.join(kept)} at 1x is already within {core.TOL} points of FP32; the claim is tested "
                         f"where 1x loses ({', '.join(n.upper() for n in losing)}).")
        if len(recovers) < len(losing) and helps:
            notes.append("Widening improves on 1x but does not reach FP32 accuracy.")
    if not wide_helps:
        notes.append("Widening did not improve W2A2 beyond seed noise.")
    table = {"columns": ["precision", "hidden 64 (%)", "hidden 128 (%)", "2x - 1x"], "rows": rows}
    return core.section(__name__, verdict, figure, table, notes, [png], setup=setup,
                        extra={"means": m, "fp32": fp, "baseline": b})
