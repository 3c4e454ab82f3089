"""python -m runtime verify ARTIFACT_DIR: prove an artifact on the device itself, the board-side twin
of the build's gold check.

The build's evaluate stage writes ``golden.npz`` beside the artifact: real gold inputs in the
artifact's own input format, the outputs the build judged the artifact by (its device-true outputs)
and the tolerance it derived. Here, on the board, ``verify``

  * checks the artifact's sha256 and the manifest's seal (``runtime.load``) and the golden file's
    sha256 (recorded in metrics.json);
  * runs every golden input and compares the outputs with the tolerance, and the task's decision
    (top-1; face or not; angles within the task's bound) wherever the build's output was not a tie;
  * times the artifact after a warm-up: p50/p90/p99 over ``--runs`` runs, at the manifest's threads;
  * checks the backend's version against the one the build verified with;
  * prints PASS or FAIL with what differs, and writes verify.json (metrics.json's section shape).

Exit codes: 0 PASS, 1 FAIL, 2 a user error (missing or corrupt files), 3 not runnable here (an
.rknn on a PC: it runs on the board or in the build's simulator). Needs the runtime and the
artifact's backend only.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import BackendUnavailable, RuntimeLoadError
from .manifest import MANIFEST_NAME, Manifest

GOLDEN_NAME = "golden.npz"
PASS, FAIL, USER_ERROR, NOT_HERE, BUG = 0, 1, 2, 3, 4  # a bug: not 3, which means 'not here'
BACKEND_PACKAGE = {"onnx": "onnxruntime", "onpu": "onnxruntime", "torchscript": "torch", "rknn": "rknn-toolkit-lite2"}


def read_golden(folder: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    path = folder / GOLDEN_NAME
    try:
        data = path.read_bytes()
        metrics = json.loads((folder / "metrics.json").read_text())
    except FileNotFoundError as exc:
        raise RuntimeLoadError(f"{exc.filename} is missing: copy the whole artifact folder the build wrote "
                               "(model, manifest.json, metrics.json, golden.npz)") from None
    except (OSError, ValueError) as exc:
        raise RuntimeLoadError(f"{folder / 'metrics.json'} cannot be read ({exc}); re-copy the artifact folder") from None
    recorded = (metrics.get("golden") or {}).get("sha256") if isinstance(metrics, dict) else None
    if recorded != hashlib.sha256(data).hexdigest():
        raise RuntimeLoadError(f"{path} does not match the sha256 its build recorded in metrics.json: it is corrupt "
                               "or from another build; re-copy the artifact folder")
    with np.load(path, allow_pickle=False) as z:
        return z["inputs"], z["outputs"], json.loads(str(z["meta"]))


def decisions(task: str, outputs: np.ndarray, meta: dict) -> np.ndarray:
    """The decision each output stands for, and (second column) whether it is a clear one: the
    winning margin exceeds the tolerance, so a difference within tolerance cannot flip it."""
    flat = outputs.reshape(len(outputs), -1)
    tol = float(meta["atol"])
    if task == "face_classification":  # [.., p(not face), p(face)]: a map (P-Net) is judged at its best window
        face = flat.reshape(len(flat), outputs.shape[1], -1)[:, -1].max(1) if outputs.ndim == 4 else flat[:, -1]
        threshold = float(meta.get("threshold", 0.5))
        return np.stack([face >= threshold, np.abs(face - threshold) > tol], 1)
    if task == "face_detection":  # [N, anchors, values], score logit last: a face where the best anchor passes
        best = outputs.reshape(len(outputs), -1, outputs.shape[-1])[..., -1].max(1)
        p = float(meta.get("threshold", 0.5))
        cut = float(np.log(p / (1.0 - p)))
        return np.stack([best >= cut, np.abs(best - cut) > tol], 1)
    if task == "head_pose":
        return np.stack([np.zeros(len(flat), bool), np.zeros(len(flat), bool)], 1)  # judged by angles below
    top2 = np.sort(flat, 1)[:, -2:]
    return np.stack([flat.argmax(1), (top2[:, 1] - top2[:, 0]) > tol], 1)


def compare(task: str, expected: np.ndarray, got: np.ndarray, meta: dict) -> tuple[dict, list[str]]:
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64)).reshape(len(got), -1).max(1)
    atol = float(meta["atol"])
    failures = [f"golden input {i}: max |output - expected| {d:.4g} > tolerance {atol:.4g}"
                for i, d in enumerate(diff) if d > atol]
    want, have = decisions(task, expected, meta), decisions(task, got, meta)
    same = want[:, 0] == have[:, 0]
    failures += [f"golden input {i}: decision {have[i, 0]} where the build measured {want[i, 0]}"
                 for i in np.flatnonzero(~same & want[:, 1].astype(bool))]
    fidelity = {"n": int(len(got)), "max_abs_diff": float(diff.max()) if len(diff) else 0.0,
                "agreement": float(same.mean()) if len(same) else 1.0, "atol": atol}
    if task == "head_pose":
        from .tasks.headpose import decode

        err = np.abs(decode(got.reshape(len(got), -1)) - decode(expected.reshape(len(expected), -1))).max(1)
        within = float(meta.get("agree_within_deg", 5.0))
        failures += [f"golden input {i}: angles {e:.2f} deg from the build's (bound {within})"
                     for i, e in enumerate(err) if e > within]
        fidelity.update(agreement=float((err <= within).mean()), max_error_deg=float(err.max()))
    return fidelity, failures


def latency(session: Any, x: np.ndarray, warmup: int, runs: int) -> dict:
    for _ in range(warmup):
        session.run(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(x)
        times.append(1e3 * (time.perf_counter() - start))
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    # What the run's refusal of NaN/Inf inputs (on by default for float inputs) costs: its one
    # np.isfinite pass, timed alone on the same input, as a share of the run.
    check = []
    if x.dtype.kind == "f":
        for _ in range(runs):
            start = time.perf_counter()
            np.isfinite(x).all()
            check.append(1e3 * (time.perf_counter() - start))
    finite = float(np.median(check)) if check else None
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "runs": runs, "warmup": warmup,
            "finite_check_ms": finite, "finite_check_share": finite / float(p50) if finite is not None and p50 else None}


def verify(folder: Path, runs: int = 50, warmup: int = 10, threads: Optional[int] = None,
           max_inputs: Optional[int] = None) -> dict:
    from . import load

    artifact = Manifest.read(folder / MANIFEST_NAME).artifact
    inputs, expected, meta = read_golden(folder)
    total = len(inputs)
    inputs, expected = inputs[:max_inputs], expected[:max_inputs]
    session = load(folder / artifact, threads=threads)
    manifest = session.manifest
    outputs = np.concatenate([np.asarray(session.run(x)) for x in inputs])
    fidelity, failures = compare(manifest.task, expected, outputs, meta)
    package = BACKEND_PACKAGE.get(manifest.format)
    here = _version(package) if package else None
    built = manifest.toolchain_version(package) if package else None
    result = {
        "model": manifest.model, "target": manifest.target, "quant": manifest.quant, "format": manifest.format,
        "board": {"machine": platform.machine(), "cpu": _cpu(), "python": platform.python_version()},
        "backend": session.backend.name, "backend_version": {"package": package, "here": here, "built": built,
                                                             "same": built is None or built == here},
        "golden": {"n": int(len(inputs)), "of": int(total), "verdict_from": meta.get("verdict_from")},
        "fidelity": fidelity,
        "latency_ms": {**latency(session, inputs[0], warmup, runs), "threads": manifest.threads(threads)},
        "passed": not failures, "failures": failures,
    }
    return result


def _version(package: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("model name", "cpu part", "hardware"):
                return f"{key.strip()}: {value.strip()}"
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_result(r: dict, folder: Path) -> None:
    version = r["backend_version"]
    print(f"{r['model']} on {r['target']} ({r['quant']}), {folder}")
    print(f"  backend {r['backend']}" + (f", {version['package']} {version['here']}" if version["package"] else ""))
    if not version["same"]:
        print(f"  WARNING: the build verified with {version['package']} {version['built']}; this board has "
              f"{version['here']}: pip install {version['package']}=={version['built']}")
    f = r["fidelity"]
    print(f"  golden inputs {f['n']}: max |diff| {f['max_abs_diff']:.4g} (tolerance {f['atol']:.4g}), "
          f"decisions agree {f['agreement']:.3f}")
    ms = r["latency_ms"]
    print(f"  latency ms: p50 {ms['p50']:.2f}  p90 {ms['p90']:.2f}  p99 {ms['p99']:.2f}  ({ms['runs']} runs after "
          f"{ms['warmup']} warm-up, {ms['threads']} thread(s))")
    if ms.get("finite_check_ms") is not None:
        print(f"  of which the non-finite input check: {ms['finite_check_ms']:.4f} ms "
              f"({100 * ms['finite_check_share']:.2f} % of p50)")
    for line in r["failures"][:10]:
        print(f"  - {line}")
    if len(r["failures"]) > 10:
        print(f"  ... and {len(r['failures']) - 10} more")
    print("PASS" if r["passed"] else "FAIL")


def main(argv: Optional[list[str]] = None) -> int:
    from .__main__ import positive

    parser = argparse.ArgumentParser(prog="python -m runtime verify", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="an artifact folder as the build wrote it")
    parser.add_argument("--runs", type=positive, default=50, help="timed runs (%(default)s)")
    parser.add_argument("--warmup", type=positive, default=10, help="untimed runs first (%(default)s)")
    parser.add_argument("--threads", type=positive, default=None, help="intra-op threads (default: manifest)")
    parser.add_argument("--max-inputs", type=positive, default=None, help="only the first N golden inputs (slow boards)")
    parser.add_argument("--json", type=Path, default=None, help="where to write verify.json (default: in the folder)")
    args = parser.parse_args(argv)
    try:
        result = verify(args.folder, args.runs, args.warmup, args.threads, args.max_inputs)
    except BackendUnavailable as exc:
        print(f"not verifiable here: {exc}", file=sys.stderr)
        return NOT_HERE
    print_result(result, args.folder)
    out = args.json or args.folder / "verify.json"
    try:
        out.write_text(json.dumps(result, indent=2) + "\n")
    except OSError as exc:
        print(f"error: cannot write {out} ({exc.strerror})", file=sys.stderr)
        return USER_ERROR
    return PASS if result["passed"] else FAIL


if __name__ == "__main__":
    sys.exit(main())
