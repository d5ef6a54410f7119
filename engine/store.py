"""The results store: sessions and Evaluations in SQLite (stdlib sqlite3).

One file (default: the user's data directory, or ``$BITSCAPE_STORE``), WAL mode, every write
one transaction (``BEGIN IMMEDIATE``), a busy timeout plus retries so several processes can
write at once. Evaluations are upserted by their cache key, so rerunning a sweep never
duplicates a point. Session files are JSON with a checksum; importing validates everything
before one transaction writes anything.

Sessions have an owner (an opaque string: ``user:<name>`` or ``anon:<token>``, given by the
dashboard; NULL for sessions made on the command line). Every method that changes a session
takes ``owner``: None skips the check (the command line), anything else must equal the
session's owner or the change is refused with NotOwnerError and nothing is written.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from engine.errors import UserError
from engine.evaluation import STATUSES, Evaluation
from engine.fileio import MAX_JSON_DEPTH, clip, json_depth, load_json

SESSION_FORMAT = "bitscape-session"
SESSION_VERSION = 1
MAX_SESSION_BYTES = 20_000_000
MAX_SESSION_EVALUATIONS = 100_000
_BUSY_MS = 30_000
_RETRIES = 40

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS evaluations_md ON evaluations(model, dataset);
CREATE TABLE IF NOT EXISTS imported_evaluations (
    key TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    profile TEXT NOT NULL,
    created REAL NOT NULL,
    meta TEXT NOT NULL,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS session_evaluations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    UNIQUE(session, key)
);
CREATE INDEX IF NOT EXISTS session_evaluations_s ON session_evaluations(session);
CREATE TABLE IF NOT EXISTS session_visits (
    owner TEXT NOT NULL,
    session TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    PRIMARY KEY(owner, session)
);
"""


class NotOwnerError(UserError):
    """A change to a session refused because the caller does not own it."""


def default_path() -> str:
    env = os.environ.get("BITSCAPE_STORE")
    if env:
        return env
    from platformdirs import user_data_dir
    return str(Path(user_data_dir("bitscape")) / "bitscape.sqlite")


