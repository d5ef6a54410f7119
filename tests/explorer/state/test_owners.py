"""Two owners on one store: B reaches A's session by its share link, by the list and by A's
``?ws=`` working copy, tries every mutating path, and changes nothing; "Save a copy" is B's own;
A can still change what is A's."""
import json

import pytest

from engine.evaluation import Settings
from engine.explore.pipeline import evaluate_plan
from engine.plans.plan import Plan
from explorer.state.workspace import READ_ONLY, Workspace

A, B = "anon:alice", "anon:bob"


@pytest.fixture(scope="module")
def evs():
    return [evaluate_plan("lenet5", "digits", Plan.uniform(b, b), Settings(steps=0)).evaluation for b in (4, 2)]


def store_state(store) -> str:
    return json.dumps([(s, [e.key for e in store.evaluations(session=s["id"])]) for s in store.sessions()],
                      sort_keys=True, default=str)


def alice_session(store, runner, evs):
    a = Workspace(store=store, runner=runner, owner=A)
    for ev in evs:
        a.add_evaluation(ev)
    a.apply_preset("w4a4")
    sid = a.save_session("alice's study")
    assert a.autosave() and a.work_id
    return a, sid


def try_every_mutation(v: Workspace, store, other_file: str) -> None:
    """Every way a workspace changes a session; each must be refused and leave the store as it was."""
    before, rows, points = store_state(store), v.rows.copy(), v.points.copy()
    plan = Plan.uniform(2, 2, model="lenet5").to_json()
    attempts = {
        "set_cell": lambda: v.set_cell(0, "w_bits", 2),
        "bulk_edit": lambda: v.bulk_edit([0, 1], "a_bits", 2),
        "apply_preset": lambda: v.apply_preset("w2a2"),
        "load_plan_json": lambda: v.load_plan_json(plan),
        "apply_suggestion": lambda: v.apply_suggestion(),
        "submit": lambda: v.submit(),
        "cancel": lambda: v.cancel("some-job"),
        "import_session_file": lambda: v.import_session_file(other_file),
    }
    for name, call in attempts.items():
        v.edit_error = v.message = ""
        assert not call(), name
        assert READ_ONLY in (v.edit_error + v.message), name
    for name, value in (("model", "mlp"), ("profile", "a100"), ("batch", 64), ("steps", 7), ("preset", "w2a2")):
        old = getattr(v, name)
        setattr(v, name, value)
        assert getattr(v, name) == old, name
    assert not v.autosave(force=True)
    assert v.rows.equals(rows) and v.points.equals(points) and v.read_only
    assert store_state(store) == before


def test_bob_cannot_change_alices_session_by_link_or_list(services, evs):
    store, runner = services
    a, sid = alice_session(store, runner, evs)
    b = Workspace(store=store, runner=runner, owner=B)
    assert b.saved_sessions() == []  # alice's sessions are not in bob's list
    assert b.open_session(sid, read_only=True)  # the share link
    assert b.read_only and "read-only" in b.message
    assert [(e["id"], e["mine"]) for e in b.saved_sessions()] == [(sid, False)]  # opened by link: listed
    assert "(read-only)" in b.saved_sessions()[0]["label"]
    try_every_mutation(b, store, a.export_session_file())
    # from the list, asking for a writable open: still read-only
    c = Workspace(store=store, runner=runner, owner=B)
    assert c.open_session(sid) and c.read_only and "belongs to someone else" in c.message
    try_every_mutation(c, store, a.export_session_file())
    before = store_state(store)
    assert not c.delete_session(sid) and "not deleted" in c.message and "someone else" in c.message
    assert store_state(store) == before
    # "Save a copy" is bob's, and writable
    copy = c.save_session("bob's copy")
    assert store.session(copy)["owner"] == B and not c.read_only
    assert c.set_cell(0, "w_bits", 2) and c.autosave()
    assert {e["id"]: e["mine"] for e in c.saved_sessions()} == {sid: False, copy: True}
    # alice still owns hers: opens it writable, edits, deletes it
    a2 = Workspace(store=store, runner=runner, owner=A)
    assert a2.open_session(sid) and not a2.read_only and a2.set_cell(0, "w_bits", 3)
    assert [e["id"] for e in a2.saved_sessions()] == [sid]  # bob's copy is not in alice's list
    assert a2.delete_session(sid) and store.session(sid) is None


def test_bob_with_alices_workspace_link_gets_a_read_only_view(services, evs):
    store, runner = services
    a, _ = alice_session(store, runner, evs)
    a.set_cell(1, "w_bits", 5)
    assert a.autosave()
    work = a.work_id
    b = Workspace(store=store, runner=runner, owner=B)
    assert b.restore(work)  # alice's ?ws= URL in bob's browser
    assert b.read_only and b.work_id == "" and "another browser" in b.message
    assert b.rows.loc[1, "w_bits"] == 5  # he sees it...
    try_every_mutation(b, store, a.export_session_file())  # ...and changes nothing
    assert json.loads(b.export_session_file())["session"]["name"] == "working copy"
    # even with the workspace's own guard lifted, the store refuses a write to alice's copy
    b.read_only, b.work_id = False, work
    b.keeper.dirty = True
    before = store_state(store)
    assert not b.autosave() and "belongs to someone else" in b.message
    assert store_state(store) == before
    # alice, after a reload, keeps writing to it
    a2 = Workspace(store=store, runner=runner, owner=A)
    assert a2.restore(work) and not a2.read_only and a2.work_id == work
    assert a2.set_cell(2, "w_bits", 6) and a2.autosave()
    a3 = Workspace(store=store, runner=runner, owner=A)
    assert a3.restore(work) and a3.rows.loc[2, "w_bits"] == 6 and a3.rows.loc[1, "w_bits"] == 5


def test_a_workspace_without_an_owner_gets_one_of_its_own(services, evs):
    store, runner = services
    a, sid = alice_session(store, runner, evs)
    anonymous = Workspace(store=store, runner=runner)
    assert anonymous.owner.startswith("anon:") and anonymous.owner != A
    assert anonymous.open_session(sid) and anonymous.read_only
