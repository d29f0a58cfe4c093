"""The ``ddmetrics`` command: ``distill``, ``evaluate``, ``diagnose``, ``losses``.

    ddmetrics distill --dataset digits --method wmdd --ipc 10 --out runs/x
    ddmetrics evaluate runs/x/synset.pt --dataset digits [--protocol hard|soft] [--json OUT]
    ddmetrics diagnose runs/x/synset.pt --dataset digits [--model teacher|convnet] [--json OUT]
    ddmetrics losses

``distill`` runs under ``torchrun --nproc-per-node N -m ddmetrics distill ...`` as well: classes
and evaluation runs are sharded over the ranks (gloo on CPU, NCCL on CUDA) and rank 0 writes
the run folder.

Building the parser imports nothing but the standard library and :mod:`ddmetrics._io`: torch,
the models and the losses are imported by the command that runs, so ``ddmetrics --help`` is
quick. One ``_cmd_*`` function per subcommand, all wired up in :func:`build_parser`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._io import atomic_write, atomic_write_json


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
        report = evaluate(syn, splits.test, train_set=splits.train, runs=args.runs, teacher=distiller.teacher_,
                          seed=args.seed, progress=not args.quiet and rank == 0,
                          **distiller.config.evaluation_kwargs())
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
    import torch

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


def _teacher_path(synset_path: str) -> str:
    """The ``teacher.pt`` that ``ddmetrics distill`` writes next to ``synset.pt`` (barycenter methods)."""
    return os.path.join(os.path.dirname(os.path.abspath(synset_path)), "teacher.pt")


def _cmd_evaluate(args) -> int:
    from .data import load
    from .distill.presets import DistillConfig
    from .evaluate import evaluate
    from .models import get_model, load_state_dict_file
    from .synset import SyntheticSet

    syn = SyntheticSet.load(args.synset)
    splits = load(args.dataset, seed=args.seed)
    cfg = DistillConfig(**{k: v for k, v in syn.meta.get("config", {}).items() if k in DistillConfig.__dataclass_fields__})
    settings = cfg.evaluation_kwargs()
    if args.protocol:
        settings["protocol"] = args.protocol
    teacher = None
    if settings["protocol"] == "soft":
        path = _teacher_path(args.synset)
        if not os.path.exists(path):
            raise ValueError(f"the soft-label protocol needs the teacher saved next to the synthetic set ({path})")
        x = splits.train.images
        teacher = load_state_dict_file(get_model(cfg.teacher_arch, x.shape[1], splits.train.num_classes, x.shape[-1]), path)
    report = evaluate(syn, splits.test, train_set=splits.train, runs=args.runs, teacher=teacher, seed=args.seed,
                      progress=not args.quiet, **settings)
    print(report.summary())
    if args.json:
        atomic_write_json(args.json, report.to_dict())
    return 0


def _feature_model(synset, synset_path: str, dataset, which: Optional[str]) -> Tuple[Any, str]:
    """``diagnose``'s feature extractor: the ``teacher.pt`` saved next to the synthetic set, or a
    random ConvNet.

    Parameters
    ----------
    synset : SyntheticSet
        The loaded set (its ``meta["config"]["teacher_arch"]`` names the teacher architecture).
    synset_path : str
        Where it was loaded from.
    dataset : ArrayDataset
        Real data (channels, image size and class count of the model).
    which : {"teacher", "convnet", None}
        ``None``: the teacher when ``teacher.pt`` exists, else the ConvNet.

    Returns
    -------
    (model, description)
        The model in eval mode and a line saying which it is.

    Raises
    ------
    ValueError
        ``which="teacher"`` without a ``teacher.pt`` next to the set, or a teacher file that is
        not a state dict or does not fit the architecture.
    """
    from .models import get_model, load_state_dict_file
    from .utils import seeded

    channels, size = dataset.images.shape[1], dataset.images.shape[-1]
    path = _teacher_path(synset_path)
    if which is None:
        which = "teacher" if os.path.exists(path) else "convnet"
    if which == "teacher":
        if not os.path.exists(path):
            raise ValueError(f"--model teacher needs {path} (written by 'ddmetrics distill' for barycenter methods)")
        arch = (synset.meta.get("config") or {}).get("teacher_arch", "convnet_bn")
        model = load_state_dict_file(get_model(arch, channels, dataset.num_classes, size), path)
        return model.eval(), f"teacher {arch} ({path})"
    with seeded(0):
        model = get_model("convnet", channels, dataset.num_classes, size)
    return model.eval(), "randomly initialised convnet (seed 0)"


def _cmd_diagnose(args) -> int:
    from .data import load
    from .diagnose import diagnose
    from .synset import SyntheticSet

    syn = SyntheticSet.load(args.synset)
    seed = int(syn.meta.get("seed", 0)) if args.seed is None else args.seed
    splits = load(args.dataset, seed=seed)
    real = getattr(splits, args.split)
    model, description = _feature_model(syn, args.synset, real, args.model)
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


def _cmd_losses(args) -> int:
    from .losses import available_losses

    names = available_losses()
    width = max(len(n) for n in names)
    for name, doc in names.items():
        print(f"{name.ljust(width)}  {doc}")
    return 0


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with help texts filled in only when help is shown.

    ``parser.late_help.append((action, fn))`` sets ``action.help = fn()`` before the help is
    formatted: texts that name things defined in heavy modules (the method presets) do not
    make building the parser, or ``ddmetrics --help``, import them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.late_help: List[Tuple[argparse.Action, Callable[[], str]]] = []

    def format_help(self) -> str:
        for action, text in self.late_help:
            action.help = text()
        self.late_help = []
        return super().format_help()


def _methods_help() -> str:
    from .distill.presets import PRESETS

    return f"one of {', '.join(sorted(PRESETS))}"


def build_parser() -> argparse.ArgumentParser:
    """The ``ddmetrics`` parser; each subcommand's ``func`` default runs it and returns the exit status."""
    parser = _Parser(prog="ddmetrics", description="Dataset distillation with a pluggable distance.")
    sub = parser.add_subparsers(dest="command", required=True)  # the subparsers are _Parser too

    d = sub.add_parser("distill", help="distil a data set, evaluate it, write synset.pt, grid.png, report.json")
    d.add_argument("--dataset", default="digits", help="'digits' or a path (.npz, CIFAR batch folder, image folder)")
    d.late_help.append((d.add_argument("--method", default="wmdd", help="a method preset"), _methods_help))
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

    g = sub.add_parser(
        "diagnose", help="distances (every backend + 1st/2nd/3rd moments) between a synthetic set and real features",
        description="Embed the real data and the synthetic set with a model and print, per class and overall, "
                    "the distance between the two feature clouds under every registered loss and the moment "
                    "distances ||mean||, ||cov||_F and ||3rd central moment (diagonal)||.")
    g.add_argument("synset", help="a synset.pt written by 'ddmetrics distill' or SyntheticSet.save")
    g.add_argument("--dataset", default="digits", help="'digits' or a path accepted by ddmetrics.data.load")
    g.add_argument("--split", choices=["train", "val", "test"], default="train",
                   help="real split to compare with (default: train, the data that was distilled)")
    g.add_argument("--model", choices=["teacher", "convnet"], default=None,
                   help="feature extractor: the teacher.pt next to the set (default when present) or a random "
                        "ConvNet seeded with 0 (default otherwise)")
    g.add_argument("--losses", nargs="+", default=None, metavar="NAME",
                   help="registered losses to compute (default: all)")
    g.add_argument("--seed", type=int, default=None, help="split seed (default: the synthetic set's meta['seed'])")
    g.add_argument("--batch-size", type=int, default=512)
    g.add_argument("--json", default=None, metavar="OUT", help="also write the report as JSON here")
    g.set_defaults(func=_cmd_diagnose)

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
