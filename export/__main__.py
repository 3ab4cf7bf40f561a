"""python -m export CHECKPOINT --out FILE: fold every BN layer, export to ONNX, verify, write."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from export.artifact import DEFAULT_TOLERANCE, ExportError, build_artifact
from export.fold import FoldError
from model.checkpoint import CheckpointError, load_checkpoint

logger = logging.getLogger("export")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Fold each BatchNorm layer's running statistics into frozen weights and write ONE "
        "self-describing ONNX file (graph + model card + every BN layer's state). The file is written only "
        "if onnxruntime on it matches the torch model in eval mode on held-out and adversarial inputs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint.pt written by `python -m model.train`")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file (default: model.onnx beside the checkpoint, model.reference.onnx with --no-fold)",
    )
    p.add_argument(
        "--no-fold",
        action="store_true",
        help="write the reference graph that keeps its BatchNormalization nodes "
        "(for parity tests and benchmarks; the service refuses it)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest accepted parity error, on logits (|a-b|/(1+|b|)) and probabilities (absolute)",
    )
    p.add_argument("--name", default=None, help="model name in the card (default: bnnet-DATASET-PLACEMENT)")
    p.add_argument(
        "--no-drift",
        action="store_true",
        help="leave out the covariate-shift monitor's graph outputs and calibration "
        "(the service then refuses drift=true and has no /drift window)",
    )
    p.add_argument(
        "--calibrate-on",
        choices=("held_out", "validation"),
        default="held_out",
        help="split(s) on which the drift score is calibrated: validation and test together, or validation "
        "only (the card then reports the flag rate on the unseen test split)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or args.checkpoint.with_name("model.reference.onnx" if args.no_fold else "model.onnx")
    try:
        model, ckpt = load_checkpoint(args.checkpoint)
        artifact = build_artifact(
            model,
            ckpt,
            out,
            fold=not args.no_fold,
            tolerance=args.tolerance,
            name=args.name,
            calibrate_on=args.calibrate_on,
            drift=not args.no_drift,
        )
    except (CheckpointError, FoldError, ExportError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 1
    parity = artifact.card["parity"]
    kind = "reference (BatchNormalization kept)" if args.no_fold else "folded"
    for layer in artifact.bn_layers if not args.no_fold else []:
        logger.info("%s (%s): %s -> %s", layer["name"], layer["placement"], layer["fold"], layer["folded_into"])
    print(
        f"wrote {out} ({kind}): version {artifact.version}, ops {artifact.card['graph_ops']}, "
        f"parity {parity['max_logit_error']:.2e} logits / {parity['max_probability_error']:.2e} probabilities "
        f"(tolerance {parity['tolerance']:g})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
