"""Issue 18, item 3: no code runs because a file names it, and checkpoints are checked on load.

Reproductions: a checkpoint whose metadata names ``os:abort`` aborted `export onnx`, `deploy`
and `export table`; bit flips in a checkpoint's tensors and an all-NaN baseline passed with
exit 0; ``--out`` equal to ``--checkpoint`` overwrote the input.
"""
import random
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from engine.errors import UserError
from engine.evaluation import Settings
from engine.explore.pipeline import evaluate_plan
from engine.explore.store import Store, checksum
from engine.models.checkpoint import META_KEY, load_planned, load_state, save_planned, save_state
from engine.plans.plan import LayerConfig, Plan
from explorer.cli import main

CALLS = []
MARKER = "tests.engine.test_safety_code:marker_model"


def marker_model(input_shape=None, num_classes=10):
    """A model function that records that it ran (the stand-in for code a file should not run)."""
    CALLS.append("ran")
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))


def run_cli(*args):
    p = subprocess.run([sys.executable, "-m", "explorer.cli", *args], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    run = evaluate_plan("mlp", "digits", Plan(default=LayerConfig(4, 4)), Settings(steps=3))
    assert run.evaluation.status == "fine-tuned", run.evaluation.reason
    path = tmp_path_factory.mktemp("ckpt") / "mlp.safetensors"
    save_planned(run, path)
    return path


def with_meta(src, dst, **changes):
    state, meta = load_state(src)
    save_state(dst, state, {**meta, **changes})
    return dst


@pytest.mark.parametrize("cmd", [["export", "onnx", "--out", "{tmp}/o.onnx"], ["deploy", "--out", "{tmp}/o.packed"],
                                 ["export", "table"]])
@pytest.mark.slow
def test_checkpoint_naming_os_abort_is_refused_not_run(ckpt, tmp_path, cmd):
    bad = with_meta(ckpt, tmp_path / "abort.safetensors", dataset="os:abort")
    code, out, err = run_cli(*[c.format(tmp=tmp_path) for c in cmd], "--checkpoint", str(bad))
    assert code == 2, (code, err)          # before the fix: -6 (SIGABRT)
    assert "'os:abort' is code" in err and "--allow-code" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_checkpoint_model_reference_runs_only_when_allowed(ckpt, tmp_path, capsys):
    from engine.models.zoo import is_allowed
    bad = with_meta(ckpt, tmp_path / "marker.safetensors", model=MARKER, plan={"version": 1})
    CALLS.clear()
    with pytest.raises(UserError, match="is code"):
        load_planned(bad)
    assert main(["export", "table", "--checkpoint", str(bad)]) == 2
    assert "bitscape --allow-code REF COMMAND" in capsys.readouterr().err
    assert CALLS == [] and not is_allowed(MARKER)
    # the user allows it on the command line: now it runs, and only for that command
    assert main(["--allow-code", MARKER, "export", "table", "--checkpoint", str(bad)]) == 0
    assert CALLS and not is_allowed(MARKER)


def test_allow_list_api():
    from engine.models.zoo import allow_reference, check_reference, is_allowed, trusted_references
    assert not is_allowed(MARKER)
    with trusted_references(MARKER):
        check_reference(MARKER, "model")
    with pytest.raises(UserError, match="is code"):
        check_reference(MARKER, "model")
    with pytest.raises(UserError, match="not a package.module:function"):
        allow_reference("os:abort; rm -rf /")
    with pytest.raises(UserError, match="not a package.module:function"):
        allow_reference("x" * 100_000)


def test_session_file_naming_code_is_refused_and_store_unchanged(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    sid = store.create_session("mine", "mlp", "digits", "cpu")
    doc = store.export_session(sid)
    doc["session"]["dataset"] = "os:abort"
    doc["checksum"] = checksum(doc)
    before = store.sessions()
    with pytest.raises(UserError, match="'os:abort' is code"):
        store.import_session(doc)
    assert store.sessions() == before


def flip_bits(data: bytes, start: int, end: int, rng: random.Random, n: int = 1) -> bytes:
    b = bytearray(data)
    for _ in range(n):
        i = rng.randrange(start, end)
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def tensor_region(raw: bytes) -> tuple[int, int]:
    header = int.from_bytes(raw[:8], "little")
    return 8 + header, len(raw)


def test_fifty_random_bit_flips_in_the_tensors_are_each_refused(ckpt, tmp_path):
    raw = ckpt.read_bytes()
    start, end = tensor_region(raw)
    rng = random.Random(18)
    refused = 0
    for i in range(50):
        p = tmp_path / f"flip{i}.safetensors"
        p.write_bytes(flip_bits(raw, start, end, rng))
        with pytest.raises(UserError, match="damaged or was modified"):
            load_state(p)
        refused += 1
    assert refused == 50
    p = tmp_path / "flip50.safetensors"     # and fifty flips at once
    p.write_bytes(flip_bits(raw, start, end, rng, n=50))
    with pytest.raises(UserError, match="damaged or was modified"):
        load_state(p)


def test_bit_flips_anywhere_give_a_clean_refusal_or_the_same_content(ckpt, tmp_path):
    raw = ckpt.read_bytes()
    good_state, good_meta = load_state(ckpt)
    rng = random.Random(7)
    for i in range(50):
        p = tmp_path / f"any{i}.safetensors"
        p.write_bytes(flip_bits(raw, 0, len(raw), rng))
        try:
            state, meta = load_state(p)
        except UserError:
            continue
        # a flip that changes nothing a reader sees (e.g. the case of a hex escape) may pass
        assert meta == good_meta and state.keys() == good_state.keys()
        assert all(torch.equal(state[k], good_state[k]) for k in state)


@pytest.mark.parametrize("cmd", [["export", "onnx", "--out", "{tmp}/o.onnx"], ["deploy", "--out", "{tmp}/o.packed"],
                                 ["export", "table"]])
def test_flipped_checkpoint_fails_every_command(ckpt, tmp_path, cmd, capsys):
    raw = ckpt.read_bytes()
    start, end = tensor_region(raw)
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(flip_bits(raw, start, end, random.Random(1), n=50))
    assert main([*[c.format(tmp=tmp_path) for c in cmd], "--checkpoint", str(bad)]) == 2   # before: 0
    assert "its content hash does not match" in capsys.readouterr().err


def test_hash_covers_the_metadata(ckpt, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load, save

    from engine.models.checkpoint import HASH_KEY
    raw = ckpt.read_bytes()
    with safe_open(str(ckpt), framework="pt") as f:
        md = f.metadata()
    md[META_KEY] = md[META_KEY].replace('"w_bits": 4', '"w_bits": 8', 1)
    bad = tmp_path / "edited.safetensors"
    bad.write_bytes(save(load(raw), metadata=md))
    with pytest.raises(UserError, match="content hash does not match"):
        load_state(bad)
    assert HASH_KEY in md


def test_all_nan_checkpoint_and_baseline_are_refused(ckpt, tmp_path, capsys):
    state, meta = load_state(ckpt)
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    bad = tmp_path / "nan.safetensors"
    save_state(bad, nan, meta)
    for cmd in (["export", "onnx", "--out", str(tmp_path / "o.onnx")], ["deploy", "--out", str(tmp_path / "o.p")],
                ["export", "table"]):
        assert main([*cmd, "--checkpoint", str(bad)]) == 2
        assert "holds NaN or infinite values" in capsys.readouterr().err
    from engine.models.baselines import baseline_path
    base_state, base_meta = load_state(baseline_path("mlp", "digits"))
    nan_base = tmp_path / "nan-baseline.safetensors"
    save_state(nan_base, {k: torch.full_like(v, float("nan")) for k, v in base_state.items()}, base_meta)
    plan = tmp_path / "p.json"
    plan.write_text('{"version": 1}')
    # before: fine-tuned to 8.3% with exit 0
    assert main(["finetune", "--model", "mlp", "--plan", str(plan), "--steps", "1", "--baseline", str(nan_base)]) == 2
    assert "holds NaN or infinite values" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [["export", "onnx"], ["deploy"]])
def test_out_equal_to_checkpoint_is_refused_before_any_work(ckpt, tmp_path, cmd, capsys):
    copy = tmp_path / "c.safetensors"
    copy.write_bytes(ckpt.read_bytes())
    assert main([*cmd, "--checkpoint", str(copy), "--out", str(tmp_path / "." / "c.safetensors")]) == 2
    assert "same file as --checkpoint" in capsys.readouterr().err
    assert copy.read_bytes() == ckpt.read_bytes()


def test_legacy_checkpoint_without_hash_still_loads(ckpt, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load, save
    with safe_open(str(ckpt), framework="pt") as f:
        md = f.metadata()
    old = tmp_path / "old.safetensors"
    old.write_bytes(save(load(ckpt.read_bytes()), metadata={META_KEY: md[META_KEY]}))
    applied, meta = load_planned(old)
    assert meta["model"] == "mlp"
