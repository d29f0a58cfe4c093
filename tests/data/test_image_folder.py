"""The streaming ImageFolder: decoding, batch reads, no decoded images held, the pipeline on it."""
import os
import warnings

import numpy as np
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.data import ArrayDataset, ImageFolder, image_folder, load
from ddmetrics.utils import batches

Image = pytest.importorskip("PIL.Image")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _write_folder(root, classes=3, per_class=6, seed=0, sizes=((20, 14), (14, 20), (17, 17), (31, 12)),
                  mode="RGB"):
    """Random images of several sizes and aspect ratios (and modes), seeded; returns the paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(classes):
        folder = os.path.join(root, f"class_{k:02d}")
        os.makedirs(folder)
        for i in range(per_class):
            w, h = sizes[(k + i) % len(sizes)]
            if mode == "L":
                im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
            else:
                im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
                if i % 3 == 1:
                    im = im.convert("RGBA")  # other modes are converted to RGB
                elif i % 3 == 2:
                    im = im.convert("P")
            path = os.path.join(folder, f"img_{i:03d}.png")
            im.save(path)
            paths.append(path)
    return paths


def _reference(path, size, mean, std, mode="RGB"):
    """Direct Pillow decode, shorter side to ``size`` (bilinear), centre crop, normalisation."""
    with Image.open(path) as im:
        im = im.convert(mode)
        w, h = im.size
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        a = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    a = a[..., None] if a.ndim == 2 else a
    x = torch.from_numpy(a.transpose(2, 0, 1).copy())
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("folder"))
    return root, _write_folder(root)


def test_images_equal_a_direct_pillow_decode(folder):
    root, paths = folder
    ds = ImageFolder(root, image_size=10, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert ds.image_shape == (3, 10, 10) and len(ds) == len(paths) and ds.num_classes == 3
    assert ds.class_names == ["class_00", "class_01", "class_02"] and ds.files == sorted(paths)
    assert torch.equal(ds.labels, torch.arange(3).repeat_interleave(6)) and ds.labels.dtype == torch.int64
    assert torch.equal(ds.class_indices(1), torch.arange(6, 12))
    for i, path in enumerate(ds.files):
        x, y = ds[i]
        assert y == i // 6
        assert torch.allclose(x, _reference(path, 10, IMAGENET_MEAN, IMAGENET_STD), atol=1e-6), path


def test_load_equals_stacking_items_with_and_without_workers(folder):
    root, _ = folder
    ds = ImageFolder(root, image_size=8, mean=0.5, std=0.25)
    idx = [17, 0, 5, 5, -1, 9]
    stacked = torch.stack([ds[i][0] for i in idx])
    assert torch.equal(ds.load(idx), stacked)
    assert torch.equal(ds.load(torch.tensor(idx)), stacked) and ds.load([]).shape == (0, 3, 8, 8)
    threaded = ImageFolder(root, image_size=8, mean=0.5, std=0.25, workers=2)  # threads for one load
    assert torch.equal(threaded.load(idx), stacked)
    streamed = list(batches(threaded, 7))  # DataLoader worker processes, in order
    assert [len(y) for _, y in streamed] == [7, 7, 4]
    assert torch.equal(torch.cat([x for x, _ in streamed]), ds.load(range(len(ds))))
    assert torch.equal(torch.cat([y for _, y in streamed]), ds.labels)
    with pytest.raises(IndexError):
        ds.load([len(ds)])
    with pytest.raises(TypeError):
        ds.load(torch.tensor([0.5]))


def test_estimated_statistics_and_materialise(folder):
    root, _ = folder
    ds = ImageFolder(root, image_size=8)  # 18 images < stats_images: exact statistics
    raw = ImageFolder(root, image_size=8, mean=0.0, std=1.0).materialize()
    mean = raw.images.double().mean((0, 2, 3))
    std = raw.images.double().std((0, 2, 3), unbiased=False)
    assert torch.allclose(ds.mean.double(), mean, atol=1e-6) and torch.allclose(ds.std.double(), std, atol=1e-6)
    mem = ds.materialize()
    assert isinstance(mem, ArrayDataset) and torch.equal(mem.images, ds.load(range(len(ds))))
    assert torch.allclose(mem.images.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    few = ImageFolder(root, image_size=8, stats_images=4, seed=1)  # a sample of 4: other values, seeded
    assert not torch.allclose(few.mean, ds.mean) and torch.equal(few.mean, ImageFolder(root, 8, stats_images=4,
                                                                                       seed=1).mean)
    # the in-memory reader is the streaming one materialised, in [0, 1]
    assert torch.equal(image_folder(root, size=8).images, raw.images)


def test_no_decoded_images_are_held(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for k in range(4):
        (tmp_path / f"c{k}").mkdir()
        for i in range(250):
            Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8), "L").save(tmp_path / f"c{k}" / f"{i}.png")
    ds = ImageFolder(tmp_path, image_size=4, mean=0.5, std=0.5)
    assert len(ds) == 1000 and ds.image_shape == (1, 4, 4)
    held = [v for v in vars(ds).values() if isinstance(v, torch.Tensor) and v.dim() > 1]
    assert held == [] and ds.labels.shape == (1000,)
    assert not any(isinstance(v, np.ndarray) and v.dtype.kind != "S" for v in vars(ds).values())
    opened = []
    real_open = Image.open

    def counting_open(fp, *args, **kw):
        opened.append(fp)
        return real_open(fp, *args, **kw)

    monkeypatch.setattr(Image, "open", counting_open)
    per_batch = []
    for x, _ in batches(ds, 64):  # each batch decodes its own images, nothing ahead (workers=0)
        per_batch.append(len(opened))
        opened.clear()
        assert x.shape[0] <= 64
    assert per_batch == [64] * 15 + [40]


def test_grayscale_decided_from_the_first_image_of_each_class(tmp_path):
    _write_folder(str(tmp_path / "gray"), classes=2, per_class=2, mode="L")
    ds = ImageFolder(tmp_path / "gray", image_size=6)
    assert ds.mode == "L" and ds.image_shape == (1, 6, 6) and ds.load([0, 3]).shape == (2, 1, 6, 6)
    # one class starting with a colour image makes the whole set RGB
    Image.new("RGB", (6, 6), (255, 0, 0)).save(tmp_path / "gray" / "class_01" / "a_first.png")
    assert ImageFolder(tmp_path / "gray", image_size=6).image_shape == (3, 6, 6)


def test_image_size_none_keeps_a_shared_square_size(tmp_path):
    _write_folder(str(tmp_path / "sq"), classes=2, per_class=2, sizes=((9, 9),))
    assert ImageFolder(tmp_path / "sq", image_size=None).image_shape == (3, 9, 9)
    _write_folder(str(tmp_path / "mixed"), classes=2, per_class=2, sizes=((9, 9), (12, 7)))
    assert ImageFolder(tmp_path / "mixed", image_size=None).image_shape == (3, 7, 7)


def test_corrupt_and_truncated_images_and_empty_classes(tmp_path):
    root = tmp_path / "data"
    _write_folder(str(root), classes=2, per_class=3)
    (root / "class_01" / "z_broken.png").write_bytes(b"not an image at all")
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*class_01.*broken\.png"):
        ds = ImageFolder(root, image_size=8, mean=0.5, std=0.5)
    assert len(ds) == 6 and not any("broken" in f for f in ds.files)
    # a valid header over truncated pixel data is listed, and refused by name when read
    with open(root / "class_00" / "img_000.png", "rb") as fh:
        data = fh.read()
    (root / "class_00" / "img_0005.png").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning):
        ds = ImageFolder(root, image_size=8, mean=0.5, std=0.5)
    where = ds.files.index(str(root / "class_00" / "img_0005.png"))
    with pytest.raises(ValueError, match=r"cannot decode image .*img_0005\.png"):
        ds.load([where])
    with pytest.raises(ValueError, match=r"img_0005\.png"):  # also through DataLoader workers
        list(batches(ImageFolder(root, image_size=8, mean=0.5, std=0.5, workers=2,
                                 check_files=False).subset([where - 1, where, where + 1]), 1))
    # without the header check, the unreadable file is listed and refused by name when read
    unchecked = ImageFolder(root, image_size=8, mean=0.5, std=0.5, check_files=False)
    with pytest.raises(ValueError, match=r"broken\.png"):
        unchecked.load([unchecked.files.index(str(root / "class_01" / "z_broken.png"))])
    # a class whose every file is unreadable, and an empty class folder, are refused by name
    (root / "class_02").mkdir()
    (root / "class_02" / "x.jpg").write_bytes(b"\x00" * 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="class folder 'class_02' has no readable images"):
            ImageFolder(root, image_size=8, mean=0.5, std=0.5)
    os.remove(root / "class_02" / "x.jpg")
    with pytest.raises(ValueError, match="class folder 'class_02' has no images"):
        ImageFolder(root, image_size=8, mean=0.5, std=0.5)


def test_bad_arguments_are_refused_before_work(tmp_path):
    _write_folder(str(tmp_path / "d"), classes=2, per_class=2)
    for kwargs in ({"image_size": 0}, {"workers": -1}, {"stats_images": 0}, {"mean": 0.5},
                   {"mean": (0.5, 0.5), "std": (1.0, 1.0)}, {"mean": 0.5, "std": 0.0}):
        with pytest.raises(ValueError):
            ImageFolder(tmp_path / "d", **kwargs)
    with pytest.raises(TypeError):
        ImageFolder(tmp_path / "d", mean="imagenet", std=1.0)
    with pytest.raises(ValueError, match="not a directory"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolder(tmp_path / "d" / "class_00")
    with pytest.raises(ValueError, match="workers"):
        load(str(tmp_path / "d"), workers=-1)
    with pytest.raises(ValueError, match="image_size"):
        load("digits", image_size=16)  # only image folders are resized


def test_load_splits_are_stratified_disjoint_streams(tmp_path):
    root = str(tmp_path / "d")
    _write_folder(root, classes=3, per_class=20, sizes=((12, 12), (15, 11)))
    splits = load(root, seed=0, image_size=8, workers=0)
    parts = {name: getattr(splits, name) for name in ("train", "val", "test")}
    assert all(isinstance(p, ImageFolder) for p in parts.values())
    files = {name: set(p.files) for name, p in parts.items()}
    assert not files["train"] & files["val"] and not files["train"] & files["test"] and not files["val"] & files["test"]
    assert files["train"] | files["val"] | files["test"] == set(ImageFolder(root, 8, 0.0, 1.0).files)
    for name, expected in (("test", 4), ("val", 2), ("train", 14)):  # 20 -> 4 test, 16 -> 2 val, 14 train
        assert torch.bincount(parts[name].labels, minlength=3).tolist() == [expected] * 3, name
        assert all(os.path.basename(os.path.dirname(f)) == f"class_{k:02d}"
                   for f, k in zip(parts[name].files, parts[name].labels.tolist()))
    # normalised with the train split's own statistics (exact here: 42 train images < 1000)
    raw = parts["train"].normalized(0.0, 1.0).materialize().images.double()
    assert torch.allclose(splits.mean.double(), raw.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(splits.std.double(), raw.std((0, 2, 3), unbiased=False), atol=1e-6)
    assert all(torch.equal(p.mean, splits.mean) and torch.equal(p.std, splits.std) for p in parts.values())
    again = load(root, seed=0, image_size=8)
    assert again.train.files == parts["train"].files and load(root, seed=1, image_size=8).train.files != again.train.files


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    torch.set_num_threads(1)
    root = str(tmp_path_factory.mktemp("pipe"))
    _write_folder(root, classes=3, per_class=10, sizes=((18, 16), (16, 21)))
    ds = ImageFolder(root, image_size=16)
    return ds, ds.materialize()


@pytest.mark.parametrize("kwargs", [
    dict(method="wmdd", teacher_epochs=1, iterations=3),
    dict(method="dm", iterations=3),
], ids=["wmdd", "dm"])
def test_distillation_on_a_stream_equals_the_in_memory_run(streamed, kwargs):
    stream, memory = streamed
    a = ddm.Distiller(ipc=2, seed=0, device="cpu", **kwargs).fit(stream, progress=False)
    b = ddm.Distiller(ipc=2, seed=0, device="cpu", **kwargs).fit(memory, progress=False)
    assert a.images.shape == (6, 3, 16, 16) and torch.isfinite(a.images).all()
    assert torch.allclose(a.images, b.images, atol=1e-6) and torch.allclose(a.weights, b.weights)


def test_evaluation_and_diagnosis_stream_the_real_data(streamed):
    stream, memory = streamed
    syn = ddm.Distiller(method="dm", ipc=1, seed=0, iterations=2, device="cpu").fit(stream, progress=False)
    kw = dict(runs=1, epochs=2, full_epochs=1, progress=False, device="cpu")
    a = ddm.evaluate(syn, stream, train_set=stream, **kw).to_dict()
    b = ddm.evaluate(syn, memory, train_set=memory, **kw).to_dict()
    assert (a["runs"], a["random_runs"], a["full"]) == (b["runs"], b["random_runs"], b["full"])
    from ddmetrics.diagnose import diagnose
    from ddmetrics.models import get_model

    with ddm.utils.seeded(0):
        net = get_model("convnet", 3, 3, 16).eval()
    da, db = diagnose(syn, stream, net, losses=["mmd"]), diagnose(syn, memory, net, losses=["mmd"])
    assert da.overall == pytest.approx(db.overall)


def test_stream_through_the_pipeline_creates_nothing_off_the_cpu(streamed):
    stream, _ = streamed
    torch.set_default_device("meta")
    try:
        syn = ddm.Distiller(method="wmdd", ipc=1, seed=0, teacher_epochs=1, iterations=2,
                            device="cpu").fit(stream.subset(range(0, 30, 2)), progress=False)
    finally:
        torch.set_default_device(None)
    assert torch.isfinite(syn.images).all()


def test_imagenet_style_input_through_a_resnet18_teacher(tmp_path):
    """3 channels, ImageNet mean/std, 32 px, resnet18 as the WMDD teacher (the ImageNet setting, small)."""
    torch.set_num_threads(1)
    _write_folder(str(tmp_path / "inet"), classes=2, per_class=4, sizes=((40, 36), (36, 48)))
    ds = ImageFolder(tmp_path / "inet", image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD, workers=0)
    d = ddm.Distiller(method="wmdd", teacher_arch="resnet18", ipc=1, seed=0, teacher_epochs=1, iterations=2,
                      device="cpu")
    syn = d.fit(ds, progress=False)
    assert syn.images.shape == (2, 3, 32, 32) and torch.isfinite(syn.images).all()
    assert type(d.teacher_).__name__.lower().startswith("resnet18")


def test_cli_distills_an_image_folder(tmp_path, capsys):
    from ddmetrics.cli import main

    _write_folder(str(tmp_path / "d"), classes=2, per_class=12, sizes=((14, 12),))
    out = tmp_path / "run"
    assert main(["distill", "--dataset", str(tmp_path / "d"), "--method", "dm", "--ipc", "1", "--iterations", "2",
                 "--runs", "0", "--image-size", "8", "--workers", "1", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0
    syn = ddm.SyntheticSet.load(out / "synset.pt")
    assert syn.images.shape == (2, 3, 8, 8)
    assert main(["distill", "--dataset", str(tmp_path / "d"), "--workers", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "--workers" in capsys.readouterr().err


def test_train_model_through_workers_equals_the_in_memory_training(streamed):
    from ddmetrics.models import get_model, train_model

    stream, memory = streamed
    nets = []
    for data in (stream.subset(range(len(stream))), memory):
        if data is not memory:
            data.workers = 2  # shuffled batches read by two DataLoader workers, in order
        with ddm.utils.seeded(0):
            net = get_model("convnet", 3, 3, 16)
        nets.append(train_model(net, data, epochs=2, batch_size=8, seed=3, progress=False, device="cpu"))
    a, b = (n.state_dict() for n in nets)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fingerprint_follows_files_and_normalisation(streamed):
    stream, _ = streamed
    fp = stream.fingerprint()
    assert fp == stream.subset(range(len(stream))).fingerprint()
    assert fp != stream.subset(range(1, len(stream))).fingerprint()
    assert fp != stream.normalized(0.0, 1.0).fingerprint()
