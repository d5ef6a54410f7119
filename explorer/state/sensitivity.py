"""Per-layer sensitivity of the workspace's model, and the mixed-precision plan it suggests.

Held by a Workspace as ``ws.sens``; the Sensitivity view binds to it. Scores come from
``engine.training.sensitivity``; a read-only view may look but not compute or apply.
"""
from __future__ import annotations

import threading

import pandas as pd
import param

from engine.errors import USER_ERRORS
from engine.plans.plan import PlanError

from .sessions import READ_ONLY

COLUMNS = ["layer", "score", "rank"]


class SensitivityState(param.Parameterized):
    method = param.Selector(default="eagl", objects=["eagl", "hessian", "alps"],
                            doc="per-layer sensitivity method (ALPS runs one short fine-tune per layer)")
    scores = param.DataFrame(doc="per-layer scores of the current model (higher = more sensitive), with ranks")
    status = param.String(default="")

    def __init__(self, workspace, **params):
        self._ws = workspace
        super().__init__(scores=pd.DataFrame(columns=COLUMNS), **params)
        self.param.watch(self._guard, ["method"])

    def reset(self) -> None:
        """Forget the scores (the model or dataset changed)."""
        self.scores = pd.DataFrame(columns=COLUMNS)
        self.status = ""

    def _guard(self, event) -> None:
        ws = self._ws
        if ws.read_only and not ws._quiet:
            ws._quiet += 1
            try:
                self.method = event.old
            finally:
                ws._quiet -= 1
            ws.message = READ_ONLY

    def compute(self, background: bool = True) -> threading.Thread | None:
        """Score every layer with ``method``; in a background thread when served."""
        ws = self._ws
        if ws.read_only:
            self.status = READ_ONLY
            return None
        method, model, dataset = self.method, ws.model, ws.dataset
        self.status = f"computing {method} sensitivity..."

        def work():
            from engine.training.sensitivity import sensitivity
            try:
                kw = {"runner": ws.runner, "steps": 60} if method == "alps" else {}
                res = sensitivity(method, model, dataset, **kw)
            except USER_ERRORS as e:
                self.status = f"sensitivity failed: {e}"
                return
            if (model, dataset) != (ws.model, ws.dataset):
                return  # the analyst moved on; these scores are for another network
            ranks = res.ranks()
            self.scores = pd.DataFrame([{"layer": r.layer, "score": r.score, "rank": ranks[r.layer]}
                                        for r in res.rows], columns=COLUMNS)
            self.status = f"{method} sensitivity: rank 1 is the most sensitive layer"

        if background:
            t = threading.Thread(target=work, daemon=True, name="bitscape-sensitivity")
            t.start()
            return t
        work()
        return None

    def suggest(self, ladder: tuple[int, ...] = (8, 4, 2)) -> bool:
        """Apply a mixed plan from the ranks: the most sensitive third of the layers gets ladder[0]
        bits (weights and activations), the middle third ladder[1], the rest ladder[2].

        A layer on the binary or ternary quantizer (fixed 1 or 2 weight bits) moves to LSQ when its
        suggested width differs; the message names those layers.
        """
        ws = self._ws
        if ws.read_only:
            return ws._refuse(READ_ONLY)
        if self.scores is None or self.scores.empty:
            return ws._refuse("compute a sensitivity first")
        order = list(self.scores.sort_values("rank")["layer"])
        configs, moved = ws.configs, []
        try:
            for i, name in enumerate(order):
                bits = ladder[min(len(ladder) - 1, i * len(ladder) // len(order))]
                change = {"w_bits": bits, "a_bits": bits}
                fixed = {"binary": 1, "ternary": 2}.get(configs[name].quantizer)
                if fixed is not None and fixed != bits:
                    change["quantizer"] = "lsq"
                    moved.append(name)
                configs[name] = configs[name].replace(**change)
            ws._set_configs(configs)
        except (PlanError, KeyError) as e:
            return ws._refuse(f"suggestion not applied: {e}")
        ws.edit_error = ""
        if moved:
            ws.message = (f"suggestion applied; {', '.join(moved)} moved from the binary/ternary quantizer to "
                          "LSQ to take the suggested bits")
        return True
