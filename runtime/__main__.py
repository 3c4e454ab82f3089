"""python -m runtime ARTIFACT IMAGE: the model's answer (top-5 classes; yaw/pitch/roll for head pose) and latency.

python -m runtime verify ARTIFACT_DIR: the artifact proved on this device against its build (runtime/verify.py).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import load, load_image
from .errors import exit_code, say_bug


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def main(argv: list[str] | None = None) -> int:
    """Under the one error contract (runtime.errors.exit_code): a user error is one line and exit 2,
    anything else is said to be a bug, with its traceback (exit 3)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["verify"]:
        from .verify import BUG, main as verify_main

        def bug(where: str) -> int:
            say_bug(where)
            return BUG

        return exit_code(lambda: verify_main(argv[1:]), "python -m runtime verify", bug=bug)
    return exit_code(lambda: infer(argv), "python -m runtime")


def infer(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime", description=__doc__)
    parser.add_argument("artifact", help="model.<ext> with its manifest.json beside it")
    parser.add_argument("image", help="an image file (any format Pillow reads)")
    parser.add_argument("--runs", type=positive, default=20, help="timed runs after 3 warm-up runs")
    parser.add_argument("--threads", type=positive, default=None, help="intra-op threads (default: manifest)")
    args = parser.parse_args(argv)
    session = load(args.artifact, threads=args.threads)
    x = session.preprocess(load_image(args.image))
    for _ in range(3):
        logits = session.run(x)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        logits = session.run(x)
        times.append(time.perf_counter() - start)
    print(f"{session.manifest.model} on {session.manifest.target} ({session.manifest.quant}), "
          f"backend {session.backend.name}")
    if session.manifest.task == "head_pose":  # the image is a face crop
        from .tasks.headpose import decode

        yaw, pitch, roll = decode(np.asarray(logits).reshape(1, -1))[0]
        print(f"  yaw {yaw:+.1f}  pitch {pitch:+.1f}  roll {roll:+.1f}  (degrees)")
    elif session.manifest.task == "face_classification":  # MTCNN nets: p(face) is the last channel
        out = np.asarray(logits)
        face = out[:, -1] if out.ndim == 4 else out[..., -1]
        where = f"best of the {face.shape[-2]}x{face.shape[-1]} window map" if out.ndim == 4 else "the input"
        print(f"  p(face) {float(face.max()):.3f} ({where}; output {list(out.shape)})")
    elif session.manifest.task != "classification":
        print(f"  output {session.outputs[0].name}: {list(np.asarray(logits).shape)} (task "
              f"{session.manifest.task!r} has no summary here)")
    else:
        probs = softmax(np.asarray(logits, dtype=np.float64).reshape(-1))
        labels = session.labels or tuple(str(i) for i in range(probs.size))
        for i in np.argsort(probs)[::-1][:5]:
            print(f"  {probs[i]:6.3f}  {i:4d}  {labels[i]}")
    print(f"latency: median {1e3 * float(np.median(times)):.2f} ms over {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
