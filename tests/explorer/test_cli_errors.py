"""Issue 18, item 5: every bad input is one line on stderr and exit 2, never a traceback.

Each parametrized case below is one of the issue's reproductions (46 runs that printed
tracebacks); a few run in a real subprocess to see exactly what a user sees.
"""
import json
import subprocess
import sys

import pytest

from engine.errors import UserError
from engine.evaluation import Settings
from engine.explore.pipeline import evaluate_plan
from engine.explore.store import Store, checksum
from engine.models.checkpoint import load_state, save_planned
from engine.plans.plan import LayerConfig, Plan
from explorer.cli import main

DEEP = "[" * 100_000 + "]" * 100_000
BIG = "9" * 5000


def run_cli(*args):
    p = subprocess.run([sys.executable, "-m", "explorer.cli", *args], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def refused(capsys, argv, message):
    """``bitscape argv`` exits 2 with one line on stderr that contains ``message``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bitscape: error: ") and len(err.strip().splitlines()) == 1, err[:500]
    assert message in err, err[:500]
    return err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    run = evaluate_plan("mlp", "digits", Plan(default=LayerConfig(4, 4)), Settings(steps=3))
    path = tmp_path_factory.mktemp("ckpt") / "mlp.safetensors"
    save_planned(run, path)
    return path


def raw_meta_checkpoint(src, dst, text: str):
    """A checkpoint whose metadata is exactly ``text`` (with a valid content hash where hashes exist)."""
    from safetensors.torch import save

    from engine.models.checkpoint import META_KEY
    state, _ = load_state(src)
    md = {META_KEY: text}
    try:
        from engine.models.checkpoint import HASH_KEY, content_hash
        md[HASH_KEY] = content_hash(state, text)
    except ImportError:     # the code before the fix: no hash to add
        pass
    dst.write_bytes(save(state, metadata=md))
    return dst


# ---- nesting and huge integers ---------------------------------------------------------------
@pytest.mark.parametrize("doc,message", [
    (DEEP, "nested too deeply"),
    ('{"version": 1, "default": %s}' % ("[" * 40 + "]" * 40), "nested too deeply"),
    ('{"version": 1, "default": {"w_bits": %s}}' % BIG, "integer of 5000 digits"),
    ('{"version": 1, "default": {"sparsity": "1:%s"}}' % BIG, "is not 'none', 'unstructured' or 'N:M'"),
    ('{"version": 1, "default": {"widen": NaN}}', "NaN"),
])
def test_plan_files(tmp_path, capsys, doc, message):
    p = tmp_path / "plan.json"
    p.write_text(doc)
    refused(capsys, ["plan", "validate", str(p), "--model", "lenet5"], message)


@pytest.mark.slow
def test_plan_file_in_a_real_process(tmp_path):
    p = tmp_path / "plan.json"
    p.write_text(DEEP)
    code, out, err = run_cli("plan", "validate", str(p))
    assert code == 2 and "nested too deeply" in err and "Traceback" not in err


@pytest.mark.parametrize("doc,message", [(DEEP, "nested too deeply"), ('{"macs": %s}' % BIG, "5000 digits")])
def test_profile_files(tmp_path, capsys, doc, message):
    p = tmp_path / "prof.json"
    p.write_text(doc)
    refused(capsys, ["cost", "--profile", str(p)], message)


# ---- checkpoint metadata ---------------------------------------------------------------------
META_CASES = [
    ("deep", DEEP, "nested too deeply"),
    ("bigint", '{"kind": "planned-model", "plan": {"version": 1, "default": {"w_bits": %s}}}' % BIG, "5000 digits"),
    ("list", "[1, 2, 3]", "its metadata must be a JSON object"),
    ("noplan", '{"kind": "planned-model", "model": "mlp", "dataset": "digits"}', "carries no plan"),
    ("badsettings", '{"kind": "planned-model", "model": "mlp", "dataset": "digits", "plan": {"version": 1}, '
                    '"settings": {"batch_size": -3}}', "setting batch_size=-3"),
    ("settingslist", '{"kind": "planned-model", "model": "mlp", "dataset": "digits", "plan": {"version": 1}, '
                     '"settings": [1]}', "settings must be an object"),
    ("unknownsetting", '{"kind": "planned-model", "model": "mlp", "dataset": "digits", "plan": {"version": 1}, '
                       '"settings": {"bogus": 1}}', "unknown setting 'bogus'"),
    ("modeltype", '{"kind": "planned-model", "model": 5, "dataset": "digits", "plan": {"version": 1}}',
     "unknown model 5"),
    ("plantype", '{"kind": "planned-model", "model": "mlp", "dataset": "digits", "plan": "x"}', "plan must be"),
]


@pytest.mark.parametrize("name,text,message", META_CASES, ids=[c[0] for c in META_CASES])
@pytest.mark.parametrize("cmd", [["export", "onnx", "--out", "{tmp}/o.onnx"], ["deploy", "--out", "{tmp}/o.p"],
                                 ["deploy", "--verify"], ["export", "table"]], ids=["onnx", "deploy", "verify", "table"])
def test_checkpoint_metadata(ckpt, tmp_path, capsys, name, text, message, cmd):
    bad = raw_meta_checkpoint(ckpt, tmp_path / f"{name}.safetensors", text)
    refused(capsys, [*[c.format(tmp=tmp_path) for c in cmd], "--checkpoint", str(bad)], message)


# ---- session files ---------------------------------------------------------------------------
@pytest.fixture
def store_doc(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    sid = store.create_session("mine", "mlp", "digits", "cpu")
    return store, store.export_session(sid)


def session_refused(store, data, message):
    before = (store.sessions(), store.keys())
    with pytest.raises(UserError, match=message):
        store.import_session(data)
    assert (store.sessions(), store.keys()) == before


def test_session_deep_nesting_and_huge_integers(store_doc):
    store, doc = store_doc
    session_refused(store, DEEP, "nested too deeply")
    session_refused(store, DEEP.encode(), "nested too deeply")
    text = json.dumps(doc).replace('"version": 1', '"version": %s' % BIG, 1)
    session_refused(store, text, "5000 digits")
    deep = {}
    cur = deep
    for _ in range(5000):
        cur["x"] = {}
        cur = cur["x"]
    session_refused(store, {**doc, "session": {**doc["session"], "meta": deep}}, "nested too deeply")


def test_session_non_ascii_checksum(store_doc):
    store, doc = store_doc
    session_refused(store, {**doc, "checksum": "é" * 64}, "no checksum")   # before: TypeError from compare_digest


def test_session_lone_surrogate_name(store_doc):
    store, doc = store_doc
    doc["session"]["name"] = "bad \ud800 name"
    doc["checksum"] = checksum(doc)
    session_refused(store, json.dumps(doc), "lone surrogate")      # before: UnicodeEncodeError from SQLite
    session_refused(store, doc, "lone surrogate")


def test_session_created_with_a_lone_surrogate_name_is_refused(store_doc):
    store, _ = store_doc
    before = store.sessions()
    with pytest.raises(UserError, match="lone surrogate"):     # before: UnicodeEncodeError from SQLite
        store.create_session("bad \ud800", "mlp", "digits", "cpu")
    assert store.sessions() == before


def test_session_unknown_dataset_leaves_nothing_behind(store_doc):
    store, doc = store_doc
    doc["session"]["dataset"] = "no-such-dataset"
    doc["checksum"] = checksum(doc)
    session_refused(store, doc, "unknown dataset 'no-such-dataset'")   # before: stored, then failed on open


@pytest.mark.parametrize("field,value,message", [
    ("steps", "many", "steps="), ("steps", -1, "steps="), ("loss_curve", ["a"], "loss_curve value"),
    ("loss_curve", {}, "'loss_curve' has the wrong type"), ("costs", {"cpu": 5}, "costs"),
    ("costs", {"cpu": {"throughput": "fast"}}, "costs"), ("settings", {"lr": "x"}, "setting lr"),
    ("settings", {"init": "bogus"}, "setting init"), ("wall_s", "x", "wall_s"), ("version", True, "record version"),
    ("val_accuracy", 2, "val_accuracy"), ("reason", 5, "reason"),
])
def test_session_wrongly_typed_fields(store_doc, field, value, message):
    store, doc = store_doc
    ev = {"plan": {"version": 1}, "model": "mlp", "dataset": "digits", "settings": {}, "status": "estimated",
          field: value}
    doc["evaluations"] = [ev]
    doc["checksum"] = checksum(doc)
    session_refused(store, doc, message)


# ---- output and store paths ------------------------------------------------------------------
OUT_CMDS = {
    "onnx": lambda ck, out: ["export", "onnx", "--checkpoint", ck, "--out", out],
    "deploy": lambda ck, out: ["deploy", "--checkpoint", ck, "--out", out],
    "table": lambda ck, out: ["export", "table", "--checkpoint", ck, "--out", out],
    "finetune": lambda ck, out: ["finetune", "--model", "mlp", "--plan", "{plan}", "--steps", "1", "--save", out],
    "baseline": lambda ck, out: ["train-baseline", "--model", "mlp", "--epochs", "1", "--out", out],
    "sweep": lambda ck, out: ["sweep", "--model", "mlp", "--profile", "cpu", "--budget", "2", "--out", out],
}


@pytest.mark.parametrize("where,message", [("dir", "is a directory"), ("proc", "cannot write in"),
                                           ("under-file", "is not a folder")])
@pytest.mark.parametrize("cmd", list(OUT_CMDS))
def test_out_paths(ckpt, tmp_path, capsys, cmd, where, message):
    plan = tmp_path / "p.json"
    plan.write_text('{"version": 1}')
    (tmp_path / "d.csv").mkdir()     # .csv: the sweep's own check wants that suffix
    out = {"dir": str(tmp_path / "d.csv"), "proc": "/proc/bitscape-out.csv", "under-file": str(plan / "x.csv")}[where]
    argv = [a.replace("{plan}", str(plan)) for a in OUT_CMDS[cmd](str(ckpt), out)]
    refused(capsys, argv, message)


@pytest.mark.slow
def test_out_paths_in_a_real_process(ckpt, tmp_path):
    code, _, err = run_cli("export", "onnx", "--checkpoint", str(ckpt), "--out", str(tmp_path))
    assert code == 2 and "is a directory" in err and "Traceback" not in err


@pytest.mark.parametrize("kind,message", [("text", "is not a SQLite database"), ("dir", "is a directory"),
                                          ("under-file", "cannot be opened")])
def test_store_paths(tmp_path, capsys, kind, message):
    f = tmp_path / "notes.txt"
    f.write_text("hello, not a database\n" * 10)
    path = {"text": str(f), "dir": str(tmp_path), "under-file": str(f / "s.sqlite")}[kind]
    refused(capsys, ["sweep", "--model", "mlp", "--profile", "cpu", "--budget", "2", "--store", path], message)
    assert f.read_text() == "hello, not a database\n" * 10
    with pytest.raises(UserError, match=message):
        Store(path)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e300"])
@pytest.mark.parametrize("cmd", ["finetune", "train-baseline"])
def test_epochs_must_be_finite(tmp_path, capsys, value, cmd):
    plan = tmp_path / "p.json"
    plan.write_text('{"version": 1}')
    extra = ["--plan", str(plan)] if cmd == "finetune" else []
    refused(capsys, [cmd, "--model", "mlp", *extra, f"--epochs={value}"], "--epochs must be")


def test_bad_numbers_on_the_command_line(tmp_path, capsys):
    plan = tmp_path / "p.json"
    plan.write_text('{"version": 1}')
    base = ["finetune", "--model", "mlp", "--plan", str(plan)]
    refused(capsys, [*base, "--lr", "1e12"], "setting lr=")
    refused(capsys, [*base, "--lr", "nan"], "setting lr=")
    refused(capsys, [*base, "--seed", "-1"], "setting seed=")
    refused(capsys, [*base, "--steps", "100000000"], "setting steps=")
    refused(capsys, [*base, "--epochs", "10000", "--batch-size", "1"], "at most 1,000,000 are allowed")
    refused(capsys, ["--allow-code", "not a reference", "plan", "template"], "is not a package.module:function")
    refused(capsys, ["bsq", "--model", "mlp", "--strength", "inf"], "--strength must be a finite number")
