"""The build report: every build's numbers in the table, reasons for what was not built, plots
embedded in one offline HTML file, identical bytes on a rebuild, and no crash on a partial tree."""
from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stages.report import build_report, main, write_report

TOOLCHAIN = {"python": "3.11.7", "torch": "2.14.1", "onnx": "1.23.2", "onnxsim": "0.8.1", "onnxruntime": "1.31.1"}
JETSON_REASON = "TensorRT <10 is not importable here & the engine is GPU-specific"
SIM_NOTE = "RKNN PC simulator: accuracy only, no device latency"
RKNN_ANALYSIS = """\
layer_name                                              simulator_error
                                                    entire              single
                                                 cos      euc        cos      euc
---------------------------------------------------------------------------------------
[Input] input                                  1.00000 | 0.00000   1.00000 | 0.00000
[Conv] /features/0/0/Conv_output_0
[Clip] /features/0/2/Clip_output_0             0.99995 | 2.92886   0.99995 | 2.92886
[Conv] /features/1/conv/1/Conv_output_0        0.98579 | 24.46586  0.99810 | 8.85296
"""


def put(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=2))


def metrics(target: str, quant: str, fmt: str, top1: float, latency: float | None, passed: bool = True) -> dict:
    """The shape stages/evaluate.py writes (per_image trimmed)."""
    drop = 77.77777777777779 - top1
    return {
        "model": "mobilenet_v2", "target": target, "quant": quant, "format": fmt, "dataset": "imagenet_photos", "n": 9,
        "float": {"top1": 77.77777777777779, "top5": 100.0}, "artifact": {"top1": top1, "top5": 100.0},
        "diff": {"top1": -drop, "top5": 0.0},
        "fidelity": {"agreement": 0.8888888888888888, "cosine_mean": 0.983, "cosine_min": 0.971, "max_abs_diff": 4.02},
        "budget": {"metric": "top1", "max_drop": 1.0, "min_agreement": 0.85, "drop": drop},
        "passed": passed, "failures": [] if passed else [f"top1 drop {drop:.2f} > max_drop 1.0"],
        "latency_ms": {"torch_eager_fp32": 43.65 if latency else None, "artifact": latency, "threads": 2,
                       "backend": "onnxruntime:CPUExecutionProvider", "runs": 50, "note": "" if latency else SIM_NOTE},
        "speedup": 43.65 / latency if latency else None,
        "size_bytes": 3875392 if fmt == "onnx" else 4172875,
        "per_image": [{"file": "orange.jpg", "accept": [950], "float_top1": 950, "artifact_top1": 950}],
    }


def manifest(target: str, quant: str, fmt: str, toolchain: dict) -> dict:
    return {"schema": 1, "format": fmt, "artifact": f"model.{fmt}", "model": "mobilenet_v2", "target": target,
            "board": f"board of {target}", "quant": quant, "task": "classification", "toolchain": toolchain,
            "sha256": "0" * 64, "size_bytes": 3875392,
            "config": {"quant": {"name": quant, "exclude_nodes": []}, "target": {"name": target, "format": fmt}}}


def graph_summary() -> dict:
    return {"nodes": 102, "ops": {"Conv": 52, "Clip": 35}}


