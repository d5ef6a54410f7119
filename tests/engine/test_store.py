import json
import multiprocessing as mp
import sqlite3

import pytest

from engine.errors import UserError
from engine.evaluation import Evaluation, Settings
from engine.explore.store import Store, checksum
from engine.plans.plan import Plan


def make_ev(i: int, status="fine-tuned", model="lenet5", dataset="digits", acc=0.9) -> Evaluation:
    plan = Plan.uniform(1 + i % 8, 8)
    plan.layers["conv1"] = {"widen": 1.0 + (i // 8)}
    return Evaluation(plan=plan.to_dict(), model=model, dataset=dataset, settings=Settings(seed=i).to_dict(),
                      status=status, val_accuracy=acc, test_accuracy=acc - 0.01,
                      costs={"bismo": {"throughput": 100.0 + i, "latency_s": 0.01, "energy_j": 1e-3,
                                       "size_bytes": 1000.0}},
                      provenance={"code_version": "test", "seed": i}, loss_curve=[1.0, 0.5])


def test_put_get_upsert_and_order(tmp_path):
    s = Store(tmp_path / "a.sqlite")
    evs = [make_ev(i) for i in range(5)]
    keys = [s.put(ev) for ev in evs]
    assert keys == [ev.key for ev in evs] and len(set(keys)) == 5
    assert s.has(keys[2]) and not s.has("nope") and s.get("nope") is None
    assert s.get(keys[3]).to_dict() == evs[3].to_dict()
    # upsert keeps the position and replaces the content
    evs[1].val_accuracy = 0.5
    s.put(evs[1])
    got = s.evaluations()
    assert [e.key for e in got] == keys and got[1].val_accuracy == 0.5
    s.put(make_ev(9, model="mlp"))
    assert len(s.evaluations(model="mlp")) == 1 and len(s.evaluations(model="lenet5", dataset="digits")) == 5
    s.close()
    # persisted, WAL mode
    s2 = Store(f"sqlite:///{tmp_path / 'a.sqlite'}")
    assert len(s2.evaluations()) == 6
    assert s2._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_path_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BITSCAPE_STORE", str(tmp_path / "env" / "x.sqlite"))
    s = Store()
    assert s.path == str(tmp_path / "env" / "x.sqlite")
    with pytest.raises(UserError, match="only SQLite"):
        Store("postgres://h/db")


def test_sessions_and_attach():
    s = Store(":memory:")
    sid = s.create_session("first", "lenet5", "digits", "bismo", meta={"note": "x"})
    sid2 = s.create_session("second", "lenet5", "digits", "cpu")
    assert len(sid) >= 20 and sid != sid2
    info = s.session(sid)
    assert info["name"] == "first" and info["profile"] == "bismo" and info["meta"] == {"note": "x"}
    assert [x["id"] for x in s.sessions()] == [sid, sid2]
    k0 = s.put(make_ev(0), session=sid)
    k1 = s.put(make_ev(1))
    s.attach(sid, k1)
    s.attach(sid, k1)  # idempotent
    s.attach(sid2, k1)
    assert [e.key for e in s.evaluations(session=sid)] == [k0, k1]
    with pytest.raises(UserError, match="no session"):
        s.put(make_ev(2), session="missing")
    assert not s.has(make_ev(2).key)  # the failed transaction wrote nothing
    with pytest.raises(UserError, match="no evaluation"):
        s.attach(sid, "missing")
    s.delete_session(sid)
    assert s.session(sid) is None and s.has(k0)
    assert [e.key for e in s.evaluations(session=sid2)] == [k1]


def test_export_import_round_trip():
    s = Store(":memory:")
    sid = s.create_session("mine", "lenet5", "digits", "bismo", meta={"k": 1})
    evs = [make_ev(i) for i in range(4)]
    evs[2].status, evs[2].reason, evs[2].val_accuracy = "failed", "diverged", None
    evs[3].loss_curve = [float("nan")]
    for ev in evs:
        s.put(ev, session=sid)
    doc = s.export_session(sid)
    assert doc["format"] == "bitscape-session" and doc["version"] == 1 and doc["checksum"] == checksum(doc)
    text = json.dumps(doc)
    other = Store(":memory:")
    new = other.import_session(text)
    assert other.session(new)["name"] == "mine" and other.session(new)["meta"] == {"k": 1}
    got = other.evaluations(session=new)
    assert [e.key for e in got] == [e.key for e in evs]
    assert got[2].status == "failed" and got[2].reason == "diverged"
    assert got[0].to_dict() == evs[0].to_dict()
    # re-export of the import is the same document
    assert other.export_session(new)["checksum"] == doc["checksum"]
    # bytes and dict inputs work too
    assert other.import_session(text.encode()) != new
    assert len(other.sessions()) == 2


def _bad_docs(doc):
    def tamper(d):
        d["evaluations"][0]["val_accuracy"] = 0.99
    def resign(mut):
        def f(d):
            mut(d)
            d["checksum"] = checksum(d)
        return f
    def bad_plan(d):
        d["evaluations"][1]["plan"]["default"]["w_bits"] = 17
    def bad_status(d):
        d["evaluations"][0]["status"] = "great"
    def bad_acc(d):
        d["evaluations"][0]["val_accuracy"] = 3.0
    def bad_key(d):
        d["evaluations"][0]["key"] = "0" * 24
    def missing_model(d):
        del d["evaluations"][0]["model"]
    def bad_version(d):
        d["version"] = 99
    def bad_format(d):
        d["format"] = "other"
    def bad_settings(d):
        d["evaluations"][0]["settings"]["bogus"] = 1
    def evs_not_list(d):
        d["evaluations"] = {}
    return [("checksum", tamper), ("w_bits", resign(bad_plan)), ("status", resign(bad_status)),
            ("accuracy", resign(bad_acc)), ("key", resign(bad_key)), ("model", resign(missing_model)),
            ("version", resign(bad_version)), ("format", resign(bad_format)), ("settings", resign(bad_settings)),
            ("list", resign(evs_not_list)), ("checksum", lambda d: d.pop("checksum"))]


def test_tampered_or_malformed_session_is_refused_and_changes_nothing(tmp_path):
    src = Store(":memory:")
    sid = src.create_session("s", "lenet5", "digits", "bismo")
    for i in range(3):
        src.put(make_ev(i), session=sid)
    doc = src.export_session(sid)
    dst = Store(tmp_path / "dst.sqlite")
    keep = dst.create_session("existing", "mlp", "digits", "cpu")
    dst.put(make_ev(7), session=keep)

    def snapshot():
        return (dst.sessions(), [e.key for e in dst.evaluations()])
    before = snapshot()
    for word, mutate in _bad_docs(doc):
        d = json.loads(json.dumps(doc))
        mutate(d)
        with pytest.raises(UserError, match=word):
            dst.import_session(d)
        assert snapshot() == before, word
    for junk in (b"\xff\xfe", "not json", "[1, 2]", '{"format": "bitscape-session", "x": NaN}', b"{" * 10):
        with pytest.raises(UserError):
            dst.import_session(junk)
    with pytest.raises(UserError, match="bytes"):
        dst.import_session(b" " * 20_000_001)
    assert snapshot() == before


def _writer(path, start, n):
    s = Store(path)
    sid = s.create_session(f"w{start}", "lenet5", "digits", "bismo")
    for i in range(start, start + n):
        s.put(make_ev(i), session=sid)
        s.put(make_ev(1000 + i % 5))  # everyone also rewrites shared keys
    s.close()


@pytest.mark.slow
def test_concurrent_writers_from_several_processes(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    Store(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, 100 * k, 40)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    s = Store(path)
    keys = [e.key for e in s.evaluations()]
    assert len(keys) == len(set(keys)) == 3 * 40 + 5
    assert len(s.sessions()) == 3
    for sess in s.sessions():
        assert len(s.evaluations(session=sess["id"])) == 40
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
