"""Tiny-ImageNet's layout as it unzips, image folders with a separate validation folder, and the
README's commands for them and for CIFAR-10 by name (issue 25, item 1), on generated files."""
import json
import os
import re
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

import ddmetrics as ddm
from ddmetrics.cli import main
from ddmetrics.data import AnnotatedImageFolder, ImageFolder, load
from ddmetrics.data._images import decode_image

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "README.md")
WNIDS = ["n01443537", "n01629819", "n01641577"]


def _jpeg(path, seed, size=16):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(path, quality=95)


def write_tiny(root, train_per_class=14, val_per_class=4, annotations=True):
    """Tiny-ImageNet-200's layout: train/<wnid>/images/*.JPEG beside train/<wnid>/<wnid>_boxes.txt,
    val/images/val_*.JPEG and val/val_annotations.txt (file, wnid, box), test/images/ unlabelled,
    wnids.txt; returns {val file name: wnid}."""
    for k, wnid in enumerate(WNIDS):
        images = os.path.join(root, "train", wnid, "images")
        os.makedirs(images)
        with open(os.path.join(root, "train", wnid, f"{wnid}_boxes.txt"), "w") as fh:
            fh.write("".join(f"{wnid}_{i}.JPEG\t0\t0\t15\t15\n" for i in range(train_per_class)))
        for i in range(train_per_class):
            _jpeg(os.path.join(images, f"{wnid}_{i}.JPEG"), (k, i))
    os.makedirs(os.path.join(root, "val", "images"))
    truth, lines = {}, []
    for j in range(val_per_class * len(WNIDS)):
        name, wnid = f"val_{j}.JPEG", WNIDS[(j * 2) % len(WNIDS)]  # classes interleaved, not in folder order
        _jpeg(os.path.join(root, "val", "images", name), (99, j))
        truth[name] = wnid
        lines.append(f"{name}\t{wnid}\t0\t0\t15\t15\n")
    if annotations:
        with open(os.path.join(root, "val", "val_annotations.txt"), "w") as fh:
            fh.write("".join(lines))
    os.makedirs(os.path.join(root, "test", "images"))
    _jpeg(os.path.join(root, "test", "images", "test_0.JPEG"), (7, 7))
    with open(os.path.join(root, "wnids.txt"), "w") as fh:
        fh.write("\n".join(WNIDS) + "\n")
    return truth


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    return root, write_tiny(str(root))


def test_tiny_imagenet_root_is_read_as_it_unzips(tiny):
    root, truth = tiny
    splits = load(root, seed=0)
    assert splits.class_names == WNIDS
    assert len(splits.train) + len(splits.val) == 3 * 14  # every train/<wnid>/images/ file, no boxes file
    assert isinstance(splits.test, AnnotatedImageFolder) and len(splits.test) == len(truth)
    # the test split is val/images, labelled by val_annotations.txt, in the file's order
    names = [os.path.basename(f) for f in splits.test.files]
    assert names == list(truth)
    assert [WNIDS[k] for k in splits.test.labels.tolist()] == [truth[n] for n in names]
    # its pixels: the file decoded as the training images are, normalised with the train statistics
    raw = decode_image(str(root / "val" / "images" / names[5]), "RGB", 16)
    assert torch.allclose(splits.denormalize(splits.test.load([5])), torch.from_numpy(raw)[None].float() / 255,
                          atol=1e-5)  # float32 normalise / denormalise round trip


def test_tiny_imagenet_by_name_under_root_and_resized(tiny):
    root, truth = tiny
    splits = load("tiny-imagenet", root=root.parent, image_size=8)
    assert splits.train.image_shape == (3, 8, 8) and splits.test.image_shape == (3, 8, 8)
    assert len(splits.test) == len(truth)


def test_class_folder_images_subfolder_is_searched(tiny):
    root, _ = tiny
    ds = ImageFolder(root / "train", image_size=16, mean=0.0, std=1.0)
    assert ds.class_names == WNIDS and len(ds) == 3 * 14
    assert all(os.sep + "images" + os.sep in f for f in ds.files)


