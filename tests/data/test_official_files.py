"""Datasets by name from the files of their official distributions (issue 25, item 1), generated here.

IDX files (MNIST / Fashion-MNIST) are written byte by byte from the format's definition, SVHN's
``.mat`` with ``scipy.io.savemat``, CIFAR's python batches with ``pickle``; nothing is downloaded:
the download path is exercised with ``file://`` URLs and a refused ``urlopen``.
"""
import gzip
import hashlib
import os
import pickle
import struct
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.cli import main
from ddmetrics.data import _official, check_source, dataset_names, idx_dataset, load, read_idx, svhn_mat


# --------------------------------------------------------------------------- writers
def write_idx(path, array, compress):
    """An IDX file: two zero bytes, the type code (0x08: uint8), the number of dimensions, one
    big-endian uint32 per dimension, then the values."""
    array = np.asarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as fh:
        fh.write(data)


def write_mnist(folder, n_train=60, n_test=20, seed=0, compress=True):
    """Four IDX files as MNIST ships them; returns the arrays written."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte{suffix}"), x, compress)
        write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte{suffix}"), y, compress)
        out[split] = (x, y)
    return out


def write_svhn(folder, n_train=40, n_test=20, seed=0):
    from scipy.io import savemat

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # SVHN's (H, W, C, N)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(-1, 1)  # 1..10, 10 is the digit 0
        savemat(os.path.join(folder, f"{split}_32x32.mat"), {"X": x, "y": y})
        out[split] = (x, y)
    return out


def write_cifar10(folder, per_batch=6, n_test=10, seed=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for b in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        with open(os.path.join(folder, f"data_batch_{b}"), "wb") as fh:
            pickle.dump({b"data": data, b"labels": [int(v) for v in np.arange(per_batch) % 3]}, fh, protocol=4)
    test = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    with open(os.path.join(folder, "test_batch"), "wb") as fh:
        pickle.dump({b"data": test, b"labels": [int(v) for v in np.arange(n_test) % 3]}, fh, protocol=4)
    with open(os.path.join(folder, "batches.meta"), "wb") as fh:
        pickle.dump({b"label_names": [b"cat", b"dog", b"ship"]}, fh, protocol=4)
    return test


# --------------------------------------------------------------------------- readers
@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_read_exactly(tmp_path, compress):
    written = write_mnist(tmp_path, compress=compress)
    x, y = written["train"]
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{'.gz' if compress else ''}"), x)
    ds = idx_dataset(tmp_path / f"train-images-idx3-ubyte{'.gz' if compress else ''}",
                     tmp_path / f"train-labels-idx1-ubyte{'.gz' if compress else ''}")
    assert ds.image_shape == (1, 28, 28)
    # uint8 / 255, computed the same way: bit equality
    assert torch.equal(ds.images, torch.from_numpy(x).unsqueeze(1).float() / 255.0)
    assert torch.equal(ds.labels, torch.from_numpy(y.astype(np.int64)))


def test_idx_other_types_and_bad_headers(tmp_path):
    # a big-endian int32 array (type 0x0C): the byte order is the file's, not the machine's
    values = np.array([[1, -2, 70000], [3, 4, -5]], dtype=">i4")
    path = tmp_path / "ints.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 3) + values.tobytes())
    assert np.array_equal(read_idx(path), values.astype(np.int32))
    (tmp_path / "bad_magic").write_bytes(b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match=r"bad_magic: not an IDX file"):
        read_idx(tmp_path / "bad_magic")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"\x00\x01")
    with pytest.raises(ValueError, match=r"short: its header gives shape \(5,\).*the file has 10 bytes"):
        read_idx(tmp_path / "short")


def test_svhn_mat_layout_and_label_ten_is_zero(tmp_path):
    written = write_svhn(tmp_path)
    ds = svhn_mat(tmp_path / "test_32x32.mat")
    x, y = written["test"]
    assert ds.image_shape == (3, 32, 32) and ds.class_names == [str(d) for d in range(10)]
    # image i is X[:, :, :, i] with channels first: pixel (c, h, w) = X[h, w, c, i]
    assert torch.equal(ds.images, torch.from_numpy(x.transpose(3, 2, 0, 1).copy()).float() / 255.0)
    assert ds.labels.tolist() == [int(v) % 10 for v in y.reshape(-1)]
    assert 0 in ds.labels.tolist() and 10 not in ds.labels.tolist()
    (tmp_path / "junk.mat").write_bytes(b"not a matlab file at all")
    with pytest.raises(ValueError, match=r"junk\.mat: cannot read it as a MATLAB file"):
        svhn_mat(tmp_path / "junk.mat")


# --------------------------------------------------------------------------- load by name
def test_mnist_full_by_name_keeps_its_own_test_split(tmp_path):
    written = write_mnist(tmp_path / "MNIST" / "raw")  # torchvision's layout under root
    splits = load("mnist-full", root=tmp_path, seed=0)
    x_test, y_test = written["t10k"]
    assert len(splits.test) == len(y_test) and len(splits.train) + len(splits.val) == 60
    assert torch.equal(splits.test.labels, torch.from_numpy(y_test.astype(np.int64)))
    # the test images are the t10k file's, normalised with the training split's statistics
    raw = splits.denormalize(splits.test.images)
    assert torch.allclose(raw, torch.from_numpy(x_test).unsqueeze(1).float() / 255.0, atol=1e-5)  # float32 round trip


def test_fashion_mnist_class_names_and_svhn_by_name(tmp_path):
    write_mnist(tmp_path / "fashion-mnist", compress=False)
    splits = load("fashion-mnist", root=tmp_path)
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    write_svhn(tmp_path / "svhn")
    svhn = load("svhn", root=tmp_path / "svhn")  # the files directly in root
    assert len(svhn.test) == 20 and svhn.train.image_shape == (3, 32, 32)


def test_cifar10_by_name_from_the_unpacked_archive_folder(tmp_path):
    test = write_cifar10(tmp_path / "cifar-10-batches-py")
    splits = load("cifar10", root=tmp_path)
    assert len(splits.test) == 10 and len(splits.train) + len(splits.val) == 30
    assert splits.class_names == ["cat", "dog", "ship"]
    raw = splits.denormalize(splits.test.images)
    assert torch.allclose(raw, torch.from_numpy(test.reshape(-1, 3, 32, 32)).float() / 255.0, atol=1e-5)


# --------------------------------------------------------------------------- bad input
def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError) as err:
        load("cifar-10")
    msg = str(err.value)
    assert "'cifar-10' is neither a known dataset name nor an existing path (did you mean 'cifar10'?)" in msg
    for name in ("digits", "mnist", "cifar10", "cifar100", "mnist-full", "fashion-mnist", "svhn", "tiny-imagenet"):
        assert name in msg
    assert set(dataset_names()) >= {"cifar10", "svhn", "mnist-full"}


def test_missing_root_names_the_files_expected_and_where(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("nothing may be downloaded without download=True")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(ValueError, match=r"dataset 'cifar10' is read from its official files: give root="):
        load("cifar10")
    with pytest.raises(ValueError) as err:
        check_source("mnist-full", root=tmp_path)
    msg = str(err.value)
    assert f"root {str(tmp_path)!r} does not hold its files" in msg
    assert "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz]" in msg
    assert repr(os.path.join(str(tmp_path), "mnist")) in msg and "download=True (--download)" in msg
    with pytest.raises(ValueError, match="root: dataset 'digits' is built in"):
        load("digits", root=tmp_path)
    with pytest.raises(ValueError, match="val_dir: dataset 'svhn' has its own test split"):
        check_source("svhn", root=tmp_path, val_dir=tmp_path)


def test_cli_missing_root_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data was read before the missing files were refused")

    monkeypatch.setattr(ddm.data, "load", refuse)
    out = tmp_path / "run"
    assert main(["distill", "--dataset", "svhn", "--data-root", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("ddmetrics distill: error: dataset 'svhn': root")
    assert "train_32x32.mat, test_32x32.mat" in err and "--download" in err
    assert not out.exists()
    assert main(["distill", "--dataset", "cifar", "--out", str(out)]) == 2
    assert "did you mean 'cifar10'?" in capsys.readouterr().err
    assert not out.exists()


def test_svhn_without_scipy_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(ModuleNotFoundError, match=r"dataset 'svhn' needs scipy.*pip install 'ddmetrics\[svhn\]'"):
        check_source("svhn", root=tmp_path)


# --------------------------------------------------------------------------- download
def _md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_verify_md5_on_a_generated_file(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 1000)
    _official.verify_md5(path, hashlib.md5(bytes(range(256)) * 1000).hexdigest().upper())  # case does not matter
    with pytest.raises(ValueError, match=r"blob\.bin: MD5 [0-9a-f]{32}, not the published 0{32}"):
        _official.verify_md5(path, "0" * 32)


@pytest.fixture
def served_mnist(tmp_path, monkeypatch):
    """mnist-full's table entry pointing at generated files served from file:// URLs."""
    source = tmp_path / "server"
    written = write_mnist(source)
    spec = _official.OFFICIAL["mnist-full"]
    files = tuple(_official.RemoteFile(f.name, ((source / f.name).as_uri(),), _md5(source / f.name))
                  for f in spec.files)
    monkeypatch.setitem(_official.OFFICIAL, "mnist-full", _official.NamedDataset(
        spec.name, spec.needs, spec.folders, files, spec.archive, spec.read, spec.homepage, spec.extra))
    return source, written


