"""A reproduction study, at small scale, of the claims of the papers bitscape is built on.

Each claim is one module (``engine.study.<id>``): the runs it needs (shared between claims when
they are the same run), and a report section with the paper's claim in one line, our figure,
a table, notes and a verdict (held / partly held / did not hold / inconclusive) computed from
the figures by the rule the section states. ``run_study`` runs every claim's runs on a small
process pool and writes a Markdown report with PNG plots; ``bitscape bench study`` calls it.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import time
from pathlib import Path

from engine.study.core import QUICK_ONLY, TOL, VERDICTS, Config

CLAIMS = ("wrpn", "apprentice", "lsq", "faq", "mixed", "sparsity", "dlac", "rnn", "pbatch", "dual", "cpt", "bsq",
          "policy")

__all__ = ["CLAIMS", "Config", "VERDICTS", "run_study", "run_both", "render_markdown"]


def modules(claims=CLAIMS):
    return [importlib.import_module(f"{__name__}.{c}") for c in claims]


def main_context(cfg: Config) -> dict:
    """Topologies (from freshly built networks: no weights needed) and split sizes, in the main process."""
    from engine.models.data import load_dataset
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    data = load_dataset(cfg.dataset)
    topo = {m: analyze(build_model(m, data.input_shape, data.num_classes).eval(), data.input_shape)
            for m in (cfg.model, cfg.rnn)}
    return {"topo": topo, "train_size": len(data.y_train), "sizes": data.sizes()}


def run_both(cfg: Config, out: str | Path, log=None, claims=CLAIMS, resume: str | Path | None = None,
             render_only: bool = False) -> dict:
    """The study at the quick budget (every claim), then at the convergent one (every claim not in
    QUICK_ONLY), in one report: a verdict per claim at each budget. ``resume`` keeps the quick runs
    in FILE and the convergent ones in FILE with ``.convergent`` before its suffix."""
    from dataclasses import replace
    out = Path(out)
    plots = out.parent / out.stem
    quick = run_study(replace(cfg, budget="quick") if cfg.budget != "quick" else cfg, log=log, claims=claims,
                      resume=resume, render_only=render_only, plots=plots)
    conv_cfg = Config.make(quick=cfg.quick, workers=cfg.workers, budget="convergent")
    conv_claims = tuple(c for c in claims if c not in QUICK_ONLY)
    conv_resume = None if resume is None else Path(resume).with_suffix(".convergent" + (Path(resume).suffix or ".json"))
    if log:
        log(f"convergent budget: {', '.join(conv_claims)}")
    quick["convergent"] = run_study(conv_cfg, log=log, claims=conv_claims, resume=conv_resume,
                                    render_only=render_only, plots=plots / "convergent") if conv_claims else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(quick, plots_rel=plots.name))
    return quick


def run_study(cfg: Config, out: str | Path | None = None, log=None, claims=CLAIMS, resume: str | Path | None = None,
              render_only: bool = False, plots: Path | None = None) -> dict:
    """Run the study; write ``out`` (Markdown) and its plots in ``<out without .md>/``; return the results.

    ``resume``: a JSON file of finished runs, read if it exists (those runs are not repeated) and
    rewritten as runs finish, so an interrupted study continues where it stopped. ``render_only``
    runs nothing: the report is written from the runs in ``resume`` (sections missing runs say so).
    """
    import torch
    torch.set_num_threads(1)
    from engine.study.core import execute
    log = log or (lambda m: None)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    mods = modules(claims)
    ctx = main_context(cfg)
    prior, save, elapsed0 = {}, None, 0.0
    meta = {"load_before": [round(x, 2) for x in load0], "machine": _machine()}
    if resume:
        resume = Path(resume)
        if resume.is_file():
            saved = json.loads(resume.read_text())
            # runs are keyed by plan, seed and budget: a study with more seeds reuses the runs it shares
            free = ("workers", "seeds", "seeds_minor")
            norm = lambda d: {k: v for k, v in json.loads(json.dumps(d)).items() if k not in free}  # noqa: E731
            if norm(saved.get("config", {})) != norm(cfg.to_dict()):
                raise ValueError(f"{resume} was written by a study with another configuration")
            prior = {k: v for k, v in saved["done"].items() if "error" not in v}
            elapsed0 = float(saved.get("elapsed_s", 0.0))
            meta = saved.get("meta") or meta
            log(f"resuming: {len(prior)} finished runs from {resume}")
        resume.parent.mkdir(parents=True, exist_ok=True)

        def save(d):
            tmp = resume.with_suffix(".tmp")
            tmp.write_text(json.dumps({"config": cfg.to_dict(), "done": d, "meta": meta,
                                       "elapsed_s": elapsed0 + time.perf_counter() - t0}, default=float))
            tmp.replace(resume)
    if render_only:
        done = dict(prior)
    else:
        done = execute(cfg, mods, ctx, log, prior, save)
    missing = sorted({t.key for m in mods for t in m.tasks(cfg, ctx, done)} - set(done))
    t_pool = time.perf_counter() - t0
    for m in mods:
        if hasattr(m, "final"):
            t1 = time.perf_counter()
            try:
                done[f"{m.ID}-final"] = dict(m.final(cfg, ctx, done), _wall=time.perf_counter() - t1)
            except Exception as e:
                done[f"{m.ID}-final"] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{m.ID}: final measurements ({time.perf_counter() - t1:.1f} s)")
    if not render_only:
        meta["load_after"] = [round(x, 2) for x in os.getloadavg()]
        if save is not None:
            save(done)
    out = Path(out) if out else None
    if plots is None:
        plots = (out.parent / out.stem) if out else Path(os.environ.get("TMPDIR", "/tmp")) / "bitscape-study"
    sections = []
    for m in mods:
        try:
            sections.append(m.section(cfg, ctx, done, plots))
        except Exception as e:
            from engine.study.core import failed_section
            sections.append(failed_section(m, [f"section failed: {type(e).__name__}: {e}"]))
    task_walls = sorted(((k, r.get("_wall", 0.0)) for k, r in done.items()), key=lambda kv: -kv[1])
    result = {"config": cfg.to_dict(), "sections": sections, "wall_s": round(time.perf_counter() - t0, 1),
              "resumed": len(prior), "missing_runs": missing,
              "total_wall_s": round(elapsed0 + time.perf_counter() - t0, 1),
              "pool_wall_s": round(t_pool, 1), "task_cpu_s": round(sum(w for _, w in task_walls), 1),
              "tasks": len(done), "load_before": meta.get("load_before"), "load_after": meta.get("load_after"),
              "load_observed": meta.get("load_observed"), "machine": meta.get("machine") or _machine(),
              "sizes": ctx["sizes"], "slowest_tasks": task_walls[:5]}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_markdown(result, plots_rel=plots.name))
    return result


def _machine() -> dict:
    import torch

    from engine.evaluation import code_version
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "code_version": code_version()}


def _md_table(t: dict) -> str:
    cols = t["columns"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in t["rows"]]
    return "\n".join(lines)


def render_markdown(result: dict, plots_rel: str = "results") -> str:
    cfg = result["config"]
    quick = cfg["quick"]
    mach = result["machine"]
    sz = result["sizes"]
    L = []
    L.append("# Reproduction study: the claims bitscape is built on, at small scale"
             + (" (QUICK MODE: smoke run, not the study)" if quick else ""))
    L.append("")
    L.append("Generated by `bitscape bench study" + (" --quick" if quick else "")
             + ("" if result.get("convergent") else f" --budget {cfg.get('budget', 'quick')}")
             + "` (engine/study). Every figure below was measured in this run unless a note says it is a "
             "cost-model figure. Verdicts are computed from the figures by the rule each section states; "
             f"'matches' means within {TOL} accuracy points unless stated. Claims are paraphrased from the "
             "papers: read the papers for their exact figures.")
    L.append("")
    if result.get("missing_runs"):
        L.append(f"> **Partial study**: {len(result['missing_runs'])} planned runs did not run (the study was stopped "
                 "before they finished); the sections that need them are marked inconclusive.")
        L.append("")
    if quick:
        L.append("> **Quick mode**: LeNet-5 and the LSTM on scikit-learn's 8x8 digits, tiny budgets and one seed. "
                 "It checks that every part of the study runs; its verdicts say nothing about the papers.")
        L.append("")
    L.append("## Setup")
    L.append("")
    L.append(f"- Data: `{cfg['dataset']}`, splits train {sz['train']} / validation {sz['val']} / test {sz['test']}"
             + (f"; validation cut to its first {cfg['val_limit']} images (it only steers selection: ALPS "
                "scores); every test accuracy is on the whole test split" if cfg["val_limit"] else "")
             + ".")
    L.append(f"- Networks: `{cfg['model']}` (FP32 baseline shipped in data/baselines) and `{cfg['rnn']}` "
             "(row-by-row LSTM; baseline described in its section).")
    L.append(f"- Budget ({cfg.get('budget', 'quick')}): fine-tune (Adam, cosine learning rate, LSQ step sizes, "
             "batch-norm re-estimated, validation-best state kept) of "
             f"{cfg['steps']} steps of batch {cfg['batch_size']} on the CNN, {cfg['rnn_steps']} on the LSTM; "
             f"seeds {list(cfg['seeds'])} for headline comparisons, {list(cfg['seeds_minor'])} for secondary ones. "
             "Differences are called 'beyond noise' when they exceed two standard errors over the seeds.")
    L.append(f"- Machine: {mach['cpus']} CPUs, {mach['platform']}, Python {mach['python']}, torch {mach['torch']}, "
             f"bitscape {mach['code_version']}; {cfg['workers']} worker process(es), one torch thread each. "
             + "; ".join(x for x in ((f"Load average before {result['load_before']}, after {result['load_after']}"
                                      if result.get("load_after") and result.get("load_before") else ""),
                                     result.get("load_observed") or "") if x)
             + " (a shared machine: other work ran alongside, so wall times are inflated).")
    if result.get("resumed") and result["resumed"] == result["tasks"]:
        L.append(f"- Runtime: {result['total_wall_s'] / 60:.1f} min wall ({result['tasks']} runs; "
                 f"{result['task_cpu_s'] / 60:.1f} min summed over runs). This report was re-rendered from the "
                 "saved runs (`--resume FILE --render-only`)"
                 + ("; the kernel timings of the PrecisionBatching section were measured at rendering."
                    if any(x["id"] == "pbatch" for x in result["sections"]) else "."))
    elif result.get("resumed"):
        L.append(f"- Runtime: {result['total_wall_s'] / 60:.1f} min wall over the invocations that produced these "
                 f"runs ({result['tasks']} runs, {result['resumed']} of them kept from earlier invocations of the "
                 f"same configuration; {result['task_cpu_s'] / 60:.1f} min summed over runs).")
    else:
        L.append(f"- Runtime: {result['wall_s'] / 60:.1f} min wall ({result['tasks']} runs, "
                 f"{result['task_cpu_s'] / 60:.1f} min summed over runs).")
    conv = result.get("convergent")
    by_id = {s["id"]: s for s in conv["sections"]} if conv else {}
    if conv:
        cc = conv["config"]
        L.append(f"- Convergent budget: {cc['steps']} steps of batch {cc['batch_size']} on the CNN "
                 f"({_epochs(cc['steps'], cc['batch_size'], sz['train'])} epoch of the training split), "
                 f"{cc['rnn_steps']} on the LSTM; seeds {list(cc['seeds'])} (one seed: its differences carry no "
                 "noise estimate, and the quick budget's spread over seeds is the guide). Claims run at it: "
                 f"{', '.join(by_id) or 'none'}; "
                 + "; ".join(f"{k} ran at the quick budget only ({why})" for k, why in QUICK_ONLY.items()
                             if any(x["id"] == k for x in result["sections"])) + ".")
        if conv.get("missing_runs"):
            L.append(f"- **Partial at the convergent budget**: {len(conv['missing_runs'])} planned runs did not run; "
                     "the sections that need them are marked inconclusive there.")
        L.append(f"- Runtime at the convergent budget: {_wall(conv)}. Both budgets: "
                 f"{(_wall_s(result) + _wall_s(conv)) / 60:.1f} min wall.")
    L.append("")
    L.append("## Summary")
    L.append("")
    if conv:
        L.append("| claim | paper's claim (paraphrased) | quick budget: our figure | verdict | convergent budget: "
                 "our figure | verdict |")
        L.append("|---|---|---|---|---|---|")
        for s in result["sections"]:
            c = by_id.get(s["id"])
            tail = (f"{c['figure']} | **{c['verdict']}**" if c else
                    f"not run ({QUICK_ONLY.get(s['id'], 'not requested')}) | -")
            L.append(f"| [{s['title']}](#{_anchor(s['title'])}) | {s['claim']} | {s['figure']} | "
                     f"**{s['verdict']}** | {tail} |")
    else:
        L.append("| claim | paper's claim (paraphrased) | our figure | verdict |")
        L.append("|---|---|---|---|")
        for s in result["sections"]:
            L.append(f"| [{s['title']}](#{_anchor(s['title'])}) | {s['claim']} | {s['figure']} | **{s['verdict']}** |")
    L.append("")
    for s in result["sections"]:
        L.append(f"## {s['title']}")
        L.append("")
        L.append(f"*Paper*: {s['paper']}.")
        L.append("")
        L.append(f"**Claim**: {s['claim']}")
        L.append("")
        if s.get("setup"):
            L.append(f"**Setup**: {s['setup']}")
            L.append("")
        L.append(f"**Our figure**: {s['figure']}")
        L.append("")
        L.append(f"**Verdict**: {s['verdict']}")
        L.append("")
        if s.get("table"):
            L.append(_md_table(s["table"]))
            L.append("")
        for n in s.get("notes", []):
            L.append(f"- {n}")
        if s.get("notes"):
            L.append("")
        for p in s.get("plots", []):
            L.append(f"![{s['title']}]({plots_rel}/{p})")
            L.append("")
        if conv:
            L += _convergent_part(s, by_id.get(s["id"]), conv, plots_rel)
        elif cfg.get("budget") == "convergent":
            L += _beyond_budget(s)
    return "\n".join(L).rstrip() + "\n"


def _convergent_part(quick: dict, c: dict | None, conv: dict, plots_rel: str) -> list[str]:
    cc = conv["config"]
    L = [f"### At the convergent budget ({cc['steps']} steps, {len(cc['seeds'])} seed)", ""]
    if c is None:
        L += [f"Not run at the convergent budget: {QUICK_ONLY.get(quick['id'], 'not requested in this run')}.", ""]
        return L
    L += [f"**Our figure**: {c['figure']}", "", f"**Verdict**: {c['verdict']}"
          + ("" if c["verdict"] == quick["verdict"] else f" (quick budget: {quick['verdict']})"), ""]
    if c.get("table"):
        L += [_md_table(c["table"]), ""]
    for n in c.get("notes", [])[:1]:
        L.append(f"- {n}")
    if c.get("notes"):
        L.append("")
    for p in c.get("plots", []):
        L += [f"![{c['title']}, convergent budget]({plots_rel}/convergent/{p})", ""]
    return L + _beyond_budget(c)


def _beyond_budget(section: dict) -> list[str]:
    """What the evidence points to where a claim still fails at the convergent budget."""
    why = getattr(importlib.import_module(f"{__name__}.{section['id']}"), "BEYOND_BUDGET", None)
    if section["verdict"] == "held" or not why:
        return []
    return [f"**Still short with the longer budget; what the evidence points to**: {why}", ""]


def _epochs(steps: int, batch: int, train: int) -> str:
    return f"{steps * batch / max(train, 1):.2f}"


def _wall_s(r: dict) -> float:
    return float(r.get("total_wall_s") or r.get("wall_s") or 0.0)


def _wall(r: dict) -> str:
    return f"{_wall_s(r) / 60:.1f} min wall ({r['tasks']} runs, {r['task_cpu_s'] / 60:.1f} min summed over runs)"


def _anchor(title: str) -> str:
    import re
    a = title.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")


def to_json(result: dict) -> str:
    return json.dumps(result, default=float)