def make_tree(root: Path) -> Path:
    """A partial build tree in the real file shapes: two evaluated builds (one failing its budget),
    one converted but not evaluated, one with intermediates only, one prepared-only, one trained model."""
    build = root / "_build"
    put(root / "mobilenet_v2/rpi4/int8_static/metrics.json", metrics("rpi4", "int8_static", "onnx", 88.88888888888889, 5.1375))
    put(root / "mobilenet_v2/rpi4/int8_static/manifest.json", manifest("rpi4", "int8_static", "onnx", TOOLCHAIN))
    put(build / "mobilenet_v2/rpi4/int8_static/rewrite.json", {"applied": [
        {"rewrite": "fold_batchnorm", "fn": "fold_batchnorm", "changed": ["bn1", "bn2"], "n_changed": 2,
         "max_abs_error": 1.9e-06, "latency_ms": {"before": 0.252, "after": 0.201, "where": "ORT CPU"}},
        {"rewrite": "resize_nearest_to_convtranspose", "fn": "resize_nearest_to_convtranspose", "changed": [],
         "n_changed": 0}], "graph": graph_summary()})
    put(build / "mobilenet_v2/rpi4/int8_static/quantize.json", {"quant": "int8_static", "scheme": "ort_static",
                                                    "calibration_samples": 64, "exclude_nodes": ["/classifier/Gemm"],
                                                    "graph": graph_summary()})
    put(build / "mobilenet_v2/rpi4/int8_static/analysis/layer_divergence.json", [
        {"tensor": f"/features/{i}/Clip_output_0", "node": f"/features/{i}/Clip", "cosine": 1 - i / 100,
         "max_abs_error": i / 10} for i in range(6)])

    put(root / "mobilenet_v2/rk3588/rknn_int8/metrics.json", metrics("rk3588", "rknn_int8", "rknn", 66.66666666666666, None,
                                                           passed=False))
    put(root / "mobilenet_v2/rk3588/rknn_int8/manifest.json",
        manifest("rk3588", "rknn_int8", "rknn", {**TOOLCHAIN, "rknn-toolkit2": "2.5.0"}))
    put(build / "mobilenet_v2/rk3588/rknn_int8/rewrite.json", {"applied": [], "graph": graph_summary()})
    put(build / "mobilenet_v2/rk3588/rknn_int8/quantize.json", {"quant": "rknn_int8", "scheme": "vendor",
                                                      "quantized_by": "the rknn toolchain", "graph": graph_summary()})
    put(build / "mobilenet_v2/rk3588/rknn_int8/analysis/rknn_accuracy_analysis/error_analysis.txt", RKNN_ANALYSIS)

    put(root / "mobilenet_v2/rpi5/int8_static/manifest.json", manifest("rpi5", "int8_static", "onpu", TOOLCHAIN))  # no metrics
    put(build / "mobilenet_v2/rv1106/rknn_int8/build.json", {"quant": {"name": "rknn_int8"}, "target": {"format": "rknn"}})

    put(build / "mobilenet_v2/jetson_orin/int8_tensorrt/prepare.json", {
        "model": "mobilenet_v2", "target": "jetson_orin", "board": "NVIDIA Jetson Orin (JetPack 6)",
        "format": "tensorrt", "built": False, "reason": JETSON_REASON,
        "prepared": ["_build/mobilenet_v2/jetson_orin/prepared/model.onnx"]})
    put(build / "mobilenet_v2/train.json", {"model": "mobilenet_v2", "weights": "package", "epochs": [],
                                            "accuracy": {}, "parameters": 3504872, "seconds": 2.8})
    put(build / "fashion_cnn_npu/train.json", {
        "model": "fashion_cnn_npu", "weights": "none",
        "epochs": [{"phase": "train", "epoch": 1, "lr": 0.05, "loss": 1.1396, "train_accuracy": 66.07,
                    "test_accuracy": 83.65},
                   {"phase": "train", "epoch": 2, "lr": 0.025, "loss": 0.4012, "train_accuracy": 86.81,
                    "test_accuracy": 86.83},
                   {"phase": "finetune", "epoch": 1, "lr": 0.01, "loss": 0.3901, "train_accuracy": 86.09,
                    "test_accuracy": 88.13}],
        "accuracy": {"before_surgery": 86.83, "after_surgery": 35.41, "after_finetune": 88.13,
                     "dataset": "fashion_mnist_test"},
        "parameters": 61050,
        "surgery": {"instancenorm_to_batchnorm": ["features.0.1", "features.2.1"],
                    "gelu_to_relu6": ["features.0.2", "features.2.2"]},
        "seconds": 177.4})
    return root


def table_row(markdown: str, model: str, target: str) -> str:
    """The build's row in the main table (other sections have rows that start the same way)."""
    builds = section(markdown, "Builds")
    rows = [line for line in builds.splitlines() if line.startswith(f"| {model} | {target} | ")]
    assert len(rows) == 1, f"expected one table row for {model}/{target}, got {rows}"
    return rows[0]


def section(markdown: str, title: str) -> str:
    return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "artifacts")


