"""`--input-shape`: plan and cost your own model without a dataset."""
import json

import pytest

from explorer.cli import main

MODEL = "tests.explorer.usercode:tiny_mlp"


def test_cost_takes_an_input_shape_instead_of_a_dataset(capsys, tmp_path):
    assert main(["cost", "--model", MODEL, "--input-shape", "1,28,28", "--profile", "bops", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["input_shape"] == [1, 28, 28] and d["dataset"] is None
    assert [row["macs"] for row in d["layers"]] == [28 * 28 * 16, 16 * 10]   # Linear(784, 16), Linear(16, 10)
    assert main(["cost", "--model", MODEL, "--input-shape", "1x6x6", "--num-classes", "3", "--profile", "bops",
                 "--json"]) == 0
    assert [row["macs"] for row in json.loads(capsys.readouterr().out)["layers"]] == [36 * 16, 16 * 3]
    # the template written for that shape validates and costs with it
    assert main(["plan", "template", "--model", MODEL, "--input-shape", "1,28,28"]) == 0
    plan = tmp_path / "p.json"
    plan.write_text(capsys.readouterr().out)
    assert main(["plan", "validate", str(plan), "--model", MODEL, "--input-shape", "1,28,28"]) == 0
    assert main(["cost", "--model", MODEL, "--input-shape", "1,28,28", "--plan", str(plan), "--profile", "bops"]) == 0
    assert "784" not in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    ([], "--dataset is required with your own model"),
    (["--input-shape", "1,a,3"], "give 1 to 4 positive integers"),
    (["--input-shape", "0,28,28"], "every dimension must be at least 1"),
    (["--input-shape", "1,28,28", "--dataset", "digits"], "not both"),
    (["--num-classes", "3"], "--num-classes goes with --input-shape"),
    (["--input-shape", "1,28,28", "--num-classes", "1"], "--num-classes must be between 2"),
])
def test_bad_shapes_are_one_line_errors(args, message, capsys):
    assert main(["cost", "--model", MODEL, "--profile", "bops", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
