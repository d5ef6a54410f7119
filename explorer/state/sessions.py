"""Sessions: the list a browser can reach, and how a workspace saves, opens, autosaves,
imports and exports them. No Panel import: views bind to these, tests drive them.

A named session (saved, imported or made by ``bitscape sweep --session``) is a snapshot that a
share link opens read-only. A workspace autosaves to a separate working copy (unlisted, reached
by ``?ws=<id>``), so that a reload loses nothing. The list labels each session with its name,
model and dataset, creation time and a short id, so same-name sessions stay apart.

Every session has an owner (the browser or user that saved it; see explorer.identity). The list
shows a browser only its own sessions, those it opened by link and the command line's; a
session it does not own opens read-only, and the store itself refuses its changes.
"""
from __future__ import annotations

import datetime as _dt
import json
import secrets

import param

from engine.errors import USER_ERRORS, UserError
from engine.plans.plan import Plan, PlanError

SHORT_ID = 6
MAX_NAME = 200
READ_ONLY = "this session is read-only; save a copy to change it"
NOT_YOURS = "it belongs to someone else"
# what a working copy remembers besides the plan and the points (restored on reload)
AUTOSAVED = ("model", "dataset", "profile", "batch", "steps", "distill", "seed", "preset", "x_axis", "y_axis",
             "only_finetuned")


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
        return _dt.datetime.fromtimestamp(float(ts), _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return "unknown date"


def session_label(s: dict, mine: bool = True) -> str:
    """One line for the picker, e.g. 'my study · lenet5 on digits · 2026-12-04 13:29 UTC · a1b2c3'
    ('(read-only)' after the name of a session that is not ``mine``).

    Plain text: widgets show it as text, never as markup.
    """
    kind = session_kind(s)
    tag = f" ({kind})" if kind in ("imported", "sweep") else ""
    tag += "" if mine else " (read-only)"
    name = " ".join(str(s.get("name", "")).split())[:120] or "(no name)"
    return f"{name}{tag} · {s.get('model')} on {s.get('dataset')} · {created_text(s.get('created'))} · {str(s['id'])[:SHORT_ID]}"


class SessionList(param.Parameterized):
    """The sessions one owner may list, newest first: its own, those it opened by link, the command
    line's; ``refresh()`` rereads the store (cheap: one query)."""

    entries = param.List(default=[], doc="listed sessions, newest first: dicts with id, name, kind, mine, label...")

    def __init__(self, store_getter, owner: str | None = None, **params):
        self._store_getter = store_getter
        self.owner = owner
        super().__init__(**params)

    def refresh(self) -> bool:
        """Reread the store; returns True when the list changed (only then do watchers fire)."""
        rows = [s for s in self._store_getter().sessions(visible_to=self.owner) if is_listed(s)]
        rows.sort(key=lambda s: (s.get("created") or 0.0), reverse=True)
        entries = []
        for s in rows:
            mine = self.owner is None or s.get("owner") == self.owner
            entries.append({"id": s["id"], "name": s["name"], "model": s["model"], "dataset": s["dataset"],
                            "created": s.get("created"), "kind": session_kind(s), "mine": mine,
                            "label": session_label(s, mine)})
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


def clean_name(name) -> str:
    """A session name as stored: whitespace collapsed, non-empty, at most MAX_NAME characters."""
    name = " ".join(str(name or "").split())
    if not name:
        raise UserError("give the session a name")
    if len(name) > MAX_NAME:
        raise UserError(f"the session name is {len(name)} characters long; at most {MAX_NAME}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError("the session name holds characters that cannot be stored") from None
    return name


def new_owner() -> str:
    """An owner for a workspace whose browser has no identity (outside a server): this page only."""
    return f"anon:{secrets.token_urlsafe(24)}"


class SessionKeeper:
    """Saves, opens, autosaves, imports, exports and deletes the sessions of one Workspace (composed
    into it), as ``owner``: every write names the owner, so the store refuses other people's sessions."""

    def __init__(self, ws, owner: str | None = None):
        self.ws = ws
        self.owner = owner or new_owner()
        self.attached: set[str] = set()  # evaluation keys already in the working copy
        self.dirty = False               # something changed since the last autosave
        self.viewing = ""                # the session shown read-only (what "export" writes out)

    @property
    def store(self):
        return self.ws.store

    def owns(self, s: dict) -> bool:
        return s.get("owner") is not None and s.get("owner") == self.owner

    def ensure(self) -> str:
        ws = self.ws
        if not ws.work_id:
            ws.work_id = self.store.create_session("working copy", ws.model, ws.dataset, ws.profile,
                                                   meta={"saved": False, "autosave": True}, owner=self.owner)
            self.attached, self.dirty = set(), True
        return ws.work_id

    def snapshot(self) -> dict:
        ws = self.ws
        return {"plan": ws.current_plan().to_dict(), "state": {k: getattr(ws, k) for k in AUTOSAVED}}

    def autosave(self, force: bool = False) -> bool:
        ws = self.ws
        if ws.read_only or not (self.dirty or force):
            return False
        sid = self.ensure()
        self.dirty = False
        meta = {"saved": False, "autosave": True, **self.snapshot(),
                "named": {"id": ws.session_id, "name": ws.session_name}}
        try:
            self.store.update_session_meta(sid, meta, owner=self.owner)
            new = [ev for k, ev in ws._evals.items() if k not in self.attached]
            if new:
                self.store.put_many(new, session=sid, owner=self.owner)
                self.attached.update(ev.key for ev in new)
        except USER_ERRORS as e:  # e.g. another owner's working copy: nothing was written
            ws.message = f"not saved: {e}"
            return False
        return True

    def save(self, name: str) -> str:
        ws = self.ws
        name = clean_name(name)
        sid = self.store.create_session(name, ws.model, ws.dataset, ws.profile, meta={"saved": True, **self.snapshot()},
                                        owner=self.owner)
        self.store.put_many(ws.evaluations(), session=sid, owner=self.owner)
        ws.session_id, ws.session_name, ws.read_only = sid, name, False
        self.dirty = True  # the working copy learns its new name (and is made, after a read-only view)
        ws.message = f"saved session {name!r}"
        ws.session_list.refresh()
        return sid

    def load(self, s: dict, read_only: bool) -> bool:
        """Put a stored session into the workspace; refuses (changing nothing) what this server cannot show."""
        ws = self.ws
        meta = s.get("meta") or {}
        state = meta.get("state") if isinstance(meta.get("state"), dict) else {}
        model, dataset = state.get("model", s["model"]), state.get("dataset", s["dataset"])
        if model not in ws.param.model.objects:
            ws.message = f"session {s['name']!r} not opened: it uses model {model!r}, which this server does not offer"
            return False
        if dataset not in ws.param.dataset.objects:
            ws.message = (f"session {s['name']!r} not opened: it uses dataset {dataset!r}, which this server "
                          "does not offer")
            return False
        evals = self.store.evaluations(session=s["id"])
        ws._quiet += 1
        was_read_only = ws.read_only
        try:
            ws.read_only = False
            values = {"model": model, "dataset": dataset, "profile": s["profile"], **state}
            for k in AUTOSAVED:
                if k in values:
                    try:
                        setattr(ws, k, values[k])
                    except (ValueError, TypeError):
                        pass  # a setting this server does not have: keep the current one
            old_evals, ws._evals = ws._evals, {e.key: e for e in evals}
            ws._cost_memo.clear()
            ws._load_model()
            if ws._loaded != (model, dataset):  # the model could not be built: nothing else changes
                ws._evals = old_evals
                ws._refresh_points()
                ws.read_only = was_read_only
                return False
            plan = meta.get("plan")
            if plan:
                try:
                    ws._set_configs(Plan.from_dict(plan).resolve(ws.topology.names))
                except (PlanError, RecursionError):
                    pass  # a plan that no longer fits: the editor shows FP32
            from .workspace import JOB_COLUMNS, _empty
            ws._job_ids = []
            ws.jobs = _empty(JOB_COLUMNS)
            ws.read_only = read_only
        finally:
            ws._quiet -= 1
        return True

    def open(self, sid: str, read_only: bool = False) -> bool:
        """Open a named session; one this owner does not own opens read-only (and joins its list)."""
        ws = self.ws
        s = self.store.session(str(sid)) if sid else None
        if s is None or session_kind(s) == "working":
            ws.message = "no such session (the link may be wrong or the session deleted)"
            return False
        mine = self.owns(s)
        read_only = read_only or not mine
        if not self.load(s, read_only):
            return False
        ws.session_id, ws.session_name = s["id"], s["name"]
        self.viewing = s["id"] if read_only else ""
        if not read_only:
            ws.work_id, self.attached, self.dirty = "", set(), True
        if not mine:
            self.store.remember_visit(self.owner, s["id"])
            ws.session_list.refresh()
        why = "" if not read_only else f" (read-only: {NOT_YOURS}; save a copy to change it)" if not mine \
            else " (read-only)"
        ws.message = f"opened session {s['name']!r}{why}"
        return True

    def restore(self, work_id: str) -> bool:
        """Reopen a working copy: this owner's, writable as it was left; another's, read-only."""
        ws = self.ws
        s = self.store.session(str(work_id)) if work_id else None
        if s is None or session_kind(s) != "working":
            ws.message = "that workspace link is not valid (the working copy may have been deleted)"
            return False
        mine = self.owns(s)
        if not self.load(s, read_only=not mine):
            return False
        named = (s.get("meta") or {}).get("named") or {}
        ws.session_id, ws.session_name = str(named.get("id") or ""), str(named.get("name") or "")
        if mine:
            ws.work_id, self.attached, self.dirty, self.viewing = s["id"], set(ws._evals), False, ""
            ws.message = ""
        else:  # another browser's working copy: shown, never written (no work_id: nothing autosaves)
            ws.session_name = ws.session_name or "working copy"
            ws.work_id, self.attached, self.dirty, self.viewing = "", set(), False, s["id"]
            ws.message = f"this workspace link is another browser's: read-only ({NOT_YOURS}); save a copy to change it"
        return True

    def delete(self, sid: str) -> bool:
        """Delete a session this owner owns; another's is refused (by the store) and stays."""
        ws = self.ws
        s = self.store.session(str(sid)) if sid else None
        if s is None:
            ws.message = "no such session (the link may be wrong or the session deleted)"
            return False
        try:
            self.store.delete_session(s["id"], owner=self.owner)
        except USER_ERRORS as e:
            ws.message = f"session not deleted: {e}"
            return False
        if ws.session_id == s["id"]:
            ws.session_id = ""
        ws.session_list.refresh()
        ws.message = f"deleted session {s['name']!r}"
        return True

    def export_file(self) -> str:
        ws = self.ws
        if ws.read_only and (self.viewing or ws.session_id):
            return json.dumps(self.store.export_session(self.viewing or ws.session_id), indent=1)
        self.autosave(force=True)
        return json.dumps(self.store.export_session(ws.work_id), indent=1)

    def import_file(self, data) -> bool:
        ws = self.ws
        if ws.read_only:
            ws.message = f"session file refused: {READ_ONLY}"
            return False
        if data is None or not (data.strip() if isinstance(data, (bytes, str)) else data):
            ws.message = "session file refused: the file is empty (export a session to get a session file)"
            return False
        try:
            sid = self.store.import_session(data, owner=self.owner)
        except USER_ERRORS as e:
            ws.message = f"session file refused: {e}"
            return False
        except RecursionError:
            ws.message = "session file refused: it is nested too deeply to be a session file"
            return False
        s = self.store.session(sid)
        self.store.update_session_meta(sid, {**(s.get("meta") or {}), "imported": True, "autosave": False},
                                       owner=self.owner)
        ws.session_list.refresh()
        if not self.open(sid):
            return False
        ws.message = f"imported session {s['name']!r}"
        return True
