"""A caller's objects are borrowed, never changed, and input no model of the run can take is
refused before any work (issue 23, items 7 and 8: findings 1, 2 and 5)."""
import pytest
import torch
from torch import nn

import ddmetrics as ddm
from ddmetrics.cli import main
from ddmetrics.diagnose import diagnose
from ddmetrics.distill import barycenter_matching, distiller
from ddmetrics.models import MODELS, get_model


class TorchvisionStyle(nn.Module):
    """A classifier as torchvision shapes it: a body, global pooling, a final ``fc`` (seen through as_teacher)."""

    def __init__(self, num_classes=3, width=8):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


def _model(kind):
    with ddm.utils.seeded(0):
        return get_model("convnet_bn", 1, 3, 8) if kind == "convnet_bn" else TorchvisionStyle()


def _set_state(model, state):
    """``"training"``: everything trains; ``"mixed"``: the model trains but its first BatchNorm is in
    eval mode (frozen statistics) and every other parameter has requires_grad False."""
    model.train()
    for i, prm in enumerate(model.parameters()):
        prm.requires_grad_(state == "training" or i % 2 == 0)
    if state == "mixed":
        next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).eval()


def _state(model):
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


STATES = [("convnet_bn", "training"), ("convnet_bn", "mixed"), ("torchvision", "training"), ("torchvision", "mixed")]


