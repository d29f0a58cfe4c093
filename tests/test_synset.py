import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ddmetrics.synset import SyntheticSet


def _syn(**meta):
    g = torch.Generator().manual_seed(0)
    return SyntheticSet(images=torch.randn(6, 1, 8, 8, generator=g), labels=torch.tensor([0, 0, 1, 1, 2, 2]),
                        weights=torch.tensor([0.3, 0.7, 0.5, 0.5, 0.9, 0.1]),
                        meta={"method": "wmdd", "ipc": 2, "mean": [0.3], "std": [0.4], "timings": {"s": 1.5},
                              **meta},
                        num_classes=3)


def test_round_trip_is_exact(tmp_path):
    syn = _syn()
    path = tmp_path / "deep" / "dir" / "s.pt"  # parents are created
    syn.save(path)
    back = SyntheticSet.load(path)
    assert torch.equal(back.images, syn.images) and torch.equal(back.labels, syn.labels)
    assert back.labels.dtype == torch.int64
    assert torch.equal(back.weights, syn.weights) and back.meta == syn.meta and back.num_classes == 3
    assert os.listdir(path.parent) == ["s.pt"]  # no temporary file left behind
    # plain torch.load with weights_only reads it: only tensors, ints and strings inside
    raw = torch.load(path, weights_only=True)
    assert json.loads(raw["meta_json"]) == syn.meta
    # overwriting keeps exactly one file with the new content
    _syn(seed=7).save(path)
    assert SyntheticSet.load(path).meta["seed"] == 7 and os.listdir(path.parent) == ["s.pt"]


def test_saved_on_any_device_loads_on_the_cpu(tmp_path, device):
    cpu = _syn()
    on = SyntheticSet(cpu.images.to(device), cpu.labels.to(device), cpu.weights.to(device), meta=dict(cpu.meta),
                      num_classes=3)
    on.save(tmp_path / "s.pt")
    raw = torch.load(tmp_path / "s.pt", weights_only=True)  # no map_location needed
    assert all(raw[k].device.type == "cpu" for k in ("images", "labels", "weights"))
    back = SyntheticSet.load(tmp_path / "s.pt")
    assert all(t.device.type == "cpu" for t in (back.images, back.labels, back.weights))
    assert torch.equal(back.images, cpu.images) and torch.equal(back.labels, cpu.labels)
    assert torch.equal(back.weights, cpu.weights) and back.meta == cpu.meta


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ["DDM_MARKER"],))


def test_pickled_callable_is_refused_and_not_executed(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("DDM_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"images": torch.zeros(1, 1, 2, 2), "labels": torch.zeros(1, dtype=torch.long),
                "weights": torch.ones(1), "num_classes": 1, "meta_json": json.dumps({}), "x": _Evil()}, path)
    with pytest.raises(ValueError, match="evil.pt") as err:
        SyntheticSet.load(path)
    assert not marker.exists()
    # our own words, never torch's advice to switch the protection off
    assert "could run code" in str(err.value) and "only loads plain tensors" in str(err.value)
    assert "weights_only" not in str(err.value) and "allow_pickle" not in str(err.value)
    # the payload itself is live: calling what it would reduce to creates the marker
    func, args = _Evil().__reduce__()
    func(*args)
    assert marker.exists()


def test_malformed_files_are_refused(tmp_path):
    bad = {"missing": {"images": torch.zeros(1, 1, 2, 2)},
           "shape": {"images": torch.zeros(2, 1, 2, 2), "labels": torch.zeros(1, dtype=torch.long),
                     "weights": torch.ones(1), "num_classes": 1, "meta_json": "{}"},
           "json": {"images": torch.zeros(1, 1, 2, 2), "labels": torch.zeros(1, dtype=torch.long),
                    "weights": torch.ones(1), "num_classes": 1, "meta_json": "{not json"},
           "range": {"images": torch.zeros(1, 1, 2, 2), "labels": torch.tensor([3]),
                     "weights": torch.ones(1), "num_classes": 2, "meta_json": "{}"}}
    for name, payload in bad.items():
        path = tmp_path / f"{name}.pt"
        torch.save(payload, path)
        with pytest.raises(ValueError, match=f"{name}.pt"):
            SyntheticSet.load(path)
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pt"):
        SyntheticSet.load(tmp_path / "garbage.pt")


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    def broken(obj, f, *args, **kwargs):
        f.write(b"partial content")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        _syn().save(tmp_path / "s.pt")
    assert os.listdir(tmp_path) == []


