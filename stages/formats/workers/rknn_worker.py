"""Run Rockchip's RKNN toolkit on one job, inside the toolkit's own venv, in its own process.

    <venv-rknn>/bin/python stages/formats/workers/rknn_worker.py job.json result.json [simulate.json]

Standard library + numpy + the toolkit only: it runs under the toolkit's pins (onnx<=1.18,
protobuf<7), never the build's. The parent turns a crash (the compiler can SIGABRT) or any
non-zero step into a clear error. Every toolkit call's status is checked: config() raises,
build()/init_runtime()/export_rknn() return non-zero, inference() returns None.

Job keys: toolkit (1 or 2), onnx, platform, mean, std, quantized_dtype, quantized_algorithm,
optimization_level, dataset (a dataset.txt), output (.rknn path). simulate.json, read only after
the export: {inputs: .npy (N x H x W x C uint8), outputs: .npy, analysis_dir, expect_sha256: when set,
a build with other bytes is not simulated and the result says ``matches: false``}. It is a separate
file so that the build does exactly the same work (and allocations: the compiler writes heap
addresses into the .rknn) whether or not a simulation follows; the evaluate stage relies on that
to check that the model it simulates is byte-identical to the artifact. simulate.json's
``data_format`` (nhwc or nchw) comes from the manifest, through the rule the board's runtime uses
(runtime/backends/rknn.py, ``data_format``).

Hybrid quantization (job key float_subgraphs: [[first tensor, last tensor], ...] kept in float16)
replaces build(): hybrid_quantization_step1 (custom_hybrid) writes <onnx stem>.model, .data and
.quantization.cfg into the working folder with those layers marked float16; a fresh RKNN object
builds from them (hybrid_quantization_step2; with mmse, the range search runs there); the three
files are removed afterwards.

Python 3.6 grammar (no ``from __future__ import annotations``, no PEP 604/585 types): rknn-toolkit
1.x, for RK1808, runs on Python 3.6-3.8. tests/test_runtime_python_versions.py parses it so.
"""
import json
import os
import shutil
import sys
import threading
import time
import traceback
from typing import Callable, Optional


class StepFailed(Exception):
    pass


def check(step: str, call: Callable[[], object], steps: dict) -> object:
    """Run one toolkit call. It fails in three ways: it raises (a ValueError wrapping the whole
    traceback), returns non-zero (build, init_runtime, export_rknn) or returns None (inference)."""
    try:
        status = call()
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        steps[step] = "raised"
        raise StepFailed(f"rknn {step} raised: {lines[-1] if lines else type(exc).__name__}") from None
    steps[step] = status if isinstance(status, int) else ("ok" if status is not None else None)
    if status is None or (isinstance(status, int) and status != 0):
        raise StepFailed(f"rknn {step} failed (returned {status!r}); see the toolkit log above")
    return status


def configure(rknn: object, job: dict) -> None:
    if job["toolkit"] == 1:  # rknn-toolkit 1.7 (RK1808 / RV1126); not installable on the build host
        rknn.config(mean_values=job["mean"], std_values=job["std"], reorder_channel="0 1 2",  # type: ignore[attr-defined]
                    target_platform=[job["platform"]], quantized_dtype=job["quantized_dtype"],
                    quantized_algorithm=job["quantized_algorithm"],
                    optimization_level=job["optimization_level"])
    else:
        rknn.config(mean_values=job["mean"], std_values=job["std"],  # type: ignore[attr-defined]
                    target_platform=job["platform"], quantized_dtype=job["quantized_dtype"],
                    quantized_algorithm=job["quantized_algorithm"],
                    optimization_level=job["optimization_level"])


def hybrid_build(rknn: object, job: dict, steps: dict) -> object:
    """Build with the subgraphs in job["float_subgraphs"] in float16 and the rest as
    quantized_algorithm says. Returns the RKNN object that holds the built model."""
    from rknn.api import RKNN

    if job["toolkit"] != 2:
        raise StepFailed("float subgraphs (custom_hybrid) need rknn-toolkit2's hybrid_quantization_step1")
    subgraphs = [list(pair) for pair in job["float_subgraphs"]]
    stem = os.path.splitext(os.path.basename(job["onnx"]))[0]
    model, data, quantization = stem + ".model", stem + ".data", stem + ".quantization.cfg"
    built = RKNN(verbose=False)
    try:
        check("hybrid_quantization_step1",
              lambda: rknn.hybrid_quantization_step1(dataset=job["dataset"], proposal=False,  # type: ignore[attr-defined]
                                                     custom_hybrid=subgraphs), steps)
        configure(built, job)
        check("hybrid_quantization_step2",
              lambda: built.hybrid_quantization_step2(model_input=model, data_input=data,
                                                      model_quantization_cfg=quantization), steps)
    except BaseException:
        built.release()
        raise
    finally:
        rknn.release()  # type: ignore[attr-defined]
        for name in (model, data, quantization):
            if os.path.exists(name):
                os.remove(name)
    return built


