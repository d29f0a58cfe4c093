#!/usr/bin/env python
"""WMDD paper, Fig. 2: what "the average" of two point clouds looks like under KL, MMD and Wasserstein.

Two measures A (points on a circle) and B (points on a cross), 120 points each, and three
"barycenters" with weights (½, ½):

- KL: the minimiser of ½KL(·‖A) + ½KL(·‖B) over mixtures is the mixture ½A + ½B itself — the
  union of the two clouds, no shape in between;
- MMD: a free-support cloud of 120 points minimising ½MMD²(·, A) + ½MMD²(·, B) with Adam
  (ddmetrics' ``mmd`` backend, Gaussian kernel with fixed bandwidths); a kernel mean matched
  to the mixture's, so it also spreads over both shapes;
- Wasserstein: the exact W2 barycenter of A and B with POT's
  ``ot.lp.free_support_barycenter([A, B], [a, b], X_init)`` (positions only, uniform weights),
  which interpolates the geometry: a shape halfway between the circle and the cross.

Writes ``examples/barycenter_2d.png`` (next to this script). Runs in a few seconds on CPU::

    .venv/bin/python examples/barycenter_2d.py
"""
from __future__ import annotations

import io
import os

import numpy as np
import ot
import torch

import ddmetrics as ddm
from ddmetrics._io import atomic_write_bytes

SEED = 0
N = 120


def circle(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points on the unit circle (evenly spaced, slightly jittered)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1) + 0.01 * rng.standard_normal((n, 2))


def cross(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points on a cross (two perpendicular segments of length 2) centred at (0, 0)."""
    s = np.linspace(-1, 1, n // 2)
    pts = np.concatenate([np.stack([s, np.zeros_like(s)], 1), np.stack([np.zeros_like(s), s], 1)])
    return pts + 0.01 * rng.standard_normal(pts.shape)


def mmd_barycenter(a_pts: np.ndarray, b_pts: np.ndarray, n: int, iters: int = 250, seed: int = SEED) -> np.ndarray:
    """Free-support minimiser of ½MMD²(·, A) + ½MMD²(·, B) (Gaussian kernel, bandwidths 0.1, 0.3, 1)."""
    loss = ddm.get_loss("mmd", kernel="gaussian", bandwidth=[0.1, 0.3, 1.0])
    x = torch.as_tensor(a_pts, dtype=torch.float32)
    y = torch.as_tensor(b_pts, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    z = (0.3 * torch.randn(n, 2, generator=gen)).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.03)
    for _ in range(iters):
        opt.zero_grad(set_to_none=True)
        (0.5 * loss(x, z) + 0.5 * loss(y, z)).backward()
        opt.step()
    return z.detach().numpy()


def wasserstein_barycenter(a_pts: np.ndarray, b_pts: np.ndarray, n: int, seed: int = SEED) -> np.ndarray:
    """Exact free-support W2 barycenter (POT), started from ``n`` Gaussian points."""
    rng = np.random.default_rng(seed)
    x_init = 0.3 * rng.standard_normal((n, 2))
    w = np.full(len(a_pts), 1.0 / len(a_pts))
    v = np.full(len(b_pts), 1.0 / len(b_pts))
    return ot.lp.free_support_barycenter([a_pts, b_pts], [w, v], x_init, weights=np.array([0.5, 0.5]),
                                         numItermax=30, stopThr=1e-7)


def main(out: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "barycenter_2d.png")) -> str:
    """Compute the three barycenters and write the figure atomically; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)
    a_pts, b_pts = circle(N, rng), cross(N, rng)
    panels = [
        ("A (circle) and B (cross)", [(a_pts, "tab:blue"), (b_pts, "tab:orange")]),
        ("KL: mixture ½A + ½B", [(np.concatenate([a_pts, b_pts]), "tab:purple")]),
        ("MMD barycenter", [(mmd_barycenter(a_pts, b_pts, N), "tab:green")]),
        ("Wasserstein barycenter (POT)", [(wasserstein_barycenter(a_pts, b_pts, N), "tab:red")]),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8), dpi=80)
    for ax, (title, clouds) in zip(axes, panels):
        for pts, color in clouds:
            ax.scatter(pts[:, 0], pts[:, 1], s=5, color=color)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-1.4, 1.4)
        ax.set_ylim(-1.4, 1.4)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out


if __name__ == "__main__":
    path = main()
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KB)")
