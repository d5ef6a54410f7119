"""Issue 18, item 4: Settings validate themselves wherever they come from; training loops end;
a fine-tune that blows up is reported as diverged; plans are checked strictly.

Reproductions: a session file with ``batch_size: -3`` hung the server on an ONNX download
(optimise() looped with no batches), ``batch_size: 0`` raised uncaught, ``lr=1e12``
"fine-tuned" to 8.3% unflagged, ``Settings(init="bogus")`` was accepted, a plan's
``"version": true`` / ``1.0`` was accepted, a resnet20 plan validated for lenet5, and a
500 KB layer name was echoed in full.
"""
import math
import threading

import pytest
import torch

from engine.errors import USER_ERRORS, UserError
from engine.evaluation import Evaluation, Settings
from engine.explore.pipeline import evaluate_plan, rebuild
from engine.explore.store import Store, checksum
from engine.models.data import Dataset
from engine.models.zoo import MLP
from engine.plans.plan import Plan, PlanError
from engine.training.finetune import default_loss, optimise
from explorer.cli import main

MAX_STEPS = 1_000_000


@pytest.mark.parametrize("kw", [
    {"init": "bogus"}, {"batch_size": 0}, {"batch_size": -3}, {"batch_size": 2.5}, {"batch_size": True},
    {"lr": 1e12}, {"lr": 0}, {"lr": -1e-3}, {"lr": math.nan}, {"lr": math.inf}, {"lr": "0.1"},
    {"lr_step": math.inf}, {"weight_decay": -1}, {"temperature": 0}, {"kd_alpha": math.nan},
    {"steps": -1}, {"steps": MAX_STEPS + 1}, {"steps": math.inf}, {"steps": 1.5}, {"steps": "400"},
    {"seed": -1}, {"seed": 10 ** 40}, {"calib_batches": 0}, {"eval_limit": 0}, {"distill": 1},
    {"bn_reestimate": "yes"}, {"score_test": None},
])
def test_settings_refuse_bad_values(kw):
    with pytest.raises(UserError, match=f"setting {next(iter(kw))}"):
        Settings(**kw)
    with pytest.raises(ValueError):      # the same rule from a file
        Settings.from_dict({**Settings().to_dict(), **kw})


def test_settings_assignments_are_checked_too():
    s = Settings()
    s.steps, s.lr = 10, 0.01
    with pytest.raises(UserError, match="batch_size"):
        s.batch_size = 0
    assert s.batch_size == 64


def test_settings_defaults_and_to_dict_unchanged():
    s = Settings()
    assert Settings.from_dict(s.to_dict()) == s
    assert "eval_limit" not in s.to_dict()       # cache keys of default evaluations unchanged


def test_settings_from_dict_refuses_non_objects_and_huge_names():
    with pytest.raises(ValueError, match="must be an object"):
        Settings.from_dict([1, 2])
    with pytest.raises(ValueError) as e:
        Settings.from_dict({"x" * 500_000: 1})
    assert len(str(e.value)) < 200


def _empty_data() -> Dataset:
    x = torch.zeros(0, 1, 8, 8)
    y = torch.zeros(0, dtype=torch.long)
    return Dataset("empty", x, y, x, y, x, y, 10)


def test_training_loop_with_no_batches_ends():
    """Before the fix optimise() spun forever here (the server hung on an ONNX download)."""
    model = MLP((1, 8, 8), 10)
    box = {}

    def go():
        try:
            optimise(model, _empty_data(), Settings(steps=5), default_loss(Settings()))
        except Exception as e:
            box["error"] = e
    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "optimise() did not end"
    assert isinstance(box.get("error"), UserError) and "no training batches" in str(box["error"])


@pytest.mark.parametrize("steps", [math.inf, -1, 2.5, MAX_STEPS + 1])
def test_training_loop_refuses_unbounded_step_counts(steps):
    with pytest.raises(UserError, match="steps="):
        optimise(MLP((1, 8, 8), 10), _empty_data(), Settings(), default_loss(Settings()), steps=steps)


