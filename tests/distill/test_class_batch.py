"""A batch of classes in one step (class_batch) computes what one class at a time computes: the
same streams, losses and optimiser updates, one embedder pass (under torchrun:
test_distributed.py's API run uses batches of two classes)."""
import pytest
import torch

import ddmetrics as ddm

@pytest.mark.parametrize("kw", [dict(method="dm", ipc=2), dict(method="m3d", ipc=1, factor=2),
                                dict(method="krdual", ipc=1, loss_kwargs={"steps": 3, "warm_start": True}),
                                dict(method="dm", loss="sliced", ipc=2),
                                dict(method="m3d", ipc=1, factor=2, batch_real=32)],  # one loss call a step
                         ids=["dm", "m3d", "krdual", "dm-sliced", "m3d-one-call"])
def test_batched_classes_equal_one_class_at_a_time(small, kw):
    one = ddm.Distiller(seed=3, iterations=6, class_batch=1, **kw).fit(small, progress=False)
    batched = ddm.Distiller(seed=3, iterations=6, class_batch="all", **kw).fit(small, progress=False)
    assert (one.meta["units"], batched.meta["units"], batched.meta["class_batch"]) == (3, 1, 3)
    # the same draws and elementwise optimiser updates; the embedder's convolutions over a batch of
    # 3 classes may sum in another order than over one: float32 round-off (~1e-7 relative a pass),
    # carried through 6 steps at DM's lr 1, stays far below 1e-4 of the images' scale
    scale = float(one.images.abs().max())
    assert torch.allclose(batched.images, one.images, rtol=0, atol=1e-4 * scale)
    assert torch.equal(batched.weights, one.weights)
    info_one, info_b = one.meta["info"], batched.meta["info"]
    # the KR-dual value is a critic's estimate after a few Adam steps, which amplify one-ulp differences of its
    # inputs (1.2e-4 relative under ATEN_CPU_CAPABILITY=default); the others are closed forms of the features
    rel = 1e-2 if kw["method"] == "krdual" else 1e-4
    assert info_b["matching_loss_first"] == pytest.approx(info_one["matching_loss_first"], rel=rel)


def test_auto_batches_by_images_per_step_on_cuda_only_and_a_larger_batch_is_clamped(small, caplog):
    from ddmetrics.distill.distiller import AUTO_STEP_IMAGES, auto_class_batch

    assert auto_class_batch(100, 256 + 10) == AUTO_STEP_IMAGES // (256 + 10) == 15
    assert auto_class_batch(10, 266) == 10 and auto_class_batch(100, 10 ** 5) == 1
    assert ddm.Distiller(method="dm", ipc=10, device="cpu").resolved_class_batch(1, 100, 8) == 1
    assert ddm.Distiller(method="dm", ipc=10, class_batch=4).resolved_class_batch(1, 100, 8) == 4
    with caplog.at_level("WARNING", logger="ddmetrics"):
        syn = ddm.Distiller(method="dm", ipc=1, iterations=1, class_batch=50).fit(small, progress=False)
    assert syn.meta["class_batch"] == 3 and "class_batch=50 is more than the 3 classes: clamped to 3" in caplog.text


def test_a_checkpointed_batched_run_resolves_its_class_batch_once(small, tmp_path, caplog):
    # the checkpoint's record and the units take the same resolution: one warning, the same batch in both
    with caplog.at_level("WARNING", logger="ddmetrics"):
        syn = ddm.Distiller(method="dm", ipc=1, iterations=1, class_batch=50).fit(small, progress=False,
                                                                                  checkpoint=tmp_path / "ck")
    assert caplog.text.count("class_batch=50 is more than the 3 classes") == 1 and syn.meta["class_batch"] == 3
    resumed = ddm.Distiller(method="dm", ipc=1, iterations=1, class_batch=50).fit(small, progress=False,
                                                                                  checkpoint=tmp_path / "ck",
                                                                                  resume=True)
    assert torch.equal(resumed.images, syn.images)  # read back from the finished unit's file, not recomputed


def test_class_batch_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="class_batch must be a positive integer, 'all' or 'auto', got 0"):
        ddm.Distiller(method="dm", class_batch=0)
    with pytest.raises(ValueError, match="class_batch='all' does not apply: method 'wmdd'"):
        ddm.Distiller(method="wmdd", class_batch="all")
    with pytest.raises(ValueError, match="class_batch=2 does not apply: the plateau schedule"):
        ddm.Distiller(method="ncfm", class_batch=2)
    with pytest.raises(ValueError, match="class_batch=2 does not apply: the embedder 'convnet_bn' has BatchNorm"):
        ddm.Distiller(method="dm", class_batch=2, embedder="convnet_bn").resolved_class_batch(1, 10, 8)
    # "auto" keeps one class a unit wherever a batch does not apply, without a word
    assert ddm.Distiller(method="dm", embedder="convnet_bn").resolved_class_batch(1, 10, 8) == 1


def test_a_stateless_loss_takes_the_batch_of_classes_in_one_call(small, monkeypatch):
    from ddmetrics.losses._mmd import MMD

    calls = []
    original = MMD._batched_loss

    def counting(self, x, y, a, b):
        calls.append(tuple(x.shape[:2]) + tuple(y.shape[:2]))
        return original(self, x, y, a, b)

    monkeypatch.setattr(MMD, "_batched_loss", counting)
    # 32 real images per class: every class has more (with all of a class's images, classes of
    # different sizes are matched one at a time, each with its own copy of the loss)
    syn = ddm.Distiller(method="m3d", ipc=2, iterations=3, class_batch="all", batch_real=32).fit(small, progress=False)
    # one call per step: the 3 classes' 32 real images against their 2 synthetic ones
    assert syn.meta["class_batch"] == 3
    assert calls == [(3, 32, 3, 2)] * 3
