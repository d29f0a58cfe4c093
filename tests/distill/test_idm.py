"""IDM: a queue of embedders trained while the images are — it advances on the release's schedule,
trains the members it draws, keeps each one's accuracy, weighs the cross-entropy term by it, and
holds all of that in a state a checkpoint restores."""
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.distill.pool import EmbedderQueue


def _queue(**kw):
    args = dict(capacity=4, push_every=3, train_steps=2, batch=16, seed=0)
    args.update(kw)
    return EmbedderQueue("convnet", 1, 3, 8, **args)


def _weights(net):
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_the_queue_advances_on_the_releases_schedule():
    queue = _queue()
    assert len(queue) == 3  # IDM_cifar10.py:166-176: three random networks to start
    first = queue.nets[0]
    sizes = []
    for step in range(8):
        queue.draw(step)
        sizes.append(len(queue))
    # a push at steps 0, 3, 6 (step % push_every == 0), none past the capacity of 4: the oldest leaves
    assert sizes == [4, 4, 4, 4, 4, 4, 4, 4] and queue.made == 6
    assert all(net is not first for net in queue.nets)


def test_training_moves_only_the_drawn_members_and_counts_their_accuracy(small):
    queue = _queue(capacity=10, train_nets=2)
    before = [_weights(n) for n in queue.nets]
    queue.train(small)
    moved = [not torch.equal(b, _weights(n)) for b, n in zip(before, queue.nets)]
    assert sum(moved) == 2  # two members (fetch_net_num), each 2 SGD steps
    seen = [h[1] for h in queue.hits]
    assert sorted(seen) == [0, 32, 32]  # 2 steps x 16 images for each trained member
    trained = [i for i, m in enumerate(moved) if m]
    for i in trained:
        right, total = queue.hits[i]
        assert queue.accuracy(i) == pytest.approx(100.0 * right / total)
    assert queue.accuracy(moved.index(False)) == 0.0


def test_the_state_restores_the_queues_future(small):
    one = _queue()
    for step in range(4):
        one.draw(step)
        one.train(small)
    state = one.state_dict()
    two = _queue()  # a fresh queue of the same settings: its 3 untrained members and step 0 until loaded
    two.load_state_dict(state)
    for step in range(4, 7):
        net_a, acc_a = one.draw(step)
        net_b, acc_b = two.draw(step)
        assert torch.equal(_weights(net_a), _weights(net_b)) and acc_a == acc_b
        one.train(small)
        two.train(small)
    assert all(torch.equal(_weights(a), _weights(b)) for a, b in zip(one.nets, two.nets))


def test_the_cross_entropy_term_is_weighted_by_the_drawn_networks_accuracy(small):
    def run(weight):
        return ddm.Distiller(method="idm", ipc=1, iterations=3, seed=0, queue_ce_weight=weight, batch_real=16,
                             queue_train_steps=2).fit(small, progress=False)

    plain, weighted = run(0.0), run(0.5)
    # step 0: no network trained yet (accuracy 0), so the first objective is the matching term alone
    assert weighted.meta["info"]["matching_loss_first"] == pytest.approx(plain.meta["info"]["matching_loss_first"])
    # later steps draw trained networks: the term changes the images
    assert not torch.equal(weighted.images, plain.images)


def test_queue_settings_are_refused_where_they_do_not_apply():
    with pytest.raises(ValueError, match="queue_push_every does not apply to method 'dm'"):
        ddm.Distiller(method="dm", queue_push_every=5)
    with pytest.raises(ValueError, match="embedder_queue does not apply to method 'wmdd'"):
        ddm.Distiller(method="wmdd", embedder_queue=10)
    with pytest.raises(ValueError, match="iters_per_model does not apply to method 'idm'"):
        ddm.Distiller(method="idm", iters_per_model=5)
    with pytest.raises(ValueError, match="choose one"):
        ddm.Distiller(method="ncfm", embedder_queue=10)


@pytest.mark.parametrize("loss", sorted(set(ddm.available_losses()) - set(ddm.losses.base.missing_losses())))
def test_idm_takes_any_registered_loss(small, loss):
    kwargs = {"krdual": {"steps": 2}, "ncfd": {"n_frequencies": 16}}.get(loss, {})
    syn = ddm.Distiller(method="idm", loss=loss, loss_kwargs=kwargs, ipc=1, iterations=1, seed=0,
                        batch_real=8).fit(small, progress=False)
    assert syn.meta["info"]["matching_loss_first"] is not None and torch.isfinite(syn.images).all()


def test_every_class_shares_one_queue_as_released(small, monkeypatch):
    # IDM_cifar10.py trains one queue for all classes, once per iteration: under class_batch="auto" the classes
    # share a unit, and so its queue, on every device (the CPU's one-class units would give each class its own)
    made, trained = [], []
    build, train = EmbedderQueue.__init__, EmbedderQueue.train

    def counted_build(self, *args, **kw):
        made.append(kw["seed"])
        build(self, *args, **kw)

    def counted_train(self, data):
        trained.append(len(made))
        train(self, data)

    monkeypatch.setattr(EmbedderQueue, "__init__", counted_build)
    monkeypatch.setattr(EmbedderQueue, "train", counted_train)

    def run(**kw):
        made.clear()
        trained.clear()
        return ddm.Distiller(method="idm", ipc=1, iterations=3, seed=0, batch_real=16, queue_train_steps=1,
                             **kw).fit(small, progress=False)

    shared = run()
    assert shared.meta["class_batch"] == small.num_classes
    assert len(made) == 1 and len(trained) == 2  # one queue, trained after steps 0 and 1
    run(class_batch=1)
    assert len(made) == small.num_classes and len(trained) == 2 * small.num_classes
