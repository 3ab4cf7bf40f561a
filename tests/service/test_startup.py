"""A missing or unservable model stops start-up with one clear line; importing the service never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app
from service.errors import ModelLoadError
from service.runtime import ModelRuntime


def strip_card(src: Path, dst: Path) -> Path:
    proto = onnx.load(str(src))
    del proto.metadata_props[:]
    onnx.save(proto, str(dst))
    return dst


def bad_models(tmp: Path, tabular) -> dict[str, tuple[Path, str]]:
    (tmp / "junk.onnx").write_bytes(b"\x00\x01 this is not a model \xff" * 10)
    (tmp / "text.onnx").write_text("hello")
    truncated = tabular.folded.read_bytes()
    (tmp / "truncated.onnx").write_bytes(truncated[: len(truncated) // 2])
    return {
        "missing": (tmp / "nope.onnx", "no such model file"),
        "not-onnx": (tmp / "junk.onnx", "not an ONNX file"),
        "text": (tmp / "text.onnx", "not an ONNX file"),
        "truncated": (tmp / "truncated.onnx", "not an ONNX file"),
        "no-card": (strip_card(tabular.folded, tmp / "nocard.onnx"), "has no bnserve model card"),
        "reference-graph": (tabular.reference, "BatchNormalization node"),
    }


@pytest.mark.parametrize("kind", ["missing", "not-onnx", "text", "truncated", "no-card", "reference-graph"])
def test_unservable_model_is_refused_with_a_clear_message(kind: str, tabular, tmp_path: Path) -> None:
    path, message = bad_models(tmp_path, tabular)[kind]
    with pytest.raises(ModelLoadError, match=message):
        ModelRuntime.load(path)
    with pytest.raises(ModelLoadError, match=message), TestClient(create_app(Settings(model_path=path))):
        pass


@pytest.mark.parametrize("kind", ["missing", "not-onnx", "no-card", "reference-graph"])
def test_cli_exits_nonzero_with_one_line_and_no_traceback(kind: str, tabular, tmp_path: Path) -> None:
    path, message = bad_models(tmp_path, tabular)[kind]
    proc = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnserve: cannot start:") and message in lines[0]
    assert "Traceback" not in proc.stderr


def test_invalid_setting_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service", "--port", "99999"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2 and proc.stderr.startswith("bnserve: invalid setting: port")


def test_settings_come_from_bnserve_environment_variables(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BNSERVE_MODEL_PATH", str(tmp_path / "m.onnx"))
    monkeypatch.setenv("BNSERVE_PORT", "9123")
    monkeypatch.setenv("BNSERVE_MAX_BATCH_SIZE", "7")
    s = Settings()
    assert (s.model_path, s.port, s.max_batch_size, s.host) == (tmp_path / "m.onnx", 9123, 7, "127.0.0.1")


def test_service_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service", "--help"], capture_output=True, text=True, check=True, timeout=60
    )
    assert "--model" in proc.stdout and "--host" in proc.stdout and "--port" in proc.stdout


def test_importing_the_service_never_imports_torch() -> None:
    code = (
        "import sys, service, service.__main__, service.app, service.runtime\n"
        "from service import create_app, Settings\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'sklearn', 'model', 'export'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
