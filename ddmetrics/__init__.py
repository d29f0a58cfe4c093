"""ddmetrics: pluggable distribution distances for dataset distillation.

>>> import ddmetrics as ddm
>>> loss = ddm.get_loss("wasserstein")           # or "sliced", "sinkhorn", "krdual", "mmd"
>>> value = loss(x, y)                           # doctest: +SKIP
>>> syn = ddm.Distiller(method="wmdd", loss="sliced", ipc=10, seed=0).fit(train)  # doctest: +SKIP
"""
from . import data, losses, models
from .losses import Barycenter
from .distill import Distiller
from .evaluate import EvalReport, evaluate
from .losses import DistributionLoss, available_losses, get_loss, register_loss
from .synset import SyntheticSet

__version__ = "0.1.0"
__all__ = ["data", "losses", "models", "Barycenter", "Distiller", "EvalReport", "evaluate", "DistributionLoss",
           "available_losses", "get_loss", "register_loss", "SyntheticSet"]
