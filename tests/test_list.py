"""`python -m stages.list`: the catalog of models, targets, schemes and rewrites, read from conf/."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from stages.list import default_quant, print_tables

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def catalog() -> dict:
    # The toolkit locations come from the checkout alone, not from this shell's overrides.
    env = {k: v for k, v in os.environ.items() if k not in ("RKNN_TOOLKIT2_PYTHON", "RKNN_TOOLKIT1_PYTHON")}
    proc = subprocess.run([sys.executable, "-m", "stages.list", "--json"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {row["name"]: row for row in rows}


def test_lists_models_targets_schemes_and_rewrites(catalog: dict) -> None:
    models, targets = by_name(catalog["models"]), by_name(catalog["targets"])
    assert models["mobilenet_v2"]["training"] == "pretrained (package)"
    assert models["fashion_cnn_npu"]["training"].startswith("trained here")
    assert targets["rpi4"] == {"name": "rpi4", "board": "Raspberry Pi 4 Model B", "format": "onnx",
                               "quant": "int8_static", "available": True, "unavailable_reason": None}
    assert by_name(catalog["quant"])["int8_static"]["scheme"] == "ort_static"
    fold = by_name(catalog["rewrites"])["fold_batchnorm"]
    assert fold["kind"] == "graph" and fold["removes"] == ["BatchNormalization"]
    # The composed default scheme is the one each target's defaults list names.
    for name, target in targets.items():
        named = default_quant(yaml.safe_load((ROOT / "conf" / "target" / f"{name}.yaml").read_text()))
        assert target["quant"] == (named or "fp32"), name


def test_toolchain_availability_follows_this_machine(catalog: dict) -> None:
    targets = by_name(catalog["targets"])
    rknn_here = (ROOT / ".venv-rknn" / "bin" / "python").exists()
    for name in ("rk3588", "rk3566", "rv1106"):
        assert targets[name]["available"] is rknn_here, targets[name]
        assert (targets[name]["unavailable_reason"] is None) is rknn_here
    assert targets["jetson_orin"]["available"] is (find_spec("tensorrt") is not None)
    if not targets["jetson_orin"]["available"]:
        assert "TensorRT" in targets["jetson_orin"]["unavailable_reason"]


def test_tables(catalog: dict, capsys: pytest.CaptureFixture[str]) -> None:
    print_tables(catalog)
    out = capsys.readouterr().out
    for expected in ("models (conf/model)", "targets (conf/target)", "quant schemes", "rewrites", "mobilenet_v2",
                     "jetson_orin", "rknn_int8", "fold_batchnorm"):
        assert expected in out, expected
