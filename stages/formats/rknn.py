"""``rknn`` (rknn-toolkit2: RK3588, RK3566, RV1106, ...) and ``rknn_v1`` (rknn-toolkit 1.x: RK1808).

The toolkit runs in its own venv, in a subprocess (stages/formats/workers/rknn_worker.py), so its pins
never meet the build's and a compiler crash becomes an error message. The toolkit quantizes
the float graph itself (quant scheme `vendor`), with the normalization folded into the NPU:
the board feeds uint8 RGB pixels, NHWC, and the manifest says so.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import numpy as np

from stages.core.errors import BuildError
from stages.core.layout import PROJECT_ROOT
from stages.core.log import console

from . import FORMATS, Format, GoldRun

RKNN_VENV = PROJECT_ROOT / ".venv-rknn"
# evaluate's rebuilds for the simulator: the first whose bytes are the artifact's is simulated. The
# compiler writes heap addresses into the .rknn, and even with one Python thread, no ASLR and the same
# paths (run_worker), a hybrid mmse build does not always lay out its heap the same way. MobileNetV2's,
# run 5 times on one job with both cores busy, gave one file 3 times and two others once each (with
# OpenMP off: one file 6 times in 9; a frozen clock did not help either). An artifact with the common
# bytes is matched within 5 tries about 99 % of the time at that rate; a rarer one may not be, and then
# evaluate gives no verdict and says to rerun convert.
REBUILDS = 5
# In a folder of its own: Python puts the script's folder first on sys.path, and a sibling named
# like a package the toolkit imports (onnx.py, rknn.py here) would shadow it.
WORKER = Path(__file__).with_name("workers") / "rknn_worker.py"
V1_HELP = ("RK1808 needs rknn-toolkit 1.x (1.7.x; Python 3.6-3.8 wheels from Rockchip's rknn-toolkit "
           "release, not on PyPI; rknn-toolkit2 rejects rk1808 with 'Invalid target_platform'). Install it "
           "into its own venv, then point the build at that venv's python with "
           "target.rknn.toolkit_python=/path/to/venv/bin/python or RKNN_TOOLKIT1_PYTHON=/path/to/venv/bin/python")


def _rknn(cfg) -> Any:  # noqa: ANN001
    if cfg.target.rknn is None:
        raise BuildError(f"target {cfg.target.name!r} has format {cfg.target.format} but no `rknn` section",
                         hint="add target.rknn.platform (and quantized_dtype, quantized_algorithm)")
    return cfg.target.rknn


def algorithm(cfg) -> str:  # noqa: ANN001
    """The toolkit's quantization algorithm: the quant scheme's choice, else the target's default."""
    return cfg.quant.vendor_algorithm or _rknn(cfg).quantized_algorithm


def toolkit_python(cfg) -> Optional[Path]:  # noqa: ANN001
    """The python of the toolkit's venv, or None when it is not installed."""
    if cfg.target.format == "rknn_v1":
        path = _rknn(cfg).toolkit_python or os.environ.get("RKNN_TOOLKIT1_PYTHON")
    else:
        path = os.environ.get("RKNN_TOOLKIT2_PYTHON") or str(RKNN_VENV / "bin" / "python")
    return Path(path) if path and Path(path).exists() else None


def _unavailable(cfg) -> Optional[str]:  # noqa: ANN001
    if toolkit_python(cfg) is not None:
        return None
    if cfg.target.format == "rknn_v1":
        return V1_HELP
    return ("the rknn-toolkit2 venv (.venv-rknn) is missing: run `python3 -m stages.bootstrap setup`, which "
            "creates it from stages/formats/rknn_requirements.txt (or set RKNN_TOOLKIT2_PYTHON)")


