"""The coreset baselines as methods (ddmetrics/distill/coresets.py): the selection rules against
hand-worked cases and scikit-learn, the Distiller's sets against the rules on the teacher's
features, and the settings a coreset refuses."""
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.distill.barycenter_matching import class_features
from ddmetrics.distill.coresets import (herding_indices, kcenter_indices, kmeans_centroids, kmeans_nearest_indices,
                                        random_indices)
from ddmetrics.evaluate import random_subset
from ddmetrics.utils import seeded


def test_herding_and_kcenter_by_hand():
    feats = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [10.0, 0.0], [0.2, 0.0]])
    # by hand: mean x = 2.04; t=1 nearest is 1.0 (#1); t=2 (1 + x)/2 nearest 2.04 is x = 0.2 (#4, 0.6);
    # t=3 (1.2 + x)/3: x = 0 gives 0.40 (1.64 away), x = 10 gives 3.73 (1.69 away) -> #0
    assert herding_indices(feats, 3) == [1, 4, 0]
    k = kcenter_indices(feats, 3, seed=0)
    assert len(set(k)) == 3 and k == kcenter_indices(feats, 3, seed=0)
    first = int(torch.randint(5, (1,), generator=torch.Generator().manual_seed(0)))
    assert k[0] == first
    assert k[1] == int(torch.cdist(feats, feats[first:first + 1]).squeeze(1).argmax())  # the farthest point
    assert 3 in k  # the outlier is always covered


def test_kmeans_centroids_match_scikit_learn_from_the_same_start():
    from sklearn.cluster import KMeans

    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 5.0, -1.0], [3.0, 3.0, 3.0]])
    x = (centres.repeat_interleave(30, 0) + torch.randn(120, 3, generator=gen)).double()
    start = ddm.losses.init_support(x, 4, torch.full((120,), 1 / 120, dtype=torch.float64), seed=3)
    ours = kmeans_centroids(x, 4, seed=3)
    ref = KMeans(n_clusters=4, init=start.numpy(), n_init=1, algorithm="lloyd", tol=0.0, max_iter=100).fit(x.numpy())
    # both: Lloyd's iterations in float64 until no point moves; the sums run in different orders
    assert torch.allclose(ours, torch.from_numpy(ref.cluster_centers_), atol=1e-10)
    picked = kmeans_nearest_indices(x, 4, seed=3)
    assert len(set(picked)) == 4
    for j, i in enumerate(picked):  # each is the real point nearest its centroid (well-separated clusters)
        assert i == int(torch.cdist(ours[j:j + 1], x).argmin())


def test_random_is_the_random_subset_every_report_shows(tiny_digits):
    syn = ddm.Distiller(method="random", ipc=3, seed=5, eval_protocol="hard").fit(tiny_digits, progress=False)
    ref = random_subset(tiny_digits, 3, 5)
    assert torch.equal(syn.images, ref.images) and torch.equal(syn.labels, ref.labels)
    assert torch.equal(syn.weights, torch.full((9,), 1 / 3))
    assert syn.meta["method"] == "random" and syn.meta["loss"] is None and syn.meta["config"]["coreset"] == "random"
    idx = torch.cat(random_indices(tiny_digits, 3, 5))
    assert torch.equal(syn.images, tiny_digits.images[idx])


@pytest.mark.parametrize("rule", ["herding", "kcenter", "kmeans"])
def test_a_feature_space_coreset_is_its_rule_on_the_teachers_features(tiny_digits, rule):
    with seeded(0):
        teacher = ddm.models.get_model("convnet_bn", 1, 3, 8).eval()  # any fixed network: the rule is what is tested
    syn = ddm.Distiller(method=rule, ipc=4, seed=2, teacher=teacher).fit(tiny_digits, progress=False)
    select = {"herding": lambda f, k: herding_indices(f, 4), "kcenter": lambda f, k: kcenter_indices(f, 4, 2 + k),
              "kmeans": lambda f, k: kmeans_nearest_indices(f, 4, 2 + k)}[rule]
    expected = []
    for k in range(3):
        pool = tiny_digits.class_indices(k)
        with torch.no_grad():
            expected.append(pool[torch.tensor(select(class_features(teacher, tiny_digits, pool), k))])
    idx = torch.cat(expected)
    assert torch.equal(syn.images, tiny_digits.images[idx]) and torch.equal(syn.labels, tiny_digits.labels[idx])
    assert torch.equal(syn.weights, torch.full((12,), 0.25)) and syn.meta["method"] == rule
    assert len(set(idx.tolist())) == 12


def test_a_coreset_refuses_the_settings_of_a_synthesis(tiny_digits):
    for settings in ({"loss": "sliced"}, {"iterations": 3}, {"lr": 0.1}, {"augment": "none"}, {"reg_weight": 1.0}):
        with pytest.raises(ValueError, match=f"{next(iter(settings))} does not apply to method 'herding'.*coreset"):
            ddm.Distiller(method="herding", **settings)
    with pytest.raises(ValueError, match="teacher_epochs does not apply to method 'random'"):
        ddm.Distiller(method="random", eval_protocol="hard", teacher_epochs=2)  # no teacher at all
    with pytest.raises(ValueError, match="coreset does not apply to method 'dm'"):
        ddm.Distiller(method="dm", coreset="herding")
    with pytest.raises(ValueError, match="coreset='nearest' is not allowed"):
        ddm.Distiller(method="herding", coreset="nearest")


def test_the_teacher_is_trained_only_where_the_set_or_its_labels_need_it(tiny_digits):
    hard = ddm.Distiller(method="random", ipc=1, eval_protocol="hard")
    hard.fit(tiny_digits, progress=False)
    assert hard.teacher_ is None and "teacher_seconds" not in hard.timings_
    herding = ddm.Distiller(method="herding", ipc=1, eval_protocol="hard", teacher_arch="convnet_bn", teacher_epochs=1)
    herding.fit(tiny_digits, progress=False)
    assert herding.teacher_ is not None and herding.timings_["teacher_seconds"] > 0


def test_a_soft_label_protocol_gets_its_teacher_from_fit(tiny_digits):
    # before: DM under the soft protocol trained no teacher, so its evaluation (and the CLI's) failed
    d = ddm.Distiller(method="dm", ipc=1, iterations=1, eval_protocol="soft", teacher_arch="convnet_bn",
                      teacher_epochs=1, batch_real=8)
    syn = d.fit(tiny_digits, progress=False)
    assert d.teacher_ is not None
    report = ddm.evaluate(syn, tiny_digits, teacher=d.teacher_, runs=1, progress=False, epochs=1,
                          **{k: v for k, v in d.config.evaluation_kwargs().items() if k != "epochs"})
    assert 0.0 <= report.runs[0] <= 1.0
