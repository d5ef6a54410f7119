import math

import pytest
import torch

from engine.evaluation import Evaluation, Settings
from engine.explore.pipeline import evaluate_plan
from engine.models.checkpoint import load_planned, save_planned
from engine.models.data import load_dataset
from engine.plans.plan import LayerConfig, Plan
from engine.training.distill import kd_loss
from engine.training.finetune import accuracy, predict_logits


@pytest.mark.slow
def test_quick_finetune_improves_on_the_no_training_estimate():
    plan = Plan.uniform(2, 2)
    est = evaluate_plan("lenet5", "digits", plan, Settings(steps=0)).evaluation
    tuned = evaluate_plan("lenet5", "digits", plan, Settings(steps=120)).evaluation
    assert est.status == "estimated" and tuned.status == "fine-tuned"
    assert tuned.val_accuracy > est.val_accuracy + 0.03
    assert tuned.estimate_val_accuracy == est.val_accuracy
    assert len(tuned.loss_curve) == tuned.steps == 120
    assert 0.0 <= tuned.test_accuracy <= 1.0


def test_runs_are_deterministic_for_a_seed():
    plan = Plan.uniform(4, 4)
    a = evaluate_plan("mlp", "digits", plan, Settings(steps=30, seed=3)).evaluation
    b = evaluate_plan("mlp", "digits", plan, Settings(steps=30, seed=3)).evaluation
    assert a.loss_curve == b.loss_curve and a.test_accuracy == b.test_accuracy
    assert a.key == b.key
    c = evaluate_plan("mlp", "digits", plan, Settings(steps=30, seed=4)).evaluation
    assert c.key != a.key


@pytest.mark.slow
def test_distillation_and_lstm_and_wide_sparse_plans_run():
    ev = evaluate_plan("lstm", "digits", Plan.uniform(4, 4), Settings(steps=20, distill=True)).evaluation
    assert ev.status == "fine-tuned" and ev.test_accuracy > 0.5
    plan = Plan(default=LayerConfig(4, 4, widen=2.0, sparsity="2:4"),
                layers={"conv1": {"sparsity": "none"}, "fc3": {"widen": 1.0}})
    ev = evaluate_plan("lenet5", "digits", plan, Settings(steps=20)).evaluation
    assert ev.status == "fine-tuned", ev.reason


@pytest.mark.slow
def test_gru_quantized_fine_tune_and_cost():
    from engine.cost import LayerTable, cost_batch, cost_topology, encode_plans, load_profile
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    plan = Plan(default=LayerConfig(4, 4), layers={"gru": {"widen": 2.0}})
    est = evaluate_plan("gru", "digits", plan, Settings(steps=0)).evaluation
    ev = evaluate_plan("gru", "digits", plan, Settings(steps=40)).evaluation
    assert ev.status == "fine-tuned" and ev.test_accuracy > est.test_accuracy - 0.02 and ev.test_accuracy > 0.7
    topo = analyze(build_model("gru", (1, 8, 8), 10), (1, 8, 8))
    prof = load_profile("cpu")
    rep = cost_topology(topo, plan.resolve(topo.names), prof)
    batch = cost_batch(LayerTable.from_topology(topo), encode_plans(LayerTable.from_topology(topo), [plan]), prof)
    assert rep.throughput == pytest.approx(float(batch.throughput[0]), rel=1e-9)


def test_divergence_is_a_failed_record_not_a_crash():
    from engine.models.zoo import trusted_references
    from tests.engine.fixtures import tiny_model
    with trusted_references("tests.engine.fixtures:nan_dataset"):   # code runs only when the user allows it
        data = load_dataset("tests.engine.fixtures:nan_dataset")
    model = tiny_model((1, 4, 4), data.num_classes)
    ev = evaluate_plan("tiny", "nan", Plan.uniform(32, 32), Settings(steps=5), baseline=model, data=data).evaluation
    assert ev.status == "failed" and "loss became nan at step 0" in ev.reason


def test_bad_plan_for_the_network_is_a_failed_record_with_reason():
    ev = evaluate_plan("lenet5", "digits", Plan(layers={"conv9": {"w_bits": 4}}), Settings(steps=0)).evaluation
    assert ev.status == "failed" and "unknown layer 'conv9'" in ev.reason


def test_saved_checkpoint_reproduces_predictions(tmp_path):
    plan = Plan(default=LayerConfig(4, 4, sparsity="2:4"),
                layers={"conv1": {"sparsity": "none", "widen": 2.0}, "conv2": {"w_bits": 2}})
    run = evaluate_plan("lenet5", "digits", plan, Settings(steps=20))
    path = tmp_path / "m.safetensors"
    save_planned(run, path)
    applied, meta = load_planned(path)
    data = load_dataset("digits")
    a, b = predict_logits(run.applied.model, data.x_test), predict_logits(applied.model, data.x_test)
    assert torch.allclose(a, b, atol=1e-5)
    assert meta["plan"] == plan.to_dict()
    assert accuracy(applied.model, data.x_test, data.y_test) == run.evaluation.test_accuracy


