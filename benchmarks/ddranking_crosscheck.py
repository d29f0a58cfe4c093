"""Cross-check ddmetrics' DD-Ranking scores (``ddmetrics.scores``) against the ``ddranking`` package itself.

``ddranking`` pins older versions than ddmetrics (numpy < 2, scipy < 1.16) and needs torchvision, so it
lives in its own throwaway environment, never beside ddmetrics::

    python3 -m venv /tmp/ddr && /tmp/ddr/bin/pip install -c constraints.txt ddranking
    .venv/bin/python benchmarks/ddranking_crosscheck.py --ddranking-python /tmp/ddr/bin/python

This script then runs itself under that interpreter (``--child``): it builds ddranking's three score
classes (``LabelRobustScoreSoft``, ``LabelRobustScoreHard``, ``AugmentationRobustScore``) without their
constructors (which load data sets and teachers), replaces only their training helpers by functions that
return fixed accuracy lists, and calls their released ``compute_metrics`` — so their own per-run
arithmetic and aggregation turn the lists into scores. The same lists go through ``ddmetrics.scores``
here, and both are written to ``results/ddranking_crosscheck.{json,md}``.

The torchvision wheel that pip resolves beside the pinned CPU torch cannot be imported (its compiled
operators expect another torch build: "operator torchvision::nms does not exist"), and timm imports it;
no torchvision or timm code runs in ``compute_metrics`` with the helpers replaced, so the child stands in
empty modules for both (their names resolve; nothing of them is called).

Each case is fed twice: as fractions in [0, 1] (the units of the stated definitions, and ours) and as
percentages (the units ddranking's training helpers return).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List

#: fixed accuracy lists (fractions), one value per evaluation run; ``w`` weighs LRS, ``gamma`` ARS
CASES: List[Dict[str, Any]] = [
    {"name": "typical", "w": 0.5, "gamma": 0.5, "full": 0.85,
     "syn_hard": [0.60, 0.62, 0.58], "syn": [0.70, 0.72, 0.69], "rdm": [0.65, 0.66, 0.70],
     "syn_naug": [0.55, 0.57, 0.52], "rdm_naug": [0.45, 0.50, 0.48]},
    {"name": "equal accuracies", "w": 0.5, "gamma": 0.5, "full": 0.8,
     "syn_hard": [0.8, 0.8, 0.8], "syn": [0.8, 0.8, 0.8], "rdm": [0.8, 0.8, 0.8],
     "syn_naug": [0.8, 0.8, 0.8], "rdm_naug": [0.8, 0.8, 0.8]},
    {"name": "w = 0", "w": 0.0, "gamma": 0.0, "full": 0.85,
     "syn_hard": [0.60, 0.62, 0.58], "syn": [0.70, 0.72, 0.69], "rdm": [0.65, 0.66, 0.70],
     "syn_naug": [0.55, 0.57, 0.52], "rdm_naug": [0.45, 0.50, 0.48]},
    {"name": "w = 1", "w": 1.0, "gamma": 1.0, "full": 0.85,
     "syn_hard": [0.60, 0.62, 0.58], "syn": [0.70, 0.72, 0.69], "rdm": [0.65, 0.66, 0.70],
     "syn_naug": [0.55, 0.57, 0.52], "rdm_naug": [0.45, 0.50, 0.48]},
    {"name": "extremes (alpha = beta = 1)", "w": 0.5, "gamma": 0.5, "full": 0.0,
     "syn_hard": [1.0, 1.0], "syn": [1.0, 1.0], "rdm": [0.0, 0.0], "syn_naug": [1.0, 1.0], "rdm_naug": [0.0, 0.0]},
    {"name": "CIFAR-10-like, 5 runs, w = 0.3", "w": 0.3, "gamma": 0.7, "full": 0.8473,
     "syn_hard": [0.4821, 0.4790, 0.4866, 0.4803, 0.4851], "syn": [0.6312, 0.6288, 0.6350, 0.6271, 0.6330],
     "rdm": [0.5934, 0.6011, 0.5897, 0.5968, 0.5950], "syn_naug": [0.4410, 0.4388, 0.4452, 0.4431, 0.4402],
     "rdm_naug": [0.3990, 0.4077, 0.4012, 0.3968, 0.4035]},
]


# --------------------------------------------------------------------------- child: under ddranking's python
def _stand_in_modules(prefixes=("torchvision", "timm")) -> None:
    """Empty modules for ``prefixes`` (any attribute is an inert class): see the module docstring."""
    import importlib.abc
    import importlib.machinery
    import types

    class Inert(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {"__init__": lambda self, *a, **k: None})

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):
            if fullname.split(".")[0] in prefixes:
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            module = Inert(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, Finder())


def _bare(cls, n: int, tmp: str, **attrs):
    """An instance of ``cls`` without its constructor: the attributes ``compute_metrics`` reads."""
    obj = cls.__new__(cls)
    obj.__dict__.update(num_eval=n, use_dist=False, rank=0, world_size=1, ipc=1, num_classes=2, device="cpu",
                        save_path=os.path.join(tmp, f"{cls.__name__}.csv"), **attrs)
    return obj


def _child(cases: List[Dict[str, Any]], scale: float) -> List[Dict[str, Any]]:
    _stand_in_modules()
    import importlib.metadata

    import ddranking.metrics.aug_robust as aug_mod
    import ddranking.metrics.hard_label as hard_mod
    import ddranking.metrics.soft_label as soft_mod

    syn_images, random_images = object(), object()  # which set a helper is asked to train on
    saved: Dict[str, Any] = {}
    out = []
    for case in cases:
        acc = {k: [scale * v for v in case[k]] for k in ("syn_hard", "syn", "rdm", "syn_naug", "rdm_naug")}
        full, n = scale * case["full"], len(case["syn"])
        run = {"i": -1}
        row: Dict[str, Any] = {"name": case["name"]}
        with tempfile.TemporaryDirectory() as tmp:
            for module in (soft_mod, hard_mod, aug_mod):  # keep what compute_metrics saves, per run
                module.save_results = lambda results, path, _m=module.__name__: saved.__setitem__(_m, results)

            # LabelRobustScoreSoft: per run syn-hard, real-hard, syn-soft, rdm-soft (soft_label.py:512-568)
            soft = _bare(soft_mod.LabelRobustScoreSoft, n, tmp, soft_label_mode="M", eval_full_data=True)

            def hard_helper(image_tensor, image_path, hard_labels, lr, mode, hyper_param_search=False):
                if mode == "real":
                    return full, lr
                if image_tensor is random_images:
                    return acc["rdm"][run["i"]], lr
                run["i"] += 1  # the first training of each run is the synthetic set's hard-label one
                return acc["syn_hard"][run["i"]], lr

            def soft_helper(image_tensor, image_path, soft_labels, lr, hyper_param_search=False):
                return acc["rdm" if image_tensor is random_images else "syn"][run["i"]], lr

            soft._compute_hard_label_metrics_helper = hard_helper
            soft._compute_soft_label_metrics_helper = soft_helper
            soft._get_random_data_helper = lambda eval_iter: (None, random_images, None)
            result = soft.compute_metrics(image_tensor=syn_images, lrs_lambda=case["w"])
            row["soft"] = {"returned": result, "per_run": saved[soft_mod.__name__]}

            # LabelRobustScoreHard: syn-hard, real-hard, rdm-hard; IOR = syn-hard - rdm-hard (hard_label.py:339-388)
            run["i"] = -1
            hard = _bare(hard_mod.LabelRobustScoreHard, n, tmp, eval_full_data=True, random_data_format="tensor")
            hard._compute_hard_label_metrics_helper = hard_helper
            hard._get_random_data_helper = lambda eval_iter: (None, random_images, None)
            result = hard.compute_metrics(image_tensor=syn_images, lrs_lambda=case["w"])
            row["hard"] = {"returned": result, "per_run": saved[hard_mod.__name__]}
            # as released, its results go to a CSV through pandas, which refuses lists of unequal lengths
            run["i"] = -1
            hard_mod.save_results = getattr(__import__("ddranking.utils", fromlist=["save_results"]), "save_results")
            try:
                hard.compute_metrics(image_tensor=syn_images, lrs_lambda=case["w"])
                row["hard"]["as_released"] = "ok"
            except Exception as err:  # the released class's own failure, recorded as it is
                row["hard"]["as_released"] = f"{type(err).__name__}: {err}"

            # AugmentationRobustScore: syn-aug, rdm-aug, syn-naug, rdm-naug per run (aug_robust.py:532-584)
            run["i"] = -1
            ars = _bare(aug_mod.AugmentationRobustScore, n, tmp, label_type="soft", soft_label_mode="M")

            def with_aug(image_tensor, image_path, hard_labels, soft_labels, lr, hyper_param_search=False):
                if image_tensor is random_images:
                    return acc["rdm"][run["i"]], lr
                run["i"] += 1
                return acc["syn"][run["i"]], lr

            def without_aug(image_tensor, image_path, hard_labels, soft_labels, lr, hyper_param_search=False):
                return acc["rdm_naug" if image_tensor is random_images else "syn_naug"][run["i"]], lr

            ars._compute_with_aug_metrics_helper = with_aug
            ars._compute_without_aug_metrics_helper = without_aug
            ars._get_random_data_helper = lambda eval_iter: (None, random_images, None, None)
            result = ars.compute_metrics(image_tensor=syn_images, ars_lambda=case["gamma"])
            row["ars"] = {"returned": result, "per_run": saved[aug_mod.__name__]}
        out.append(row)
    version = importlib.metadata.version("ddranking")
    return [dict(r, ddranking=version) for r in out]


# --------------------------------------------------------------------------- parent: compare
def _ours(case: Dict[str, Any]) -> Dict[str, List[float]]:
    from ddmetrics.scores import dd_ranking_scores, label_robust_score

    scores = dd_ranking_scores(case["full"], case["syn_hard"], case["syn"], case["rdm"], case["syn_naug"],
                               case["rdm_naug"], lrs_weight=case["w"], ars_weight=case["gamma"])
    out = {k: scores[k]["runs"] for k in ("hlr", "ior", "lrs", "ars")}
    out["hard_lrs"] = [float(v) for v in label_robust_score(case["full"], case["syn_hard"], case["syn_hard"],
                                                            case["rdm"], w=case["w"])]
    out["hard_ior"] = [a - b for a, b in zip(case["syn_hard"], case["rdm"])]
    return out


def _theirs(row: Dict[str, Any], scale: float) -> Dict[str, List[float]]:
    soft, hard, ars = row["soft"]["per_run"], row["hard"]["per_run"], row["ars"]["per_run"]
    return {"hlr": [v / scale for v in soft["hard_label_recovery"]],
            "ior": [v / scale for v in soft["improvement_over_random"]],
            "lrs": list(soft["lrs"]), "ars": list(ars["ars_list"]),
            "hard_lrs": list(hard["lrs"]), "hard_ior": [v / scale for v in hard["improvement_over_random"]]}


def _max_diff(a: List[float], b: List[float]) -> float:
    return float("inf") if len(a) != len(b) else max(abs(x - y) for x, y in zip(a, b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ddranking-python", default="/tmp/ddr/bin/python",
                        help="an interpreter with ddranking installed (a separate environment)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # scale: run under ddranking's python
    parser.add_argument("--out", default=None, help="results prefix (default: benchmarks/results/ddranking_crosscheck)")
    args = parser.parse_args(argv)
    if args.child is not None:
        json.dump(_child(CASES, float(args.child)), sys.stdout)
        return 0

    import numpy as np

    import _common

    here = os.path.abspath(__file__)
    fed = {}
    for label, scale in (("fractions", 1.0), ("percent", 100.0)):
        proc = subprocess.run([args.ddranking_python, here, "--child", str(scale)], capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"ddranking under {args.ddranking_python} failed:\n{proc.stderr[-3000:]}")
        # ddranking logs each run on stdout before the JSON: the JSON is the last line
        fed[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    version = fed["fractions"][0]["ddranking"]
    rows, record = [], []
    for case, frac, pct in zip(CASES, fed["fractions"], fed["percent"]):
        ours = _ours(case)
        theirs_f, theirs_p = _theirs(frac, 1.0), _theirs(pct, 100.0)
        entry = {"case": case, "ours": ours, "ddranking_fractions": theirs_f, "ddranking_percent": theirs_p,
                 "returned_fractions": {k: frac[k]["returned"] for k in ("soft", "hard", "ars")},
                 "hard_as_released": frac["hard"]["as_released"]}
        record.append(entry)
        n = len(case["syn"])
        for key, name in (("hlr", "HLR"), ("ior", "IOR"), ("lrs", "LRS"), ("ars", "ARS")):
            returned = frac["ars" if key == "ars" else "soft"]["returned"]
            mean_key = {"hlr": "hard_label_recovery_mean", "ior": "improvement_over_random_mean",
                        "lrs": "label_robust_score_mean", "ars": "augmentation_robust_score_mean"}[key]
            std_key = mean_key.replace("_mean", "_std")
            ours_mean, ours_std = float(np.mean(ours[key])), float(np.std(ours[key]))
            rows.append([case["name"], name, f"{ours_mean:.6f}", f"{returned[mean_key]:.6f}",
                         f"{_max_diff(ours[key], theirs_f[key]):.1e}", f"{abs(ours_std - returned[std_key]):.1e}",
                         f"{float(np.mean(theirs_p[key])):.6f}" + (" (÷100)" if key in ("hlr", "ior") else ""),
                         f"{_max_diff(ours[key], theirs_p[key]):.1e}"])
        hard_lrs = theirs_f["hard_lrs"]
        rows.append([case["name"], "LRS (hard-label class)", f"{float(np.mean(ours['hard_lrs'])):.6f}",
                     f"{float(np.mean(hard_lrs)):.6f}", f"{len(hard_lrs)} values for {n} runs",
                     f"{abs(float(np.std(ours['hard_lrs'])) - float(np.std(hard_lrs))):.1e}", "", ""])
    worst = max(_max_diff(r["ours"][k], r["ddranking_fractions"][k])
                for r in record for k in ("hlr", "ior", "lrs", "ars"))
    percent_scores = [v for r in record for k in ("lrs", "ars") for v in r["ddranking_percent"][k]]
    low, high = min(percent_scores), max(percent_scores)
    md = [f"# DD-Ranking scores: ddmetrics against `ddranking` {version}", "",
          f"`{_common.command_line()}` — {_common.now_utc()}", "",
          "Fixed accuracy lists (one value per run) go through ddranking's released `compute_metrics` (its training "
          "helpers replaced by the lists; see the script's docstring) and through `ddmetrics.scores`. Columns: our "
          "mean over runs; ddranking's returned mean when fed fractions; the largest per-run difference; the "
          "difference of the std over runs (population, as ddranking's `np.std`); ddranking's mean when fed "
          "percentages (its training helpers' unit; HLR/IOR divided by 100 to compare) and its largest per-run "
          "difference to ours.", "",
          *_common.markdown_table(["case", "score", "ddmetrics", "ddranking (fractions)", "max per-run |Δ|",
                                   "|Δ std|", "ddranking (percent)", "max per-run |Δ| (percent)"], rows,
                                  align="llrrrrrr"),
          "", "Findings:", "",
          f"- Fed fractions, every per-run HLR, IOR, LRS and ARS agrees with ours within {worst:.1e} (largest "
          "difference over all cases), and so do their means and population stds, including equal accuracies "
          "(LRS = ARS = 1/(e+1)), w = 0 and 1 and the extremes (LRS = ARS = 1).",
          "- Fed percentages — what its training helpers return (`utils/meter.py:168`, "
          "`utils/train_and_eval.py:262`) — HLR and IOR agree after /100, but LRS and ARS are the normalisation "
          "applied to percentage points and "
          f"leave [0, 1]: from {low:.4f} (the floor -e^-1/(e - e^-1)) to {high:.3g}, except where α = β = 0. "
          "ddmetrics follows the stated definition (scores in [0, 1]).",
          "- `LabelRobustScoreHard` appends each run's LRS twice (`hard_label.py:384,388`): its list holds 2n values "
          "(each value twice: the same mean and population std), and as released its `save_results` then fails: "
          f"`{record[0]['hard_as_released']}`.", ""]
    prefix = args.out or os.path.join(_common.RESULTS, "ddranking_crosscheck")
    _common.write_json(prefix + ".json", {"command": _common.command_line(), "date": _common.now_utc(),
                                          "ddranking": version, "cases": record})
    _common.write_lines(prefix + ".md", md)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
