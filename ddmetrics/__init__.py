"""ddmetrics: pluggable distribution distances for dataset distillation.

>>> import ddmetrics as ddm
>>> loss = ddm.get_loss("wasserstein")           # or "sliced", "sinkhorn", "krdual", "mmd"
>>> value = loss(x, y)                           # doctest: +SKIP
"""
from . import losses
from .barycenter import Barycenter
from .losses import DistributionLoss, available_losses, get_loss, register_loss

__version__ = "0.1.0"
__all__ = ["losses", "Barycenter", "DistributionLoss", "available_losses", "get_loss", "register_loss"]
