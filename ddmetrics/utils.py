"""Seeding, device and batching utilities shared by distill, evaluate, synset and diagnose, and the
entry-point plugin loader of the loss and model registries."""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = ["PluginWarning", "Plugins", "autocast", "batches", "embed_batched", "frozen", "model_device",
           "resolve_device", "seeded"]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. a model's default initialisation) under ``seed`` without touching
    the caller's global RNG state. Tensors created in the block without a device go to the
    CPU and draw from the CPU generator, so a model built here has the same weights whatever
    device it is moved to afterwards."""
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        yield


@contextmanager
def frozen(module: Optional[nn.Module]) -> Iterator[Optional[nn.Module]]:
    """Use ``module`` in eval mode with no parameter gradients for a block, then give it back as
    it was: every submodule's ``training`` flag and every parameter's ``requires_grad`` are
    restored, also when the block raises. A caller's model (a teacher, a feature extractor) is
    borrowed, not changed; no weight is copied. ``None`` passes through (nothing to restore).
    """
    if module is None:
        yield None
        return
    modes = [(m, m.training) for m in module.modules()]
    grads = [(p, p.requires_grad) for p in module.parameters()]
    try:
        module.eval()
        for prm, _ in grads:
            prm.requires_grad_(False)
        yield module
    finally:
        for m, mode in modes:
            m.training = mode  # per module: a model may mix modes (a frozen BatchNorm in a training net)
        for prm, flag in grads:
            prm.requires_grad_(flag)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast for an embedder pass on CUDA when ``enabled`` (and bf16 is supported);
    a no-op context otherwise (the CPU path stays float32 and bit-reproducible)."""
    use = bool(enabled) and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use)


DeviceSpec = Union[str, torch.device, None]


def resolve_device(device: DeviceSpec = None) -> torch.device:
    """The device a run uses: ``None``/``"auto"``: CUDA when available (``cuda:LOCAL_RANK``
    under ``torchrun``), else the CPU; any ``torch.device`` string otherwise.

    Raises
    ------
    ValueError
        ``device`` is not a device name, or names CUDA on a machine without it (or an index
        it does not have).
    TypeError
        ``device`` is neither a string nor a ``torch.device``.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'cpu', 'cuda' or 'cuda:1', or a torch.device; "
                        f"got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: CUDA was asked for but is not available on this machine "
                             "(use device='cpu' or 'auto')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "meta"):
        raise ValueError(f"device={device!r}: ddmetrics runs on 'cpu' or 'cuda' devices")
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _unwrap_subsets(dataset: Dataset) -> Tuple[Dataset, Optional[List[int]]]:
    """``(base, positions)`` of nested ``torch.utils.data.Subset`` s (``positions`` None: all)."""
    positions: Optional[List[int]] = None
    while isinstance(dataset, Subset):
        inner = [int(i) for i in dataset.indices]
        positions = inner if positions is None else [inner[i] for i in positions]
        dataset = dataset.dataset
    return dataset, positions


def batches(dataset: Dataset, batch_size: int, workers: Optional[int] = None) -> Iterator[Tuple[Tensor, Tensor]]:
    """(images, labels) batches of ``dataset`` in order, read by a DataLoader with ``workers``
    worker processes; CPU tensors, for the caller to move where it computes.

    An :class:`~ddmetrics.data.ImageDataset` (or a ``Subset`` of one) is read batch by batch
    with its ``load`` (``workers`` defaults to the data set's own); any other Dataset item by item
    (``workers`` defaults to 0)."""
    from .data import ImageDataset, iterate_on_cpu, read_batches

    base, positions = _unwrap_subsets(dataset)
    if isinstance(base, ImageDataset):
        idx = (torch.arange(len(base), device="cpu") if positions is None
               else torch.tensor(positions, dtype=torch.int64, device="cpu"))
        chunks = list(idx.split(batch_size))
        for chunk, images in zip(chunks, read_batches(base, chunks, workers)):
            yield images, base.labels[chunk]
        return
    yield from iterate_on_cpu(DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers or 0))


@torch.no_grad()
def embed_batched(model: nn.Module, data: Union[Tensor, Dataset], batch_size: int = 512) -> Tensor:
    """``model.embed`` of ``data`` in batches on the model's device, flattened to (n, d), without
    gradient. ``data`` is an image tensor, or a Dataset of (image, label) pairs read through a
    DataLoader, so only one batch of images (and the features) is held at a time."""
    device = model_device(model)
    if isinstance(data, Tensor):
        chunks: Iterable[Tensor] = (data[i:i + batch_size] for i in range(0, len(data), batch_size))
    else:
        chunks = (images for images, _ in batches(data, batch_size))
    out = [model.embed(images.to(device)).flatten(1) for images in chunks]
    return torch.cat(out) if out else torch.zeros((0, 0), device=device)


class PluginWarning(UserWarning):
    """A plugin advertised under a ddmetrics entry-point group was not registered; the message
    names the distribution, the entry point and why."""


class Plugins:
    """The plugins third-party packages advertise under one entry-point group, loaded once.

    :meth:`load` imports each advertised object on first use and hands it to ``accept(name, obj)``,
    which registers it or returns why not (a name taken by a built-in or by another plugin, an
    object of the wrong kind). A plugin that fails to import or is refused is skipped, since a
    broken plugin must not break the built-ins, with a :class:`PluginWarning` naming the
    distribution and the entry point, so that it is never ignored silently.
    """

    def __init__(self, group: str, kind: str, key: Callable[[str], str] = str):
        self.group, self.kind, self.key, self.loaded = group, kind, key, False
        self._sources: Dict[str, str] = {}  # registry key -> the plugin that registered it

    def load(self, accept: Callable[[str, Any], Optional[str]]) -> None:
        """Offer every advertised object to ``accept(name, obj) -> None`` (registered) or a reason (refused)."""
        if self.loaded:
            return
        self.loaded = True
        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as err:  # any error of a third party's import
                self._refuse(ep, f"it failed to import ({type(err).__name__}: {err})")
                continue
            reason = accept(ep.name, obj)
            if reason is None:
                self._sources.setdefault(self.key(ep.name), self._describe(ep))
            else:
                self._refuse(ep, reason)

    def source(self, name: str) -> Optional[str]:
        """The plugin (entry point and distribution) that registered ``name``; ``None``: no plugin did."""
        return self._sources.get(self.key(name))

    @staticmethod
    def _describe(ep: Any) -> str:
        dist = getattr(ep, "dist", None)  # None for an entry point built by hand
        where = f"distribution {dist.name} {dist.version}" if dist is not None else "an unknown distribution"
        return f"{ep.name} = {ep.value} in {where}"

    def _refuse(self, ep: Any, reason: str) -> None:
        warnings.warn(f"ddmetrics: ignored the {self.kind} plugin {self._describe(ep)} "
                      f"(entry-point group {self.group}): {reason}", PluginWarning, stacklevel=2)
