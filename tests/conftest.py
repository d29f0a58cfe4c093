import os

import pytest
import torch

# Keep KeOps' compiled formulas in the project's ignored build folder (see Makefile).
os.environ.setdefault("KEOPS_CACHE_FOLDER", os.path.join(os.path.dirname(os.path.dirname(__file__)), "build", "keops"))
os.environ.setdefault("MPLBACKEND", "Agg")

#: The devices present: the CPU always, CUDA when this machine has it. Device-dependent tests
#: take the ``device`` fixture, so the same ``make test`` exercises the GPU path where there is
#: one and adds a single parametrisation where there is not.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def tiny_digits():
    """90 digits of classes 0-2 (one thread: small ops run faster on a shared machine)."""
    import ddmetrics as ddm

    torch.set_num_threads(1)
    train = ddm.data.load("digits", seed=0).train
    keep = train.labels < 3
    return ddm.data.ArrayDataset(train.images[keep][:90], train.labels[keep][:90], 3)


@pytest.fixture(params=DEVICES)
def device(request):
    """Each device present, by name (``"cpu"``, ``"cuda"``).

    On CUDA, TF32 is switched off for the test (cuDNN convolutions use it by default): results
    are compared with CPU references at float32 and float64 tolerances.
    """
    if request.param != "cuda":
        yield request.param
        return
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield request.param
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@pytest.fixture(scope="module")
def small():
    """Three digit classes: enough signal, fast (one thread: small ops run faster on a shared machine)."""
    import ddmetrics as ddm

    torch.set_num_threads(1)
    train = ddm.data.load("digits", seed=0).train
    keep = train.labels < 3
    return ddm.data.ArrayDataset(train.images[keep], train.labels[keep], 3)


class _Hostile:
    """Unpickling this runs ``touch marker``: a file that holds it must be refused unread."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile(tmp_path):
    """``(obj, marker)``: an object whose unpickling would create the file ``marker`` (which must
    never appear), for the tests of refused files."""
    marker = tmp_path / "pwned"
    return _Hostile(str(marker)), marker


class Interrupted(Exception):
    """Raised by :func:`interrupt_at_save` in place of a kill."""


@pytest.fixture
def interrupt_at_save(monkeypatch):
    """``interrupt_at_save(n)``: the ``n``-th in-class checkpoint save of the run completes, then
    the run stops with :class:`Interrupted` (a kill right after a save); calling it with ``None``
    restores plain saving for the resumed run."""
    from ddmetrics.distill.checkpoint import Checkpoint

    original = Checkpoint.save_progress

    def arm(n):
        if n is None:
            monkeypatch.setattr(Checkpoint, "save_progress", original)
            return Interrupted
        saves = {"n": 0}

        def save_then_stop(self, k, state):
            original(self, k, state)
            saves["n"] += 1
            if saves["n"] == n:
                raise Interrupted

        monkeypatch.setattr(Checkpoint, "save_progress", save_then_stop)
        return Interrupted

    return arm


@pytest.fixture
def pool_trainings(monkeypatch):
    """A list that grows by one for every pool member (NCFM's pool, G-VBSM's backbones) trained in
    this test: clear it, run, and its length is the members trained."""
    import ddmetrics.distill.pool as pool

    trained = []
    train_member = pool._train_pool_member

    def counted(*args, **kwargs):
        trained.append(1)
        return train_member(*args, **kwargs)

    monkeypatch.setattr(pool, "_train_pool_member", counted)
    return trained
