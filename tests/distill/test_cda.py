"""CDA: SRe²L's recovery with a curriculum on the RandomResizedCrop's scale — the schedule is the
release's closed form, the run applies it step by step, and only a resized crop can take one."""
import math

import pytest
import torch

import ddmetrics as ddm
from ddmetrics.augment import CropFlipRoll, crop_scale_at


@pytest.mark.parametrize("milestone", [1.0, 0.5])
def test_the_schedule_is_the_releases(milestone):
    # recover_cda_tiny.py:55-65 written out: min_crop from 1.0 towards 0.08 before milestone * T, 0.08 after
    total = 40
    edge = milestone * total
    for it in range(total):
        before = it < edge
        assert crop_scale_at("step", it, total, milestone) == ((1.0, 1.0) if before else (0.08, 1.0))
        linear = 0.08 + 0.92 * (1 - it / edge) if before else 0.08
        assert crop_scale_at("linear", it, total, milestone)[0] == pytest.approx(linear, abs=1e-12)
        cosine = 0.08 + 0.92 * (1 + math.cos(math.pi * it / edge)) / 2 if before else 0.08
        assert crop_scale_at("cosine", it, total, milestone)[0] == pytest.approx(cosine, abs=1e-12)
        assert crop_scale_at("none", it, total, milestone) == (0.08, 1.0)
    assert crop_scale_at("cosine", int(edge / 2), total, milestone)[0] == pytest.approx(0.54)
    with pytest.raises(ValueError, match="curriculum must be one of"):
        crop_scale_at("exp", 0, 10)


def test_a_whole_image_scale_crops_the_whole_image():
    aug = CropFlipRoll(crop="resized", shared=False)
    gen = torch.Generator().manual_seed(0)
    whole = aug.with_scale((1.0, 1.0)).sample(64, (1, 16, 16), gen).window
    assert torch.equal(whole, torch.tensor([[0, 0, 16, 16]] * 64))
    small = aug.with_scale((0.08, 0.1)).sample(64, (1, 16, 16), gen).window
    area = (small[:, 2] * small[:, 3]).float() / 256
    assert bool((area < 0.2).all()) and aug.scale == (0.08, 1.0)  # the copy changed, not the original


def test_the_cda_preset_runs_its_curriculum(small, monkeypatch):
    seen = []
    original = CropFlipRoll.with_scale

    def recording(self, scale):
        seen.append(tuple(scale))
        return original(self, scale)

    monkeypatch.setattr(CropFlipRoll, "with_scale", recording)
    distiller = ddm.Distiller(method="cda", ipc=1, iterations=8, teacher_epochs=1, eval_epochs=1, seed=0)
    distiller.fit(small, progress=False)
    # one slot of the 3 classes: one unit of 8 steps, each with the cosine schedule's scale of its step
    assert seen == [crop_scale_at("cosine", it, 8) for it in range(8)]
    assert seen[0] == (1.0, 1.0) and seen[-1][0] < 0.15


@pytest.mark.parametrize("method, kwargs", [("dm", {"crop_curriculum": "cosine"}),
                                            ("sre2l", {"crop_curriculum": "linear"}),  # its roll has no crop
                                            ("cda", {"crop_curriculum": "none", "crop_milestone": 0.5})])
def test_a_curriculum_where_there_is_no_crop_scale_is_refused(method, kwargs):
    name = list(kwargs)[-1]
    with pytest.raises(ValueError, match=f"{name} does not apply to method '{method}'"):
        ddm.Distiller(method=method, **kwargs)


def test_wmdd_takes_a_curriculum_as_an_option():
    assert ddm.Distiller(method="wmdd", crop_curriculum="cosine", crop_milestone=0.5).config.crop_milestone == 0.5


def test_cda_compares_no_distributions_so_a_loss_is_refused_by_name():
    # SRe²L's recovery has no distance in it: cross-entropy and BatchNorm statistics only
    with pytest.raises(ValueError, match="loss does not apply to method 'cda'"):
        ddm.Distiller(method="cda", loss="sinkhorn")
