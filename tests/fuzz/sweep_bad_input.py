"""The bad-input sweep of issue #19, as a careless user and a corrupted disk would try it: every case is
run and classified, and a table and a JSON summary are printed.

    python tests/fuzz/sweep_bad_input.py [--json OUT]

Cases span the manifest reader (structure, values, seal, I/O against the model), inputs to a session,
``preprocess()``, config values and files (composed as every Hydra stage composes them), and the CLIs
(Hydra stages, ``stages.list``, ``compare``, ``report``, ``arm64``, ``runtime``,
``runtime.apps.track``) in subprocesses. Each case expects an error or a success:

  clear error     a project error (exit code 2 for a CLI) whose message holds the named fragment (the key,
                  file, field or value) and no traceback;
  unclear error   a project error that does not name what is wrong;
  traceback       any other exception, or a traceback printed by a CLI;
  silent success  no error where the input is wrong (for a CLI, exit 0, or still running at the timeout:
                  it went on to build);
  correct output  no error, where the input is valid;
  refused valid input  an error, where the input is valid.
Exit status: 0 when every case is a clear error or a correct output.
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from runtime import load  # noqa: E402
from runtime.errors import UserError  # noqa: E402
from runtime.manifest import seal_manifest  # noqa: E402
from runtime.preprocess import Preprocess  # noqa: E402

PHOTO = Path("/usr/share/doc/opencv-doc/examples/data/orange.jpg")
OK = None  # `expect` of a case whose input is valid


@dataclass
class Case:
    area: str
    name: str
    run: Callable[[Path], Any]  # given a fresh scratch folder; raises, or returns a CompletedProcess for a CLI
    expect: str | None  # a fragment the error must hold, or OK


def classify(case: Case, work: Path) -> tuple[str, str]:
    try:
        result = case.run(work)
    except UserError as exc:
        text = str(exc)
        if case.expect is OK:
            return "refused valid input", text
        return ("clear error" if case.expect.lower() in text.lower() else "unclear error"), text
    except subprocess.TimeoutExpired:
        return "silent success", "still running at the timeout (it went on to build)"
    except Exception as exc:  # noqa: BLE001 - what the sweep is looking for
        return "traceback", "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if isinstance(result, subprocess.CompletedProcess):
        out = result.stderr + result.stdout
        if "Traceback (most recent call last)" in out:
            return "traceback", out.strip().splitlines()[-1]
        if result.returncode == 0:
            return ("correct output" if case.expect is OK else "silent success"), out.strip()[-200:]
        if case.expect is OK:
            return "refused valid input", out.strip()[-300:]
        first = (result.stderr.strip().splitlines() or [""])[0]
        if result.returncode == 2 and case.expect.lower() in out.lower():
            return "clear error", first
        return "unclear error", f"exit {result.returncode}: {out.strip()[-300:]}"
    return ("correct output" if case.expect is OK else "silent success"), repr(result)[:200]


# ---- a small real artifact: a QDQ model made by ORT's quantizer, its manifest sealed as the build seals it

_SOURCE = tempfile.TemporaryDirectory(prefix="sweep-artifact-")  # removed when the sweep exits


@functools.cache
def _made() -> Path:
    from test_runtime_reference import artifact as make

    make(Path(_SOURCE.name))
    return Path(_SOURCE.name)


def artifact(work: Path) -> Path:
    """A copy of one real artifact folder (made once per sweep) in ``work``; returns its model.onnx."""
    for name in ("model.onnx", "manifest.json"):
        shutil.copy(_made() / name, work / name)
    return work / "model.onnx"


def with_manifest(change: Callable[[dict], Any], seal: bool = True) -> Callable[[Path], Any]:
    def run(work: Path):
        path = artifact(work)
        data = json.loads((work / "manifest.json").read_text())
        old = data.pop("manifest_sha256")
        change(data)
        (work / "manifest.json").write_text(json.dumps(seal_manifest(data) if seal else {**data, "manifest_sha256": old}))
        session = load(path)
        return session.run(np.zeros((1, 3, 16, 16), np.float32))
    return run


def set_field(key: str, value) -> Callable[[dict], None]:
    """Set (or, with DELETE, remove) a dotted manifest field; digits index lists: ``inputs.0.shape``."""
    def change(m: dict) -> None:
        *path, last = [int(p) if p.isdigit() else p for p in key.split(".")]
        node = m
        for part in path:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return change


DELETE = object()


def raw_manifest(data: bytes) -> Callable[[Path], Any]:
    def run(work: Path):
        path = artifact(work)
        (work / "manifest.json").write_bytes(data)
        return load(path)
    return run


def on_disk(change: Callable[[Path], None]) -> Callable[[Path], Any]:
    def run(work: Path):
        path = artifact(work)
        change(path)
        return load(path).run(np.zeros((1, 3, 16, 16), np.float32))
    return run


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def as_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def raw_manifest_without_seal() -> Callable[[Path], Any]:
    def run(work: Path):
        path = artifact(work)
        data = json.loads((work / "manifest.json").read_text())
        data.pop("manifest_sha256")
        (work / "manifest.json").write_text(json.dumps(data))
        return load(path)
    return run


def manifest_cases() -> list[Case]:
    cases = [Case("manifest", f"manifest is {text!r}", raw_manifest(text), expect) for text, expect in (
        (b"[]", "manifest"), (b"{\xff}", "UTF-8"), (b"{", "JSON"), (b"", "JSON"), (b"null", "manifest"),
        (b'"text"', "manifest"), (b"42", "manifest"), (b'{"schema": 1}', "manifest"))]
    cases += [
        Case("manifest", "manifest missing", on_disk(lambda p: (p.parent / "manifest.json").unlink()), "manifest"),
        Case("manifest", "manifest is a directory", on_disk(lambda p: as_dir(p.parent / "manifest.json")), "directory"),
        Case("manifest", "artifact missing", on_disk(lambda p: p.unlink()), "model.onnx"),
        Case("manifest", "artifact is a directory", on_disk(as_dir), "model.onnx"),
        Case("manifest", "artifact one byte flipped", on_disk(flip_byte), "sha256"),
        Case("manifest", "artifact truncated", on_disk(lambda p: p.write_bytes(p.read_bytes()[:100])), "sha256"),
        Case("manifest", "artifact empty", on_disk(lambda p: p.write_bytes(b"")), "sha256"),
        Case("manifest", "labels edited, seal kept", with_manifest(set_field("outputs.0.labels", list("abcde")), seal=False),
             "changed after the build"),
        Case("manifest", "seal removed", raw_manifest_without_seal(), "manifest_sha256"),
    ]
    values = [
        ("inputs.0.shape", None, "shape"), ("inputs.0.dtype", "float33", "float33"), ("inputs", [], "inputs"),
        ("inputs.0.preprocess", {"interpolation": "bicubicx"}, "bicubicx"), ("runtime.threads", "four", "threads"),
        ("outputs.0.labels", 3, "labels"), ("outputs.0.labels", ["a", "b"], "labels"),
        ("outputs.0.labels", [1, 2, 3, 4, 5], "labels"), ("inputs.0.shape", [1, 3, 32, 32], "input 'x'"),
        ("outputs.0.name", "logits", "logits"), ("inputs.0.name", "image", "image"),
        ("inputs.0.shape", [1, 3, -16, 16], "shape"), ("inputs.0.shape", [1, 3, 16], "shape"),
        ("inputs.0.shape", [1, 3, 16.5, 16], "shape"), ("inputs.0.shape", "1x3x16x16", "shape"),
        ("inputs.0.preprocess", {"std": [0, 0, 0]}, "std"), ("inputs.0.preprocess", {"mean": [1, 2]}, "mean"),
        ("inputs.0.preprocess", {"mean": ["a", "b", "c"]}, "mean"), ("inputs.0.preprocess", {"crop": [16, 16, 3]}, "crop"),
        ("inputs.0.preprocess", [], "preprocess"), ("artifact", "../model.onnx", "artifact"),
        ("artifact", "other.onnx", "other.onnx"), ("artifact", 7, "artifact"), ("format", "tflite", "tflite"),
        ("format", DELETE, "format"), ("schema", 2, "schema"), ("schema", "1", "schema"),
        ("runtime.threads", 0, "threads"), ("runtime.threads", -1, "threads"), ("runtime.threads", 1.5, "threads"),
        ("runtime.threads", True, "threads"), ("runtime", [], "runtime"), ("inputs", "x", "inputs"),
        ("inputs.0", "x", "inputs[0]"), ("inputs.0.name", DELETE, "name"), ("inputs.0.name", "", "name"),
        ("inputs.0.dtype", DELETE, "dtype"), ("inputs.0.layout", "NHWCx", "layout"), ("outputs", [], "outputs"),
        ("outputs", DELETE, "outputs"), ("task", 5, "task"),
        ("sha256", DELETE, "sha256"), ("sha256", "0" * 64, "sha256"), ("torch", [], "torch"),
        ("torch", {"quantized_engine": 7}, "quantized_engine"), ("inputs.0.shape", [2, 3, 16, 16], "input 'x'"),
        ("outputs.0.dtype", "int8", "output"),
    ]
    cases += [Case("manifest", f"{key} = {'(deleted)' if value is DELETE else repr(value)}",
                   with_manifest(set_field(key, value)), expect) for key, value, expect in values]
    cases.append(Case("manifest", "an unknown extra key (sealed)", with_manifest(set_field("notes", "hand-added")), OK))
    # a task this runtime has no summary for still runs (python -m runtime says it has no summary for it)
    cases.append(Case("manifest", "task = 'segmentation' (sealed)", with_manifest(set_field("task", "segmentation")), OK))
    return cases


# ---- inputs to a loaded session

def session_run(value: Callable[[], Any], **kwargs) -> Callable[[Path], Any]:
    def run(work: Path):
        return load(artifact(work)).run(value(), **kwargs)
    return run


def nan_input(fill=np.nan) -> np.ndarray:
    x = np.zeros((1, 3, 16, 16), np.float32)
    x[0, 0, 0, 0] = fill
    return x


def input_cases() -> list[Case]:
    return [
        Case("input", "a NaN", session_run(nan_input), "NaN"),
        Case("input", "an Inf", session_run(lambda: nan_input(np.inf)), "infinite"),
        Case("input", "a NaN with check_finite=False", session_run(nan_input, check_finite=False), OK),
        Case("input", "wrong shape", session_run(lambda: np.zeros((1, 3, 32, 32), np.float32)), "shape"),
        Case("input", "batch of 2 for a batch-1 model", session_run(lambda: np.zeros((2, 3, 16, 16), np.float32)), "shape"),
        Case("input", "rank 3", session_run(lambda: np.zeros((3, 16, 16), np.float32)), "shape"),
        Case("input", "float64", session_run(lambda: np.zeros((1, 3, 16, 16))), "float64"),
        Case("input", "int32", session_run(lambda: np.zeros((1, 3, 16, 16), np.int32)), "int32"),
        Case("input", "a list", session_run(lambda: np.zeros((1, 3, 16, 16)).tolist()), "list"),
        Case("input", "None", session_run(lambda: None), "missing input 'x'"),
        Case("input", "a string", session_run(lambda: "x"), "str"),
        Case("input", "a valid input", session_run(lambda: np.zeros((1, 3, 16, 16), np.float32)), OK),
    ]


# ---- preprocess()

def pre(image: Callable[[Path], Any]) -> Callable[[Path], Any]:
    return lambda work: Preprocess(8, 8)(image(work))


def write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(work: Path) -> Path:
        (work / name).write_bytes(data)
        return work / name
    return make


def preprocess_cases() -> list[Case]:
    arr = lambda shape, dtype=np.uint8: (lambda work: np.zeros(shape, dtype))  # noqa: E731
    photo = PHOTO.read_bytes()
    return [
        Case("preprocess", "float32 HxWx3", pre(arr((9, 9, 3), np.float32)), "float32"),
        Case("preprocess", "float64 HxWx3", pre(arr((9, 9, 3), np.float64)), "float64"),
        Case("preprocess", "uint16 HxWx3", pre(arr((9, 9, 3), np.uint16)), "uint16"),
        Case("preprocess", "int64 HxWx3", pre(arr((9, 9, 3), np.int64)), "int64"),
        Case("preprocess", "bool HxWx3", pre(arr((9, 9, 3), bool)), "bool"),
        Case("preprocess", "CHW", pre(arr((3, 9, 9))), "channels first"),
        Case("preprocess", "0x0", pre(arr((0, 0, 3))), "empty"),
        Case("preprocess", "2 channels", pre(arr((9, 9, 2))), "[9, 9, 2]"),
        Case("preprocess", "1-D", pre(arr((9,))), "[9]"),
        Case("preprocess", "a batch (4-D)", pre(arr((1, 9, 9, 3))), "[1, 9, 9, 3]"),
        Case("preprocess", "an int", pre(lambda work: 7), "int"),
        Case("preprocess", "None", pre(lambda work: None), "NoneType"),
        Case("preprocess", "bytes", pre(lambda work: photo), "bytes"),
        Case("preprocess", "a truncated JPEG", pre(write("cut.jpg", photo[: len(photo) // 3])), "cut.jpg"),
        Case("preprocess", "an empty file", pre(write("empty.png", b"")), "empty.png"),
        Case("preprocess", "a text file", pre(write("notes.jpg", b"not an image\n")), "notes.jpg"),
        Case("preprocess", "a missing path", pre(lambda work: str(work / "nope.jpg")), "nope.jpg"),
        Case("preprocess", "a directory", pre(lambda work: work), "cannot be decoded"),
        Case("preprocess", "a str path", pre(lambda work: str(PHOTO)), OK),
        Case("preprocess", "a Path", pre(lambda work: PHOTO), OK),
        Case("preprocess", "grey HxW", pre(arr((9, 9))), OK),
        Case("preprocess", "HxWx1", pre(arr((9, 9, 1))), OK),
        Case("preprocess", "RGBA HxWx4", pre(arr((9, 9, 4))), OK),
        Case("preprocess", "a 1x1 image", pre(arr((1, 1, 3))), OK),
    ]


# ---- config values and files, composed and laid out as every stage does first (stages.core.cli)

def compose(*overrides: str) -> Callable[[Path], Any]:
    def run(work: Path):
        from stages.core.cli import layout_for, load as load_config

        return layout_for(load_config(list(overrides)))  # what every stage does before its work
    return run


def config_cases() -> list[Case]:
    values = [
        (["model.input.mean=[1,2]"], "model.input.mean"), (["model.input.std=[0,0,0]"], "model.input.std"),
        (["model.input.std=[1,1,-1]"], "model.input.std"), (["model.input.mean=abc"], "model.input.mean"),
        (["model.input.shape=[1,3,-224,224]"], "model.input.shape"), (["model.input.shape=[1,3,224]"], "model.input.shape"),
        (["model.input.shape=[0,3,224,224]"], "model.input.shape"), (["model.input.shape=[1,1,224,224]"], "model.input.shape"),
        (["quant.calibration.num_samples=-5"], "num_samples"), (["quant.calibration.num_samples=abc"], "num_samples"),
        (["quant=int8_percentile", "quant.calibration.percentile=150"], "percentile"),
        (["quant=int8_percentile", "quant.calibration.percentile=-1"], "percentile"),
        (["quant.calibration.method=foo"], "expected one of [minmax, entropy, percentile]"),
        (["model=mtcnn_pnet", "model.input.interpolation=bicubicx"], "interpolation"),
        (["model=fashion_ghostnetv2", "model.train.recipe.schedule=cosinee"], "schedule"),
        (["model=fashion_ghostnetv2", "model.train.recipe.lr=0"], "lr"),
        (["model=fashion_ghostnetv2", "model.train.recipe.momentum=1.5"], "momentum"),
        (["target.runtime.threads=0"], "threads"), (["target.runtime.threads=four"], "threads"),
        (["target=rk3588", "target.rknn.quantized_algorithm=mmsee"], "quantized_algorithm"),
        (["+model.input.dtype=float33"], "dtype"), (["quant=rknn_int8", "+quant.vendor_algorithm=mmsee"], "vendor_algorithm"),
        (["model.board_inputs=0"], "board_inputs"), (["model.name='[/x]'"], "[/x]"),
        (["model.export.opset=3"], "opset"), (["model.export.simplifier=onnxsimm"], "simplifier"),
        (["model.budget.confidence=1.5"], "confidence"), (["model.budget.max_drop=500"], "max_drop"),
        (["model=nosuchmodel"], "nosuchmodel"), (["target=rk9999"], "rk9999"), (["quant=int3"], "int3"),
        (["model.no_such_key=1"], "no_such_key"), (["+foo=bar"], "foo"), (["target.format=tflite"], "tflite"),
    ]
    cases = [Case("config", " ".join(o), compose(*o), expect) for o, expect in values]
    cases += [Case("config", "the default build", compose(), OK),
              Case("config", "mobilenet_v2 on rk3588", compose("model=mobilenet_v2", "target=rk3588"), OK)]
    return cases


def conf_file(group: str, name: str, data: bytes) -> Callable[[Path], Any]:
    def run(work: Path):
        from stages.core.cli import check_yaml_syntax

        (work / "conf" / group).mkdir(parents=True)
        (work / "conf" / group / name).write_bytes(data)
        return check_yaml_syntax(work / "conf")
    return run


def conf_file_cases() -> list[Case]:
    return [
        Case("config file", "broken YAML", conf_file("target", "broken.yaml", b"name: broken\nformat: [onnx\n"),
             "conf/target/broken.yaml is not valid YAML"),
        Case("config file", "not UTF-8", conf_file("target", "latin1.yaml", b"name: caf\xe9\n"), "latin1.yaml is not UTF-8"),
        Case("config file", "a list where a target mapping belongs", conf_file("target", "board.yaml", b"- name: b\n"),
             "board.yaml holds a list"),
        Case("config file", "a tab in the indentation", conf_file("model", "tabs.yaml", b"name: m\ninput:\n\tshape: [1]\n"),
             "tabs.yaml"),
        Case("config file", "a scalar where a mapping belongs", conf_file("quant", "s.yaml", b"just text\n"), "s.yaml"),
        Case("config file", "an empty file", conf_file("target", "empty.yaml", b""), OK),
    ]


# ---- the CLIs, in subprocesses (a traceback, an exit code other than 2, or a build started, is a finding)

def cli(*args: str, timeout: float = 120, setup: Callable[[Path], list[str]] | None = None) -> Callable[[Path], Any]:
    def run(work: Path):
        extra = setup(work) if setup else []
        argv = [a.replace("{work}", str(work)) for a in args] + extra
        return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return run


def artifact_and(image: Path, change: Callable[[Path], None] | None = None) -> Callable[[Path], list[str]]:
    """The runtime CLI's two arguments: the sweep's artifact (changed by ``change``), then an image."""
    def setup(work: Path) -> list[str]:
        path = artifact(work)
        if change:
            change(path)
        return [str(path), str(image)]
    return setup


def extra_conf(group: str, name: str, text: str) -> Callable[[Path], list[str]]:
    def setup(work: Path) -> list[str]:
        (work / "more" / group).mkdir(parents=True)
        (work / "more" / group / name).write_text(text)
        return []
    return setup


def cli_cases() -> list[Case]:
    stage = ["-m", "stages.convert", "artifacts={work}/artifacts"]
    track = ["-m", "runtime.apps.track", "--source", "0"]
    write_manifest = lambda data: (lambda p: (p.parent / "manifest.json").write_bytes(data))  # noqa: E731
    cut = PHOTO.read_bytes()[:2000]
    return [
        Case("cli", "stages.convert target=rk9999", cli(*stage, "target=rk9999"), "rk9999"),
        Case("cli", "stages.convert a bad value", cli(*stage, "model.input.std=[0,0,0]"), "model.input.std"),
        Case("cli", "stages.convert a typo in a recipe value",
             cli(*stage, "model=fashion_ghostnetv2", "model.train.recipe.schedule=cosinee"), "cosinee"),
        Case("cli", "stages.trace calibration.method=foo (markup)", cli("-m", "stages.trace", "quant.calibration.method=foo"),
             "expected one of [minmax, entropy, percentile]"),
        Case("cli", "stages.trace model.name='[/x]' (markup)", cli("-m", "stages.trace", "model.name='[/x]'"), "[/x]"),
        Case("cli", "stages.quantize upstream=false, inputs missing",
             cli("-m", "stages.quantize", "model=fashion_cnn_npu", "upstream=false", "artifacts={work}/artifacts"),
             "python -m stages.quantize model=fashion_cnn_npu"),
        Case("cli", "stages.convert --config-dir with broken YAML",
             cli("-m", "stages.convert", "--config-dir", "{work}/more", "target=mine", "--cfg", "job",
                 setup=extra_conf("target", "mine.yaml", "name: [mine\n")),
             "mine.yaml is not valid YAML"),
        Case("cli", "stages.evaluate unknown key", cli("-m", "stages.evaluate", "model.nope=1", "artifacts={work}/a"), "nope"),
        Case("cli", "stages.list --bogus", cli("-m", "stages.list", "--bogus"), "--bogus"),
        Case("cli", "stages.compare, no builds", cli("-m", "stages.compare", "--artifacts", "{work}/none"), "none"),
        Case("cli", "stages.compare --runs x", cli("-m", "stages.compare", "--runs", "x"), "x"),
        Case("cli", "stages.report, no artifacts", cli("-m", "stages.report", "--artifacts", "{work}/none"), "none"),
        Case("cli", "stages.arm64 --max-inputs x", cli("-m", "stages.arm64", "--max-inputs", "x"), "'x'"),
        Case("cli", "stages.arm64 --bogus", cli("-m", "stages.arm64", "--bogus"), "--bogus"),
        Case("cli", "runtime --runs 0", cli("-m", "runtime", "--runs", "0", setup=artifact_and(PHOTO)), "got 0"),
        Case("cli", "runtime --runs -3", cli("-m", "runtime", "--runs", "-3", setup=artifact_and(PHOTO)), "got -3"),
        Case("cli", "runtime --threads -4", cli("-m", "runtime", "--threads", "-4", setup=artifact_and(PHOTO)), "got -4"),
        Case("cli", "runtime, manifest a list", cli("-m", "runtime", setup=artifact_and(PHOTO, write_manifest(b"[1, 2]"))),
             "schema 'list'"),
        Case("cli", "runtime, manifest not UTF-8", cli("-m", "runtime", setup=artifact_and(
            PHOTO, write_manifest(b'{"m": "caf\xe9"}'))), "UTF-8"),
        Case("cli", "runtime, artifact missing", cli("-m", "runtime", "{work}/nope.onnx", str(PHOTO)), "nope.onnx"),
        Case("cli", "runtime, image missing", cli("-m", "runtime", setup=lambda w: [str(artifact(w)), str(w / "nope.jpg")]),
             "nope.jpg"),
        Case("cli", "runtime, image truncated", cli("-m", "runtime", setup=lambda w: [
            str(artifact(w)), str(write("cut.jpg", cut)(w))]), "cut.jpg"),
        Case("cli", "runtime, a valid run", cli("-m", "runtime", "--runs", "2", setup=artifact_and(PHOTO)), OK),
        Case("cli", "track --threads -4", cli(*track, "--detector", "d.onnx", "--threads", "-4"), "got -4"),
        Case("cli", "track --max-frames 0", cli(*track, "--detector", "d.onnx", "--max-frames", "0"), "got 0"),
        Case("cli", "track --min-face x", cli(*track, "--detector", "d.onnx", "--min-face", "x"), "got 'x'"),
        Case("cli", "track, detector missing", cli(*track, "--detector", "{work}/blazeface.onnx"), "no artifact at"),
        Case("cli", "track, source missing", cli("-m", "runtime.apps.track", "--source", "{work}/none.mp4",
                                                 setup=lambda w: ["--detector", str(artifact(w))]), "none.mp4"),
        Case("cli", "track, two detectors that are not MTCNN's three", cli(
            "-m", "runtime.apps.track", "--source", str(PHOTO), setup=lambda w: ["--detector", str(artifact(w)), str(w / "model.onnx")]),
            "detector"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write every case and its outcome here")
    parser.add_argument("--area", help="only this area's cases")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # ORT's quantizer's advice, while the sweep's artifact is made
    cases = manifest_cases() + input_cases() + preprocess_cases() + config_cases() + conf_file_cases() + cli_cases()
    cases = [c for c in cases if args.area in (None, c.area)]
    rows = []
    for case in cases:
        work = Path(tempfile.mkdtemp(prefix="sweep-"))
        try:
            outcome, detail = classify(case, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append({"area": case.area, "case": case.name, "outcome": outcome, "detail": detail.splitlines()[0][:300]
                     if detail else ""})
        flag = "" if outcome in ("clear error", "correct output") else "  <--"
        print(f"{case.area:12} {case.name[:58]:58} {outcome}{flag}", flush=True)
    counts = dict(collections.Counter(row["outcome"] for row in rows))
    summary = {"cases": len(rows), "outcomes": counts}
    if args.json:
        args.json.write_text(json.dumps({**summary, "rows": rows}, indent=1))
    print(json.dumps(summary))
    return 0 if set(counts) <= {"clear error", "correct output"} else 1


if __name__ == "__main__":
    sys.exit(main())
