#!/usr/bin/env bash
# Time lenet5, the CNN and ResNet-20 on a GPU with `bitscape measure --target torch-cuda` and write the
# CSVs (and a log) to $OUT. Plans: uniform W8A8 and W4A4 (int8 GEMMs via torch._int_mm), float (the
# fp16 / bf16 path), float with 2:4 sparsity (semi-structured sparse), at batch 1 and 64, in fp16 and bf16.
# Seeded fresh weights (--random-weights): the GPU machine needs no datasets. Run from the repository root:
#   OUT=/tmp/gpu PYTHON=python3 bash bench/gpu_measure.sh
# Where no GPU is present every measure says "no GPU" and the script exits 1.
set -u
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-measure-out}
REPEATS=${REPEATS:-20}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# per model: float, and float with 2:4 on every layer that can take it (input dimension divisible by 4)
"$PY" - "$OUT" <<'PYEOF'
import os, sys
from engine.cost.measure import model_source
from engine.plans.plan import LayerConfig, Plan, PlanError
from engine.plans.graph import analyze
out = sys.argv[1]
for m, d in (("lenet5", "digits"), ("cnn", "fashion-mnist"), ("resnet20", "cifar10")):
    os.makedirs(f"{out}/plans-{m}", exist_ok=True)
    Plan(default=LayerConfig(32, 32), name="float").save(f"{out}/plans-{m}/float.json")
    src = model_source(m, d, random_weights=True, calib_size=4)
    topo = analyze(src.base, src.input_shape)
    sparse = list(topo.names)
    while sparse:
        plan = Plan(default=LayerConfig(32, 32), layers={n: {"sparsity": "2:4"} for n in sparse}, name="float 2:4")
        try:
            topo.check(plan.resolve(topo.names))
            break
        except PlanError as e:
            bad = [n for n in sparse if repr(n) in str(e)]
            if not bad:
                raise
            sparse.remove(bad[0])
    plan.save(f"{out}/plans-{m}/float-24.json")
    print(m, "2:4 on", len(sparse), "of", len(topo.names), "layers")
PYEOF
{ "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"; nvidia-smi -L 2>/dev/null; } | tee "$OUT/log.txt"
status=0
for md in lenet5:digits cnn:fashion-mnist resnet20:cifar10; do
  m=${md%%:*}; d=${md#*:}
  for dt in fp16 bf16; do
    echo "== $m $dt" | tee -a "$OUT/log.txt"
    "$PY" -m explorer.cli measure --model "$m" --dataset "$d" --target torch-cuda --cuda-dtype "$dt" \
      --uniform 8,4 --plan "$OUT/plans-$m" --batch 1,64 --repeats "$REPEATS" --random-weights \
      --out "$OUT/$m-$dt.csv" >>"$OUT/log.txt" 2>&1 || status=1
    tail -n 13 "$OUT/log.txt"
  done
done
exit $status
