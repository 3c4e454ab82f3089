"""trace: the float PyTorch model as TorchScript (torch.jit.trace on the model's input spec)."""
from __future__ import annotations

from stages.core.cli import hydra_entry
from stages.core.config import Config
from stages.core.fileio import atomic_path
from stages.core.layout import Layout
from stages.core.pipeline import Stage


def trace(cfg: Config, layout: Layout) -> None:
    import torch

    from stages.core.models import float_module

    module = float_module(cfg.model, layout.weights)
    example = torch.zeros(cfg.model.input.shape)
    with torch.no_grad():
        traced = torch.jit.trace(module, example)
    with atomic_path(layout.traced) as tmp:
        torch.jit.save(traced, str(tmp))


STAGE = Stage(
    name="trace", scope="model",
    params=("model.module", "model.surgery", "model.input"),
    needs=("train",),
    deps=lambda L: [L.weights],
    outs=lambda L: [L.traced],
    run=trace,
    doc="float model -> TorchScript",
    code=("stages/rewrites/modules.py", "stages/zoo"),
)

if __name__ == "__main__":
    hydra_entry(STAGE)()