@pytest.mark.parametrize("batch_size", [-3, 0])
def test_session_file_with_bad_batch_size_is_refused_and_never_rebuilt(tmp_path, batch_size):
    store = Store(tmp_path / "s.sqlite")
    sid = store.create_session("s", "lenet5", "digits", "cpu")
    ev = Evaluation(plan=Plan.uniform(4, 4).to_dict(), model="lenet5", dataset="digits",
                    settings=Settings(steps=5).to_dict(), status="fine-tuned", val_accuracy=0.9, test_accuracy=0.9)
    store.put(ev, session=sid)
    doc = store.export_session(sid)
    doc["evaluations"][0]["settings"]["batch_size"] = batch_size
    doc["evaluations"][0].pop("key")
    doc["checksum"] = checksum(doc)          # the attacker recomputes it
    n_sessions, keys = len(store.sessions()), store.keys()
    with pytest.raises(UserError, match="setting batch_size"):
        store.import_session(doc)
    assert len(store.sessions()) == n_sessions and store.keys() == keys
    # a record that got in some other way is refused before any training starts
    bad = Evaluation.from_dict({**doc["evaluations"][0]})
    with pytest.raises(USER_ERRORS):
        rebuild(bad)


def test_exploding_learning_rate_is_reported_as_diverged():
    """Before the fix lr=1e12 'fine-tuned' to 8.3%; now such a rate is refused outright, and the
    largest allowed rates, which blow the loss up, give status failed / reason diverged."""
    with pytest.raises(UserError):
        Settings(lr=1e12)
    ev = evaluate_plan("lenet5", "digits", Plan.uniform(4, 4), Settings(steps=20, lr=1.0, lr_step=1.0)).evaluation
    assert ev.status == "failed" and ev.reason.startswith("diverged: "), (ev.status, ev.reason)
    assert ev.loss_curve and ev.val_accuracy is not None


def test_sane_fine_tune_is_not_flagged():
    ev = evaluate_plan("mlp", "digits", Plan.uniform(8, 8), Settings(steps=10)).evaluation
    assert ev.status == "fine-tuned" and ev.reason is None


def test_nan_loss_reason_says_diverged():
    from engine.models.data import load_dataset
    from engine.models.zoo import trusted_references
    from tests.engine.fixtures import tiny_model
    with trusted_references("tests.engine.fixtures:nan_dataset"):
        data = load_dataset("tests.engine.fixtures:nan_dataset")
    ev = evaluate_plan("tiny", "nan", Plan.uniform(32, 32), Settings(steps=5),
                       baseline=tiny_model((1, 4, 4), 3), data=data).evaluation
    assert ev.status == "failed" and ev.reason.startswith("diverged: loss became nan")


@pytest.mark.parametrize("version", [True, 1.0, "1", None, 2])
def test_plan_version_must_be_the_integer_1(version):
    with pytest.raises(PlanError, match="plan version"):
        Plan.from_dict({"version": version})


def test_plan_model_field_is_checked(tmp_path, capsys):
    p = tmp_path / "p.json"
    p.write_text('{"version": 1, "model": "resnet20"}')
    assert main(["plan", "validate", str(p), "--model", "lenet5"]) == 2     # before: 0
    assert "this plan is for model 'resnet20', not 'lenet5'" in capsys.readouterr().err
    assert main(["plan", "validate", str(p), "--model", "resnet20", "--dataset", "cifar10"]) == 0
    with pytest.raises(PlanError):
        Plan.from_dict({"version": 1, "model": "resnet20"}).check_model("lenet5")


def test_huge_names_are_not_echoed_in_full(tmp_path, capsys):
    name = "x" * 500_000
    p = tmp_path / "p.json"
    p.write_text('{"version": 1, "layers": {"%s": {"w_bits": 4}}}' % name)
    assert main(["plan", "validate", str(p), "--model", "lenet5"]) == 2
    err = capsys.readouterr().err
    assert "unknown layer" in err and len(err) < 600
    for doc in ({"version": 1, name: 1}, {"version": 1, "default": {name: 1}},
                {"version": 1, "default": {"quantizer": name}}, {"version": name}):
        with pytest.raises(PlanError) as e:
            Plan.from_dict(doc)
        assert len(str(e.value)) < 300
    with pytest.raises(UserError) as e:
        from engine.models.zoo import build_model
        build_model(name, (1, 8, 8), 10)
    assert len(str(e.value)) < 300
