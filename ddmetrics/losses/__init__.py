"""Distribution losses: one interface, one module per distance family, one registry.

>>> import ddmetrics as ddm
>>> loss = ddm.get_loss("sinkhorn", blur=0.05)
>>> value = loss(x, y)            # doctest: +SKIP
"""
from .base import DistributionLoss, available_losses, check_inputs, check_weights, get_loss, register_loss
from ._exact import ExactOT
from ._sliced import SlicedWasserstein
from ._sinkhorn import Sinkhorn
from ._krdual import KRDual
from ._mmd import MMD

__all__ = [
    "DistributionLoss", "available_losses", "check_inputs", "check_weights", "get_loss", "register_loss",
    "ExactOT", "SlicedWasserstein", "Sinkhorn", "KRDual", "MMD",
]
