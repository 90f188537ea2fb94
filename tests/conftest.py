"""Test-wide settings: no hub access, small thread pools, small toy configs."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("SPURAUG_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def small_toy():
    """A toy benchmark small enough for unit tests (same generator as the default)."""
    from spuraug.data.toy import ToyConfig

    return ToyConfig(n_train=200, n_val=80, n_test=80)


@pytest.fixture
def tiny_toy_runs(small_toy):
    """Overrides for real runs on the small toy benchmark with a width-8 CNN from scratch (the
    zoo backbone is width 16); test files add their method settings."""
    return {
        "dataset_options": {"n_train": small_toy.n_train, "n_val": small_toy.n_val, "n_test": small_toy.n_test,
                            "correlation": small_toy.correlation},
        "model.width": 8,
        "model.pretrained": False,
    }


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread on a shared 2-core machine; restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
