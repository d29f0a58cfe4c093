"""ConvNet-D (the dataset-condensation benchmark network) and shared layer factories."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["ConvNet", "make_norm", "NORMS", "ACTIVATIONS", "POOLS"]

ImageSize = Union[int, Tuple[int, int]]

# norm name -> factory(channels). "instance" is GroupNorm with one group per channel (the DM/DC
# convention: instance normalisation with a learned per-channel affine).
NORMS: Dict[str, Callable[[int], nn.Module]] = {
    "instance": lambda c: nn.GroupNorm(c, c, affine=True),
    "batch": lambda c: nn.BatchNorm2d(c),
    "layer": lambda c: nn.GroupNorm(1, c, affine=True),
    "none": lambda c: nn.Identity(),
}
ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leakyrelu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "gelu": lambda: nn.GELU(),
    "sigmoid": lambda: nn.Sigmoid(),
}
POOLS: Dict[str, Callable[[], nn.Module]] = {
    "avg": lambda: nn.AvgPool2d(2, 2),
    "max": lambda: nn.MaxPool2d(2, 2),
}


def _choice(table: Dict[str, Callable], value: str, name: str) -> Callable:
    if not isinstance(value, str) or value not in table:
        raise ValueError(f"{name} must be one of {sorted(table)}, got {value!r}")
    return table[value]


def make_norm(norm: str, channels: int) -> nn.Module:
    """Normalisation layer ``norm`` ("instance", "batch", "layer", "none") for ``channels``."""
    return _choice(NORMS, norm, "norm")(channels)


def check_dims(channels: int, num_classes: int, image_size: ImageSize) -> Tuple[int, int]:
    """Validate the common model arguments and return ``(height, width)``."""
    for name, value in (("channels", channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in hw):
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return hw  # type: ignore[return-value]


class ConvNet(nn.Module):
    """ConvNet-D: ``depth`` blocks of conv3x3 -> norm -> activation -> 2x2 pooling, then a linear head.

    Pooling is skipped in a block when it would shrink the spatial size below 1 (e.g. an 8x8
    input with depth 4), so any ``image_size`` works.

    One-channel 28-px images (MNIST) are treated as DC/DSA/DM's ConvNet treats them: the first
    convolution is padded by 3 instead of 1, so the 28-px input becomes 32 px after it and the
    network (and its 2048-d features at width 128, depth 3) is the one of 3×32×32 input
    (VICO-UoE/DatasetCondensation ``networks.py:95-99``, where ``_make_layers`` takes a 28-px
    input as 32 px and pads the first convolution by 3 for one channel). ``first_padding``
    overrides that rule (``first_padding=1``: the plain ConvNet, 1152-d features on MNIST, as
    ddmetrics before issue 24). The release pads by 3 for every one-channel input; only 28 px is
    matched here, since that is the only one-channel size the release runs.

    Parameters
    ----------
    channels : int
        Input channels.
    num_classes : int
        Output classes.
    image_size : int or (int, int)
        Input side length (or height, width).
    width : int
        Channels of every conv layer.
    depth : int
        Number of blocks.
    norm : {"instance", "batch", "layer", "none"}
        "instance" is ``GroupNorm(width, width, affine=True)``.
    act : {"relu", "leakyrelu", "gelu", "sigmoid"}
        Activation.
    pool : {"avg", "max", "none"}
        Down-sampling.
    first_padding : int, optional
        Zero padding of the first convolution; ``None`` (default): 3 for one-channel 28×28
        input (DC/DM's MNIST ConvNet, see above), else 1.

    Attributes
    ----------
    feature_dim : int
        Size of :meth:`embed`'s output, ``width * h * w`` after the last block.
    """

    def __init__(self, channels: int, num_classes: int, image_size: ImageSize, width: int = 128, depth: int = 3,
                 norm: str = "instance", act: str = "relu", pool: str = "avg",
                 first_padding: Optional[int] = None) -> None:
        super().__init__()
        h, w = check_dims(channels, num_classes, image_size)
        for name, value in (("width", width), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if first_padding is None:
            first_padding = 3 if channels == 1 and (h, w) == (28, 28) else 1
        if isinstance(first_padding, bool) or not isinstance(first_padding, int) or not 0 <= first_padding:
            raise ValueError(f"first_padding must be None or a non-negative int, got {first_padding!r}")
        if min(h, w) + 2 * first_padding - 2 < 1:
            raise ValueError(f"first_padding={first_padding} leaves no pixel of a {h}x{w} image after the first 3x3 conv")
        norm_f = _choice(NORMS, norm, "norm")
        act_f = _choice(ACTIVATIONS, act, "act")
        pool_f = None if pool == "none" else _choice(POOLS, pool, "pool")
        layers = []
        in_c = channels
        for block in range(depth):
            pad = first_padding if block == 0 else 1
            layers += [nn.Conv2d(in_c, width, 3, padding=pad), norm_f(width), act_f()]
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            if pool_f is not None and h // 2 >= 1 and w // 2 >= 1:
                layers.append(pool_f())
                h, w = h // 2, w // 2
            in_c = width
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Features before the classifier, shape ``(N, feature_dim)``."""
        return torch.flatten(self.features(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape ``(N, num_classes)``."""
        return self.classifier(self.embed(x))
