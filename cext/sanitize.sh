#!/usr/bin/env bash
# Builds engine._bitpack with AddressSanitizer + UndefinedBehaviorSanitizer into a temporary copy
# of the engine package and runs the kernel tests against it (both C paths, 1 and 2 threads).
# Usage: bash cext/sanitize.sh [extra pytest args]   (exits non-zero on any failure or report)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
CC="${CC:-gcc}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# the Python sources of the engine package, without any built extension
cp -r "$ROOT/engine" "$TMP/engine"
find "$TMP/engine" \( -name '*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +

INC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
SUFFIX="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
echo "sanitize.sh: building $TMP/engine/_bitpack$SUFFIX"
"$CC" -shared -fPIC -O1 -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter -Werror $SAN -pthread \
    -I"$INC" "$ROOT"/cext/module.c "$ROOT"/cext/pool.c "$ROOT"/cext/kern_portable.c "$ROOT"/cext/kern_avx2.c \
    -o "$TMP/engine/_bitpack$SUFFIX"

export LD_PRELOAD="$("$CC" -print-file-name=libasan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$TMP${PYTHONPATH:+:$PYTHONPATH}"
cd "$TMP"
# make sure the sanitized build is the one under test
"$PY" -c "import engine._bitpack as b, sys; f = b.__file__; print('sanitize.sh: testing', f); sys.exit(0 if f.startswith('$TMP') else 1)"
# importlib mode: pytest must not put the repository root (with the unsanitized build) on sys.path
export BITSCAPE_EXPECT_BITPACK_DIR="$TMP"
"$PY" -m pytest -q -p no:cacheprovider --import-mode=importlib --capture=sys "$ROOT"/tests/engine/test_kernels*.py "$@"
echo "sanitize.sh: OK (ASan + UBSan, no reports)"
