"""ResNet-18 and ResNetAP-10 (average-pooling down-sampling), written for small images, under
torchvision's module names."""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._convnet import ImageSize, check_dims, make_norm

__all__ = ["BasicBlock", "ResNet", "ResNet18", "ResNetAP10", "STEM_KERNELS", "renamed_legacy_keys"]

#: the keys ddmetrics' ResNets had before they took torchvision's names (issue 25), and their
#: new names; the stem's norm was ``stem.1`` (``stem.2`` in ResNetAP's large stem, after a pool)
_LEGACY_KEYS = [(re.compile(p), r) for p, r in (
    (r"^stem\.0\.", "conv1."), (r"^stem\.[12]\.", "bn1."),
    (r"^stages\.(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}."),
    (r"\.norm([12])\.", r".bn\1."), (r"\.shortcut\.", ".downsample."), (r"^classifier\.", "fc."))]


def renamed_legacy_keys(state: Mapping[str, Any]) -> Dict[str, Any]:
    """``state`` under torchvision's names when it has the keys ddmetrics' ResNets had before
    (``stem.*``, ``stages.*``, ``classifier.*``: a ``teacher.pt`` of an older run); else as it is."""
    if not any(k.startswith("stages.") for k in state):
        return dict(state)
    out = {}
    for key, value in state.items():
        for pattern, new in _LEGACY_KEYS:
            key = pattern.sub(new, key)
        out[key] = value
    return out


