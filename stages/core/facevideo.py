"""A small deterministic test video made from real photos: real faces moving on a real background.

Faces: the astronaut (Eileen Collins, skimage.data.astronaut), Grace Hopper (matplotlib's sample data)
and the astronaut mirrored. Background: skimage.data.rocket() (a launch pad at dusk, no faces).
Each face is pasted as a rectangle and moves along a straight line; no two faces ever overlap, so a real
face detector sees every face in every frame and the ground truth is unambiguous.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# (source crop y1:y2, x1:x2 in the source photo) -> checked by eye: forehead/hair to chin, ear to ear
ASTRONAUT_FACE = (slice(20, 190), slice(140, 300))
GRACE_HOPPER_FACE = (slice(140, 340), slice(160, 360))

# per face, laid out for 640x360 (scaled for other sizes): output height in pixels, start (x1, y1) and
# end (x1, y1) of the top-left corner
PATHS = (
    (120, (10, 20), (260, 60)),
    (110, (520, 230), (240, 220)),
    (96, (540, 16), (540, 110)),
)
# the same three faces and motions in a 4:3 frame, laid out for 640x480: the faces are as tall relative
# to the frame as in the 16:9 layout (a person at the same distance from the camera), 128-160 pixels
PATHS_4_3 = (
    (160, (10, 20), (260, 80)),
    (147, (480, 310), (240, 300)),
    (128, (510, 20), (510, 150)),
)
LAYOUTS = {(640, 360): PATHS, (640, 480): PATHS_4_3}


def face_crops() -> list[np.ndarray]:
    """The three RGB face crops, before scaling."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    astronaut = skimage.data.astronaut()
    grace = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
                       .convert("RGB"))
    a = astronaut[ASTRONAUT_FACE]
    return [a, grace[GRACE_HOPPER_FACE], a[:, ::-1]]


def background(size: tuple[int, int]) -> np.ndarray:
    """skimage's rocket photo resized to size (w, h), RGB."""
    import skimage.data

    return cv2.resize(skimage.data.rocket(), size, interpolation=cv2.INTER_AREA)


def ground_truth_boxes(frames: int, sizes: list[tuple[int, int]], paths: tuple = PATHS) -> np.ndarray:
    """[frames, faces, 4] integer-valued x1,y1,x2,y2 boxes, linear motion from start to end."""
    out = np.zeros((frames, len(paths), 4), dtype=np.float32)
    for f in range(frames):
        a = f / max(frames - 1, 1)
        for i, ((_, start, end), (w, h)) in enumerate(zip(paths, sizes)):
            x = round(start[0] + a * (end[0] - start[0]))
            y = round(start[1] + a * (end[1] - start[1]))
            out[f, i] = (x, y, x + w, y + h)
    return out


def make_face_video(path: str | Path, frames: int = 40, size: tuple[int, int] = (640, 360),
                    fps: float = 20.0) -> np.ndarray:
    """Write an mp4v video of 3 real faces moving across a real background and return the ground truth:
    float32 [frames, faces, 4] boxes (x1, y1, x2, y2 pixels; x2/y2 exclusive) of each pasted face.
    Deterministic: same arguments, same pixels (up to the codec), same boxes."""
    w_out, h_out = size
    base = (640, 480) if abs(w_out / h_out - 4 / 3) < 1e-3 else (640, 360)  # 4:3 frames: their own layout
    sx, sy = w_out / base[0], h_out / base[1]
    paths = tuple((round(h * min(sx, sy)), (round(s[0] * sx), round(s[1] * sy)), (round(e[0] * sx), round(e[1] * sy)))
                  for h, s, e in LAYOUTS[base])
    crops = []
    for crop, (height, _, _) in zip(face_crops(), paths):
        width = round(crop.shape[1] * height / crop.shape[0])
        crops.append(cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_AREA))
    truth = ground_truth_boxes(frames, [(c.shape[1], c.shape[0]) for c in crops], paths)
    for f in range(frames):  # layout check: inside the frame, never overlapping
        b = truth[f]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w_out).all() and (b[:, 3] <= h_out).all()
        for i in range(len(b)):
            for j in range(i + 1, len(b)):
                assert min(b[i, 2], b[j, 2]) <= max(b[i, 0], b[j, 0]) or min(b[i, 3], b[j, 3]) <= max(b[i, 1], b[j, 1])

    bg = background(size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a video writer for {path}")
    try:
        for f in range(frames):
            frame = bg.copy()
            for crop, (x1, y1, x2, y2) in zip(crops, truth[f].astype(int)):
                frame[y1:y2, x1:x2] = crop
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return truth


def read_frames(path: str | Path) -> list[np.ndarray]:
    """All frames of a video, BGR, as OpenCV decodes them."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames
