"""Fuzzing the files bitscape reads (issue 18, item 5): plans, session files, checkpoint metadata.

Documents are generated from the schemas (valid ones), then mutated: values replaced by
hostile ones (wrong types, NaN, huge integers, deep nesting, lone surrogates, code
references, 1000-character names), keys deleted or added, bytes flipped. Every input must be
accepted or refused with a user error (exit 2 on the command line); any other exception fails.
A refused session import must leave the store exactly as it was. Derandomized, so CI sees
the same examples every run.
"""
import copy
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import USER_ERRORS
from engine.evaluation import Evaluation, Settings
from engine.explore.store import Store, checksum
from engine.plans.plan import BIT_CHOICES, QUANTIZERS, Plan
from explorer.cli import main

FUZZ = settings(derandomize=True, deadline=None, database=None, max_examples=120,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
COUNTS = {"plans": [0, 0], "sessions": [0, 0], "checkpoints": [0, 0]}   # [accepted, refused]


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    total = {k: {"inputs": a + r, "accepted": a, "refused": r} for k, (a, r) in COUNTS.items()}
    print(f"\nfuzz counts (tracebacks: 0 — any would have failed the test): {json.dumps(total)}")


# ---- hostile values and mutations ------------------------------------------------------------
class Deep:
    """Stands for ``depth`` nested arrays in the serialized text (too deep to build as objects)."""

    def __init__(self, depth):
        self.depth = depth


class BigInt:
    def __init__(self, digits):
        self.digits = digits


NAMES = ["", "os:abort", "tests.engine.fixtures:tiny_model", "bad \ud800 name", "é", "x" * 1000, "2:4",
         "1:" + "9" * 60, "none", "unstructured", "lsq", "mse", "bogus", "mlp", "lenet5", "resnet20", "digits",
         "no-such", "<img src=x onerror=alert(1)>", "conv*", "fc1"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 6, 10 ** 6), st.integers(),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(NAMES),
                    st.builds(Deep, st.integers(20, 3000)), st.builds(BigInt, st.integers(41, 6000)))
hostile = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                     st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=8), c,
                                                                     max_size=3)), max_leaves=6)


def paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, prefix + (i,))


def mutate(doc, data, n_max=3):
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(0, n_max), label="mutations")):
        path = data.draw(st.sampled_from(list(paths(doc))), label="path")
        op = data.draw(st.sampled_from(["replace", "delete", "add"]), label="op")
        if not path:
            if op == "replace":
                doc = data.draw(hostile, label="doc")
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        if op == "replace":
            parent[key] = data.draw(hostile, label="value")
        elif op == "delete":
            del parent[key]
        elif isinstance(parent[key], dict):
            parent[key][data.draw(st.sampled_from(NAMES) | st.text(max_size=8), label="key")] = data.draw(hostile)
        elif isinstance(parent[key], list):
            parent[key].append(data.draw(hostile, label="item"))
    return doc


def to_text(doc) -> str:
    """JSON text of ``doc``; Deep and BigInt sentinels become their raw text."""
    raw = []

    def enc(o):
        if isinstance(o, Deep):
            raw.append("[" * o.depth + "]" * o.depth)
        elif isinstance(o, BigInt):
            raw.append("7" * o.digits)
        else:
            raise TypeError(type(o).__name__)
        return f"__raw{len(raw) - 1}__"
    text = json.dumps(doc, default=enc)
    for i, r in enumerate(raw):
        text = text.replace(f'"__raw{i}__"', r, 1)
    return text


def plain(doc) -> bool:
    """No sentinels inside (the document can be handed over as a Python object)."""
    try:
        json.dumps(doc)
        return True
    except TypeError:
        return False


# ---- plans -----------------------------------------------------------------------------------
LENET = ["conv1", "conv2", "fc1", "fc2", "fc3"]
partial = st.fixed_dictionaries({}, optional={
    "w_bits": st.sampled_from(BIT_CHOICES), "a_bits": st.sampled_from(BIT_CHOICES),
    "widen": st.floats(1, 8), "sparsity": st.sampled_from(["none", "unstructured", "2:4", "1:4", "1:2"]),
    "sparsity_fraction": st.floats(0, 0.99), "quantizer": st.sampled_from(QUANTIZERS), "per_channel": st.booleans()})
