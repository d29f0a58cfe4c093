"""Distil your own arrays with your own model.

Any ``nn.Module`` with ``embed(x)`` (features before the classifier) and ``classifier``
works as the WMDD teacher; any (N, C, H, W) array with integer labels works as data.

Run: python examples/own_data_own_model.py
"""
import numpy as np
import torch
from torch import nn

import ddmetrics as ddm


class TinyNet(nn.Module):
    def __init__(self, channels=1, num_classes=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.classifier = nn.Linear(64, num_classes)

    def embed(self, x):
        return self.features(x)

    def forward(self, x):
        return self.classifier(self.embed(x))


# three classes of 12x12 images: bright left half, bright right half, bright centre
rng = np.random.default_rng(0)
x = rng.normal(0, 0.3, size=(300, 1, 12, 12)).astype(np.float32)
y = np.repeat(np.arange(3), 100)
x[y == 0, :, :, :6] += 1
x[y == 1, :, :, 6:] += 1
x[y == 2, :, 3:9, 3:9] += 1
train = ddm.data.from_arrays(x, y)

torch.manual_seed(0)
teacher = ddm.models.train_model(TinyNet(), train, epochs=20, seed=0, progress=False)
syn = ddm.Distiller(method="wmdd", loss="wasserstein", ipc=2, seed=0, teacher=teacher,
                    iterations=100).fit(train, progress=False)
print("synthetic images", tuple(syn.images.shape), "weights per class", syn.weights.view(3, 2).sum(1).tolist())
print("teacher accuracy on them:", float((teacher(syn.images).argmax(1) == syn.labels).float().mean()))
