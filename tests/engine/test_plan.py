import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.plans.plan import BIT_CHOICES, LayerConfig, Plan, PlanError, plan_schema

NAMES = ["conv1", "conv2", "fc1", "fc2", "fc3"]

configs = st.builds(
    LayerConfig,
    w_bits=st.sampled_from([b for b in BIT_CHOICES if b > 2]),
    a_bits=st.sampled_from(BIT_CHOICES),
    widen=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    sparsity=st.sampled_from(["none", "2:4", "1:4", "4:8"]),
    quantizer=st.sampled_from(["lsq", "wrpn"]),
    per_channel=st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(default=configs, overrides=st.dictionaries(st.sampled_from(NAMES + ["fc*", "conv?"]), configs, max_size=4))
def test_json_round_trip_is_lossless(default, overrides):
    plan = Plan(default=default, layers={k: v.to_dict() for k, v in overrides.items()}, model="lenet5", name="p")
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert again.resolve(NAMES) == plan.resolve(NAMES)
    jsonschema.validate(json.loads(plan.to_json()), plan_schema())


def test_exact_names_win_over_patterns_and_patterns_apply_in_order():
    plan = Plan(default=LayerConfig(4, 4), layers={"fc*": {"w_bits": 8}, "fc3": {"a_bits": 8}, "f*": {"w_bits": 2}})
    r = plan.resolve(NAMES)
    assert (r["conv1"].w_bits, r["conv1"].a_bits) == (4, 4)
    assert (r["fc1"].w_bits, r["fc1"].a_bits) == (2, 4)      # later pattern wins
    assert (r["fc3"].w_bits, r["fc3"].a_bits) == (2, 8)      # exact name applies last


BAD_PLANS = [
    ({"version": 1, "layers": {"conv2": {"w_bits": 0}}}, "layer 'conv2': w_bits=0 is outside 1..8 or 32"),
    ({"version": 1, "default": {"a_bits": 9}}, "default: a_bits=9 is outside 1..8 or 32"),
    ({"version": 1, "layers": {"conv2": {"w_bits": 4.5}}}, "w_bits=4.5 is outside"),
    ({"version": 1, "layers": {"conv2": {"w_bits": True}}}, "w_bits=True is outside"),
    ({"version": 1, "layers": {"conv3": {"w_bits": 4}}}, "unknown layer 'conv3' (closest: 'conv2')"),
    ({"version": 1, "layers": {"gru*": {"w_bits": 4}}}, "pattern 'gru*' matches no layer"),
    ({"version": 1, "layers": {"fc1": {"widen": 0.5}}}, "widen=0.5 is outside 1..8"),
    ({"version": 1, "layers": {"fc1": {"widen": "2"}}}, "widen='2' is outside"),
    ({"version": 1, "layers": {"fc1": {"sparsity": "4:2"}}}, "needs 1 <= N < M <= 16"),
    ({"version": 1, "layers": {"fc1": {"sparsity": "half"}}}, "is not 'none', 'unstructured' or 'N:M'"),
    ({"version": 1, "layers": {"fc1": {"sparsity": "unstructured", "sparsity_fraction": 1.0}}}, "sparsity_fraction=1.0"),
    ({"version": 1, "layers": {"fc1": {"sparsity_fraction": 0.5}}}, "needs sparsity='unstructured'"),
    ({"version": 1, "layers": {"fc1": {"quantizer": "dorefa"}}}, "quantizer='dorefa' is not one of"),
    ({"version": 1, "layers": {"fc1": {"quantizer": "binary", "w_bits": 2}}}, "needs w_bits=1"),
    ({"version": 1, "layers": {"fc1": {"wbits": 4}}}, "unknown field 'wbits' (did you mean 'w_bits'?)"),
    ({"version": 1, "layers": {"fc1": 4}}, "expected an object"),
    ({"version": 2}, "plan version 2 is not supported"),
    ({"layers": {}}, "plan has no 'version' field"),
    ({"version": 1, "extra": 1}, "unknown top-level key 'extra'"),
    ([1, 2], "a plan must be a JSON object"),
    ({"version": 1, "layers": []}, "'layers' must be an object"),
]


@pytest.mark.parametrize("doc,message", BAD_PLANS)
def test_bad_plans_are_rejected_with_a_message_naming_the_problem(doc, message):
    with pytest.raises(PlanError) as e:
        Plan.from_dict(doc).resolve(NAMES)
    assert message in str(e.value)


def test_bad_files(tmp_path):
    p = tmp_path / "p.json"
    p.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.load(p)
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PlanError, match="not UTF-8"):
        Plan.load(p)
    p.write_text(" " * 1_000_001)
    with pytest.raises(PlanError, match="larger than"):
        Plan.load(p)
    with pytest.raises(PlanError, match="does not exist"):
        Plan.load(tmp_path / "missing.json")


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "plan.json"
    Plan.uniform(4, 4).save(p)
    before = p.read_text()
    import engine.fileio as fio

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(fio.os, "replace", boom)
    with pytest.raises(OSError):
        Plan.uniform(2, 2).save(p)
    assert p.read_text() == before
    assert [f.name for f in tmp_path.iterdir()] == ["plan.json"]


def test_digest_ignores_name_only():
    a, b = Plan.uniform(4, 4, name="a"), Plan.uniform(4, 4, name="b")
    assert a.digest() == b.digest() != Plan.uniform(4, 8).digest()


def test_label():
    assert LayerConfig(4, 8, widen=2.0, sparsity="2:4").label() == "W4A8 x2 2:4"
