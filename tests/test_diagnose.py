"""ddmetrics.diagnose: a synthetic set equal to the real data is at distance ~0; a shifted one is not."""
import json

import pytest
import torch

import ddmetrics as ddm
from ddmetrics.diagnose import MOMENTS, diagnose, moment_distances


def _real(n_per_class: int = 25, classes: int = 3, seed: int = 0) -> ddm.data.ArrayDataset:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n_per_class * classes, 1, 8, 8, generator=gen)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images += labels.view(-1, 1, 1, 1).float()  # classes apart
    return ddm.data.ArrayDataset(images, labels, classes)


def _as_synset(real: ddm.data.ArrayDataset, shift: float = 0.0) -> ddm.SyntheticSet:
    counts = torch.bincount(real.labels).float()
    weights = 1.0 / counts[real.labels]
    return ddm.SyntheticSet(real.images.clone() + shift, real.labels.clone(), weights, num_classes=real.num_classes)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ddm.models.get_model("convnet", 1, 3, 8, width=16)





def test_identical_set_is_at_distance_zero(model):
    real = _real()
    report = diagnose(_as_synset(real), real, model)
    assert set(report.metrics) == set(ddm.available_losses()) | set(MOMENTS)
    for row in list(report.per_class.values()) + [report.overall, report.mean_over_classes]:
        for m in MOMENTS + ("wasserstein", "mmd"):
            assert abs(row[m]) < 1e-6, (m, row[m])
    json.dumps(report.to_dict())  # JSON-able
    table = report.table()
    assert "overall" in table and "moment3" in table and len(table.splitlines()) == 2 + 3 + 1 + 2  # header, sep, classes, sep, mean, overall


def test_shifted_set_is_farther(model):
    real = _real()
    same = diagnose(_as_synset(real), real, model, losses=["wasserstein", "mmd", "sliced"])
    shifted = diagnose(_as_synset(real, shift=1.0), real, model, losses=["wasserstein", "mmd", "sliced"])
    for m in ("wasserstein", "mmd", "sliced", "moment1"):
        for part in ("overall", "mean_over_classes"):
            far, near = getattr(shifted, part)[m], getattr(same, part)[m]
            assert far > 1e-8 and far > 100 * abs(near), (m, part, far, near)
    assert all(shifted.per_class[k]["wasserstein"] > 100 * abs(same.per_class[k]["wasserstein"]) for k in range(3))


def test_weights_are_used_and_renormalised(model):
    real = _real(classes=2)
    # two synthetic points per class, one real image each; all mass on the first gives the moments of that point
    idx = torch.cat([real.class_indices(k)[:2] for k in range(2)])
    syn = ddm.SyntheticSet(real.images[idx], real.labels[idx], torch.tensor([3.0, 0.0, 5.0, 0.0]), num_classes=2)
    one = ddm.SyntheticSet(real.images[idx[[0, 2]]], real.labels[idx[[0, 2]]], torch.ones(2), num_classes=2)
    a = diagnose(syn, real, model, losses=["wasserstein"])
    b = diagnose(one, real, model, losses=["wasserstein"])
    for k in range(2):
        for m in ("wasserstein",) + MOMENTS:
            assert a.per_class[k][m] == pytest.approx(b.per_class[k][m], rel=1e-6, abs=1e-9)


def test_moment_distances_known_values():
    x = torch.tensor([[0.0], [2.0]])  # mean 1, var 1, 3rd central moment 0
    y = torch.tensor([[1.0], [1.0], [4.0]])  # mean 2, var 2, 3rd central moment 2
    d = moment_distances(x, y)
    assert d["moment1"] == pytest.approx(1.0)
    assert d["moment2"] == pytest.approx(1.0)
    assert d["moment3"] == pytest.approx(2.0)


def test_class_without_synthetic_samples(model):
    real = _real()
    keep = real.labels != 2
    syn = ddm.SyntheticSet(real.images[keep], real.labels[keep], torch.full((int(keep.sum()),), 1 / 25), num_classes=3)
    report = diagnose(syn, real, model, losses=["mmd"])
    assert report.per_class[2]["mmd"] is None and report.meta["classes_without_synthetic"] == [2]
    assert report.overall["mmd"] is not None and "-" in report.table()


def test_bad_inputs(model):
    real = _real()
    with pytest.raises(TypeError):
        diagnose(real, real, model)
    with pytest.raises(KeyError):
        diagnose(_as_synset(real), real, model, losses=["nope"])
