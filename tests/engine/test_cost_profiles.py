"""Profiles are user-editable data: every shipped one loads and cites a source; bad ones fail clearly."""
import json

import pytest

from engine.cost import ProfileError, list_profiles, load_profile
from engine.cost.profiles import SHIPPED_DIR

REQUIRED = {"bops", "bismo", "bitfusion", "a100", "dlac", "cpu", "t4", "h100"}


def test_every_shipped_profile_loads_and_cites_a_source():
    rows = {r["name"]: r for r in list_profiles()}
    assert REQUIRED <= set(rows)
    for name, r in rows.items():
        assert "error" not in r, r.get("error")
        assert len(r["source"]) > 40 and r["status"] in ("verified", "derived", "assumed", "fitted")
        assert load_profile(name).name == name


def test_cpu_profile_says_where_its_figures_come_from():
    assert "kernels.md" in load_profile("cpu").source and "re-fit" in load_profile("cpu").source


def _write(tmp_path, data, name="mine.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def _base():
    return json.loads((SHIPPED_DIR / "a100.json").read_text())


@pytest.mark.parametrize("edit,field", [
    (lambda d: d["compute"].pop("rates"), "compute.rates"),
    (lambda d: d["compute"]["rates"].__setitem__("8", -1), "compute.rates.8"),
    (lambda d: d["compute"].__setitem__("clas", "fixed"), "compute"),
    (lambda d: d.pop("source"), "source"),
    (lambda d: d["memory"].__setitem__("bytes_per_s", "fast"), "memory.bytes_per_s"),
    (lambda d: d["compute"]["rates"].pop("16"), "compute.rates"),
    (lambda d: d["compute"].__setitem__("class", "quantum"), "compute.class"),
    (lambda d: d["sparsity"]["nm"].__setitem__("patterns", ["4:2"]), "sparsity.nm.patterns"),
])
def test_malformed_profile_names_file_and_field(tmp_path, edit, field):
    d = _base()
    edit(d)
    p = _write(tmp_path, d)
    with pytest.raises(ProfileError) as e:
        load_profile(str(p))
    msg = str(e.value)
    assert str(p) in msg and field in msg


def test_bad_json_and_missing_file(tmp_path):
    p = _write(tmp_path, '{"name": "x",,}')
    with pytest.raises(ProfileError, match="not valid JSON.*line 1"):
        load_profile(str(p))
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(str(tmp_path / "nope.json"))
    with pytest.raises(ProfileError, match="unknown profile 'nope'; profiles are .*a100"):
        load_profile("nope")


def test_user_profile_directory_shadows_and_extends(tmp_path, monkeypatch):
    d = _base()
    d["name"], d["title"] = "mygpu", "my edited A100"
    d["compute"]["efficiency"] = 0.9
    _write(tmp_path, d, "mygpu.json")
    monkeypatch.setenv("BITSCAPE_PROFILE_PATH", str(tmp_path))
    assert load_profile("mygpu").title == "my edited A100"
    assert any(r["name"] == "mygpu" for r in list_profiles())
    bad = dict(d, name="other")
    _write(tmp_path, bad, "broken.json")
    rows = {r["name"]: r for r in list_profiles()}
    assert rows["broken"]["status"] == "invalid" and "'name'" in rows["broken"]["error"]


def test_with_changes_revalidates():
    a = load_profile("a100")
    assert a.with_changes({"compute.overhead_s": 0.0}).tables.overhead[7][7] == 0.0
    with pytest.raises(ProfileError, match="compute.overhead_s"):
        a.with_changes({"compute.overhead_s": -1})


def test_fixed_profile_picks_the_unit_by_the_named_operand_and_width_map(tmp_path):
    d = _base()
    rates = d["compute"]["rates"]
    d["compute"].update(operand="w", width_map={"1": 8, "2": 8, "3": 8})
    prof = load_profile(_write(tmp_path, d))
    from engine.cost.profiles import bit_index
    t = prof.tables
    unit = {(w, a): t.w_exec[bit_index(w)][bit_index(a)] for w in (1, 3, 4, 8) for a in (2, 4, 8)}
    assert {unit[(4, a)] for a in (2, 4, 8)} == {4} and rates.get("4")      # a 4-bit weight: INT4 whatever a
    assert {unit[(w, a)] for w in (1, 3, 8) for a in (2, 4, 8)} == {8}     # 1-3 mapped to INT8, not rounded up
    assert t.w_store[bit_index(3)] == 8 and t.w_store[bit_index(4)] == 4


def test_width_map_to_a_unit_without_a_rate_names_the_field(tmp_path):
    d = _base()
    d["compute"]["width_map"] = {"3": 6}
    with pytest.raises(ProfileError, match=r"compute\.width_map\.3.*no rate"):
        load_profile(_write(tmp_path, d))
