"""The real build, end to end: DVC builds MobileNetV2 -> rpi4 in a temporary copy of the project;
these tests check the artifact contract, the runtime, reproducibility and DVC's change tracking."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import ROOT, copy_built, copy_project, run
from runtime import InputSpecError, RuntimeLoadError, load, load_image

pytestmark = pytest.mark.pipeline
BUILD = "mobilenet_v2-rpi4-int8_static"
ART = Path("artifacts/mobilenet_v2/rpi4/int8_static")


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def status(repo: Path) -> set[str]:
    return set(json.loads(run([sys.executable, "-m", "dvc", "status", "--json"], repo).stdout or "{}"))


def test_artifact_folder_is_exactly_the_contract(built):
    folder = built / ART
    assert sorted(p.name for p in folder.iterdir()) == ["golden.npz", "manifest.json", "metrics.json", "model.onnx"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "onnx" and manifest["quant"] == "int8_static"
    assert manifest["inputs"][0]["shape"] == [1, 3, 224, 224] and manifest["inputs"][0]["layout"] == "NCHW"
    assert manifest["inputs"][0]["preprocess"]["resize"] == 256
    assert len(manifest["outputs"][0]["labels"]) == 1000
    assert {"torch", "onnx", "onnxruntime", "onnxsim"} <= set(manifest["toolchain"])
    assert manifest["config"]["target"]["name"] == "rpi4"
    metrics = json.loads((folder / "metrics.json").read_text())
    # judged on a fidelity set big enough to resolve its budget; the 9 labelled photos are a sanity row
    assert metrics["passed"] is True and metrics["dataset"] == "imagenet_fidelity"
    assert metrics["n"] >= 1000 and metrics["sources"] >= 100
    assert metrics["splits"] == {"gold": "imagenet_fidelity", "validation": "imagenet_validation",
                                 "calibration": "imagenet_calibration"}
    assert {"float", "artifact", "diff", "budget", "latency_ms", "speedup", "size_bytes"} <= set(metrics)
    # INT8 must really be INT8: QDQ nodes present, and a real accuracy was measured.
    q = metrics["budget"]["quantities"]
    assert q["confident_agreement"]["value"] >= 0.97 and q["top1_in_top5"]["value"] >= 0.99
    assert q["cosine"]["value"] >= 0.985 and q["confident_agreement"]["n"] >= 125
    assert metrics["sanity"]["dataset"] == "imagenet_photos" and metrics["sanity"]["n"] == 9
    # The verdict reads the QDQ graph's reference semantics, never this host's fused kernels, which are
    # recorded apart with the host's ISA (x86 with or without VNNI would otherwise judge differently).
    # The emulated Pi's 16 inputs cannot decide alone: they check that the board reproduces that execution.
    assert metrics["verdict_from"].startswith("reference semantics of the QDQ graph on the whole gold set, "
                                              "reproduced by the emulated cortex-a72 (n = 16)"), metrics["verdict_from"]
    assert metrics["device_true"]["ran"] and metrics["device_true"]["mismatch"] is None
    host = metrics["build_host"]
    assert host["int8_arithmetic"]["machine"] and "onnxruntime" in host["int8_arithmetic"]
    assert {"artifact", "fidelity", "backend"} <= set(host) and "reference" not in host["backend"]
    # every headline proportion has its n and 95 % interval; the drop a paired one
    ci = metrics["intervals"]
    assert ci["agreement"]["n"] == metrics["n"] and "drop" not in ci  # a fidelity set has no labels, so no drop
    for quantity in q.values():
        assert quantity["ci95"][0] <= quantity["value"] <= quantity["ci95"][1]


def test_runtime_runs_the_artifact_like_the_build_did(built):
    session = load(built / ART / "model.onnx")
    metrics = json.loads((built / ART / "metrics.json").read_text())
    first = metrics["per_image"][0]
    from stages.core.cli import load as load_config
    from stages.core.datasets import resolve

    item = load_config().model.gold.items[0]
    logits = session.run(session.preprocess(load_image(resolve(item))))
    assert int(np.argmax(logits)) == first["artifact_top1"]
    assert session.inputs[0].name == "input" and session.labels[first["artifact_top1"]]


def test_runtime_rejects_wrong_shape_and_dtype_naming_the_input(built):
    session = load(built / ART / "model.onnx")
    with pytest.raises(InputSpecError, match=r"input 'input' has shape \[1, 3, 200, 200\], expected input: float32\[1, 3, 224, 224\]"):
        session.run(np.zeros((1, 3, 200, 200), np.float32))
    with pytest.raises(InputSpecError, match="dtype float64"):
        session.run(np.zeros((1, 3, 224, 224), np.float64))


def test_runtime_rejects_a_truncated_artifact(built, tmp_path):
    shutil.copytree(built / ART, tmp_path / "a")
    data = (tmp_path / "a" / "model.onnx").read_bytes()
    (tmp_path / "a" / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeLoadError, match="does not match its manifest"):
        load(tmp_path / "a" / "model.onnx")


def test_runtime_cli_prints_top5_and_latency(built):
    image = "/usr/share/doc/opencv-doc/examples/data/orange.jpg"
    out = run([sys.executable, "-m", "runtime", str(built / ART / "model.onnx"), image, "--runs", "3"], ROOT).stdout
    assert "orange" in out.splitlines()[1] and "latency: median" in out


def test_dvc_is_up_to_date_after_the_build(built):
    assert status(built) == set()


def test_every_default_build_passes_its_models_budget_and_the_readme_table_is_generated(built, tmp_path):
    """Each build in conf/builds.yaml passed its model's budget on a gold set that resolves it, and the
    README's verdict table is what `python -m stages.readme` makes of the build's metrics (the committed
    README's rows name the same builds; its numbers are the last local build's, regenerated, not typed)."""
    plan = builds_file(built)
    for key, b in plan["builds"].items():
        metrics = json.loads((built / "artifacts" / b["model"] / b["target"] / b["quant"] / "metrics.json").read_text())
        assert metrics["passed"] is True, (key, metrics["failures"])
        assert metrics["splits"]["validation"] != metrics["splits"]["gold"] != metrics["splits"]["calibration"], key
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    run([sys.executable, "-m", "stages.readme", "--artifacts", str(built / "artifacts"), "--readme", str(readme)], ROOT)
    rows = {line.split(" | ")[0].strip("| ") for line in readme.read_text().splitlines()
            if line.startswith("| ") and line.endswith(" | PASS |")}
    assert rows == {f"{b['model']} / {b['target']} / {b['quant']}" for b in plan["builds"].values()}

    def verdict_keys(text: str) -> set[str]:
        block = text.split("<!-- generated: verdicts")[1].split("<!-- end generated -->")[0]
        return {line.split(" | ")[0].strip("| ") for line in block.splitlines()[3:] if line.startswith("| ")}

    assert verdict_keys((ROOT / "README.md").read_text()) == verdict_keys(readme.read_text())


def test_stage_alone_from_clean_builds_upstream_and_reproduces_bytes(built, tmp_path):
    """`python -m stages.convert` from a clean tree builds trace..quantize first; same bytes as DVC's."""
    repo = copy_project(tmp_path / "repo")
    out = run([sys.executable, "-m", "stages.convert", "model=mobilenet_v2", "target=rpi4"], repo)
    assert "upstream: trace" in out.stderr and "upstream: quantize" in out.stderr
    ours = json.loads((repo / ART / "manifest.json").read_text())["sha256"]
    dvcs = json.loads((built / ART / "manifest.json").read_text())["sha256"]
    assert ours == dvcs
    # The built project came from stages.build (model subgraphs side by side under DVC); this chain was
    # built alone, one stage after another: every file of it is the same, byte for byte.
    from stages.core.layout import Layout

    # weights.pt and traced.pt are torch archives, whose bytes carry the (temporary) name they were
    # written under: their tensors are compared, and the ONNX exported from them byte for byte.
    import torch

    def chain(root: Path) -> dict[str, bytes]:
        layout = Layout(root / "artifacts", "mobilenet_v2", "rpi4", "int8_static", "model.onnx")
        files = [layout.exported, layout.simplified, layout.calibration,
                 layout.rewritten, layout.quantized, layout.artifact, layout.manifest]
        return {f.relative_to(root).as_posix(): f.read_bytes() for f in files}

    assert chain(repo) == chain(built)
    ours_w, dvcs_w = (torch.load(r / "artifacts/_build/mobilenet_v2/weights.pt", weights_only=True) for r in (repo, built))
    assert ours_w.keys() == dvcs_w.keys() and all(torch.equal(ours_w[k], dvcs_w[k]) for k in ours_w)
    # Run again: everything upstream is fresh, nothing is rebuilt.
    again = run([sys.executable, "-m", "stages.convert", "model=mobilenet_v2", "target=rpi4"], repo)
    assert "upstream:" not in again.stderr


