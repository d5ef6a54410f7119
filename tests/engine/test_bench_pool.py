"""``bench pool``: onnxruntime's uint8 max-pool over a network's codes of each width (the provenance of
host.pool_s); the bookkeeping (every pool and width timed, ratios to 8-bit codes), never the figures."""
import json

import numpy as np
import pytest
import torch

from engine.benchmarks import pool as P


def test_codes_are_the_next_layers_calibrated_codes_saturated_to_uint8():
    x = torch.relu(torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))) * 3
    for b in (1, 4, 8):
        c = P.codes(x, b)
        assert c.dtype == np.uint8 and c.shape == (4, 3, 6, 6)
        assert c.min() == 0 and c.max() >= 2 ** b - 1      # not clamped to the width: that comes after the pool
    assert len(np.unique(P.codes(x, 8))) > len(np.unique(P.codes(x, 1)))


def test_slope_is_seconds_per_element_and_bit():
    assert P.slope([1, 2, 3], [1e-6, 2e-6, 3e-6], 1000) == pytest.approx(1e-9)


def test_cli_times_every_pool_at_every_width_as_the_readme_runs_it():
    import subprocess
    import sys
    from pathlib import Path
    bitscape = Path(sys.executable).with_name("bitscape")
    r = subprocess.run([str(bitscape), "bench", "pool", "--json", "--models", "lenet5:digits", "--repeats", "1",
                        "--calls", "3"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [x["pool"] for x in rows] == ["lenet5 max-pool 1", "lenet5 max-pool 2"]
    assert [x["elements"] for x in rows] == [6 * 8 * 8, 16 * 4 * 4]
    for x in rows:
        assert sorted(x["ratio_to_8bit"], key=int) == [str(b) for b in range(1, 9)]
        assert x["ratio_to_8bit"]["8"] == 1.0 and all(v > 0 for v in x["ratio_to_8bit"].values())
    bad = subprocess.run([str(bitscape), "bench", "pool", "--models", "lenet5"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--models" in bad.stderr and "Traceback" not in bad.stderr