def _conv3(in_c: int, out_c: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_c, out_c, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection, under torchvision's module names
    (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample``).

    ``downsample`` halves the spatial size, either with a stride-2 first convolution
    (``avgpool=False``) or with a 2x2 average pool after it (``avgpool=True``, ResNetAP). The
    shortcut ``downsample`` is a 1x1 convolution + norm (preceded by the same average pool) when
    the shape changes. ``bn1`` / ``bn2`` are whatever ``norm`` makes (a GroupNorm for
    ``"instance"``), named as torchvision names its ``norm_layer``.
    """

    def __init__(self, in_c: int, out_c: int, downsample: bool, norm: str, avgpool: bool) -> None:
        super().__init__()
        stride = 2 if downsample and not avgpool else 1
        self.conv1 = _conv3(in_c, out_c, stride)
        self.pool = nn.AvgPool2d(2, 2) if downsample and avgpool else nn.Identity()
        self.bn1 = make_norm(norm, out_c)
        self.conv2 = _conv3(out_c, out_c)
        self.bn2 = make_norm(norm, out_c)
        self.relu = nn.ReLU(inplace=True)
        if downsample or in_c != out_c:
            pre = [nn.AvgPool2d(2, 2)] if downsample and avgpool else []
            self.downsample = nn.Sequential(*pre, nn.Conv2d(in_c, out_c, 1, stride=stride, bias=False),
                                            make_norm(norm, out_c))
        else:
            self.downsample = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.pool(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


#: the stems, by the kernel of their first convolution: "small" (3x3, stride 1, no pooling: the
#: CIFAR / SRe²L / RDED convention, also at 64 px for Tiny-ImageNet) and "large" (torchvision's
#: ImageNet stem, 7x7 stride 2 and a 3x3 stride-2 max-pool; ResNetAP: 7x7 stride 1, two 2x2
#: average pools)
STEM_KERNELS: Dict[str, int] = {"small": 3, "large": 7}


class ResNet(nn.Module):
    """A four-stage ResNet of :class:`BasicBlock` s with global average pooling.

    The modules carry torchvision's names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``,
    ``fc``; in the blocks ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample.0/1``): a
    torchvision ResNet-18 ``state_dict`` loads into :class:`ResNet18` as it is, and ours into
    torchvision's. For images of side <= 32 the stem is a 3x3 convolution without max-pool; larger
    images get a 7x7 stride-2 stem with a 3x3 stride-2 max-pool (average pools for the AP
    variant). Loading a ``state_dict`` whose ``conv1`` has the other kernel (7x7 into a small stem,
    3x3 into a large one) rebuilds the stem that kernel stands for (:data:`STEM_KERNELS`): an
    ImageNet checkpoint keeps its stem at 32 px, a CIFAR-style one keeps its own at 64 px (SRe²L's
    Tiny-ImageNet ResNet-18, ``SRe2L/*small_dataset/recover_tiny.py``). Stages 2-4 halve the
    spatial size unless it is already 1, so 8x8 inputs work.

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
    stem : {"small", "large"}
        The stem in use.
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
        self.avg_downsampling = avgpool
        # modules are created in the order of the layers (as before the renaming): the same seed
        # draws the same weights
        self.stem = "small" if max(h, w) <= 32 else "large"
        self.conv1, self.conv1_pool = self._stem_conv(self.stem, channels, width)
        self.bn1 = make_norm(norm, width)
        self.relu = nn.ReLU(inplace=True)
        self.stem_pool = self._stem_pool(self.stem)
        if self.stem == "large":
            h, w = (h // 4, w // 4) if avgpool else ((h - 1) // 2 // 2 + 1, (w - 1) // 2 // 2 + 1)
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
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.feature_dim = in_c
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def _stem_conv(self, stem: str, channels: int, width: int, **factory) -> Tuple[nn.Conv2d, nn.Module]:
        """The stem's first convolution and the pool right after it (ResNetAP's large stem)."""
        if stem == "small":
            return nn.Conv2d(channels, width, 3, padding=1, bias=False, **factory), nn.Identity()
        if self.avg_downsampling:
            return nn.Conv2d(channels, width, 7, padding=3, bias=False, **factory), nn.AvgPool2d(2, 2)
        return nn.Conv2d(channels, width, 7, stride=2, padding=3, bias=False, **factory), nn.Identity()

    def _stem_pool(self, stem: str) -> nn.Module:
        """The pool that ends the stem (torchvision's ``maxpool``)."""
        if stem == "small":
            return nn.Identity()
        return nn.AvgPool2d(2, 2) if self.avg_downsampling else nn.MaxPool2d(3, 2, 1)

    @staticmethod
    def stem_of(state_dict: Mapping[str, Any], prefix: str = "") -> Optional[str]:
        """The stem (a key of :data:`STEM_KERNELS`) whose kernel ``state_dict``'s ``conv1.weight``
        has; ``None`` when it has no such entry or another kernel."""
        weight = state_dict.get(prefix + "conv1.weight")
        if not isinstance(weight, Tensor) or weight.dim() != 4 or weight.shape[-1] != weight.shape[-2]:
            return None
        return next((stem for stem, k in STEM_KERNELS.items() if k == weight.shape[-1]), None)

    def stem_weight_shape(self, stem: str) -> Tuple[int, ...]:
        """The shape of ``conv1.weight`` under ``stem``."""
        k = STEM_KERNELS[stem]
        return (self.conv1.out_channels, self.conv1.in_channels, k, k)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # called before the children are loaded: a conv1 with the other stem's kernel gets that
        # stem, built without drawing weights (the load fills it, whatever the random state)
        stem = self.stem_of(state_dict, prefix)
        if stem is not None and stem != self.stem:
            weight = self.conv1.weight
            with torch.device("meta"):
                conv, pool = self._stem_conv(stem, self.conv1.in_channels, self.conv1.out_channels)
            self.conv1 = conv.to_empty(device=weight.device).to(weight.dtype)
            self.conv1_pool, self.stem_pool, self.stem = pool, self._stem_pool(stem), stem
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def embed(self, x: Tensor) -> Tensor:
        """Globally average-pooled features, shape ``(N, feature_dim)``."""
        x = self.stem_pool(self.relu(self.bn1(self.conv1_pool(self.conv1(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(torch.mean(x, dim=(2, 3)), 1)

    def classifier(self, features: Tensor) -> Tensor:
        """Logits from :meth:`embed`'s features (the final linear layer ``fc``)."""
        return self.fc(features)

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape ``(N, num_classes)``."""
        return self.fc(self.embed(x))


class ResNet18(ResNet):
    """ResNet-18: BasicBlocks [2, 2, 2, 2], strided down-sampling, torchvision's layout and names
    (its ``resnet18`` state dicts load as they are). See :class:`ResNet`."""

    def __init__(self, channels: int, num_classes: int, image_size: ImageSize, norm: str = "batch",
                 width: int = 64) -> None:
        super().__init__(channels, num_classes, image_size, (2, 2, 2, 2), norm=norm, width=width, avgpool=False)


class ResNetAP10(ResNet):
    """ResNetAP-10 (IDC/M3D): BasicBlocks [1, 1, 1, 1], 2x2 average pools instead of strides."""

    def __init__(self, channels: int, num_classes: int, image_size: ImageSize, norm: str = "batch",
                 width: int = 64) -> None:
        super().__init__(channels, num_classes, image_size, (1, 1, 1, 1), norm=norm, width=width, avgpool=True)
