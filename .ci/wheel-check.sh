#!/usr/bin/env bash
# The wheel, installed into a fresh venv outside the checkout: the shipped baselines and profiles
# travel with it, the default fine-tune runs, and `bitscape serve` answers HTTP 200.
# Usage: bash .ci/wheel-check.sh   (after the README's test command has made .venv)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TMP="$(mktemp -d)"
trap 'kill "${SERVER:-0}" 2>/dev/null || true; rm -rf "$TMP"' EXIT

"$ROOT/.venv/bin/pip" wheel -q --no-deps -w "$TMP/dist" "$ROOT"
python3.11 -m venv "$TMP/venv"
"$TMP/venv/bin/pip" install -q -c "$ROOT/.ci/constraints.txt" "$TMP"/dist/bitscape-*.whl
cd "$TMP"   # nothing from the checkout is importable from here
BIN="$TMP/venv/bin"
"$BIN/python" -c "import engine; assert '$ROOT' not in engine.__file__, engine.__file__"
"$BIN/bitscape" plan template --model lenet5 > plan.json
"$BIN/bitscape" finetune --model lenet5 --dataset digits --plan plan.json --steps 20 --json > finetune.json
"$BIN/python" -c "import json; e = json.load(open('finetune.json')); assert e['status'] == 'fine-tuned', e; print('wheel: default fine-tune', e['status'], round(e['test_accuracy'], 4))"
# data/baselines/rates.json travels too: the default fine-tune takes the baseline's stored rates
"$BIN/python" -c "import json; ft = json.load(open('finetune.json'))['provenance']['finetune']; assert ft['lr_source'] == 'stored for lenet5/digits', ft; print('wheel: rates', ft['lr_source'])"
"$BIN/bitscape" cost --model lenet5 --plan plan.json --profile bitfusion > /dev/null
PORT="$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$BIN/bitscape" serve --port "$PORT" --store "$TMP/store.sqlite" > serve.log 2>&1 &
SERVER=$!
"$BIN/python" - "$PORT" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/"
for _ in range(240):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200 and b"bitscape" in r.read()
            print("wheel: bitscape serve answers 200")
            sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit("wheel: bitscape serve did not answer")
PY
kill -TERM "$SERVER"; wait "$SERVER" || true
