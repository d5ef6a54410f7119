"""Downloads use the network each job saved beside the store: no training in the callback, the job's
accuracy reproduced by the exported ONNX, and a clear refusal where no weights were saved."""
import pytest

from engine.models.artifacts import NO_WEIGHTS, artifact_path
from engine.models.data import load_dataset

from ..conftest import wait_jobs


def _no_training(monkeypatch):
    import engine.explore.pipeline
    import engine.training.finetune

    def refuse(*a, **k):
        raise AssertionError("an export must not train")
    monkeypatch.setattr(engine.training.finetune, "train", refuse)
    monkeypatch.setattr(engine.explore.pipeline, "train", refuse)


@pytest.mark.slow
def test_job_saves_its_network_and_the_onnx_reproduces_its_accuracy(workspace, monkeypatch):
    from engine.export.onnx import predict_onnx
    ws = workspace
    ws.apply_preset("w4a4")
    ws.steps = 30
    ws.submit()
    wait_jobs(ws)
    point = ws.points.iloc[0]
    ev = ws._evals[point["key"]]
    saved = artifact_path(ws.store.path, ev.key)
    assert ev.status == "fine-tuned" and saved.is_file() and ev.provenance["artifact"] == saved.name
    assert saved.parent.name == "store.sqlite.artifacts"
    _no_training(monkeypatch)
    ws.select(point["key"], load=False)
    blob = ws.export_selected("onnx")
    assert blob is not None, ws.message
    data = load_dataset(ev.dataset)
    pred = predict_onnx(blob, data.x_test).argmax(1)
    onnx_accuracy = float((pred == data.y_test.numpy()).sum()) / len(data.y_test)
    assert onnx_accuracy == pytest.approx(ev.test_accuracy, abs=1e-12), (onnx_accuracy, ev.test_accuracy)
    integer = ws.export_selected("onnx-integer")       # lenet5 has no batch norm: the same predictions
    assert integer is not None and integer != blob, ws.message
    assert (predict_onnx(integer, data.x_test).argmax(1) == pred).all()
    packed = ws.export_selected("packed")
    assert packed is not None and len(packed) > 1000, ws.message


def test_point_without_saved_weights_is_refused_without_training(workspace, monkeypatch):
    from engine.evaluation import Settings
    from engine.explore.pipeline import evaluate_plan
    from engine.plans.plan import Plan
    ws = workspace
    ev = evaluate_plan("lenet5", "digits", Plan.uniform(4, 4), Settings(steps=2)).evaluation  # e.g. imported
    ws.add_evaluation(ev)
    _no_training(monkeypatch)
    ws.select(ev.key, load=False)
    for kind in ("onnx", "onnx-integer", "packed"):
        assert ws.export_selected(kind) is None
        assert ws.message == f"export refused: {NO_WEIGHTS}"


def test_saved_weights_of_another_point_are_refused(workspace, tmp_path):
    import shutil

    from engine.evaluation import Settings
    from engine.explore.pipeline import evaluate_plan
    from engine.models.checkpoint import save_planned
    from engine.plans.plan import Plan
    ws = workspace
    a = evaluate_plan("lenet5", "digits", Plan.uniform(4, 4), Settings(steps=0))
    b = evaluate_plan("lenet5", "digits", Plan.uniform(8, 8), Settings(steps=0)).evaluation
    save_planned(a, tmp_path / "a.safetensors")
    target = artifact_path(ws.store.path, b.key)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "a.safetensors", target)
    ws.add_evaluation(b)
    ws.select(b.key, load=False)
    assert ws.export_selected("onnx") is None and "belong to another point" in ws.message
