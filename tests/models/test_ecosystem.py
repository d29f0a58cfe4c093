"""Teachers and students from the ecosystem (issue 25, item 2): torchvision's ResNet-18 state
dicts load into ``resnet18`` as they are, and ``torchvision:NAME`` / ``timm:NAME`` build that
library's model, or are refused at construction naming the extra.

torchvision and timm cannot be installed here: a torchvision ResNet-18 is written below from its
published layout (module names, shapes, strides), and the libraries are fake modules put in
``sys.modules``; a missing library is ``sys.modules[name] = None``.
"""
import importlib
import importlib.machinery
import json
import re
import sys
import types

import pytest
import torch
from torch import nn

import ddmetrics as ddm
from ddmetrics.cli import main
from ddmetrics.models import (ResNet18, ResNetAP10, Teacher, get_model, load_state_dict_file, load_teacher_file,
                              register_model)

TORCHVISION = "pip install 'ddmetrics[torchvision]'"
TIMM = "pip install 'ddmetrics[timm]'"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/models/conftest.py


# --------------------------------------------------------------------------- torchvision's layout
class TvBasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock: stride on conv1, downsample = Sequential(conv1x1, bn)."""

    def __init__(self, in_c, out_c, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_c, out_c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_c, out_c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_c)
        self.downsample = None
        if stride != 1 or in_c != out_c:
            self.downsample = nn.Sequential(nn.Conv2d(in_c, out_c, 1, stride, bias=False), nn.BatchNorm2d(out_c))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TvResNet18(nn.Module):
    """torchvision.models.resnet18(num_classes=K); ``cifar=True``: the SRe²L / RDED modification
    (``conv1 = Conv2d(3, 64, 3, 1, 1, bias=False)``, ``maxpool = Identity()``)."""

    def __init__(self, num_classes=1000, cifar=False, width=64):
        super().__init__()
        self.conv1 = (nn.Conv2d(3, width, 3, 1, 1, bias=False) if cifar
                      else nn.Conv2d(3, width, 7, 2, 3, bias=False))
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1)
        c_in = width
        for i in range(4):
            c = width * 2 ** i
            setattr(self, f"layer{i + 1}", nn.Sequential(TvBasicBlock(c_in, c, 1 if i == 0 else 2),
                                                         TvBasicBlock(c, c, 1)))
            c_in = c
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c_in, num_classes)

    def pooled(self, x):
        """What ``fc`` receives (torchvision's forward up to ``torch.flatten``)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x):
        return self.fc(self.pooled(x))


def _trained_looking(model, seed=0):
    """Random weights and BatchNorm statistics (a fresh model's are 0 / 1: a wrong mapping of
    running statistics would go unseen)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                        else torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


# logits of the same weights by two implementations: AdaptiveAvgPool2d vs torch.mean sum in
# another order; float32 rounding over ~20 layers stays far below 1e-4
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cifar, size", [(False, 64), (True, 32), (False, 32), (True, 64)])
def test_a_torchvision_resnet18_state_dict_loads_into_resnet18_as_it_is(tmp_path, cifar, size):
    """Both stems at both sizes: 7x7 ImageNet weights at 32 px rebuild our 32-px model's stem as
    7x7 + max-pool; SRe²L's 3x3 CIFAR stem at 64 px (its Tiny-ImageNet convention) is kept too."""
    ref = _trained_looking(TvResNet18(num_classes=10, cifar=cifar))
    torch.save(ref.state_dict(), tmp_path / "tv.pt")
    ours = load_state_dict_file(ResNet18(3, 10, size), tmp_path / "tv.pt").eval()
    assert ours.stem == ("small" if cifar else "large") and ours.conv1.kernel_size == ((3, 3) if cifar else (7, 7))
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), **TOL)
        assert torch.allclose(ours.embed(x), ref.pooled(x), **TOL)
    # and back: what ddmetrics saves loads into torchvision's model (strict) and computes the same
    back = TvResNet18(num_classes=10, cifar=cifar)
    back.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert torch.allclose(back.eval()(x), ours(x), **TOL)


