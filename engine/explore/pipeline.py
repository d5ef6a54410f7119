"""Plan -> planned network -> (quick fine-tune) -> Evaluation record."""
from __future__ import annotations

import copy
import time
import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn

from engine.errors import USER_ERRORS
from engine.evaluation import Evaluation, Settings, provenance
from engine.models.baselines import load_baseline
from engine.models.data import Dataset, batches, load_dataset
from engine.plans.apply import Applied, apply_plan, calibrate
from engine.plans.plan import Plan
from engine.training.device import data_on, resolve_device
from engine.training.finetune import Cancelled, Diverged, Progress, accuracy, bn_statistics, reestimate_bn, train
from engine.training.rates import resolve as resolve_rates


@dataclass
class Run:
    """An evaluation and the network it produced (kept for saving, deployment and export)."""

    evaluation: Evaluation
    applied: Applied | None


_BASELINE_ACCURACY: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def baseline_accuracy(teacher: nn.Module, data: Dataset) -> tuple[float, float]:
    """FP32 (val, test) accuracy, computed once per baseline module and dataset."""
    memo = _BASELINE_ACCURACY.setdefault(teacher, {})
    key = (data.name, id(data))
    if key not in memo:
        memo[key] = (accuracy(teacher, data.x_val, data.y_val), accuracy(teacher, data.x_test, data.y_test))
    return memo[key]


def _calibration_batches(data: Dataset, s: Settings):
    gen = torch.Generator().manual_seed(s.seed)
    out = []
    for i, (xb, _) in enumerate(batches(data.x_train, data.y_train, 256, gen)):
        if i >= s.calib_batches:
            break
        out.append(xb)
    return out


def prepare(model_id: str, dataset_id: str, plan: Plan, settings: Settings, baseline: nn.Module | None = None,
            data: Dataset | None = None) -> tuple[Applied, nn.Module, Dataset]:
    """Apply the plan to the pretrained network and calibrate it: activation step sizes, then
    (``settings.bn_reestimate``) batch-norm statistics under the quantized layers, on the same
    calibration batches. The statistics make the no-training estimate track what a fine-tune
    recovers (on the CNN, RMSE of the estimate -> fine-tuned line 1.5 -> 0.9 points)."""
    data = data or load_dataset(dataset_id)
    teacher = baseline if baseline is not None else load_baseline(model_id, dataset_id, data)
    torch.manual_seed(settings.seed)
    applied = apply_plan(teacher, plan, data.input_shape, seed=settings.seed)
    calib = _calibration_batches(data, settings)
    calibrate(applied.model, calib, init=settings.init)
    if settings.bn_reestimate:
        bn_statistics(applied.model, calib)
    return applied, teacher, data


