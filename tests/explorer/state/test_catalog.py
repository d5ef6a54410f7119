"""The model and dataset pickers: zoo + what `serve --model/--dataset` registered, with availability."""
import pytest

from engine.models import data, zoo
from explorer.state import catalog
from explorer.state.workspace import Workspace


@pytest.fixture
def own_code(monkeypatch):
    monkeypatch.setattr(zoo, "USER_MODELS", {})
    monkeypatch.setattr(data, "USER_DATASETS", {})
    monkeypatch.setattr(catalog, "USER_MODELS", zoo.USER_MODELS)
    monkeypatch.setattr(catalog, "USER_DATASETS", data.USER_DATASETS)
    zoo.register_model("tests.explorer.usercode:tiny_mlp")
    data.register_dataset("tests.explorer.usercode:blobs")
    return "tests.explorer.usercode:tiny_mlp", "tests.explorer.usercode:blobs"


def broken_model(input_shape, num_classes):
    raise RuntimeError("this model needs 3 channels\nsecond line")


def test_registered_model_and_dataset_are_offered_and_usable(services, own_code):
    store, runner = services
    model, dataset = own_code
    ws = Workspace(store=store, runner=runner)
    assert model in ws.param.model.objects and dataset in ws.param.dataset.objects
    assert model in ws.model_options.values() and dataset in ws.dataset_options.values()
    ws.model = model
    assert ws.dataset == dataset  # a user model defaults to the user's dataset
    assert list(ws.rows["layer"]) == ["1", "3"] and ws.totals["throughput"] > 0
    assert ws.set_cell(0, "w_bits", 4)


def test_a_model_that_cannot_be_built_is_refused_with_its_reason(services, own_code, monkeypatch):
    store, runner = services
    zoo.register_model("tests.explorer.state.test_catalog:broken_model")
    ws = Workspace(store=store, runner=runner)
    rows = ws.rows.copy()
    ws.model = "tests.explorer.state.test_catalog:broken_model"
    assert (ws.model, ws.dataset) == ("lenet5", "digits") and ws.rows.equals(rows)
    assert "cannot be used: this model needs 3 channels" in ws.message and "second line" not in ws.message


def test_the_browser_cannot_name_code(services):
    store, runner = services
    ws = Workspace(store=store, runner=runner)
    with pytest.raises(ValueError):
        ws.model = "os:abort"
    with pytest.raises(ValueError):
        ws.dataset = "os:getcwd"


def test_missing_dataset_and_baseline_are_said_in_words(monkeypatch):
    monkeypatch.delenv("BITSCAPE_CIFAR10", raising=False)
    opts = {v: k for k, v in catalog.dataset_options("resnet20").items()}
    assert opts["cifar10"].startswith("cifar10 (not installed: the CIFAR-10 images are not on this server")
    assert "--" not in opts["cifar10"]
    models = {v: k for k, v in catalog.model_options("digits").items()}
    assert models["lenet5"] == "lenet5"  # shipped baseline, built-in data: nothing to say
    assert "needs cifar10, which is not installed here" in models["resnet20"]
    assert "no trained FP32 network on digits yet" in models["cnn"]
    assert catalog.usable("lenet5", "digits") == ""
