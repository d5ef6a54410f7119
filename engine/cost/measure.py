"""Time plans on a real runtime and write tidy rows (the input of ``bitscape calibrate``).

Targets: ``packed`` (bitscape's kernels through ``engine.deploy``: per layer span and whole
network), ``onnxruntime`` / ``onnxruntime-integer`` (the exported QDQ model, faithful or in its
integer form: whole network, and per layer from ORT's
profiler, each node counted with the layer whose name prefixes it, unnamed nodes with the layer
before them), ``torch-cuda`` (only where a GPU is present, ``engine.cost.measure_cuda``: int8 GEMMs via
``torch._int_mm``, 2:4 via semi-structured sparse tensors, the rest in fp16 or bf16; where no GPU is
present the target is skipped with 'no GPU').
A plan is applied to the FP32 baseline and calibrated (no fine-tune: timing does not need it).
Rows: target, model, dataset, plan_hash, plan, layer (or ``total``), batch, seconds (median of
repeats, per call), repeats, machine, weights, number (calls averaged per repeat, ``--min-time``),
instances (fresh deployments averaged, ``--instances``). A sidecar JSON (``plans_path``) keeps each plan by its hash.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from engine.errors import UserError
from engine.plans.plan import LayerConfig, Plan

TARGETS = ("packed", "onnxruntime", "onnxruntime-integer", "torch-cuda")
ORT_TARGETS = {"onnxruntime": False, "onnxruntime-integer": True}   # target -> the export's integer form
COLUMNS = ["target", "model", "dataset", "plan_hash", "plan", "layer", "batch", "seconds", "repeats", "machine",
           "weights", "number", "instances"]
TOTAL = "total"


class MeasureError(UserError):
    """A measurement cannot be made as asked (unknown target, no GPU, no weights)."""


# ----------------------------------------------------------------------------- plans

def uniform_plans(bits: Iterable[int] = range(1, 9)) -> list[Plan]:
    """W{b}A{b} for each b; 1-bit weights use the binary quantizer (what the packed path runs)."""
    return [Plan.uniform(b, b, quantizer="binary" if b == 1 else "lsq", name=f"W{b}A{b}") for b in bits]


def random_plans(layer_names: Sequence[str], n: int, seed: int, bits: Sequence[int] = tuple(range(1, 9))) -> list[Plan]:
    """``n`` mixed plans: every layer's weight and activation bits drawn independently from ``bits``."""
    if n < 0:
        raise MeasureError(f"--random must be 0 or more (got {n})")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        layers = {}
        for name in layer_names:
            w, a = (int(bits[j]) for j in rng.integers(0, len(bits), 2))
            layers[name] = {"w_bits": w, "a_bits": a, "quantizer": "binary" if w == 1 else "lsq"}
        out.append(Plan(default=LayerConfig(8, 8), layers=layers, name=f"random {seed}:{i}"))
    return out


def load_plans(path: str | os.PathLike) -> list[Plan]:
    """A plan file, or every ``*.json`` plan in a directory (sorted by name)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.json"))
        if not files:
            raise MeasureError(f"plan directory {str(p)!r} holds no .json plan")
        plans = []
        for f in files:
            plan = Plan.load(f)
            plans.append(plan if plan.name else Plan.from_dict({**plan.to_dict(), "name": f.stem}))
        return plans
    if not p.is_file():
        raise MeasureError(f"plan file {str(p)!r} does not exist")
    plan = Plan.load(p)
    return [plan if plan.name else Plan.from_dict({**plan.to_dict(), "name": p.stem})]


def plan_label(plan: Plan) -> str:
    return plan.name or plan.digest()[:12]


# ----------------------------------------------------------------------------- networks

@dataclass
class Prepared:
    """One plan applied to a model's weights and calibrated, ready to deploy or export."""

    plan: Plan
    applied: object
    sample: np.ndarray          # float inputs (N, *input_shape) to time on
    weights: str                # 'baseline' or 'random-init'


@dataclass
class ModelSource:
    """The FP32 network and the inputs plans are calibrated and timed on."""

    model: str
    dataset: str
    base: object
    input_shape: tuple
    calib: list
    sample: np.ndarray
    weights: str
    names: list = field(default_factory=list)


