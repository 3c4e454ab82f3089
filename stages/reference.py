"""reference: the float model's outputs on its gold set (and sanity set), once per model.

Every build of a model is judged against the same float outputs, so they are computed here, once,
instead of in each build's evaluate (MobileNetV2's 1,016 fidelity inputs cost a minute of PyTorch
per build). Only evaluate reads this file: like the gold set itself, it never reaches selection.
"""
from __future__ import annotations

import os

import numpy as np

from stages.core.cli import hydra_entry
from stages.core.config import Config
from stages.core.datasets import gold_images, preprocess_for
from stages.core.errors import BuildError
from stages.core.fileio import write_npz
from stages.core.layout import Layout
from stages.core.log import track
from stages.core.pipeline import Stage

BATCH = 250  # gold sets reach 10,000 images


def float_outputs(module, inputs: list[np.ndarray]) -> np.ndarray:  # noqa: ANN001
    import torch

    with torch.no_grad():
        batches = [np.concatenate(inputs[i:i + BATCH]) for i in range(0, len(inputs), BATCH)]
        return np.concatenate([module(torch.from_numpy(x)).numpy() for x in track(batches, "float model")])


def reference(cfg: Config, layout: Layout) -> int:
    import torch

    from stages.core.models import float_module

    torch.set_num_threads(max(1, min(cfg.target.runtime.threads, os.cpu_count() or 1)))
    pre = preprocess_for(cfg.model.input)
    samples = gold_images(cfg.model.gold) + (gold_images(cfg.model.sanity) if cfg.model.sanity else [])
    outputs = float_outputs(float_module(cfg.model, layout.weights), [pre(image) for _, image, _ in samples])
    write_npz(layout.reference, {"outputs": outputs, "ids": np.array([ident for ident, _, _ in samples])})
    return len(samples)


def read(layout: Layout, ids: list[str]) -> np.ndarray:
    """The float outputs for ``ids`` (the gold set, then the sanity set), checked against the file's."""
    with np.load(layout.reference) as data:
        stored = [str(i) for i in data["ids"]]
        if stored != list(ids):
            raise BuildError(f"{layout.reference} holds the float outputs of other inputs ({len(stored)} stored, "
                             f"{len(ids)} asked)", hint=f"rebuild it: dvc repro reference@{layout.model}")
        return data["outputs"]


def read_some(layout: Layout, ids: list[str]) -> np.ndarray:
    """The float outputs of some of the stored inputs (a subset of the gold set), in the order asked."""
    with np.load(layout.reference) as data:
        index = {str(i): k for k, i in enumerate(data["ids"])}
        missing = [i for i in ids if i not in index]
        if missing:
            raise BuildError(f"{layout.reference} holds no float outputs for {len(missing)} of the inputs asked "
                             f"(first: {missing[0]!r})", hint=f"rebuild it: dvc repro reference@{layout.model}")
        return data["outputs"][[index[i] for i in ids]]


STAGE = Stage(
    name="reference", scope="model",
    params=("model.module", "model.surgery", "model.input", "model.gold", "model.sanity"),
    needs=("train",),
    deps=lambda L: [L.weights],
    outs=lambda L: [L.reference],
    run=reference,
    doc="float outputs on the gold set, once per model",
    code=("runtime/preprocess.py", "stages/zoo", "stages/rewrites/modules.py"),
)

if __name__ == "__main__":
    hydra_entry(STAGE)()
