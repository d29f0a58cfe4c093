"""evaluate() refuses data a synthetic set does not fit, before any training."""
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.evaluate import format_mean_std, mean_std


def _syn(channels=1, size=8, classes=3):
    return ddm.SyntheticSet(images=torch.zeros(classes, channels, size, size), labels=torch.arange(classes),
                            weights=torch.ones(classes), meta={"ipc": 1}, num_classes=classes)


def _data(channels=1, size=8, classes=3, n=6):
    return ddm.data.ArrayDataset(torch.zeros(n, channels, size, size), torch.arange(n) % classes, classes)


@pytest.mark.parametrize("syn,data,word", [
    (_syn(channels=3), _data(channels=1), "3x8x8"),
    (_syn(size=16), _data(size=8), "1x16x16"),
    (_syn(classes=3), _data(classes=10, n=20), "3 classes"),
])
def test_mismatched_test_set_is_refused_before_training(syn, data, word):
    with pytest.raises(ValueError, match=word):
        ddm.evaluate(syn, data, runs=1, epochs=1, progress=False)


def test_mismatched_train_set_is_refused_too():
    with pytest.raises(ValueError, match="train_set"):
        ddm.evaluate(_syn(), _data(), train_set=_data(classes=4, n=8), runs=1, epochs=1, progress=False)


def test_mean_std_and_its_format():
    assert mean_std([]) == (None, None)
    assert mean_std([0.5]) == (0.5, 0.0)
    m, s = mean_std([0.9, 0.95, 1.0])
    assert m == pytest.approx(0.95) and s == pytest.approx((2 * 0.05 ** 2 / 3) ** 0.5)
    assert format_mean_std([0.9, 0.95, 1.0]) == "95.00 ± 4.08" and format_mean_std([]) == "-"
