"""Train a BNNet on a bundled dataset and write a self-describing checkpoint.

python -m model.train --dataset breast_cancer --placement before --out artifacts
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from model import recalibrate as recalibration
from model.checkpoint import save_checkpoint
from model.data import DATASETS, Dataset, Split, load_dataset
from model.network import PLACEMENTS, BNNet, BNNetConfig

logger = logging.getLogger(__name__)


def config_for(data: Dataset, placement: str, bn_momentum: float | None, hidden: tuple[int, ...] | None) -> BNNetConfig:
    kind = "cnn" if data.kind == "image" else "mlp"
    default_hidden = (64,) if kind == "cnn" else (64, 32)
    return BNNetConfig(
        kind=kind,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        hidden=hidden or default_hidden,
        placement=placement,
        bn_momentum=bn_momentum,
    )


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches. A trailing batch of one sample joins the one before it:
    BatchNorm cannot compute a variance from one value per channel."""
    order = torch.randperm(n, generator=generator)
    chunks = list(order.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        last = chunks.pop()
        chunks[-1] = torch.cat([chunks[-1], last])
    return chunks


def train_one_epoch(
    model: BNNet, split: Split, optimizer: torch.optim.Optimizer, batch_size: int, generator: torch.Generator
) -> float:
    model.train()
    x, y = torch.from_numpy(split.x), torch.from_numpy(split.y)
    loss_fn = nn.CrossEntropyLoss()
    total, count = 0.0, 0
    for idx in batches(len(split), batch_size, generator):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: BNNet, split: Split) -> dict[str, float]:
    """Loss and accuracy in eval mode (running statistics)."""
    model.eval()
    logits = model(torch.from_numpy(split.x))
    y = torch.from_numpy(split.y)
    return {
        "loss": float(nn.functional.cross_entropy(logits, y)),
        "accuracy": float((logits.argmax(1) == y).float().mean()),
    }


def train(
    data: Dataset,
    config: BNNetConfig,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool = True,
    max_batches: int | None = None,
    init_scale: float = 1.0,
) -> tuple[BNNet, dict[str, Any]]:
    """`init_scale` multiplies every Linear/Conv weight at initialisation (the report's experiment)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = BNNet(config)
    if init_scale != 1.0:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    m.weight.mul_(init_scale)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    train_split = data.train
    if max_batches is not None:  # --dry-run: a few batches only
        keep = min(len(train_split), max_batches * batch_size)
        train_split = Split(train_split.x[:keep], train_split.y[:keep])
    bar = tqdm(range(epochs), desc=f"train {data.name}/{config.placement}", unit="epoch", disable=not progress)
    history = []
    for epoch in bar:
        loss = train_one_epoch(model, train_split, optimizer, batch_size, generator)
        val = evaluate(model, data.val)
        history.append({"epoch": epoch + 1, "train_loss": loss, "val_accuracy": val["accuracy"]})
        bar.set_postfix(loss=f"{loss:.4f}", val_acc=f"{val['accuracy']:.3f}")
    model.eval()
    test = evaluate(model, data.test)
    metrics = {
        "epochs": epochs,
        "train_loss": history[-1]["train_loss"] if history else None,
        "val_accuracy": history[-1]["val_accuracy"] if history else None,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
    }
    return model, {"metrics": metrics, "history": history}


def recalibrate_and_measure(model: BNNet, data: Dataset, result: dict[str, Any]) -> dict[str, Any]:
    """--recalibrate-bn: exact statistics in place of the moving averages, and the accuracy of both."""
    before = {split: evaluate(model, getattr(data, split))["accuracy"] for split in ("val", "test")}
    layers = recalibration.recalibrate(model, data.train.x)
    after = {split: evaluate(model, getattr(data, split))["accuracy"] for split in ("val", "test")}
    result["metrics"].update({"val_accuracy": after["val"], "test_accuracy": after["test"],
                              "test_loss": evaluate(model, data.test)["loss"]})  # fmt: skip
    for r in recalibration.summary(layers):
        logger.info("recalibrated %s: moving mean off by up to %.3g exact SDs, variance ratio %.3g..%.3g",
                    r["name"], r["mean_gap_sd_max"], r["var_ratio_min"], r["var_ratio_max"])  # fmt: skip
    logger.info("accuracy with the moving averages val %.4f test %.4f; exact: val %.4f test %.4f",
                before["val"], before["test"], after["val"], after["test"])  # fmt: skip
    return {
        "method": recalibration.METHOD,
        "layers": layers,
        "accuracy": {"moving_averages": before, "exact": after},
    }


def _momentum(text: str) -> float | None:
    if text.lower() == "none":
        return None
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] or 'none', got {text}")
    return value


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths, got {text!r}")
    return widths


def _batch_size(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"must be at least 2 (BatchNorm needs two samples for a variance), got {value}"
        )
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m model.train",
        description="Train a BatchNorm network on a dataset bundled with scikit-learn "
        "and write DIR/checkpoint.pt (config, weights, running statistics, names, metrics).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default="breast_cancer",
        help="bundled dataset; digits (8x8 images) trains a CNN, the others an MLP",
    )
    p.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="before",
        help="put each hidden BatchNorm before the ReLU (Linear->BN->ReLU) or after it",
    )
    p.add_argument("--epochs", type=_positive_int, default=20, help="passes over the training split")
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=32,
        help="mini-batch size; a last batch of one sample joins the previous one",
    )
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument(
        "--bn-momentum",
        type=_momentum,
        default=0.1,
        help="BatchNorm momentum, PyTorch convention: running = (1-m)*running + m*batch; "
        "'none' for a cumulative average",
    )
    p.add_argument(
        "--hidden",
        type=_widths,
        default=None,
        help="comma-separated widths of the hidden Linear layers (default 64,32 for an MLP, 64 for the CNN)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the data split, the initial weights and the shuffling")
    p.add_argument("--out", type=Path, default=Path("artifacts"), help="directory for checkpoint.pt")
    p.add_argument("--dry-run", action="store_true", help="one epoch of two batches: a smoke test in seconds")
    p.add_argument(
        "--recalibrate-bn",
        action="store_true",
        help="after training, replace each BN layer's moving averages by the exact mean and variance of its "
        "inputs over the whole training split (both are kept in the checkpoint)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    data = load_dataset(args.dataset, seed=args.seed)
    config = config_for(data, args.placement, args.bn_momentum, args.hidden)
    epochs = 1 if args.dry_run else args.epochs
    model, result = train(
        data,
        config,
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=not args.no_progress,
        max_batches=2 if args.dry_run else None,
    )
    sections: dict[str, Any] = {}
    if args.recalibrate_bn:
        sections["bn_recalibration"] = recalibrate_and_measure(model, data, result)
    path = args.out / "checkpoint.pt"
    save_checkpoint(
        path,
        model,
        dataset={
            "name": data.name,
            "kind": data.kind,
            "split_seed": data.split_seed,
            "input_shape": list(data.input_shape),
            "feature_names": list(data.feature_names),
            "class_names": list(data.class_names),
            "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        },
        metrics=result["metrics"],
        history=result["history"],
        training={
            "epochs": epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "optimizer": "Adam",
            "seed": args.seed,
            "dry_run": args.dry_run,
            "recalibrate_bn": args.recalibrate_bn,
        },
        **sections,
    )
    m = result["metrics"]
    logger.info("trained %s/%s in %.1fs", data.name, config.placement, time.perf_counter() - started)
    print(f"wrote {path}: test accuracy {m['test_accuracy']:.4f} (val {m['val_accuracy']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
