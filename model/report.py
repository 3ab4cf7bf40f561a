"""python -m model.report --out DIR [--quick]: measure what the Batch Norm article claims, on the
bundled data, and write DIR/report.md (tables, conclusions), DIR/*.png (plots), DIR/report.json.

Controlled experiments, several seeds each, same data and split, on breast_cancer and digits
(digits as 64 features into the same MLP, so that every experiment runs the same network):
  1. with and without BN in the hidden blocks, across learning rates (log scale);
  2. the initial weight scale, with and without BN;
  3. BN before vs after the ReLU;
  4. batch size: how far each batch's statistics stray from the running ones, and the accuracy;
  5. the moving averages against the exact statistics of the full training data (--recalibrate-bn).
"Without BN" keeps the input BN layer: the raw features still get standardised, so what is
compared is BN inside the network. Adam, as `python -m model.train` trains.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.data import Dataset, Split, load_dataset
from model.network import BNNet, BNNetConfig
from model.recalibrate import recalibrate
from model.train import batches, evaluate, train

logger = logging.getLogger("model.report")

DATASETS = ("breast_cancer", "digits")
TARGET = {"breast_cancer": 0.95, "digits": 0.90}  # validation accuracy that counts as converged


@dataclass(frozen=True)
class Plan:
    seeds: tuple[int, ...]
    epochs: dict[str, int]
    lrs: tuple[float, ...]
    init_scales: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    batch_size: int = 32
    lr: float = 3e-3


QUICK = Plan(seeds=(0, 1), epochs={"breast_cancer": 5, "digits": 4}, lrs=(1e-3, 1e-1, 1.0),
             init_scales=(0.1, 1.0, 10.0), batch_sizes=(4, 32, 256))  # fmt: skip
FULL = Plan(seeds=(0, 1, 2), epochs={"breast_cancer": 15, "digits": 12}, lrs=(1e-4, 1e-3, 1e-2, 1e-1, 1.0),
            init_scales=(0.1, 0.3, 1.0, 3.0, 10.0), batch_sizes=(2, 8, 32, 64, 128, 256))  # fmt: skip


def flat(data: Dataset) -> Dataset:
    """digits as 64 features: one MLP for every dataset."""
    if data.kind == "tabular":
        return data

    def f(s: Split) -> Split:
        return Split(np.ascontiguousarray(s.x.reshape(len(s.x), -1)), s.y)

    size = int(np.prod(data.input_shape))
    return replace(data, kind="tabular", input_shape=(size,), train=f(data.train), val=f(data.val), test=f(data.test))


def config(data: Dataset, **overrides: Any) -> BNNetConfig:
    base = BNNetConfig(kind="mlp", input_shape=data.input_shape, num_classes=data.num_classes, hidden=(64, 32))
    return replace(base, **overrides)


def run(data: Dataset, plan: Plan, seed: int, *, lr: float | None = None, batch_size: int | None = None,
        init_scale: float = 1.0, **overrides: Any) -> tuple[BNNet, dict[str, Any]]:  # fmt: skip
    """One training run and what the report reads of it. Another batch size trains for as many
    updates as the default batch size would (at least the plan's epochs): larger batches would
    otherwise get a fraction of the steps."""
    cfg = config(data, **overrides)
    size = batch_size or plan.batch_size
    epochs = plan.epochs[data.name]
    if size != plan.batch_size:
        steps = epochs * math.ceil(len(data.train) / plan.batch_size)
        epochs = max(epochs, math.ceil(steps / max(1, len(data.train) // size)))
    model, result = train(data, cfg, epochs=epochs, batch_size=size, lr=lr or plan.lr, seed=seed, progress=False,
                          init_scale=init_scale)  # fmt: skip
    history = result["history"]
    losses = [h["train_loss"] for h in history]
    reached = next((h["epoch"] for h in history if h["val_accuracy"] >= TARGET[data.name]), None)
    test = result["metrics"]["test_accuracy"]
    diverged = not all(math.isfinite(v) for v in losses) or test <= 1.0 / data.num_classes + 0.1
    return model, {"epochs_to_target": reached, "test_accuracy": test, "diverged": diverged}


def mean_sd(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Group runs by `keys` (the seeds vary inside a group): mean and spread of each measure."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    rows = []
    for key, group in groups.items():
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        row["seeds"] = len(group)
        row["test_accuracy"], row["test_accuracy_sd"] = mean_sd(r["test_accuracy"] for r in group)
        reached = [r["epochs_to_target"] for r in group]
        row["reached_target"] = sum(x is not None for x in reached)
        row["epochs_to_target"], _ = mean_sd(reached)
        row["diverged"] = sum(bool(r["diverged"]) for r in group)
        for extra in ("batch_mean_gap_sd", "batch_var_log_ratio", "mean_gap_sd_max", "var_ratio_max",
                      "accuracy_moving", "accuracy_exact"):  # fmt: skip
            if extra in group[0]:
                row[extra], row[f"{extra}_sd"] = mean_sd(r[extra] for r in group)
        rows.append(row)
    return rows


@torch.no_grad()
def batch_statistics_gap(model: BNNet, split: Split, batch_size: int, seed: int) -> tuple[float, float]:
    """How far mini-batch statistics stray from the running ones, on the trained model: the mean
    over BN layers, channels and batches of |batch mean - running mean| / running SD, and of
    |log(batch var / running var)|."""
    probe = copy.deepcopy(model).train()  # train mode: each batch is normalised with its own statistics
    layers = probe.bn_layers()
    running = {n: (bn.running_mean.clone(), bn.running_var.clone(), bn.eps) for n, bn in layers}  # type: ignore[union-attr]
    gaps: list[float] = []
    ratios: list[float] = []

    def hook(name: str) -> Callable[..., None]:
        def f(_m: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            v = args[0].double()
            mean, var, eps = running[name]
            gaps.append(float(((v.mean(0) - mean.double()).abs() / torch.sqrt(var.double() + eps)).mean()))
            ratios.append(float(torch.log((v.var(0) + eps) / (var.double() + eps)).abs().mean()))

        return f

    handles = [bn.register_forward_pre_hook(hook(n)) for n, bn in layers]
    try:
        x = torch.from_numpy(split.x)
        for idx in batches(len(split), batch_size, torch.Generator().manual_seed(seed)):
            if len(idx) > 1:
                probe(x[idx])
    finally:
        for h in handles:
            h.remove()
    return statistics.fmean(gaps), statistics.fmean(ratios)


# ------------------------------------------------------------------ the experiments


def plain_job(d: Dataset, plan: Plan, seed: int, labels: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return {"dataset": d.name, "seed": seed, **labels, **run(d, plan, seed, **kwargs)[1]}


def experiments(plan: Plan, datasets: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    jobs: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    for name in datasets:
        d = flat(load_dataset(name))
        for seed in plan.seeds:
            for bn in (True, False):
                for lr in plan.lrs:
                    jobs.append(("learning_rate", partial(plain_job, d, plan, seed, {"lr": lr, "bn": bn}, lr=lr,
                                                          hidden_bn=bn)))  # fmt: skip
                for scale in plan.init_scales:
                    jobs.append(("init_scale", partial(plain_job, d, plan, seed, {"init_scale": scale, "bn": bn},
                                                       init_scale=scale, hidden_bn=bn)))  # fmt: skip
            for placement in ("before", "after"):
                jobs.append(("placement", partial(plain_job, d, plan, seed, {"placement": placement},
                                                  placement=placement)))  # fmt: skip
            for size in plan.batch_sizes:
                jobs.append(("batch_size", partial(batch_job, d, plan, seed, size)))
            jobs.append(("moving_vs_exact", partial(exact_job, d, plan, seed)))
    out: dict[str, list[dict[str, Any]]] = {}
    for experiment, job in tqdm(jobs, desc="report", unit="run"):
        out.setdefault(experiment, []).append(job())
    return out


def batch_job(d: Dataset, plan: Plan, seed: int, size: int) -> dict[str, Any]:
    model, measures = run(d, plan, seed, batch_size=size)
    gap, ratio = batch_statistics_gap(model, d.train, size, seed)
    return {"dataset": d.name, "seed": seed, "batch_size": size, **measures,
            "batch_mean_gap_sd": gap, "batch_var_log_ratio": ratio}  # fmt: skip


def exact_job(d: Dataset, plan: Plan, seed: int) -> dict[str, Any]:
    model, measures = run(d, plan, seed)
    moving = evaluate(model, d.test)["accuracy"]
    layers = recalibrate(model, d.train.x)
    hidden = [r for r in layers if r["name"] != "input_bn"] or layers
    return {"dataset": d.name, "seed": seed, **measures, "accuracy_moving": moving,
            "accuracy_exact": evaluate(model, d.test)["accuracy"],
            "mean_gap_sd_max": max(r["mean_gap_sd_max"] for r in hidden),
            "var_ratio_max": max(max(r["var_ratio_max"], 1 / r["var_ratio_min"]) for r in hidden)}  # fmt: skip


# ------------------------------------------------------------------ the report


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> list[str]:
    out = ["| " + " | ".join(title for _, title in columns) + " |", "|" + " --- |" * len(columns)]
    for r in rows:
        cells = []
        for key, _ in columns:
            value = _f(r.get(key))
            if f"{key}_sd" in r and r.get(f"{key}_sd") is not None:
                value += f" ± {_f(r[f'{key}_sd'], 2)}"
            cells.append(value)
        out.append("| " + " | ".join(cells) + " |")
    return out


def conclusions(s: dict[str, list[dict[str, Any]]], plan: Plan) -> dict[str, str]:
    """What held and what did not, in a sentence each, from the numbers alone."""
    out = {}
    lr = s["learning_rate"]

    def by(rows: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
        return [r for r in rows if all(r[k] == v for k, v in match.items())]

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        xs = [r[key] for r in rows if r.get(key) is not None]
        return statistics.fmean(xs) if xs else math.nan

    def verdict(flags: list[bool]) -> str:
        if flags and all(flags):
            return "held"
        if flags and not any(flags):
            return "did not hold"
        return "mixed"

    faster, wider, diverged = [], [], []
    v_fast: list[bool] = []
    v_wide: list[bool] = []
    for name in DATASETS:
        with_bn, without = by(lr, dataset=name, bn=True), by(lr, dataset=name, bn=False)
        if not with_bn:
            continue
        common = [r["lr"] for r in with_bn if r["reached_target"] == r["seeds"]
                  and any(o["lr"] == r["lr"] and o["reached_target"] == o["seeds"] for o in without)]  # fmt: skip
        e_bn = mean([r for r in with_bn if r["lr"] in common], "epochs_to_target")
        e_no = mean([r for r in without if r["lr"] in common], "epochs_to_target")
        if common:
            v_fast.append(e_bn < e_no)
        faster.append(
            f"{name}: {e_bn:.1f} vs {e_no:.1f} epochs to {TARGET[name]:.0%} validation accuracy "
            f"at the learning rates both reach it"
            if common
            else f"{name}: no common learning rate"
        )
        good_bn = [r["lr"] for r in with_bn if (r["test_accuracy"] or 0) >= TARGET[name] - 0.02]
        good_no = [r["lr"] for r in without if (r["test_accuracy"] or 0) >= TARGET[name] - 0.02]
        v_wide.append(len(good_bn) > len(good_no))
        wider.append(f"{name}: good test accuracy at {len(good_bn)} of {len(with_bn)} learning rates with BN, "
                     f"{len(good_no)} without")  # fmt: skip
        diverged.append(f"{name}: {sum(r['diverged'] for r in with_bn)} diverged runs with BN, "
                        f"{sum(r['diverged'] for r in without)} without")  # fmt: skip
    out["faster convergence"] = f"{verdict(v_fast)}: " + "; ".join(faster) + "."
    out["higher learning rates"] = f"{verdict(v_wide)}: " + "; ".join(wider) + "; " + "; ".join(diverged) + "."

    init = s["init_scale"]
    spread = []
    v_init: list[bool] = []
    for name in DATASETS:
        ranges = {}
        for bn in (True, False):
            accs = [r["test_accuracy"] or 0.0 for r in by(init, dataset=name, bn=bn)]
            ranges[bn] = max(accs) - min(accs) if accs else math.nan
            if accs:
                spread.append(
                    f"{name} {'with' if bn else 'without'} BN: test accuracy {min(accs):.3f} to "
                    f"{max(accs):.3f} across scales {plan.init_scales[0]:g}x to {plan.init_scales[-1]:g}x"
                )
        if all(math.isfinite(v) for v in ranges.values()):
            v_init.append(ranges[True] < ranges[False])
    out["less sensitive to initialisation"] = f"{verdict(v_init)}: " + "; ".join(spread) + "."

    place = s["placement"]
    parts = []
    same: list[bool] = []
    for name in DATASETS:
        placed = {r["placement"]: r for r in by(place, dataset=name)}
        if placed:
            b, a = placed["before"], placed["after"]
            tolerance = max(b["test_accuracy_sd"], a["test_accuracy_sd"], 0.01)
            same.append(abs(b["test_accuracy"] - a["test_accuracy"]) <= tolerance)
            parts.append(f"{name}: before {b['test_accuracy']:.3f} ± {b['test_accuracy_sd']:.3f}, after "
                         f"{a['test_accuracy']:.3f} ± {a['test_accuracy_sd']:.3f}")  # fmt: skip
    tie = "no difference beyond the seeds' spread" if same and all(same) else "a difference on some data"
    out["placement before or after the activation"] = f"{tie}: " + "; ".join(parts) + "."

    sizes = s["batch_size"]
    parts = []
    v_noise: list[bool] = []
    for name in DATASETS:
        rows = sorted(by(sizes, dataset=name), key=lambda r: r["batch_size"])
        if rows:
            v_noise.append(rows[0]["batch_mean_gap_sd"] > rows[-1]["batch_mean_gap_sd"])
            parts.append(
                f"{name}: batch means stray {rows[0]['batch_mean_gap_sd']:.3f} running SDs at batch "
                f"{rows[0]['batch_size']} and {rows[-1]['batch_mean_gap_sd']:.3f} at {rows[-1]['batch_size']}"
                f" (test accuracy {rows[0]['test_accuracy']:.3f} and {rows[-1]['test_accuracy']:.3f})"
            )
    out["small batches make the statistics noisy"] = f"{verdict(v_noise)}: " + "; ".join(parts) + "."

    exact = s["moving_vs_exact"]
    parts = []
    v_proxy: list[bool] = []
    for name in DATASETS:
        rows = by(exact, dataset=name)
        if rows:
            r = rows[0]
            v_proxy.append(r["mean_gap_sd_max"] < 0.25 and abs(r["accuracy_moving"] - r["accuracy_exact"]) <= 0.01)
            parts.append(
                f"{name}: the moving means are at most {r['mean_gap_sd_max']:.3g} SDs from the exact "
                f"ones (variances within a factor {r['var_ratio_max']:.3g}); test accuracy "
                f"{r['accuracy_moving']:.3f} with them, {r['accuracy_exact']:.3f} with the exact statistics"
            )
    out["the moving averages are a good proxy"] = f"{verdict(v_proxy)}: " + "; ".join(parts) + "."
    return out


def plots(s: dict[str, list[dict[str, Any]]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)

    for experiment, key, xlabel, log in (("learning_rate", "lr", "learning rate (Adam)", True),
                                         ("init_scale", "init_scale", "initial weight scale", True)):  # fmt: skip
        fig, axes = plt.subplots(1, len(DATASETS), figsize=(10, 3.6), squeeze=False)
        for ax, name in zip(axes[0], DATASETS, strict=True):
            for bn, colour in ((True, "tab:blue"), (False, "tab:orange")):
                rows = sorted((r for r in s[experiment] if r["dataset"] == name and r["bn"] == bn),
                              key=lambda r: r[key])  # fmt: skip
                if rows:
                    ax.errorbar([r[key] for r in rows], [r["test_accuracy"] or 0 for r in rows],
                                yerr=[r["test_accuracy_sd"] or 0 for r in rows], marker="o", capsize=3,
                                color=colour, label="with BN" if bn else "without BN (input BN kept)")  # fmt: skip
            ax.set(title=name, xlabel=xlabel, ylabel="test accuracy", ylim=(0, 1.02))
            if log:
                ax.set_xscale("log")
            ax.legend(fontsize=8)
        save(fig, f"{experiment}.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, marker in zip(DATASETS, ("o", "s"), strict=True):
        rows = sorted((r for r in s["batch_size"] if r["dataset"] == name), key=lambda r: r["batch_size"])
        if rows:
            sizes = [r["batch_size"] for r in rows]
            axes[0].errorbar(sizes, [r["batch_mean_gap_sd"] for r in rows],
                             yerr=[r["batch_mean_gap_sd_sd"] for r in rows], marker=marker, capsize=3,
                             label=name)  # fmt: skip
            axes[1].errorbar(sizes, [r["test_accuracy"] for r in rows], yerr=[r["test_accuracy_sd"] for r in rows],
                             marker=marker, capsize=3, label=name)  # fmt: skip
    axes[0].set(xscale="log", xlabel="batch size", ylabel="|batch mean - running mean| / running SD")
    axes[1].set(xscale="log", xlabel="batch size", ylabel="test accuracy", ylim=(0, 1.02))
    for ax in axes:
        ax.legend(fontsize=8)
    save(fig, "batch_size.png")
    return files


def write(raw: dict[str, list[dict[str, Any]]], plan: Plan, out: Path, seconds: float, quick: bool) -> str:
    out.mkdir(parents=True, exist_ok=True)
    s = {
        "learning_rate": summarise(raw["learning_rate"], ("dataset", "bn", "lr")),
        "init_scale": summarise(raw["init_scale"], ("dataset", "bn", "init_scale")),
        "placement": summarise(raw["placement"], ("dataset", "placement")),
        "batch_size": summarise(raw["batch_size"], ("dataset", "batch_size")),
        "moving_vs_exact": summarise(raw["moving_vs_exact"], ("dataset",)),
    }
    found = conclusions(s, plan)
    images = plots(s, out)
    acc = [("test_accuracy", "test accuracy"), ("epochs_to_target", "epochs to target"),
           ("reached_target", "runs reaching it"), ("diverged", "diverged"), ("seeds", "seeds")]  # fmt: skip
    lines = [
        f"# What Batch Norm does here: measured{' (quick run)' if quick else ''}",
        "",
        f"`python -m model.report{' --quick' if quick else ''}`, {time.strftime('%Y-%m-%d')}, {seconds:.0f} s. "
        f"Seeds {list(plan.seeds)}; epochs {plan.epochs}; Adam, batch {plan.batch_size}, learning rate {plan.lr:g} "
        "unless varied; targets: " + ", ".join(f"{k} {v:.0%} validation accuracy" for k, v in TARGET.items()) + ". "
        "Each cell is the mean ± standard deviation over the seeds. Digits runs as 64 features through the same "
        'MLP; "without BN" removes the hidden blocks\' BN and keeps the input BN (the features are still '
        "standardised).",
        "",
        "## Conclusions",
        "",
        *[f"- **{claim}**: {text}" for claim, text in found.items()],
        "",
        "## 1. With and without BN, across learning rates",
        "",
        "![learning rate](learning_rate.png)",
        "",
        *table(s["learning_rate"], [("dataset", "dataset"), ("bn", "BN"), ("lr", "learning rate"), *acc]),
        "",
        "## 2. Initial weight scale",
        "",
        "![init scale](init_scale.png)",
        "",
        *table(s["init_scale"], [("dataset", "dataset"), ("bn", "BN"), ("init_scale", "scale"), *acc]),
        "",
        "## 3. BN before or after the ReLU",
        "",
        *table(s["placement"], [("dataset", "dataset"), ("placement", "placement"), *acc]),
        "",
        "## 4. Batch size",
        "",
        "![batch size](batch_size.png)",
        "",
        "Batch statistics against the running ones on the trained network, over the training split in batches of "
        "that size, over every BN layer and channel: the mean of |batch mean - running mean| / running SD, and "
        "of |log(batch var / running var)|. (A hidden layer right after a Linear fed by a BN'd batch has a batch "
        "mean equal to that Linear's bias whatever the batch: in train mode the BN before it centres every "
        "batch; so the input layer and the variances carry most of the noise.) Each batch size trains for as "
        "many updates as batch 32 does.",
        "",
        *table(
            s["batch_size"],
            [
                ("dataset", "dataset"),
                ("batch_size", "batch"),
                ("batch_mean_gap_sd", "mean gap (SD)"),
                ("batch_var_log_ratio", "|log var ratio|"),
                ("test_accuracy", "test accuracy"),
                ("seeds", "seeds"),
            ],
        ),
        "",
        "## 5. Moving averages against the exact statistics",
        "",
        "`--recalibrate-bn` on the default settings: the largest gap between a hidden layer's moving mean and the "
        "exact mean of its inputs over the training split (in exact SDs), the largest variance ratio (either "
        "way), and the test accuracy with each.",
        "",
        *table(
            s["moving_vs_exact"],
            [
                ("dataset", "dataset"),
                ("mean_gap_sd_max", "largest mean gap (SD)"),
                ("var_ratio_max", "largest variance ratio"),
                ("accuracy_moving", "accuracy, moving"),
                ("accuracy_exact", "accuracy, exact"),
                ("seeds", "seeds"),
            ],
        ),
        "",
    ]
    md = "\n".join(lines)
    (out / "report.md").write_text(md)
    (out / "report.json").write_text(json.dumps({"plan": plan.__dict__, "summary": s, "conclusions": found,
                                                 "runs": raw, "images": images, "seconds": seconds}, indent=1,
                                                default=str))  # fmt: skip
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="directory for report.md, report.json and the plots")
    p.add_argument("--quick", action="store_true", help="fewer seeds, settings and epochs: under a minute")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # tiny networks: threads cost more than they give
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    raw = experiments(plan, DATASETS)
    write(raw, plan, args.out, time.perf_counter() - started, args.quick)
    print(f"wrote {args.out / 'report.md'} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
