r"""A pool of trained embedders: P networks trained on the real data, one drawn per step.

NCFM's condenser (gszfwsb/NCFM ``pretrain/pretrain_script.py``, ``utils/utils.py:432-456``)
trains P networks of the embedder architecture, each from its own initialisation, keeps both
ends, and at every step draws a member :math:`i` uniformly and a mixing weight
:math:`l \sim U(0, 1)`:

.. math::
    \theta = l\,\theta_i^{\mathrm{init}} + (1 - l)\,\theta_i^{\mathrm{trained}}

The mixed network embeds the images; the fully trained end of the same member classifies them
in NCFM's calibration step. IDM's queue of trained embedders and G-VBSM's backbones are the same
component.

What is mixed: every floating-point parameter **and buffer** by the rule above (BatchNorm's
running statistics included, so that ``l = 0`` is the trained network and ``l = 1`` the
initial one, exactly); integer buffers (BatchNorm's batch counter) are the trained end's.
NCFM's ConvNet uses GroupNorm, which has no buffers. Drawn networks are frozen and in eval
mode: a forward pass never changes the pool (BatchNorm in train mode would move the running
statistics, and the draw of step ``t`` would depend on what ran before it).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .. import distributed
from ..augment import make_augment
from ..distributed import class_seed
from ..models import get_model, train_model
from ..protocols import TrainRecipe
from ..utils import seeded
from .checkpoint import Checkpoint

__all__ = ["EmbedderPool", "EmbedderQueue"]

# the random streams of a pool (class_seed's third coordinate; units use 0-2)
_INIT_STREAM, _TRAIN_STREAM, _DRAW_STREAM = 10, 11, 12


def _train_pool_member(model: nn.Module, train, recipe: TrainRecipe, seed: int, device: torch.device) -> nn.Module:
    """Train one pool member by ``recipe`` (optimiser, schedule, augmentation, mixing and epochs:
    :func:`~ddmetrics.models.train_model`)."""
    augment = make_augment(recipe.augment, train.image_shape[0], train.image_shape[-1])
    return train_model(model, train, recipe, seed=seed, augment=augment, progress=False, device=device)


class EmbedderPool:
    """P trained embedders with their initial weights (see the module docstring).

    Parameters
    ----------
    size : int
        Number of networks P.
    arch : str, callable or sequence of them
        Their architecture: a registered model name or a builder ``fn(channels, num_classes, image_size)``;
        or one per member (a list of ``size`` of them: G-VBSM's backbones of several architectures).
    recipe : TrainRecipe
        How each is trained (its ``epochs`` are replaced by ``epochs``).
    epochs : int
        Training epochs of each network (a budget already applied).
    seed : int
        Seed of every random choice: member ``i`` is initialised and trained from its own
        seeds, and the draw of step ``t`` depends only on ``(seed, t)``.
    device : str or torch.device
        Where the networks are trained and live (initialised on the CPU, so the initial weights
        are the same on every device).

    Examples
    --------
    >>> pool = EmbedderPool(2, "convnet", TEACHER_RECIPES["ncfm"], epochs=1, seed=0).fit(train, 10)  # doctest: +SKIP
    >>> mixed, trained = pool.draw(step=0)  # doctest: +SKIP
    """

    def __init__(self, size: int, arch, recipe: TrainRecipe, epochs: int, seed: int,
                 device: Union[str, torch.device] = "cpu"):
        for name, value in (("size", size), ("epochs", epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(recipe, TrainRecipe):
            raise TypeError(f"recipe must be a ddmetrics.protocols.TrainRecipe, got {type(recipe).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if isinstance(arch, (list, tuple)):
            if len(arch) != size:
                raise ValueError(f"arch lists {len(arch)} architectures for a pool of size {size}: give one per member")
            if not all(isinstance(a, str) or callable(a) for a in arch):
                raise TypeError("each arch must be a model name or a builder")
            arch = list(arch)
        elif not (isinstance(arch, str) or callable(arch)):
            raise TypeError(f"arch must be a model name or a builder, got {type(arch).__name__}")
        self.size, self.arch, self.seed, self.device = size, arch, seed, torch.device(device)
        self.recipe = dataclasses.replace(recipe, epochs=epochs)
        self._init: List[Dict[str, Tensor]] = []
        self._trained: List[nn.Module] = []

    def fit(self, train, num_classes: int, checkpoint: Optional[Checkpoint] = None) -> "EmbedderPool":
        """Initialise and train the P networks on ``train`` (labelled images with ``image_shape``).

        Under a process group, rank 0 trains and every rank receives its weights (the initial
        weights are the same everywhere: drawn on the CPU from the same seeds). With a run's
        :class:`~ddmetrics.distill.checkpoint.Checkpoint`, member ``i`` trained by an earlier
        attempt of the run is read back (``network_<i>.pt``) instead of trained again, and one
        trained now is stored there.
        """
        channels, side = train.image_shape[0], train.image_shape[-1]
        rank, _ = distributed.world()
        self._init, self._trained = [], []
        for i in range(self.size):
            with seeded(class_seed(self.seed, i, _INIT_STREAM)):
                model = get_model(self.arch_of(i), channels, num_classes, side)
            model.to(self.device)
            self._init.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            stored = checkpoint is not None and checkpoint.load_network(i, model)
            if rank == 0 and not stored:
                _train_pool_member(model, train, self.recipe, class_seed(self.seed, i, _TRAIN_STREAM), self.device)
                if checkpoint is not None:
                    checkpoint.save_network(i, model)
            distributed.broadcast_module(model)  # rank 0's, read back or trained
            self._trained.append(_frozen(model))
        return self

    def __len__(self) -> int:
        return self.size

    def arch_of(self, member: int):
        """Member ``member``'s architecture (the one ``arch``, or its entry of the list)."""
        return self.arch[member] if isinstance(self.arch, list) else self.arch

    def _check_fitted(self) -> None:
        if not self._trained:
            raise RuntimeError("the pool is not trained yet: call fit(train, num_classes) first")

    def initial(self, member: int) -> Dict[str, Tensor]:
        """Member ``member``'s initial ``state_dict`` (before training)."""
        self._check_fitted()
        return self._init[member]

    def trained(self, member: int) -> nn.Module:
        """Member ``member``, trained (frozen, eval mode; shared: do not modify)."""
        self._check_fitted()
        return self._trained[member]

    def choice(self, step: int) -> Tuple[int, float]:
        """The member and mixing weight ``l`` drawn at ``step``: uniform over the members and
        U(0, 1), from a generator of ``(seed, step)`` only."""
        gen = torch.Generator(device="cpu").manual_seed(class_seed(self.seed, step, _DRAW_STREAM))
        member = int(torch.randint(self.size, (1,), generator=gen, device="cpu"))
        return member, float(torch.rand((), generator=gen, device="cpu"))

    def mixed(self, member: int, l: float, out: Optional[nn.Module] = None) -> nn.Module:
        """``l``·initial + (1 − ``l``)·trained weights of ``member`` (frozen, eval mode).

        Written into ``out`` (a network an earlier call returned) when given, which skips copying
        the module; else into a new copy of the member.
        """
        trained = self.trained(member)
        if out is not None and any(out is m for m in self._trained):
            raise ValueError("out is a trained member of the pool: mixing into it would change the pool")
        net = copy.deepcopy(trained) if out is None else out
        init, end = self._init[member], trained.state_dict()
        with torch.no_grad():
            for name, value in net.state_dict().items():  # views of net's own tensors
                value.copy_(l * init[name] + (1 - l) * end[name] if value.is_floating_point() else end[name])
        return net

    def draw(self, step: int, interpolate: bool = True,
             reuse: Optional[nn.Module] = None) -> Tuple[nn.Module, nn.Module]:
        """The networks of ``step``: ``(embedder, trained)``.

        ``embedder`` is the drawn member mixed with its initialisation (``interpolate``; written
        into ``reuse``, an earlier mixed draw, when given) or the trained member itself;
        ``trained`` is the same member's trained end (NCFM's calibration network). Both depend
        only on ``(seed, step)``.
        """
        self._check_fitted()
        member, l = self.choice(step)
        trained = self._trained[member]
        return (self.mixed(member, l, out=reuse) if interpolate else trained), trained


def _frozen(model: nn.Module) -> nn.Module:
    for prm in model.parameters():
        prm.requires_grad_(False)
    return model.eval()


# the random streams of a queue (class_seed's third coordinate, beside the pool's)
_QUEUE_INIT_STREAM, _QUEUE_DRAW_STREAM = 13, 14


class EmbedderQueue:
    r"""IDM's queue of embedders trained while the images are: a first-in first-out list of networks,
    each trained a few SGD steps on real batches now and then, one drawn per step.

    The schedule of ``IDM_cifar10.py`` (uitrbn/IDM): the queue starts with ``start`` random networks;
    at every step :math:`t` with :math:`t \bmod \text{push\_every} = 0` a new random network joins
    it (the oldest leaves at ``capacity``); the step's embedder is a member drawn uniformly; after the
    step, ``train_nets`` members drawn uniformly (without replacement) each take ``train_steps``
    SGD steps (lr 0.01, momentum 0.9, weight decay 5e-4) of cross-entropy on ``batch`` real images of
    any class. Each member keeps its running training accuracy (percent of its training batches
    classified right since it joined, 0 before any), which weighs IDM's cross-entropy term.

    Members are built on the CPU from seeds of ``(seed, k)`` for the ``k``-th network ever made
    (the same weights on every device) and drawn from the queue's own generator, so a run depends
    only on its seed; :meth:`state_dict` holds everything (weights, optimiser states, accuracies,
    the generator), for checkpoints.
    """

    def __init__(self, arch, channels: int, num_classes: int, size: int, seed: int,
                 device: Union[str, torch.device] = "cpu", capacity: int = 100, push_every: int = 30,
                 train_steps: int = 10, start: int = 3, train_nets: int = 2, batch: int = 256, lr: float = 0.01):
        for name, value in (("capacity", capacity), ("push_every", push_every), ("start", start),
                            ("train_nets", train_nets), ("batch", batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(train_steps, bool) or not isinstance(train_steps, int) or train_steps < 0:
            raise ValueError(f"train_steps must be a non-negative int, got {train_steps!r}")
        self.arch, self.shape, self.seed, self.device = arch, (channels, num_classes, size), seed, torch.device(device)
        self.capacity, self.push_every, self.train_steps = capacity, push_every, train_steps
        self.train_nets, self.batch, self.lr = train_nets, batch, lr
        self.gen = torch.Generator(device="cpu").manual_seed(class_seed(seed, 0, _QUEUE_DRAW_STREAM))
        self.made = 0
        self.nets: List[nn.Module] = []
        self.optimizers: List[torch.optim.Optimizer] = []
        self.hits: List[List[int]] = []  # per member: [right, seen] over its training batches
        for _ in range(start):
            self._push()

    def _push(self) -> None:
        channels, num_classes, size = self.shape
        with seeded(class_seed(self.seed, self.made, _QUEUE_INIT_STREAM)):
            net = get_model(self.arch, channels, num_classes, size)
        net.to(self.device)
        self.made += 1
        if len(self.nets) == self.capacity:
            del self.nets[0], self.optimizers[0], self.hits[0]
        self.nets.append(net)
        self.optimizers.append(torch.optim.SGD(net.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4))
        self.hits.append([0, 0])

    def __len__(self) -> int:
        return len(self.nets)

    def accuracy(self, member: int) -> float:
        """Member ``member``'s running training accuracy in percent (0 before any training)."""
        right, seen = self.hits[member]
        return 100.0 * right / seen if seen else 0.0

    def draw(self, step: int) -> Tuple[nn.Module, float]:
        """The embedder of ``step`` and its accuracy: first the step's push (when due), then a
        member drawn uniformly. Its parameters take no gradient here (only the images do)."""
        if step % self.push_every == 0:
            self._push()
        member = int(torch.randint(len(self.nets), (1,), generator=self.gen, device="cpu"))
        net = self.nets[member].eval()
        for prm in net.parameters():
            prm.requires_grad_(False)
        return net, self.accuracy(member)

    def train(self, data) -> None:
        """``train_nets`` members, drawn without replacement, each take ``train_steps`` SGD steps on
        ``batch`` real images of ``data`` (any class; ``load`` and ``labels``)."""
        order = torch.randperm(len(self.nets), generator=self.gen, device="cpu")[:self.train_nets].tolist()
        for member in order:
            net, opt, hits = self.nets[member], self.optimizers[member], self.hits[member]
            net.train()
            for prm in net.parameters():
                prm.requires_grad_(True)
            for _ in range(self.train_steps):
                idx = torch.randperm(len(data), generator=self.gen, device="cpu")[:self.batch]
                images, labels = data.load(idx).to(self.device), data.labels[idx].to(self.device)
                logits = net(images)
                loss = nn.functional.cross_entropy(logits, labels)
                opt.zero_grad()
                loss.backward()
                opt.step()
                hits[0] += int((logits.argmax(1) == labels).sum())
                hits[1] += len(labels)

    def state_dict(self) -> Dict[str, object]:
        """Everything the queue's future depends on (tensors, ints and lists: loadable weights-only), a
        copy: training the queue afterwards does not change it (an optimiser's state_dict holds its live
        momentum buffers, which ``load_state_dict`` would share)."""
        return copy.deepcopy({"made": self.made, "generator": self.gen.get_state(),
                              "hits": [list(h) for h in self.hits], "nets": [n.state_dict() for n in self.nets],
                              "optimizers": [o.state_dict() for o in self.optimizers]})

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore :meth:`state_dict`'s queue (members rebuilt, then their weights and optimisers loaded)."""
        self.nets, self.optimizers, self.hits = [], [], []
        self.made = 0
        for _ in state["nets"]:
            self._push()
        for net, opt, w, o in zip(self.nets, self.optimizers, state["nets"], state["optimizers"]):
            net.load_state_dict(w)
            opt.load_state_dict(o)
        self.made = int(state["made"])
        self.hits = [list(h) for h in state["hits"]]
        self.gen.set_state(state["generator"])
