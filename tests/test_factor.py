import pytest
import torch

from ddmetrics.factor import decode, encode


def test_round_trip_shapes_labels_and_weights():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 8, 8, generator=g)
    stored = encode(images, 2)
    assert stored.shape == (2, 3, 8, 8)
    labels, weights = torch.tensor([3, 5]), torch.tensor([0.25, 0.75])
    up, lab, w = decode(stored, labels, weights, 2)
    assert up.shape == (8, 3, 8, 8)
    assert lab.tolist() == [3] * 4 + [5] * 4
    assert torch.allclose(w, torch.tensor([0.0625] * 4 + [0.1875] * 4))
    assert abs(float(w.sum()) - 1.0) < 1e-7
    assert decode(stored, labels, None, 2)[2] is None


def test_tile_layout_is_row_major_and_inverse():
    # constant images survive encode -> decode exactly, and land in the right tiles, in order
    values = torch.arange(1.0, 10.0)  # 9 images -> one stored image with factor 3
    images = values.view(9, 1, 1, 1).expand(9, 1, 6, 6).contiguous()
    stored = encode(images, 3)
    assert stored.shape == (1, 1, 6, 6)
    assert torch.equal(stored[0, 0, ::2, ::2], values.view(3, 3))  # tile (r, c) holds image r*3 + c
    back, lab, _ = decode(stored, torch.tensor([4]), None, 3)
    assert torch.allclose(back, images) and lab.tolist() == [4] * 9
    # smooth images survive the 2x down/up-scaling approximately
    smooth = torch.linspace(0, 1, 8).view(1, 1, 1, 8).expand(4, 1, 8, 8).contiguous()
    again, _, _ = decode(encode(smooth, 2), torch.zeros(1, dtype=torch.long), None, 2)
    assert (again - smooth).abs().max() < 0.1


def test_decode_is_differentiable():
    stored = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    up, _, _ = decode(stored, torch.tensor([0, 1]), None, 2)
    up[0].sum().backward()  # first tile only: gradient on the top-left quarter of image 0
    grad = stored.grad
    assert float(grad[0, 0, :4, :4].abs().min()) > 0
    assert float(grad[0, 0, 4:].abs().sum()) == 0 and float(grad[1].abs().sum()) == 0


def test_factor_one_is_identity_and_validation():
    x = torch.rand(3, 2, 6, 6)
    w = torch.rand(3)
    out, lab, wts = decode(x, torch.arange(3), w, 1)
    assert torch.equal(out, x) and torch.equal(lab, torch.arange(3)) and torch.equal(wts, w)
    assert torch.equal(encode(x, 1), x)
    with pytest.raises(ValueError, match="factor"):
        decode(x, torch.arange(3), None, 4)
    with pytest.raises(ValueError, match="factor"):
        decode(x, torch.arange(3), None, 0)
    with pytest.raises(TypeError, match="factor"):
        decode(x, torch.arange(3), None, 2.0)
    with pytest.raises(ValueError, match="factor"):
        encode(torch.rand(3, 1, 6, 6), 2)  # 3 images is not a multiple of 4
    with pytest.raises(ValueError, match="labels"):
        decode(x, torch.arange(2), None, 2)
    with pytest.raises(ValueError, match="weights"):
        decode(x, torch.arange(3), torch.ones(2), 2)
