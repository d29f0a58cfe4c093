"""Any trained classifier as a teacher or embedder: as_teacher, the model registry, teacher files."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import ddmetrics as ddm
from ddmetrics.models import Teacher, as_teacher, get_model, load_teacher_file, register_model


class TorchvisionStyle(nn.Module):
    """The shape of a torchvision ResNet: conv/bn/relu body, global pool, flatten, a final `fc`."""

    def __init__(self, channels=1, num_classes=3, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ScriptableTeacher(nn.Module):
    """A classifier that exports the teacher protocol to TorchScript (embed, classifier)."""

    def __init__(self, channels: int = 1, num_classes: int = 3, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(4 * width, num_classes)

    @torch.jit.export
    def embed(self, x):
        return torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1)

    def forward(self, x):
        return self.classifier(self.embed(x))


def _scripted_file(path, num_classes):
    torch.manual_seed(0)
    scripted = torch.jit.script(ScriptableTeacher(num_classes=num_classes).eval())
    torch.jit.save(scripted, str(path))
    return scripted


def test_as_teacher_embeds_what_the_head_receives_without_copying():
    torch.manual_seed(0)
    model = TorchvisionStyle().eval()
    teacher = as_teacher(model)
    x = torch.randn(5, 1, 8, 8)
    body = model.layer1(model.relu(model.bn1(model.conv1(x))))
    expected = torch.flatten(model.avgpool(body), 1)
    assert torch.allclose(teacher.embed(x), expected)
    assert torch.allclose(teacher.classifier(teacher.embed(x)), model(x))
    assert model.fc.weight.data_ptr() == teacher.model.fc.weight.data_ptr()  # shared, not copied
    assert [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)] == [model.bn1, model.layer1[1]]
    assert as_teacher(get_model("convnet_bn", 1, 3, 8)).__class__.__name__ == "ConvNet"  # ours pass through


def test_as_teacher_errors_name_the_head():
    with pytest.raises(ValueError, match="head='classifier'.*fc"):
        as_teacher(TorchvisionStyle(), head="classifier")
    with pytest.raises(TypeError, match="head"):
        as_teacher(TorchvisionStyle(), head=3)
    with pytest.raises(TypeError, match="model"):
        as_teacher("resnet18")


def test_callable_head():
    model = TorchvisionStyle().eval()
    feats = lambda x: torch.flatten(model.avgpool(model.layer1(model.relu(model.bn1(model.conv1(x))))), 1)  # noqa
    teacher = as_teacher(model, head=feats, classifier=model.fc)
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(teacher.classifier(teacher.embed(x)), model(x))
    with pytest.raises(ValueError, match="classifier"):
        Teacher(model, head=feats).classifier(teacher.embed(x))


def test_a_torchvision_style_teacher_drives_wmdd_with_its_own_batchnorm(small):
    torch.manual_seed(0)
    model = TorchvisionStyle()
    ddm.models.train_model(model, small, epochs=3, seed=0, progress=False)
    d = ddm.Distiller(method="wmdd", teacher=model, ipc=2, seed=0, iterations=100, init="noise", lr=0.1,
                      reg="none", augment="none")
    syn = d.fit(small, progress=False)
    assert isinstance(d.teacher_, Teacher) and d.teacher_.model is model
    info = syn.meta["info"]
    assert info["feature_loss_last"] < 0.1 * info["feature_loss_first"]  # the features reach the barycenter
    from ddmetrics.distill.pcbn import per_class_bn_stats

    stats = per_class_bn_stats(d.teacher_, small, 3)
    assert len(stats.mean) == 2 and stats.mean[0].shape == (3, 8)  # the model's own two BatchNorm2d layers
    syn = ddm.Distiller(method="wmdd", teacher=model, ipc=1, seed=0, iterations=3).fit(small, progress=False)
    assert torch.isfinite(syn.images).all()


def test_registered_models_and_builders_are_embedders_and_students(small):
    calls = []

    def tiny(channels, num_classes, image_size):
        calls.append(image_size)
        return get_model("convnet", channels, num_classes, image_size, width=16)

    register_model("tiny_convnet_test", tiny)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_convnet_test", lambda *a: None)
    register_model("tiny_convnet_test", tiny, override=True)
    assert "tiny_convnet_test" in ddm.models.available_models()
    syn = ddm.Distiller(method="dm", embedder="tiny_convnet_test", ipc=1, iterations=4, iters_per_model=2,
                        seed=0).fit(small, progress=False)
    # a fresh random embedder every iters_per_model steps, per class, and one build on the meta device by
    # the image-size check before any work
    assert len(calls) == 3 * 2 + 1
    d = ddm.Distiller(method="dm", embedder=tiny, eval_model=tiny, ipc=1, iterations=2, seed=0)
    assert d.config.to_dict()["embedder"].startswith("<builder ")
    report = ddm.evaluate(d.fit(small, progress=False), small, runs=1, epochs=2, progress=False,
                          **{k: v for k, v in d.config.evaluation_kwargs().items() if k != "epochs"})
    assert 0.0 <= report.mean <= 1.0 and len(calls) > 6
    assert syn.meta["config"]["embedder"] == "tiny_convnet_test"


def test_entry_point_model_is_found_by_name_and_is_an_embedder_and_a_student(tmp_path):
    # a throw-away distribution that advertises a model under the ddmetrics.models group; a fresh
    # interpreter, so that its entry points are read (once per process) with the plugin on the path
    pkg = tmp_path / "plug"
    pkg.mkdir()
    (pkg / "plugnet.py").write_text(textwrap.dedent('''
        from ddmetrics.models import ConvNet
        CALLS = []
        class PlugNet(ConvNet):
            """A narrow ConvNet (plugin)."""
        def build(channels, num_classes, image_size):
            CALLS.append([channels, num_classes, image_size])
            return PlugNet(channels, num_classes, image_size, width=8)
    '''))
    dist = pkg / "plugnet-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugnet\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ddmetrics.models]\nPlugNet = plugnet:build\n")
    code = textwrap.dedent('''
        import json, sys
        sys.path.insert(0, %r)
        import torch, ddmetrics as ddm
        torch.set_num_threads(1)
        train = ddm.data.load("digits", seed=0).train
        keep = train.labels < 3
        data = ddm.data.ArrayDataset(train.images[keep][:60], train.labels[keep][:60], 3)
        listed = "plugnet" in ddm.models.available_models()
        net = ddm.models.get_model("PlugNet", 1, 3, 8)
        d = ddm.Distiller(method="dm", embedder="plugnet", eval_model="plugnet", ipc=1, iterations=2,
                          iters_per_model=1, seed=0)
        syn = d.fit(data, progress=False)
        settings = {k: v for k, v in d.config.evaluation_kwargs().items() if k != "epochs"}
        report = ddm.evaluate(syn, data, runs=1, epochs=2, progress=False, **settings)
        import plugnet
        print(json.dumps({"listed": listed, "type": type(net).__name__, "calls": plugnet.CALLS,
                          "accuracy": report.runs[0], "embedder": syn.meta["config"]["embedder"]}))
    ''' % str(pkg))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["listed"] and got["type"] == "PlugNet" and got["embedder"] == "plugnet"
    # one direct build, two on the meta device by the image-size checks (embedder, eval_model), a fresh random
    # embedder per step for each of the 3 classes, one student
    assert got["calls"] == [[1, 3, 8]] * (1 + 2 + 3 * 2 + 1)
    assert 0.0 <= got["accuracy"] <= 1.0


def test_teacher_files(tmp_path):
    model = get_model("convnet_bn", 1, 3, 8)
    torch.save(model.state_dict(), tmp_path / "t.pt")
    loaded = load_teacher_file(tmp_path / "t.pt", lambda: get_model("convnet_bn", 1, 3, 8))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")  # a training checkpoint
    assert load_teacher_file(tmp_path / "ckpt.pt", lambda: get_model("convnet_bn", 1, 3, 8)) is not None
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state_dict"):
        load_teacher_file(tmp_path / "list.pt", lambda: get_model("convnet_bn", 1, 3, 8))
    with pytest.raises(ValueError, match="does not fit"):
        load_teacher_file(tmp_path / "t.pt", lambda: get_model("resnetap10", 1, 3, 8))
    scripted = torch.jit.script(TorchvisionStyle())
    scripted.save(str(tmp_path / "ts.pt"))
    with pytest.raises(ValueError, match="TorchScript teacher must export embed"):
        load_teacher_file(tmp_path / "ts.pt", lambda: get_model("convnet_bn", 1, 3, 8))


def test_torchscript_teacher_file_drives_wmdd(tmp_path, small):
    scripted = _scripted_file(tmp_path / "ts.pt", num_classes=3)
    built = []
    loaded = load_teacher_file(tmp_path / "ts.pt", lambda: built.append("an architecture"))
    assert not built and not loaded.training  # used as it is: no architecture is built
    x = small.images[:16]
    assert torch.equal(loaded.embed(x), scripted.embed(x))
    assert torch.equal(loaded.classifier(loaded.embed(x)), scripted(x))
    d = ddm.Distiller(method="wmdd", teacher=loaded, ipc=1, seed=0, iterations=3, reg="none")
    syn = d.fit(small, progress=False)
    assert d.teacher_ is loaded and syn.images.shape == (3, 1, 8, 8) and torch.isfinite(syn.images).all()
    assert torch.equal(d.teacher_.embed(x), scripted.embed(x))  # not retrained, not changed
    # the barycenter targets are its features: the class's real features, through the scripted embed
    from ddmetrics.distill.barycenter_matching import class_features

    idx = small.class_indices(1)
    assert torch.equal(class_features(d.teacher_, small, idx), scripted.embed(small.images[idx]))
    # PCBN needs hooks on its BatchNorm layers, which TorchScript hides: refused, naming the way out
    with pytest.raises(ValueError, match="TorchScript.*reg='none'"):
        ddm.Distiller(method="wmdd", teacher=loaded, ipc=1, iterations=1).fit(small, progress=False)


def test_torchscript_teacher_file_on_the_command_line(tmp_path, monkeypatch):
    from ddmetrics import cli

    scripted = _scripted_file(tmp_path / "ts.pt", num_classes=10)  # digits: 10 classes
    used = []

    def keep(*args, _load=cli._load_teacher, **kwargs):
        used.append(_load(*args, **kwargs))
        return used[-1]

    monkeypatch.setattr(cli, "_load_teacher", keep)
    out = tmp_path / "r"
    # students of 3 epochs of a ConvNet (the soft protocol's own: 300 of a ResNet-18): what is under test is
    # which teacher labels for them, not how well they learn
    assert cli.main(["distill", "--method", "wmdd", "--ipc", "1", "--teacher", str(tmp_path / "ts.pt"),
                     "--set", "reg=none", "eval_model=convnet", "eval_epochs=3", "--out", str(out), "--quiet",
                     "--runs", "0", "--iterations", "2"]) == 0
    splits = ddm.data.load("digits", seed=0)
    x = splits.train.images[:16]
    assert len(used) == 1 and torch.equal(used[0].embed(x), scripted.embed(x))
    # the run folder keeps it as TorchScript, so evaluate / diagnose read back the teacher that was used
    saved = torch.jit.load(str(out / "teacher.pt"), map_location="cpu")
    assert torch.equal(saved.embed(x), scripted.embed(x)) and torch.equal(saved(x), scripted(x))
    report = tmp_path / "e.json"
    assert cli.main(["evaluate", str(out / "synset.pt"), "--protocol", "soft", "--runs", "1", "--no-full",
                     "--quiet", "--json", str(report)]) == 0
    # the scripted teacher's soft labels: the students of the API with that teacher, the same seed and the
    # stored overrides are the command's, to the bit (the same operations in the same order)
    syn = ddm.SyntheticSet.load(out / "synset.pt")
    expected = ddm.evaluate(syn, splits.test, protocol="soft", model="convnet", epochs=3, runs=1, teacher=scripted,
                            seed=0, progress=False)
    assert json.loads(report.read_text())["runs"] == expected.runs
    assert cli.main(["diagnose", str(out / "synset.pt"), "--model", "teacher", "--losses", "mmd"]) == 0


def test_a_wrapped_classifier_in_the_run_folder_loads_into_its_architecture(tmp_path, monkeypatch):
    # a torchvision-style architecture registered by the user: --teacher loads its state dict and
    # as_teacher wraps it; teacher.pt must hold the architecture's keys, not the wrapper's
    from ddmetrics import cli
    from ddmetrics.models import register_model

    register_model("tvstyle_test", override=True)(lambda channels, num_classes, size: TorchvisionStyle(
        channels, num_classes))
    model = TorchvisionStyle(1, 10)
    torch.save(model.state_dict(), tmp_path / "tv.pt")
    out = tmp_path / "r"
    assert cli.main(["distill", "--method", "wmdd", "--ipc", "1", "--teacher", str(tmp_path / "tv.pt"),
                     "--teacher-arch", "tvstyle_test", "--out", str(out), "--quiet", "--runs", "0",
                     "--iterations", "2"]) == 0
    saved = torch.load(out / "teacher.pt", weights_only=True)
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert cli.main(["diagnose", str(out / "synset.pt"), "--model", "teacher", "--losses", "mmd"]) == 0
