import numpy as np
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.utils import seeded
from ddmetrics.distributed import class_seed
from ddmetrics.distill.distribution_matching import initial_class_images
from ddmetrics.distill.presets import SettingError, applies, preset
from ddmetrics.models import get_model


def test_barycenter_matching_drives_features_to_targets(small):
    # the preset's released objective (Frobenius feature term + cross-entropy) on a small ConvNet
    # teacher (the preset's ResNet-18 by WMDD's recipe is the cost, not the point)
    d = ddm.Distiller(method="wmdd", ipc=2, seed=0, iterations=150, teacher_arch="convnet_bn", teacher_recipe="ours",
                      teacher_epochs=5, augment=None, reg="none", init="noise", lr=0.1)
    syn = d.fit(small, progress=False)
    info = syn.meta["info"]
    # the tracked value is ||F - B|| (feature_norm="frobenius"), whose square is the summed squared
    # distance: 0.3 here is 0.09 of that sum, the 10-fold drop asked of it before (measured: 0.096)
    assert info["feature_loss_last"] <= 0.3 * info["feature_loss_first"]
    # the weights are the barycenter's: per class on the simplex
    assert torch.allclose(syn.weights.view(3, 2).sum(1), torch.ones(3), atol=1e-5)
    assert syn.images.shape == (6, 1, 8, 8) and syn.labels.tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("loss", sorted(ddm.available_losses()))
def test_distribution_matching_lowers_the_loss_for_every_backend(small, loss):
    # NCFD is a minmax loss whose value depends on its sampler's seed, judged by its mean over 8 sampler
    # seeds. With its default sampler (1024 frequencies, 10 ascent steps a call) the outcome hung on
    # rounding even at 100 iterations (after/before 0.83, 0.78, 0.99 on this machine's avx512 kernels,
    # 0.98, 0.81, 0.88 on the generic ones, 32 s); 256 frequencies and 2 ascent steps still play the
    # game and leave a clear drop at 40 iterations (at most 0.71 over ATen avx512 / default and
    # oneDNN AVX2, 4 s)
    kwargs = {"krdual": {"steps": 10}, "ncfd": {"n_frequencies": 256, "steps": 2}}.get(loss, {})
    iterations = 40
    seeds = range(8) if loss == "ncfd" else [None]
    d = ddm.Distiller(method="dm", loss=ddm.get_loss(loss, **kwargs), ipc=2, seed=1, iterations=iterations,
                      iters_per_model=iterations, augment=None, init="noise", optimizer="adam", lr=0.05)
    syn = d.fit(small, progress=False)
    with seeded(1 * 1_000_003):  # the one embedder of this run
        net = get_model("convnet", 1, 3, 8)
    metrics = [ddm.get_loss(loss, **kwargs, **({} if s is None else {"seed": s})) for s in seeds]

    def value(real, images):
        return float(np.mean([float(metric(real, net.embed(images))) for metric in metrics]))

    with torch.no_grad():
        for k in range(3):
            real = net.embed(small.images[small.labels == k])
            start = initial_class_images(small, k, 2, 1, "noise", torch.Generator().manual_seed(class_seed(1, k)))
            before, after = value(real, start), value(real, syn.images[2 * k:2 * k + 2])
            assert after < before, (loss, k, before, after)


def test_same_seed_same_synthetic_set(small):
    kw = dict(method="m3d", ipc=1, iterations=5, seed=3, factor=2)
    a = ddm.Distiller(**kw).fit(small, progress=False)
    b = ddm.Distiller(**kw).fit(small, progress=False)
    assert torch.equal(a.images, b.images) and a.meta["factor"] == 2
    images, labels, weights = a.decoded()
    assert images.shape == (12, 1, 8, 8) and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_every_preset_that_compares_distributions_accepts_every_loss():
    for method in ddm.distill.PRESETS:
        compares = applies(preset(method), "loss")
        for loss in ddm.available_losses():
            if compares:
                assert ddm.Distiller(method=method, loss=loss, ipc=1).loss.name == loss
            else:  # SRe2L (cross-entropy + BN statistics) and the coresets: a loss would be ignored
                with pytest.raises(SettingError, match="loss does not apply"):
                    ddm.Distiller(method=method, loss=loss, ipc=1)


def test_bad_input_fails_before_any_work(small):
    with pytest.raises(ValueError, match="ipc"):
        ddm.Distiller(method="wmdd", ipc=1000).fit(small, progress=False)
    with pytest.raises(ValueError, match="wmdd"):
        ddm.Distiller(method="nope")
    with pytest.raises(KeyError, match="wasserstein"):
        ddm.Distiller(method="wmdd", loss="nope")
    with pytest.raises(TypeError, match="valid settings"):
        ddm.Distiller(method="wmdd", not_a_setting=1)
    with pytest.raises(ValueError, match="labels"):
        ddm.data.from_arrays(np.zeros((4, 8, 8)), np.array([0, 1, 2, 3]), num_classes=3)
    bad = small.images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="images"):
        ddm.data.ArrayDataset(bad, small.labels, 3)


def test_one_class_training_set_is_refused():
    one = ddm.data.ArrayDataset(torch.zeros(5, 1, 8, 8), torch.zeros(5, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ddm.Distiller(method="dm", ipc=1, iterations=1).fit(one, progress=False)


def test_labels_that_skip_classes_name_the_real_cause():
    labels = torch.tensor([0, 0, 1, 1, 99, 99])
    data = ddm.data.ArrayDataset(torch.zeros(6, 1, 8, 8), labels, 100)
    with pytest.raises(ValueError, match="largest label is 99"):
        ddm.Distiller(method="dm", ipc=1, iterations=1).fit(data, progress=False)
