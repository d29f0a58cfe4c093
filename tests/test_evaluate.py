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


@pytest.mark.parametrize("protocol", ["hard", "ours_soft", "soft"])
def test_students_train_on_the_device_and_their_accuracy_is_reported(small, device, protocol, monkeypatch):
    from ddmetrics.augment import make_augment
    from ddmetrics.protocols import get_protocol

    try:  # the named augmentations (soft: rrc_flip) come with issue 24's augment.py
        make_augment(get_protocol(protocol).recipe.augment, 1, 8)
    except (TypeError, ValueError):
        pytest.skip(f"this branch's make_augment cannot build {get_protocol(protocol).recipe.augment!r}")
    import importlib

    from ddmetrics.evaluate import random_subset
    from ddmetrics.models import accuracy, get_model
    from ddmetrics.utils import seeded

    module = importlib.import_module("ddmetrics.evaluate")  # the module: ddm.evaluate is the function
    students = []

    def keep(*args, _train=module.train_student, **kwargs):
        students.append(_train(*args, **kwargs))
        return students[-1]

    monkeypatch.setattr(module, "train_student", keep)
    syn = random_subset(small, 2, seed=1)
    with seeded(0):
        teacher = get_model("convnet", 1, 3, 8).eval()
    report = ddm.evaluate(syn, small, train_set=small, runs=1, epochs=2, protocol=protocol, teacher=teacher,
                          full_data=False, progress=False, device=device)
    assert len(students) == 2  # the set's student and the random subset's
    assert all(p.device.type == device for s in students for p in s.parameters())
    # what is reported is each student's accuracy, measured again here on the CPU
    on_cpu = [accuracy(s.cpu(), small) for s in students]
    assert report.runs == pytest.approx(on_cpu[:1], abs=1.5 / len(small))
    assert report.random_runs == pytest.approx(on_cpu[1:], abs=1.5 / len(small))
