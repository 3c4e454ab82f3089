"""Mutate a real artifact folder (model.onnx or model.onpu, and manifest.json) at random, one to three
mutations stacked per case, with a fixed seed, and load and run each mutant through the runtime. Prints a JSON summary: how many cases ended in the runtime's own
errors, how many still loaded (a mutation the seal and sha256 cannot see, e.g. JSON whitespace), and
every other exception (which the test requires to be none).

    python tests/fuzz/fuzz_runtime.py FOLDER CASES
"""
import json
import random
import shutil
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from runtime import InputSpecError, RuntimeLoadError, load  # noqa: E402

VALUES = [None, 0, -1, 1.5, "", "x", [], {}, [1], {"a": 1}, True, "float33", 10 ** 12, [None], "NCHW"]


def mutate_json(data, rng: random.Random):
    """One random change somewhere in a JSON tree: replace, delete or add a key, or retype a value."""
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + [i])
    walk(data, [])
    path = rng.choice(paths[1:] or [[]])
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1] if path else None
    action = rng.random()
    if last is None:
        return rng.choice(VALUES)
    if action < 0.25 and isinstance(parent, dict):
        del parent[last]
    elif action < 0.35 and isinstance(parent, dict):
        parent[rng.choice(["extra", "x" * 3])] = rng.choice(VALUES)
    else:
        parent[last] = rng.choice(VALUES)
    return data


def case(src: Path, work: Path, rng: random.Random) -> None:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)
    manifest = work / "manifest.json"
    model = work / json.loads(manifest.read_text())["artifact"]  # the source folder's own, unmutated
    for _ in range(rng.choice((1, 1, 2, 3))):
        mutate(manifest, model, rng)
    session = load(model)
    session.run(np.zeros((1, 3, 16, 16), np.float32))


def mutate(manifest: Path, model: Path, rng: random.Random) -> None:
    kind = rng.randrange(6)
    target = manifest if kind in (0, 1, 2, 3) else model
    data = target.read_bytes()
    if kind in (0, 1):
        try:
            json.loads(data)
        except ValueError:  # an earlier mutation broke the JSON: break its bytes further instead
            kind = 2
    if kind == 0:  # a value or key of the manifest, seal left as it was
        target.write_text(json.dumps(mutate_json(json.loads(data), rng)))
    elif kind == 1:  # the same, then re-sealed: the schema must catch it
        from runtime.manifest import seal_manifest

        body = mutate_json(json.loads(data), rng)
        if isinstance(body, dict):
            body.pop("manifest_sha256", None)
            body = seal_manifest(body)
        target.write_text(json.dumps(body))
    elif kind in (2, 4) and data:  # random bytes
        buf = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        target.write_bytes(bytes(buf))
    else:  # truncation
        target.write_bytes(data[: rng.randrange(max(1, len(data)))])


def main() -> int:
    src, cases = Path(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(20261202)
    summary = {"cases": cases, "project_errors": 0, "loaded": 0, "other_exceptions": []}
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(cases):
            try:
                case(src, Path(tmp) / "a", rng)
                summary["loaded"] += 1
            except (RuntimeLoadError, InputSpecError):
                summary["project_errors"] += 1
            except Exception:  # noqa: BLE001 - what the test counts
                summary["other_exceptions"].append(f"case {i}: {traceback.format_exc(limit=3)[-600:]}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
