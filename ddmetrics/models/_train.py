"""Seeded SGD training and accuracy for any model on an in-memory or streaming dataset."""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..data import ArrayDataset, as_dataset, read_batches
from ..losses import check_weight_vector
from ..utils import batches, model_device

__all__ = ["train_model", "accuracy"]

Augment = Callable[[Tensor, torch.Generator], Tensor]



def _batches(n: int, batch_size: int) -> List[Tuple[int, int]]:
    """Batch bounds; a trailing batch of one sample is folded into the previous one (BatchNorm
    cannot normalise a single 1x1 sample in training mode)."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2] = (bounds[-2][0], n)
        bounds.pop()
    return bounds


def _check_weights(sample_weights, n: int) -> Optional[Tensor]:
    if sample_weights is None:
        return None
    # any array-like of n entries (e.g. an (n, 1) column) is accepted: cast and flatten first
    w = torch.as_tensor(sample_weights, device="cpu").detach().to(torch.float32).flatten()
    check_weight_vector(w, n, "sample_weights", positive_sum=True)
    return w / w.mean()


def train_model(model: nn.Module, dataset: Union[ArrayDataset, Dataset], epochs: int, lr: float = 0.01,
                batch_size: int = 256, weight_decay: float = 5e-4, seed: int = 0, augment: Optional[Augment] = None,
                sample_weights: Optional[Tensor] = None, progress: bool = True,
                device: Optional[Union[str, torch.device]] = None) -> nn.Module:
    """Train ``model`` with SGD (momentum 0.9) and cross-entropy; the learning rate drops x0.1 at half.

    Parameters
    ----------
    model : nn.Module
        Maps images ``(N, C, H, W)`` to logits. Trained in place.
    dataset : ArrayDataset, ImageFolder or Dataset
        Training data. An :class:`~ddmetrics.data.ImageDataset` is read batch by batch with its
        ``load`` (an ImageFolder with ``workers`` > 0 through DataLoader workers, a few batches
        ahead); any other Dataset of ``(image, label)`` pairs is converted to an ArrayDataset.
    epochs : int
        Passes over the data; epochs ``epochs // 2 ..`` use ``0.1 * lr`` (when ``epochs >= 2``).
    lr, batch_size, weight_decay : float, int, float
        Optimiser settings.
    seed : int
        Seeds the shuffling generator and the generator handed to ``augment``.
    augment : callable, optional
        ``augment(images, generator) -> images`` applied to every training batch.
    sample_weights : Tensor, optional, shape (N,)
        Non-negative per-sample loss weights, normalised to mean 1.
    progress : bool
        Show a tqdm bar over epochs.
    device : str or torch.device, optional
        Where to train; defaults to the model's device. The model is moved there.

    Returns
    -------
    nn.Module
        ``model``, in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if augment is not None and not callable(augment):
        raise TypeError("augment must be callable(images, generator) or None")
    data = as_dataset(dataset)
    n = len(data)
    if n == 0:
        raise ValueError("dataset is empty")
    weights = _check_weights(sample_weights, n)
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    labels = data.labels
    if weights is not None:
        weights = weights.to(device)
    # CPU generators: the same shuffles and augmentations on every device
    shuffle_gen = torch.Generator(device="cpu").manual_seed(int(seed))
    aug_gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    bounds = _batches(n, batch_size)
    bar = tqdm(range(epochs), desc="train", disable=not progress, leave=False)
    for epoch in bar:
        if epochs >= 2 and epoch == epochs // 2:
            for group in opt.param_groups:
                group["lr"] = lr * 0.1
        model.train()
        perm = torch.randperm(n, generator=shuffle_gen, device="cpu")
        total, seen = 0.0, 0
        chunks = [perm[start:stop] for start, stop in bounds]
        for idx, x in zip(chunks, read_batches(data, chunks)):  # ArrayDataset: images[idx]
            x = x.to(device, non_blocking=True)
            y = labels[idx].to(device, non_blocking=True)
            if augment is not None:
                x = augment(x, aug_gen)
            loss = F.cross_entropy(model(x), y, reduction="none")
            loss = (loss * weights[idx.to(device)]).mean() if weights is not None else loss.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        bar.set_postfix(loss=f"{total / seen:.4f}")
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Union[ArrayDataset, Dataset], batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` in [0, 1] (evaluated in eval mode, then restored)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    data = as_dataset(dataset)
    if len(data) == 0:
        raise ValueError("dataset is empty")
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for x, y in batches(data, batch_size):  # in order, one batch decoded at a time
            x, y = x.to(device), y.to(device)
            correct += int((model(x).argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    return correct / len(data)
