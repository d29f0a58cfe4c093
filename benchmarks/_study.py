"""Which distance between a synthetic set and the real data predicts the accuracy it buys?

``python benchmarks/metric_vs_accuracy.py --experiment study [--phase ...]`` (this module is that
experiment; it keeps its own, resumable JSON). Phases (``--phase``, default all, in order):

``sets``
    Makes the synthetic sets of the study on ``--dataset`` (digits by default) and saves each under
    ``benchmarks/cache/study_<dataset>/`` (not committed): at IPC 1 and 10, every registered
    backend × {barycenter (``method="wmdd"``), distribution (``method="dm"``)} at ``--iterations``,
    the KR-dual preset, the coresets herding / k-center / k-means on the teacher's features, and
    ``--random`` random real subsets; plus the *controlled series* at IPC 10: images interpolated
    from a random real subset (t = 0) to the DM set with the MMD (t = 1), and past it with
    Gaussian noise (t > 1: ``S + (t - 1) sigma_k eps``, sigma_k the class's pixel standard
    deviation), the images of each class paired in order.
``eval``
    Trains ``--runs`` students on every set by one protocol for all (hard labels, DM's ConvNet
    recipe, ``--epochs`` epochs; seeds 0..runs-1, the same for every set, so the runs are paired)
    and records each student's accuracy on the validation split (carved from the training data:
    the split the recommendation is chosen on) and on the test split (reported).
``score``
    Scores every saved set (:func:`ddmetrics.score.score_set`: per class, against the training
    split, the set's weights renormalised) under every registered backend and the three moment
    distances, in three fixed spaces: a trained reference teacher's features (a ConvNet-BN trained
    with seed 1, not the teacher the barycenter sets were made with), a random ConvNet's (seed 0)
    and the pixels. Re-scoring needs the saved sets only (no student is trained).
``analyse``
    Rank agreement of every (distance, space) with accuracy (:mod:`ddmetrics.rank_agreement`:
    Spearman and Kendall of the negative distance with accuracy, within each IPC and pooled with
    IPC as a stratum, bootstrap intervals over sets and student seeds, paired differences to the
    best), the controlled series, each distance's time to score a set, the plot; writes
    ``benchmarks/results/metric_vs_accuracy_study.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ddmetrics as ddm  # noqa: E402
from ddmetrics.evaluate import random_subset, train_student, with_overrides  # noqa: E402
from ddmetrics.models import accuracy, get_model  # noqa: E402
from ddmetrics.protocols import PROTOCOLS  # noqa: E402
from ddmetrics.rank_agreement import agreement_study  # noqa: E402
from ddmetrics.score import SPACES, reference_models, score_set  # noqa: E402

from _common import command_line, machine_info, markdown_table, write_json, write_lines  # noqa: E402

RESULTS = os.path.join(HERE, "results")
CACHE = os.path.join(HERE, "cache")
PHASES = ("sets", "eval", "score", "analyse")
SERIES_T = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
#: the teacher the barycenter sets and coresets are made with, and the reference teacher of the scores
TEACHER = dict(teacher_arch="convnet_bn", teacher_recipe="ours", teacher_epochs=30)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="metric_vs_accuracy.py --experiment study", description=__doc__.split("\n")[0])
    p.add_argument("--phase", nargs="+", choices=PHASES, default=list(PHASES))
    p.add_argument("--dataset", default="digits")
    p.add_argument("--ipc", nargs="+", type=int, default=[1, 10])
    p.add_argument("--iterations", type=int, default=100, help="synthesis iterations of every distilled set")
    p.add_argument("--random", type=int, default=4, help="random real subsets per IPC")
    p.add_argument("--skip-barycenter", nargs="*", default=["krdual", "ncfd"], metavar="LOSS",
                   help="backends left out of the barycenter strategy (default: krdual ncfd, whose barycenter solves "
                        "are by far the slowest on a 2-core CPU); they are still scored as distances")
    p.add_argument("--runs", type=int, default=3, help="students per set")
    p.add_argument("--epochs", type=int, default=300, help="epochs of every student")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="path without extension (default: results/metric_vs_accuracy_study)")
    return p.parse_args(argv)


class Study:
    """The JSON document (rewritten atomically after every set) and the data."""

    def __init__(self, args: argparse.Namespace, command: str):
        self.args = args
        self.json = (args.out or os.path.join(RESULTS, "metric_vs_accuracy_study")) + ".json"
        # the sets of one study (named as its results), the teachers shared between studies of a dataset
        self.cache = os.path.join(CACHE, os.path.basename(os.path.splitext(self.json)[0]))
        self.teachers = os.path.join(CACHE, f"teachers_{args.dataset}")
        self.doc: Dict[str, Any] = {"schema": 1, "sets": {}, "scores": {}, "commands": []}
        if os.path.exists(self.json):
            import json
            with open(self.json) as fh:
                self.doc = json.load(fh)
        self.doc["commands"] = [c for c in self.doc.get("commands", []) if c != command] + [command]
        self.doc["settings"] = {k: v for k, v in vars(args).items() if k not in ("phase", "out", "threads")}
        self.splits = ddm.data.load(args.dataset, seed=args.seed)
        self._teachers: Dict[int, torch.nn.Module] = {}

    def save(self) -> None:
        write_json(self.json, self.doc, indent=None)  # ~50 sets x 3 spaces x 11 distances x 10 classes: kept compact

    def teacher(self, seed: int) -> torch.nn.Module:
        """The ConvNet-BN of :data:`TEACHER` trained with ``seed`` (cached in the cache folder)."""
        if seed not in self._teachers:
            train = self.splits.train
            d = ddm.Distiller(method="wmdd", ipc=1, seed=seed, **TEACHER)
            path = os.path.join(self.teachers, f"convnet_bn_ours{TEACHER['teacher_epochs']}_seed{seed}.pt")
            model = get_model(TEACHER["teacher_arch"], train.image_shape[0], train.num_classes, train.image_shape[-1])
            if os.path.exists(path):
                model.load_state_dict(torch.load(path, weights_only=True))
            else:
                model = d.train_teacher(train, train.num_classes, progress=False)
                os.makedirs(self.teachers, exist_ok=True)
                tmp = path + ".tmp"
                torch.save(model.state_dict(), tmp)
                os.replace(tmp, path)
            self._teachers[seed] = model.eval()
        return self._teachers[seed]

    # ------------------------------------------------------------------ sets
    def plan(self) -> List[Dict[str, Any]]:
        a = self.args
        out: List[Dict[str, Any]] = []
        for ipc in a.ipc:
            for loss in ddm.available_losses():
                if ddm.losses.base.missing_losses().get(loss):
                    continue
                if loss not in a.skip_barycenter:
                    out.append(dict(name=f"{loss}/barycenter/ipc{ipc}", ipc=ipc, family="barycenter", method="wmdd",
                                    loss=loss, kw=dict(iterations=a.iterations, **TEACHER)))
                out.append(dict(name=f"{loss}/distribution/ipc{ipc}", ipc=ipc, family="distribution", method="dm",
                                loss=loss, kw=dict(iterations=a.iterations)))
            out.append(dict(name=f"krdual preset/ipc{ipc}", ipc=ipc, family="preset", method="krdual", loss=None,
                            kw=dict(iterations=a.iterations)))
            for m in ("herding", "kcenter", "kmeans"):
                out.append(dict(name=f"{m}/ipc{ipc}", ipc=ipc, family="coreset", method=m, loss=None, kw=dict(TEACHER)))
            for r in range(a.random):
                out.append(dict(name=f"random {r}/ipc{ipc}", ipc=ipc, family="random", method="random", loss=None,
                                kw={}, seed=a.seed + r))
        if 10 in a.ipc:
            for t in SERIES_T:
                out.append(dict(name=f"series t={t:g}/ipc10", ipc=10, family="series", method="series", loss=None,
                                kw={}, t=t))
        return out

    def path(self, name: str) -> str:
        return os.path.join(self.cache, name.replace("/", "__").replace(" ", "_").replace("=", "") + ".pt")

    def make(self, spec: Dict[str, Any]) -> None:
        train = self.splits.train
        start = time.perf_counter()
        if spec["family"] == "series":
            syn = self.series(spec["t"])
        elif spec["method"] == "random":
            syn = random_subset(train, spec["ipc"], spec["seed"])
        else:
            teacher = self.teacher(self.args.seed) if spec["family"] in ("barycenter", "coreset") else None
            d = ddm.Distiller(method=spec["method"], loss=spec["loss"], ipc=spec["ipc"], seed=self.args.seed,
                              teacher=teacher, **spec["kw"])
            syn = d.fit(train, progress=False)
        os.makedirs(self.cache, exist_ok=True)
        syn.save(self.path(spec["name"]))
        self.doc["sets"][spec["name"]] = {k: spec.get(k) for k in ("ipc", "family", "method", "loss", "t")}
        self.doc["sets"][spec["name"]]["distill_seconds"] = time.perf_counter() - start

    def series(self, t: float) -> ddm.SyntheticSet:
        """Random real subset (seed) -> the DM/MMD set at IPC 10 -> past it with noise."""
        random = random_subset(self.splits.train, 10, self.args.seed)
        target = ddm.SyntheticSet.load(self.path("mmd/distribution/ipc10"))
        if not torch.equal(random.labels, target.labels):
            raise RuntimeError("the series pairs the images of each class in order: labels must agree")
        x0, x1 = random.images.float(), target.images.float()
        if t <= 1.0:
            images = (1.0 - t) * x0 + t * x1
        else:
            gen = torch.Generator().manual_seed(self.args.seed)
            noise = torch.randn(x1.shape, generator=gen)
            sigma = torch.stack([self.splits.train.images[self.splits.train.labels == int(k)].float().std()
                                 for k in target.labels])
            images = x1 + (t - 1.0) * sigma.view(-1, 1, 1, 1) * noise
        return ddm.SyntheticSet(images=images, labels=target.labels.clone(), weights=torch.ones(len(images)),
                                num_classes=target.num_classes, meta={"method": "series", "t": t})

    # ------------------------------------------------------------------ eval
    def evaluate(self, name: str) -> None:
        a = self.args
        syn = ddm.SyntheticSet.load(self.path(name))
        protocol = with_overrides(PROTOCOLS["hard"], epochs=a.epochs)
        val, test = [], []
        start = time.perf_counter()
        for r in range(a.runs):
            student = train_student(syn, protocol, seed=a.seed + r, device="cpu")
            val.append(accuracy(student, self.splits.val))
            test.append(accuracy(student, self.splits.test))
        entry = self.doc["sets"][name]
        entry.update(val=val, test=test, eval_seconds=time.perf_counter() - start,
                     protocol=f"hard (DM's ConvNet recipe), {a.epochs} epochs, seeds {a.seed}..{a.seed + a.runs - 1}")

    # ------------------------------------------------------------------ score
    def score(self, name: str, models: Dict[str, torch.nn.Module]) -> None:
        syn = ddm.SyntheticSet.load(self.path(name))
        report = score_set(syn, self.splits.train, models, seed=self.args.seed, device="cpu")
        self.doc["scores"][name] = report.to_dict()


def run_phases(study: Study) -> None:
    a = study.args
    specs = study.plan()
    if "sets" in a.phase:
        # the series needs its end point first
        specs.sort(key=lambda s: s["family"] == "series")
        for spec in specs:
            if spec["name"] in study.doc["sets"] and os.path.exists(study.path(spec["name"])):
                continue
            print(f"[sets] {spec['name']}", flush=True)
            study.make(spec)
            study.save()
    if "eval" in a.phase:
        for spec in specs:
            entry = study.doc["sets"].get(spec["name"])
            if entry is None or "test" in entry:
                continue
            print(f"[eval] {spec['name']}", flush=True)
            study.evaluate(spec["name"])
            study.save()
    if "score" in a.phase:
        train = study.splits.train
        shape = train.image_shape
        models = reference_models(shape[0], train.num_classes, shape[-1], teacher=study.teacher(a.seed + 1),
                                  seed=a.seed)
        study.doc["reference"] = {"teacher": f"ConvNet-BN, recipe {TEACHER['teacher_recipe']}, "
                                             f"{TEACHER['teacher_epochs']} epochs, seed {a.seed + 1}",
                                  "teacher_val_accuracy": accuracy(models["teacher"], study.splits.val),
                                  "convnet": f"ConvNet, random initialisation, seed {a.seed}", "pixels": "flattened"}
        for spec in specs:
            if spec["name"] not in study.doc["sets"] or spec["name"] in study.doc["scores"]:
                continue
            print(f"[score] {spec['name']}", flush=True)
            study.score(spec["name"], models)
            study.save()
    if "analyse" in a.phase:
        analyse(study)
        study.save()


# ---------------------------------------------------------------------- analysis
def _table(study: Study):
    names = [n for n, e in study.doc["sets"].items() if "test" in e and n in study.doc["scores"]]
    metrics = []
    for n in names:
        for space, row in study.doc["scores"][n]["mean"].items():
            for d in row:
                if (d, space) not in metrics:
                    metrics.append((d, space))
    return names, metrics


def analyse(study: Study) -> None:
    doc, a = study.doc, study.args
    names, metrics = _table(study)
    grid = [n for n in names if doc["sets"][n]["family"] != "series"]
    series = sorted((n for n in names if doc["sets"][n]["family"] == "series"), key=lambda n: doc["sets"][n]["t"])

    def values(subset: Sequence[str]) -> Dict[str, np.ndarray]:
        out = {}
        for d, space in metrics:
            v = [doc["scores"][n]["mean"].get(space, {}).get(d) for n in subset]
            out[f"{d} @ {space}"] = np.array([np.nan if x is None else x for x in v], dtype=float)
        return out

    analysis: Dict[str, Any] = {"sets": grid, "series": series}
    for split in ("val", "test"):
        runs = [doc["sets"][n][split] for n in grid]
        strata = [doc["sets"][n]["ipc"] for n in grid]
        part = {"pooled": agreement_study(values(grid), runs, strata, a.resamples, a.seed)}
        # the same without the barycenter sets (WMDD from noise at a cut budget): far from everything and poor,
        # they could carry the agreement alone; this asks whether a distance also ranks the sets that are close
        near = [n for n in grid if doc["sets"][n]["family"] != "barycenter"]
        part["pooled_no_barycenter"] = agreement_study(values(near), [doc["sets"][n][split] for n in near],
                                                       [doc["sets"][n]["ipc"] for n in near], a.resamples, a.seed)
        for ipc in sorted(set(strata)):
            sub = [n for n in grid if doc["sets"][n]["ipc"] == ipc]
            part[f"ipc{ipc}"] = agreement_study(values(sub), [doc["sets"][n][split] for n in sub], None,
                                                a.resamples, a.seed)
        analysis[split] = part
    # the recommendation: the highest pooled agreement with the validation split's accuracy (never the test split's)
    val_rho = {k: v["spearman"]["estimate"] for k, v in analysis["val"]["pooled"]["per_distance"].items()
               if v["spearman"]["estimate"] is not None}
    if val_rho:
        best = max(val_rho, key=val_rho.get)
        analysis["recommended"] = {"distance": best.split(" @ ")[0], "space": best.split(" @ ")[1],
                                   "val_spearman": val_rho[best],
                                   "test_spearman": analysis["test"]["pooled"]["per_distance"][best]["spearman"]}
    # the series: dose-response (accuracy and each distance against t)
    if series:
        sv = values(series)
        analysis["series_table"] = {"t": [doc["sets"][n]["t"] for n in series],
                                    "test": [float(np.mean(doc["sets"][n]["test"])) for n in series],
                                    "distances": {k: v.tolist() for k, v in sv.items()},
                                    "agreement": agreement_study(sv, [doc["sets"][n]["test"] for n in series], None,
                                                                 a.resamples, a.seed)["per_distance"]}
    # cost: median seconds per set of each distance (its computation over the classes) and of the embedding
    cost = {}
    for d, space in metrics:
        secs = [doc["scores"][n]["seconds"].get(space, {}).get(d) for n in names]
        emb = [doc["scores"][n]["seconds"].get(space, {}).get("embed") for n in names]
        secs = [s for s in secs if s is not None]
        emb = [s for s in emb if s is not None]
        cost[f"{d} @ {space}"] = {"median_seconds": float(np.median(secs)) if secs else None,
                                  "embed_median_seconds": float(np.median(emb)) if emb else None}
    analysis["cost"] = cost
    doc["analysis"] = analysis
    doc["environment"] = machine_info()
    prefix = os.path.splitext(study.json)[0]
    write_lines(prefix + ".md", report_lines(doc))
    plot(doc, metrics, grid, prefix + ".png")


def _fmt_ci(entry: Dict[str, Any]) -> str:
    if entry.get("estimate") is None:
        return "-"
    low, high = entry.get("low"), entry.get("high")
    ci = "" if low is None else f" [{low:+.2f}, {high:+.2f}]"
    return f"{entry['estimate']:+.2f}{ci}"


def report_lines(doc: Dict[str, Any]) -> List[str]:
    an = doc["analysis"]
    s = doc["settings"]
    lines = ["# Which distance predicts the accuracy a synthetic set buys?", "",
             "Made by: " + "; ".join(f"`{c}`" for c in doc["commands"]), "",
             f"Dataset: {s['dataset']}; {len(an['sets'])} synthetic sets at IPC {', '.join(map(str, s['ipc']))} "
             f"(every backend × barycenter / distribution at {s['iterations']} iterations, the KR-dual preset, "
             f"herding / k-center / k-means, {s['random']} random real subsets per IPC) and the controlled series. "
             f"Every set: {s['runs']} students, hard labels, DM's ConvNet recipe, {s['epochs']} epochs, paired seeds. "
             f"Reference teacher: {doc['reference']['teacher']} (validation accuracy "
             f"{100 * doc['reference']['teacher_val_accuracy']:.1f} %).", "",
             "Agreement: Spearman ρ / Kendall τ_b of the *negative* distance with student accuracy (1: the nearer "
             "set is always the better one; 0: no relation), pooled with IPC as a stratum; [95 % bootstrap "
             f"interval over sets and student seeds, {an['test']['pooled']['resamples']} resamples]. Δ best: paired "
             "bootstrap difference to the distance with the highest agreement (an interval excluding 0 marks a "
             "detectably worse predictor, `*`). The recommendation is chosen on the validation split's accuracy; "
             "the tables show the test split's.", ""]
    if "recommended" in an:
        r = an["recommended"]
        lines += [f"**Recommended proxy** (highest pooled ρ on the validation split): `{r['distance']}` in the "
                  f"`{r['space']}` space — ρ = {r['val_spearman']:+.2f} on validation, "
                  f"{_fmt_ci(r['test_spearman'])} on test (`ddmetrics.score.RECOMMENDED`).", ""]
    pooled, val = an["test"]["pooled"], an["val"]["pooled"]
    ipcs = sorted(k for k in an["test"] if k.startswith("ipc"))
    near = an["test"]["pooled_no_barycenter"]
    rows = []
    for name, per in sorted(pooled["per_distance"].items(),
                            key=lambda kv: -(kv[1]["spearman"]["estimate"] or -9)):
        vb = pooled["versus_best"].get("spearman", {}).get(name)
        star = "*" if vb and vb["low"] > 0 else ""
        cost = an["cost"].get(name, {})
        rows.append([name, _fmt_ci(per["spearman"]), _fmt_ci(per["kendall"])]
                    + [_fmt_ci(an["test"][k]["per_distance"][name]["spearman"]) for k in ipcs]
                    + [_fmt_ci(near["per_distance"][name]["spearman"])]
                    + [("best" if vb and vb["best"] == name else (_fmt_ci(vb) + star if vb else "-")),
                       _fmt_ci(val["per_distance"][name]["spearman"]),
                       "-" if cost.get("median_seconds") is None else f"{cost['median_seconds']:.3f}"])
    lines += markdown_table(["distance @ space", "ρ pooled", "τ_b pooled"] + [f"ρ {k.upper()}" for k in ipcs]
                            + ["ρ pooled, no barycenter sets", "Δρ to best", "ρ pooled (val)", "s / set"], rows)
    if "series_table" in an:
        st = an["series_table"]
        lines += ["", "## Controlled series (IPC 10)", "",
                  "Images interpolated from a random real subset (t = 0) to the DM/MMD set (t = 1), then past it with "
                  "Gaussian noise (t > 1); test accuracy (mean over students) and each distance (teacher space).", ""]
        keys = [k for k in st["distances"] if k.endswith("@ teacher")]
        rows = [[f"{t:g}", f"{100 * acc:.2f}"] + [f"{st['distances'][k][i]:.4g}" for k in keys]
                for i, (t, acc) in enumerate(zip(st["t"], st["test"]))]
        lines += markdown_table(["t", "test %"] + [k.replace(" @ teacher", "") for k in keys], rows)
    lines += ["", "## Sets", ""]
    rows = []
    for n in an["sets"] + an.get("series", []):
        e = doc["sets"][n]
        rows.append([n, e["family"], f"{100 * np.mean(e['test']):.2f}", f"{100 * np.mean(e['val']):.2f}"])
    lines += markdown_table(["set", "family", "test %", "val %"], rows)
    env = doc.get("environment", {})
    lines += ["", f"Machine: {env.get('cpu_model', '?')}, {env.get('cpu_count', '?')} CPUs; times are medians over the "
                  "sets of one distance's computation over all classes (CPU, float64), the embedding apart."]
    return lines


def plot(doc: Dict[str, Any], metrics, grid: Sequence[str], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    # the space of the recommendation (chosen on the validation split), else the teacher's
    space = doc["analysis"].get("recommended", {}).get("space", "teacher")
    distances = [d for d, sp in metrics if sp == space]
    cols = 4
    rowsn = (len(distances) + cols - 1) // cols
    fig, axes = plt.subplots(rowsn, cols, figsize=(3.2 * cols, 2.6 * rowsn), squeeze=False)
    markers = {"barycenter": "o", "distribution": "s", "preset": "^", "coreset": "D", "random": "x"}
    colours = {1: "tab:blue", 10: "tab:orange", 50: "tab:green"}
    for ax, d in zip(axes.ravel(), distances):
        for n in grid:
            e = doc["sets"][n]
            v = doc["scores"][n]["mean"][space].get(d)
            if v is None or v <= 0:
                continue
            ax.scatter(v, 100 * np.mean(e["test"]), marker=markers.get(e["family"], "."),
                       color=colours.get(e["ipc"], "k"), s=18)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a narrow log range overlap
        ax.set_title(d, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(distances):]:
        ax.axis("off")
    axes[0][0].set_ylabel("test accuracy (%)", fontsize=8)
    handles = [plt.Line2D([], [], marker=m, ls="", color="k", label=f) for f, m in markers.items()]
    handles += [plt.Line2D([], [], marker="o", ls="", color=c, label=f"IPC {i}") for i, c in colours.items()
                if any(doc["sets"][n]["ipc"] == i for n in grid)]
    fig.legend(handles=handles, loc="lower right", fontsize=7, ncol=2)
    fig.suptitle(f"Accuracy against distance to the real data ({space} space; every set of the study but the "
                 "series)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import shlex
    command = shlex.join(["python", "benchmarks/metric_vs_accuracy.py", "--experiment", "study", *(argv or [])])
    study = Study(args, command)
    run_phases(study)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
