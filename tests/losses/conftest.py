"""Fixtures for the backend tests: a run of both matching strategies (on tests/conftest.py's tiny_digits)."""
import pytest
import torch

import ddmetrics as ddm


@pytest.fixture
def distil_both(tiny_digits):
    """``run(name, **loss_kwargs)``: a few steps of distribution matching (DM) and of barycenter
    matching (WMDD, through the loss's barycenter) with the registered loss ``name``, under a
    ``meta`` default device so that a tensor created without ``device=`` fails the run."""

    def run(name, **loss_kwargs):
        runs = {"dm": dict(iterations=3), "wmdd": dict(iterations=2, teacher_epochs=1, bary_iters=3)}
        out = {}
        for method, kw in runs.items():
            torch.set_default_device("meta")
            try:
                d = ddm.Distiller(method=method, loss=name, loss_kwargs=loss_kwargs, ipc=1, seed=0, device="cpu", **kw)
                syn = d.fit(tiny_digits, progress=False)
            finally:
                torch.set_default_device(None)
            assert syn.images.shape == (3, 1, 8, 8) and torch.isfinite(syn.images).all(), method
            assert torch.isfinite(syn.weights).all() and abs(float(syn.weights.sum()) - 3.0) < 1e-4, method
            out[method] = syn
        return out

    return run
