import math
import subprocess
import sys
import textwrap

import pytest
import torch

import ddmetrics as ddm
from ddmetrics.losses import DistributionLoss, register_loss

ALL = ["wasserstein", "sliced", "sinkhorn", "krdual", "mmd", "energy", "gaussian_w2", "ncfd"]
FAST = {"krdual": {"steps": 2}, "ncfd": {"steps": 2, "n_frequencies": 32, "hidden": 8}}


def _loss(name):
    return ddm.get_loss(name, **FAST.get(name, {}))


def _xy(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, generator=g, dtype=dtype), torch.randn(5, 3, generator=g, dtype=dtype)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "case,arg",
    [
        ("nan_x", "x"), ("inf_y", "y"), ("dims", "features"), ("empty_y", "y"),
        ("neg_a", "a"), ("sum_b", "b"), ("len_a", "a"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(name, case, arg):
    x, y = _xy()
    a, b = None, None
    if case == "nan_x":
        x[0, 0] = math.nan
    elif case == "inf_y":
        y[1, 2] = math.inf
    elif case == "dims":
        y = y[:, :2]
    elif case == "empty_y":
        y = y[:0]
    elif case == "neg_a":
        a = torch.tensor([0.5, 0.5, 0.5, -0.5, 0.0, 0.0], dtype=torch.float64)
    elif case == "sum_b":
        b = torch.full((5,), 0.3, dtype=torch.float64)
    elif case == "len_a":
        a = torch.full((4,), 0.25, dtype=torch.float64)
    with pytest.raises(ValueError, match=arg):
        _loss(name)(x, y, a, b)


@pytest.mark.parametrize("name", ALL)
def test_dtype_preserved_and_higher_rank_flattened(name):
    x, y = _xy(torch.float64)
    v = _loss(name)(x, y)
    assert v.dtype == torch.float64 and v.dim() == 0 and math.isfinite(float(v))
    img_x, img_y = x.reshape(6, 3, 1, 1), y.reshape(5, 1, 3)
    assert abs(float(_loss(name)(img_x, img_y)) - float(_loss(name)(x, y))) < 1e-12 or name == "sliced"


def test_mismatched_dtype_is_type_error():
    x, y = _xy()
    with pytest.raises(TypeError, match="dtype"):
        ddm.get_loss("mmd")(x, y.float())


def test_unknown_name_lists_known():
    with pytest.raises(KeyError, match="wasserstein"):
        ddm.get_loss("nope")
    assert set(ALL) <= set(ddm.available_losses())


def test_register_a_new_loss_and_use_it_by_name():
    @register_loss("energy_test")
    class Energy(DistributionLoss):
        """Energy distance."""

        def _loss(self, x, y, a, b):
            d = lambda p, q: torch.cdist(p, q)
            return 2 * a @ d(x, y) @ b - a @ d(x, x) @ a - b @ d(y, y) @ b

    x, y = _xy()
    v = ddm.get_loss("energy_test")(x, y)
    assert float(v) > 0 and abs(float(ddm.get_loss("energy_test")(x, x))) < 1e-12
    assert ddm.available_losses()["energy_test"] == "Energy distance."
    # the generic barycenter default works for a new loss
    bary = ddm.get_loss("energy_test").barycenter(x, 2, iters=5)
    assert bary.support.shape == (2, 3) and abs(float(bary.weights.sum()) - 1) < 1e-9


def test_entry_point_is_discovered(tmp_path):
    # a throw-away distribution that advertises a loss under the ddmetrics.losses group
    pkg = tmp_path / "plug"
    pkg.mkdir()
    (pkg / "myplug.py").write_text(textwrap.dedent('''
        import torch
        from ddmetrics.losses import DistributionLoss
        class Mean(DistributionLoss):
            """Squared mean difference (plugin)."""
            def _loss(self, x, y, a, b):
                return ((a @ x - b @ y) ** 2).sum()
    '''))
    dist = pkg / "myplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ddmetrics.losses]\nplugmean = myplug:Mean\n")
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import torch, ddmetrics as ddm\n"
        "l = ddm.get_loss('plugmean')\n"
        "print(type(l).__name__, float(l(torch.zeros(2, 1), torch.ones(3, 1))))\n" % str(pkg)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "Mean 1.0"


def test_a_taken_name_is_refused_unless_overridden():
    @register_loss("taken_test")
    class First(DistributionLoss):
        def _loss(self, x, y, a, b):
            return (a @ x - b @ y).pow(2).sum()

    with pytest.raises(ValueError, match="already registered.*override=True"):
        @register_loss("taken_test")
        class Second(DistributionLoss):
            def _loss(self, x, y, a, b):
                return (a @ x - b @ y).abs().sum()

    assert type(ddm.get_loss("taken_test")) is First  # the refusal changed nothing
    with pytest.raises(ValueError, match="already registered"):
        register_loss("sliced")(First)  # a built-in name is protected too

    @register_loss("taken_test", override=True)
    class Third(DistributionLoss):
        def _loss(self, x, y, a, b):
            return (a @ x - b @ y).abs().sum()

    assert type(ddm.get_loss("taken_test")) is Third


def test_an_unknown_setting_names_the_loss_and_its_settings():
    with pytest.raises(TypeError, match=r"loss 'sliced' has no setting 'bogus'; its settings: n_projections"):
        ddm.get_loss("sliced", bogus=1)
    with pytest.raises(TypeError, match=r"loss_kwargs: loss 'sliced' has no setting 'bogus'"):
        ddm.Distiller(method="wmdd", loss="sliced", loss_kwargs={"bogus": 1})
