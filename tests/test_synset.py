import json
import os
import pickle

import pytest
import torch
from PIL import Image

from ddmetrics.synset import SyntheticSet


def _syn():
    g = torch.Generator().manual_seed(0)
    return SyntheticSet(images=torch.randn(6, 1, 8, 8, generator=g), labels=torch.tensor([0, 0, 1, 1, 2, 2]),
                        weights=torch.tensor([0.3, 0.7, 0.5, 0.5, 0.9, 0.1]),
                        meta={"method": "wmdd", "ipc": 2, "mean": [0.3], "std": [0.4]}, num_classes=3)


def test_round_trip_is_exact(tmp_path):
    syn = _syn()
    syn.save(tmp_path / "s.pt")
    back = SyntheticSet.load(tmp_path / "s.pt")
    assert torch.equal(back.images, syn.images) and torch.equal(back.labels, syn.labels)
    assert torch.equal(back.weights, syn.weights) and back.meta == syn.meta and back.num_classes == 3
    assert os.listdir(tmp_path) == ["s.pt"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ["DDM_MARKER"],))


def test_pickled_callable_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("DDM_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"images": torch.zeros(1, 1, 2, 2), "labels": torch.zeros(1), "weights": torch.ones(1),
                "num_classes": 1, "meta_json": json.dumps({}), "x": _Evil()}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        SyntheticSet.load(path)
    assert not marker.exists()


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def broken(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError):
        _syn().save(tmp_path / "s.pt")
    assert os.listdir(tmp_path) == []


def test_grid_has_one_row_per_class(tmp_path):
    _syn().save_grid(tmp_path / "g.png", tile=16)
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (2 * 18, 3 * 18)
