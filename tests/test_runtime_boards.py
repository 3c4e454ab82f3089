"""What runs on the boards: the runtime parses with the oldest Python a board has (Debian 11: 3.9),
the RK1808 toolkit worker with toolkit v1's (3.6); the RKNN board backend feeds the layout the
manifest declares, by the same rule as the build's simulator."""
import ast
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from runtime import BackendUnavailable, load
from runtime.backends.rknn import data_format
from runtime.manifest import TensorSpec, seal_manifest, sha256_of


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "runtime").rglob("*.py")))
def test_runtime_parses_with_python_3_9(path):
    ast.parse((ROOT / path).read_text(), filename=path, feature_version=(3, 9))


def test_rknn_toolkit_worker_parses_with_python_3_6():
    path = ROOT / "stages/formats/workers/rknn_worker.py"
    tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 6))
    futures = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    assert not futures, "`from __future__ import annotations` is a SyntaxError on Python 3.6"


def test_rknn_data_format_is_the_manifests_layout():
    assert data_format(TensorSpec("x", (1, 224, 224, 3), "uint8", layout="NHWC")) == "nhwc"
    assert data_format(TensorSpec("x", (1, 3, 224, 224), "float32", layout="NCHW")) == "nchw"


def rknn_artifact(tmp_path: Path) -> Path:
    path = tmp_path / "model.rknn"
    path.write_bytes(b"not really an rknn model, the fake rknnlite does not read it")
    manifest = {"schema": 1, "format": "rknn", "artifact": path.name, "sha256": sha256_of(path), "model": "m",
                "target": "rk3588", "quant": "rknn_int8", "task": "classification",
                "inputs": [{"name": "input", "shape": [1, 8, 8, 3], "dtype": "uint8", "layout": "NHWC"}],
                "outputs": [{"name": "logits", "shape": [1, 4], "dtype": "float32"}],
                "config": {"target": {"rknn": {"platform": "rk3588"}}}}
    (tmp_path / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    return path


def test_rknn_board_backend_feeds_nhwc_uint8_as_nhwc(tmp_path, monkeypatch):
    calls = []

    class FakeRKNNLite:  # rknnlite.api.RKNNLite's calls as rknn-toolkit-lite2 2.5 documents them
        def load_rknn(self, path):
            calls.append(("load_rknn", path))
            return 0

        def init_runtime(self):
            return 0

        def inference(self, inputs, data_format):
            calls.append(("inference", [x.shape for x in inputs], [x.dtype for x in inputs], data_format))
            return [np.zeros((1, 4), np.float32)]

    api = types.ModuleType("rknnlite.api")
    api.RKNNLite = FakeRKNNLite
    monkeypatch.setitem(sys.modules, "rknnlite", types.ModuleType("rknnlite"))
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    session = load(rknn_artifact(tmp_path))
    assert session.backend.name == "rknnlite:rk3588"
    session.run(np.zeros((1, 8, 8, 3), np.uint8))
    assert calls[-1] == ("inference", [(1, 8, 8, 3)], [np.dtype(np.uint8)], "nhwc")


@pytest.mark.parametrize("returned, complaint", [
    ([np.zeros((1, 5), np.float32)], r"output 'logits' has 5 values .*declares logits: float32\[1, 4\]"),
    ([np.zeros((1, 4), np.float32)] * 2, r"returned 2 output\(s\); its manifest declares 1"),
])
def test_rknn_board_outputs_are_checked_against_the_manifest_when_they_first_come_back(tmp_path, monkeypatch,
                                                                                      returned, complaint):
    """rknn-toolkit-lite2 has no I/O query: the first inference's outputs are the check (count, and the
    element count of each fixed-shape output; an NPU may return another layout of the same tensor)."""
    from runtime.errors import RuntimeLoadError

    class FakeRKNNLite:
        def load_rknn(self, path):
            return 0

        def init_runtime(self):
            return 0

        def inference(self, inputs, data_format):
            return returned

    api = types.ModuleType("rknnlite.api")
    api.RKNNLite = FakeRKNNLite
    monkeypatch.setitem(sys.modules, "rknnlite", types.ModuleType("rknnlite"))
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    session = load(rknn_artifact(tmp_path))
    with pytest.raises(RuntimeLoadError, match=complaint):
        session.run(np.zeros((1, 8, 8, 3), np.uint8))


def test_rknn_on_a_pc_says_where_it_runs_and_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rknnlite", None)  # not importable, as on any PC
    with pytest.raises(BackendUnavailable, match=r"runs on that board's NPU.*pip install rknn-toolkit-lite2==2\.5\.0"):
        load(rknn_artifact(tmp_path))


def test_the_runtime_wheel_holds_the_runtime_and_nothing_of_the_build(tmp_path):
    """`pip install ./runtime[...]` on a board: numpy and Pillow only, backends as extras, no stages/."""
    import shutil
    import subprocess
    import tomllib
    import zipfile

    source = tmp_path / "runtime"
    shutil.copytree(ROOT / "runtime", source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("edgebuild_runtime-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"runtime", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "runtime/backends/rknn.py" in names and not any(n.startswith("stages") for n in names)
    meta = tomllib.loads((ROOT / "runtime/pyproject.toml").read_text())["project"]
    assert meta["requires-python"] == ">=3.9" and [d.split(">=")[0] for d in meta["dependencies"]] == ["numpy", "pillow"]
    assert {"onnx", "rknn", "torch", "apps"} <= set(meta["optional-dependencies"])


def test_verify_reports_what_the_non_finite_input_check_costs():
    """verify times the run and, for float inputs, the one np.isfinite pass that refuses NaN and Inf,
    as a share of the run (issue: the check is on by default; say what it costs)."""
    from runtime.verify import latency

    calls = []
    session = types.SimpleNamespace(run=lambda x: calls.append(x) or sum(range(20000)))
    timed = latency(session, np.zeros((1, 3, 224, 224), np.float32), warmup=1, runs=20)
    assert len(calls) == 21 and timed["finite_check_ms"] > 0
    assert timed["finite_check_share"] == pytest.approx(timed["finite_check_ms"] / timed["p50"])
    assert latency(session, np.zeros((1, 3, 8, 8), np.uint8), warmup=0, runs=3)["finite_check_ms"] is None
