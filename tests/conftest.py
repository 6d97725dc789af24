import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def smoke_dataset(tmp_path_factory):
    """A tiny embedded dataset (3 speakers per split) synthesised once per session."""
    from bdlib.data.synth import ensure_embedded_dataset

    root = tmp_path_factory.mktemp("embedded")
    manifest = ensure_embedded_dataset(root, 3, 2, 2, seed=11, progress=False)
    return root, manifest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _torch_seed():
    torch.manual_seed(0)
