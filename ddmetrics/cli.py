"""The ``ddmetrics`` command: ``distill``, ``evaluate``, ``losses``."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional

import torch

from ._io import atomic_write_json


def _parse_overrides(pairs: List[str]) -> Dict[str, object]:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, booleans, dicts)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _cmd_distill(args) -> int:
    from .data import load
    from .distill import Distiller
    from .evaluate import evaluate

    overrides = _parse_overrides(args.set)
    if args.iterations is not None:
        overrides["iterations"] = args.iterations
    # everything that can fail on arguments fails here, before any work or any file
    distiller = Distiller(method=args.method, loss=args.loss, ipc=args.ipc, seed=args.seed, **overrides)
    if os.path.exists(args.out) and not args.overwrite:
        raise ValueError(f"--out {args.out} exists; pass --overwrite to replace it")
    splits = load(args.dataset, seed=args.seed)
    start = time.perf_counter()
    syn = distiller.fit(splits.train, progress=not args.quiet)
    # the normalisation lives with the splits: record it so the grid shows real pixel values
    syn.meta.update(mean=[float(v) for v in splits.mean], std=[float(v) for v in splits.std])
    distill_seconds = time.perf_counter() - start
    report = None
    if args.runs > 0:
        cfg = distiller.config
        report = evaluate(syn, splits.test, train_set=splits.train, model=cfg.eval_model, runs=args.runs,
                          protocol=cfg.eval_protocol, teacher=distiller.teacher_, epochs=cfg.eval_epochs,
                          lr=cfg.eval_lr, temperature=cfg.temperature, seed=args.seed, progress=not args.quiet)
        report.seconds = {"distill": distill_seconds, **report.seconds}
    # write into a sibling temp folder, then move it into place: no half-written run folder
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".ddmetrics-", dir=parent)
    try:
        syn.save(os.path.join(tmp, "synset.pt"))
        syn.save_grid(os.path.join(tmp, "grid.png"))
        if distiller.teacher_ is not None:
            torch.save(distiller.teacher_.state_dict(), os.path.join(tmp, "teacher.pt"))
        atomic_write_json(os.path.join(tmp, "report.json"), {
            "dataset": args.dataset, "method": args.method, "loss": syn.meta["loss"], "ipc": args.ipc,
            "seed": args.seed, "distill_seconds": distill_seconds,
            "evaluation": report.to_dict() if report is not None else None})
        if os.path.exists(args.out):
            shutil.rmtree(args.out)
        os.replace(tmp, args.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {args.out}/synset.pt, grid.png, report.json")
    if report is not None:
        print(report.summary())
    else:
        print(f"distilled {len(syn.labels)} images in {distill_seconds:.1f} s")
    return 0


def _cmd_evaluate(args) -> int:
    from .data import load
    from .distill.presets import DistillConfig
    from .evaluate import evaluate
    from .models import get_model
    from .synset import SyntheticSet

    syn = SyntheticSet.load(args.synset)
    splits = load(args.dataset, seed=args.seed)
    cfg = DistillConfig(**{k: v for k, v in syn.meta.get("config", {}).items() if k in DistillConfig.__dataclass_fields__})
    protocol = args.protocol or cfg.eval_protocol
    teacher = None
    if protocol == "soft":
        path = os.path.join(os.path.dirname(os.path.abspath(args.synset)), "teacher.pt")
        if not os.path.exists(path):
            raise ValueError(f"the soft-label protocol needs the teacher saved next to the synthetic set ({path})")
        x = splits.train.images
        teacher = get_model(cfg.teacher, x.shape[1], splits.train.num_classes, x.shape[-1])
        teacher.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    report = evaluate(syn, splits.test, train_set=splits.train, model=cfg.eval_model, runs=args.runs,
                      protocol=protocol, teacher=teacher, epochs=cfg.eval_epochs, lr=cfg.eval_lr,
                      temperature=cfg.temperature, seed=args.seed, progress=not args.quiet)
    print(report.summary())
    if args.json:
        atomic_write_json(args.json, report.to_dict())
    return 0


def _cmd_losses(args) -> int:
    from .losses import available_losses

    names = available_losses()
    width = max(len(n) for n in names)
    for name, doc in names.items():
        print(f"{name.ljust(width)}  {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .distill.presets import PRESETS

    parser = argparse.ArgumentParser(prog="ddmetrics", description="Dataset distillation with a pluggable distance.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="distil a data set, evaluate it, write synset.pt, grid.png, report.json")
    d.add_argument("--dataset", default="digits", help="'digits' or a path (.npz, CIFAR batch folder, image folder)")
    d.add_argument("--method", default="wmdd", help=f"one of {', '.join(sorted(PRESETS))}")
    d.add_argument("--loss", default=None, help="a registered loss (default: the method's own)")
    d.add_argument("--ipc", type=int, default=10)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--runs", type=int, default=3, help="evaluation runs (0: no evaluation)")
    d.add_argument("--iterations", type=int, default=None)
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a DistillConfig field")
    d.add_argument("--out", required=True)
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_distill)
    e = sub.add_parser("evaluate", help="evaluate a saved synthetic set")
    e.add_argument("synset")
    e.add_argument("--dataset", default="digits")
    e.add_argument("--runs", type=int, default=3)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--protocol", choices=["hard", "soft"], default=None)
    e.add_argument("--json", default=None, help="also write the report as JSON here")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_cmd_evaluate)
    from ._diagnose_cli import add_parser as add_diagnose

    add_diagnose(sub)
    ls = sub.add_parser("losses", help="list the registered losses")
    ls.set_defaults(func=_cmd_losses)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"ddmetrics {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
