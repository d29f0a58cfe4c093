"""Distribution losses: one interface, one module per distance family, one registry.

>>> import ddmetrics as ddm
>>> loss = ddm.get_loss("sinkhorn", blur=0.05)
>>> value = loss(x, y)            # doctest: +SKIP
>>> bary = ddm.get_loss("wasserstein").barycenter(x, m=10)   # doctest: +SKIP
"""
from ._validate import check_inputs, check_weight_vector, check_weights
from ._barycenter import Barycenter, barycenter_objective, exact_barycenter, gradient_flow_barycenter, init_support
from .base import (DistributionLoss, UnknownSettingError, available_losses, get_loss, loss_class, missing_losses,
                   register_loss)
from ._exact import ExactOT
from ._sliced import SlicedWasserstein
from ._sinkhorn import Sinkhorn
from ._krdual import KRDual
from ._mmd import MMD
from ._energy import EnergyDistance
from ._gaussian import GaussianW2
from ._ncfd import NCFD

__all__ = [
    "DistributionLoss", "available_losses", "check_inputs", "check_weight_vector", "check_weights", "get_loss",
    "loss_class", "missing_losses", "register_loss", "UnknownSettingError", "ExactOT", "SlicedWasserstein",
    "Sinkhorn", "KRDual", "MMD", "EnergyDistance", "GaussianW2", "NCFD",
    "Barycenter", "barycenter_objective", "exact_barycenter", "gradient_flow_barycenter", "init_support",
]
