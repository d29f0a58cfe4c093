"""Seeded training of any model by a :class:`~ddmetrics.protocols.TrainRecipe`, and accuracy.

One engine for teachers, embedder pools and students, hard or soft targets: the recipe says
the optimiser (SGD / AdamW, weight decay on every parameter or on weights of dimension > 1
only), the learning-rate schedule (per epoch, closed forms in :func:`lr_factor`), the batch,
the per-image augmentation and the batch mix (:mod:`ddmetrics.mix`); a ``criterion`` hook
gives the per-sample loss (default: cross-entropy with the labels, mixed as the batch was).
Every random draw comes from CPU generators seeded from ``seed``: shuffles from ``seed``,
augmentations from ``seed + 1``, mixes from ``seed + 2``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, List, Optional, Set, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..augment import make_augment
from ..data import ArrayDataset, as_dataset, read_batches
from ..losses import check_weight_vector
from ..mix import BatchMix, Mixed, mixed_cross_entropy
from ..protocols import MIXES, OPTIMIZERS, SCHEDULES, TEACHER_RECIPES, TrainRecipe
from ..utils import batches, model_device

__all__ = ["train_model", "accuracy", "lr_factor", "optimizer_rebuilds", "parameter_groups", "make_optimizer",
           "check_recipe", "WEIGHT_NORMS"]

#: ``augment(images, generator) -> images``, applied to every training batch
Augment = Callable[[Tensor, torch.Generator], Tensor]
#: ``criterion(logits, images, labels, mixed) -> (B,)`` per-sample losses of a batch (``images``:
#: what the model saw, augmented and mixed; ``mixed``: the batch's :class:`~ddmetrics.mix.Mixed` or None)
Criterion = Callable[[Tensor, Tensor, Tensor, Optional[Mixed]], Tensor]
#: how ``sample_weights`` are normalised: to mean 1 over the whole set, or over each batch (WMDD's train_FKD)
WEIGHT_NORMS: Tuple[str, ...] = ("set", "batch")


# --------------------------------------------------------------------------- schedules
def _step_half(recipe: TrainRecipe, epoch: int, epochs: int) -> float:
    # no step for a single epoch (epochs // 2 would be epoch 0)
    return recipe.gamma if epochs >= 2 and epoch >= epochs // 2 else 1.0


def _multistep(recipe: TrainRecipe, epoch: int, epochs: int) -> float:
    # MultiStepLR stepped per epoch at round(fraction * epochs): gamma ** (milestones passed)
    return recipe.gamma ** sum(epoch >= round(f * epochs) for f in recipe.milestones)


def _cosine(recipe: TrainRecipe, epoch: int, epochs: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


#: schedule name -> ``factor(recipe, epoch, epochs)``, the learning rate of 0-based ``epoch`` over ``recipe.lr``
SCHEDULE_FACTORS: Dict[str, Callable[[TrainRecipe, int, int], float]] = {
    "step_half": _step_half,
    "step_half_reset": _step_half,
    "multistep": _multistep,
    "cosine": _cosine,
    "constant": lambda recipe, epoch, epochs: 1.0,
}


def lr_factor(recipe: TrainRecipe, epoch: int, epochs: int) -> float:
    r"""The learning rate of epoch ``epoch`` (0-based) of ``epochs``, as a factor of ``recipe.lr``.

    ``step_half`` / ``step_half_reset``: :math:`\gamma` from epoch ``epochs // 2`` on (no step when
    ``epochs`` < 2); ``multistep``: :math:`\gamma^{m}`, :math:`m` the number of milestones
    ``round(f * epochs)`` at or before ``epoch``; ``cosine``:
    :math:`\tfrac12(1 + \cos(\pi\,e/E))` (per epoch, no warm-up, SRe²L / WMDD's ``--cos``);
    ``constant``: 1.
    """
    return SCHEDULE_FACTORS[recipe.schedule](recipe, epoch, epochs)


def optimizer_rebuilds(recipe: TrainRecipe, epochs: int) -> Set[int]:
    """The epochs at whose start the optimiser is built anew (its momentum / moments dropped).

    ``step_half_reset`` (DM's ``evaluate_synset``) rebuilds it where the rate steps, at epoch
    ``epochs // 2``: the first ``epochs // 2`` passes at ``lr``, the other ``epochs - epochs // 2``
    at ``gamma * lr``. DM's code makes ``Epoch + 1`` passes and steps after pass ``Epoch // 2 + 1``
    (502 at 0.01, 499 at 0.001 for its 1000); here ``epochs`` is the number of passes, split in
    halves, as every other schedule counts them (500 and 500).
    """
    if recipe.schedule == "step_half_reset" and epochs >= 2:
        return {epochs // 2}
    return set()


# --------------------------------------------------------------------------- optimiser
def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = True) -> List[dict]:
    """The optimiser's parameter groups: one group with ``weight_decay`` (``decay_norm_and_bias``),
    or decay only on parameters of dimension > 1 (conv and linear weights) and none on the others
    (biases, normalisation scales and shifts), as timm's and SRe²L / WMDD's ``train_FKD`` groups."""
    if decay_norm_and_bias:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decayed = [p for p in model.parameters() if p.dim() > 1]
    kept = [p for p in model.parameters() if p.dim() <= 1]
    return [g for g in ({"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0})
            if g["params"]]


def _sgd(groups: List[dict], recipe: TrainRecipe) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)


def _adamw(groups: List[dict], recipe: TrainRecipe) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.999))


#: optimiser name -> ``build(param_groups, recipe)`` (each group carries its weight decay)
OPTIMIZER_BUILDERS: Dict[str, Callable[[List[dict], TrainRecipe], torch.optim.Optimizer]] = {
    "sgd": _sgd, "adamw": _adamw}


def make_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    """``recipe``'s optimiser over ``model``'s parameters: SGD with ``recipe.momentum`` (no
    Nesterov) or AdamW (betas 0.9, 0.999), weight decay by :func:`parameter_groups`."""
    groups = parameter_groups(model, recipe.weight_decay, recipe.decay_norm_and_bias)
    return OPTIMIZER_BUILDERS[recipe.optimizer](groups, recipe)


# --------------------------------------------------------------------------- checks
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: recipe field -> (test, what is allowed)
_RECIPE_RULES: Dict[str, Tuple[Callable[[object], bool], str]] = {
    "optimizer": (lambda v: v in OPTIMIZERS, "one of " + ", ".join(OPTIMIZERS)),
    "lr": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    "decay_norm_and_bias": (lambda v: isinstance(v, bool), "True or False"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "a positive int"),
    "schedule": (lambda v: v in SCHEDULES, "one of " + ", ".join(SCHEDULES)),
    "milestones": (lambda v: isinstance(v, tuple) and all(_is_number(f) and 0 < f <= 1 for f in v),
                   "a tuple of fractions in (0, 1]"),
    "gamma": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "augment": (lambda v: isinstance(v, str), "an augmentation spec (ddmetrics.augment.make_augment)"),
    "mix": (lambda v: v in MIXES, "one of " + ", ".join(MIXES)),
    "mix_alpha": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "mix_prob": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "epochs": (lambda v: _is_int(v) and v >= 0, "a non-negative int"),
}


def check_recipe(recipe: TrainRecipe, name: str = "recipe") -> TrainRecipe:
    """``recipe`` if every field is allowed; else a ``ValueError`` naming ``name.field``."""
    if not isinstance(recipe, TrainRecipe):
        raise TypeError(f"{name} must be a ddmetrics.protocols.TrainRecipe, got {type(recipe).__name__}")
    for field, (test, allowed) in _RECIPE_RULES.items():
        value = getattr(recipe, field)
        if not test(value):
            raise ValueError(f"{name}.{field}={value!r} is not allowed: it must be {allowed}")
    return recipe


def _resolve_recipe(recipe: Optional[TrainRecipe], lr, batch_size, weight_decay) -> TrainRecipe:
    """The recipe trained by: ``recipe`` (default ``TEACHER_RECIPES["ours"]``, the earlier fixed
    recipe) with the keyword overrides of the earlier signature."""
    if recipe is not None and not isinstance(recipe, TrainRecipe):
        hint = " (the number of epochs is epochs=...)" if _is_int(recipe) else ""
        raise TypeError(f"recipe must be a ddmetrics.protocols.TrainRecipe or None, got {type(recipe).__name__}{hint}")
    base = TEACHER_RECIPES["ours"] if recipe is None else recipe
    overrides = {k: v for k, v in (("lr", lr), ("batch_size", batch_size), ("weight_decay", weight_decay))
                 if v is not None}
    for key, value in overrides.items():  # checked by name before they enter the recipe
        test, allowed = _RECIPE_RULES[key]
        if not test(value):
            raise ValueError(f"{key} must be {allowed}, got {value!r}")
    return check_recipe(dataclasses.replace(base, **overrides))


# --------------------------------------------------------------------------- training
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


def _resolve_augment(augment, recipe: Optional[TrainRecipe], data) -> Optional[Augment]:
    """``augment`` as a callable: given, built from a spec, or (``None``) the recipe's spec."""
    if augment is None:
        if recipe is None:  # the earlier signature: no augmentation unless one is given
            return None
        augment = recipe.augment
    if isinstance(augment, str):
        shape = data.image_shape
        return make_augment(augment, shape[0], shape[-1])
    if not callable(augment):
        raise TypeError("augment must be callable(images, generator), an augmentation spec or None")
    return augment


def _cross_entropy(logits: Tensor, images: Tensor, labels: Tensor, mixed: Optional[Mixed]) -> Tensor:
    return mixed_cross_entropy(logits, labels, mixed)


def train_model(model: nn.Module, dataset: Union[ArrayDataset, Dataset], recipe: Optional[TrainRecipe] = None,
                epochs: Optional[int] = None, seed: int = 0, augment: Union[Augment, str, None] = None,
                sample_weights: Optional[Tensor] = None, progress: bool = True,
                device: Optional[Union[str, torch.device]] = None, *, criterion: Optional[Criterion] = None,
                weight_norm: str = "set", lr: Optional[float] = None, batch_size: Optional[int] = None,
                weight_decay: Optional[float] = None) -> nn.Module:
    """Train ``model`` by ``recipe`` (default: cross-entropy with the labels).

    Parameters
    ----------
    model : nn.Module
        Maps images ``(N, C, H, W)`` to logits. Trained in place.
    dataset : ArrayDataset, ImageFolder or Dataset
        Training data. An :class:`~ddmetrics.data.ImageDataset` is read batch by batch with its
        ``load`` (an ImageFolder with ``workers`` > 0 through DataLoader workers, a few batches
        ahead); any other Dataset of ``(image, label)`` pairs is converted to an ArrayDataset.
    recipe : TrainRecipe, optional
        Optimiser, schedule, batch, mix and epochs (:class:`ddmetrics.protocols.TrainRecipe`).
        Default: ``TEACHER_RECIPES["ours"]`` (SGD lr 0.01, momentum 0.9, weight decay 5e-4,
        batch 256, ×0.1 at half, 30 epochs), the earlier fixed recipe, with ``lr``,
        ``batch_size``, ``weight_decay`` as given; no augmentation unless ``augment`` says so.
    epochs : int, optional
        Passes over the data (``None``: ``recipe.epochs``, which must then be positive).
    seed : int
        Seeds the shuffles (``seed``), the augmentation (``seed + 1``) and the mixes (``seed + 2``),
        CPU generators: the same draws on every device.
    augment : callable, str or None
        ``augment(images, generator) -> images`` for every training batch, or an augmentation
        spec resolved by :func:`ddmetrics.augment.make_augment` for the data's channels and size
        (``"none"``: none). ``None``: the recipe's spec when ``recipe`` is given, else none.
    sample_weights : Tensor, optional, shape (N,)
        Non-negative per-sample loss weights, normalised to mean 1 over the set
        (``weight_norm="set"``) or over each batch (``"batch"``).
    progress : bool
        Show a tqdm bar over epochs.
    device : str or torch.device, optional
        Where to train; defaults to the model's device. The model is moved there.
    criterion : callable, optional
        ``criterion(logits, images, labels, mixed) -> (B,)`` per-sample losses (the images the
        model saw, augmented and mixed). Default :func:`ddmetrics.mix.mixed_cross_entropy`:
        :math:`\\lambda\\,CE(y) + (1-\\lambda)\\,CE(y_\\pi)` on a mixed batch, CE otherwise.
    weight_norm : {"set", "batch"}
        See ``sample_weights``.
    lr, batch_size, weight_decay : float, int, float, optional
        Override the recipe's (the earlier signature's keywords).

    Returns
    -------
    nn.Module
        ``model``, in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    given_recipe = recipe
    recipe = _resolve_recipe(recipe, lr, batch_size, weight_decay)
    if epochs is None:
        if recipe.epochs < 1:
            raise ValueError(f"recipe.epochs is {recipe.epochs}: pass epochs=... (0 is the evaluation's "
                             "default_epochs rule, resolved by ddmetrics.evaluate)")
        epochs = recipe.epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if weight_norm not in WEIGHT_NORMS:
        raise ValueError(f"weight_norm must be one of {', '.join(WEIGHT_NORMS)}, got {weight_norm!r}")
    if criterion is not None and not callable(criterion):
        raise TypeError("criterion must be callable(logits, images, labels, mixed) or None")
    data = as_dataset(dataset)
    n = len(data)
    if n == 0:
        raise ValueError("dataset is empty")
    aug = _resolve_augment(augment, given_recipe, data)
    mix = BatchMix(recipe.mix, recipe.mix_alpha, recipe.mix_prob) if recipe.mix != "none" else None
    weights = _check_weights(sample_weights, n)
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    labels = data.labels
    if weights is not None:
        weights = weights.to(device)
    # CPU generators: the same shuffles, augmentations and mixes on every device
    shuffle_gen = torch.Generator(device="cpu").manual_seed(int(seed))
    aug_gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1)
    mix_gen = torch.Generator(device="cpu").manual_seed(int(seed) + 2)
    loss_of = criterion if criterion is not None else _cross_entropy
    opt = make_optimizer(model, recipe)
    rebuilds = optimizer_rebuilds(recipe, epochs)
    bounds = _batches(n, min(recipe.batch_size, n))
    bar = tqdm(range(epochs), desc="train", disable=not progress, leave=False)
    for epoch in bar:
        if epoch in rebuilds:
            opt = make_optimizer(model, recipe)
        rate = recipe.lr * lr_factor(recipe, epoch, epochs)
        for group in opt.param_groups:
            group["lr"] = rate
        model.train()
        perm = torch.randperm(n, generator=shuffle_gen, device="cpu")
        total, seen = 0.0, 0
        chunks = [perm[start:stop] for start, stop in bounds]
        for idx, x in zip(chunks, read_batches(data, chunks)):  # ArrayDataset: images[idx]
            x = x.to(device, non_blocking=True)
            y = labels[idx].to(device, non_blocking=True)
            if aug is not None:
                x = aug(x, aug_gen)
            mixed = mix(x, mix_gen) if mix is not None else None
            if mixed is not None:
                x = mixed.images
            loss = loss_of(model(x), x, y, mixed)
            if weights is None:
                loss = loss.mean()
            else:
                w = weights[idx.to(device)]
                if weight_norm == "batch":  # a batch of zero weights contributes nothing
                    w = w / w.mean().clamp_min(torch.finfo(w.dtype).tiny)
                loss = (loss * w).mean()
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