def test_an_sre2l_tiny_imagenet_checkpoint_loads_as_it_is(tmp_path):
    """SRe²L's Tiny-ImageNet teacher (SRe2L/*small_dataset/recover_tiny.py): torchvision's resnet18
    with a 3x3 stride-1 conv1 and no max-pool at 64 px, saved by torchvision's reference script as
    {"model": state_dict, "epoch": ...}."""
    ref = _trained_looking(TvResNet18(num_classes=200, cifar=True, width=8))
    torch.save({"model": ref.state_dict(), "epoch": torch.tensor(90)}, tmp_path / "tiny.pth")
    ours = load_state_dict_file(ResNet18(3, 200, 64, width=8), tmp_path / "tiny.pth").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert ours.stem == "small" and torch.allclose(ours(x), ref(x), **TOL)


def test_the_plain_load_state_dict_rebuilds_the_stem_and_keeps_the_random_state():
    ref = _trained_looking(TvResNet18(num_classes=5))
    ours = ResNet18(3, 5, 32)
    state = torch.get_rng_state()
    ours.load_state_dict(ref.state_dict())  # PyTorch's own loader, no ddmetrics file reader
    assert torch.equal(torch.get_rng_state(), state)  # the new conv1 drew no weights
    assert torch.equal(ours.conv1.weight, ref.conv1.weight) and isinstance(ours.stem_pool, nn.MaxPool2d)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), ref(x), **TOL)


def test_a_saved_resnet_reloads_and_an_older_ddmetrics_file_too(tmp_path):
    for cls, size in [(ResNet18, 32), (ResNet18, 64), (ResNetAP10, 32), (ResNetAP10, 64)]:
        model = _trained_looking(cls(3, 7, size, width=8))
        torch.save(model.state_dict(), tmp_path / "new.pt")
        # the keys ddmetrics wrote before issue 25: stem.N, stages.I.J.norm1, shortcut, classifier
        large_ap = cls is ResNetAP10 and size > 32

        def old_name(key):
            key = re.sub(r"^conv1\.", "stem.0.", key)
            key = re.sub(r"^bn1\.", "stem.2." if large_ap else "stem.1.", key)
            key = re.sub(r"^layer(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.", key)
            key = key.replace(".bn1.", ".norm1.").replace(".bn2.", ".norm2.").replace(".downsample.", ".shortcut.")
            return re.sub(r"^fc\.", "classifier.", key)

        torch.save({old_name(k): v for k, v in model.state_dict().items()}, tmp_path / "old.pt")
        old_keys = torch.load(tmp_path / "old.pt", weights_only=True)
        assert {"stem.0.weight", "stages.3.0.norm1.weight", "classifier.bias"} <= set(old_keys)
        assert any(k.startswith("stages.3.0.shortcut.") for k in old_keys)
        x = torch.randn(2, 3, size, size)
        for name in ("new.pt", "old.pt"):
            loaded = load_state_dict_file(cls(3, 7, size, width=8), tmp_path / name).eval()
            assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
            with torch.no_grad():
                assert torch.equal(loaded(x), model(x))


