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


def pytest_collection_modifyitems(config, items):
    """The regression tests (two files, one per xdist worker) run first. They compute every
    smoke victim afresh and hand them to the store the notebooks read (nbval collects them
    after ``tests/``). Run late, the notebooks on the other worker would have trained the same
    victims themselves; pytest-xdist would run them last (it sends the files with the most
    tests first), hence ``--no-loadscope-reorder`` in the Makefile."""
    first = [i for i in items if i.nodeid.startswith("tests/test_regression")]
    if first:
        items[:] = first + [i for i in items if i not in first]
