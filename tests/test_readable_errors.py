"""Long errors are one readable line: a state_dict that does not fit says how many entries are
missing, unknown or misshapen with three examples of each, and the command line cuts any message
(issue 23, finding 3)."""
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.cli import main
from ddmetrics.models import get_model


def _torchvision_resnet18_state(num_classes=1000):
    """The names and shapes of a torchvision ResNet-18 state_dict (torchvision itself is not installed)."""
    state = {"conv1.weight": torch.zeros(64, 3, 7, 7)}

    def bn(prefix, c):
        state.update({f"{prefix}.weight": torch.ones(c), f"{prefix}.bias": torch.zeros(c),
                      f"{prefix}.running_mean": torch.zeros(c), f"{prefix}.running_var": torch.ones(c),
                      f"{prefix}.num_batches_tracked": torch.tensor(0)})

    bn("bn1", 64)
    c_in = 64
    for layer, c in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            state[f"{p}.conv1.weight"] = torch.zeros(c, c_in if block == 0 else c, 3, 3)
            bn(f"{p}.bn1", c)
            state[f"{p}.conv2.weight"] = torch.zeros(c, c, 3, 3)
            bn(f"{p}.bn2", c)
            if block == 0 and c != c_in:
                state[f"{p}.downsample.0.weight"] = torch.zeros(c, c_in, 1, 1)
                bn(f"{p}.downsample.1", c)
        c_in = c
    state.update({"fc.weight": torch.zeros(num_classes, 512), "fc.bias": torch.zeros(num_classes)})
    return state


def test_a_state_dict_of_another_architecture_is_refused_in_one_readable_line(tmp_path, capsys, monkeypatch):
    # torchvision's ResNet-18 keys into a ConvNet (resnet18 itself takes them since issue 25)
    torch.save(_torchvision_resnet18_state(), tmp_path / "tv.pt")
    monkeypatch.setattr(ddm.distill.Distiller, "fit", lambda *a, **k: pytest.fail("distilled with a bad teacher"))
    assert main(["distill", "--method", "wmdd", "--teacher", str(tmp_path / "tv.pt"), "--teacher-arch", "convnet_bn",
                 "--out", str(tmp_path / "r"), "--quiet", "--runs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 500, (len(err), err)  # it was 6,492 characters
    # how many of each, three examples of each, and what to do
    assert "20 entries of the model missing from the file (features.0.weight, features.0.bias, features.1.weight, " \
           "...)" in err, err
    assert "122 entries of the file unknown to the model (conv1.weight, bn1.weight, bn1.bias, ...)" in err, err
    assert "save the state_dict of this architecture" in err


def test_shape_mismatches_are_counted_and_a_refused_file_changes_nothing(tmp_path):
    model = get_model("convnet_bn", 1, 10, 8)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    state["classifier.weight"] = torch.zeros(1000, state["classifier.weight"].shape[1])
    state["classifier.bias"] = torch.zeros(1000)
    torch.save(state, tmp_path / "wide.pt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        ddm.models.load_state_dict_file(model, tmp_path / "wide.pt")
    assert "2 of another shape (classifier.weight: (1000, 128) in the file, (10, 128) in the model; " \
           "classifier.bias: (1000,) in the file, (10,) in the model)" in str(info.value)
    # refused before loading: no entry that did fit was copied into the caller's model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_command_line_cuts_any_long_message(capsys, monkeypatch):
    from ddmetrics import cli

    def verbose(args):
        raise RuntimeError("a library's error listing names: " + ", ".join(f"layer{i}.weight" for i in range(500)))

    monkeypatch.setattr(cli, "_cmd_losses", verbose)
    assert main(["losses"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) <= 600, len(err)  # the command, then 500 characters at most
    assert err.startswith("ddmetrics losses: error: RuntimeError: a library's error") and err.endswith(
        "… (cut; --debug shows the whole error)")
