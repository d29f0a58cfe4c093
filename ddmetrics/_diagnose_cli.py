"""The ``ddmetrics diagnose`` subcommand (wired into :mod:`ddmetrics.cli` with :func:`add_parser`).

    ddmetrics diagnose runs/x/synset.pt --dataset digits [--model teacher|convnet] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Optional, Tuple

import torch
from torch import nn

__all__ = ["add_parser", "load_model"]


def load_model(synset, synset_path: str, dataset, which: Optional[str]) -> Tuple[nn.Module, str]:
    """The feature extractor: the ``teacher.pt`` saved next to the synthetic set, or a random ConvNet.

    Parameters
    ----------
    synset : SyntheticSet
        The loaded set (its ``meta["config"]["teacher"]`` names the teacher architecture).
    synset_path : str
        Where it was loaded from.
    dataset : ArrayDataset
        Real data (channels, image size and class count of the model).
    which : {"teacher", "convnet", None}
        ``None``: the teacher when ``teacher.pt`` exists, else the ConvNet.

    Returns
    -------
    (model, description)

    Raises
    ------
    ValueError
        ``which="teacher"`` without a ``teacher.pt`` next to the set, or a teacher file that does
        not fit the architecture.
    """
    from .utils import seeded
    from .models import get_model

    channels, size = dataset.images.shape[1], dataset.images.shape[-1]
    path = os.path.join(os.path.dirname(os.path.abspath(synset_path)), "teacher.pt")
    if which is None:
        which = "teacher" if os.path.exists(path) else "convnet"
    if which == "teacher":
        if not os.path.exists(path):
            raise ValueError(f"--model teacher needs {path} (written by 'ddmetrics distill' for barycenter methods)")
        arch = (synset.meta.get("config") or {}).get("teacher", "convnet_bn")
        model = get_model(arch, channels, dataset.num_classes, size)
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except RuntimeError as err:
            raise ValueError(f"{path} does not fit a {arch!r} model: {err}") from err
        return model.eval(), f"teacher {arch} ({path})"
    with seeded(0):
        model = get_model("convnet", channels, dataset.num_classes, size)
    return model.eval(), "randomly initialised convnet (seed 0)"


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from .data import load
    from .diagnose import diagnose
    from ._io import atomic_write
    from .synset import SyntheticSet

    syn = SyntheticSet.load(args.synset)
    seed = int(syn.meta.get("seed", 0)) if args.seed is None else args.seed
    splits = load(args.dataset, seed=seed)
    real = getattr(splits, args.split)
    model, description = load_model(syn, args.synset, real, args.model)
    report = diagnose(syn, real, model, losses=args.losses, batch_size=args.batch_size)
    print(f"synthetic set: {args.synset} ({len(syn.labels)} stored images, method {syn.meta.get('method', '?')}, "
          f"loss {syn.meta.get('loss', '?')})")
    print(f"real data: {args.dataset} {args.split} split (seed {seed}), {len(real)} images; features: {description}, "
          f"d={report.meta['feature_dim']}")
    print(report.table())
    if args.json:
        out: Any = {"synset": os.path.abspath(args.synset), "dataset": args.dataset, "split": args.split,
                    "seed": seed, "model": description, **report.to_dict()}
        data = (json.dumps(out, indent=2) + "\n").encode()
        atomic_write(args.json, lambda fh: fh.write(data))
        print(f"wrote {args.json}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``diagnose`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``).

    Returns
    -------
    argparse.ArgumentParser
        The subparser; its ``func`` default runs the command and returns the exit status.
    """
    p = subparsers.add_parser(
        "diagnose", help="distances (every backend + 1st/2nd/3rd moments) between a synthetic set and real features",
        description="Embed the real data and the synthetic set with a model and print, per class and overall, "
                    "the distance between the two feature clouds under every registered loss and the moment "
                    "distances ||mean||, ||cov||_F and ||3rd central moment (diagonal)||.")
    p.add_argument("synset", help="a synset.pt written by 'ddmetrics distill' or SyntheticSet.save")
    p.add_argument("--dataset", default="digits", help="'digits' or a path accepted by ddmetrics.data.load")
    p.add_argument("--split", choices=["train", "val", "test"], default="train",
                   help="real split to compare with (default: train, the data that was distilled)")
    p.add_argument("--model", choices=["teacher", "convnet"], default=None,
                   help="feature extractor: the teacher.pt next to the set (default when present) or a random "
                        "ConvNet seeded with 0 (default otherwise)")
    p.add_argument("--losses", nargs="+", default=None, metavar="NAME",
                   help="registered losses to compute (default: all)")
    p.add_argument("--seed", type=int, default=None, help="split seed (default: the synthetic set's meta['seed'])")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--json", default=None, metavar="OUT", help="also write the report as JSON here")
    p.set_defaults(func=_cmd_diagnose)
    return p