# The mechanism tests' small zoo (#20): two models, and per model a build that uses the int8_static
# scheme and one that does not (and a prepared one), so that "only its builds" means something.
ZOO = ("mobilenet_v2-rpi4-int8_static", "fashion_cnn_npu-rk3566-rknn_int8", "mobilenet_v2-jetson_orin-int8_tensorrt_pq",
       "fashion_cnn_npu-rpi4-int8_static", "fashion_cnn_npu-rpi4_torch-torch_int8")


@pytest.fixture(scope="module")
def zoo(built, tmp_path_factory) -> Iterator[Path]:
    """A copy of the built project (with its DVC cache) cut to the builds in ZOO: conf/builds.yaml keeps
    only them, dvc.yaml is generated again, the compose stages rerun and the whole-project stages
    (arm64, report), whose inputs shrank with the zoo, are recorded as they are (`dvc commit`). Every
    stage it keeps was built by the real build, so nothing is rebuilt, and `dvc status` and the reruns
    the tests make cover a few dozen stages instead of every one."""
    import yaml

    repo = copy_built(built, tmp_path_factory.mktemp("zoo") / "repo")
    plan = builds_file(repo)
    keep = {group: {k: v for k, v in (plan.get(group) or {}).items() if k in ZOO} for group in ("builds", "prepared")}
    assert set(keep["builds"]) | set(keep["prepared"]) == set(ZOO), "a ZOO build is not in conf/builds.yaml"
    models = [m for m in plan["models"] if any(b["model"] == m for g in keep.values() for b in g.values())]
    (repo / "conf/builds.yaml").write_text(yaml.safe_dump(
        {"models": models, **keep, "chains": {**keep["builds"], **keep["prepared"]}}, sort_keys=False))
    run([sys.executable, "-m", "stages.dvcgen"], repo)
    run([sys.executable, "-m", "dvc", "repro", "--glob", "compose_*"], repo)
    run([sys.executable, "-m", "dvc", "commit", "-f", "-q"], repo)
    assert status(repo) == set()
    yield repo
    shutil.rmtree(repo.parent, ignore_errors=True)  # copies of the built project are GBs: gone with the module


