import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("BITSCAPE_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Trained baselines and stores go to a per-session temp dir, never the user's."""
    monkeypatch.setenv("BITSCAPE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
