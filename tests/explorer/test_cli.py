import json
import subprocess
import sys

import pytest

from explorer.cli import main


def run_cli(*args):
    """Run the real console entry in a subprocess: exit codes and streams as a user sees them."""
    p = subprocess.run([sys.executable, "-m", "explorer.cli", *args], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.slow
def test_template_is_a_valid_plan_listing_every_layer(tmp_path):
    code, out, err = run_cli("plan", "template", "--model", "lenet5")
    assert code == 0, err
    plan = json.loads(out)
    assert list(plan["layers"]) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert all(v["w_bits"] == 32 for v in plan["layers"].values())
    f = tmp_path / "p.json"
    f.write_text(out)
    assert run_cli("plan", "validate", str(f), "--model", "lenet5")[0] == 0


@pytest.mark.parametrize("doc,message", [
    ('{"version": 1, "layers": {"conv2": {"w_bits": 0}}}', "layer 'conv2': w_bits=0 is outside 1..8 or 32"),
    ('{"version": 1, "layers": {"conv3": {}}}', "unknown layer 'conv3' (closest: 'conv2')"),
    ('{"version": 1, "default": {"sparsity": "2:4"}}', "layer 'conv1': sparsity='2:4' needs the input dimension"),
    ('{"version": 1,', "not valid JSON"),
])
@pytest.mark.slow
def test_validate_rejects_with_exit_2_and_no_traceback(tmp_path, doc, message):
    f = tmp_path / "bad.json"
    f.write_text(doc)
    code, out, err = run_cli("plan", "validate", str(f), "--model", "lenet5")
    assert code == 2
    assert message in err and "Traceback" not in err


def test_finetune_json_output_and_save(tmp_path, capsys):
    plan = tmp_path / "p.json"
    plan.write_text('{"version": 1, "default": {"w_bits": 4, "a_bits": 4}}')
    ckpt = tmp_path / "m.safetensors"
    assert main(["finetune", "--model", "mlp", "--dataset", "digits", "--plan", str(plan), "--steps", "20",
                 "--json", "--save", str(ckpt)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "fine-tuned"
    for k in ("val_accuracy", "test_accuracy"):
        assert 0.0 <= out[k] <= 1.0
    assert out["wall_s"] > 0 and out["plan"]["default"]["w_bits"] == 4
    assert ckpt.stat().st_size > 0


@pytest.mark.slow
def test_finetune_bad_plan_writes_nothing(tmp_path):
    plan = tmp_path / "p.json"
    plan.write_text('{"version": 1, "default": {"widen": 2}}')
    ckpt = tmp_path / "m.safetensors"
    code, out, err = run_cli("finetune", "--plan", str(plan), "--save", str(ckpt))
    assert code == 2 and "widen=2 is not possible" in err
    assert not ckpt.exists() and out == ""


@pytest.mark.slow
def test_unknown_model_and_missing_baseline(tmp_path):
    plan = tmp_path / "p.json"
    plan.write_text('{"version": 1}')
    code, _, err = run_cli("finetune", "--model", "vgg99", "--dataset", "digits", "--plan", str(plan))
    assert code == 2 and "unknown model 'vgg99'" in err
    code, _, err = run_cli("finetune", "--model", "resnet20", "--dataset", "synthetic", "--plan", str(plan))
    assert code == 2 and "bitscape train-baseline --model resnet20" in err


def test_train_baseline_then_finetune_bring_your_own(tmp_path, capsys):
    args = ["--model", "tests.engine.fixtures:tiny_model", "--dataset", "tests.engine.fixtures:tiny_dataset"]
    assert main(["train-baseline", *args, "--epochs", "2", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert 0 <= trained["test_accuracy"] <= 1
    plan = tmp_path / "p.json"
    plan.write_text('{"version": 1, "default": {"w_bits": 8, "a_bits": 8}}')
    assert main(["finetune", *args, "--plan", str(plan), "--steps", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "fine-tuned"


@pytest.mark.slow
def test_finetune_from_the_cli_uses_the_baselines_stored_rates_and_says_so(tmp_path):
    """As the README runs it: the default lenet5/digits fine-tune takes data/baselines/rates.json's
    rates and prints where they came from; --lr overrides them."""
    from engine.training.rates import stored
    plan = tmp_path / "p.json"
    plan.write_text('{"version": 1, "default": {"w_bits": 4, "a_bits": 4}}')
    code, out, err = run_cli("finetune", "--model", "lenet5", "--dataset", "digits", "--plan", str(plan),
                             "--steps", "6")
    assert code == 0, err
    assert f"lr {stored('lenet5', 'digits')['lr']:.3g}" in out and "from stored for lenet5/digits" in out
    code, out, err = run_cli("finetune", "--model", "lenet5", "--dataset", "digits", "--plan", str(plan),
                             "--steps", "6", "--lr", "0.002")
    assert code == 0, err
    assert "lr 0.002" in out and "from settings" in out