def model_source(model: str, dataset: str, data_root: str | None = None, random_weights: bool = False,
                 seed: int = 0, calib_size: int = 256) -> ModelSource:
    """The shipped/cached FP32 baseline and its dataset; with ``random_weights``, where either is
    missing, a seeded fresh network calibrated on standard-normal inputs (timing only)."""
    import torch

    from engine.models.baselines import baseline_path, load_baseline
    from engine.models.data import dataset_spec, load_dataset
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    data = None
    try:
        if baseline_path(model, dataset) is None and ":" not in model:
            raise UserError(f"no FP32 baseline for model {model!r} on dataset {dataset!r}")
        data = load_dataset(dataset, root=data_root)
        base = load_baseline(model, dataset, data)
        shape, weights = data.input_shape, "baseline"
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data.x_train), generator=gen)[:calib_size]
        calib = [data.x_train[idx]]
        sample = data.x_test.numpy()
    except UserError as e:
        if not random_weights:
            raise MeasureError(f"{e} (pass --random-weights to time a seeded fresh network instead)") from None
        spec = dataset_spec(dataset)
        torch.manual_seed(seed)
        base = build_model(model, spec.input_shape, spec.num_classes).eval()
        shape, weights = tuple(spec.input_shape), "random-init"
        gen = torch.Generator().manual_seed(seed)
        calib = [torch.randn(calib_size, *shape, generator=gen)]
        sample = torch.randn(256, *shape, generator=gen).numpy()
    topo = analyze(base, shape)
    return ModelSource(model, dataset, base, tuple(shape), calib, np.ascontiguousarray(sample, dtype=np.float32),
                       weights, topo.names)


def prepare_plan(src: ModelSource, plan: Plan) -> Prepared:
    """Apply ``plan`` to the source's weights and calibrate the activation steps (and BN statistics)."""
    import torch

    from engine.plans.apply import apply_plan, calibrate
    from engine.training.finetune import bn_statistics
    torch.manual_seed(0)
    applied = apply_plan(src.base, plan, src.input_shape, seed=0)
    calibrate(applied.model, src.calib)
    bn_statistics(applied.model, src.calib)
    return Prepared(plan, applied, src.sample, src.weights)


def batch_of(sample: np.ndarray, b: int) -> np.ndarray:
    idx = np.arange(b) % len(sample)
    return np.ascontiguousarray(sample[idx])


# ----------------------------------------------------------------------------- timing

def machine() -> str:
    """A short description of the host: CPU model, cores, compute threads (no host name)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; {os.cpu_count()} cores; {os.environ.get('OMP_NUM_THREADS', '?')} thread(s)"


STATS = {"median": statistics.median, "min": min}


def check_min_time(min_time: float) -> None:
    """A run's minimum length must be 0 (one call) up to 10 seconds."""
    if not 0 <= min_time <= 10:
        raise MeasureError(f"--min-time must be within 0..10 seconds (got {min_time})")


class Timed(NamedTuple):
    """One point's timing: seconds per call per layer and for the whole call, and the calls per repeat."""

    layers: dict
    total: float
    number: int


def calls_per_repeat(point: Callable[[], dict], min_time: float, cap: int = 1000) -> int:
    """How many back-to-back calls of ``point`` last at least ``min_time`` seconds (1 when 0), from the
    fastest of three timed calls (timeit's autorange, without its powers of ten)."""
    if min_time <= 0:
        return 1
    one = []
    for _ in range(3):
        t0 = time.perf_counter()
        point()
        one.append(time.perf_counter() - t0)
    return int(min(cap, max(1, math.ceil(min_time / max(min(one), 1e-9)))))


