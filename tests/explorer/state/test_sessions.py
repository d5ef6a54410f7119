"""Sessions that behave: listed apart, refreshed, reachable from files and sweeps, autosaved,
and read-only enforced by the Workspace itself (not only by disabled widgets)."""
import json
import subprocess
import sys

import pytest

from engine.evaluation import Settings
from engine.explore.pipeline import evaluate_plan
from engine.plans.plan import LayerConfig, Plan
from explorer.state.sessions import SessionList, session_label
from explorer.state.workspace import READ_ONLY, Workspace


def estimate(bits):
    return evaluate_plan("lenet5", "digits", Plan.uniform(bits, bits), Settings(steps=0)).evaluation


@pytest.fixture(scope="module")
def evs():
    return [estimate(4), estimate(2)]


def test_same_name_sessions_stay_apart_with_date_and_short_id(services, evs):
    store, runner = services
    a = Workspace(store=store, runner=runner)
    a.add_evaluation(evs[0])
    first = a.save_session("study")
    a.add_evaluation(evs[1])
    second = a.save_session("study")
    entries = a.saved_sessions()
    assert [e["id"] for e in entries] == [second, first]  # newest first, both listed
    labels = [e["label"] for e in entries]
    assert len(set(labels)) == 2
    for e, sid in zip(entries, (second, first)):
        assert e["label"].startswith("study · lenet5 on digits · ") and e["label"].endswith(sid[:6])
        assert " UTC · " in e["label"]
    assert set(a.session_list.options.values()) == {first, second}


def test_list_refreshes_when_another_tab_saves(services, evs):
    store, runner = services
    # two tabs of one browser: one owner
    a, b = (Workspace(store=store, runner=runner, owner="anon:me") for _ in range(2))
    a.session_list.refresh()
    assert a.session_list.entries == []
    seen = []
    a.session_list.param.watch(lambda e: seen.append(len(e.new)), ["entries"])
    b.add_evaluation(evs[0])
    b.save_session("from b")
    assert a.session_list.refresh() is True and seen == [1]
    assert a.session_list.refresh() is False and seen == [1]  # unchanged: no needless re-render
    assert [e["name"] for e in a.session_list.entries] == ["from b"]


