"""``bitscape calibrate``: fit a profile to a measurements CSV (from ``bitscape measure`` or your own)."""
from __future__ import annotations

import json
import math
import sys

from engine.errors import UserError

from .common import print_json


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="fit an accelerator profile to measured latencies; write the fitted profile")
    p.add_argument("--profile", default=None,
                   help="base profile: a measured runtime's base (packed, onnxruntime, onnxruntime-integer: what "
                        "it runs per width, before any fit), a name (see 'bitscape profiles') or a .json path; "
                        "default: the base of the rows' target")
    p.add_argument("--measurements", required=True, metavar="CSV", help="rows written by 'bitscape measure'")
    p.add_argument("--plans", default=None, metavar="JSON",
                   help="the measured plans by hash (default: <CSV name>.plans.json beside the CSV)")
    p.add_argument("--out", required=True, help="fitted profile to write (.json); its name is the file's stem")
    p.add_argument("--target", default=None, help="which target's rows to fit (needed when the CSV holds several)")
    p.add_argument("--use", choices=("both", "layers", "total"), default="both",
                   help="fit per-layer rows, whole-network rows or both (default both)")
    p.add_argument("--unweighted", action="store_true",
                   help="every row weighs the same (default: a layer row weighs its share of its plan's time)")
    p.add_argument("--params", default=None,
                   help="comma-separated parameters to fit (see 'bitscape profiles --describe'; default: chosen "
                        "from the profile's class)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds over plans (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold split")
    p.add_argument("--json", action="store_true", help="print the fit record as JSON")
    p.set_defaults(func=run)


def _q(q: dict) -> str:
    if not q or not q.get("n"):
        return "n/a"
    rho = q["spearman"]
    rho_s = f"{rho:.3f}" if rho is not None and math.isfinite(rho) else "n/a"
    return f"median |error| {q['median_abs_error']:.1%}, Spearman {rho_s} (n={q['n']})"


def _base(profile: str | None, target: str | None, df):
    """The base profile: a runtime's base by its target name, a named or file profile, or (none given)
    the base of the rows' one target."""
    from engine.cost import load_profile
    from engine.cost.bases import BASES
    if profile is None:
        targets = [target] if target else sorted(set(df["target"]))
        if len(targets) != 1 or targets[0] not in BASES:
            raise UserError(f"name a base profile with --profile: no built-in base for the rows' target(s) "
                            f"{', '.join(map(repr, targets))} (built-in: {', '.join(BASES)}; or any of "
                            "'bitscape profiles')")
        profile = targets[0]
    return BASES[profile]() if profile in BASES else load_profile(profile)


def run(args) -> int:
    from pathlib import Path

    from engine.cost.calibrate_measured import (
        calibrate,
        file_hash,
        fitted_profile,
        profile_name,
        rows_from_frame,
        structure_label,
    )
    from engine.cost.measure import plans_path, read_rows
    from engine.fileio import atomic_write_text

    if args.folds < 2:
        raise UserError(f"--folds must be at least 2 (got {args.folds})")
    out = Path(args.out)
    if out.suffix != ".json":
        raise UserError(f"--out must name a .json file (got {args.out!r})")
    df = read_rows(args.measurements)
    base = _base(args.profile, args.target, df)
    side = Path(args.plans) if args.plans else plans_path(args.measurements)
    if not side.is_file():
        raise UserError(f"plans file {str(side)!r} does not exist (it is written by 'bitscape measure' beside "
                        f"the CSV; give it with --plans)")
    try:
        plans = json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"plans file {str(side)!r}: not valid JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(plans, dict):
        raise UserError(f"plans file {str(side)!r}: expected a JSON object of plan hash -> plan")
    rows = rows_from_frame(df, plans, args.target, args.use, weighted=not args.unweighted)
    target = args.target or str(df["target"].iloc[0])
    params = [p.strip() for p in args.params.split(",") if p.strip()] if args.params else None
    cal = calibrate(base, rows, params, folds=args.folds, seed=args.seed)
    digest = file_hash(args.measurements, side)
    d = fitted_profile(cal, profile_name(out), digest, f"measurements sha256 {digest[:16]}", target,
                       not args.unweighted, args.use)
    from engine.cost.profiles import Profile
    Profile(d, str(out))     # validate before writing
    atomic_write_text(out, json.dumps(d, indent=2) + "\n")
    for w in cal.warnings():
        print(f"bitscape: warning: {w}", file=sys.stderr)
    if args.json:
        print_json({"out": str(out), **d["fit"]})
        return 0
    print(f"calibrated {base.name} to {cal.rows} rows ({args.use}, {'unweighted' if args.unweighted else 'weighted by share of time'}) "
          f"of {cal.plans} plans on target {target}")
    print("structures (held-out plans, whole network | layers):")
    for c in cal.candidates:
        mark = "*" if c["label"] == structure_label(cal.structure) else " "
        print(f" {mark} {c['label']:<28} {_q(c['held_out']['total'])} | {_q(c['held_out']['layers'])}")
    print(f"chosen structure: {structure_label(cal.structure)}")
    print("parameters:")
    hits = {p: s for p, _, s in cal.bound_hits}
    for p, v in cal.params.items():
        print(f"  {p:<32} {v:.5g}" + (f"   AT {hits[p].upper()} BOUND" if p in hits else ""))
    for kind in ("total", "layers"):
        if cal.in_sample[kind]["n"]:
            print(f"{'whole network' if kind == 'total' else 'per layer':<14} in-sample {_q(cal.in_sample[kind])}; "
                  f"held-out {_q(cal.held_out[kind])}")
    print(f"wrote {out} (profile {d['name']!r}; use it with --profile-file {out})")
    return 0
