"""Head-pose crops from a real video: the faces a float detector finds in Megamind.avi (opencv-doc).

    python -m stages.core.face_frames [--start 186 --stop 270 --every 2]

prints one dataset item per face found, as the face_crops* dataset files list them:
``{source: opencv-doc, file: Megamind.avi, frame: N, box: [x0, y0, x1, y1], label: 1}``. The detector
is facenet-pytorch's float MTCNN (the faces stage's reference detector); a face is kept when its
probability is at least ``MIN_P`` and its box at least ``MIN_SIDE`` pixels on each side. The box is
the crop head pose sees on the board: runtime.apps.track.expand_box, the WHENet convention.

The boxes are data, committed in conf/dataset/face_crops*.yaml, so a build never runs the detector;
this script is how they were made and how to remake them. Run once (facenet-pytorch 2.6.0, torch
CPU), the 270 frames take about 40 s.
"""
from __future__ import annotations

import argparse

import numpy as np

from runtime.apps.track import expand_box
from stages.core.datasets import frames_of, locate

VIDEO = ("opencv-doc", "Megamind.avi")
MIN_P = 0.95
MIN_SIDE = 48


def faces(start: int, stop: int, every: int) -> list[dict]:
    import torch
    from facenet_pytorch import MTCNN

    torch.set_num_threads(1)  # one thread: the same boxes on every machine
    detector = MTCNN(keep_all=True, min_face_size=40)
    path = locate(*VIDEO, what="video")
    frames = frames_of(path, set(range(start, stop, every)))
    items = []
    for index in sorted(frames):
        rgb = np.asarray(frames[index])
        boxes, probs = detector.detect(rgb)
        for box, p in zip(boxes if boxes is not None else [], probs if probs is not None else []):
            x0, y0, x1, y1 = box
            if p < MIN_P or min(x1 - x0, y1 - y0) < MIN_SIDE:
                continue
            crop = expand_box(box, rgb.shape[1], rgb.shape[0])
            if crop is not None:
                items.append({"frame": index, "box": list(crop), "p": float(p)})
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--stop", type=int, default=270)
    parser.add_argument("--every", type=int, default=1)
    args = parser.parse_args()
    for item in faces(args.start, args.stop, args.every):
        print(f"  - {{source: {VIDEO[0]}, file: {VIDEO[1]}, frame: {item['frame']}, "
              f"box: [{', '.join(map(str, item['box']))}], label: 1}}  # p = {item['p']:.3f}")


if __name__ == "__main__":
    main()
