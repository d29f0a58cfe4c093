"""train_model by a TrainRecipe (issue 24): each schedule's learning rates, the optimiser rebuilt
or kept at the step, weight-decay groups, batch mixing in training, sample-weight normalisation."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddmetrics.data import ArrayDataset
from ddmetrics.mix import BatchMix, mixed_cross_entropy
from ddmetrics.models import ConvNet, lr_factor, make_optimizer, parameter_groups, train_model
from ddmetrics.protocols import PROTOCOLS, SCHEDULES, TEACHER_RECIPES, TrainRecipe
from ddmetrics.utils import seeded


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(n=8, classes=2, seed=0, size=4):
    return ArrayDataset(torch.randn(n, 1, size, size, generator=_gen(seed)), torch.arange(n) % classes, classes)


class _Linear(nn.Module):
    """A linear classifier of flattened images (no BatchNorm: sums are the only reductions)."""

    def __init__(self, features=16, classes=2, seed=0):
        super().__init__()
        with seeded(seed):
            self.fc = nn.Linear(features, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


RECIPE = TrainRecipe(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=4, schedule="constant",
                     augment="none", epochs=10)


# --------------------------------------------------------------------------- schedules
def _recorded_lrs(recipe, epochs, n=8):
    """(lr, optimiser id) of every step train_model takes, read by a global step hook."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    seen = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append((opt.param_groups[0]["lr"], id(opt))))
    try:
        train_model(_Linear(), _blobs(n), recipe, epochs=epochs, progress=False)
    finally:
        handle.remove()
    return seen


def _closed_form(schedule, e, epochs):
    return {"step_half": 0.1 if e >= epochs // 2 else 1.0,
            "step_half_reset": 0.1 if e >= epochs // 2 else 1.0,
            "multistep": 0.5 ** sum(e >= m for m in (2, 4, 6, 8)),  # fractions 0.2 .. 0.8 of 10 epochs
            "cosine": 0.5 * (1 + math.cos(math.pi * e / epochs)),
            "constant": 1.0}[schedule]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_each_schedule_gives_its_closed_form_lr_every_step(schedule):
    epochs = 10
    recipe = dataclasses.replace(RECIPE, schedule=schedule, milestones=(0.2, 0.4, 0.6, 0.8),
                                 gamma=0.5 if schedule == "multistep" else 0.1)
    seen = _recorded_lrs(recipe, epochs)
    assert len(seen) == 2 * epochs  # 8 images, batch 4
    expected = [0.1 * _closed_form(schedule, e, epochs) for e in range(epochs) for _ in range(2)]
    # the rate is base x factor, one product: equal to the closed form up to its own rounding
    assert [lr for lr, _ in seen] == pytest.approx(expected, rel=1e-12, abs=0)
    # the optimiser is rebuilt at half for step_half_reset only (momentum dropped, DM's code)
    rebuilt = [i for i in range(1, len(seen)) if seen[i][1] != seen[i - 1][1]]
    assert rebuilt == ([2 * (epochs // 2)] if schedule == "step_half_reset" else [])


@pytest.mark.parametrize("schedule,reference", [
    ("cosine", lambda opt, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)),
    ("multistep", lambda opt, epochs: torch.optim.lr_scheduler.MultiStepLR(opt, [2, 4, 6, 8], gamma=0.5)),
])
def test_per_epoch_schedules_agree_with_torch_schedulers(schedule, reference):
    epochs = 10
    recipe = dataclasses.replace(RECIPE, schedule=schedule, milestones=(0.2, 0.4, 0.6, 0.8), gamma=0.5)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = reference(opt, epochs)
    for e in range(epochs):
        # torch's cosine is a recursion: equal to the closed form to float64 rounding
        assert 0.1 * lr_factor(recipe, e, epochs) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        opt.step()
        sched.step()


def _hand_loop(schedule_reset: bool, epochs=4, seed=3):
    """SGD by hand: lr x0.1 at half, the optimiser rebuilt there (DM) or kept."""
    data, model = _blobs(), _Linear()
    opt = torch.optim.SGD([{"params": list(model.parameters()), "weight_decay": 5e-4}], lr=0.1, momentum=0.9)
    shuffle = _gen(seed)
    for e in range(epochs):
        if e == epochs // 2:
            if schedule_reset:
                opt = torch.optim.SGD([{"params": list(model.parameters()), "weight_decay": 5e-4}], lr=0.1,
                                      momentum=0.9)
            for g in opt.param_groups:
                g["lr"] = 0.1 * 0.1
        perm = torch.randperm(len(data), generator=shuffle)
        for idx in (perm[:4], perm[4:]):
            loss = F.cross_entropy(model(data.images[idx]), data.labels[idx], reduction="none").mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


@pytest.mark.parametrize("schedule", ["step_half", "step_half_reset"])
def test_step_half_keeps_momentum_and_step_half_reset_drops_it(schedule):
    recipe = dataclasses.replace(RECIPE, schedule=schedule)
    got = train_model(_Linear(), _blobs(), recipe, epochs=4, seed=3, progress=False)
    same = _hand_loop(schedule == "step_half_reset")
    other = _hand_loop(schedule != "step_half_reset")
    assert all(torch.equal(a, b) for a, b in zip(got.parameters(), same.parameters()))  # the same ops, in order
    assert not all(torch.equal(a, b) for a, b in zip(got.parameters(), other.parameters()))


# --------------------------------------------------------------------------- optimiser
def test_weight_decay_groups_spare_norms_and_biases_when_asked():
    model = ConvNet(1, 3, 8, width=8, norm="batch")
    decayed = [p for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1]
    spared = [p for name, p in model.named_parameters() if p.dim() == 1]
    assert decayed and spared and len(decayed) + len(spared) == len(list(model.parameters()))
    groups = parameter_groups(model, 0.01, decay_norm_and_bias=False)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in decayed}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in spared}
    (one,) = parameter_groups(model, 0.01, decay_norm_and_bias=True)
    assert one["weight_decay"] == 0.01 and len(one["params"]) == len(list(model.parameters()))
    # the soft protocol's AdamW: betas (0.9, 0.999), wd on weights only; SRe²L's small relabel decays all
    opt = make_optimizer(model, PROTOCOLS["soft"].recipe)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0] and opt.defaults["lr"] == 1e-3
    assert len(make_optimizer(model, PROTOCOLS["sre2l_small"].recipe).param_groups) == 1
    sgd = make_optimizer(model, TEACHER_RECIPES["wmdd"])
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9 and not sgd.defaults["nesterov"]