def test_download_checks_the_published_md5_then_reads(tmp_path, served_mnist):
    root = tmp_path / "data"
    with pytest.raises(ValueError, match="does not hold its files"):
        load("mnist-full", root=root)  # not without download=True
    splits = load("mnist-full", root=root, download=True)
    assert sorted(os.listdir(root / "mnist")) == sorted(f.name for f in _official.OFFICIAL["mnist-full"].files)
    assert torch.equal(splits.test.labels, torch.from_numpy(served_mnist[1]["t10k"][1].astype(np.int64)))


def test_download_with_a_wrong_checksum_leaves_nothing(tmp_path, served_mnist, monkeypatch):
    spec = _official.OFFICIAL["mnist-full"]
    bad = (_official.RemoteFile(spec.files[0].name, spec.files[0].urls, "0" * 32),) + spec.files[1:]
    monkeypatch.setitem(_official.OFFICIAL, "mnist-full", _official.NamedDataset(
        spec.name, spec.needs, spec.folders, bad, spec.archive, spec.read, spec.homepage, spec.extra))
    root = tmp_path / "data"
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: the file downloaded from file://.* has MD5 "
                                         r"[0-9a-f]{32}, not the published 0{32}"):
        load("mnist-full", root=root, download=True)
    assert os.listdir(root / "mnist") == []  # the temporary file is removed, nothing renamed