def _resolve(path: str | os.PathLike | None) -> str:
    p = default_path() if path is None else os.fspath(path)
    if p.startswith("sqlite:///"):          # store URL form: sqlite:///relative or sqlite:////absolute
        p = p[len("sqlite:///"):]
    elif "://" in p:
        raise UserError(f"store {p!r}: only SQLite stores are supported (a path or sqlite:///PATH)")
    return p


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _check_store_path(p: Path) -> Path:
    """The store file, its folder created; a directory or a file that is not SQLite is refused."""
    if p.is_dir():
        raise UserError(f"store {str(p)!r} is a directory; give a file such as {str(p / 'bitscape.sqlite')!r}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_file() and p.stat().st_size > 0:
            with open(p, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
            if head != _SQLITE_MAGIC:
                raise UserError(f"store {str(p)!r} is not a SQLite database (refusing to write into it)")
    except OSError as e:
        raise UserError(f"store {str(p)!r} cannot be opened: {e.strerror or e}") from None
    return p


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def checksum(doc: dict) -> str:
    """sha256 of the canonical JSON of a session document without its checksum field."""
    rest = {k: v for k, v in doc.items() if k != "checksum"}
    return hashlib.sha256(canonical_json(rest).encode()).hexdigest()


def _is_locked(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


class Store:
    """Sessions and Evaluations in one SQLite database; safe across threads and processes."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = _resolve(path)
        self._memory = self.path == ":memory:"
        if not self._memory:
            self.path = str(_check_store_path(Path(self.path).expanduser()))
        self._lock = threading.RLock()
        self._conn = None
        try:
            self._conn = sqlite3.connect(self.path, timeout=_BUSY_MS / 1000, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
            self._conn.execute("PRAGMA foreign_keys=ON")
            if not self._memory:
                self._retry(lambda: self._conn.execute("PRAGMA journal_mode=WAL").fetchone())
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._write(lambda c: (c.executescript_in_tx(_SCHEMA), _migrate(c)))
        except sqlite3.DatabaseError as e:
            if self._conn is not None:
                self._conn.close()
            raise UserError(f"store {self.path!r} cannot be used as a SQLite database: {e}") from None

    # ---- plumbing ------------------------------------------------------------------------
    def _retry(self, fn):
        delay = 0.01
        for attempt in range(_RETRIES):
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if not _is_locked(e) or attempt == _RETRIES - 1:
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.5)

    def _write(self, fn):
        """Run ``fn(cursor)`` in one IMMEDIATE transaction, retrying when another writer holds the lock."""
        def attempt():
            with self._lock:
                cur = _Cursor(self._conn)
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(cur)
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
                return out
        return self._retry(attempt)

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._retry(lambda: self._conn.execute(sql, args).fetchall())

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):  # a Store travels to other processes as its path
        if self._memory:
            raise TypeError("an in-memory Store cannot be shared with another process")
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"Store({self.path!r})"

    # ---- evaluations ---------------------------------------------------------------------
    @staticmethod
    def _put(cur: "_Cursor", ev: Evaluation, session: str | None) -> str:
        key = ev.key
        data = json.dumps(ev.to_dict(), allow_nan=True)
        cur.execute("INSERT INTO evaluations(key, model, dataset, status, created, data) VALUES (?,?,?,?,?,?) "
                    "ON CONFLICT(key) DO UPDATE SET model=excluded.model, dataset=excluded.dataset, "
                    "status=excluded.status, data=excluded.data",
                    (key, ev.model, ev.dataset, ev.status, time.time(), data))
        if session is not None:
            Store._attach(cur, session, key)
        return key

    @staticmethod
    def _attach(cur: "_Cursor", sid: str, key: str) -> None:
        if not cur.execute("SELECT 1 FROM sessions WHERE id=?", (sid,)).fetchone():
            raise UserError(f"no session {sid!r} in the store")
        cur.execute("INSERT OR IGNORE INTO session_evaluations(session, key) VALUES (?,?)", (sid, key))

    def put(self, ev: Evaluation, session: str | None = None, owner: str | None = None) -> str:
        """Insert or replace the Evaluation with the same key; optionally attach it to a session
        (which ``owner``, when given, must own)."""
        def fn(cur):
            if session is not None:
                self._check_owner(cur, session, owner)
            cur.execute("DELETE FROM imported_evaluations WHERE key=?", (ev.key,))  # computed here now
            return self._put(cur, ev, session)
        return self._write(fn)

    def put_many(self, evs: Iterable[Evaluation], session: str | None = None, owner: str | None = None) -> list[str]:
        evs = list(evs)

        def fn(cur):
            if session is not None:
                self._check_owner(cur, session, owner)
            return [self._put(cur, ev, session) for ev in evs]
        return self._write(fn)

    def get(self, key: str) -> Evaluation | None:
        rows = self._read("SELECT data FROM evaluations WHERE key=?", (key,))
        return _decode(rows[0][0]) if rows else None

    def computed(self, key: str) -> Evaluation | None:
        """The Evaluation with this key if it was computed here, not read from a session file:
        what a sweep may reuse as done (a file's results are shown, never trusted as work)."""
        rows = self._read("SELECT data FROM evaluations WHERE key=? AND key NOT IN "
                          "(SELECT key FROM imported_evaluations)", (key,))
        return _decode(rows[0][0]) if rows else None

    def has(self, key: str) -> bool:
        return bool(self._read("SELECT 1 FROM evaluations WHERE key=?", (key,)))

    def keys(self) -> set[str]:
        return {r[0] for r in self._read("SELECT key FROM evaluations")}

    def evaluations(self, session: str | None = None, model: str | None = None,
                    dataset: str | None = None) -> list[Evaluation]:
        """Evaluations in insertion order (a session: the order they were attached)."""
        where, args = [], []
        if model is not None:
            where.append("e.model=?")
            args.append(model)
        if dataset is not None:
            where.append("e.dataset=?")
            args.append(dataset)
        if session is not None:
            where.append("s.session=?")
            args.append(session)
            sql = "SELECT e.data FROM session_evaluations s JOIN evaluations e ON e.key=s.key"
            order = " ORDER BY s.seq"
        else:
            sql, order = "SELECT e.data FROM evaluations e", " ORDER BY e.id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_decode(r[0]) for r in self._read(sql + order, tuple(args))]

    def delete(self, key: str) -> bool:
        def fn(cur):
            cur.execute("DELETE FROM session_evaluations WHERE key=?", (key,))
            return cur.execute("DELETE FROM evaluations WHERE key=?", (key,)).rowcount > 0
        return self._write(fn)

    # ---- sessions ------------------------------------------------------------------------
    @staticmethod
    def _create_session(cur, name, model, dataset, profile, meta, owner=None) -> str:
        sid = secrets.token_urlsafe(16)
        cur.execute("INSERT INTO sessions(id, name, model, dataset, profile, created, meta, owner) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (sid, str(name), str(model), str(dataset), str(profile), time.time(), json.dumps(meta or {}),
                     None if owner is None else str(owner)))
        return sid

    @staticmethod
    def _check_owner(cur, sid: str, owner: str | None) -> None:
        """Refuse (NotOwnerError) a change to session ``sid`` by anyone but its owner; None: no check."""
        if owner is None:
            return
        row = cur.execute("SELECT owner FROM sessions WHERE id=?", (sid,)).fetchone()
        if row is None:
            raise UserError(f"no session {sid!r} in the store")
        if row[0] is None or not secrets.compare_digest(str(row[0]).encode(), str(owner).encode()):
            raise NotOwnerError("this session belongs to someone else; save a copy to change it")

    def create_session(self, name: str, model: str, dataset: str, profile: str, meta: dict | None = None,
                       owner: str | None = None) -> str:
        """A new session owned by ``owner`` (None: made on the command line); its id is random
        (secrets.token_urlsafe), never guessable."""
        if meta is not None and not isinstance(meta, dict):
            raise UserError("session meta must be a JSON object")
        for what, text in (("name", name), ("model", model), ("dataset", dataset), ("profile", profile)):
            try:   # SQLite stores UTF-8: a lone surrogate (possible in JSON from a browser) is refused
                str(text).encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(f"session {what} holds text that is not valid Unicode (a lone surrogate)") from None
        return self._write(lambda cur: self._create_session(cur, name, model, dataset, profile, meta, owner))

    _COLUMNS = "id, name, model, dataset, profile, created, meta, owner"

    @staticmethod
    def _session_row(r) -> dict:
        return {"id": r[0], "name": r[1], "model": r[2], "dataset": r[3], "profile": r[4], "created": r[5],
                "meta": json.loads(r[6]), "owner": r[7]}

    def session(self, sid: str) -> dict | None:
        rows = self._read(f"SELECT {self._COLUMNS} FROM sessions WHERE id=?", (sid,))
        return self._session_row(rows[0]) if rows else None

    def sessions(self, visible_to: str | None = None) -> list[dict]:
        """Every session, oldest first; with ``visible_to``: only those it owns, those it visited
        (remember_visit) and the command line's (no owner)."""
        if visible_to is None:
            rows = self._read(f"SELECT {self._COLUMNS} FROM sessions ORDER BY created, rowid")
        else:
            rows = self._read(f"SELECT {self._COLUMNS} FROM sessions WHERE owner IS NULL OR owner=? OR id IN "
                              "(SELECT session FROM session_visits WHERE owner=?) ORDER BY created, rowid",
                              (str(visible_to), str(visible_to)))
        return [self._session_row(r) for r in rows]

    def remember_visit(self, owner: str, sid: str) -> None:
        """Note that ``owner`` opened session ``sid`` by its link (it is then in their list, read-only)."""
        def fn(cur):
            if cur.execute("SELECT 1 FROM sessions WHERE id=?", (sid,)).fetchone():
                cur.execute("INSERT OR IGNORE INTO session_visits(owner, session) VALUES (?,?)", (str(owner), sid))
        self._write(fn)

    def delete_session(self, sid: str, owner: str | None = None) -> None:
        """Remove the session and its membership list (the Evaluations stay: others may share them)."""
        def fn(cur):
            self._check_owner(cur, sid, owner)
            cur.execute("DELETE FROM session_evaluations WHERE session=?", (sid,))
            cur.execute("DELETE FROM session_visits WHERE session=?", (sid,))
            cur.execute("DELETE FROM sessions WHERE id=?", (sid,))
        self._write(fn)

    def attach(self, sid: str, key: str, owner: str | None = None) -> None:
        def fn(cur):
            self._check_owner(cur, sid, owner)
            if not cur.execute("SELECT 1 FROM evaluations WHERE key=?", (key,)).fetchone():
                raise UserError(f"no evaluation {key!r} in the store")
            self._attach(cur, sid, key)
        self._write(fn)

    def update_session_meta(self, sid: str, meta: dict, owner: str | None = None) -> None:
        def fn(cur):
            self._check_owner(cur, sid, owner)
            if cur.execute("UPDATE sessions SET meta=? WHERE id=?", (json.dumps(meta), sid)).rowcount == 0:
                raise UserError(f"no session {sid!r} in the store")
        self._write(fn)

    # ---- session files -------------------------------------------------------------------
    def export_session(self, sid: str) -> dict:
        s = self.session(sid)
        if s is None:
            raise UserError(f"no session {sid!r} in the store")
        doc = {"format": SESSION_FORMAT, "version": SESSION_VERSION,
               "session": {k: s[k] for k in ("name", "model", "dataset", "profile", "meta")},
               "evaluations": [_clean(ev.to_dict()) for ev in self.evaluations(session=sid)]}
        doc["checksum"] = checksum(doc)
        return doc

    def export_session_json(self, sid: str, indent: int | None = 1) -> str:
        return json.dumps(self.export_session(sid), indent=indent, allow_nan=False)

    def import_session(self, doc: dict | str | bytes, owner: str | None = None) -> str:
        """Validate a session file completely, then write it in one transaction; returns the new id
        (a session owned by ``owner``).

        An evaluation already in the store is attached as it is, never replaced: a file must not
        change the results that other sessions show."""
        doc = _parse_session(doc)
        evs = _validate_session(doc)
        s = doc["session"]

        def fn(cur):
            sid = self._create_session(cur, s["name"], s["model"], s["dataset"], s["profile"], s.get("meta") or {},
                                       owner)
            for ev in evs:
                if cur.execute("SELECT 1 FROM evaluations WHERE key=?", (ev.key,)).fetchone():
                    self._attach(cur, sid, ev.key)
                else:
                    self._put(cur, ev, sid)
                    cur.execute("INSERT OR IGNORE INTO imported_evaluations(key) VALUES (?)", (ev.key,))
            return sid
        return self._write(fn)


class _Cursor:
    """The connection, seen by a write transaction (lets executescript run inside BEGIN)."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def execute(self, sql: str, args: tuple = ()):
        return self._conn.execute(sql, args)

    def executescript_in_tx(self, script: str) -> None:
        for stmt in script.split(";"):
            if stmt.strip():
                self._conn.execute(stmt)


def _migrate(cur: _Cursor) -> None:
    """Bring a store made by an older bitscape up to date (sessions gained an owner column)."""
    columns = {r[1] for r in cur.execute("PRAGMA table_info(sessions)").fetchall()}
    if "owner" not in columns:
        cur.execute("ALTER TABLE sessions ADD COLUMN owner TEXT")


def _decode(text: str) -> Evaluation:
    return Evaluation.from_dict(json.loads(text))


def _clean(obj):
    """NaN and infinities become null so a session file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _parse_session(doc) -> dict:
    if isinstance(doc, (bytes, bytearray)):
        if len(doc) > MAX_SESSION_BYTES:
            raise UserError(f"session file is {len(doc)} bytes; files over {MAX_SESSION_BYTES} bytes are refused")
    if isinstance(doc, (str, bytes, bytearray)):
        if isinstance(doc, str) and len(doc) > MAX_SESSION_BYTES:
            raise UserError(f"session file is larger than {MAX_SESSION_BYTES} bytes; refused")
        doc = load_json(doc, "session file")
    elif isinstance(doc, dict):
        if json_depth(doc) > MAX_JSON_DEPTH:
            raise UserError(f"session document is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
        try:
            size = len(canonical_json(doc))
        except (TypeError, ValueError, RecursionError) as e:
            raise UserError(f"session document is not plain JSON data: {clip(str(e))}") from None
        if size > MAX_SESSION_BYTES:
            raise UserError(f"session document is larger than {MAX_SESSION_BYTES} bytes; refused")
    if not isinstance(doc, dict):
        raise UserError(f"a session file must be a JSON object, got {type(doc).__name__}")
    try:  # what SQLite will store must be valid UTF-8 (a lone surrogate is not)
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError("session file holds text that is not valid Unicode (a lone surrogate)") from None
    return doc


_CHECKSUM = re.compile(r"^[0-9a-f]{64}$")
MAX_SESSION_TEXT = 200


def _text(v, where: str, limit: int = MAX_SESSION_TEXT) -> str:
    if not isinstance(v, str):
        raise UserError(f"{where} must be a string")
    if len(v) > limit:
        raise UserError(f"{where} is {len(v)} characters long; at most {limit} are allowed")
    return v


def _number(v, where: str, lo: float = 0.0, hi: float = math.inf, null: bool = True):
    if v is None and null:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise UserError(f"{where}={clip(v)} is not a number in {lo:g}..{hi:g}")


def _validate_session(doc: dict) -> list[Evaluation]:
    """Everything checked and every name resolved (zoo models, built-in datasets, or references
    the user allowed) before the first write: a refused file leaves the store as it was."""
    from engine.evaluation import MAX_STEPS, RECORD_VERSION, Settings
    from engine.models.data import check_dataset_name
    from engine.models.zoo import check_model_name
    from engine.plans.plan import Plan, PlanError

    if doc.get("format") != SESSION_FORMAT:
        raise UserError(f"not a bitscape session file (format is {clip(doc.get('format'))}, expected {SESSION_FORMAT!r})")
    if type(doc.get("version")) is not int or doc.get("version") != SESSION_VERSION:
        raise UserError(f"session file version {clip(doc.get('version'))} is not supported "
                        f"(this bitscape reads version {SESSION_VERSION})")
    extra = sorted(map(str, set(doc) - {"format", "version", "session", "evaluations", "checksum"}))
    if extra:
        raise UserError(f"session file has an unknown top-level key {clip(extra[0])}")
    if not isinstance(doc.get("checksum"), str) or not _CHECKSUM.match(doc["checksum"]):
        raise UserError("session file has no checksum (64 lowercase hex digits)")
    try:
        good = checksum(doc)
    except (TypeError, ValueError) as e:
        raise UserError(f"session file is not plain JSON data: {clip(str(e))}") from None
    if not secrets.compare_digest(doc["checksum"], good):
        raise UserError("session file checksum does not match its content (the file was modified or damaged)")
    s = doc.get("session")
    if not isinstance(s, dict):
        raise UserError("session file: 'session' must be an object")
    for k in ("name", "model", "dataset", "profile"):
        _text(s.get(k), f"session file: session.{k}")
    check_model_name(s["model"], "session file: ")
    check_dataset_name(s["dataset"], "session file: ")
    if "meta" in s and s["meta"] is not None and not isinstance(s["meta"], dict):
        raise UserError("session file: session.meta must be an object")
    evs_in = doc.get("evaluations")
    if not isinstance(evs_in, list):
        raise UserError("session file: 'evaluations' must be a list")
    if len(evs_in) > MAX_SESSION_EVALUATIONS:
        raise UserError(f"session file holds {len(evs_in)} evaluations; more than {MAX_SESSION_EVALUATIONS} are refused")
    out = []
    for i, d in enumerate(evs_in):
        where = f"session file: evaluation {i}"
        if not isinstance(d, dict):
            raise UserError(f"{where} must be an object")
        for k, typ in (("plan", dict), ("model", str), ("dataset", str), ("settings", dict)):
            if not isinstance(d.get(k), typ):
                raise UserError(f"{where}: field {k!r} is missing or not a{'n object' if typ is dict else ' string'}")
        check_model_name(d["model"], f"{where}: ")
        check_dataset_name(d["dataset"], f"{where}: ")
        if d.get("status") not in STATUSES:
            raise UserError(f"{where}: status {clip(d.get('status'))} is not one of {', '.join(STATUSES)}")
        for k in ("val_accuracy", "test_accuracy", "baseline_val_accuracy", "baseline_test_accuracy",
                  "estimate_val_accuracy"):
            _number(d.get(k), f"{where}: {k}", 0.0, 1.0)
        for k, typ in (("costs", dict), ("provenance", dict), ("loss_curve", list)):
            if k in d and not isinstance(d[k], typ):
                raise UserError(f"{where}: {k!r} has the wrong type")
        if "steps" in d and (isinstance(d["steps"], bool) or not isinstance(d["steps"], int)
                             or not 0 <= d["steps"] <= MAX_STEPS):
            raise UserError(f"{where}: steps={clip(d['steps'])} is not a whole number in 0..{MAX_STEPS}")
        if "wall_s" in d:
            _number(d["wall_s"], f"{where}: wall_s", null=False)
        if "version" in d and (type(d["version"]) is not int or d["version"] != RECORD_VERSION):
            raise UserError(f"{where}: record version {clip(d['version'])} is not {RECORD_VERSION}")
        if d.get("reason") is not None:
            _text(d["reason"], f"{where}: reason", 100_000)
        curve = d.get("loss_curve", [])
        if len(curve) > MAX_STEPS:
            raise UserError(f"{where}: loss_curve has more than {MAX_STEPS} points")
        for v in curve:   # NaN was written as null
            _number(v, f"{where}: loss_curve value", -math.inf, math.inf)
        for prof, c in d.get("costs", {}).items():
            if not isinstance(c, dict):
                raise UserError(f"{where}: costs[{clip(prof)}] must be an object")
            for k, v in c.items():
                _number(v, f"{where}: costs[{clip(prof)}].{clip(k)}", -math.inf, math.inf)
        try:
            plan = Plan.from_dict(d["plan"])
            plan.check_model(d["model"])
        except PlanError as e:
            raise UserError(f"{where}: invalid plan: {e}") from None
        try:
            Settings.from_dict(d["settings"])
        except (TypeError, ValueError) as e:
            raise UserError(f"{where}: invalid settings: {e}") from None
        try:
            ev = Evaluation.from_dict(d)
        except (TypeError, ValueError) as e:
            raise UserError(f"{where}: {clip(str(e))}") from None
        if "key" in d and d["key"] != ev.key:
            raise UserError(f"{where}: key {clip(d['key'])} does not match its content")
        out.append(ev)
    return out