def test_sweep_sessions_are_listed_and_open(tmp_path):
    from engine.explore.store import Store
    path = tmp_path / "store.sqlite"
    p = subprocess.run([sys.executable, "-m", "explorer.cli", "sweep", "--model", "lenet5", "--dataset", "digits",
                        "--profile", "cpu", "--budget", "2", "--finetune", "0", "--method", "random",
                        "--workers", "1", "--store", str(path), "--session", "cli sweep"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    store = Store(path)
    ws = Workspace(store=store, runner=None)
    entries = ws.saved_sessions()
    assert [(e["name"], e["kind"]) for e in entries] == [("cli sweep", "sweep")]
    assert "(sweep)" in entries[0]["label"]
    assert ws.open_session(entries[0]["id"]) and ws.read_only  # the command line's: read-only in a browser
    assert len(ws.points) == len(store.evaluations(session=entries[0]["id"])) >= 2


def test_imported_sessions_are_listed_even_from_an_unsaved_workspace(services, evs):
    store, runner = services
    a = Workspace(store=store, runner=runner)
    a.add_evaluation(evs[0])
    a.set_cell(1, "w_bits", 4)
    doc = a.export_session_file()  # the working copy: never saved under a name
    assert a.saved_sessions() == []
    b = Workspace(store=store, runner=runner)
    assert b.import_session_file(doc.encode()) and "imported" in b.message
    entries = b.saved_sessions()
    assert [e["kind"] for e in entries] == ["imported"] and "(imported)" in entries[0]["label"]
    assert list(b.points["key"]) == [evs[0].key] and b.rows.loc[1, "w_bits"] == 4


def test_empty_session_file_is_refused_with_a_reason(services):
    store, runner = services
    ws = Workspace(store=store, runner=runner)
    before = len(store.sessions())
    for empty in (b"", b"  \n", None, ""):
        ws.message = ""
        assert not ws.import_session_file(empty)
        assert "session file refused: the file is empty" in ws.message
    assert len(store.sessions()) == before


def test_autosave_and_restore_lose_nothing(services, evs):
    store, runner = services
    a = Workspace(store=store, runner=runner, owner="anon:me")
    assert not a.autosave() and a.work_id == ""  # nothing changed: no working copy litter
    a.profile = "bitfusion"
    a.batch = 8
    a.steps = 123
    a.distill = True
    a.add_evaluation(evs[0])
    a.add_evaluation(evs[1])
    a.set_cell(2, "w_bits", 3)
    assert a.autosave() and a.work_id
    assert not a.autosave()  # debounced: nothing new
    assert a.saved_sessions() == []  # the working copy is not listed
    b = Workspace(store=store, runner=runner, owner="anon:me")  # the same browser, after a reload
    assert b.restore(a.work_id)
    assert (b.profile, b.batch, b.steps, b.distill) == ("bitfusion", 8, 123, True)
    assert b.configs == a.configs and b.rows.loc[2, "w_bits"] == 3
    assert sorted(b.points["key"]) == sorted(a.points["key"]) and not b.read_only
    assert b.work_id == a.work_id
    # keeps saving to the same working copy after the reload
    b.set_cell(3, "a_bits", 8)
    assert b.autosave()
    c = Workspace(store=store, runner=runner, owner="anon:me")
    assert c.restore(a.work_id) and c.rows.loc[3, "a_bits"] == 8


def test_restore_refuses_a_named_session_id(services, evs):
    store, runner = services
    a = Workspace(store=store, runner=runner)
    a.add_evaluation(evs[0])
    sid = a.save_session("named")
    b = Workspace(store=store, runner=runner)
    assert not b.restore(sid) and "not valid" in b.message
    assert not b.restore("nope")


def test_share_link_is_built_from_the_page_address(services, evs):
    store, runner = services
    a = Workspace(store=store, runner=runner)
    assert a.share_link("http://127.0.0.1:5006/") == ""
    sid = a.save_session("s")
    assert a.share_link("http://127.0.0.1:5006/") == f"http://127.0.0.1:5006/?session={sid}"


def read_only_view(store, runner, evs):
    a = Workspace(store=store, runner=runner)
    for ev in evs:
        a.add_evaluation(ev)
    a.apply_preset("w4a4")
    sid = a.save_session("shared")
    v = Workspace(store=store, runner=runner)
    assert v.open_session(sid, read_only=True)
    return a, v, sid


def test_read_only_refuses_every_mutating_method(services, evs):
    store, runner = services
    a, v, sid = read_only_view(store, runner, evs)
    rows, points = v.rows.copy(), v.points.copy()
    other_plan = Plan.uniform(2, 2, model="lenet5").to_json()
    refusals = {
        "set_cell": lambda: v.set_cell(0, "w_bits", 2),
        "bulk_edit": lambda: v.bulk_edit([0, 1], "a_bits", 2),
        "apply_preset": lambda: v.apply_preset("w2a2"),
        "load_plan_json": lambda: v.load_plan_json(other_plan),
        "apply_suggestion": lambda: v.apply_suggestion(),
        "submit": lambda: v.submit(),
        "cancel": lambda: v.cancel("some-job"),
        "import_session_file": lambda: v.import_session_file(a.export_session_file()),
    }
    for name, call in refusals.items():
        v.edit_error = v.message = ""
        assert not call(), name
        assert READ_ONLY in (v.edit_error + v.message), name
    with pytest.raises(Exception, match="read-only"):
        v.load_plan(Plan.uniform(2, 2))
    assert v.compute_sensitivity(background=False) is None and READ_ONLY in v.sens_status
    assert v.sensitivity.empty
    v.select(points.iloc[1]["key"])  # a tap selects, but does not load the plan into the editor
    assert v.rows.equals(rows)
    # settings: a change is put back, with the reason
    for name, value in (("model", "mlp"), ("dataset", "fashion-mnist"), ("profile", "a100"), ("batch", 64),
                        ("steps", 7), ("distill", True), ("seed", 3), ("preset", "w2a2"), ("sens_method", "hessian")):
        before = getattr(v, name)
        v.message = ""
        setattr(v, name, value)
        assert getattr(v, name) == before and v.message == READ_ONLY, name
    assert v.rows.equals(rows) and v.points.equals(points) and v.read_only
    assert not v.autosave() and v.work_id == ""
    assert len(store.evaluations(session=sid)) == 2 and len(store.sessions()) == 2  # a's working copy + shared
    # "Save a copy" is allowed and makes an editable session
    copy = v.save_session("my copy")
    assert copy != sid and not v.read_only and v.set_cell(0, "w_bits", 2)
    v.model = "mlp"
    assert v.model == "mlp"


def test_apply_suggestion_with_a_binary_layer(workspace):
    ws = workspace
    assert ws.set_cell(2, "quantizer", "binary") and ws.rows.loc[2, "w_bits"] == 1
    ws.compute_sensitivity(background=False)
    assert ws.apply_suggestion(), ws.edit_error
    bits = dict(zip(ws.rows["layer"], ws.rows["w_bits"]))
    ranks = ws.sensitivity.sort_values("rank")["layer"].tolist()
    assert bits[ranks[0]] == 8 and bits[ranks[-1]] == 2
    layer = ws.rows.loc[2, "layer"]
    if bits[layer] != 1:
        assert ws.rows.loc[2, "quantizer"] == "lsq" and layer in ws.message


def test_table_edit_keeps_per_channel(workspace):
    ws = workspace
    plan = Plan.explicit({n: LayerConfig(w_bits=4, a_bits=4, per_channel=True) for n in ws.topology.names},
                         model="lenet5")
    assert ws.load_plan_json(plan.to_json())
    assert ws.set_cell(1, "w_bits", 3)
    assert all(c.per_channel for c in ws.configs.values())
    assert ws.bulk_edit([0, 2], "a_bits", 8)
    assert all(c.per_channel for c in ws.configs.values())
    assert json.loads(ws.plan_json())["layers"]["conv2"]["per_channel"] is True


def test_plan_for_another_model_is_refused(workspace):
    ws = workspace
    before = ws.rows.copy()
    text = Plan.uniform(4, 4, model="resnet20").to_json()
    assert not ws.load_plan_json(text)
    assert "the plan is for model 'resnet20'" in ws.edit_error and "lenet5" in ws.edit_error
    assert ws.rows.equals(before)
    assert ws.load_plan_json(Plan.uniform(4, 4).to_json())  # a plan naming no model still loads
    assert not ws.load_plan_json(b"") and "the file is empty" in ws.edit_error


def test_session_of_a_model_this_server_lacks_is_refused(services):
    store, runner = services
    sid = store.create_session("odd", "pkg.mod:fn", "digits", "cpu", meta={"saved": True})
    ws = Workspace(store=store, runner=runner)
    rows = ws.rows.copy()
    assert not ws.open_session(sid) and "does not offer" in ws.message
    assert ws.rows.equals(rows) and ws.model == "lenet5"


def test_session_label_is_plain_text_of_the_name():
    label = session_label({"id": "abcdefgh", "name": "<img src=x>\n  two", "model": "m", "dataset": "d",
                           "created": 0.0, "meta": {"saved": True}})
    assert label == "<img src=x> two · m on d · 1970-01-01 00:00 UTC · abcdef"


def test_session_list_options_are_unique():
    class FakeStore:
        def sessions(self, visible_to=None):
            return [{"id": f"abcdef{i}", "name": "x", "model": "m", "dataset": "d", "created": 1.0,
                     "meta": {"saved": True}} for i in (1, 2)]

    sl = SessionList(lambda: FakeStore())
    sl.refresh()
    assert sorted(sl.options.values()) == ["abcdef1", "abcdef2"]
