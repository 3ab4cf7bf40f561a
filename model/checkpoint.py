"""The checkpoint: one self-describing file from which the model rebuilds itself.

It holds the config, the full state_dict (running statistics and
`num_batches_tracked` included), the dataset's name, split seed, feature and
class names, the test metrics and the library versions. Only plain containers
and tensors go in, so it loads with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch

from model.network import BNNet, BNNetConfig

FORMAT = "bnserve.checkpoint/1"


class CheckpointError(ValueError):
    """The checkpoint cannot be read or does not describe a BNNet."""


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def save_checkpoint(path: Path, model: BNNet, **sections: Any) -> None:
    """Write `model` with its config and the given sections (dataset, metrics, training)."""
    payload = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "versions": library_versions(),
        **sections,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def load_checkpoint(path: Path) -> tuple[BNNet, dict[str, Any]]:
    """Rebuild the model from the file alone; the model is returned in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (train one with `python -m model.train`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {first})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a bnserve checkpoint (expected format {FORMAT!r})")
    try:
        config = BNNetConfig.from_dict(dict(ckpt["config"]))
        model = BNNet(config)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid config: {e}") from e
    state = ckpt["state_dict"]
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k} has shape {tuple(state[k].shape)}, the config needs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"{path}: the state_dict does not match its config: {shown}")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, ckpt