def time_rounds(points: Sequence[Callable[[], dict]], repeats: int, warmup: int = 2,
                stat: str = "median", min_time: float = 0.0) -> list[Timed]:
    """Run every point once per round, ``repeats`` rounds (a load burst hits every point alike).

    A point is a callable returning {layer: seconds} for one call. With ``min_time``, a repeat is one
    untimed call (the other points ran in between, so its caches are cold) and then ``number`` timed
    calls lasting at least ``min_time``, averaged: the steady-state latency, and a short network's
    timer and scheduling jitter spread over many calls. Per point: the ``stat`` (median, or min: the
    least disturbed repeat on a loaded machine) of the seconds per call, per layer and whole call
    (timed around the calls)."""
    agg = STATS[stat]
    for p in points:
        for _ in range(warmup):
            p()
    numbers = [calls_per_repeat(p, min_time) for p in points]
    per: list[dict] = [{} for _ in points]
    totals: list[list] = [[] for _ in points]
    for _ in range(repeats):
        for i, p in enumerate(points):
            n = numbers[i]
            if min_time > 0:
                p()
            sums: dict = {}
            t0 = time.perf_counter()
            for _ in range(n):
                for k, v in p().items():
                    sums[k] = sums.get(k, 0.0) + v
            totals[i].append((time.perf_counter() - t0) / n)
            for k, v in sums.items():
                per[i].setdefault(k, []).append(v / n)
    return [Timed({k: agg(v) for k, v in d.items()}, agg(t), n) for d, t, n in zip(per, totals, numbers)]


def mean_timed(ts: Sequence[Timed]) -> Timed:
    """The mean over instances of one point's timings (layers seen in every instance)."""
    keys = set.intersection(*(set(t.layers) for t in ts))
    return Timed({k: statistics.fmean(t.layers[k] for t in ts) for k in keys},
                 statistics.fmean(t.total for t in ts), ts[0].number)


def packed_point(prep: Prepared, b: int) -> Callable[[], dict]:
    """One forward pass of the packed network; layer spans (layer + the ops after it) per layer."""
    from engine.deploy import deploy
    net = deploy(prep.applied)
    x = batch_of(prep.sample, b)

    def run() -> dict:
        spans: dict = {}
        net.forward(x, spans=spans)
        return spans
    return run


CHECK_INPUTS = 16


def ort_bytes(prep: Prepared, integer: bool = False) -> bytes:
    """The plan's exported QDQ ONNX model, checked layer by layer and end to end against the network by
    the exporter on the inputs it is timed on (the dataset's, as ``export`` checks on validation data:
    standard-normal inputs a network never saw drive a narrow plan's activations onto rounding
    boundaries, and a few codes moving one level there compound through 2-bit layers);
    ``integer``: its integer form (``export onnx --integer``)."""
    import torch

    from engine.export import onnx_model_bytes
    check = torch.from_numpy(np.ascontiguousarray(prep.sample[:CHECK_INPUTS]))
    return onnx_model_bytes(prep.applied, prep.applied.topology.input_shape, prep.plan, integer=integer,
                            check_inputs=check)


