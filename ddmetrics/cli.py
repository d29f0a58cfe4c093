"""The ``ddmetrics`` command: ``distill``, ``evaluate``, ``losses``, ``diagnose``.

``distill`` runs under ``torchrun --nproc-per-node N -m ddmetrics distill ...`` as well: classes
and evaluation runs are sharded over the ranks (gloo on CPU, NCCL on CUDA) and rank 0 writes
the run folder.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
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
    from . import distributed
    from .distill import Distiller

    overrides = _parse_overrides(args.set)
    if args.iterations is not None:
        overrides["iterations"] = args.iterations
    # everything that can fail on arguments fails here, before any work or any file
    distiller = Distiller(method=args.method, loss=args.loss, ipc=args.ipc, seed=args.seed, **overrides)
    if os.path.exists(args.out) and not args.overwrite:
        raise ValueError(f"--out {args.out} exists; pass --overwrite to replace it")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be a positive number of steps, got {args.checkpoint_every}")
    checkpoint = args.checkpoint
    if checkpoint is None and (args.checkpoint_every is not None or args.resume):
        checkpoint = os.path.abspath(args.out) + ".ckpt"
    if args.resume and not os.path.isdir(checkpoint):
        raise ValueError(f"--resume: no checkpoint folder {checkpoint}")
    if checkpoint is not None and not args.resume and os.path.exists(os.path.join(checkpoint, "run.json")):
        raise ValueError(f"checkpoint folder {checkpoint} holds a previous run; pass --resume or remove it")
    created = distributed.init_from_env()  # under torchrun: classes and evaluation runs are sharded
    try:
        return _distill(args, distiller, load(args.dataset, seed=args.seed), checkpoint)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _distill(args, distiller, splits, checkpoint: Optional[str]) -> int:
    from . import distributed
    from .evaluate import evaluate

    rank, world_size = distributed.world()
    start = time.perf_counter()
    syn = distiller.fit(splits.train, progress=not args.quiet and rank == 0, checkpoint=checkpoint,
                        checkpoint_every=args.checkpoint_every, resume=args.resume)
    # the normalisation lives with the splits: record it so the grid shows real pixel values
    syn.meta.update(mean=[float(v) for v in splits.mean], std=[float(v) for v in splits.std])
    distill_seconds = time.perf_counter() - start
    report = None
    if args.runs > 0:
        cfg = distiller.config
        report = evaluate(syn, splits.test, train_set=splits.train, model=cfg.eval_model, runs=args.runs,
                          protocol=cfg.eval_protocol, teacher=distiller.teacher_, epochs=cfg.eval_epochs,
                          lr=cfg.eval_lr, temperature=cfg.temperature, seed=args.seed,
                          progress=not args.quiet and rank == 0)
        report.seconds = {"distill": distill_seconds, **report.seconds}
    if rank == 0:
        _write_run(args, syn, distiller, report, distill_seconds, world_size)
        if checkpoint is not None:  # the run folder now holds everything the checkpoints did
            shutil.rmtree(checkpoint, ignore_errors=True)
        print(f"wrote {args.out}/synset.pt, grid.png, report.json")
        if report is not None:
            print(report.summary())
        else:
            print(f"distilled {len(syn.labels)} images in {distill_seconds:.1f} s")
    distributed.barrier()
    return 0


def _write_run(args, syn, distiller, report, distill_seconds: float, world_size: int) -> None:
    """Write the run folder through a sibling temp folder and one rename: never half a folder.
    The temp name is fixed, so a folder left by a killed run is recognised and cleared."""
    out = os.path.abspath(args.out)
    tmp = os.path.join(os.path.dirname(out), "." + os.path.basename(out) + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        syn.save(os.path.join(tmp, "synset.pt"))
        syn.save_grid(os.path.join(tmp, "grid.png"))
        if distiller.teacher_ is not None:
            torch.save(distiller.teacher_.state_dict(), os.path.join(tmp, "teacher.pt"))
        atomic_write_json(os.path.join(tmp, "report.json"), {
            "dataset": args.dataset, "method": args.method, "loss": syn.meta["loss"], "ipc": args.ipc,
            "seed": args.seed, "distill_seconds": distill_seconds, "world_size": world_size,
            "evaluation": report.to_dict() if report is not None else None})
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    d.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="checkpoint folder (default with --checkpoint-every/--resume: OUT.ckpt); a finished class "
                        "is always checkpointed; removed after a successful run")
    d.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                   help="also checkpoint the class in progress every STEPS synthesis steps")
    d.add_argument("--resume", action="store_true", help="continue the run saved in the checkpoint folder")
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
