"""ResNet-18 and ResNetAP-10 (average-pooling down-sampling), written for small images."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor, nn

from ._convnet import ImageSize, check_dims, make_norm

__all__ = ["BasicBlock", "ResNet", "ResNet18", "ResNetAP10"]


def _conv3(in_c: int, out_c: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_c, out_c, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection.

    ``downsample`` halves the spatial size, either with a stride-2 first convolution
    (``avgpool=False``) or with a 2x2 average pool after it (``avgpool=True``, ResNetAP). The
    shortcut is a 1x1 convolution + norm (preceded by the same average pool) when the shape changes.
    """

    def __init__(self, in_c: int, out_c: int, downsample: bool, norm: str, avgpool: bool) -> None:
        super().__init__()
        stride = 2 if downsample and not avgpool else 1
        self.conv1 = _conv3(in_c, out_c, stride)
        self.pool = nn.AvgPool2d(2, 2) if downsample and avgpool else nn.Identity()
        self.norm1 = make_norm(norm, out_c)
        self.conv2 = _conv3(out_c, out_c)
        self.norm2 = make_norm(norm, out_c)
        self.relu = nn.ReLU(inplace=True)
        if downsample or in_c != out_c:
            pre = [nn.AvgPool2d(2, 2)] if downsample and avgpool else []
            self.shortcut = nn.Sequential(*pre, nn.Conv2d(in_c, out_c, 1, stride=stride, bias=False),
                                          make_norm(norm, out_c))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.pool(self.conv1(x))))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A four-stage ResNet of :class:`BasicBlock` s with global average pooling.

    For images of side <= 32 the stem is a 3x3 convolution without max-pool; larger images get a
    7x7 stride-2 stem with a 3x3 stride-2 max-pool (average pools for the AP variant). Stages 2-4
    halve the spatial size unless it is already 1, so 8x8 inputs work.

    Parameters
    ----------
    channels, num_classes : int
        Input channels, output classes.
    image_size : int or (int, int)
        Input side length (or height, width).
    blocks : sequence of 4 ints
        Blocks per stage.
    norm : {"batch", "instance", "layer", "none"}
        Normalisation layers.
    width : int
        Channels of the first stage (doubled at each later stage).
    avgpool : bool
        Replace strided down-sampling by 2x2 average pooling (ResNetAP).

    Attributes
    ----------
    feature_dim : int
        ``8 * width``.
    """

    def __init__(self, channels: int, num_classes: int, image_size: ImageSize, blocks: Sequence[int] = (2, 2, 2, 2),
                 norm: str = "batch", width: int = 64, avgpool: bool = False) -> None:
        super().__init__()
        h, w = check_dims(channels, num_classes, image_size)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        if len(blocks) != 4 or any(int(b) < 1 for b in blocks):
            raise ValueError(f"blocks must be four positive ints, got {blocks!r}")
        make_norm(norm, 1)  # validates ``norm`` early
        if max(h, w) <= 32:
            stem: List[nn.Module] = [_conv3(channels, width), make_norm(norm, width), nn.ReLU(inplace=True)]
        elif avgpool:
            stem = [nn.Conv2d(channels, width, 7, padding=3, bias=False), nn.AvgPool2d(2, 2),
                    make_norm(norm, width), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2)]
            h, w = h // 4, w // 4
        else:
            stem = [nn.Conv2d(channels, width, 7, stride=2, padding=3, bias=False), make_norm(norm, width),
                    nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
            h, w = (h - 1) // 2 // 2 + 1, (w - 1) // 2 // 2 + 1
        self.stem = nn.Sequential(*stem)
        stages = []
        in_c = width
        for i, n in enumerate(blocks):
            out_c = width * 2 ** i
            layers = []
            for j in range(int(n)):
                down = i > 0 and j == 0 and min(h, w) >= 2
                layers.append(BasicBlock(in_c, out_c, down, norm, avgpool))
                if down:  # avg pool floors, a stride-2 3x3 conv (padding 1) rounds up
                    h, w = (h // 2, w // 2) if avgpool else ((h + 1) // 2, (w + 1) // 2)
                in_c = out_c
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.feature_dim = in_c
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Globally average-pooled features, shape ``(N, feature_dim)``."""
        return torch.flatten(torch.mean(self.stages(self.stem(x)), dim=(2, 3)), 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape ``(N, num_classes)``."""
        return self.classifier(self.embed(x))


class ResNet18(ResNet):
    """ResNet-18: BasicBlocks [2, 2, 2, 2], strided down-sampling. See :class:`ResNet`."""

    def __init__(self, channels: int, num_classes: int, image_size: ImageSize, norm: str = "batch",
                 width: int = 64) -> None:
        super().__init__(channels, num_classes, image_size, (2, 2, 2, 2), norm=norm, width=width, avgpool=False)


class ResNetAP10(ResNet):
    """ResNetAP-10 (IDC/M3D): BasicBlocks [1, 1, 1, 1], 2x2 average pools instead of strides."""

    def __init__(self, channels: int, num_classes: int, image_size: ImageSize, norm: str = "batch",
                 width: int = 64) -> None:
        super().__init__(channels, num_classes, image_size, (1, 1, 1, 1), norm=norm, width=width, avgpool=True)
