"""The zoo's ResNet-18 for 32x32 inputs goes through plan, cost and the no-training estimate.

CIFAR-10 is not installed on the development machine, so no FP32 baseline ships; the estimate runs on
a 3x32x32 stand-in dataset with a one-step baseline (what is tested is the path, not an accuracy)."""
import json

import pytest

from explorer.cli import main

TINY = "tests.engine.contract.models:tiny_cifar"


def test_resnet18_is_the_published_shape():
    import torch

    from engine.models.zoo import ZOO, build_model
    from engine.plans.graph import analyze
    net = build_model("resnet18", (3, 32, 32), 10)
    assert ZOO["resnet18"].datasets == ("cifar10",)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(11.17e6, rel=0.01)   # ResNet-18: 11.2 M
    topo = analyze(net, (3, 32, 32))
    convs = [n for n in topo.names if n != "fc"]
    assert len(convs) == 1 + 16 + 3 and topo.names[-1] == "fc"       # stem, 8 blocks x 2, 3 projection shortcuts
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet18_plans_and_costs(tmp_path, capsys):
    assert main(["plan", "template", "--model", "resnet18"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["layers"]) == 21
    plan["default"] = {"w_bits": 4, "a_bits": 4, "widen": 1.5}
    plan["layers"] = {"conv1": {"w_bits": 8, "a_bits": 8}, "layer4.*": {"w_bits": 2, "a_bits": 2, "sparsity": "2:4"},
                      "fc": {"widen": 1.0}}
    pf = tmp_path / "r18.json"
    pf.write_text(json.dumps(plan))
    assert main(["plan", "validate", str(pf), "--model", "resnet18"]) == 0
    capsys.readouterr()
    assert main(["cost", "--model", "resnet18", "--plan", str(pf), "--profile", "a100", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["dataset"] == "cifar10" and len(rep["layers"]) == 21 and rep["throughput"] > 0
    assert main(["export", "table", "--model", "resnet18", "--plan", str(pf)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 22 and "widened_macs" in rows[0]


@pytest.mark.slow   # a one-step FP32 baseline and calibration of an 11 M-parameter network on the CPU
def test_resnet18_estimate_runs_on_32x32_inputs():
    from engine.evaluation import Settings
    from engine.explore.pipeline import evaluate_plan
    from engine.models.baselines import train_baseline
    from engine.models.zoo import trusted_references
    from engine.plans.plan import LayerConfig, Plan
    with trusted_references(TINY):
        train_baseline("resnet18", TINY, epochs=0.1, batch_size=16)
        plan = Plan(default=LayerConfig(4, 4), layers={"conv1": {"w_bits": 8, "a_bits": 8}})
        run = evaluate_plan("resnet18", TINY, plan, Settings(steps=0, batch_size=16, calib_batches=1))
    ev = run.evaluation
    assert ev.status == "estimated", ev.reason
    assert 0.0 <= ev.val_accuracy <= 1.0 and len(run.applied.configs) == 21
