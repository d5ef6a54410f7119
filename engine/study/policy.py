"""Low-precision policy distillation (McKinstry et al.): a CartPole policy distilled into W8A8..W1A1."""
from __future__ import annotations

from engine.study import core

ID = "policy"
TITLE = "Low-precision policy distillation"
PAPER = ("McKinstry, Barch, Bablani, Debole, Esser, Kusnitz, Arthur, Modha, 'Low Precision Policy Distillation "
         "with Application to Low-Power, Real-time Sensation-Cognition-Action Loop with Neuromorphic Computing', "
         "arXiv 1809.09260, 2018")
CLAIM = ("Distilling a full-precision reinforcement-learning policy into a low-precision network is a practical way "
         "to get a low-precision agent: the student, down to very low precision, plays close to its full-precision "
         "teacher (paraphrased).")
# what the evidence points to when the claim still fails at the convergent budget
BEYOND_BUDGET = ("The paper's students play Atari on TrueNorth from a large DQN teacher; ours is a 32-unit MLP on "
                 'CartPole, where 2-bit weights and activations leave the policy too little resolution near the '
                 'decision boundary. More distillation steps and DAgger rounds did not close it, which points to the '
                 "network's size (scale), not to distillation.")
BITS = (8, 4, 2, 1)
CLOSE = 0.95          # a student "plays close to" its teacher at this share of the teacher's return or more


def budget(cfg) -> dict:
    """Distillation steps and DAgger rounds: the quick budget is the CLI's default, the convergent
    one four times the steps plus two DAgger rounds (states the student itself visits)."""
    if cfg.budget == "convergent":
        return {"steps": 200, "dagger": 1} if cfg.quick else {"steps": 1200, "dagger": 2}
    return {"steps": 100, "dagger": 0} if cfg.quick else {"steps": 300, "dagger": 0}


def run(cfg, bits: int, seed: int = 0) -> dict:
    from engine.training.methods.policy import policy_distill
    r = policy_distill((bits, bits), seed=seed, **budget(cfg))
    return {k: r[k] for k in ("teacher_return", "student_return", "random_return", "return_ratio", "agreement",
                              "states", "dagger_returns", "wall_s")}


def _key(cfg, bits: int, seed: int) -> str:
    b = budget(cfg)
    return f"policy|w{bits}a{bits}|s{seed}|n{b['steps']}|d{b['dagger']}"


def tasks(cfg, ctx, done):
    return [core.Task(_key(cfg, b, s), "engine.study.policy:run", {"bits": b, "seed": s}, 0.3)
            for b in BITS for s in cfg.seeds]


def section(cfg, ctx, done, plots):
    keys = {b: [_key(cfg, b, s) for s in cfg.seeds] for b in BITS}
    problems = [f"{k}: {done[k]['error']}" if k in done else f"{k}: missing"
                for ks in keys.values() for k in ks if k not in done or "error" in done[k]]
    if problems:
        return core.failed_section(__name__, problems)
    teacher = [done[k]["teacher_return"] for k in keys[BITS[0]]]
    rand = [done[k]["random_return"] for k in keys[BITS[0]]]
    ratio = {b: [100 * done[k]["return_ratio"] for k in keys[b]] for b in BITS}
    agree = {b: [100 * done[k]["agreement"] for k in keys[b]] for b in BITS}
    close = {b: core.mean_sd(ratio[b])[0] >= 100 * CLOSE for b in BITS}
    if close[4] and close[2]:
        verdict = "held"
    elif close[4]:
        verdict = "partly held"
    else:
        verdict = "did not hold"
    rows = [[f"W{b}A{b}", core.fmt_ms([done[k]["student_return"] for k in keys[b]]), core.fmt_ms(ratio[b]),
             core.fmt_ms(agree[b]), "yes" if close[b] else "no"] for b in BITS]
    b = budget(cfg)
    figure = ("student return as % of the FP32 teacher's: "
              + ", ".join(f"W{x}A{x} {core.mean_sd(ratio[x])[0]:.0f}%" for x in BITS)
              + f" (teacher {core.mean_sd(teacher)[0]:.0f}, random policy {core.mean_sd(rand)[0]:.0f})")
    notes = [f"CartPole (200-step episodes), an MLP 4-32-32-2 teacher trained by the cross-entropy method; the "
             f"student is the teacher's network through the plan machinery (LSQ weights and activations at the bits "
             f"shown), distilled for {b['steps']} steps on states of 20 teacher rollouts"
             + (f", then {b['dagger']} DAgger rounds (states the student visits, labelled by the teacher)"
                if b["dagger"] else "")
             + f"; {core.n_seeds(cfg.seeds)}, each evaluated greedily on 100 seeded episodes.",
             f"Verdict rule: held when W4A4 and W2A2 students reach {100 * CLOSE:.0f}% of the teacher's return "
             "(mean over seeds), partly held when only W4A4 does.",
             "The paper distilled DQN policies for ten Atari games into networks for the TrueNorth chip (binary "
             "activations, low-precision weights); this is a much smaller control task with a small teacher, so "
             "it tests the mechanism, not the paper's scale."]
    fig, ax = core.figure()
    xs = list(range(len(BITS)))
    ax.errorbar(xs, [core.mean_sd(ratio[x])[0] for x in BITS], yerr=[core.mean_sd(ratio[x])[1] for x in BITS],
                marker="o", capsize=3, label="distilled student")
    ax.axhline(100, color="k", ls="--", lw=1, label="FP32 teacher")
    ax.axhline(100 * core.mean_sd(rand)[0] / max(core.mean_sd(teacher)[0], 1e-9), color="gray", ls=":", lw=1,
               label="random policy")
    ax.set_xticks(xs, [f"W{x}A{x}" for x in BITS])
    ax.set_ylabel("return, % of the teacher's")
    ax.set_ylim(0, 110)
    ax.set_title(f"Policy distillation on CartPole, {b['steps']} steps" + (f" + {b['dagger']} DAgger" if b["dagger"] else ""),
                 fontsize=9)
    ax.legend(fontsize=7)
    plot = core.save(fig, plots, "policy")
    table = {"columns": ["student", "return", "% of teacher", "action agreement (%)", f">= {100 * CLOSE:.0f}%"],
             "rows": rows}
    return core.section(__name__, verdict, figure, table, notes, plots=[plot],
                        extra={"ratio": {x: core.mean_sd(ratio[x])[0] for x in BITS}})