def one_thread() -> None:
    """Make the toolkit's work run on this thread alone, so that its heap layout, and with it the
    addresses the compiler writes into the .rknn, is the same from run to run.

    Two threads broke that (measured on BlazeFace's hybrid build: every run's bytes differed):
    tqdm's monitor thread, which wakes on a timer, and the thread the toolkit starts for mmse's
    range search in hybrid_quantization_step2, which the main thread joins while the finished
    thread is still freeing its memory. tqdm's monitor is switched off, and a thread whose target
    is the toolkit's runs to completion inside start(): the toolkit only starts and joins it.
    With both, 10 of 10 runs gave the same bytes."""
    try:
        from tqdm import tqdm
        tqdm.monitor_interval = 0
    except ImportError:
        pass
    start = threading.Thread.start

    def start_inline(thread: threading.Thread) -> None:
        target = getattr(thread, "_target", None)
        owner = getattr(target, "__self__", target)
        module = getattr(owner, "__module__", "") or ""
        if not module.startswith("rknn") or not hasattr(thread, "_started") or not hasattr(thread, "_is_stopped"):
            start(thread)
            return
        thread._started.set()  # type: ignore[attr-defined]
        try:
            thread.run()
        finally:
            thread._is_stopped = True  # type: ignore[attr-defined]  # join() and is_alive() see it done

    threading.Thread.start = start_inline  # type: ignore[method-assign]


def run(job: dict, simulate_path: Optional[str]) -> dict:
    import numpy as np

    one_thread()
    from rknn.api import RKNN

    steps: dict = {}
    times: dict = {}
    rknn = RKNN(verbose=False)
    try:
        start = time.time()
        try:
            configure(rknn, job)
        except Exception as exc:  # config() raises on a bad platform or dtype, wrapping a whole traceback
            lines = str(exc).strip().splitlines()
            raise StepFailed(f"rknn config rejected the target: {lines[-1] if lines else exc!r}") from None
        check("load_onnx", lambda: rknn.load_onnx(model=job["onnx"]), steps)
        if job.get("float_subgraphs"):
            rknn = hybrid_build(rknn, job, steps)
        else:
            check("build", lambda: rknn.build(do_quantization=True, dataset=job["dataset"]), steps)
        times["build_s"] = round(time.time() - start, 2)
        check("export_rknn", lambda: rknn.export_rknn(job["output"]), steps)
        sim = None
        if simulate_path:
            with open(simulate_path) as f:
                sim = json.load(f)
        if sim and sim.get("expect_sha256"):  # simulate only the artifact's own bytes
            import hashlib

            with open(job["output"], "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != sim["expect_sha256"]:
                    return {"ok": True, "steps": steps, "times": times, "matches": False}
        if sim:
            start = time.time()
            check("init_runtime", rknn.init_runtime, steps)
            inputs = np.load(sim["inputs"])
            outputs = []
            for i in range(len(inputs)):
                out = check(f"inference[{i}]", lambda: rknn.inference(inputs=[inputs[i:i + 1]], data_format=sim["data_format"]),
                            steps)
                outputs.append(np.asarray(out[0]).reshape(1, -1))
            np.save(sim["outputs"], np.concatenate(outputs))
            times["simulate_s"] = round(time.time() - start, 2)
            if sim.get("analysis_dir"):
                first = sim["analysis_dir"] + "/input0.npy"
                np.save(first, inputs[0:1].transpose(0, 3, 1, 2))  # accuracy_analysis reads .npy as NCHW
                start = time.time()
                check("accuracy_analysis",
                      lambda: rknn.accuracy_analysis(inputs=[first], output_dir=sim["analysis_dir"]), steps)
                for dump in ("golden", "simulator"):  # per-layer text dumps, ~340 MB for MobileNetV2
                    shutil.rmtree(os.path.join(sim["analysis_dir"], dump), ignore_errors=True)
                os.remove(first)
                times["accuracy_analysis_s"] = round(time.time() - start, 2)
        return {"ok": True, "steps": steps, "times": times}
    except StepFailed as exc:
        return {"ok": False, "error": str(exc), "steps": steps, "times": times}
    finally:
        rknn.release()


def main() -> int:
    job_path, result_path = sys.argv[1], sys.argv[2]
    with open(job_path) as f:
        job = json.load(f)
    try:
        result = run(job, sys.argv[3] if len(sys.argv) > 3 else None)
    except Exception:
        result = {"ok": False, "error": "toolkit raised:\n" + traceback.format_exc(limit=5)}
    with open(result_path, "w") as f:
        json.dump(result, f, indent=2)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