def test_a_torchvision_state_dict_for_other_images_is_refused_in_one_line(tmp_path):
    torch.save(TvResNet18(num_classes=1000).state_dict(), tmp_path / "imagenet.pt")
    model = ResNet18(1, 10, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_state_dict_file(model, tmp_path / "imagenet.pt")
    msg = str(info.value)
    # the 7x7 stem is accepted; the channels and the classes are not
    assert "3 of another shape (conv1.weight: (64, 3, 7, 7) in the file, (64, 1, 7, 7) in the model; " \
           "fc.weight: (1000, 512) in the file, (10, 512) in the model" in msg, msg
    assert model.stem == "small" and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_torchvision_state_dict_as_the_teacher_on_the_command_line(tmp_path):
    """``--teacher resnet18.pt --teacher-arch resnet18``: the run distils with those weights, and
    the run folder's teacher.pt keeps torchvision's keys (and its 7x7 stem) for evaluate."""
    ref = _trained_looking(TvResNet18(num_classes=10, width=64))
    ref.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # digits: one channel
    torch.save(ref.state_dict(), tmp_path / "tv.pt")
    out = tmp_path / "r"
    assert main(["distill", "--method", "wmdd", "--ipc", "1", "--teacher", str(tmp_path / "tv.pt"),
                 "--teacher-arch", "resnet18", "--set", "reg=none", "--out", str(out), "--quiet", "--runs", "0",
                 "--iterations", "1"]) == 0
    saved = torch.load(out / "teacher.pt", weights_only=True)
    assert set(saved) == set(ref.state_dict()) and all(torch.equal(saved[k], v) for k, v in ref.state_dict().items())
    teacher = load_teacher_file(out / "teacher.pt", lambda: get_model("resnet18", 1, 10, 8))
    x = ddm.data.load("digits", seed=0).test.images[:8]
    with torch.no_grad():
        assert torch.allclose(teacher(x), ref.eval()(x), **TOL)


# --------------------------------------------------------------------------- library models
def _fake_module(name):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)  # find_spec finds it, as installed
    return module


class TimmTiny(nn.Module):
    """timm's model API: forward_features (an unpooled map), forward_head(pre_logits), get_classifier."""

    def __init__(self, num_classes, in_chans):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.head_fc = nn.Linear(6, num_classes)

    def forward_features(self, x):
        return torch.relu(self.bn(self.stem(x)))

    def forward_head(self, x, pre_logits=False):
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head_fc(x)

    def get_classifier(self):
        return self.head_fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@pytest.fixture
def fake_timm(monkeypatch):
    timm = _fake_module("timm")
    timm.calls = []

    def create_model(name, pretrained=False, num_classes=1000, in_chans=3, **kw):
        timm.calls.append(dict(name=name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kw))
        return TimmTiny(num_classes, in_chans)

    timm.create_model = create_model
    timm.is_model = lambda name: name == "tiny"
    monkeypatch.setitem(sys.modules, "timm", timm)
    return timm


@pytest.fixture
def fake_torchvision(monkeypatch):
    tv = _fake_module("torchvision")
    tv.models = _fake_module("torchvision.models")
    tv.models.get_model = lambda name, num_classes=1000, **kw: {"resnet18": TvResNet18}[name.lower()](
        num_classes=num_classes, **kw)
    tv.models.list_models = lambda: ["resnet18"]
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv.models)
    return tv


