"""Published reference cases the cost model is checked against (costmodel.md section 4.3).

Plain data: layer shapes as dicts (the LayerInfo fields) and the published figures.
"""
from __future__ import annotations

from engine.plans.plan import LayerConfig

# Zhen-Dong/HAWQ ILP.ipynb (HAWQ-V3, ICML 2021): TVM latency (ms) of the 19 ResNet-18 layers (first and
# last excluded; three are 1x1 downsampling shortcuts) measured on a T4 GPU at batch 8, INT4 and INT8.
HAWQ_T4_INT4_MS = [0.21094404, 0.21092674, 0.21104113, 0.21086851, 0.13642465, 0.19167506, 0.02532183,
                   0.19148203, 0.19142914, 0.11395316, 0.20556011, 0.01917474, 0.20566918, 0.20566509,
                   0.13185102, 0.22287786, 0.01790088, 0.22304611, 0.22286099]
HAWQ_T4_INT8_MS = [0.36189111, 0.36211718, 0.31141909, 0.30454471, 0.19184896, 0.38948934, 0.0334169,
                   0.38904905, 0.3892859, 0.19134735, 0.34307431, 0.02802354, 0.34313329, 0.34310756,
                   0.21117103, 0.37376585, 0.02896843, 0.37398187, 0.37405185]
HAWQ_T4_BATCH = 8
# parameters per layer in the same notebook (used to check the shapes below)
HAWQ_PARAMS = [36864, 36864, 36864, 36864, 73728, 147456, 8192, 147456, 147456, 294912, 589824, 32768, 589824,
               589824, 1179648, 2359296, 131072, 2359296, 2359296]


def _conv(name, cin, cout, k, s, hw_in):
    hw_out = hw_in // s
    return {"name": name, "kind": "conv2d", "in_channels": cin, "out_channels": cout, "kernel": (k, k),
            "stride": (s, s), "groups": 1, "in_hw": (hw_in, hw_in), "out_hw": (hw_out, hw_out), "steps": 1,
            "bias": False}


def resnet18_hawq_layers() -> list[dict]:
    """The 19 ResNet-18 (ImageNet, 224x224) layers of the HAWQ table, in its order."""
    rows, i = [], 0
    spec = [(64, 64, 3, 1, 56)] * 4 + [(64, 128, 3, 2, 56), (128, 128, 3, 1, 28), (64, 128, 1, 2, 56),
                                      (128, 128, 3, 1, 28), (128, 128, 3, 1, 28),
                                      (128, 256, 3, 2, 28), (256, 256, 3, 1, 14), (128, 256, 1, 2, 28),
                                      (256, 256, 3, 1, 14), (256, 256, 3, 1, 14),
                                      (256, 512, 3, 2, 14), (512, 512, 3, 1, 7), (256, 512, 1, 2, 14),
                                      (512, 512, 3, 1, 7), (512, 512, 3, 1, 7)]
    for cin, cout, k, s, hw in spec:
        rows.append(_conv(f"l{i}", cin, cout, k, s, hw))
        i += 1
    return rows


def hawq_t4_measurements() -> list[dict]:
    """38 measurements (19 layers x INT4/INT8) for ``calibrate.fit_profile``."""
    out = []
    for layer, t4, t8 in zip(resnet18_hawq_layers(), HAWQ_T4_INT4_MS, HAWQ_T4_INT8_MS):
        out.append({"layer": layer, "config": LayerConfig(4, 4), "time_s": t4 * 1e-3, "batch": HAWQ_T4_BATCH})
        out.append({"layer": layer, "config": LayerConfig(8, 8), "time_s": t8 * 1e-3, "batch": HAWQ_T4_BATCH})
    return out


def resnet18_bitfusion_layers() -> list[dict]:
    """ResNet-18 (ImageNet) conv layers + fc in network order, for the Bit Fusion T3 stress case."""
    rows = [_conv("conv1", 3, 64, 7, 2, 224)]
    rows[0]["out_hw"] = (112, 112)
    body = resnet18_hawq_layers()
    # network order: stage convs, shortcut after each stage's first block
    rows += body
    rows.append({"name": "fc", "kind": "linear", "in_channels": 512, "out_channels": 1000, "steps": 1,
                 "bias": True})
    return rows
