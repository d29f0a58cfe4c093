import pytest
import torch

import ddmetrics as ddm


@pytest.fixture(scope="module")
def small():
    """Three digit classes: enough signal, fast (one thread: small ops run faster on a shared machine)."""
    torch.set_num_threads(1)
    train = ddm.data.load("digits", seed=0).train
    keep = train.labels < 3
    return ddm.data.ArrayDataset(train.images[keep], train.labels[keep], 3)
