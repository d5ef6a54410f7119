import pytest

from engine.errors import UserError
from engine.models.data import load_dataset


def test_digits_splits_are_disjoint_and_sized():
    d = load_dataset("digits")
    sizes = d.sizes()
    assert sum(sizes.values()) == 1797 and sizes["test"] == 359
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert abs(float(d.x_train.mean())) < 1e-3


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.models.data.FASHION_DIRS", (str(tmp_path),))
    monkeypatch.delenv("BITSCAPE_FASHION_MNIST", raising=False)
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="cifar-10-binary"):
        load_dataset("cifar10")
    with pytest.raises(UserError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


def test_corrupt_idx_file_is_a_clear_error(tmp_path):
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / stem).write_bytes(b"\x01\x02garbage")
    with pytest.raises(UserError, match="cannot read IDX file"):
        load_dataset("mnist", root=str(tmp_path))


def test_user_dataset_function():
    from engine.models.zoo import trusted_references
    with trusted_references("tests.engine.fixtures:tiny_dataset"):   # code runs only when the user allows it
        d = load_dataset("tests.engine.fixtures:tiny_dataset")
    assert d.input_shape == (1, 4, 4) and d.num_classes == 3
