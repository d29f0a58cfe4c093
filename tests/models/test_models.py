"""Tests for ddmetrics.models: shapes, norms, registry, seeded training, accuracy."""
import pytest
import torch
from torch import nn

from ddmetrics.data import ArrayDataset, load
from ddmetrics.models import ConvNet, ResNet18, ResNetAP10, accuracy, available_models, get_model, train_model

NAMES = ["convnet", "convnet_bn", "resnetap10", "resnet18"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/models/conftest.py


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels, size", [(1, 8), (3, 32)])
def test_shapes(name, channels, size):
    torch.manual_seed(0)
    kw = {"width": 16} if name.startswith("resnet") else {"width": 32}
    model = get_model(name, channels, 7, size, **kw)
    x = torch.randn(3, channels, size, size)
    assert model(x).shape == (3, 7)
    feats = model.embed(x)
    assert feats.shape == (3, model.feature_dim)


def test_convnet_feature_dims():
    assert ConvNet(3, 10, 32).feature_dim == 128 * 4 * 4
    assert ConvNet(1, 10, 8).feature_dim == 128
    assert ConvNet(1, 10, 8, depth=5, width=8).feature_dim == 8  # pools stop at 1x1
    assert ResNet18(3, 10, 32).feature_dim == 512 and ResNetAP10(1, 10, 8, width=8).feature_dim == 64
    big = ResNet18(3, 5, 64, width=8)
    assert big(torch.randn(2, 3, 64, 64)).shape == (2, 5)


@pytest.mark.parametrize("name", ["convnet", "convnet_bn"])
def test_convnet_on_mnist_is_dc_dm_s_2048_d_network(name):
    """DC/DM's ConvNet (DatasetCondensation networks.py:95-99) pads the first conv of a 1x28x28
    input by 3: 28 -> 32 -> 16 -> 8 -> 4, so 128*4*4 = 2048-d features, as 3x32x32 input; other
    inputs keep padding 1, and first_padding=1 gives the plain network (28 -> 14 -> 7 -> 3)."""
    mnist = get_model(name, 1, 10, 28)
    assert mnist.features[0].padding == (3, 3) and mnist.feature_dim == 2048
    assert mnist.embed(torch.randn(2, 1, 28, 28)).shape == (2, 2048)
    cifar = get_model(name, 3, 10, 32)
    assert cifar.features[0].padding == (1, 1) and cifar.embed(torch.randn(2, 3, 32, 32)).shape == (2, 2048)
    for channels, size, dim in [(3, 28, 128 * 3 * 3), (1, 32, 2048), (1, 8, 128), (1, (28, 32), 128 * 3 * 4)]:
        net = get_model(name, channels, 10, size)
        hw = (size, size) if isinstance(size, int) else size
        assert net.features[0].padding == (1, 1) and net.feature_dim == dim
        assert net.embed(torch.randn(2, channels, *hw)).shape == (2, dim)
    plain = get_model(name, 1, 10, 28, first_padding=1)
    assert plain.feature_dim == 128 * 3 * 3 and plain.embed(torch.randn(2, 1, 28, 28)).shape == (2, 1152)
    with pytest.raises(ValueError, match="first_padding"):
        get_model(name, 1, 10, 28, first_padding=-1)


@pytest.mark.parametrize("cls", [ConvNet, ResNetAP10, ResNet18])
def test_norm_layers(cls):
    def has_bn(m):
        return any(isinstance(x, nn.BatchNorm2d) for x in m.modules())

    assert has_bn(cls(1, 10, 8, norm="batch"))
    inst = cls(1, 10, 8, norm="instance")
    assert not has_bn(inst) and any(isinstance(x, nn.GroupNorm) for x in inst.modules())
    assert has_bn(get_model("convnet_bn", 1, 10, 8)) and not has_bn(get_model("convnet", 1, 10, 8))
    with pytest.raises(ValueError, match="norm"):
        cls(1, 10, 8, norm="weird")


def test_registry():
    assert set(NAMES) <= set(available_models())
    with pytest.raises(KeyError, match="convnet"):
        get_model("vgg", 1, 10, 8)
    with pytest.raises(ValueError, match="channels"):
        get_model("convnet", 0, 10, 8)


def test_train_reaches_high_accuracy_on_digits():
    splits = load("digits", seed=0)
    torch.manual_seed(0)
    model = get_model("convnet", 1, splits.num_classes, 8, width=64)
    out = train_model(model, splits.train, epochs=20, lr=0.02, batch_size=32, seed=0, progress=False)
    assert out is model and not model.training
    acc = accuracy(model, splits.test)
    assert 0.0 <= acc <= 1.0
    assert acc >= 0.95, acc


def _tiny(seed=0, n=60):
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 3, 3)


def _trained(data, **kw):
    torch.manual_seed(1)
    model = ConvNet(1, 3, 8, width=16, norm="batch")
    return train_model(model, data, epochs=3, batch_size=16, progress=False, **kw)


def test_train_same_seed_same_weights():
    data = _tiny()
    calls = []

    def augment(x, gen):
        calls.append(len(x))
        return x + 0.1 * torch.randn(x.shape, generator=gen)

    a = _trained(data, seed=3, augment=augment)
    b = _trained(data, seed=3, augment=augment)
    c = _trained(data, seed=4, augment=augment)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert sum(calls) == 3 * 3 * len(data)  # augment applied to every sample of every epoch


def test_sample_weights_matter_and_are_validated():
    data = _tiny()
    base = _trained(data, seed=0).state_dict()
    w = torch.ones(len(data))
    same = _trained(data, seed=0, sample_weights=3 * w).state_dict()  # normalised to mean 1
    assert all(torch.allclose(base[k], same[k], atol=1e-6) for k in base)
    w[:20] = 0.0
    diff = _trained(data, seed=0, sample_weights=w).state_dict()
    assert not all(torch.allclose(base[k], diff[k]) for k in base)
    with pytest.raises(ValueError, match="sample_weights"):
        _trained(data, sample_weights=torch.ones(3))
    with pytest.raises(ValueError, match="sample_weights"):
        _trained(data, sample_weights=-w)


def test_batch_of_one_with_batchnorm():
    data = _tiny(n=17)  # 17 = 16 + 1: the trailing single sample is folded in
    model = ResNetAP10(1, 3, 8, width=8)
    train_model(model, data, epochs=1, batch_size=16, progress=False)
    assert accuracy(model, data) >= 0.0
