"""The torch-cuda target: where no GPU is present it says 'no GPU' and skips; its layer modules (int8 via
torch._int_mm, the float dtype) compute the planned network's function, checked here on CPU."""
import subprocess
import sys

import pytest
import torch

from engine.cost import measure_cuda as mc
from engine.cost.measure import MeasureError, measure, model_source, prepare_plan
from engine.plans.plan import LayerConfig, Plan

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the no-GPU path")


@needs_no_gpu
def test_torch_cuda_alone_says_no_gpu():
    with pytest.raises(MeasureError, match="no GPU"):
        measure("mlp", "digits", [Plan.uniform(8, 8)], ["torch-cuda"], random_weights=True, repeats=1)


@pytest.mark.slow
@needs_no_gpu
def test_cli_torch_cuda_without_a_gpu_is_a_clear_error_and_writes_nothing(tmp_path):
    """As the README runs it: `bitscape measure --target torch-cuda` on a machine without a GPU."""
    out = tmp_path / "m.csv"
    p = subprocess.run([sys.executable, "-m", "explorer.cli", "measure", "--model", "mlp", "--dataset", "digits",
                        "--target", "torch-cuda", "--uniform", "8", "--repeats", "1", "--random-weights",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("bitscape: error:") and "no GPU" in last and "Traceback" not in p.stderr
    assert not out.exists()


@needs_no_gpu
def test_torch_cuda_is_skipped_beside_a_target_that_runs():
    said, skipped = [], []
    rows, _ = measure("mlp", "digits", [Plan.uniform(8, 8)], ["packed", "torch-cuda"], random_weights=True,
                      repeats=1, calib_size=16, progress=said.append, skipped=skipped)
    assert {r["target"] for r in rows} == {"packed"}
    assert any("torch-cuda skipped: no GPU" in m for m in said)
    assert skipped and skipped[0]["target"] == "torch-cuda" and "no GPU" in skipped[0]["reason"]


def test_bad_cuda_dtype_is_named():
    with pytest.raises(MeasureError, match="cuda-dtype"):
        measure("mlp", "digits", [Plan.uniform(8, 8)], ["torch-cuda"], random_weights=True, cuda_dtype="fp8")


def test_layer_paths_follow_the_config():
    assert mc.layer_path(LayerConfig(4, 4)) == "int8"
    assert mc.layer_path(LayerConfig(8, 8)) == "int8"
    assert mc.layer_path(LayerConfig(32, 32)) == "float"
    assert mc.layer_path(LayerConfig(8, 32)) == "float"
    assert mc.layer_path(LayerConfig(8, 8, sparsity="2:4")) == "2:4"
    assert mc.layer_path(LayerConfig(4, 4), groups=8) == "float"      # no grouped int8 GEMM


def test_int8_gemm_matches_the_float_product():
    torch.manual_seed(0)
    w, b, x = torch.randn(10, 37), torch.randn(10), torch.randn(5, 37)
    op = mc.GemmOp(w, b, "int8", torch.float32, torch.device("cpu"))
    ref = x @ w.t() + b
    got = op(x)
    assert got.shape == ref.shape
    assert float((got - ref).norm() / ref.norm()) < 0.02     # two 8-bit roundings


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("plan,dtype,path", [(Plan.uniform(8, 8), "bf16", "int8"),
                                              (Plan.uniform(32, 32), "bf16", "float"),
                                              (Plan.uniform(32, 32), "fp16", "float")])
def test_gpu_network_computes_the_plan_on_cpu(plan, dtype, path):
    src = model_source("lenet5", "digits", random_weights=True, calib_size=16)
    prep = prepare_plan(src, plan)
    net, paths = mc.gpu_network(prep.applied, dtype, "cpu")
    assert set(paths.values()) == {path} and set(paths) == set(src.names)
    x = torch.from_numpy(src.sample[:8])
    with torch.no_grad():
        ref = prep.applied.model.eval()(x)
        got = net(x.to(mc.DTYPES[dtype]))
    assert got.dtype == mc.DTYPES[dtype] and got.shape == ref.shape
    assert _rel(got, ref) < 0.1
