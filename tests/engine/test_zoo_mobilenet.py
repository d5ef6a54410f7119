"""The MobileNetV2-style zoo network: inverted residuals with depthwise 3x3 filters and a width
multiplier, for 28x28 (1 channel) and 32x32 (3 channels) inputs, and its shipped baseline."""
import pytest
import torch
import torch.nn as nn

from engine.models.baselines import SHIPPED, load_baseline
from engine.models.checkpoint import load_state
from engine.models.zoo import ZOO, MobileNetV2, build_model


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_builds_for_small_images_with_depthwise_blocks(shape):
    model = build_model("mobilenetv2", shape, 10).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, *shape)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    dw = [m for m in convs if m.groups > 1]
    assert len(dw) == 6 and all(m.groups == m.in_channels == m.out_channels for m in dw)
    assert sum(1 for b in model.blocks if b.use_res) == 3   # inverted residuals with a skip


def test_width_multiplier_scales_the_channels():
    narrow, wide = MobileNetV2((1, 28, 28), 10, width=0.5), MobileNetV2((1, 28, 28), 10, width=2.0)
    assert narrow.stem.out_channels == 8 and wide.stem.out_channels == 32
    assert wide.blocks[-1].project.out_channels == 128 and narrow.blocks[-1].project.out_channels == 32
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(narrow) < count(MobileNetV2((1, 28, 28), 10)) < count(wide)


def test_shipped_fashion_baseline_is_small_and_loads():
    path = SHIPPED / "mobilenetv2-fashion-mnist.safetensors"
    assert path.stat().st_size < 1_000_000
    _, meta = load_state(path)
    assert meta["model"] == "mobilenetv2" and meta["dataset"] == "fashion-mnist"
    assert float(meta["test_accuracy"]) > 0.85
    assert "fashion-mnist" in ZOO["mobilenetv2"].datasets
    model = load_baseline("mobilenetv2", "fashion-mnist")
    assert isinstance(model, MobileNetV2)
