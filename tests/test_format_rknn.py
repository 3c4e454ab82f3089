"""RKNN wrapper behaviour that does not need a full build: crashes and missing toolkits."""
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from stages.core.errors import BuildError
from stages.formats import rknn


def fake_layout(tmp_path: Path) -> SimpleNamespace:
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "rknn_config.json").write_text(json.dumps({
        "toolkit": 2, "platform": "rk3588", "mean": [[0, 0, 0]], "std": [[1, 1, 1]], "quantized_dtype": "w8a8",
        "quantized_algorithm": "normal", "optimization_level": 3, "onnx": "model.onnx", "dataset": "dataset.txt"}))
    return SimpleNamespace(prepared_dir=prepared)


def cfg_for(fmt: str, **rk) -> SimpleNamespace:
    defaults = dict(platform="rk3588", quantized_dtype="w8a8", quantized_algorithm="normal", toolkit_python=None)
    return SimpleNamespace(target=SimpleNamespace(name="t", format=fmt, rknn=SimpleNamespace(**{**defaults, **rk})))


def test_a_toolkit_crash_becomes_an_error_naming_the_signal(tmp_path, monkeypatch):
    # A stand-in interpreter that dies the way rknn's compiler does on rk2118 (SIGABRT).
    crasher = tmp_path / "python"
    crasher.write_text("#!/bin/sh\nkill -ABRT $$\n")
    crasher.chmod(crasher.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("RKNN_TOOLKIT2_PYTHON", str(crasher))
    with pytest.raises(BuildError, match="crashed with SIGABRT while building for rk3588"):
        rknn.run_worker(cfg_for("rknn"), fake_layout(tmp_path), tmp_path / "model.rknn")


def test_toolkit_v1_missing_says_what_to_install_and_where_to_point(monkeypatch):
    monkeypatch.delenv("RKNN_TOOLKIT1_PYTHON", raising=False)
    reason = rknn._unavailable(cfg_for("rknn_v1", platform="rk1808"))
    assert "rknn-toolkit 1.x" in reason and "RKNN_TOOLKIT1_PYTHON" in reason and "toolkit_python" in reason


def test_toolkit_v1_is_used_when_configured(tmp_path, monkeypatch):
    python = tmp_path / "python"
    python.write_text("")
    monkeypatch.setenv("RKNN_TOOLKIT1_PYTHON", str(python))
    assert rknn._unavailable(cfg_for("rknn_v1", platform="rk1808")) is None


@pytest.mark.skipif(not (rknn.RKNN_VENV / "bin" / "python").exists(),
                    reason=".venv-rknn is missing: run `python3 -m stages.bootstrap setup` to create it")
def test_an_invalid_platform_is_reported_from_the_real_toolkit(tmp_path, monkeypatch):
    monkeypatch.delenv("RKNN_TOOLKIT2_PYTHON", raising=False)
    layout = fake_layout(tmp_path)
    config = json.loads((layout.prepared_dir / "rknn_config.json").read_text())
    (layout.prepared_dir / "rknn_config.json").write_text(json.dumps({**config, "platform": "rk1808"}))
    with pytest.raises(BuildError, match="config rejected the target"):
        rknn.run_worker(cfg_for("rknn", platform="rk1808"), layout, tmp_path / "model.rknn")
    assert os.environ.get("RKNN_TOOLKIT2_PYTHON") is None


def test_the_quant_scheme_picks_the_toolkit_algorithm_and_the_target_gives_the_default():
    from stages.core.cli import load

    for quant, expected in (("rknn_int8", "normal"), ("rknn_int8_mmse", "mmse")):
        cfg = load(["model=mobilenet_v2", "target=rk3588", f"quant={quant}"])
        assert rknn.algorithm(cfg) == expected, quant
    assert load(["target=rk3588", "quant=rknn_int8_mmse"]).quant.calibration.num_samples == 16
