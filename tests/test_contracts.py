"""The architecture's rules, checked on every run: engine stays Panel-free, explorer does no
tensor math, the C extension is reached only through engine/kernels.py, and ruff is clean."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: it comes with the test extra (pip install -e '.[test]')")
    return str(path)


def test_import_contracts_hold():
    """import-linter's contracts in pyproject.toml (engine <-> dashboard stack, explorer <-> torch)."""
    r = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            names.update(f"{base}.{a.name}" if base else a.name for a in node.names)
            names.add(base)
    return names


def test_the_c_extension_is_reached_only_through_engine_kernels():
    offenders = []
    for path in sorted((ROOT / "engine").rglob("*.py")) + sorted((ROOT / "explorer").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "engine/kernels.py":
            continue
        if any(name.rsplit(".", 1)[-1] == "_bitpack" or "._bitpack" in name for name in _imports(path)):
            offenders.append(rel)
    assert not offenders, f"import engine._bitpack through engine.kernels, not directly: {offenders}"
    assert any("_bitpack" in n for n in _imports(ROOT / "engine" / "kernels.py"))



def test_ruff_is_clean():
    r = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
