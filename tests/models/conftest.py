import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny CPU workloads are much faster (and immune to contention) on a single intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
