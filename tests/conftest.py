import os

import pytest

# Keep KeOps' compiled formulas in the project's ignored build folder (see Makefile).
os.environ.setdefault("KEOPS_CACHE_FOLDER", os.path.join(os.path.dirname(os.path.dirname(__file__)), "build", "keops"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="module")
def small():
    """Three digit classes: enough signal, fast (one thread: small ops run faster on a shared machine)."""
    import torch

    import ddmetrics as ddm

    torch.set_num_threads(1)
    train = ddm.data.load("digits", seed=0).train
    keep = train.labels < 3
    return ddm.data.ArrayDataset(train.images[keep], train.labels[keep], 3)