def test_spared_parameters_feel_no_decay_in_training():
    # zero loss: only weight decay moves parameters; spared ones (the bias) must not move
    model = _Linear()
    bias, weight = model.fc.bias.detach().clone(), model.fc.weight.detach().clone()
    recipe = dataclasses.replace(RECIPE, optimizer="adamw", weight_decay=0.5, decay_norm_and_bias=False)
    train_model(model, _blobs(), recipe, epochs=2, progress=False, criterion=lambda logits, x, y, m: 0 * logits[:, 0])
    assert torch.equal(model.fc.bias, bias) and not torch.equal(model.fc.weight, weight)


def test_bad_recipes_and_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="recipe.schedule"):
        train_model(_Linear(), _blobs(), dataclasses.replace(RECIPE, schedule="linear"), progress=False)
    with pytest.raises(ValueError, match="recipe.mix_prob"):
        train_model(_Linear(), _blobs(), dataclasses.replace(RECIPE, mix="cutmix", mix_prob=2.0), progress=False)
    with pytest.raises(TypeError, match="epochs="):
        train_model(_Linear(), _blobs(), 5)
    with pytest.raises(ValueError, match="lr must be"):
        train_model(_Linear(), _blobs(), epochs=1, lr=-1.0)
    with pytest.raises(ValueError, match="recipe.epochs is 0"):
        train_model(_Linear(), _blobs(), PROTOCOLS["ours_hard"].recipe)
    with pytest.raises(ValueError, match="weight_norm"):
        train_model(_Linear(), _blobs(), RECIPE, weight_norm="class")


def test_mix_prob_mixes_that_fraction_of_batches_and_training_sees_the_mixed_views():
    mix = BatchMix("cutmix", 1.0, 0.5)
    gen = _gen(0)
    mixed = [mix(torch.zeros(4, 1, 8, 8), gen) is not None for _ in range(400)]
    assert 0.42 < sum(mixed) / 400 < 0.58  # binomial(400, 0.5): 3.2 standard deviations
    seen = []

    def criterion(logits, images, labels, m):
        seen.append((images.clone(), m))
        return mixed_cross_entropy(logits, labels, m)

    recipe = dataclasses.replace(RECIPE, mix="mixup", mix_alpha=1.0, mix_prob=1.0)
    train_model(_Linear(), _blobs(), recipe, epochs=1, progress=False, criterion=criterion)
    # every batch mixed, and what the model and the criterion got is the mixed batch
    assert len(seen) == 2 and all(m is not None and torch.equal(images, m.images) for images, m in seen)


def test_same_seed_same_model_with_augment_and_mix():
    recipe = dataclasses.replace(RECIPE, augment="color_crop", mix="cutmix", mix_prob=0.5)
    a, b, c = (train_model(_Linear(), _blobs(), recipe, epochs=3, seed=s, progress=False) for s in (1, 1, 2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


class _Scalar(nn.Module):
    """logits[:, 0] = theta * mean(x): the loss gradient is the weighted mean of mean(x)."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x):
        return (self.theta * x.flatten(1).mean(1)).unsqueeze(1)


@pytest.mark.parametrize("weight_norm", ["set", "batch"])
def test_sample_weights_normalised_over_the_set_or_per_batch(weight_norm):
    n, seed = 8, 5
    x = torch.randn(n, 1, 2, 2, generator=_gen(0), dtype=torch.float64)
    data = ArrayDataset(x, torch.zeros(n, dtype=torch.long), 2)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 1.0, 8.0])
    recipe = TrainRecipe(optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, batch_size=4,
                         schedule="constant", augment="none", epochs=1)
    model = train_model(_Scalar(), data, recipe, seed=seed, sample_weights=w, weight_norm=weight_norm,
                        progress=False, criterion=lambda logits, images, labels, mixed: logits[:, 0])
    # by hand: theta -= mean over the batch of w_i * mean(x_i), w normalised over the set or the batch
    f, ws = x.flatten(1).mean(1), (w / w.mean()).double()
    perm = torch.randperm(n, generator=_gen(seed))

    def by_hand(norm):
        return -sum(float(((ws[i] / ws[i].mean() if norm == "batch" else ws[i]) * f[i]).mean())
                    for i in (perm[:4], perm[4:]))

    assert float(model.theta.detach()) == pytest.approx(by_hand(weight_norm), rel=1e-6)  # float32 weights
    assert by_hand("set") != pytest.approx(by_hand("batch"), rel=1e-3)  # the two differ here