def _ort_session(blob: bytes, threads: int, profile_dir: str | None = None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if profile_dir is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(profile_dir, "ort")
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


def ort_point(blob: bytes, x: np.ndarray, threads: int = 1) -> Callable[[], dict]:
    """One run of an onnxruntime session (no profiling: the whole-network time)."""
    s = _ort_session(blob, threads)
    feed = {s.get_inputs()[0].name: x}

    def run() -> dict:
        s.run(None, feed)
        return {}
    return run


def attribute_nodes(events: list[dict], layers: Sequence[str]) -> list[dict]:
    """Per model run, seconds per layer from an ORT profile: a node counts with the layer whose name
    prefixes it ('conv1/Conv' -> conv1), an unnamed node with the layer before it (the first layer
    when none came before)."""
    known = set(layers)
    runs: list[dict] = []
    cur: dict = {}
    last = layers[0] if layers else None
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            if cur:
                runs.append(cur)
            cur, last = {}, (layers[0] if layers else None)
            continue
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        node = str(e["name"])[: -len("_kernel_time")]
        head = node.split("/", 1)[0]
        if head in known:
            last = head
        if last is None:
            continue
        cur[last] = cur.get(last, 0.0) + float(e.get("dur", 0)) * 1e-6
    if cur:
        runs.append(cur)
    return runs


def ort_layers(blob: bytes, x: np.ndarray, layers: Sequence[str], repeats: int, threads: int = 1) -> dict:
    """Median seconds per layer over ``repeats`` profiled runs (after two warm-up runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        s = _ort_session(blob, threads, tmp)
        feed = {s.get_inputs()[0].name: x}
        for _ in range(2 + repeats):
            s.run(None, feed)
        path = s.end_profiling()
        with open(path, encoding="utf-8") as f:
            events = json.load(f)
    per_run = attribute_nodes(events, layers)[2:]          # drop the warm-up runs
    out: dict = {}
    for r in per_run:
        for k, v in r.items():
            out.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- the driver

def measure(model: str, dataset: str, plans: Sequence[Plan], targets: Sequence[str] = ("packed",),
            batches: Sequence[int] = (1,), repeats: int = 5, data_root: str | None = None,
            random_weights: bool = False, per_layer: bool = True, threads: int = 1,
            progress: Callable[[str], None] | None = None, calib_size: int = 256,
            skipped: list | None = None, cuda_dtype: str = "fp16", stat: str = "median",
            min_time: float = 0.0, instances: int = 1) -> tuple[list[dict], dict]:
    """Time ``plans`` of ``model`` on each target; returns (tidy rows, {plan_hash: plan dict}).

    Each target's points (plan x batch) are timed in interleaved rounds; the whole-network time is
    taken around the call, per-layer times from the runtime's own spans / profile. A target that
    cannot run a plan (e.g. the exporter refuses it) raises, or, when ``skipped`` is a list, that
    plan is left out on that target and noted there as {target, model, plan, reason}. ``torch-cuda``
    where no GPU is present is skipped (said through ``progress``, noted in ``skipped``); when no target
    is left, that is a MeasureError saying 'no GPU'. ``cuda_dtype``: the GPU's float dtype, fp16 or bf16.
    ``stat``: what the repeats are reduced to, 'median' (default) or 'min'. ``min_time``: seconds a
    repeat lasts at least (back-to-back calls averaged after an untimed one; 0: one call, as is).
    ``instances``: fresh deployments / sessions of every point, each timed in its own rounds; the
    seconds are the mean of their per-instance ``stat``."""
    for t in targets:
        if t not in TARGETS:
            raise MeasureError(f"unknown target {t!r}; targets are {', '.join(TARGETS)}")
    if stat not in STATS:
        raise MeasureError(f"--stat must be one of {', '.join(STATS)} (got {stat!r})")
    if repeats < 1:
        raise MeasureError(f"--repeats must be at least 1 (got {repeats})")
    if not 1 <= instances <= 100:
        raise MeasureError(f"--instances must be within 1..100 (got {instances})")
    check_min_time(min_time)
    if not plans:
        raise MeasureError("no plans to measure")
    for b in batches:
        if b < 1:
            raise MeasureError(f"batch sizes must be at least 1 (got {b})")
    say = progress or (lambda m: None)
    if "torch-cuda" in targets:
        from engine.cost.measure_cuda import DTYPES, no_gpu_reason
        if cuda_dtype not in DTYPES:
            raise MeasureError(f"--cuda-dtype must be one of {', '.join(DTYPES)} (got {cuda_dtype!r})")
        reason = no_gpu_reason()
        if reason is not None:
            targets = [t for t in targets if t != "torch-cuda"]
            say(f"target torch-cuda skipped: {reason}")
            if skipped is not None:
                skipped.append({"target": "torch-cuda", "model": model, "plan": "all", "reason": reason})
            if not targets:
                raise MeasureError(f"nothing measured: target 'torch-cuda' skipped: {reason}")
    src = model_source(model, dataset, data_root, random_weights, calib_size=calib_size)
    preps = []
    for plan in plans:
        src_names = src.names
        plan.resolve(src_names)       # a plan that names unknown layers fails here, before timing
        preps.append(prepare_plan(src, plan))
        say(f"prepared {model} {plan_label(plan)}")
    mach = machine()
    mach_cuda = None
    if "torch-cuda" in targets:
        import torch

        from engine.cost.measure_cuda import gpu_name
        mach_cuda = f"{gpu_name()}; torch {torch.__version__}; float {cuda_dtype}"
    rows: list[dict] = []
    plan_map = {p.plan.digest(): {"plan": p.plan.to_dict(), "model": model, "dataset": dataset} for p in preps}

    def emit(target, prep, b, layers: dict, total: float, number: int):
        base = {"target": target, "model": model, "dataset": dataset, "plan_hash": prep.plan.digest(),
                "plan": plan_label(prep.plan), "batch": b, "repeats": repeats, "number": number,
                "instances": instances,
                "machine": mach_cuda if target == "torch-cuda" else mach,
                "weights": prep.weights}
        for name in src.names:
            if per_layer and name in layers:
                rows.append({**base, "layer": name, "seconds": float(layers[name])})
        rows.append({**base, "layer": TOTAL, "seconds": float(total)})

    for target in targets:
        blobs, runnable = {}, []
        for prep in preps:
            if target in ORT_TARGETS:
                try:
                    blobs[id(prep)] = ort_bytes(prep, ORT_TARGETS[target])
                except UserError as e:
                    if skipped is None:
                        raise
                    skipped.append({"target": target, "model": model, "plan": plan_label(prep.plan),
                                    "reason": f"plan {plan_label(prep.plan)}: {e}"})
                    say(f"{target} {model} {plan_label(prep.plan)}: skipped ({e})")
                    continue
            runnable.append(prep)
        if not runnable:
            continue
        keys = [(prep, b) for prep in runnable for b in batches]

        def point(prep, b, target=target, blobs=blobs):
            if target == "packed":
                return packed_point(prep, b)
            if target == "torch-cuda":
                from engine.cost.measure_cuda import cuda_point
                return cuda_point(prep.applied, batch_of(prep.sample, b), cuda_dtype)
            return ort_point(blobs[id(prep)], batch_of(prep.sample, b), threads)
        # each instance is a fresh deployment / session of every point: where its memory lands moves
        # a small network's time by ~1%, the same in every repeat, so only other instances average it
        per_instance = []
        for i in range(instances):
            points = [point(prep, b) for prep, b in keys]
            per_instance.append(time_rounds(points, repeats, stat=stat, min_time=min_time))
            del points
            if instances > 1:
                say(f"{target} {model}: instance {i + 1} of {instances} timed")
        results = [mean_timed(ts) for ts in zip(*per_instance)]
        for (prep, b), (layers, total, number) in zip(keys, results):
            if target in ORT_TARGETS and per_layer:
                layers = ort_layers(blobs[id(prep)], batch_of(prep.sample, b), src.names, repeats, threads)
            emit(target, prep, b, layers, total, number)
            say(f"{target} {model} {plan_label(prep.plan)} batch {b}: {total * 1e3:.3f} ms")
    return rows, plan_map


def plans_path(csv_path: str | os.PathLike) -> Path:
    """Where the plans of a measurements CSV are kept: next to it, ``<name>.plans.json``."""
    p = Path(csv_path)
    return p.with_name(p.stem + ".plans.json")


def write(rows: list[dict], plan_map: dict, out: str | os.PathLike, append: bool = False) -> tuple[Path, Path]:
    """Write the tidy CSV and its plans sidecar (merging with existing ones when ``append``)."""
    import pandas as pd

    from engine.fileio import atomic_write_text
    out = Path(out)
    df = pd.DataFrame(rows, columns=COLUMNS)
    side = plans_path(out)
    if append and out.exists():
        df = pd.concat([read_rows(out), df], ignore_index=True)
        if side.exists():
            plan_map = {**json.loads(side.read_text(encoding="utf-8")), **plan_map}
    atomic_write_text(out, df.to_csv(index=False))
    atomic_write_text(side, json.dumps(plan_map, indent=1) + "\n")
    return out, side


def read_rows(path: str | os.PathLike):
    """A measurements CSV as a DataFrame; a missing column or a bad value is a one-line error."""
    import pandas as pd
    p = Path(path)
    if not p.is_file():
        raise MeasureError(f"measurements file {str(p)!r} does not exist")
    try:
        df = pd.read_csv(p, dtype={"plan_hash": str, "layer": str, "plan": str})
    except Exception as e:
        raise MeasureError(f"measurements file {str(p)!r}: cannot read it as CSV ({e})") from None
    need = ["target", "model", "plan_hash", "layer", "batch", "seconds"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise MeasureError(f"measurements file {str(p)!r}: missing column(s) {', '.join(missing)}")
    bad = df[~(pd.to_numeric(df["seconds"], errors="coerce") > 0)]
    if len(bad):
        raise MeasureError(f"measurements file {str(p)!r}: row {int(bad.index[0]) + 2}: seconds must be a "
                           f"positive number (got {bad['seconds'].iloc[0]!r})")
    return df