@pytest.fixture()
def scratch(zoo, tmp_path) -> Path:
    """A copy of the small zoo that a test may edit."""
    return copy_built(zoo, tmp_path / "repo")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def builds_file(repo: Path) -> dict:
    import yaml

    return yaml.safe_load((repo / "conf/builds.yaml").read_text())


def test_quant_change_makes_only_its_builds_stale_then_their_downstream(scratch):
    """A scheme's parameter reaches exactly the builds that use it: their quantize, and their convert
    (the manifest records the scheme). Once one of them has a new graph, its evaluate and the report
    follow, and nothing else moved. Checked on the small zoo with `dvc status` and one cheap rerun, not
    a rebuild of every user (10 builds, the arm64 check and the face apps: nearly 10 minutes of CI for
    what DVC's own downstream rule does)."""
    builds = builds_file(scratch)
    users = [key for key, b in builds["chains"].items() if b["quant"] == "int8_static"]
    assert f"{BUILD}" in users
    edit(scratch / "conf/quant/int8_static.yaml", "num_samples: 64", "num_samples: 80")
    run([sys.executable, "-m", "dvc", "repro", "--glob", "compose_*"], scratch)  # `conf/` changed: every config is rewritten
    stale = {f"{stage}@{key}" for key in users for stage in ("quantize", "convert")}
    assert status(scratch) == stale
    cheapest = "fashion_cnn_npu-rpi4-int8_static"
    assert cheapest in users
    run([sys.executable, "-m", "dvc", "repro", "--single-item", f"quantize@{cheapest}"], scratch)
    assert status(scratch) == stale - {f"quantize@{cheapest}"} | {f"evaluate@{cheapest}", "report"}