plan_docs = st.fixed_dictionaries({"version": st.just(1)}, optional={
    "name": st.text(max_size=10), "model": st.sampled_from(["lenet5", "mlp"]), "default": partial,
    "layers": st.dictionaries(st.sampled_from(LENET + ["conv*", "fc?", "*"]), partial, max_size=3)})


@FUZZ
@given(doc=plan_docs, data=st.data())
def test_plans(tmp_path_factory, doc, data):
    text = to_text(mutate(doc, data))
    try:
        Plan.from_json(text)
    except USER_ERRORS:
        pass
    f = tmp_path_factory.mktemp("plan") / "p.json"
    f.write_text(text, encoding="utf-8", errors="surrogatepass")
    rc = main(["plan", "validate", str(f), "--model", "lenet5"])
    assert rc in (0, 2)
    COUNTS["plans"][rc == 2] += 1


# ---- session files ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def session_store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store") / "s.sqlite")
    sid = store.create_session("fuzz", "mlp", "digits", "cpu", meta={"note": "base"})
    for i, (status, steps) in enumerate((("estimated", 0), ("fine-tuned", 5))):
        ev = Evaluation(plan=Plan.uniform(4 + i, 8, model="mlp").to_dict(), model="mlp", dataset="digits",
                        settings=Settings(steps=steps, seed=i).to_dict(), status=status, val_accuracy=0.9,
                        test_accuracy=0.88, estimate_val_accuracy=0.8, loss_curve=[1.0, 0.5][:steps],
                        steps=steps, costs={"cpu": {"throughput": 1000.0, "batch": 1}})
        store.put(ev, session=sid)
    return store, store.export_session(sid)


def state_of(store):
    return len(store.sessions()), store.keys()


@FUZZ
@given(data=st.data())
def test_session_files(session_store, data):
    store, base = session_store
    doc = mutate(base, data)
    if plain(doc) and data.draw(st.booleans(), label="fix checksum") and isinstance(doc, dict):
        try:
            doc["checksum"] = checksum(doc)
        except (TypeError, ValueError):
            pass
    before = state_of(store)
    as_object = plain(doc) and data.draw(st.booleans(), label="as object")
    try:
        sid = store.import_session(doc if as_object else to_text(doc).encode("utf-8", "surrogatepass"))
    except USER_ERRORS:
        assert state_of(store) == before
        COUNTS["sessions"][1] += 1
        return
    evs = store.evaluations(session=sid)     # what was stored opens again
    for ev in evs:
        Settings.from_dict(ev.settings)
        Plan.from_dict(ev.plan).check_model(ev.model)
    COUNTS["sessions"][0] += 1


@settings(derandomize=True, deadline=None, database=None, max_examples=60)
@given(seed=st.integers(0, 10 ** 6))
def test_session_file_bytes_flipped(session_store, seed):
    store, base = session_store
    raw = bytearray(json.dumps(base).encode())
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 4)):
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    before = state_of(store)
    try:
        store.import_session(bytes(raw))
        COUNTS["sessions"][0] += 1
    except USER_ERRORS:
        assert state_of(store) == before
        COUNTS["sessions"][1] += 1


# ---- checkpoint metadata ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    from engine.explore.pipeline import evaluate_plan
    from engine.models.checkpoint import load_state, save_planned
    run = evaluate_plan("mlp", "digits", Plan.uniform(4, 4, model="mlp"), Settings(steps=2))
    path = tmp_path_factory.mktemp("ckpt") / "mlp.safetensors"
    save_planned(run, path)
    return load_state(path)


@settings(derandomize=True, deadline=None, database=None, max_examples=80,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_checkpoint_metadata(planned, tmp_path_factory, capsys, data):
    from safetensors.torch import save

    from engine.models.checkpoint import HASH_KEY, META_KEY, content_hash, load_planned
    state, meta = planned
    text = to_text(mutate(meta, data, n_max=2))
    path = tmp_path_factory.mktemp("meta") / "m.safetensors"
    try:
        blob = save(state, metadata={META_KEY: text, HASH_KEY: content_hash(state, text)})
    except UnicodeEncodeError:      # a lone surrogate cannot even be written into the header
        COUNTS["checkpoints"][1] += 1
        return
    path.write_bytes(blob)
    try:
        load_planned(path)
    except USER_ERRORS:
        pass
    rc = main(["export", "table", "--checkpoint", str(path)])
    capsys.readouterr()
    assert rc in (0, 2)
    COUNTS["checkpoints"][rc == 2] += 1
