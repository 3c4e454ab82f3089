"""calibrate: calibration tensors from the model's calibration set, with its own preprocessing."""
from __future__ import annotations

import numpy as np

from stages.core.cli import hydra_entry
from stages.core.config import Config
from stages.core.datasets import calibration_tensors, preprocess_for
from stages.core.fileio import atomic_path
from stages.core.layout import Layout
from stages.core.pipeline import Stage


def calibrate(cfg: Config, layout: Layout) -> int:
    tensors = calibration_tensors(cfg.model.calibration, preprocess_for(cfg.model.input))
    with atomic_path(layout.calibration) as tmp, open(tmp, "wb") as f:
        np.save(f, tensors)  # .npy, not .npz: zip timestamps would break byte-reproducibility
    return len(tensors)


STAGE = Stage(
    name="calibrate", scope="model",
    params=("model.input", "model.calibration"),
    needs=(),
    deps=lambda L: [],
    outs=lambda L: [L.calibration],
    run=calibrate,
    doc="photos -> calibration tensors",
    code=("runtime/preprocess.py",),
)

if __name__ == "__main__":
    hydra_entry(STAGE)()
