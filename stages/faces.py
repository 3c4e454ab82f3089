"""faces: the face apps, checked end to end on each target's artifacts (conf/builds.yaml `detectors`).

    python -m stages.faces                     # writes artifacts/faces.json (the report shows it)

For every detector entry, of either family (`family: mtcnn`, the default: three MTCNN nets of one
target and scheme, the cascade in runtime/tasks/face_detection.py; `family: blazeface`: one
single-shot detector, runtime/tasks/blazeface.py), and optionally a head-pose build, the detector
runs twice, with the same code: once on the float PyTorch model(s) and once on the artifact(s)
through the board runtime.
  * lfw_subset: recall on the 100 faces, false positives on the 100 non-faces (any box = a hit);
  * whole photos with a known face (the head-pose gold set's photos): is the face found, how many
    boxes, IoU of the artifact's box with float's, and facenet-pytorch's own MTCNN as a cross-check
    of the cascade itself;
  * the tracking app (runtime/apps/track.py) on a video made from real photos (faces moving across a
    real background): frames per second on this CPU, detection ms per frame, and whether each face
    keeps one track ID, with and without head pose.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from stages.core.errors import BuildError
from stages.core.fileio import write_json
from stages.core.layout import PROJECT_ROOT, Layout
from stages.core.log import console, track, cli

OUT = PROJECT_ROOT / "artifacts" / "faces.json"
VIDEO_FRAMES = 60
NETS = ("pnet", "rnet", "onet")
# The tracking video's size per family: MTCNN's pyramid as before; BlazeFace at the seed's 640x480.
VIDEO_SIZE = {"mtcnn": (640, 360), "blazeface": (640, 480)}


def family(entry: dict) -> str:
    return entry.get("family", "mtcnn")


def detector_models(entry: dict) -> list[str]:
    """The detector's model(s) of an entry: MTCNN's three nets, or BlazeFace's one."""
    return [entry[net] for net in NETS] if family(entry) == "mtcnn" else [entry["detector"]]


def entry_models(entry: dict) -> list[tuple[str, str]]:
    """Every (model, quant) build an entry runs: its detector's, then its head pose's."""
    models = [(m, entry["quant"]) for m in detector_models(entry)]
    if entry.get("headpose"):
        models.append((entry["headpose"], entry.get("headpose_quant", entry["quant"])))
    return models


def artifact_path(plan: dict, model: str, target: str, quant: str) -> Path:
    for item in (plan.get("builds") or {}).values():
        if (item["model"], item["target"], item["quant"]) == (model, target, quant):
            return Layout.of("artifacts", model, target, quant, item["artifact"]).artifact
    raise BuildError(f"detectors: no build of {model} for {target}/{quant} in conf/builds.yaml",
                     hint="add it under `builds:`, or fix the detector entry")


