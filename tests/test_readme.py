"""The README's Quickstart is the contract: two commands, and CI runs the test one verbatim."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_quickstart_has_exactly_two_commands():
    cmds = quickstart_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds)
    assert cmds[0].endswith("bitscape serve")
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quickstart_commands()[1] in ci


def test_constraints_pin_the_cpu_torch_and_no_cuda_wheels():
    pins = [ln for ln in (ROOT / ".ci" / "constraints.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert any(re.fullmatch(r"torch==[\d.]+", p) for p in pins), "torch must be pinned"
    cuda = [p for p in pins if p.lower().startswith(("nvidia-", "cuda-", "triton"))]
    assert not cuda, f"the constraints would pull a CUDA torch build: {cuda}"
