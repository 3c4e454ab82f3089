"""Runs inside the arm64 userland, with the board's venv: artifacts on saved inputs, through the
runtime a Pi installs, then `runtime verify` on each artifact folder (what a user runs on a Pi: the
same function as `python -m runtime verify`, in this one emulated interpreter). Imports numpy and
runtime only (what `pip install ./runtime[onnx]` gave the board).

    python worker.py jobs.json    # [{"artifact": ..., "inputs": ....npy, "outputs": ....npy}, ...]

A job with ``"verify": false`` (evaluate's device-true run, board.py) only runs its inputs. A job without
``"inputs"`` only runs `runtime verify` (the cross-check on the artifact's own board CPU, whose subset
evaluate's device-true run already ran there).

Each artifact runs all its inputs, in order: the model's declared board subset of its gold set.

One process per emulated CPU: importing numpy, onnxruntime and torch under qemu takes seconds,
so every artifact runs in the same interpreter.
"""
from __future__ import annotations

import importlib.util
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from runtime import load
from runtime.verify import main as verify_main


# `runtime verify` here: the run above already put every input of the subset (up to 100) through the same
# session, and the stage compares each with x86's reference; verify is the Pi user's command, checked end
# to end (manifest, golden outputs, its timing loop) on a few golden inputs. Its emulated timings are not
# a Pi's, so one warm-up and one timed run exercise that code as well as more would. With 8 inputs, 3 runs
# and a warm-up, verify took 12 inferences per artifact and CPU; now 6. For MobileNetV2 and WHENet, at
# 0.4-1.0 s each under qemu (arm64.json), those 12 took about 40 s of each CPU's 130 s process.
VERIFY_INPUTS, VERIFY_RUNS, VERIFY_WARMUP = 4, 1, 1


def run(job: dict) -> dict:
    session = load(job["artifact"], threads=1)
    package = "torch" if session.manifest.format == "torchscript" else "onnxruntime"
    info = {"artifact": job["artifact"], "backend": session.backend.name, "machine": platform.machine(),
            "backend_version": f"{package} {metadata.version(package)}", "emulated_ms_per_input": None, "n": 0}
    if job.get("inputs"):
        batch = np.load(job["inputs"])
        start = time.perf_counter()
        results = [np.asarray(session.run(x)) for x in batch]
        info["emulated_ms_per_input"] = 1e3 * (time.perf_counter() - start) / len(results)
        info["n"] = len(results)
        np.save(job["outputs"], np.concatenate(results))
    if not job.get("verify", True):  # evaluate's device-true run: the outputs only
        return info
    # `python -m runtime verify FOLDER`, the command a Pi user types, through its own entry point: the first
    # VERIFY_INPUTS golden inputs, a few timed runs (emulated: not Pi timings).
    folder = Path(job["artifact"]).parent
    out = Path(job["outputs"]).with_suffix(".verify.json")  # one per emulated CPU: both run at once
    try:
        code = verify_main([str(folder), "--runs", str(VERIFY_RUNS), "--warmup", str(VERIFY_WARMUP),
                            "--max-inputs", str(VERIFY_INPUTS),
                            "--json", str(out)])
        checked = {**json.loads(out.read_text()), "exit_code": code} if out.exists() else {
            "passed": False, "exit_code": code, "failures": [f"verify exited {code} without a verify.json"]}
    except Exception as exc:  # noqa: BLE001 - reported, and the test fails on it
        checked = {"passed": False, "failures": [f"verify raised {type(exc).__name__}: {exc}"]}
    # what the board's install brought: the runtime, never the build's code or tools
    return {**info, "build_code_installed": sorted(m for m in ("stages", "hydra", "dvc", "omegaconf")
                                                   if importlib.util.find_spec(m) is not None), "verify": checked}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    print(json.dumps([run(job) for job in jobs]))
