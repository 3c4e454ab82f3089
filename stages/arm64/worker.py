"""Runs inside the arm64 userland, with the board's venv: artifacts on saved inputs, through the
runtime a Pi installs. Imports numpy and runtime only (what `pip install .` gave the board).

    python worker.py jobs.json    # [{"artifact": ..., "inputs": ....npy, "outputs": ....npy}, ...]

One process per emulated CPU: importing numpy, onnxruntime and torch under qemu takes seconds,
so every artifact runs in the same interpreter.
"""
from __future__ import annotations

import json
import platform
import sys
import time

import numpy as np

from runtime import load


def run(job: dict) -> dict:
    batch = np.load(job["inputs"])
    session = load(job["artifact"], threads=1)
    start = time.perf_counter()
    results = [np.asarray(session.run(x)) for x in batch]
    emulated_ms = 1e3 * (time.perf_counter() - start) / len(batch)
    np.save(job["outputs"], np.concatenate(results))
    return {"artifact": job["artifact"], "backend": session.backend.name, "machine": platform.machine(),
            "emulated_ms_per_input": emulated_ms}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    print(json.dumps([run(job) for job in jobs]))