def test_input_size_change_makes_the_models_whole_chain_stale(scratch):
    edit(scratch / "conf/model/mobilenet_v2.yaml", "shape: [1, 3, 224, 224]", "shape: [1, 3, 192, 192]")
    run([sys.executable, "-m", "dvc", "repro", "--glob", "compose_*"], scratch)  # `conf/` changed: every config is rewritten
    builds = builds_file(scratch)

    def mobilenet(group: str) -> list[str]:
        return [key for key, b in builds[group].items() if b["model"] == "mobilenet_v2"]

    # train reads the input spec too (it preprocesses training data); for a pretrained model it
    # rewrites the same weights, so only the stages that read the shape do real work.
    expected = {f"{s}@mobilenet_v2" for s in ("train", "trace", "export", "simplify", "calibrate", "reference")}
    expected |= {f"{s}@{key}" for key in mobilenet("chains") for s in ("rewrite", "quantize")}
    expected |= {f"{s}@{key}" for key in mobilenet("builds") for s in ("convert", "evaluate")}
    expected |= {f"prepare@{key}" for key in mobilenet("prepared")}
    # the arm64 check reads the model's resolved config (its board subset of the gold set) directly
    from stages.arm64.verify import pi_builds

    expected |= {"arm64"} if any(b["model"] == "mobilenet_v2" for b in pi_builds(builds)) else set()
    assert status(scratch) == expected


def test_code_edit_reruns_that_stage_and_downstream_only_if_outputs_change(scratch):
    with open(scratch / "stages/export.py", "a") as f:
        f.write("\n# a comment: same code, same output\n")
    models = builds_file(scratch)["models"]
    exports = {f"export@{m}" for m in models}
    # A stage's code is tracked as a digest that the compose stages write (stages/core/pipeline.py,
    # code_digest): any code edit reruns them, only export's digest moves, so export reruns, and its
    # outputs are the same, so nothing after it does.
    composes = {f"compose_{m}" for m in models}
    assert status(scratch) == composes
    out = run([sys.executable, "-m", "dvc", "repro"], scratch).stdout
    assert ran_stages(out) == exports | composes


def test_the_onnx_only_stages_never_import_torch(scratch):
    """rewrite, quantize and convert (to .onnx) work on ONNX graphs: they pay neither torch's import
    (4-7 s a process here) nor its memory. Checked on real runs, with Python's import log."""
    build = "model=fashion_cnn_npu target=rpi4 quant=int8_static".split()
    for stage in ("rewrite", "quantize", "convert"):
        proc = run([sys.executable, "-X", "importtime", "-m", f"stages.{stage}", *build, "upstream=false"], scratch)
        imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
        assert "onnx" in imported, f"{stage}: no import log"  # the log is there, and names what was loaded
        assert "torch" not in imported, f"stages.{stage} imported torch"


def test_a_missed_budget_fails_the_build_at_quantize_with_a_table(scratch):
    """quantize checks the budget on the validation split first; one no graph can meet is named as such, not
    repaired. The budget is the model's: every target's build of it fails."""
    edit(scratch / "conf/model/fashion_cnn.yaml", "max_drop: 0.5", "max_drop: -50.0")
    # the one stage and what it needs (a whole `dvc repro` cost 186 s in a cold CI, this 28 s)
    proc = run([sys.executable, "-m", "dvc", "repro", "quantize@fashion_cnn_npu-rpi4-int8_static"], scratch, check=False)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert "FAIL" in log and "top-1 %" in log and "misses its accuracy budget" in log
    assert "not even the float graph meets it" in log
    report = json.loads((scratch / "artifacts/_build/fashion_cnn_npu/rpi4/int8_static/quantize.json").read_text())
    check = report["budget_check"]
    assert check["split"] == "fashion_mnist_validation"
    assert check["final"]["passed"] is False and check["unattainable"] is True and check["steps"] == []


