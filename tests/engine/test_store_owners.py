"""Sessions have owners in the store itself: every method that changes a session refuses anyone
but its owner and writes nothing; owner=None (the command line) is not checked; old stores gain
the owner column on open."""
import json
import sqlite3

import pytest

from engine.explore.store import NotOwnerError, Store, checksum
from tests.engine.test_store import make_ev

A, B = "anon:alice-token", "anon:bob-token"


def snapshot(s: Store) -> tuple:
    return (json.dumps(s.sessions(), sort_keys=True), sorted(s.keys()),
            {x["id"]: [e.key for e in s.evaluations(session=x["id"])] for x in s.sessions()})


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "owners.sqlite")
    yield s
    s.close()


def test_every_session_write_by_another_owner_is_refused_and_changes_nothing(store):
    sid = store.create_session("alice's", "lenet5", "digits", "cpu", meta={"saved": True}, owner=A)
    store.put(make_ev(0), session=sid, owner=A)
    assert store.session(sid)["owner"] == A
    store.put(make_ev(1))  # an evaluation in no session: B could try to attach it
    doc = store.export_session(sid)
    before = snapshot(store)
    attempts = {
        "put": lambda: store.put(make_ev(2), session=sid, owner=B),
        "put_many": lambda: store.put_many([make_ev(3), make_ev(4)], session=sid, owner=B),
        "attach": lambda: store.attach(sid, make_ev(1).key, owner=B),
        "update_session_meta": lambda: store.update_session_meta(sid, {"saved": True, "plan": None}, owner=B),
        "delete_session": lambda: store.delete_session(sid, owner=B),
    }
    for name, call in attempts.items():
        with pytest.raises(NotOwnerError, match="belongs to someone else"):
            call()
        assert snapshot(store) == before, name
    # the owner can still change it
    store.put(make_ev(5), session=sid, owner=A)
    store.attach(sid, make_ev(1).key, owner=A)
    store.update_session_meta(sid, {"saved": True, "note": "mine"}, owner=A)
    assert store.session(sid)["meta"]["note"] == "mine" and len(store.evaluations(session=sid)) == 3
    # an import is always a new session, owned by the importer
    copy = store.import_session(doc, owner=B)
    assert copy != sid and store.session(copy)["owner"] == B
    store.delete_session(sid, owner=A)
    assert store.session(sid) is None


def test_owner_none_is_the_command_line_and_is_not_checked(store):
    sid = store.create_session("alice's", "lenet5", "digits", "cpu", owner=A)
    store.put(make_ev(0), session=sid)
    store.update_session_meta(sid, {"by": "cli"})
    assert len(store.evaluations(session=sid)) == 1
    # a session made on the command line has no owner: no browser may change it
    cli = store.create_session("sweep", "lenet5", "digits", "cpu", meta={"method": "random"})
    assert store.session(cli)["owner"] is None
    with pytest.raises(NotOwnerError):
        store.put(make_ev(1), session=cli, owner=A)
    store.delete_session(cli)
    assert store.session(cli) is None


def test_the_list_holds_own_visited_and_command_line_sessions(store):
    mine = store.create_session("a", "lenet5", "digits", "cpu", owner=A)
    theirs = store.create_session("b", "lenet5", "digits", "cpu", owner=B)
    cli = store.create_session("sweep", "lenet5", "digits", "cpu")
    assert {s["id"] for s in store.sessions(visible_to=A)} == {mine, cli}
    store.remember_visit(A, theirs)
    store.remember_visit(A, theirs)  # idempotent
    store.remember_visit(A, "no-such-session")  # ignored
    assert {s["id"] for s in store.sessions(visible_to=A)} == {mine, cli, theirs}
    assert {s["id"] for s in store.sessions(visible_to=B)} == {theirs, cli}
    assert {s["id"] for s in store.sessions()} == {mine, theirs, cli}
    store.delete_session(theirs, owner=B)  # a visited session deleted by its owner leaves every list
    assert {s["id"] for s in store.sessions(visible_to=A)} == {mine, cli}


def test_an_import_never_replaces_an_evaluation_other_sessions_show(store):
    sid = store.create_session("alice's", "lenet5", "digits", "cpu", owner=A)
    ev = make_ev(0, acc=0.5)
    store.put(ev, session=sid, owner=A)
    doc = store.export_session(sid)
    doc["evaluations"][0]["val_accuracy"] = 0.99  # a forged result under the same key
    doc["checksum"] = checksum(doc)
    copy = store.import_session(doc, owner=B)
    assert store.get(ev.key).val_accuracy == 0.5
    assert [e.key for e in store.evaluations(session=copy)] == [ev.key]


def test_an_old_store_gains_the_owner_column(tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE sessions (id TEXT PRIMARY KEY, name TEXT NOT NULL, model TEXT NOT NULL, dataset TEXT NOT NULL,
                               profile TEXT NOT NULL, created REAL NOT NULL, meta TEXT NOT NULL);
        INSERT INTO sessions VALUES ('old1', 'before owners', 'lenet5', 'digits', 'cpu', 1.0, '{"saved": true}');
    """)
    con.commit()
    con.close()
    s = Store(path)
    assert s.session("old1")["owner"] is None
    with pytest.raises(NotOwnerError):
        s.update_session_meta("old1", {}, owner=A)
    new = s.create_session("after", "lenet5", "digits", "cpu", owner=A)
    assert s.session(new)["owner"] == A
    s.close()
    Store(path).close()  # opening again: the migration runs once