@pytest.mark.parametrize("kind,state", STATES)
def test_fit_gives_the_teacher_back_as_it_was(small, kind, state):
    model = _model(kind)
    _set_state(model, state)
    before = _state(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    ddm.Distiller(method="wmdd", ipc=1, iterations=2, teacher=model).fit(small, progress=False)
    assert _state(model) == before
    # borrowed, not trained: every weight and BatchNorm statistic is as it was
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind,state", STATES[:2])
def test_fit_gives_the_teacher_back_when_it_fails_midway(small, monkeypatch, kind, state):
    model = _model(kind)
    _set_state(model, state)
    before = _state(model)

    def fail(self, unit, ckpt=None, progress=False):
        raise RuntimeError("interrupted in unit 0")

    monkeypatch.setattr(barycenter_matching.BarycenterMatching, "run_unit", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        ddm.Distiller(method="wmdd", ipc=1, iterations=2, teacher=model).fit(small, progress=False)
    assert _state(model) == before


def _one_per_class(small):
    first = torch.stack([small.class_indices(k)[0] for k in range(3)])  # one real image per class
    return ddm.SyntheticSet(small.images[first].clone(), torch.arange(3), torch.ones(3), meta={"ipc": 1},
                            num_classes=3)


@pytest.mark.parametrize("kind,state", STATES)
def test_evaluate_gives_the_teacher_back_as_it_was(small, kind, state):
    model = _model(kind)
    _set_state(model, state)
    before = _state(model)
    ddm.evaluate(_one_per_class(small), small, teacher=ddm.models.as_teacher(model), protocol="soft", runs=1,
                 epochs=1, progress=False, full_data=False, device="cpu")
    assert _state(model) == before


@pytest.mark.parametrize("kind,state", STATES)
def test_diagnose_gives_the_model_back_as_it_was(small, kind, state):
    model = _model(kind)
    _set_state(model, state)
    before = _state(model)
    diagnose(_one_per_class(small), small, ddm.models.as_teacher(model), losses=["mmd"], device="cpu")
    assert _state(model) == before


def test_frozen_restores_on_error():
    model = _model("torchvision")
    _set_state(model, "mixed")
    before = _state(model)
    with pytest.raises(KeyError):
        with ddm.utils.frozen(model):
            assert not model.training and not any(m.training for m in model.modules())
            assert not any(p.requires_grad for p in model.parameters())
            raise KeyError("inside")
    assert _state(model) == before


# ---------------------------------------------------------------- a teacher with other classes

def test_a_teacher_with_other_outputs_is_refused_before_any_feature(small, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the teacher's outputs were checked")

    monkeypatch.setattr(barycenter_matching, "class_features", no_work)
    monkeypatch.setattr(barycenter_matching, "per_class_bn_stats", no_work)
    wide = TorchvisionStyle(num_classes=1000)
    with pytest.raises(ValueError, match=r"teacher \(TorchvisionStyle\) has 1000 outputs but the data has 3 classes"):
        ddm.Distiller(method="wmdd", ipc=1, iterations=2, teacher=wide).fit(small, progress=False)
    syn = ddm.SyntheticSet(small.images[:3].clone(), torch.arange(3), torch.ones(3), meta={"ipc": 1}, num_classes=3)
    with pytest.raises(ValueError, match="has 1000 outputs but the data has 3 classes"):
        ddm.evaluate(syn, small, teacher=ddm.models.as_teacher(wide), protocol="soft", runs=1, epochs=1,
                     progress=False, full_data=False, device="cpu")


def test_a_scripted_teacher_with_other_outputs_is_refused_on_the_command_line(tmp_path, capsys):
    # digits have 10 classes; this TorchScript teacher was trained for 3
    scripted = torch.jit.script(_ScriptedThree().eval())
    torch.jit.save(scripted, str(tmp_path / "three.pt"))
    assert main(["distill", "--method", "wmdd", "--ipc", "1", "--teacher", str(tmp_path / "three.pt"),
                 "--set", "reg=none", "--out", str(tmp_path / "r"), "--quiet", "--runs", "1",
                 "--iterations", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has 3 outputs but the data has 10 classes" in err, err
    assert not (tmp_path / "r").exists()


class _ScriptedThree(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.classifier = nn.Linear(4, 3)

    @torch.jit.export
    def embed(self, x):
        return torch.flatten(torch.relu(self.conv(x)).mean((2, 3), keepdim=True), 1)

    def forward(self, x):
        return self.classifier(self.embed(x))


# ---------------------------------------------------------------- images too small for a model

def _tiny_images(size, n=30):
    x = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))
    return ddm.data.ArrayDataset(x, torch.arange(n) % 3, 3)


def test_images_too_small_for_the_embedder_are_refused_before_any_work(monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("synthesis started before the image size was checked")

    monkeypatch.setattr(ddm.distill.distribution_matching, "embedder_at", no_work)
    state = torch.get_rng_state()
    # one synthetic image per class: the instance norm of the last block would see one value
    with pytest.raises(ValueError, match=r"1x2x2 are too small for the embedder 'convnet': it needs images of at "
                                         r"least 8x8"):
        ddm.Distiller(method="dm", ipc=1, iterations=2).fit(_tiny_images(2), progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the probe draws nothing from the caller's generator


def test_images_too_small_for_the_teacher_architecture_are_refused_before_training(monkeypatch):
    def valid_conv(channels, num_classes, image_size):  # a 5x5 convolution without padding
        return nn.Sequential(nn.Conv2d(channels, 4, 5), nn.Flatten(), nn.LazyLinear(num_classes))

    monkeypatch.setitem(MODELS, "valid_conv5", valid_conv)

    def no_training(*args, **kwargs):
        raise AssertionError("the teacher was trained before the image size was checked")

    monkeypatch.setattr(distiller, "train_model", no_training)
    with pytest.raises(ValueError, match=r"1x2x2 are too small for the teacher_arch 'valid_conv5': it needs images "
                                         r"of at least 5x5"):
        ddm.Distiller(method="wmdd", ipc=1, iterations=2, teacher_arch="valid_conv5").fit(_tiny_images(2),
                                                                                           progress=False)


def test_image_size_check_accepts_what_runs():
    # the built-in models on the sizes the project uses, and a 2x2 image set with two images per class
    for name in ("convnet", "convnet_bn", "resnetap10", "resnet18"):
        ddm.models.check_image_size(name, 1, 10, (1, 8, 8), batch_size=2)
    ddm.models.check_image_size("convnet", 1, 10, (1, 2, 2), batch_size=2)
    with pytest.raises(ValueError, match="at least 16x16"):  # ResNetAP-10's BatchNorm on one 1x1 sample
        ddm.models.check_image_size("resnetap10", 1, 10, (1, 8, 8), role="embedder", batch_size=1)

    def reads_its_weights(channels, num_classes, image_size):  # cannot be built on the meta device
        net = get_model("convnet", channels, num_classes, image_size)
        assert float(net.classifier.weight.abs().sum()) > 0
        return net

    state = torch.get_rng_state()
    ddm.models.check_image_size(reads_its_weights, 1, 10, (1, 8, 8), batch_size=2)  # judged by a real build
    assert torch.equal(torch.get_rng_state(), state)