def test_table_lists_every_build_with_its_numbers(tree: Path) -> None:
    write_report(tree)
    md = (tree / "report.md").read_text()
    rpi4 = table_row(md, "mobilenet_v2", "rpi4")
    for expected in ("int8_static", "77.78 → 88.89", "-11.11 (≤ 1)", "0.889 (≥ 0.85)", "5.14", "8.5×", "3.88 MB",
                     "fold_batchnorm ×2", "/classifier/Gemm", "onnxruntime 1.31.1", "PASS"):
        assert expected in rpi4, (expected, rpi4)
    assert "resize_nearest_to_convtranspose" not in rpi4  # ran, changed nothing: only in the rewrites section
    rk3588 = table_row(md, "mobilenet_v2", "rk3588")
    for expected in ("66.67", "n/a [1]", "4.17 MB", "rknn-toolkit2 2.5.0", "set by the toolkit",
                     "FAIL: top1 drop 11.11"):
        assert expected in rk3588, (expected, rk3588)
    assert f"[1] {SIM_NOTE}" in md
    assert "not evaluated" in table_row(md, "mobilenet_v2", "rpi5")
    assert "not converted" in table_row(md, "mobilenet_v2", "rv1106")
    assert "| mobilenet_v2 | jetson_orin | " not in section(md, "Builds")
    rewrites = section(md, "Rewrites")
    assert "| mobilenet_v2 | rpi4/int8_static | fold_batchnorm | 2 | 1.90e-06 | 0.252 → 0.201 |" in rewrites
    divergence = section(md, "Per-layer divergence")
    assert "| mobilenet_v2 | rpi4/int8_static | ONNX Runtime QDQ vs float | 6 | 0.9500 | /features/5/Clip_output_0 |" in divergence
    assert "| mobilenet_v2 | rk3588/rknn_int8 | RKNN simulator vs float (accumulated) | 3 | 0.9858 |" in divergence

    data = json.loads((tree / "report.json").read_text())
    assert [(b["model"], b["target"], b["status"]) for b in data["builds"]] == [
        ("mobilenet_v2", "rk3588", "fail"), ("mobilenet_v2", "rpi4", "pass"),
        ("mobilenet_v2", "rpi5", "not evaluated"), ("mobilenet_v2", "rv1106", "not converted")]
    assert data["builds"][1]["latency_ms"] == 5.1375


def test_a_latency_measured_under_contention_is_parenthesized_and_footnoted(tree: Path) -> None:
    path = tree / "mobilenet_v2/rpi4/int8_static/metrics.json"
    m = json.loads(path.read_text())
    m["latency_ms"].update(spread=0.41, other_cpu_share=0.62, reliable=False,
                           unreliable_because=["other processes used 62 % of the CPU (limit 15 %)"])
    put(path, m)
    write_report(tree)
    md = (tree / "report.md").read_text()
    rpi4 = table_row(md, "mobilenet_v2", "rpi4")
    assert "(5.14) [2]" in rpi4 and "(8.5×)" in rpi4, rpi4
    assert "[2] unreliable: measured under contention" in md
    assert "[1] " + SIM_NOTE in md and "n/a [1]" in table_row(md, "mobilenet_v2", "rk3588")


def test_not_built_and_training_sections(tree: Path) -> None:
    write_report(tree)
    md = (tree / "report.md").read_text()
    assert f"| mobilenet_v2 | jetson_orin/int8_tensorrt | tensorrt | {JETSON_REASON} |" in section(md, "Not built here")
    training = section(md, "Training")
    assert "Pretrained, not trained here: mobilenet_v2 (weights: package)." in training
    assert "### mobilenet_v2" not in training
    for expected in ("| before surgery | 86.83 |", "| after surgery | 35.41 |", "| after fine-tune | 88.13 |",
                     "instancenorm_to_batchnorm: 2 module(s)", "| finetune | 1 | 0.01 | 0.3901 | 86.09 | 88.13 |",
                     "![training curve of fashion_cnn_npu](report/train_fashion_cnn_npu.svg)"):
        assert expected in training, expected


def test_images_exist_and_are_embedded_in_a_self_contained_html(tree: Path) -> None:
    paths = write_report(tree)
    images = sorted(p.name for p in (tree / "report").glob("*.svg"))
    tables = sorted(p.name for p in (tree / "report").glob("*.csv"))  # for `dvc plots`
    assert tables == ["builds.csv", "train_fashion_cnn_npu.csv"]
    assert (tree / "report" / "train_fashion_cnn_npu.csv").read_text().splitlines()[3] == \
        "3,finetune,1,0.3901,86.09,88.13"
    assert images == ["accuracy_latency.svg", "layer_divergence.svg", "size_per_format.svg",
                      "train_fashion_cnn_npu.svg"]
    assert set(tree / "report" / name for name in images) <= set(paths)
    page = (tree / "report.html").read_text()
    md = (tree / "report.md").read_text()
    for name in images:
        data = (tree / "report" / name).read_bytes()
        assert data.startswith(b"<?xml") and b"<svg" in data
        assert base64.b64encode(data).decode() in page, f"{name} is not embedded in report.html"
        assert f"(report/{name})" in md
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page), "report.html must not load anything remotely"
    assert "<script" not in page and "<link" not in page
    assert html.escape(JETSON_REASON) in page and JETSON_REASON not in page  # escaped, not raw HTML
    assert page.count('class="pass"') == 1 and page.count('class="fail"') == 1


