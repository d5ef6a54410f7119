"""The reproduction study's quick path (digits, tiny budgets): report structure, every claim with a verdict."""
from __future__ import annotations

import json
import re

import pytest

from engine.benchmarks import BENCHMARKS
from engine.study import CLAIMS, VERDICTS, modules
from engine.study.core import compare


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """As the README runs it: the CLI in a subprocess, both budgets (the default)."""
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("study") / "results.md"
    p = subprocess.run([sys.executable, "-m", "explorer.cli", "bench", "study", "--quick", "--json", "--out", str(out),
                        "--workers", "2"], capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.returncode, json.loads(p.stdout), out


def test_registered():
    assert BENCHMARKS["study"] == "engine.benchmarks.study"


def test_bench_seeds_is_the_study():
    """Issue 14 calls it 'bench seeds': the same command, the same options."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "explorer.cli", "bench", "seeds", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "--budget" in p.stdout and "convergent" in p.stdout


def test_quick_runs_every_claim(quick):
    rc, result, _ = quick
    assert rc == 0
    assert result["config"]["quick"] is True
    ids = [s["id"] for s in result["sections"]]
    assert ids == list(CLAIMS)
    for s in result["sections"]:
        assert s["verdict"] in VERDICTS, s["id"]
        assert s["claim"] and s["figure"] and s["paper"], s["id"]
        # quick mode must exercise every code path: no section may come back failed
        assert not s["figure"].startswith("runs missing or failed"), (s["id"], s["notes"])
        if s["table"]:
            assert all(len(r) == len(s["table"]["columns"]) for r in s["table"]["rows"]), s["id"]


def test_report_structure(quick):
    _, result, out = quick
    text = out.read_text()
    assert "QUICK MODE" in text.splitlines()[0]
    assert "## Setup" in text and "## Summary" in text
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in summary.splitlines() if line.startswith("| [")]
    assert len(rows) == len(CLAIMS)
    for m in modules():
        assert f"## {m.TITLE}\n" in text, m.ID
        body = text.split(f"## {m.TITLE}\n", 1)[1].split("\n## ", 1)[0]
        assert "**Claim**:" in body and "**Our figure**:" in body
        v = re.search(r"\*\*Verdict\*\*: (.+)", body)
        assert v and v.group(1).strip() in VERDICTS, m.ID
    for png in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        p = out.parent / png
        assert p.is_file(), png
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.stat().st_size < 200_000, png


def test_both_budgets_give_a_verdict_per_claim(quick):
    from engine.study.core import QUICK_ONLY
    _, result, out = quick
    conv = result["convergent"]
    assert conv["config"]["budget"] == "convergent" and conv["config"]["steps"] > result["config"]["steps"]
    assert [s["id"] for s in conv["sections"]] == [c for c in CLAIMS if c not in QUICK_ONLY]
    text = out.read_text()
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "convergent budget: our figure" in summary
    for m in modules():
        body = text.split(f"## {m.TITLE}\n", 1)[1].split("\n## ", 1)[0]
        part = body.split("### At the convergent budget", 1)[1]
        if m.ID in QUICK_ONLY:
            assert "Not run at the convergent budget" in part, m.ID
        else:
            v = re.search(r"\*\*Verdict\*\*: ([a-z ]+)", part)
            assert v and v.group(1).strip() in VERDICTS, m.ID
    assert (out.parent / out.stem / "convergent" / "policy.png").is_file()


def test_compare_noise_rule():
    c = compare([90.0, 90.2, 89.8], [92.0, 92.1, 91.9])
    assert c["diff"] == pytest.approx(2.0) and c["significant"] is True
    c = compare([90.0, 91.0], [90.4, 90.8])
    assert c["significant"] is False
    assert compare([90.0], [91.0])["significant"] is None