def test_kd_loss_hand_computed():
    s = torch.tensor([[2.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    y = torch.tensor([0])
    temp = 2.0
    ce = -torch.log_softmax(s, 1)[0, 0]
    ps, pt = torch.softmax(s / temp, 1), torch.softmax(t / temp, 1)
    kl = (pt * (pt.log() - ps.log())).sum()
    expected = 0.5 * ce + 0.25 * temp ** 2 * kl
    assert float(kd_loss(s, t, y, 0.5, 0.25, temp)) == pytest.approx(float(expected), rel=1e-5)


def test_evaluation_round_trip():
    ev = evaluate_plan("mlp", "digits", Plan.uniform(8, 8), Settings(steps=0)).evaluation
    again = Evaluation.from_dict(ev.to_dict())
    assert again.to_dict() == ev.to_dict()
    for k in ("plan_hash", "seed", "code_version", "model", "dataset"):
        assert k in ev.provenance
    assert math.isfinite(ev.wall_s)


def test_eval_limit_scores_a_seeded_validation_subset_and_score_test_can_be_off():
    from engine.explore.pipeline import validation_subset
    data = load_dataset("digits")
    n_val, n_test = len(data.y_val), len(data.y_test)
    plan = Plan.uniform(4, 4)
    full = evaluate_plan("mlp", "digits", plan, Settings(steps=0), data=data).evaluation
    assert full.provenance["val_examples"] == n_val and full.provenance["test_examples"] == n_test
    assert full.test_accuracy is not None and full.val_accuracy == full.estimate_val_accuracy
    # defaults are not written: records and cache keys of default settings are as before
    assert "eval_limit" not in full.settings and "score_test" not in full.settings
    assert Settings.from_dict(full.settings) == Settings(steps=0)

    run = evaluate_plan("mlp", "digits", plan, Settings(steps=0, eval_limit=50, score_test=False), data=data)
    cheap = run.evaluation
    assert cheap.status == "estimated" and cheap.test_accuracy is None
    assert cheap.provenance["val_examples"] == 50 and cheap.provenance["test_examples"] == 0
    assert cheap.settings["eval_limit"] == 50 and cheap.settings["score_test"] is False
    assert Settings.from_dict(cheap.settings) == Settings(steps=0, eval_limit=50, score_test=False)
    assert cheap.key != full.key
    # the subset: 50 distinct validation examples drawn by a generator seeded with the settings' seed
    idx = torch.randperm(n_val, generator=torch.Generator().manual_seed(0))[:50].sort().values
    x, y = validation_subset(data, Settings(eval_limit=50))
    assert torch.equal(x, data.x_val[idx]) and torch.equal(y, data.y_val[idx])
    assert cheap.val_accuracy == accuracy(run.applied.model, data.x_val[idx], data.y_val[idx])
    assert cheap.val_accuracy == cheap.estimate_val_accuracy and (cheap.val_accuracy * 50) % 1 == 0
    assert torch.equal(validation_subset(data, Settings(eval_limit=50))[1], y)            # fixed for a seed
    assert not torch.equal(validation_subset(data, Settings(eval_limit=50, seed=1))[1], y)
    x_all, _ = validation_subset(data, Settings(eval_limit=n_val + 5))
    assert x_all is data.x_val
    # a fine-tune under a limit is scored on the same subset before and after training
    tuned = evaluate_plan("mlp", "digits", plan, Settings(steps=5, eval_limit=50), data=data).evaluation
    assert tuned.status == "fine-tuned" and tuned.estimate_val_accuracy == cheap.estimate_val_accuracy
    assert tuned.test_accuracy is not None and tuned.provenance["val_examples"] == 50
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="eval_limit"):
            Settings(eval_limit=bad)


@pytest.mark.fashion
def test_calibration_recomputes_batch_norm_statistics_under_the_quantized_network():
    from engine.explore.pipeline import _calibration_batches, prepare
    from engine.models.baselines import load_baseline
    data = load_dataset("fashion-mnist")
    base = load_baseline("cnn", "fashion-mnist", data)
    plan = Plan.uniform(2, 2)
    s = Settings(steps=0)
    fresh, _, _ = prepare("cnn", "fashion-mnist", plan, s, baseline=base, data=data)
    kept, _, _ = prepare("cnn", "fashion-mnist", plan, Settings(steps=0, bn_reestimate=False), baseline=base, data=data)
    assert torch.equal(kept.model.bn1.running_mean, base.bn1.running_mean)
    # bn1 sees the quantized conv1's output, which no batch-norm statistic changes: its new mean
    # is the average over the calibration batches of that output's per-channel batch means
    means = []
    hook = kept.model.bn1.register_forward_hook(lambda m, inp, out: means.append(inp[0].mean(dim=(0, 2, 3))))
    with torch.no_grad():
        for xb in _calibration_batches(data, s):
            kept.model(xb)
    hook.remove()
    assert len(means) == s.calib_batches
    torch.testing.assert_close(fresh.model.bn1.running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(fresh.model.bn4.running_var, base.bn4.running_var)
    assert fresh.model.bn1.momentum == base.bn1.momentum      # left as it was, for fine-tuning
    # and the no-training estimate of a 2-bit network is closer to what a fine-tune reaches
    x, y = data.x_val[:2000], data.y_val[:2000]
    assert accuracy(fresh.model, x, y) > accuracy(kept.model, x, y) + 0.01
