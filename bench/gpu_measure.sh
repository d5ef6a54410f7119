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
mkdir -p "$OUT/plans"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - "$OUT/plans" <<'PYEOF'
import sys
from engine.plan import LayerConfig, Plan
out = sys.argv[1]
Plan(default=LayerConfig(32, 32), name="float").save(f"{out}/float.json")
Plan(default=LayerConfig(32, 32, sparsity="2:4"), name="float 2:4").save(f"{out}/float-24.json")
PYEOF
{ "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"; nvidia-smi -L 2>/dev/null; } | tee "$OUT/log.txt"
status=0
for md in lenet5:digits cnn:fashion-mnist resnet20:cifar10; do
  m=${md%%:*}; d=${md#*:}
  for dt in fp16 bf16; do
    echo "== $m $dt" | tee -a "$OUT/log.txt"
    "$PY" -m explorer.cli measure --model "$m" --dataset "$d" --target torch-cuda --cuda-dtype "$dt" \
      --uniform 8,4 --plan "$OUT/plans" --batch 1,64 --repeats "$REPEATS" --random-weights \
      --out "$OUT/$m-$dt.csv" >>"$OUT/log.txt" 2>&1 || status=1
    tail -n 13 "$OUT/log.txt"
  done
done
exit $status