def float_net(model: str, weights: Path | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The float PyTorch net as the cascade's Net: the weights the build started from
    (``_build/<model>/weights.pt``), or with ``weights=None`` and no build yet, the packaged ones."""
    import torch

    from stages.core.cli import load
    from stages.core.models import build_module, float_module

    cfg = load([f"model={model}"])
    module = float_module(cfg.model, weights) if weights else build_module(cfg.model)
    mean = np.asarray(cfg.model.input.mean, np.float32)
    std = np.asarray(cfg.model.input.std, np.float32)

    def run(pixels: np.ndarray) -> np.ndarray:
        x = ((pixels.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return run


def iou(a: np.ndarray, b: np.ndarray) -> float:
    from runtime.tracking import iou_matrix

    return float(iou_matrix(a, b)[0, 0])


def inside(box: np.ndarray, region: list[float]) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return region[0] <= cx <= region[2] and region[1] <= cy <= region[3]


def dataset(name: str):  # noqa: ANN201
    """A conf/dataset file, validated."""
    from omegaconf import OmegaConf

    from stages.core.config import DatasetConfig
    from stages.core.layout import CONF_DIR

    merged = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(CONF_DIR / "dataset" / f"{name}.yaml"))
    return OmegaConf.to_object(merged)


def lfw_check(detector: Any) -> dict:
    from stages.core.datasets import gold_images

    samples = gold_images(dataset("lfw_faces"))
    hits = np.array([len(detector.detect(np.asarray(image))[0]) > 0
                     for _, image, _ in track(samples, "cascade on lfw_subset")])
    face = np.array([1 in accepted for _, _, accepted in samples])
    return {"faces": int(face.sum()), "found": int(hits[face].sum()), "recall": 100.0 * float(hits[face].mean()),
            "non_faces": int((~face).sum()), "false_positives": int(hits[~face].sum())}


def photos() -> list[tuple[str, np.ndarray, list[float]]]:
    """The head-pose gold set's whole photos (not its video frames), each with the hand-drawn box around
    its one known face."""
    from stages.core.datasets import item_photos

    items = [item for item in dataset("face_crops").items if item.frame is None]
    return [(item.file, np.asarray(photo), list(item.box)) for item, photo in zip(items, item_photos(items))]


def photo_check(float_det: Any, artifact_det: Any) -> list[dict]:
    from facenet_pytorch import MTCNN
    from PIL import Image

    reference = MTCNN(keep_all=True)
    rows = []
    for name, rgb, face in photos():
        fb, _ = float_det.detect(rgb)
        ab, scores = artifact_det.detect(rgb)
        ref_boxes, _ = reference.detect(Image.fromarray(rgb))
        ref_boxes = np.zeros((0, 4)) if ref_boxes is None else np.asarray(ref_boxes, np.float64)
        pick = lambda boxes: next((b for b in boxes if inside(b, face)), None)  # noqa: E731
        f, a, r = pick(fb), pick(ab), pick(ref_boxes)
        rows.append({"photo": name, "face_box": face, "float_found": f is not None, "artifact_found": a is not None,
                     "float_boxes": len(fb), "artifact_boxes": len(ab), "facenet_boxes": len(ref_boxes),
                     "iou_artifact_vs_float": iou(a, f) if a is not None and f is not None else None,
                     "iou_float_vs_facenet": iou(f, r) if f is not None and r is not None else None,
                     "artifact_box": None if a is None else [round(float(v), 1) for v in a]})
    return rows


def tracking_check(detector: Any, headpose_path: Path | None, size: tuple[int, int] = (640, 360)) -> dict:
    """The tracking app's loop on a video of real faces moving across a real background."""
    from runtime.apps.track import HeadPose, run, summarize
    from runtime.tracking import Sort
    from stages.core.bench import MachineShare
    from stages.core.facevideo import make_face_video, read_frames

    out: dict[str, Any] = {"frames": VIDEO_FRAMES, "size": list(size), "faces": 3,
                           "note": "this machine's CPU (x86), not a board's"}
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "faces.mp4"
        truth = make_face_video(video, frames=VIDEO_FRAMES, size=size)
        start = time.perf_counter()
        frames = read_frames(video)  # decoded up front, so the loop's fps is the app's own work
        out["decode_ms_per_frame"] = 1e3 * (time.perf_counter() - start) / max(len(frames), 1)
        out["face_heights_px"] = [int(h) for h in truth[0, :, 3] - truth[0, :, 1]]
        for mode, pose in (("detect+track", None), ("detect+track+headpose", headpose_path)):
            if mode.endswith("headpose") and pose is None:
                continue
            headpose = HeadPose.from_artifact(pose) if pose else None
            start = time.perf_counter()
            with MachineShare() as share:  # fps taken while other processes ran is marked, never a headline
                results = run(frames, detector, headpose, writer=None, tracker=Sort())
            summary = summarize(results, time.perf_counter() - start)
            out[mode] = {**summary, **id_stability(results, truth), "other_cpu_share": share.other,
                         "fps_reliable": not share.why, "fps_unreliable_because": share.why}
    return out


def id_stability(results: list[dict], truth: np.ndarray) -> dict:
    """Per ground-truth face: the track IDs whose box centre lay inside it, and frames it was covered."""
    ids: list[set[int]] = [set() for _ in range(truth.shape[1])]
    covered = np.zeros(truth.shape[1], int)
    for frame, gt in zip(results, truth):
        for i, box in enumerate(gt):
            inside_ids = {t["id"] for t in frame["tracks"] if inside(np.asarray(t["box"]), list(box))}
            ids[i] |= inside_ids
            covered[i] += bool(inside_ids)
    return {"ids_per_face": [sorted(s) for s in ids], "stable": all(len(s) == 1 for s in ids),
            "frames_covered": covered.tolist()}


class FloatSession:
    """A float PyTorch net in the place of a runtime Session, for BlazeFaceDetector: it takes the
    letterboxed uint8 pixels and normalizes them as the model config says (float_net)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray]) -> None:
        self._run = run

    def preprocess(self, square: np.ndarray) -> np.ndarray:
        return square[None]

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(pixels)


def detectors(entry: dict, paths: list[Path]) -> tuple[Any, Any]:
    """(float, artifact) detectors of an entry's family, the same decoding code around each."""
    weights = [float_net(m, Layout.of("artifacts", m, "_", "_").weights) for m in detector_models(entry)]
    if family(entry) == "blazeface":
        from runtime.tasks.blazeface import BlazeFaceDetector

        return BlazeFaceDetector(FloatSession(weights[0])), BlazeFaceDetector.from_artifact(paths[0])
    from runtime.tasks.face_detection import FaceDetector

    return FaceDetector(*weights), FaceDetector.from_artifacts(*paths)


def check(name: str, entry: dict, plan: dict) -> dict:
    target, quant = entry["target"], entry["quant"]
    if family(entry) not in VIDEO_SIZE:
        raise BuildError(f"detector {name}: unknown family {family(entry)!r}", hint=f"use one of {sorted(VIDEO_SIZE)}")
    paths = [artifact_path(plan, model, target, quant) for model in detector_models(entry)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise BuildError(f"detector {name}: missing {', '.join(missing)}", hint="run `dvc repro` first")
    float_det, artifact_det = detectors(entry, paths)
    headpose = (artifact_path(plan, entry["headpose"], target, entry.get("headpose_quant", quant))
                if entry.get("headpose") else None)
    console.rule(f"[bold]faces: {name}[/]")
    row = {"detector": name, "family": family(entry), "target": target, "quant": quant,
           "artifacts": [str(p.relative_to(PROJECT_ROOT)) for p in paths],
           "headpose": str(headpose.relative_to(PROJECT_ROOT)) if headpose else None,
           "lfw": {"float": lfw_check(float_det), "artifact": lfw_check(artifact_det)},
           "photos": photo_check(float_det, artifact_det),
           "tracking": tracking_check(artifact_det, headpose, VIDEO_SIZE[family(entry)])}
    lf, la = row["lfw"]["float"], row["lfw"]["artifact"]
    console.print(f"lfw_subset: recall {lf['recall']:.0f} % float, {la['recall']:.0f} % artifact; false positives "
                  f"{lf['false_positives']} / {la['false_positives']} of {la['non_faces']}")
    for p in row["photos"]:
        console.print(f"  {p['photo']}: face found float={p['float_found']} artifact={p['artifact_found']} "
                      f"(IoU {p['iou_artifact_vs_float']})")
    for mode in ("detect+track", "detect+track+headpose"):
        if mode in row["tracking"]:
            t = row["tracking"][mode]
            console.print(f"  tracking ({mode}): {t['fps']:.1f} fps, detect {t['mean_detect_ms']:.1f} ms/frame, "
                          f"IDs per face {t['ids_per_face']} ({'stable' if t['stable'] else 'NOT stable'})")
    return row


@cli("stage 'faces'")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.faces", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    plan = yaml.safe_load((PROJECT_ROOT / "conf" / "builds.yaml").read_text())
    try:
        rows = [check(name, entry, plan) for name, entry in (plan.get("detectors") or {}).items()]
    except BuildError as exc:
        console.print(f"[red]error in stage 'faces':[/] {exc}")
        return 2
    write_json(OUT, {"detectors": rows})
    unstable = [r["detector"] for r in rows for m, t in r["tracking"].items() if isinstance(t, dict) and not t["stable"]]
    if unstable:
        console.print(f"[red]track IDs were not stable for {unstable}[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