@pytest.fixture
def no_data(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data was read before the model name was refused")

    monkeypatch.setattr(ddm.data, "load", refuse)


def test_timm_name_builds_timm_s_model_with_its_feature_api(fake_timm):
    net = get_model("TIMM:tiny", 1, 10, 8)  # the prefix is case-insensitive, like registered names
    assert fake_timm.calls == [dict(name="tiny", pretrained=False, num_classes=10, in_chans=1)]
    assert isinstance(net, Teacher) and isinstance(net.model, TimmTiny)
    x = torch.randn(3, 1, 8, 8)
    feats = net.embed(x)
    assert torch.equal(feats, net.model.forward_features(x).mean(dim=(2, 3)))  # pooled, before the classifier
    assert torch.equal(net.classifier(feats), net(x))
    # a deep copy (evaluate copies a teacher to another device) keeps the copy's own weights in use
    twin = __import__("copy").deepcopy(net)
    with torch.no_grad():
        twin.model.head_fc.weight.add_(1.0)
    assert not torch.equal(twin.classifier(twin.embed(x)), net(x))
    assert torch.equal(twin.classifier(twin.embed(x)), twin(x))


def test_timm_teacher_embedder_and_student_end_to_end_on_the_command_line(fake_timm, tmp_path):
    out = tmp_path / "r"
    assert main(["distill", "--method", "wmdd", "--ipc", "1", "--teacher-arch", "timm:tiny", "--set",
                 "eval_model=timm:tiny", "--set", "teacher_epochs=1", "--set", "eval_epochs=1", "--set", "reg=bn",
                 "--out", str(out), "--quiet", "--runs", "1", "--no-full", "--iterations", "1"]) == 0
    assert {c["in_chans"] for c in fake_timm.calls} == {1} and {c["num_classes"] for c in fake_timm.calls} == {10}
    saved = torch.load(out / "teacher.pt", weights_only=True)
    assert set(saved) == set(TimmTiny(10, 1).state_dict())  # timm's own keys, not the wrapper's
    report = json.loads((out / "report.json").read_text())
    assert report["evaluation"]["protocol_settings"]["model"] == "timm:tiny"
    # evaluate reads the teacher back into timm's model for the soft labels
    assert main(["evaluate", str(out / "synset.pt"), "--protocol", "soft", "--runs", "1", "--no-full", "--quiet",
                 "--json", str(tmp_path / "e.json")]) == 0
    teacher = load_teacher_file(out / "teacher.pt", lambda: get_model("timm:tiny", 1, 10, 8))
    assert all(torch.equal(teacher.model.state_dict()[k], v) for k, v in saved.items())
    # and as a DM embedder, redrawn at each step
    syn = ddm.Distiller(method="dm", embedder="timm:tiny", ipc=1, iterations=2).fit(
        ddm.data.load("digits", seed=0).train, progress=False)
    assert syn.images.shape[1:] == (1, 8, 8)


def test_torchvision_name_builds_torchvision_s_model_and_shares_its_state_dicts(fake_torchvision):
    net = get_model("torchvision:resnet18", 1, 10, 32)  # one channel: repeated into RGB
    assert isinstance(net, Teacher) and isinstance(net.model, TvResNet18) and net.head_name == "fc"
    _trained_looking(net.model)
    x = torch.randn(2, 1, 32, 32)
    ours = ResNet18(3, 10, 32)
    ours.load_state_dict(net.model.state_dict())  # torchvision's 7x7 stem, into ours
    with torch.no_grad():
        assert torch.equal(net(x), net.model(x.expand(-1, 3, -1, -1)))
        assert torch.allclose(net.classifier(net.embed(x)), net(x), **TOL)
        assert torch.allclose(ours.eval()(x.expand(-1, 3, -1, -1)), net(x), **TOL)
    with pytest.raises(ValueError, match="'torchvision:resnet18' takes images of 1 or 3 channels, not 4"):
        get_model("torchvision:resnet18", 4, 10, 32)
    with pytest.raises(ValueError, match="takes images of 1 or 3 channels, not 2"):
        ddm.models.check_image_size("torchvision:resnet18", 2, 10, (2, 32, 32), role="teacher_arch")


def test_unknown_library_models_are_refused_at_construction(fake_timm, fake_torchvision):
    with pytest.raises(ValueError, match="teacher_arch='timm:vit_nope': timm has no model 'vit_nope'"):
        ddm.Distiller(method="wmdd", teacher_arch="timm:vit_nope")
    with pytest.raises(ValueError, match="torchvision has no model 'resnet19'"):
        ddm.Distiller(method="dm", eval_model="torchvision:resnet19")
    with pytest.raises(ValueError, match="give the model after the prefix"):
        ddm.Distiller(method="dm", embedder="timm:")
    with pytest.raises(ValueError, match="keras:x.*torchvision:NAME / timm:NAME"):
        ddm.Distiller(method="dm", embedder="keras:x")
    with pytest.raises(ValueError, match="that library's"):
        register_model("timm:mine", lambda c, k, s: nn.Linear(c, k))


@pytest.mark.parametrize("library, field", [("torchvision", "teacher_arch"), ("timm", "eval_model"),
                                            ("timm", "embedder")])
def test_a_library_model_without_the_library_is_refused_naming_the_extra(monkeypatch, library, field):
    monkeypatch.setitem(sys.modules, library, None)  # import fails and find_spec says None: not installed
    command = TORCHVISION if library == "torchvision" else TIMM
    method = "wmdd" if field == "teacher_arch" else "dm"
    with pytest.raises(ModuleNotFoundError, match=rf"{field}='{library}:resnet18' needs {library}, which is not "
                                                  rf"installed: {re.escape(command)}"):
        ddm.Distiller(method=method, **{field: f"{library}:resnet18"})
    syn = ddm.SyntheticSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), torch.ones(2), num_classes=2)
    with pytest.raises(ModuleNotFoundError, match=re.escape(command)):
        ddm.evaluate(syn, syn.to_dataset(), model=f"{library}:resnet18", runs=1, progress=False)


