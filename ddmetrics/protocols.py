"""Training recipes and evaluation protocols, as data.

A :class:`TrainRecipe` says how a network is trained from labelled images: optimiser, learning
rate, schedule, batch, augmentation, mixing, epochs. A teacher is trained by a recipe of
:data:`TEACHER_RECIPES`; a student is trained on a synthetic set by an evaluation
:class:`Protocol` of :data:`PROTOCOLS` — a recipe plus what the student learns from (hard
labels, or the teacher's soft labels at a temperature) and the student's architecture.

Each entry is the recipe of a released code base, named after it, with the file it comes from;
``ours_*`` are ddmetrics' own (cheaper) recipes of earlier versions, kept by name. Everything is
frozen data: an override is a :func:`dataclasses.replace`.

Augmentation specs (``augment``) are strings resolved by :func:`ddmetrics.augment.make_augment`
for the images' channel count and size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

__all__ = ["TrainRecipe", "Protocol", "PROTOCOLS", "TEACHER_RECIPES", "OPTIMIZERS", "SCHEDULES", "MIXES",
           "get_protocol", "get_teacher_recipe", "SOFT_LOSSES", "MSE_CE_WEIGHT"]

#: the optimisers a recipe may name (see :func:`ddmetrics.models.train_model`)
OPTIMIZERS: Tuple[str, ...] = ("sgd", "adamw")
#: learning-rate schedules: ``step_half`` (×0.1 at half the epochs, momentum kept), ``step_half_reset``
#: (the same, the optimiser rebuilt at the step as DM's code does), ``multistep`` (×``gamma`` at each
#: fraction of ``milestones``), ``cosine`` (per epoch, to 0, no warm-up), ``constant``
SCHEDULES: Tuple[str, ...] = ("step_half", "step_half_reset", "multistep", "cosine", "constant")
#: batch mixing: none, CutMix or Mixup with λ ~ Beta(``mix_alpha``, ``mix_alpha``) on a fraction ``mix_prob`` of batches
MIXES: Tuple[str, ...] = ("none", "cutmix", "mixup")


@dataclass(frozen=True)
class TrainRecipe:
    """How a network is trained from images (hard or soft targets alike).

    Attributes
    ----------
    optimizer : {"sgd", "adamw"}
        SGD with ``momentum`` (and ``nesterov=False``), or AdamW (betas 0.9, 0.999).
    lr, momentum, weight_decay : float
        Optimiser settings.
    decay_norm_and_bias : bool
        Whether BatchNorm/GroupNorm parameters and biases are weight-decayed too (``False``: only
        weights of dimension > 1, as timm's and SRe²L's ``train_FKD`` parameter groups).
    batch_size : int
        Images per step (``min(batch_size, n)`` for a smaller set).
    schedule : str
        One of :data:`SCHEDULES`.
    milestones, gamma : tuple of float, float
        For ``multistep``: fractions of the epochs where the rate is multiplied by ``gamma``.
    augment : str
        Per-image augmentation spec (:func:`ddmetrics.augment.make_augment`), ``"none"`` for none.
    mix, mix_alpha, mix_prob : str, float, float
        One of :data:`MIXES`, its Beta parameter and the fraction of batches mixed.
    epochs : int
        Passes over the training images.
    """

    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = True
    batch_size: int = 256
    schedule: str = "step_half"
    milestones: Tuple[float, ...] = ()
    gamma: float = 0.1
    augment: str = "auto"
    mix: str = "none"
    mix_alpha: float = 1.0
    mix_prob: float = 1.0
    epochs: int = 1000


@dataclass(frozen=True)
class Protocol:
    r"""An evaluation protocol: train a fresh ``model`` on the synthetic set by ``recipe``.

    Attributes
    ----------
    labels : {"hard", "soft"}
        ``"hard"``: cross-entropy with the set's labels (weighted by its sample weights);
        ``"soft"``: KL divergence to the teacher's softened logits on the same augmented (and
        mixed) view, computed on the fly.
    model : str
        The student architecture (a registered model name).
    recipe : TrainRecipe
        Its training.
    temperature : float
        Softmax temperature of the soft labels (``None`` for hard labels).
    t_squared : bool
        Multiply the KL term by T² (Hinton et al.; ``False`` in SRe²L / WMDD / RDED's code).
    teacher_mode : {"eval", "train"}
        The mode the teacher labels in (``"train"`` reproduces SRe²L's CIFAR relabelling, which
        never calls ``eval()``; run on a copy, so the caller's teacher is unchanged).
    weights : {"set", "batch", "none"}
        How the synthetic set's sample weights enter the loss: normalised to mean 1 over the set,
        over each batch (WMDD's ``train_FKD``), or ignored.
    source : str
        Where the protocol comes from (released file), for reports and the fidelity table.
    soft_loss : {"kl", "mse_ce"}
        With soft labels: ``"kl"``, the KL divergence at ``temperature`` (SRe²L, WMDD); ``"mse_ce"``,
        G-VBSM's ``mse_gt``: :math:`\frac1C\|s - t\|_2^2 + 0.15\,\mathrm{CE}(s, y)` per image, the raw
        logits :math:`s` of the student against the teacher's :math:`t` plus the cross-entropy with the
        view's un-mixed hard label :math:`y` (no temperature: ``temperature`` is ``None``).
    """

    labels: str
    model: str
    recipe: TrainRecipe
    temperature: float = None  # type: ignore[assignment]
    t_squared: bool = False
    teacher_mode: str = "eval"
    weights: str = "set"
    source: str = ""
    soft_loss: str = "kl"


#: the soft-label losses of a protocol (see :class:`Protocol`)
SOFT_LOSSES: Tuple[str, ...] = ("kl", "mse_ce")
#: G-VBSM's weight of the hard-label cross-entropy in ``soft_loss="mse_ce"`` (train.sh ``--ce-weight 0.15``)
MSE_CE_WEIGHT: float = 0.15


#: the named evaluation protocols (students trained on a synthetic set)
PROTOCOLS: Dict[str, Protocol] = {
    # DM's evaluate_synset (VICO-UoE/DatasetCondensation utils.py:337-361): ConvNet, SGD lr 0.01, momentum 0.9,
    # wd 5e-4, batch 256, 1000 epochs, lr x0.1 at half with the optimiser rebuilt, DSA per image with the
    # synthesis strategy (flip included)
    "hard": Protocol(labels="hard", model="convnet", source="DatasetCondensation utils.py:337 (DM, DSA)",
                     recipe=TrainRecipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=256,
                                        schedule="step_half_reset", augment="color_crop_cutout_flip_scale_rotate",
                                        epochs=1000)),
    # DataDAM's evaluate_synset (DataDistillation/DataDAM utils.py:423-447, main_DataDAM.py:26-31): DM's, with a
    # batch of 64 and 1800 epochs (lr x0.1 after half, the optimiser rebuilt)
    "datadam": Protocol(labels="hard", model="convnet", source="DataDAM utils.py:423 (evaluate_synset)",
                        recipe=TrainRecipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=64,
                                           schedule="step_half_reset", augment="color_crop_cutout_flip_scale_rotate",
                                           epochs=1800)),
    # CAFE's evaluate_synset (kaiwang960112/CAFE utils.py:305-329, DC's) as its CIFAR-10 command runs it (method DC,
    # no augmentation: 600 epochs, distill.py:186-193): DM's recipe without augmentation and with 600 epochs
    "cafe": Protocol(labels="hard", model="convnet", source="CAFE utils.py:305 (evaluate_synset), distill.py:186-193",
                     recipe=TrainRecipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=256,
                                        schedule="step_half_reset", augment="none", epochs=600)),
    # SRe²L / WMDD / RDED's train_FKD: teacher soft labels of RandomResizedCrop + flip views with CutMix on
    # every batch, KL (batchmean) at T = 20 without T², AdamW lr 1e-3 wd 0.01 (not on norms and biases),
    # cosine per epoch, 300 epochs, batch 100, ResNet-18 (WMDD train/train_FKD.py, run.sh)
    "soft": Protocol(labels="soft", model="resnet18", temperature=20.0, t_squared=False, weights="batch",
                     source="WMDD train/train_FKD.py (SRe2L validate/train_FKD.py)",
                     recipe=TrainRecipe(optimizer="adamw", lr=1e-3, momentum=0.9, weight_decay=0.01,
                                        decay_norm_and_bias=False, batch_size=100, schedule="cosine",
                                        augment="rrc_flip", mix="cutmix", mix_alpha=1.0, mix_prob=1.0, epochs=300)),
    # G-VBSM's CIFAR-10 relabel + train (Branch_CIFAR_10/relabel/generate_soft_label_with_db.py, train/train_FKD.py,
    # relabel.sh, train.sh): the mean raw logits of the teachers (the Distiller hands the ensemble) on RandomResizedCrop
    # + flip views with CutMix on every batch; MSE(student logits, ensemble logits) + 0.15 CE(hard label); AdamW lr
    # 1e-3 wd 0 (no --sgd in the CIFAR-10 train.sh), cosine per epoch, batch 100, 1000 epochs, ResNet-18
    "g_vbsm": Protocol(labels="soft", model="resnet18", temperature=None,  # type: ignore[arg-type]
                       soft_loss="mse_ce", weights="none",
                       source="G_VBSM Branch_CIFAR_10 relabel/generate_soft_label_with_db.py, train/train_FKD.py",
                       recipe=TrainRecipe(optimizer="adamw", lr=1e-3, momentum=0.9, weight_decay=0.0,
                                          decay_norm_and_bias=True, batch_size=100, schedule="cosine",
                                          augment="rrc_flip", mix="cutmix", mix_alpha=1.0, mix_prob=1.0,
                                          epochs=1000)),
    # SRe²L's small-data relabelling (SRe2L/*small_dataset/relabel_cifar.py): RandomCrop(pad 4) + flip, Mixup
    # Beta(0.8, 0.8) on every batch, the teacher in train mode, T = 30 without T², AdamW 1e-3 wd 0.01 on
    # every parameter, cosine per epoch, 400 epochs, batch 128
    "sre2l_small": Protocol(labels="soft", model="resnet18", temperature=30.0, t_squared=False, teacher_mode="train",
                            weights="none", source="SRe2L/*small_dataset/relabel_cifar.py, relabel_cifar.sh",
                            recipe=TrainRecipe(optimizer="adamw", lr=1e-3, momentum=0.9, weight_decay=0.01,
                                               decay_norm_and_bias=True, batch_size=128, schedule="cosine",
                                               augment="crop_pad_flip", mix="mixup", mix_alpha=0.8, mix_prob=1.0,
                                               epochs=400)),
    # NCFM's evaluation (gszfwsb/NCFM condenser/evaluate.py, config/ipc*/cifar10.yaml): ConvNet, AdamW lr 1e-3
    # (torch's default wd 0.01), batch 128, 2000 epochs, lr x0.5 at 20/40/60/80 %, DSA per image + CutMix
    # (p 0.5), hard labels; its augmentation is IDC's DiffAug per image (colour and flip always, one of crop /
    # scale / rotate; cutout dropped because CutMix is on: utils/init_script.py:160-174)
    "ncfm": Protocol(labels="hard", model="convnet", source="NCFM condenser/evaluate.py, config/ipc10/cifar10.yaml",
                     recipe=TrainRecipe(optimizer="adamw", lr=1e-3, momentum=0.9, weight_decay=0.01,
                                        batch_size=128, schedule="multistep", milestones=(0.2, 0.4, 0.6, 0.8),
                                        gamma=0.5, augment="idc:color_crop_flip_scale_rotate", mix="cutmix",
                                        mix_alpha=1.0, mix_prob=0.5, epochs=2000)),
    # ddmetrics' earlier protocols (before issue 24), kept by name: SGD lr 0.05 (chosen on the digits
    # validation split), x0.1 at half, DSA without flip on one channel, 1000 epochs for sets under 50 images
    # else 300 SGD steps' worth (epochs=0 means that rule); soft: T = 4 with T²
    "ours_hard": Protocol(labels="hard", model="convnet", source="ddmetrics before issue 24",
                          recipe=TrainRecipe(optimizer="sgd", lr=0.05, batch_size=256, schedule="step_half",
                                             augment="auto", epochs=0)),
    "ours_soft": Protocol(labels="soft", model="convnet", temperature=4.0, t_squared=True, weights="set",
                          source="ddmetrics before issue 24",
                          recipe=TrainRecipe(optimizer="sgd", lr=0.05, batch_size=256, schedule="step_half",
                                             augment="auto", epochs=0)),
}

#: the named teacher-training recipes (hard labels on the real training set)
TEACHER_RECIPES: Dict[str, TrainRecipe] = {
    # WMDD's pretrain (run.sh -p, pretrain/pretrain.py): SGD lr 0.025, momentum 0.9, wd 1e-4, batch 32,
    # cosine, RandomResizedCrop + flip, 50 epochs, the last epoch kept
    "wmdd": TrainRecipe(optimizer="sgd", lr=0.025, momentum=0.9, weight_decay=1e-4, batch_size=32, schedule="cosine",
                        augment="rrc_flip", epochs=50),
    # SRe²L's squeeze for small data (SRe2L/*small_dataset/squeeze_cifar.py, .sh): SGD lr 0.1, momentum 0.9,
    # wd 5e-4, batch 128, cosine, RandomCrop(pad 4) + flip, 200 epochs
    "sre2l": TrainRecipe(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=128, schedule="cosine",
                         augment="crop_pad_flip", epochs=200),
    # NCFM's model pool (pretrain/pretrain_script.py): SGD lr 0.01, momentum 0.9, wd 5e-4, batch 128, x0.2 at
    # 2/3 and 5/6, IDC's DiffAug color + crop per image and CutMix (p 0.5), 60 epochs
    "ncfm": TrainRecipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=128, schedule="multistep",
                        milestones=(2 / 3, 5 / 6), gamma=0.2, augment="idc:color_crop", mix="cutmix", mix_alpha=1.0,
                        mix_prob=0.5, epochs=60),
    # G-VBSM's squeeze (Branch_CIFAR_10/squeeze/train.py, squeeze.sh): SGD lr 0.05 constant, momentum 0.9, wd 0,
    # batch 64, RandomCrop(pad 4) + flip, plain CE, 5 epochs (the CIFAR-10 script's --train_epochs 5)
    "g_vbsm": TrainRecipe(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.0, batch_size=64,
                          schedule="constant", augment="crop_pad_flip", epochs=5),
    # ddmetrics before issue 24: SGD lr 0.01, x0.1 at half, DSA, batch 256, 30 epochs
    "ours": TrainRecipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=256,
                        schedule="step_half", augment="auto", epochs=30),
}


def get_protocol(name: str) -> Protocol:
    """The protocol ``name`` of :data:`PROTOCOLS`; a ``ValueError`` listing the names otherwise."""
    if not isinstance(name, str) or name not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}; valid protocols: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]


def get_teacher_recipe(name: str) -> TrainRecipe:
    """The teacher recipe ``name`` of :data:`TEACHER_RECIPES`; a ``ValueError`` listing the names otherwise."""
    if not isinstance(name, str) or name not in TEACHER_RECIPES:
        raise ValueError(f"unknown teacher recipe {name!r}; valid recipes: {', '.join(sorted(TEACHER_RECIPES))}")
    return TEACHER_RECIPES[name]