def test_rebuild_gives_identical_bytes(tree: Path) -> None:
    first = {p: p.read_bytes() for p in write_report(tree)}
    second = {p: p.read_bytes() for p in write_report(tree)}
    assert first == second
    assert b"Date" not in (tree / "report" / "accuracy_latency.svg").read_bytes()


def test_partial_tree_shows_na_and_does_not_crash(tree: Path) -> None:
    (tree / "mobilenet_v2/rpi4/int8_static/metrics.json").unlink()
    (tree / "_build/fashion_cnn_npu/train.json").unlink()
    (tree / "_build/mobilenet_v2/rk3588/rknn_int8/quantize.json").write_text("{ truncated")
    write_report(tree)
    md = (tree / "report.md").read_text()
    rpi4 = table_row(md, "mobilenet_v2", "rpi4")
    assert "| n/a | n/a | n/a |" in rpi4 and "not evaluated" in rpi4 and "3.88 MB" in rpi4  # size from the manifest
    assert "set by the toolkit" not in table_row(md, "mobilenet_v2", "rk3588")  # unreadable file: n/a
    assert "fashion_cnn_npu" not in md
    assert not (tree / "report" / "train_fashion_cnn_npu.svg").exists()  # a stale plot is removed


def test_arm64_section_shows_the_check_or_why_it_did_not_run(tree: Path) -> None:
    (tree / "arm64.json").write_text(json.dumps({"ran": False, "reason": "needs root", "results": []}))
    write_report(tree)
    assert "Not checked on arm64 here: needs root." in (tree / "report.md").read_text()
    row = {"build": "mobilenet_v2-rpi4-int8_static", "cpu": "cortex-a76", "board_cpu": False, "n": 9,
           "max_abs_diff": 0.0, "top1_agreement": 1.0, "top1_x86": 88.9, "top1_arm64": 88.9,
           "backend_arm64": "onnxruntime:CPUExecutionProvider", "emulated_ms_per_input": 412.0}
    (tree / "arm64.json").write_text(json.dumps({"ran": True, "userland": "Debian 12 arm64", "emulator": "qemu 7.2",
                                                 "note": "emulated timings: not Raspberry Pi timings",
                                                 "results": [row]}))
    write_report(tree)
    md, page = (tree / "report.md").read_text(), (tree / "report.html").read_text()
    assert "| mobilenet_v2-rpi4-int8_static | cortex-a76 | 9 | 0.00e+00 | 1.000 | n/a | n/a | 88.9 → 88.9 |" in md
    assert "| n/a | 412.0 |" in md  # no `runtime verify` result recorded in this row
    # the device-true numbers: the emulated board against float on its subset, with the interval
    row["device_true"] = {"n": 9, "quantities": {"agreement": {"value": 8 / 9, "n": 9, "ci95": [0.565, 0.980]},
                                                 "cosine": {"value": 0.9912, "n": 9, "ci95": [0.99, 0.992]}}}
    (tree / "arm64.json").write_text(json.dumps({"ran": True, "userland": "Debian 12 arm64", "emulator": "qemu 7.2",
                                                 "note": "emulated timings: not Raspberry Pi timings",
                                                 "results": [row]}))
    write_report(tree)
    assert "| 1.000 | 0.889 [0.565, 0.980], 0.9912 | n/a |" in (tree / "report.md").read_text()
    assert "not Raspberry Pi timings" in md and "cortex-a76" in page


def test_empty_tree_and_command_line(tmp_path: Path) -> None:
    assert build_report(tmp_path) == {"builds": [], "not_built": [], "training": [], "divergence": [], "device": [],
                                      "latency_notes": [], "arm64": None, "faces": None}
    assert main(["--artifacts", str(tmp_path)]) == 0
    assert "No builds yet." in (tmp_path / "report.md").read_text()
    assert main(["--artifacts", str(tmp_path / "missing")]) == 2