def test_download_never_replaces_a_file_it_did_not_write(tmp_path, served_mnist):
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    (root / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"the user's own file")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: MD5 .* not the published"):
        load("mnist-full", root=root, download=True)
    assert (root / "mnist" / "train-images-idx3-ubyte.gz").read_bytes() == b"the user's own file"


def test_offline_download_names_the_root_and_the_files(tmp_path, monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "data"
    with pytest.raises(ValueError) as err:
        load("cifar10", root=root, download=True)
    msg = str(err.value)
    assert f"root {str(root)!r} does not hold its files" in msg
    assert "data_batch_1" in msg and "test_batch" in msg
    assert "downloading cifar-10-python.tar.gz failed" in msg and "cs.toronto.edu" in msg
    assert "Temporary failure in name resolution" in msg and "by hand" in msg
    assert [n for n in os.listdir(root) if not n.startswith(".")] == [] and not any(
        n.endswith(".part") for n in os.listdir(root))


def test_archive_download_is_unpacked_into_root(tmp_path, monkeypatch):
    import tarfile

    source = tmp_path / "server"
    write_cifar10(source / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    spec = _official.OFFICIAL["cifar10"]
    monkeypatch.setitem(_official.OFFICIAL, "cifar10", _official.NamedDataset(
        spec.name, spec.needs, spec.folders, (_official.RemoteFile(spec.files[0].name, (archive.as_uri(),),
                                                                   _md5(archive)),),
        spec.archive, spec.read, spec.homepage, spec.extra))
    root = tmp_path / "data"
    splits = load("cifar10", root=root, download=True)
    assert len(splits.test) == 10
    assert sorted(n for n in os.listdir(root)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    # a hostile member outside the folder is refused before anything is written
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py" / "test_batch", arcname="../escaped")
    with tarfile.open(evil) as tar, pytest.raises(ValueError, match="refusing member '../escaped'"):
        _official._safe_members(tar, str(evil))
