"""The bring-your-own-model contract: every model of ``models.CORPUS`` goes through plan template,
validate, fine-tune, cost, sensitivity, sweep, deploy and ONNX export. Each step either succeeds
(deploy and ONNX with the same predictions as the fake-quantized network) or is refused with one
line naming the layer (a ``UserError``: exit 2 on the command line). Anything else (a traceback)
fails the test. One model goes through the real command line as a subprocess."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from engine.errors import USER_ERRORS
from tests.engine.contract.models import CORPUS

pytestmark = pytest.mark.slow   # each model's steps take 5-15 s on 2 cores; CI runs them all

DATASET = "tests.engine.contract.models:clusters"
CLI_MODEL = "gru_head"


def ref(name: str) -> str:
    return f"tests.engine.contract.models:{name}"


class Refused(Exception):
    pass


def attempt(step: str, fn, layers, log: dict):
    """Run one step: its result, or None when it was refused in one line naming a layer."""
    try:
        out = fn()
    except USER_ERRORS as e:
        msg = str(e)
        assert "\n" not in msg.strip(), f"{step}: a refusal must be one line: {msg!r}"
        # a layer of the plan, or the traced operation (``node 'squeeze'``) when the refusal is about one
        assert any(f"'{n}'" in msg for n in layers) or msg.startswith("node '"), \
            f"{step}: the refusal names no layer of {layers}: {msg}"
        log[step] = f"refused: {msg}"
        return None
    log[step] = "ok"
    return out


def _same_predictions(ref_logits, got):
    np.testing.assert_array_equal(ref_logits.argmax(1), got.argmax(1))
    scale = float(np.abs(ref_logits).max())
    assert float(np.abs(ref_logits - got).max()) <= 0.05 * scale


@pytest.fixture(scope="module")
def corpus_env():
    from engine.models.zoo import ALLOW_ENV
    before = os.environ.get(ALLOW_ENV)
    from engine.models.zoo import allow_reference
    for name in CORPUS:
        allow_reference(ref(name))
    allow_reference(DATASET)
    yield
    if before is None:
        os.environ.pop(ALLOW_ENV, None)
    else:
        os.environ[ALLOW_ENV] = before


def _plan(topo):
    """W4A4 with the first layer at 8 bits: the mixed plan a user starts from."""
    from engine.plans.plan import LayerConfig, Plan
    return Plan(default=LayerConfig(4, 4), layers={topo.names[0]: {"w_bits": 8, "a_bits": 8}})


@pytest.mark.parametrize("name", [n for n in CORPUS if n != CLI_MODEL])
def test_model_goes_through_every_step_or_is_refused_naming_the_layer(name, corpus_env, tmp_path):
    from engine.cost import cost_topology, load_profile
    from engine.deploy import deploy, reference_logits
    from engine.evaluation import Settings
    from engine.explore.pipeline import evaluate_plan
    from engine.explore.store import Store
    from engine.explore.sweep import run_sweep
    from engine.export import onnx_model_bytes, verify
    from engine.models.baselines import train_baseline
    from engine.models.data import load_dataset
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    from engine.plans.plan import LayerConfig, Plan
    from engine.training.sensitivity import alps, eagl, hessian
    from tests.engine.test_jobs import shared_runner

    model = ref(name)
    data = load_dataset(DATASET)
    log: dict[str, str] = {}
    topo = attempt("template", lambda: analyze(build_model(model, data.input_shape, data.num_classes),
                                               data.input_shape), [name], log)
    assert topo is not None, log        # every corpus model can at least be planned
    layers = list(topo.names)
    template = Plan.explicit({n: LayerConfig() for n in layers}, model=model)
    assert Plan.from_json(template.to_json()).resolve(layers).keys() == set(layers)
    plan = _plan(topo)
    configs = plan.resolve(layers)
    attempt("validate", lambda: topo.check(configs), layers, log)
    train_baseline(model, DATASET, epochs=5, batch_size=32)
    settings = Settings(steps=4, batch_size=32, seed=0)
    run = attempt("finetune", lambda: evaluate_plan(model, DATASET, plan, settings, data=data), layers, log)
    assert run is not None and run.evaluation.status != "failed", (log, run and run.evaluation.reason)
    for profile in ("bops", "bitfusion", "cpu"):
        rep = attempt(f"cost {profile}", lambda p=profile: cost_topology(topo, configs, load_profile(p)), layers, log)
        assert rep is None or (rep.throughput > 0 and [lc.name for lc in rep.layers] == layers)
    e = attempt("eagl", lambda: eagl(model, DATASET, data=data), layers, log)
    assert e is None or [r.layer for r in e.rows] == layers
    attempt("hessian", lambda: hessian(model, DATASET, batches=1, batch_size=32, probes=2, data=data), layers, log)
    store = Store(":memory:")
    runner = shared_runner(store)
    a = attempt("alps", lambda: alps(model, DATASET, bits=2, steps=2, runner=runner, store=store, data=data),
                layers, log)
    assert a is None or [r.layer for r in a.rows] == layers
    sw = attempt("sweep", lambda: run_sweep(model, DATASET, "bops", budget=2, finetune=1, steps=2, store=store,
                                            runner=runner, data=data), layers, log)
    assert sw is None or len(sw.points) >= 2
    applied = run.applied
    net = attempt("deploy", lambda: deploy(applied), layers, log)
    if net is not None:
        _same_predictions(reference_logits(applied, data.x_test), net.predict(data.x_test.numpy()))
    blob = attempt("onnx", lambda: onnx_model_bytes(applied, data.input_shape, plan, model, DATASET,
                                                    check_inputs=data.x_val[:32]), layers, log)
    if blob is not None:
        r = verify(blob, applied.model, data.x_test, data.y_test)
        assert r.agreement == 1.0, r
    _other_plans(model, topo, data, log)
    print(f"\n{name}: " + "; ".join(f"{k} {v}" for k, v in log.items()))


def _other_plans(model, topo, data, log):
    """Widened and 2:4 plans, applied and calibrated (no fine-tune), then deployed and exported:
    each step works with the same predictions or is refused naming the layer."""
    from engine.deploy import deploy, reference_logits
    from engine.evaluation import Settings
    from engine.explore.pipeline import prepare
    from engine.export import onnx_model_bytes, verify
    from engine.plans.plan import LayerConfig, Plan
    layers = list(topo.names)
    first, last = layers[0], layers[-1]
    plans = {"widened": Plan(default=LayerConfig(4, 4, widen=2.0), layers={last: {"widen": 1.0}}),
             "2:4": Plan(default=LayerConfig(4, 4, sparsity="2:4"), layers={first: {"sparsity": "none"}})}
    for kind, plan in plans.items():
        prepared = attempt(f"{kind} plan", lambda p=plan: prepare(model, DATASET, p, Settings(steps=0), data=data),
                           layers, log)
        if prepared is None:
            continue
        applied = prepared[0]
        applied.model.eval()
        net = attempt(f"{kind} deploy", lambda a=applied: deploy(a), layers, log)
        if net is not None:
            _same_predictions(reference_logits(applied, data.x_test), net.predict(data.x_test.numpy()))
        blob = attempt(f"{kind} onnx", lambda a=applied, p=plan: onnx_model_bytes(
            a, data.input_shape, p, model, DATASET, check_inputs=data.x_val[:32]), layers, log)
        if blob is not None:
            assert verify(blob, applied.model, data.x_test, data.y_test).agreement == 1.0


def run_cli(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "explorer.cli", *args], capture_output=True, text=True, timeout=600,
                       cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def cli_step(step, log, *args):
    """One command: exit 0, or exit 2 with one ``bitscape: error:`` line; never a traceback."""
    code, out, err = run_cli(*args)
    assert "Traceback" not in err, f"{step}: {err[-2000:]}"
    assert code in (0, 2), f"{step}: exit {code}: {err[-2000:]}"
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bitscape: error:"), f"{step}: {err}"
        log[step] = f"refused: {lines[0]}"
    else:
        log[step] = "ok"
    return code, out


@pytest.mark.slow   # about 14 commands, each a fresh interpreter importing torch: minutes on 2 cores
def test_a_user_model_through_the_command_line(tmp_path, monkeypatch):
    """The GRU-headed model through every command, typed as a user types them (``--model pkg.mod:fn``
    allows the code for that command); deploy and ONNX verify their predictions on the test set."""
    monkeypatch.setenv("BITSCAPE_STORE", str(tmp_path / "store.db"))
    monkeypatch.setenv("BITSCAPE_THREADS", "1")
    from engine.models.zoo import ALLOW_ENV
    monkeypatch.delenv(ALLOW_ENV, raising=False)   # only what each command line allows (the fixture allows all)
    m, d = ref(CLI_MODEL), DATASET
    md = ["--model", m, "--dataset", d]
    log: dict[str, str] = {}
    code, out = cli_step("template", log, "plan", "template", *md)
    assert code == 0
    plan = json.loads(out)
    assert list(plan["layers"]) == ["proj", "gru", "out"]
    plan["default"] = {"w_bits": 4, "a_bits": 4}
    plan["layers"] = {"gru": {"w_bits": 2, "a_bits": 4}}
    pf = tmp_path / "plan.json"
    pf.write_text(json.dumps(plan))
    assert cli_step("validate", log, "plan", "validate", str(pf), *md)[0] == 0
    assert cli_step("baseline", log, "train-baseline", *md, "--epochs", "5")[0] == 0
    ck = tmp_path / "tuned.safetensors"
    assert cli_step("finetune", log, "finetune", *md, "--plan", str(pf), "--steps", "4", "--save", str(ck))[0] == 0
    assert cli_step("cost", log, "cost", *md, "--plan", str(pf), "--profile", "bitfusion")[0] == 0
    assert cli_step("cost --input-shape", log, "cost", "--model", m, "--input-shape", "1,8,8", "--num-classes", "3",
                    "--plan", str(pf), "--profile", "cpu")[0] == 0
    for method in ("eagl", "hessian", "alps"):
        assert cli_step(f"sensitivity {method}", log, "sensitivity", *md, "--method", method, "--steps", "2",
                        "--no-compare", "--workers", "1")[0] == 0
    assert cli_step("sweep", log, "sweep", *md, "--profile", "bops", "--budget", "2", "--finetune", "1",
                    "--steps", "2", "--workers", "1")[0] == 0
    # a checkpoint names its model, but a file is data: running the code it names needs --allow-code
    code, _ = cli_step("deploy without --allow-code", log, "deploy", "--checkpoint", str(ck), "--out",
                       str(tmp_path / "m.packed"))
    assert code == 2 and "runs code only when you allow it" in log["deploy without --allow-code"]
    allow = ["--allow-code", m, "--allow-code", d]
    code, out = cli_step("deploy", log, *allow, "deploy", "--checkpoint", str(ck), "--out", str(tmp_path / "m.packed"),
                         "--verify", "--json")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["verify"]["agreement"] == 1.0
    code, out = cli_step("onnx", log, *allow, "export", "onnx", "--checkpoint", str(ck), "--out",
                         str(tmp_path / "m.onnx"), "--verify", "--json")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["agreement"] == 1.0
    code, out = cli_step("table", log, *allow, "export", "table", "--checkpoint", str(ck))
    assert code == 0 and out.startswith("layer,kind")
    print("\n" + CLI_MODEL + " (command line): " + "; ".join(f"{k} {v}" for k, v in log.items()))


def test_a_reference_allowed_after_the_workers_started_runs_in_them():
    """Workers fork from a server started before the reference was allowed: the job carries it."""
    from engine.evaluation import Settings
    from engine.models.zoo import trusted_references
    from engine.plans.plan import Plan
    from tests.engine.test_jobs import shared_runner
    runner = shared_runner()
    runner.wait(runner.submit("mlp", "digits", Plan.uniform(8, 8), Settings(steps=1)), 300)  # workers are up
    with trusted_references(ref("linear_only"), DATASET):
        info = runner.wait(runner.submit(ref("linear_only"), DATASET, Plan.uniform(8, 8), Settings(steps=1)), 300)
    assert info.done and info.result is not None
    assert "runs code only when you allow it" not in (info.result.reason or ""), info.result.reason