CHROMIUM = ("chromium-headless-shell", "chromium", "google-chrome")
PROBE = """<script>
window.addEventListener("load", () => {
  const visible = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const images = [...document.querySelectorAll("img")];
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    tables: document.querySelectorAll("table").length,
    build_rows: document.querySelector("table tbody").rows.length,
    header_cells: document.querySelector("table thead tr").cells.length,
    images: images.length,
    rendered: images.filter((i) => i.complete && i.naturalWidth > 0 && visible(i)).length,
    fail_cells: [...document.querySelectorAll("td.fail")].filter(visible).length,
  });
  document.body.appendChild(probe);
});
</script>
"""


def test_html_renders_in_headless_chromium(tree: Path, tmp_path: Path) -> None:
    binary = next((shutil.which(name) for name in CHROMIUM if shutil.which(name)), None)
    if binary is None:
        pytest.skip("no headless Chromium on PATH: install it with `apt-get install -y chromium-headless-shell` "
                    "(Debian) to check that report.html renders")
    write_report(tree)
    page = tmp_path / "probe.html"
    page.write_text((tree / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run([binary, "--no-sandbox", "--headless", "--disable-gpu", "--virtual-time-budget=5000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"{binary} printed no probe (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    seen = json.loads(html.unescape(found[1]))
    assert seen["build_rows"] == 4 and seen["header_cells"] == 14
    assert seen["images"] == 4 and seen["rendered"] == 4, seen
    assert seen["fail_cells"] == 1


def test_build_profile_lists_the_slowest_stage_runs(tmp_path: Path) -> None:
    from stages.core import profile

    for build, stage, wall in (("m", "train", 30.0), ("m/rpi4/int8_static", "quantize", 12.5),
                               ("m/rpi4/int8_static", "convert", 3.0)):
        path = tmp_path / "_build" / build / ".stamps" / f"{stage}.profile.json"
        with profile.stage_run(stage, path):
            pass
        record = json.loads(path.read_text())
        assert record["stage"] == stage and record["work_s"] >= 0 and "startup_s" in record
        path.write_text(json.dumps({**record, "wall_s": wall}))
    rows, total = profile.slowest(tmp_path, top=2)
    assert [(r["stage"], r["build"]) for r in rows] == [("train", "m"), ("quantize", "m/rpi4/int8_static")]
    assert total == 45.5 and "3 stage runs, 0.8 min" in profile.table_lines(tmp_path)[0]


def test_board_results_are_merged_beside_the_build(tree: Path, tmp_path: Path) -> None:
    """A verify.json as `python -m runtime verify` writes it (here: the shape the emulated Cortex-A76 run gives)."""
    boards = tmp_path / "boards" / "pi5"
    boards.mkdir(parents=True)
    (boards / "verify.json").write_text(json.dumps({
        "model": "mobilenet_v2", "target": "rpi4", "quant": "int8_static", "format": "onnx",
        "board": {"machine": "aarch64", "cpu": "CPU part: 0xd0b", "python": "3.11.2"},
        "backend": "onnxruntime:CPUExecutionProvider",
        "backend_version": {"package": "onnxruntime", "here": "1.31.1", "built": "1.31.1", "same": True},
        "golden": {"n": 9, "of": 9}, "fidelity": {"n": 9, "max_abs_diff": 0.05, "agreement": 1.0, "atol": 0.4},
        "latency_ms": {"p50": 21.0, "p90": 22.5, "p99": 30.1, "runs": 50, "warmup": 10, "threads": 4},
        "passed": True, "failures": []}))
    assert main(["--artifacts", str(tree), "--board-results", str(tmp_path / "boards")]) == 0
    md = (tree / "report.md").read_text()
    assert "## On real boards" in md and "| mobilenet_v2/rpi4/int8_static | aarch64, CPU part: 0xd0b |" in md
    assert "onnxruntime 1.31.1 (1.31.1)" in md and "21.00 / 22.50 / 30.10 | PASS |" in md
    assert main(["--artifacts", str(tree), "--board-results", str(tmp_path / "nowhere")]) == 2


def test_a_face_apps_fps_taken_under_contention_is_parenthesized() -> None:
    from stages.report import fps_text

    assert fps_text({"fps": 31.25, "fps_reliable": True}) == "31.2"
    assert fps_text({"fps": 5.4, "fps_reliable": False}) == "(5.4)"
    assert fps_text({"fps": 9.6}) == "9.6"  # recorded before the check existed: shown as it was