def test_missing_annotations_file_is_refused_naming_it(tmp_path, capsys, monkeypatch):
    root = tmp_path / "tiny-imagenet-200"
    write_tiny(str(root), annotations=False)
    expected = str(root / "val" / "val_annotations.txt")
    with pytest.raises(ValueError, match=re.escape(repr(expected))):
        load(root)
    with pytest.raises(ValueError, match=re.escape(repr(expected))):
        load(root / "train", val_dir=root / "val")

    def refuse(*args, **kwargs):
        raise AssertionError("data was read before the missing annotations were refused")

    monkeypatch.setattr(ddm.data, "load", refuse)
    out = tmp_path / "run"
    assert main(["distill", "--dataset", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and expected in err and not out.exists()


def test_annotations_with_other_classes_are_refused(tiny):
    root, truth = tiny
    with open(root / "val" / "val_annotations.txt", "a") as fh:
        fh.write("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")  # listed twice: refused first
    with pytest.raises(ValueError, match=r"'val_0.JPEG' is listed twice"):
        load(root)
    lines = [f"{n}\t{'n99999999' if w == WNIDS[2] else w}\t0\t0\t1\t1\n" for n, w in truth.items()]
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    with pytest.raises(ValueError, match=r"missing 1: 'n01641577'; 1 not in the training classes: 'n99999999'"):
        load(root)


def _class_folder(root, classes, per_class, seed):
    for k, name in enumerate(classes):
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            _jpeg(os.path.join(root, name, f"{i}.png"), (seed, k, i), size=8)


def test_val_dir_is_the_test_split_with_the_training_classes(tmp_path):
    _class_folder(tmp_path / "train", ["cat", "dog", "emu"], 6, 0)
    _class_folder(tmp_path / "val", ["cat", "dog", "emu"], 2, 1)
    splits = load(tmp_path / "train", val_dir=tmp_path / "val", seed=0)
    assert len(splits.test) == 6 and len(splits.train) + len(splits.val) == 18  # nothing carved for test
    assert [os.path.relpath(f, tmp_path / "val").split(os.sep)[0] for f in splits.test.files] == \
        [splits.class_names[k] for k in splits.test.labels.tolist()]
    # a validation folder whose classes differ is refused, naming the differences
    _class_folder(tmp_path / "val2", ["cat", "dog", "yak", "zebu"], 2, 2)
    with pytest.raises(ValueError, match=r"missing 1: 'emu'; 2 not in the training classes: 'yak', 'zebu'"):
        load(tmp_path / "train", val_dir=tmp_path / "val2")
    with pytest.raises(ValueError, match="val_dir .* is not a directory"):
        load(tmp_path / "train", val_dir=tmp_path / "nowhere")


def test_val_dir_takes_the_training_mode_and_size(tmp_path):
    _class_folder(tmp_path / "train", ["a", "b"], 4, 0)
    os.makedirs(tmp_path / "val" / "a")
    os.makedirs(tmp_path / "val" / "b")
    for name in ("a", "b"):  # gray, larger images: read as RGB, resized to the training size
        Image.fromarray(np.full((20, 20), 128, dtype=np.uint8)).save(tmp_path / "val" / name / "0.png")
    splits = load(tmp_path / "train", val_dir=tmp_path / "val")
    assert splits.test.image_shape == splits.train.image_shape == (3, 8, 8)


# --------------------------------------------------------------------------- the README's commands
def _readme_commands(prefix):
    text = open(README, encoding="utf-8").read().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith(prefix)]


# every README command runs as written, with a cut budget appended (later options win)
CUT = ["--iterations", "1", "--runs", "0", "--device", "cpu", "--workers", "0", "--quiet"]


def test_readme_cifar10_command_runs_on_the_official_batch_layout(tmp_path, monkeypatch, capsys):
    from test_official_files import write_cifar10

    (cmd,) = _readme_commands("ddmetrics distill --dataset cifar10 --data-root data")
    write_cifar10(str(tmp_path / "data" / "cifar-10-batches-py"), per_batch=9, n_test=9)
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(cmd)[1:] + CUT) == 0, capsys.readouterr().err
    out = tmp_path / shlex.split(cmd)[shlex.split(cmd).index("--out") + 1]
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == "cifar10" and report["data_root"] == str(tmp_path / "data")
    syn = ddm.SyntheticSet.load(str(out / "synset.pt"))
    assert tuple(syn.images.shape) == (30, 3, 32, 32)  # ipc 10 x 3 classes of 32 px
    # evaluate / diagnose without --dataset read the recorded dataset from the recorded root
    assert main(["diagnose", str(out / "synset.pt"), "--losses", "mmd", "--device", "cpu"]) == 0
    assert "using 'cifar10', recorded in" in capsys.readouterr().out


def test_readme_tiny_imagenet_commands_run_on_its_layout(tmp_path, monkeypatch, capsys):
    commands = _readme_commands("ddmetrics distill --dataset data/tiny-imagenet-200")
    assert len(commands) == 2 and "--val-dir data/tiny-imagenet-200/val" in commands[1]
    write_tiny(str(tmp_path / "data" / "tiny-imagenet-200"), train_per_class=13)
    monkeypatch.chdir(tmp_path)
    for cmd in commands:
        assert main(shlex.split(cmd)[1:] + CUT) == 0, capsys.readouterr().err
        out = tmp_path / shlex.split(cmd)[shlex.split(cmd).index("--out") + 1]
        assert tuple(ddm.SyntheticSet.load(str(out / "synset.pt")).images.shape) == (30, 3, 64, 64)