def test_a_missed_budget_fails_evaluate_with_a_table(scratch):
    """evaluate re-checks the artifact itself (what the board runs), whatever quantize saw."""
    proc = run([sys.executable, "-m", "stages.evaluate", "upstream=false", "model.budget.min_cosine=1.0"],
               scratch, check=False)
    assert proc.returncode == 2
    log = proc.stdout + proc.stderr
    assert "FAIL" in log and "misses its accuracy budget" in log and "imagenet_fidelity" in log
    metrics = json.loads((scratch / ART / "metrics.json").read_text())
    assert metrics["passed"] is False and any(f.startswith("cosine ") and "< 1.0" in f for f in metrics["failures"])


def test_a_killed_stage_leaves_nothing_half_written_and_a_rerun_recovers(scratch):
    import os
    import signal
    import subprocess
    import time

    from conftest import project_env

    quantized = scratch / "artifacts/_build/mobilenet_v2/rpi4/int8_static/quantized.onnx"
    before = quantized.read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "stages.quantize", "upstream=false",
                             "quant.calibration.num_samples=8"], cwd=scratch, env=project_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    # Kill it hard once calibration (the long part, writing into a temp file) is under way.
    for line in proc.stdout:
        if "calibrating" in line:
            time.sleep(1.0)
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert quantized.read_bytes() == before  # the old output is untouched, not half-replaced
    assert status(scratch) == set()  # DVC sees nothing changed: nothing half-written to cache
    run([sys.executable, "-m", "stages.quantize", "upstream=false", "quant.calibration.num_samples=8"], scratch)
    assert not list(quantized.parent.glob(".*.tmp"))  # the killed run's temp file was cleaned up
    assert quantized.read_bytes() != before


def test_targets_without_a_toolchain_are_prepared_not_faked(built):
    report = json.loads((built / "artifacts/_build/mobilenet_v2/jetson_orin/int8_tensorrt_pq/prepare.json").read_text())
    assert report["built"] is False and "TensorRT is not importable" in report["reason"]
    assert (built / "artifacts/_build/mobilenet_v2/jetson_orin/int8_tensorrt_pq/prepared/model.onnx").exists()
    assert not (built / "artifacts/mobilenet_v2/jetson_orin").exists()  # no fake .engine, ever
    proc = run([sys.executable, "-m", "stages.convert", "target=jetson_orin"], built, check=False)
    assert proc.returncode == 2 and "trtexec" in proc.stderr and "prepared" in proc.stderr
    assert not (built / "artifacts/mobilenet_v2/jetson_orin").exists()


def test_onpu_artifact_runs_through_the_runtime_on_cpu(built):
    session = load(built / "artifacts/mobilenet_v2/rpi5/int8_static/model.onpu")
    assert "whole graph on CPU" in session.backend.name
    metrics = json.loads((built / "artifacts/mobilenet_v2/rpi5/int8_static/metrics.json").read_text())
    assert metrics["passed"] and metrics["latency_ms"]["backend"] == session.backend.name
    manifest = json.loads((built / "artifacts/mobilenet_v2/rpi5/int8_static/manifest.json").read_text())
    assert manifest["partition"]["cpu_nodes"] > 0 and manifest["partition"]["npu_nodes"] > 0


def rknn_builds() -> list[tuple[str, str, str]]:
    import yaml

    plan = yaml.safe_load((ROOT / "conf/builds.yaml").read_text())
    return [(b["model"], b["target"], b["quant"]) for b in plan["builds"].values() if b["artifact"] == "model.rknn"]


@pytest.mark.parametrize("model, target, quant", rknn_builds())
def test_rknn_artifacts_were_checked_in_the_simulator_as_built(built, model, target, quant):
    folder = built / "artifacts" / model / target / quant
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["inputs"][0]["dtype"] == "uint8" and manifest["inputs"][0]["layout"] == "NHWC"
    assert manifest["toolchain"]["rknn-toolkit2"] == "2.5.0" and manifest["rknn"]["platform"] == target
    from stages.core.cli import load as load_config

    metrics = json.loads((folder / "metrics.json").read_text())
    quant_cfg = load_config([f"model={model}", f"target={target}", f"quant={quant}"]).quant
    hybrid = quant_cfg.float_outputs
    if quant_cfg.vendor_ladder:  # the toolkit's settings, chosen by quantize on the validation split
        levers = json.loads((built / "artifacts/_build" / model / target / quant / "quantize.json").read_text())[
            "vendor_levers"]
        tried, chosen = levers["tried"], levers["chosen"]
        assert levers["split"] != metrics["splits"]["gold"] and all(not t["passed"] for t in tried[:-1]) and tried[-1]["passed"]
        assert chosen == {k: tried[-1][k] for k in ("algorithm", "float_outputs")}
        assert manifest["rknn"]["quantized_algorithm"] == chosen["algorithm"]
        hybrid = chosen["float_outputs"]
    assert bool(manifest["rknn"]["float16_subgraphs"]) == hybrid  # the outputs in float16, where the scheme says
    assert metrics["analysis"]["simulated_model_is_the_artifact"] is True
    assert metrics["latency_ms"]["artifact"] is None and metrics["speedup"] is None  # no fake device timing
    analysis = built / "artifacts" / metrics["analysis"]["accuracy_analysis"]
    assert "cos" in (analysis / "error_analysis.txt").read_text()
    from runtime import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="runs on that board's NPU"):
        load(folder / "model.rknn")


