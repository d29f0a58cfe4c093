"""``SyntheticSet``: distilled images, labels and weights, with atomic save/load and a PNG grid."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["SyntheticSet", "atomic_write"]


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into place.

    A failure leaves neither a partial ``path`` nor the temporary file behind.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@dataclass
class SyntheticSet:
    """A distilled data set.

    Attributes
    ----------
    images : Tensor
        (N, C, H, W) stored images (with ``meta["factor"]`` > 1 each holds f×f sub-images).
    labels : Tensor
        (N,) int64 class labels.
    weights : Tensor
        (N,) per-image weights; within a class they sum to 1 (barycenter weights for WMDD,
        1/ipc otherwise).
    meta : dict
        JSON-able description: method, loss, ipc, seed, factor, config, timings, mean/std.
    num_classes : int
    """

    images: Tensor
    labels: Tensor
    weights: Tensor
    meta: Dict[str, Any] = field(default_factory=dict)
    num_classes: Optional[int] = None

    def __post_init__(self):
        if self.images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        n = self.images.shape[0]
        if self.labels.shape != (n,) or self.weights.shape != (n,):
            raise ValueError(f"labels and weights must have shape ({n},)")
        self.labels = self.labels.long()
        if self.num_classes is None:
            self.num_classes = int(self.labels.max()) + 1 if n else 0

    # ---------------------------------------------------------------- I/O
    def save(self, path: str) -> None:
        """Write tensors and JSON metadata atomically; readable with ``torch.load(weights_only=True)``."""
        payload = {"images": self.images.detach().cpu(), "labels": self.labels.cpu(),
                   "weights": self.weights.detach().cpu(), "num_classes": int(self.num_classes),
                   "meta_json": json.dumps(self.meta)}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path: str) -> "SyntheticSet":
        """Read a file written by :meth:`save` (never unpickles arbitrary objects)."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # weights_only refuses anything but tensors and plain containers
            raise ValueError(f"{path} is not a ddmetrics synthetic set: {err}") from err
        keys = {"images", "labels", "weights", "num_classes", "meta_json"}
        if not isinstance(payload, dict) or not keys <= set(payload):
            raise ValueError(f"{path} is not a ddmetrics synthetic set (expected keys {sorted(keys)})")
        return cls(images=payload["images"], labels=payload["labels"], weights=payload["weights"],
                   meta=json.loads(payload["meta_json"]), num_classes=int(payload["num_classes"]))

    # ---------------------------------------------------------------- views
    def decoded(self) -> Tuple[Tensor, Tensor, Tensor]:
        """Images, labels and weights as the learner sees them (factor tiles up-sampled)."""
        from .distill.factor import decode

        factor = int(self.meta.get("factor", 1) or 1)
        images, labels, weights = decode(self.images, self.labels, self.weights, factor)
        return images, labels, weights

    def to_dataset(self):
        """The decoded set as an :class:`~ddmetrics.data.ArrayDataset`."""
        from .data import ArrayDataset

        images, labels, _ = self.decoded()
        return ArrayDataset(images, labels, self.num_classes)

    def save_grid(self, path: str, mean=None, std=None, tile: int = 32) -> None:
        """PNG with one row per class (stored images, de-normalised, each scaled to ``tile`` px)."""
        import numpy as np
        from PIL import Image

        mean = self.meta.get("mean") if mean is None else mean
        std = self.meta.get("std") if std is None else std
        x = self.images.detach().cpu().float()
        if mean is not None and std is not None:
            x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
        else:  # no statistics: stretch each image to [0, 1]
            lo = x.amin((1, 2, 3), keepdim=True)
            x = (x - lo) / (x.amax((1, 2, 3), keepdim=True) - lo).clamp_min(1e-8)
        x = x.clamp(0, 1)
        x = torch.nn.functional.interpolate(x, size=(tile, tile), mode="nearest")
        rows = [x[self.labels == k] for k in range(self.num_classes)]
        cols = max(len(r) for r in rows)
        c = x.shape[1]
        canvas = torch.ones(c, self.num_classes * (tile + 2), cols * (tile + 2))
        for k, r in enumerate(rows):
            for j, img in enumerate(r):
                canvas[:, k * (tile + 2) + 1:k * (tile + 2) + 1 + tile, j * (tile + 2) + 1:j * (tile + 2) + 1 + tile] = img
        arr = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        image = Image.fromarray(arr[:, :, 0] if c == 1 else arr[:, :, :3])
        atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
