"""Bad input to the runtime gets a clear error naming what is wrong, never a traceback or a silent
success: manifests (structure, values, seal, I/O against the model), images, inputs and the CLI."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from runtime import InputSpecError, RuntimeLoadError, load
from runtime.manifest import Manifest, seal_manifest, sha256_of
from runtime.preprocess import Preprocess, load_image
from test_runtime_reference import artifact


def rewrite(folder: Path, change, seal: bool = True) -> Path:
    manifest = json.loads((folder / "manifest.json").read_text())
    old_seal = manifest.pop("manifest_sha256")
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(seal_manifest(manifest) if seal else
                                                     {**manifest, "manifest_sha256": old_seal}))
    return folder / "manifest.json"


def field(key: str, value):
    def change(m: dict) -> None:
        *path, last = key.split(".")
        target = m
        for part in path:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value
    return change


@pytest.mark.parametrize("key, value, message", [
    ("inputs.0.shape", None, r"inputs\[0\]\.shape must be a list"),
    ("inputs.0.dtype", "float33", r"inputs\[0\]\.dtype is 'float33'; expected one of float32"),
    ("inputs", [], r"inputs must be a list of at least 1"),
    ("runtime.threads", "four", r"runtime\.threads must be an integer >= 1"),
    ("outputs.0.labels", 3, r"outputs\[0\]\.labels must be a list"),
    ("outputs.0.labels", ["a", "b"], r"outputs\[0\]\.labels has 2 label\(s\) for 5 output classes"),
    ("inputs.0.shape", [1, 3, -16, 16], r"inputs\[0\]\.shape\[2\] must be an integer >= 1"),
    ("inputs.0.preprocess", {"interpolation": "bicubicx"}, r"interpolation is 'bicubicx'"),
    ("inputs.0.preprocess", {"std": [0, 0, 0]}, r"std must be > 0"),
    ("inputs.0.preprocess", {"mean": [1, 2]}, r"mean must be a list of at least 3"),
    ("artifact", "../model.onnx", r"artifact must be a file name"),
    # two edits at once: no layout and a short shape, a crop of three
    ("inputs", [{"name": "x", "shape": [1], "dtype": "float32", "preprocess": {}}],
     r"inputs\[0\]\.shape has 1 dimension\(s\); an input with preprocessing is an image batch of 4"),
    ("inputs.0.preprocess", {"crop": [16, 16, 3]}, r"inputs\[0\]\.preprocess\.crop must be \[height, width\]"),
    ("torch", [], r"torch must be a mapping"),
    ("torch", {"quantized_engine": 7}, r"torch\.quantized_engine must be a non-empty string"),
])
def test_manifest_values_are_checked_naming_the_field(tmp_path, key, value, message):
    path = artifact(tmp_path)
    rewrite(tmp_path, field(key, value))
    with pytest.raises(RuntimeLoadError, match=message):
        load(path)


def test_manifest_structure_and_encoding(tmp_path):
    path = artifact(tmp_path)
    for text, message in ((b"[]", "schema 'list'"), (b"{\xff}", "not UTF-8"), (b"{", "not valid JSON")):
        (tmp_path / "manifest.json").write_bytes(text)
        with pytest.raises(RuntimeLoadError, match=message):
            load(path)
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(RuntimeLoadError, match="is a directory"):
        load(path)


def test_a_manifest_edited_after_the_build_is_refused(tmp_path):
    path = artifact(tmp_path)
    rewrite(tmp_path, field("outputs.0.labels", list("abcde")), seal=False)  # valid, but not what was built
    with pytest.raises(RuntimeLoadError, match="was changed after the build"):
        load(path)


def test_declared_io_must_be_the_models(tmp_path):
    path = artifact(tmp_path)
    rewrite(tmp_path, field("inputs.0.shape", [1, 3, 32, 32]))
    with pytest.raises(RuntimeLoadError, match=r"input 'x' is float32\[1, 3, 16, 16\] in the model but x: "
                                               r"float32\[1, 3, 32, 32\]"):
        load(path)
    rewrite(tmp_path, field("inputs.0.shape", [1, 3, 16, 16]))
    rewrite(tmp_path, field("outputs.0.name", "logits"))
    with pytest.raises(RuntimeLoadError, match="declares output 'logits', the model has \\['y'\\]"):
        load(path)


def test_artifact_that_is_a_directory_is_refused(tmp_path):
    path = artifact(tmp_path)
    path.unlink()
    path.mkdir()
    with pytest.raises(RuntimeLoadError):
        load(path)


@pytest.mark.parametrize("image, message", [
    (np.zeros((8, 8, 3), np.float32), "must be uint8 .* got float32"),
    (np.zeros((8, 8, 3), np.float64), "must be uint8 .* got float64"),
    (np.zeros((8, 8, 3), np.uint16), "must be uint8 .* got uint16"),
    (np.zeros((3, 8, 8), np.uint8), "channels first"),
    (np.zeros((0, 0, 3), np.uint8), "empty"),
    (np.zeros((8, 8, 2), np.uint8), r"shape \[8, 8, 2\]"),
    (7, "got int"),
])
def test_preprocess_refuses_what_it_cannot_read_and_says_what_to_do(image, message):
    with pytest.raises(InputSpecError, match=message):
        Preprocess(4, 4)(image)


def test_preprocess_takes_paths_grey_and_rgba():
    photo = "/usr/share/doc/opencv-doc/examples/data/orange.jpg"
    pre = Preprocess(4, 4)
    assert pre(photo).shape == pre(np.zeros((9, 9), np.uint8)).shape == pre(np.zeros((9, 9, 4), np.uint8)).shape


def test_a_truncated_image_names_its_file(tmp_path):
    data = Path("/usr/share/doc/opencv-doc/examples/data/orange.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputSpecError, match="cut.jpg cannot be decoded"):
        load_image(tmp_path / "cut.jpg")


def test_non_finite_inputs_are_refused_unless_asked(tmp_path):
    session = load(artifact(tmp_path))
    x = np.zeros((1, 3, 16, 16), np.float32)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(InputSpecError, match="1 NaN or infinite value"):
        session.run(x)
    assert session.run(x, check_finite=False).shape == (1, 5)


@pytest.mark.parametrize("args, message", [(["--runs", "0"], "expected a whole number >= 1, got 0"),
                                           (["--runs", "-3"], "got -3"), (["--threads", "-4"], "got -4")])
def test_runtime_cli_rejects_bad_counts(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "runtime", str(artifact(tmp_path)),
                           "/usr/share/doc/opencv-doc/examples/data/orange.jpg", *args],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("broken", [b"[1, 2]", b'{"model": "caf\xe9"}'])
def test_runtime_cli_on_a_broken_manifest_says_so(tmp_path, broken):
    path = artifact(tmp_path)
    (tmp_path / "manifest.json").write_bytes(broken)
    proc = subprocess.run([sys.executable, "-m", "runtime", str(path), "/usr/share/doc/opencv-doc/examples/data/orange.jpg"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error in python -m runtime: manifest") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [(["--threads", "-4"], "got -4"), (["--max-frames", "0"], "got 0"),
                                           (["--min-face", "x"], "got 'x'")])
def test_the_tracking_app_rejects_bad_counts(args, message):
    proc = subprocess.run([sys.executable, "-m", "runtime.apps.track", "--source", "0", "--detector", "d.onnx", *args],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_the_tracking_app_names_a_missing_artifact_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runtime.apps.track", "--source", "0",
                           "--detector", str(tmp_path / "blazeface.onnx")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error in python -m runtime.apps.track: no artifact at ") and "blazeface.onnx" in proc.stderr


def onpu_artifact(tmp_path: Path) -> Path:
    """A small real .onpu container (test_format_onpu's) with its sealed manifest beside it."""
    from runtime.manifest import seal_manifest, sha256_of
    from test_format_onpu import build_onpu

    path = build_onpu(tmp_path)
    manifest = {"schema": 1, "format": "onpu", "artifact": path.name, "sha256": sha256_of(path), "model": "tiny",
                "target": "rpi5", "quant": "int8_static", "task": "classification",
                "inputs": [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32", "layout": "NCHW"}],
                "outputs": [{"name": "y", "shape": [1, 5], "dtype": "float32"}], "runtime": {"threads": 1}}
    (tmp_path / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    return path


@pytest.mark.parametrize("make, cases", [(artifact, 600), (onpu_artifact, 300)], ids=["onnx", "onpu"])
def test_fuzzed_artifacts_and_manifests_give_only_project_errors(tmp_path, make, cases):
    """Random mutations, one to three stacked per case (bytes, truncation, keys, value types), of a small
    real artifact (.onnx, and an .onpu container) and its manifest, in a subprocess (a crash would show as
    a signal): zero exceptions outside the runtime's own."""
    make(tmp_path)
    assert load(next(tmp_path.glob("model.onp*")) if make is onpu_artifact else tmp_path / "model.onnx")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz" / "fuzz_runtime.py"), str(tmp_path), str(cases)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["cases"] == cases and summary["other_exceptions"] == [], summary
    assert summary["project_errors"] + summary["loaded"] == cases and summary["project_errors"] > cases // 2


def test_onpu_headers_are_validated(tmp_path):
    import zipfile

    from runtime.backends.onpu import read_container
    from test_format_onpu import build_onpu

    good = build_onpu(tmp_path)
    with zipfile.ZipFile(good) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    header = json.loads(members["onpu.json"])

    def variant(name: str, onpu_json: bytes) -> Path:
        path = tmp_path / f"{name}.onpu"
        with zipfile.ZipFile(path, "w") as zf:
            for member, data in {**members, "onpu.json": onpu_json}.items():
                zf.writestr(member, data)
        return path

    for name, text, message in (
            ("latin1", b"\xff\xfe{}", "not UTF-8"),
            ("nopartition", json.dumps({k: v for k, v in header.items() if k != "partition"}).encode(), "lacks 'partition'"),
            ("nohashes", json.dumps({**header, "members": {}}).encode(), "do not cover the container's members"),
            ("list", b"[]", "unsupported onpu header")):
        with pytest.raises(RuntimeLoadError, match=message):
            read_container(variant(name, text))


def test_an_onpu_container_whose_members_do_not_load_says_which(tmp_path):
    """Members that match their hashes but are not what they claim (an inner manifest that is a list, a
    model.onnx that is not ONNX): a load error naming the member, not an AttributeError or ORT's own."""
    import hashlib
    import zipfile
    from types import SimpleNamespace

    from runtime.backends.onpu import open_onpu
    from test_format_onpu import build_onpu

    good = build_onpu(tmp_path)
    with zipfile.ZipFile(good) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = SimpleNamespace(threads=lambda requested=None: 1, runtime={}, raw={"model": "tiny", "format": "onpu"},
                               check_backend_version=lambda package, loaded: None)
    for member, data, message in (("manifest.json", b"[]", "the manifest.json inside the container is not a JSON object"),
                                  ("model.onnx", b"not onnx", "could not open its member model.onnx")):
        header = json.loads(members["onpu.json"])
        header["members"][member] = hashlib.sha256(data).hexdigest()
        path = tmp_path / f"{member}.onpu"
        with zipfile.ZipFile(path, "w") as zf:
            for name, blob in {**members, member: data, "onpu.json": json.dumps(header).encode()}.items():
                zf.writestr(name, blob)
        with pytest.raises(RuntimeLoadError, match=message):
            open_onpu(path, manifest)


def test_a_torchscript_file_that_is_not_one_is_a_load_error(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04 not an archive")
    manifest = {"schema": 1, "format": "torchscript", "artifact": "model.pt", "sha256": sha256_of(path), "model": "m",
                "target": "rpi4_torch", "quant": "torch_int8", "task": "classification",
                "inputs": [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32", "layout": "NCHW"}],
                "outputs": [{"name": "y", "shape": [1, 4], "dtype": "float32"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    with pytest.raises(RuntimeLoadError, match="could not load .* as TorchScript"):
        load(path)


def test_labels_of_a_free_class_dimension_are_counted_at_the_first_run(tmp_path):
    """The schema counts labels against a fixed class dimension; a free one is checked on the output."""
    from types import SimpleNamespace

    from runtime.manifest import TensorSpec
    from runtime.session import Session

    class Backend:
        name = "fake"

        def __init__(self, classes: int) -> None:
            self.classes = classes

        def run(self, feeds):  # noqa: ANN001, ANN201
            return [np.zeros((1, self.classes), np.float32)]

    manifest = SimpleNamespace(inputs=(TensorSpec("x", (1, 4), "float32"),),
                               outputs=(TensorSpec("y", (1, "classes"), "float32", labels=("a", "b", "c")),))
    x = np.zeros((1, 4), np.float32)
    assert Session(tmp_path / "m.onnx", manifest, Backend(3)).run(x).shape == (1, 3)
    with pytest.raises(RuntimeLoadError, match="output 'y' has 5 classes but the manifest has 3 labels"):
        Session(tmp_path / "m.onnx", manifest, Backend(5)).run(x)


def test_the_bad_input_sweep_ends_every_case_in_a_clear_error_or_a_correct_output(tmp_path):
    """Issue #19's sweep (tests/fuzz/sweep_bad_input.py): manifests, session inputs, preprocess(), config
    values and files, and every CLI, each case expecting a clear error naming what is wrong, or a success."""
    out = tmp_path / "sweep.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz" / "sweep_bad_input.py"), "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    summary = json.loads(out.read_text())
    bad = [f"{r['area']}: {r['case']}: {r['outcome']}: {r['detail']}" for r in summary["rows"]
           if r["outcome"] not in ("clear error", "correct output")]
    assert proc.returncode == 0 and not bad, "\n".join(bad) or proc.stderr[-3000:]
    assert summary["cases"] >= 150 and summary["outcomes"]["correct output"] >= 10