def test_torchscript_backend_runs_a_traced_model_through_load(built, tmp_path):
    """The .pt backend (rpi4_torch's format) on the real traced MobileNetV2, against ONNX Runtime."""
    import hashlib

    folder = tmp_path / "pt"
    folder.mkdir()
    shutil.copy(built / "artifacts/_build/mobilenet_v2/traced.pt", folder / "model.pt")
    manifest = json.loads((built / ART / "manifest.json").read_text())
    manifest.pop("manifest_sha256")
    manifest.update(format="torchscript", artifact="model.pt", quant="fp32",
                    sha256=hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest())
    from runtime.manifest import seal_manifest

    (folder / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))  # a new manifest: sealed anew
    session = load(folder / "model.pt")
    assert session.backend.name == "torchscript:fp32"
    x = session.preprocess(load_image("/usr/share/doc/opencv-doc/examples/data/orange.jpg"))
    import onnxruntime as ort

    reference = ort.InferenceSession(str(built / "artifacts/_build/mobilenet_v2/simplified.onnx")).run(None, {"input": x})[0]
    np.testing.assert_allclose(session.run(x), reference, atol=1e-3)


# --- python -m runtime verify: the board-side twin of the gold check ----------------------------

def verify(folder: Path, *extra: str):
    return run([sys.executable, "-m", "runtime", "verify", str(folder), "--runs", "5", "--warmup", "2", *extra],
               ROOT, check=False)


def test_verify_passes_every_build_that_runs_on_this_host(built):
    import yaml

    plan = yaml.safe_load((built / "conf/builds.yaml").read_text())
    for key, item in plan["builds"].items():
        folder = built / "artifacts" / item["model"] / item["target"] / item["quant"]
        proc = verify(folder)
        if item["artifact"].endswith(".rknn"):  # runs on the board or in the build's simulator only
            assert proc.returncode == 3 and "rknn-toolkit-lite2" in proc.stderr, (key, proc.stderr[-800:])
            continue
        assert proc.returncode == 0 and proc.stdout.strip().endswith("PASS"), (key, proc.stdout[-1500:], proc.stderr[-800:])
        record = json.loads((folder / "verify.json").read_text())
        assert record["passed"] and record["golden"]["n"] >= 4 and {"p50", "p90", "p99"} <= set(record["latency_ms"])
        assert record["backend_version"]["same"], record["backend_version"]
        (folder / "verify.json").unlink()  # the artifact folder stays the build's


def test_verify_fails_naming_the_input_when_a_golden_output_moves(built, tmp_path):
    folder = tmp_path / "a"
    shutil.copytree(built / ART, folder)
    with np.load(folder / "golden.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    arrays["outputs"][3, 0] += 3 * meta["atol"]
    from stages.core.fileio import sha256_file, write_npz

    write_npz(folder / "golden.npz", arrays)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["golden"]["sha256"] = sha256_file(folder / "golden.npz")
    (folder / "metrics.json").write_text(json.dumps(metrics))
    proc = verify(folder)
    assert proc.returncode == 1 and proc.stdout.strip().endswith("FAIL")
    assert "golden input 3: max |output - expected|" in proc.stdout
    (folder / "golden.npz").write_bytes(b"corrupt")
    proc = verify(folder)
    assert proc.returncode == 2 and "does not match the sha256" in proc.stderr
