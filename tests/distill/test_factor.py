import pytest
import torch

from ddmetrics.distill.factor import decode, encode


def test_round_trip_shapes_labels_and_weights():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 1, 8, 8, generator=g)
    stored = encode(images, 2)
    assert stored.shape == (2, 1, 8, 8)
    labels, weights = torch.tensor([3, 5]), torch.tensor([0.25, 0.75])
    up, lab, w = decode(stored, labels, weights, 2)
    assert up.shape == (8, 1, 8, 8)
    assert lab.tolist() == [3] * 4 + [5] * 4
    assert abs(float(w.sum()) - 1.0) < 1e-7
    # tiles come back in the order they were stored: smooth images survive the 2x down/up-scaling
    smooth = torch.linspace(0, 1, 8).view(1, 1, 1, 8).expand(4, 1, 8, 8).contiguous()
    back, _, _ = decode(encode(smooth, 2), torch.zeros(1, dtype=torch.long), None, 2)
    assert (back - smooth).abs().max() < 0.15


def test_factor_one_is_identity_and_bad_factor():
    x = torch.rand(3, 2, 6, 6)
    assert torch.equal(decode(x, torch.arange(3), None, 1)[0], x)
    with pytest.raises(ValueError, match="factor"):
        decode(x, torch.arange(3), None, 4)