def test_the_command_line_names_the_extra_before_any_data(monkeypatch, capsys, no_data, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    for args in (["--teacher-arch", "torchvision:resnet18"], ["--set", "eval_model=torchvision:resnet18"]):
        assert main(["distill", "--method", "wmdd", "--out", str(tmp_path / "r"), "--quiet", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert err.endswith(f"needs torchvision, which is not installed: {TORCHVISION}"), err
    assert not (tmp_path / "r").exists()


def test_an_installed_but_broken_library_is_one_clear_error(monkeypatch):
    # torchvision built for another torch fails at import (its compiled ops): said, with the extra
    finder = _fake_module("torchvision")
    monkeypatch.setitem(sys.modules, "torchvision", finder)
    monkeypatch.setattr("importlib.import_module", lambda name, *a: (_ for _ in ()).throw(
        RuntimeError("operator torchvision::nms does not exist")))
    with pytest.raises(ModuleNotFoundError, match=r"installed but cannot be imported \(operator torchvision::nms "
                                                  r"does not exist\).*" + re.escape(TORCHVISION)):
        ddm.Distiller(method="wmdd", teacher_arch="torchvision:resnet18")


# --------------------------------------------------------------------------- a ResNet-18 student
@pytest.mark.parametrize("protocol", ["hard", "soft"])
def test_resnet18_student_at_32_px_is_one_setting(monkeypatch, protocol):
    """``--set eval_model=resnet18`` on 3x32x32 images: the CIFAR ResNet-18 (3x3 stem, no
    max-pool) trains under the protocol, for one epoch here."""
    from ddmetrics.cli import _parse_overrides

    evaluate_module = importlib.import_module("ddmetrics.evaluate")  # ddm.evaluate is the function
    students, train_model = [], evaluate_module.train_model
    monkeypatch.setattr(evaluate_module, "train_model", lambda model, *a, **k: train_model(
        students.append(model) or model, *a, **k))
    cfg = ddm.Distiller(method="wmdd", **_parse_overrides(["eval_model=resnet18", "eval_epochs=1"])).config
    g = torch.Generator().manual_seed(0)
    test = ddm.data.ArrayDataset(torch.randn(20, 3, 32, 32, generator=g), torch.arange(20) % 2)
    syn = ddm.SyntheticSet(torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 0, 1, 1]), torch.full((4,), 0.5),
                           num_classes=2)
    teacher = get_model("resnet18", 3, 2, 32).eval() if protocol == "soft" else None
    report = ddm.evaluate(syn, test, teacher=teacher, runs=1, full_data=False, progress=False, seed=0,
                          **dict(cfg.evaluation_kwargs(), protocol=protocol))
    assert report.protocol_settings["model"] == "resnet18" and report.epochs == 1 and 0 <= report.runs[0] <= 1
    net = students[0]
    assert isinstance(net, ResNet18) and net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.stem_pool, nn.Identity) and net.feature_dim == 512