def validation_subset(data: Dataset, s: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation examples a run is scored on: all of them, or ``s.eval_limit`` of them drawn
    once by a generator seeded with ``s.seed`` (kept in dataset order)."""
    n = len(data.y_val)
    if s.eval_limit is None or s.eval_limit >= n:
        return data.x_val, data.y_val
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(s.seed))[:s.eval_limit].sort().values
    return data.x_val[idx], data.y_val[idx]


def evaluate_plan(model_id: str, dataset_id: str, plan: Plan, settings: Settings | None = None,
                  progress: Progress | None = None, should_stop=None, baseline: nn.Module | None = None,
                  data: Dataset | None = None) -> Run:
    """Evaluate one plan; ``settings.steps == 0`` gives the no-training estimate. A fine-tune
    ends on its validation-best state, the estimate's included (see ``finetune_kept_best``).

    Validation accuracy is on ``settings.eval_limit`` examples when set (a seeded subset), test
    accuracy only when ``settings.score_test``; provenance records ``val_examples`` and
    ``test_examples`` (0 = test not scored).

    Failures inside the work (divergence, bad plan for this network) come back as a
    ``failed`` Evaluation with the reason rather than an exception; cancellation raises.
    """
    s = settings or Settings()
    t0 = time.perf_counter()
    ev = Evaluation(plan=plan.to_dict(), model=model_id, dataset=dataset_id, settings=s.to_dict(),
                    provenance=provenance(plan.digest(), s.seed, model_id, dataset_id))
    applied = None
    try:
        say = progress or (lambda f, m: None)
        say(0.0, "applying plan")
        applied, teacher, data = prepare(model_id, dataset_id, plan, s, baseline, data)
        ev.baseline_val_accuracy, ev.baseline_test_accuracy = baseline_accuracy(teacher, data)
        x_val, y_val = validation_subset(data, s)
        ev.provenance["val_examples"] = len(y_val)
        ev.provenance["test_examples"] = len(data.y_test) if s.score_test else 0
        ev.estimate_val_accuracy = accuracy(applied.model, x_val, y_val)
        if s.steps > 0:
            device = resolve_device(s.device)
            ev.provenance["device"] = device.type
            try:
                finetune_kept_best(ev, applied.model, teacher, data, s, (x_val, y_val), device,
                                   progress=lambda f, m: say(0.05 + 0.9 * f, m), should_stop=should_stop)
            finally:
                applied.model.to("cpu")
            why = divergence(ev, y_val)
            if why:
                ev.status, ev.reason = "failed", f"diverged: {why}"
        else:   # nothing changed the network since the estimate: same examples, same score
            ev.val_accuracy = ev.estimate_val_accuracy
        if s.score_test:
            ev.test_accuracy = accuracy(applied.model, data.x_test, data.y_test)
        say(1.0, "done")
    except Cancelled:
        raise
    except Diverged as e:
        ev.status, ev.reason = "failed", f"diverged: {e}"
    except USER_ERRORS as e:
        ev.status, ev.reason = "failed", str(e)
    except RuntimeError as e:  # divergence and numeric failures are results, not crashes
        ev.status, ev.reason = "failed", f"{type(e).__name__}: {e}"
    ev.wall_s = round(time.perf_counter() - t0, 3)
    return Run(ev, applied)


def finetune_kept_best(ev: Evaluation, net: nn.Module, teacher: nn.Module, data: Dataset, s: Settings, val,
                       device: torch.device, progress=None, should_stop=None) -> None:
    """Fine-tune ``net`` on ``device`` to its validation-best state and fill ``ev`` with the result.

    Batch-norm statistics are re-estimated on the kept state only when that scores no worse,
    so the network never ends below its start (the calibrated estimate) on validation.
    ``ev.provenance["finetune"]`` records the kept step, the start and best scores, the budget
    and where the rates came from.
    """
    net.to(device)
    dev_data = data_on(data, device)
    x_val, y_val = (t.to(device) for t in val)
    if s.distill and device.type != "cpu":
        teacher = copy.deepcopy(teacher).to(device)   # the shared baseline stays where it is
    score = lambda: accuracy(net, x_val, y_val)   # noqa: E731
    s, lr_source = resolve_rates(s, ev.model, ev.dataset)
    tuned = train(net, dev_data, s, teacher=teacher if s.distill else None, progress=progress,
                  should_stop=should_stop, validate=score, lr_source=lr_source)
    kept = tuned.best
    summary = tuned.summary()
    ev.val_accuracy, bn = kept.best, False
    if s.bn_reestimate and kept.best_step > 0:
        reestimate_bn(net, dev_data, seed=s.seed)
        v = score()
        if v >= kept.best:
            ev.val_accuracy, bn = v, True
        else:
            kept.restore()
    summary["bn_reestimated"] = bn
    ev.loss_curve, ev.steps, ev.status = tuned.loss_curve, tuned.steps, "fine-tuned"
    ev.provenance["finetune"] = summary


EXPLODE_FACTOR = 100.0
MIN_CHANCE_EXAMPLES = 50


def divergence(ev: Evaluation, y_val: torch.Tensor) -> str | None:
    """Why a fine-tune diverged, or None: its loss exploded (rose EXPLODE_FACTOR-fold over the first
    step's), or it ended at chance (what always answering the commonest class scores) when both the
    baseline and the no-training estimate were clearly above chance."""
    curve = ev.loss_curve
    if curve:
        top = max(range(len(curve)), key=curve.__getitem__)
        if curve[top] > EXPLODE_FACTOR * max(curve[0], 0.1):
            return f"loss exploded from {curve[0]:.4g} to {curve[top]:.4g} at step {top}"
    if len(y_val) >= MIN_CHANCE_EXAMPLES and ev.val_accuracy is not None:
        chance = float(torch.bincount(y_val).max()) / len(y_val) + 0.02
        above = lambda v: v is not None and v > chance + 0.05   # noqa: E731
        if ev.val_accuracy <= chance and above(ev.baseline_val_accuracy) and above(ev.estimate_val_accuracy):
            return (f"accuracy fell to chance after fine-tuning ({ev.val_accuracy:.1%}, estimate "
                    f"{ev.estimate_val_accuracy:.1%})")
    return None


def rebuild(ev: Evaluation, data: Dataset | None = None) -> Run:
    """Re-run an Evaluation's plan and settings to get its network back (runs are seeded).

    Float sums depend on the thread count, so this uses the recorded run's. The reproduced
    accuracy is in the returned record: compare it with ``ev`` before trusting it.
    """
    from engine.errors import UserError
    if ev.status == "failed":
        raise UserError(f"this point failed ({ev.reason}); there is no network to export")
    threads = torch.get_num_threads()
    torch.set_num_threads(int(ev.provenance.get("threads", 1)))
    try:
        return evaluate_plan(ev.model, ev.dataset, Plan.from_dict(ev.plan), Settings.from_dict(ev.settings),
                             data=data)
    finally:
        torch.set_num_threads(threads)


def export_network(ev: Evaluation, kind: str, checkpoint=None) -> tuple[str, bytes, str]:
    """(file name, bytes, note) of a point's network as ONNX (``onnx``; ``onnx-integer``: the integer
    form, ``export onnx --integer``) or a packed file (``packed``).

    The network is the one its job saved (``checkpoint``, see engine.models.artifacts); nothing is
    trained here. A point without saved weights is refused with the reason.
    """
    import os
    import tempfile
    from pathlib import Path

    from engine.errors import UserError
    from engine.models.artifacts import NO_WEIGHTS
    from engine.models.checkpoint import load_planned
    from engine.models.data import load_dataset
    if ev.status == "failed":
        raise UserError(f"this point failed ({ev.reason}); there is no network to export")
    if checkpoint is None or not Path(checkpoint).is_file():
        raise UserError(NO_WEIGHTS)
    if kind not in ("onnx", "onnx-integer", "packed"):
        raise ValueError(f"unknown export kind {kind!r}")
    data = load_dataset(ev.dataset)
    applied, meta = load_planned(checkpoint, data)
    saved = meta.get("evaluation") or {}
    if (meta.get("model"), meta.get("dataset"), saved.get("key")) != (ev.model, ev.dataset, ev.key):
        raise UserError(f"the saved weights in {Path(checkpoint).name} belong to another point; re-run its fine-tune")
    acc = ev.test_accuracy if ev.test_accuracy is not None else ev.val_accuracy
    note = "the job's saved weights" + (f" (test accuracy {acc:.4f})" if acc is not None else "")
    stem = f"{ev.model}-{ev.dataset}-{ev.provenance.get('plan_hash', 'plan')}"
    if kind in ("onnx", "onnx-integer"):
        from engine.export.onnx import onnx_model_bytes
        integer = kind == "onnx-integer"
        blob = onnx_model_bytes(applied, data.input_shape, ev.plan, ev.model, ev.dataset,
                                check_inputs=data.x_val[:64],
                                extra_metadata={"status": ev.status, "test_accuracy": ev.test_accuracy,
                                                "settings": ev.settings}, integer=integer)
        return (f"{stem}.integer.onnx" if integer else f"{stem}.onnx"), blob, note
    from engine.deploy import deploy, save_packed
    net = deploy(applied, meta={"plan": ev.plan, "model": ev.model, "dataset": ev.dataset})
    fd, tmp = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    try:
        save_packed(net, tmp)
        with open(tmp, "rb") as f:
            return f"{stem}.packed.safetensors", f.read(), note
    finally:
        os.unlink(tmp)
