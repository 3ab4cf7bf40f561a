import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint
from model.data import load_dataset
from model.network import BNNet, BNNetConfig
from model.train import batches, main


def test_cli_dry_run_writes_a_checkpoint(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "model.train", "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and (tmp_path / "checkpoint.pt").is_file()
    assert "epoch" in proc.stderr  # the progress bar


def test_help_explains_every_flag() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "model.train", "--help"], capture_output=True, text=True, check=True, timeout=120
    )
    for flag in ("--dataset", "--placement", "--epochs", "--batch-size", "--lr", "--bn-momentum", "--seed", "--out"):
        assert flag in proc.stdout


def test_checkpoint_describes_itself_and_loads_with_weights_only(tabular) -> None:
    ckpt = torch.load(tabular.checkpoint, weights_only=True)
    assert ckpt["dataset"]["name"] == "breast_cancer" and len(ckpt["dataset"]["feature_names"]) == 30
    assert ckpt["dataset"]["class_names"] == ["malignant", "benign"]
    assert {"test_accuracy", "val_accuracy", "epochs"} <= set(ckpt["metrics"])
    assert {"torch", "numpy", "scikit-learn", "python"} <= set(ckpt["versions"])
    assert "input_bn.num_batches_tracked" in ckpt["state_dict"] and "bn1.running_var" in ckpt["state_dict"]
    model, _ = load_checkpoint(tabular.checkpoint)
    assert not model.training and int(model.input_bn.num_batches_tracked) > 0


def test_same_seed_gives_the_same_checkpoint(tmp_path: Path) -> None:
    for run in ("a", "b", "c"):
        seed = "1" if run == "c" else "0"
        assert (
            main(["--dataset", "wine", "--epochs", "2", "--seed", seed, "--out", str(tmp_path / run), "--no-progress"])
            == 0
        )
    a, b, c = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True)["state_dict"] for r in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_last_batch_of_one_sample_joins_the_previous_batch() -> None:
    sizes = [len(b) for b in batches(65, 32, torch.Generator().manual_seed(0))]
    assert sizes == [32, 33]
    assert sorted(torch.cat(batches(65, 32, torch.Generator().manual_seed(0))).tolist()) == list(range(65))


def test_training_with_a_batch_size_that_leaves_one_sample_does_not_crash(tmp_path: Path) -> None:
    n_train = len(load_dataset("breast_cancer").train)
    assert main(["--epochs", "1", "--batch-size", str(n_train - 1), "--out", str(tmp_path), "--no-progress"]) == 0


def test_input_bn_running_stats_track_the_training_data(tmp_path: Path) -> None:
    # momentum=None: the running statistics are the cumulative average of the batch statistics.
    assert main(["--epochs", "3", "--bn-momentum", "none", "--out", str(tmp_path), "--no-progress"]) == 0
    model, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    x = load_dataset("breast_cancer").train.x
    assert model.input_bn.momentum is None
    np.testing.assert_allclose(model.input_bn.running_mean.numpy(), x.mean(0), rtol=0.02)  # last batch is smaller
    np.testing.assert_allclose(model.input_bn.running_var.numpy(), x.var(0, ddof=1), rtol=0.1)


def test_running_statistics_follow_pytorch_momentum_with_unbiased_variance() -> None:
    torch.manual_seed(0)
    net = BNNet(BNNetConfig(input_shape=(3,), hidden=(4,), bn_momentum=0.1)).train()
    x = torch.randn(16, 3) * 5 + 2
    net(x)
    expected_mean = 0.9 * torch.zeros(3) + 0.1 * x.mean(0)
    expected_var = 0.9 * torch.ones(3) + 0.1 * x.var(0, unbiased=True)
    torch.testing.assert_close(net.input_bn.running_mean, expected_mean)
    torch.testing.assert_close(net.input_bn.running_var, expected_var)


def test_default_model_reaches_095_test_accuracy(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--no-progress"]) == 0
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["metrics"]["test_accuracy"] >= 0.95


def test_a_checkpoint_that_does_not_match_its_config_is_refused(tabular, tmp_path: Path) -> None:
    ckpt = torch.load(tabular.checkpoint, weights_only=True)
    ckpt["config"]["hidden"] = [7, 3]
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_checkpoint(tmp_path / "bad.pt")


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