def pixels(cfg, calibration: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Undo the model's normalization: the toolkit gets raw pixels and normalizes on the NPU."""
    mean = np.asarray(cfg.model.input.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(cfg.model.input.std, np.float32).reshape(1, -1, 1, 1)
    return np.clip(np.round(calibration * std + mean), 0, 255).astype(np.float32)


def float_subgraphs(model: Path) -> list[list[str]]:
    """quant.float_outputs on RKNN: the ops that compute the graph's outputs (a classifier's Gemm) run
    in float16 through the toolkit's hybrid quantization, so the logits are not rounded to 8 bits."""
    import onnx

    from stages.core.onnxgraph import output_heads

    heads = output_heads(onnx.load(str(model), load_external_data=False).graph)
    if not heads:
        raise BuildError(f"quant.float_outputs: no op computes an output of {model}",
                         hint="set quant.float_outputs=false for this model")
    return heads


def levers(cfg, layout) -> tuple[str, bool]:  # noqa: ANN001
    """The toolkit's settings that convert builds with: the rung that the quantize stage chose on the
    validation split (quantize.json's vendor_levers, when the scheme has a vendor_ladder), else the
    scheme's vendor_algorithm (or the target's) and float_outputs."""
    chosen = None
    if cfg.quant.vendor_ladder and layout.quantize_report.exists():
        chosen = (json.loads(layout.quantize_report.read_text()).get("vendor_levers") or {}).get("chosen")
    if chosen:
        return chosen["algorithm"], bool(chosen["float_outputs"])
    return algorithm(cfg), bool(cfg.quant.float_outputs)


def write_prepared(cfg, prepared: Path, model_src: Path, calibration: np.ndarray, quantized_algorithm: str,  # noqa: ANN001
                   float16_outputs: bool) -> list[Path]:
    """The toolkit's inputs in one folder: the float ONNX, the calibration pixels and rknn_config.json."""
    rk = _rknn(cfg)
    (prepared / "dataset").mkdir(parents=True, exist_ok=True)
    model = prepared / "model.onnx"
    model.write_bytes(model_src.read_bytes())
    tensors = pixels(cfg, calibration[:cfg.quant.calibration.num_samples])
    names = []
    for i, tensor in enumerate(tensors):  # NCHW float32 pixels, one file per sample, as dataset.txt wants
        name = f"dataset/{i:04d}.npy"
        np.save(prepared / name, tensor[None])
        names.append(name)
    (prepared / "dataset.txt").write_text("\n".join(names) + "\n")
    config = {"toolkit": 1 if cfg.target.format == "rknn_v1" else 2, "platform": rk.platform,
              "mean": [list(cfg.model.input.mean)], "std": [list(cfg.model.input.std)],
              "quantized_dtype": rk.quantized_dtype, "quantized_algorithm": quantized_algorithm,
              "optimization_level": rk.optimization_level, "onnx": "model.onnx", "dataset": "dataset.txt"}
    if float16_outputs:
        config["float_subgraphs"] = float_subgraphs(model)
    (prepared / "rknn_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return [model, prepared / "dataset.txt", prepared / "rknn_config.json"]


def _prepare(cfg, layout) -> list[Path]:  # noqa: ANN001
    return write_prepared(cfg, layout.prepared_dir, layout.quantized, np.load(layout.calibration), *levers(cfg, layout))


def _deterministic_prefix() -> list[str]:
    """The toolkit's compiler writes heap addresses into the .rknn: with address-space layout
    randomization off (setarch -R) and a fixed hash seed, identical inputs give identical bytes."""
    setarch = shutil.which("setarch")
    return [setarch, platform.machine(), "-R"] if setarch else []


def job_config(prepared: Path) -> dict:
    return json.loads((prepared / "rknn_config.json").read_text())


def _job_files(prepared: Path, job: dict) -> list[str]:
    """The files of ``prepared`` a job reads (relative paths): its config, the ONNX, the dataset list and
    what it lists. Leftovers of a killed run (the hybrid steps' model.model, ...) are not among them."""
    names = ["rknn_config.json", job["onnx"], job["dataset"]]
    missing = [name for name in names if not (prepared / name).is_file()]
    listed = [] if missing else (prepared / job["dataset"]).read_text().split()
    missing += [name for name in listed if not (prepared / name).is_file()]
    if missing:
        raise BuildError(f"the RKNN job in {prepared} lacks {', '.join(missing[:3])}",
                         hint="rebuild the prepared folder: `dvc repro` (or `python -m stages.prepare` for a "
                              "target the toolkit cannot build here)")
    return [*names, *listed]


def work_dir(prepared: Path, job: dict) -> Path:
    """Where the toolkit runs a job: a folder named by the digest of what it reads, under /tmp/edgebuild-rknn.
    Every run of the same inputs (convert's, evaluate's rebuilds, the quantize stage's ladder, on any clone)
    sees the same paths, which reach the compiler's heap; the toolkit's own scratch files (the hybrid
    steps' model.model, ...) stay out of the prepared folder; and two runs of one job take turns."""
    digest = hashlib.sha256()
    for name in _job_files(prepared, job):
        digest.update(name.encode() + b"\0" + hashlib.sha256((prepared / name).read_bytes()).digest())
    root = Path("/tmp") if os.access("/tmp", os.W_OK) else Path(tempfile.gettempdir())
    return root / "edgebuild-rknn" / digest.hexdigest()[:16]


@contextmanager
def _private_copy(prepared: Path, job: dict) -> Iterator[Path]:
    """A fresh copy of the job's inputs in its work_dir, held under a lock (a second run of the same inputs,
    e.g. from another `dvc repro` beside this one, waits), and removed afterwards."""
    import fcntl

    work = work_dir(prepared, job)
    work.parent.mkdir(exist_ok=True)
    with open(f"{work}.lock", "a") as lock:  # a few bytes left in /tmp/edgebuild-rknn: unlinking a lock races
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.rmtree(work, ignore_errors=True)
        try:
            for name in _job_files(prepared, job):
                (work / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(prepared / name, work / name)
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_worker(cfg, layout, output: Path, simulate: Optional[dict] = None,  # noqa: ANN001
               prepared: Optional[Path] = None) -> dict:
    """Run the toolkit on the prepared inputs (layout.prepared_dir unless ``prepared`` names another
    folder), in a private copy of them (work_dir: cwd = that folder, so dataset.txt stays relative), and
    export to ``output``; the exported file's name ends up inside the .rknn."""
    python = toolkit_python(cfg)
    if python is None:
        raise BuildError(_unavailable(cfg) or "RKNN toolkit missing")
    prepared = prepared or layout.prepared_dir
    job = job_config(prepared)
    hybrid = f", float16: {job['float_subgraphs']}" if job.get("float_subgraphs") else ""
    console.print(f"RKNN toolkit {job['toolkit']}: {cfg.target.rknn.platform} "
                  f"({job['quantized_dtype']}, {job['quantized_algorithm']}{hybrid})")
    with _private_copy(prepared, job) as work:
        job["output"] = output.name
        job_path, result_path = work / "job.json", work / "result.json"
        job_path.write_text(json.dumps(job))
        # Always the same argv (the file may hold null): argv sits on the stack, and the compiler's
        # leaked addresses must not depend on whether a simulation follows.
        (work / "simulate.json").write_text(json.dumps(simulate))
        # A fixed, minimal environment: its size shifts the stack, and with it the leaked addresses.
        # TQDM_DISABLE: progress strings vary with timing and shift the heap too.
        env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "PYTHONHASHSEED": "0",
               "LANG": "C.UTF-8", "TQDM_DISABLE": "1"}
        proc = subprocess.run([*_deterministic_prefix(), str(python), str(WORKER), "job.json", "result.json",
                               "simulate.json"], cwd=work, capture_output=True, text=True, env=env)
        log = (proc.stdout + proc.stderr)[-3000:]
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            raise BuildError(f"the RKNN toolkit crashed with {name} while building for {job['platform']}:\n{log}",
                             hint="a compiler crash is a toolkit bug for this graph/platform: try another "
                                  "target.rknn.optimization_level or quantized_algorithm, or report it to Rockchip")
        if not result_path.exists():
            raise BuildError(f"the RKNN worker exited {proc.returncode} without a result:\n{log}")
        result = json.loads(result_path.read_text())
        if (work / output.name).exists():
            shutil.move(work / output.name, output)
    if not result.get("ok"):
        hint = "check rknn_config.json in the prepared folder against the toolkit's documentation"
        if "hybrid_quantization" in str(result.get("error")) and job.get("float_subgraphs"):
            hint = (f"the float16 subgraphs {job['float_subgraphs']} (quant.float_outputs, from "
                    "stages.core.onnxgraph.output_heads) must start at tensors the toolkit's graph still has; "
                    "set quant.float_outputs=false to build this model without them")
        raise BuildError(f"RKNN {job['platform']}: {result.get('error')}\n{log}", hint=hint)
    return result


def _toolkit_version(cfg) -> str:  # noqa: ANN001
    python = toolkit_python(cfg)
    dist = "rknn-toolkit" if cfg.target.format == "rknn_v1" else "rknn-toolkit2"
    out = subprocess.run([str(python), "-c", f"from importlib.metadata import version; print(version('{dist}'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def device_inputs(cfg) -> list[dict]:  # noqa: ANN001
    """What the board feeds: uint8 RGB pixels, NHWC; mean/std are applied on the NPU."""
    spec = cfg.model.input
    n, c, h, w = spec.shape
    return [{"name": spec.name, "shape": [n, h, w, c], "dtype": "uint8", "layout": "NHWC",
             "preprocess": {"color": spec.color.value, "resize": spec.resize, "crop": [h, w],
                            "interpolation": spec.interpolation, "mean": [0.0] * c, "std": [1.0] * c},
             "normalized_on_device": {"mean": list(spec.mean), "std": list(spec.std)}}]


def _build(cfg, layout, out: Path, manifest: dict) -> dict:  # noqa: ANN001 - see Format.build
    # Export under the artifact's own name in a private folder: the name of the exported file
    # ends up inside the .rknn, so exporting straight to a random temp name would break
    # byte-reproducibility.
    with tempfile.TemporaryDirectory() as tmp:
        exported = Path(tmp) / layout.artifact.name
        run_worker(cfg, layout, exported)
        out.write_bytes(exported.read_bytes())
    dist = "rknn-toolkit" if cfg.target.format == "rknn_v1" else "rknn-toolkit2"
    rk, job = cfg.target.rknn, job_config(layout.prepared_dir)
    return {"inputs": device_inputs(cfg), "toolchain": {dist: _toolkit_version(cfg)},
            "rknn": {"platform": rk.platform, "quantized_dtype": rk.quantized_dtype,
                     "quantized_algorithm": job["quantized_algorithm"], "optimization_level": rk.optimization_level,
                     "float16_subgraphs": job.get("float_subgraphs", [])}}  # no timings: the
    # manifest's bytes are the build's, reproducible; the convert stage's profile has its time


def _gold(cfg, layout, inputs: list[np.ndarray], threads: int) -> GoldRun:  # noqa: ANN001
    """The toolkit's simulator: rebuild from the same ONNX in one process (a loaded .rknn cannot
    run there), check the rebuild is byte-identical to the artifact, run the gold inputs, and save
    the toolkit's per-layer accuracy_analysis."""
    analysis = layout.analysis_dir / "rknn_accuracy_analysis"
    analysis.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        gold, outputs, rebuilt = Path(tmp) / "gold.npy", Path(tmp) / "outputs.npy", Path(tmp) / layout.artifact.name
        np.save(gold, np.concatenate(inputs))
        from runtime.backends.rknn import data_format
        from runtime.manifest import Manifest

        manifest = Manifest.read(layout.manifest)
        layout_of_input = data_format(manifest.inputs[0])
        expected = hashlib.sha256(layout.artifact.read_bytes()).hexdigest()
        for attempt in range(1, REBUILDS + 1):
            result = run_worker(cfg, layout, rebuilt, simulate={"inputs": str(gold), "outputs": str(outputs),
                                                                "data_format": layout_of_input,
                                                                "analysis_dir": str(analysis), "expect_sha256": expected})
            if result.get("matches", True):
                break
            console.print(f"[yellow]rebuild {attempt} of {REBUILDS} is not byte-identical to the artifact[/]")
        else:
            raise BuildError(f"the RKNN simulator's {REBUILDS} rebuilds of {layout.artifact} from the same ONNX all "
                             "differ from its bytes, so the simulator would judge other bytes than the board runs; "
                             "no verdict",
                             hint="the toolkit's build is not deterministic here (its compiler writes heap addresses "
                                  "into the .rknn): rerun `python -m stages.convert` and evaluate; if it persists, "
                                  "report it with the prepared folder (rknn_config.json)")
        same = hashlib.sha256(rebuilt.read_bytes()).hexdigest() == expected  # what was simulated, checked here too
        logits = np.load(outputs)
        shape = manifest.outputs[0].shape[1:]
        if all(isinstance(d, int) for d in shape) and int(np.prod(shape)) == logits.shape[1]:
            logits = logits.reshape(len(logits), *shape)
    return GoldRun(logits, f"rknn-simulator:{cfg.target.rknn.platform}", None,
                   note="RKNN PC simulator: accuracy only, no device latency",
                   extra={"simulated_model_is_the_artifact": same, "rebuilds": attempt, "times": result["times"],
                          "accuracy_analysis": str(analysis.relative_to(layout.root))})


TOOLCHAIN = ("torch", "onnx", "onnxsim", "onnxruntime")
FORMATS.register("rknn")(Format("rknn", _build, TOOLCHAIN, prepare=_prepare, unavailable=_unavailable, gold=_gold))
FORMATS.register("rknn_v1")(Format("rknn", _build, TOOLCHAIN, prepare=_prepare, unavailable=_unavailable,
                                   gold=_gold))
