"""The sessions a browser can reach, listed so that same-name sessions stay apart.

Saved, imported and ``bitscape sweep --session`` sessions are listed; a browser's autosaved
working copy is not (it is reached by its own ``?ws=<id>`` link). Each entry is labelled with
its name, model and dataset, creation time and a short id. No Panel import: views bind to it.
"""
from __future__ import annotations

import datetime as _dt

import param

SHORT_ID = 6


def session_kind(s: dict) -> str:
    """'saved', 'imported', 'sweep' or 'working' (a browser's autosaved, unsaved workspace)."""
    meta = s.get("meta") or {}
    if meta.get("imported"):
        return "imported"
    if meta.get("saved") is False or meta.get("autosave"):
        return "working"
    if meta.get("saved"):
        return "saved"
    return "sweep" if "method" in meta else "saved"


def is_listed(s: dict) -> bool:
    return session_kind(s) != "working"


def created_text(ts: float) -> str:
    """A session's creation time in UTC, to the minute (what tells two same-name sessions apart)."""
    try:
        return _dt.datetime.fromtimestamp(float(ts), _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return "unknown date"


def session_label(s: dict) -> str:
    """One line for the picker, e.g. 'my study · lenet5 on digits · 2026-12-04 13:29 UTC · a1b2c3'.

    Plain text: widgets show it as text, never as markup.
    """
    kind = session_kind(s)
    tag = f" ({kind})" if kind in ("imported", "sweep") else ""
    name = " ".join(str(s.get("name", "")).split())[:120] or "(no name)"
    return f"{name}{tag} · {s.get('model')} on {s.get('dataset')} · {created_text(s.get('created'))} · {str(s['id'])[:SHORT_ID]}"


class SessionList(param.Parameterized):
    """The listed sessions of a store, newest first; ``refresh()`` rereads it (cheap: one query)."""

    entries = param.List(default=[], doc="listed sessions, newest first: dicts with id, name, kind, label...")

    def __init__(self, store_getter, **params):
        self._store_getter = store_getter
        super().__init__(**params)

    def refresh(self) -> bool:
        """Reread the store; returns True when the list changed (only then do watchers fire)."""
        rows = [s for s in self._store_getter().sessions() if is_listed(s)]
        rows.sort(key=lambda s: (s.get("created") or 0.0), reverse=True)
        entries = [{"id": s["id"], "name": s["name"], "model": s["model"], "dataset": s["dataset"],
                    "created": s.get("created"), "kind": session_kind(s), "label": session_label(s)} for s in rows]
        if entries != self.entries:
            self.entries = entries
            return True
        return False

    @property
    def options(self) -> dict[str, str]:
        """Label -> session id, for a Select widget (labels are unique: they end in the short id)."""
        out: dict[str, str] = {}
        for e in self.entries:
            label = e["label"]
            if label in out:  # two ids sharing their first characters: show the whole id
                label = f"{label[:-SHORT_ID]}{e['id']}"
            out[label] = e["id"]
        return out