def test_interrupted_overwrite_keeps_the_old_file(tmp_path, monkeypatch):
    _syn().save(tmp_path / "s.pt")
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        _syn(seed=9).save(tmp_path / "s.pt")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["s.pt"] and "seed" not in SyntheticSet.load(tmp_path / "s.pt").meta


def test_meta_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="meta"):
        _syn(bad=object()).save(tmp_path / "s.pt")
    assert os.listdir(tmp_path) == []


def test_grid_has_one_row_per_class(tmp_path):
    syn = _syn()
    syn.save_grid(tmp_path / "g.png")  # 8x8 digits are scaled x4 to 32 px, 2 px padding
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (2 * 34, 3 * 34) and im.mode == "L"
        tile = torch.from_numpy(np.asarray(im, dtype=np.float32))[1:33, 1:33]
    expected = (syn.images[0, 0] * 0.4 + 0.3).clamp(0, 1)  # de-normalised with meta mean/std
    expected = (expected.repeat_interleave(4, 0).repeat_interleave(4, 1) * 255).round()
    assert torch.equal(tile, expected)
    rgb = SyntheticSet(torch.rand(5, 3, 32, 32), torch.tensor([0, 1, 1, 1, 3]), torch.ones(5), num_classes=4)
    rgb.save_grid(tmp_path / "rgb.png", tile=16)
    with Image.open(tmp_path / "rgb.png") as im:
        assert im.size == (3 * 34, 4 * 34) and im.mode == "RGB"
    assert sorted(os.listdir(tmp_path)) == ["g.png", "rgb.png"]


def test_views_and_validation():
    syn = _syn(factor=2)
    images, labels, weights = syn.decoded()
    assert images.shape == (24, 1, 8, 8) and labels.tolist() == sum([[k] * 8 for k in range(3)], [])
    assert torch.allclose(weights.sum(), syn.weights.sum())
    ds = syn.to_dataset()
    assert len(ds) == 24 and ds[5][1] == 0 and ds.weights.shape == (24,)
    plain = _syn()
    assert torch.equal(plain.decoded()[0], plain.images)
    with pytest.raises(ValueError, match="labels"):
        SyntheticSet(torch.zeros(2, 1, 4, 4), torch.tensor([0, 5]), torch.ones(2), num_classes=3)
    with pytest.raises(ValueError, match="weights"):
        SyntheticSet(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), torch.ones(3))
    with pytest.raises(TypeError, match="labels"):
        SyntheticSet(torch.zeros(2, 1, 4, 4), torch.tensor([0.0, 1.0]), torch.ones(2))


def test_missing_file_and_directory_are_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        SyntheticSet.load(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="is a directory"):
        SyntheticSet.load(tmp_path)


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _syn().save(tmp_path / "a.pt")
        _syn().save_grid(tmp_path / "a.png")
        os.umask(0o077)
        _syn().save(tmp_path / "b.pt")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "a.pt").st_mode & 0o777) == 0o644
    assert (os.stat(tmp_path / "a.png").st_mode & 0o777) == 0o644
    assert (os.stat(tmp_path / "b.pt").st_mode & 0o777) == 0o600


def test_repr_is_a_short_summary():
    text = repr(_syn())
    assert text == "SyntheticSet(6 images of 1x8x8, 3 classes, method='wmdd', ipc=2)"
